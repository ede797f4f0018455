<?php
/*
 * Registers an order with payhook's admin API when the shop creates it (plain PHP 8.1+, ext-json;
 * no curl needed: file_get_contents with a stream context).
 *
 *   PAYHOOK_ADMIN_TOKEN=... php examples/php/register.php wx-demo demo-1001 goods 1234
 *   PAYHOOK_ADMIN_TOKEN=... php examples/php/register.php wx-demo demo-1002 goods 500 2h user_id=u001 recharge_balance=100
 *
 * Arguments: account out_trade_no type total_fee(fen) [expires_in] [field=value ...]
 * (a field value that is a plain integer is sent as a JSON number, anything else as a string).
 * Environment: PAYHOOK_ADMIN (http://127.0.0.1:9090), PAYHOOK_ADMIN_TOKEN (required).
 *
 * In a shop: require this file and call payhook_register_order(...) right after the order row is
 * committed, before the customer is sent to the payment page. 201 and 200 are both fine.
 */

declare(strict_types=1);

/** Any answer other than 200/201; $status and $body are payhook's reply. */
class PayhookRegisterError extends RuntimeException
{
    public function __construct(string $message, public readonly int $status, public readonly string $body)
    {
        parent::__construct($message, $status);
    }
}

/** 409: the order is already registered with another type or amount. Do not retry it. */
class PayhookOrderConflict extends PayhookRegisterError
{
}

/**
 * PUT /v1/orders/{account}/{out_trade_no}. Returns 201 (registered now) or 200 (already registered with
 * the same content). Throws PayhookOrderConflict on 409, PayhookRegisterError on any other status
 * (400 invalid body, 401 bad token, ...) and RuntimeException when payhook cannot be reached.
 *
 * $fields: null, or an associative array / object merged into the order data payhook forwards
 * (at most 4 KiB once encoded).
 */
function payhook_register_order(string $adminBase, string $token, string $account, string $outTradeNo,
                                string $type, int $totalFee, ?string $expiresIn = null,
                                array|object|null $fields = null): int
{
    if ($account === '' || $outTradeNo === '' || $type === '') {
        throw new InvalidArgumentException('account, out_trade_no and type are required');
    }
    if ($totalFee <= 0) {
        throw new InvalidArgumentException('total_fee must be > 0 (fen)');
    }
    $body = ['type' => $type, 'total_fee' => $totalFee];
    if ($expiresIn !== null) {
        $body['expires_in'] = $expiresIn;
    }
    if ($fields !== null) {
        if (is_array($fields) && $fields !== [] && array_is_list($fields)) {
            throw new InvalidArgumentException('fields must be an associative array or an object, not a list');
        }
        $body['fields'] = $fields === [] ? new stdClass() : $fields; // [] would encode as a JSON array
    }
    $json = json_encode($body, JSON_THROW_ON_ERROR | JSON_UNESCAPED_UNICODE | JSON_UNESCAPED_SLASHES
        | JSON_UNESCAPED_LINE_TERMINATORS | JSON_PRESERVE_ZERO_FRACTION);

    // rawurlencode is RFC 3986 ("a/b 1" -> "a%2Fb%201"); urlencode would turn the space into "+".
    $url = rtrim($adminBase, '/') . '/v1/orders/' . rawurlencode($account) . '/' . rawurlencode($outTradeNo);
    $context = stream_context_create(['http' => [
        'method' => 'PUT',
        'header' => "Authorization: Bearer {$token}\r\nContent-Type: application/json\r\nConnection: close\r\n",
        'content' => $json,
        'protocol_version' => 1.1,
        'timeout' => 10,
        'follow_location' => 0,
        'ignore_errors' => true, // return the body of 4xx/5xx answers instead of failing
    ]]);

    $reply = @file_get_contents($url, false, $context);
    $headers = function_exists('http_get_last_response_headers')
        ? (http_get_last_response_headers() ?? []) // PHP 8.4+
        : ($http_response_header ?? []);
    if ($reply === false || $headers === []) {
        $err = error_get_last()['message'] ?? 'no response';
        throw new RuntimeException("payhook admin API unreachable at {$adminBase}: {$err}");
    }
    $status = 0;
    foreach ($headers as $h) { // the last status line wins
        if (preg_match('#^HTTP/\S+\s+(\d{3})#', $h, $m)) {
            $status = (int) $m[1];
        }
    }
    if ($status === 200 || $status === 201) {
        return $status;
    }
    $text = strlen($reply) > 512 ? substr($reply, 0, 512) . '...' : $reply;
    if ($status === 409) {
        throw new PayhookOrderConflict("order {$account}/{$outTradeNo} is already registered with another type or amount: {$text}", $status, $reply);
    }
    throw new PayhookRegisterError("registering order {$account}/{$outTradeNo} failed: HTTP {$status} {$text}", $status, $reply);
}

// ------------------------------------------------------------- CLI (only when run directly)

if (PHP_SAPI === 'cli' && realpath($_SERVER['SCRIPT_FILENAME'] ?? '') === __FILE__) {
    $args = array_slice($argv, 1);
    if (count($args) < 4) {
        fwrite(STDERR, "usage: php {$argv[0]} <account> <out_trade_no> <type> <total_fee> [expires_in] [field=value ...]\n"
            . "environment: PAYHOOK_ADMIN (http://127.0.0.1:9090), PAYHOOK_ADMIN_TOKEN (required)\n");
        exit(2);
    }
    $admin = getenv('PAYHOOK_ADMIN') ?: 'http://127.0.0.1:9090';
    $token = trim((string) getenv('PAYHOOK_ADMIN_TOKEN'));
    if ($token === '') {
        fwrite(STDERR, "error: PAYHOOK_ADMIN_TOKEN is required\n");
        exit(2);
    }
    $fee = filter_var($args[3], FILTER_VALIDATE_INT);
    if ($fee === false) {
        fwrite(STDERR, "error: total_fee must be an integer number of fen\n");
        exit(2);
    }
    $rest = array_slice($args, 4);
    $expiresIn = ($rest !== [] && !str_contains($rest[0], '=')) ? array_shift($rest) : null;
    $fields = null;
    foreach ($rest as $kv) {
        $eq = strpos($kv, '=');
        if ($eq === false || $eq === 0) {
            fwrite(STDERR, "error: expected field=value, got {$kv}\n");
            exit(2);
        }
        $v = substr($kv, $eq + 1);
        $fields[substr($kv, 0, $eq)] = preg_match('/^-?(0|[1-9][0-9]{0,17})$/', $v) ? (int) $v : $v;
    }
    try {
        $status = payhook_register_order($admin, $token, $args[0], $args[1], $args[2], $fee, $expiresIn, $fields);
        echo ($status === 201 ? 'registered ' : 'already registered '), "{$args[0]}/{$args[1]} (HTTP {$status})\n";
        exit(0);
    } catch (PayhookOrderConflict $e) {
        fwrite(STDERR, 'conflict: ' . $e->getMessage() . "\n");
        exit(3);
    } catch (RuntimeException | InvalidArgumentException $e) {
        fwrite(STDERR, 'error: ' . $e->getMessage() . "\n");
        exit(1);
    }
}
