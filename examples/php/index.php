<?php
/*
 * Reference merchant backend for payhook (plain PHP 8.2, ext-openssl + ext-json).
 *
 *   NOTIFY_KEY=... php -S 127.0.0.1:8081 examples/php/index.php
 *   php examples/php/index.php --selftest      (decrypts the known test vectors)
 *
 * Environment: NOTIFY_KEY (required), ENVELOPE (aes-256-ecb | aes192 | key),
 * ORDERS_FILE (orders.json), PATHNAME (/pay/notify). The port is the one given to php -S.
 */

declare(strict_types=1);

function env(string $name, string $default): string
{
    $v = getenv($name);
    return ($v === false || $v === '') ? $default : $v;
}

/** Returns the plaintext, or null if the ciphertext does not decrypt. */
function decrypt_envelope(string $mode, string $key, string $b64): ?string
{
    $ct = base64_decode($b64, true);
    if ($ct === false || $ct === '') {
        return null;
    }
    if ($mode === 'aes-256-ecb') {
        $pt = openssl_decrypt($ct, 'aes-256-ecb', substr($key, 0, 32), OPENSSL_RAW_DATA);
    } else { // aes192: key/iv are ASCII prefixes of hex(md5(notify_key))
        $h = md5($key);
        $pt = openssl_decrypt($ct, 'aes-192-cbc', substr($h, 0, 24), OPENSSL_RAW_DATA, substr($h, 0, 16));
    }
    return $pt === false ? null : $pt;
}

function reply(int $status, array $body): void
{
    http_response_code($status);
    header('Content-Type: application/json; charset=utf-8');
    echo json_encode($body, JSON_UNESCAPED_UNICODE | JSON_UNESCAPED_SLASHES);
}

function fail(string $msg): array
{
    return ['code' => -1, 'msg' => $msg];
}

/** Only short scalars reach the log (JSON-quoted, so no log injection). */
function log_value(mixed $v): string
{
    if (is_int($v)) {
        return (string) $v;
    }
    if (is_string($v)) {
        $enc = json_encode(strlen($v) > 64 ? substr($v, 0, 64) . '...' : $v, JSON_UNESCAPED_UNICODE | JSON_INVALID_UTF8_SUBSTITUTE);
        return $enc === false ? 'null' : $enc;
    }
    return 'null';
}

function log_line(mixed $tradeNo, mixed $fee, string $result): void
{
    file_put_contents('php://stderr', sprintf("%s out_trade_no=%s total_fee=%s result=%s\n",
        date('c'), log_value($tradeNo), log_value($fee), $result));
}

/**
 * Decodes the request body according to ENVELOPE.
 * Returns the order array, 'bad_key', or null (bad envelope).
 */
function open_envelope(string $mode, string $key, string $raw, mixed &$claimed): array|string|null
{
    try {
        $outer = json_decode($raw, true, 64, JSON_THROW_ON_ERROR | JSON_BIGINT_AS_STRING);
    } catch (JsonException) {
        return null;
    }
    if (!is_array($outer) || array_is_list($outer)) {
        return null;
    }
    if ($mode === 'key') {
        if (!isset($outer['key']) || !is_string($outer['key'])) {
            return null;
        }
        $given = $outer['key'];
        unset($outer['key']);
        if (!hash_equals($key, $given)) {
            $claimed = $outer;
            return 'bad_key';
        }
        return $outer;
    }
    if (!isset($outer['encryptedData']) || !is_string($outer['encryptedData'])) {
        return null;
    }
    $pt = decrypt_envelope($mode, $key, $outer['encryptedData']);
    if ($pt === null) {
        return null;
    }
    try {
        $order = json_decode($pt, true, 64, JSON_THROW_ON_ERROR | JSON_BIGINT_AS_STRING);
    } catch (JsonException) {
        return null;
    }
    return (is_array($order) && ($order === [] || !array_is_list($order))) ? $order : null;
}

/**
 * The business rule. Runs under an exclusive flock on ORDERS_FILE.lock.
 * Returns [http status, response body, log result].
 */
function apply_payment(string $file, array $order): array
{
    $tradeNo = $order['out_trade_no'];
    $fee = $order['total_fee'];

    $lock = fopen($file . '.lock', 'c');
    if ($lock === false || !flock($lock, LOCK_EX)) {
        return [500, fail('orders file error'), 'orders_file_error'];
    }
    try {
        // Objects stay stdClass so that e.g. an empty {} inside an order is written back as {}.
        $raw = @file_get_contents($file);
        $orders = $raw === false ? null : json_decode($raw, false, 512, JSON_BIGINT_AS_STRING);
        if (!($orders instanceof stdClass)) {
            return [500, fail('orders file error'), 'orders_file_error'];
        }
        $rec = $orders->{$tradeNo} ?? null;
        if (!($rec instanceof stdClass)) {
            return [200, fail('unknown order'), 'unknown_order'];
        }
        if (($rec->total_fee ?? null) !== $fee) {
            return [200, fail('amount mismatch'), 'amount_mismatch'];
        }
        $status = $rec->status ?? 0;
        if ($status === 1) { // already paid: idempotent, just count the delivery
            $rec->deliveries = (is_int($rec->deliveries ?? null) ? $rec->deliveries : 0) + 1;
            $result = 'duplicate';
        } elseif ($status === 0) {
            $rec->status = 1;
            $rec->transaction_id = $order['transaction_id'] ?? null;
            $rec->paid_at = is_int($order['pay_date'] ?? null) ? $order['pay_date'] : (int) floor(microtime(true) * 1000);
            $rec->notify_mode = $order['notify_mode'] ?? null;
            $rec->deliveries = 1;
            $result = 'paid';
        } else {
            return [200, fail('order not payable'), 'not_payable'];
        }

        // Atomic replace: temp file in the same directory, fsync, rename.
        $json = json_encode($orders, JSON_PRETTY_PRINT | JSON_UNESCAPED_UNICODE | JSON_UNESCAPED_SLASHES
            | JSON_PRESERVE_ZERO_FRACTION | JSON_THROW_ON_ERROR) . "\n";
        $tmp = dirname($file) . '/.' . basename($file) . '.' . bin2hex(random_bytes(6)) . '.tmp';
        $fh = @fopen($tmp, 'xb'); // same directory as ORDERS_FILE, so rename() is atomic
        $perms = @fileperms($file);
        if ($fh !== false && $perms !== false) {
            @chmod($tmp, $perms & 0777);
        }
        $ok = $fh !== false && fwrite($fh, $json) === strlen($json) && fflush($fh) && fsync($fh);
        if ($fh !== false) {
            fclose($fh);
        }
        if (!$ok || !rename($tmp, $file)) {
            @unlink($tmp);
            return [500, fail('orders file error'), 'orders_file_error'];
        }
        return [200, ['code' => 0], $result];
    } finally {
        flock($lock, LOCK_UN);
        fclose($lock);
    }
}

function self_test(): bool
{
    $k1 = '12345678901234561234567890123456';
    $k2 = '5fb2cd73c7b53918728417c50762e6d45fb2cd73c7b53918728417c50762e6d4';
    $ok = true;
    foreach ([['aes-256-ecb', $k1, 'es2aF7DWr169X4fvMnlKNg=='],
              ['aes192', $k1, 'H2jlKZwafiGdl5x02zWR5Q=='],
              ['aes192', $k2, 'V1xgxF2hQPoswo/JeFw3eg==']] as [$mode, $key, $ct]) {
        $good = decrypt_envelope($mode, $key, $ct) === '{"a":1,"b":"2"}';
        echo ($good ? 'ok   ' : 'FAIL '), $mode, ' ', $ct, "\n";
        $ok = $ok && $good;
    }
    echo $ok ? "selftest passed\n" : "selftest FAILED\n";
    return $ok;
}

// ------------------------------------------------------------------ main

if (PHP_SAPI === 'cli') {
    if (($argv[1] ?? '') === '--selftest') {
        exit(self_test() ? 0 : 1);
    }
    fwrite(STDERR, "usage: php -S 127.0.0.1:8081 " . $argv[0] . "   |   php " . $argv[0] . " --selftest\n");
    exit(2);
}

// Never return false from this router: that would make php -S serve files from the docroot.
$notifyKey = env('NOTIFY_KEY', '');
$envelope = env('ENVELOPE', 'aes-256-ecb');
$ordersFile = env('ORDERS_FILE', 'orders.json');
$pathname = env('PATHNAME', '/pay/notify');

if ($notifyKey === '' || !in_array($envelope, ['aes-256-ecb', 'aes192', 'key'], true)
    || ($envelope === 'aes-256-ecb' && strlen($notifyKey) < 32)) {
    log_line(null, null, 'misconfigured (need NOTIFY_KEY, >= 32 bytes for aes-256-ecb, and ENVELOPE aes-256-ecb|aes192|key)');
    reply(500, fail('backend misconfigured'));
    return true;
}
if (parse_url($_SERVER['REQUEST_URI'] ?? '', PHP_URL_PATH) !== $pathname) {
    reply(404, fail('not found'));
    return true;
}
if (($_SERVER['REQUEST_METHOD'] ?? '') !== 'POST') {
    header('Allow: POST');
    reply(405, fail('method not allowed'));
    return true;
}

$raw = file_get_contents('php://input', false, null, 0, (1 << 20) + 1);
if ($raw === false || strlen($raw) > (1 << 20)) {
    log_line(null, null, 'too_large');
    reply(413, fail('body too large'));
    return true;
}

$claimed = null;
$order = open_envelope($envelope, $notifyKey, $raw, $claimed);
if ($order === null) {
    log_line(null, null, 'bad_envelope');
    reply(400, fail('bad envelope'));
    return true;
}
if ($order === 'bad_key') {
    log_line($claimed['out_trade_no'] ?? null, $claimed['total_fee'] ?? null, 'bad_key');
    reply(403, fail('bad key'));
    return true;
}
$tradeNo = $order['out_trade_no'] ?? null;
$fee = $order['total_fee'] ?? null;
if (!is_string($tradeNo) || $tradeNo === '' || !is_int($fee)) {
    log_line($tradeNo, $fee, 'bad_order');
    reply(400, fail('bad order'));
    return true;
}

[$status, $body, $result] = apply_payment($ordersFile, $order);
log_line($tradeNo, $fee, $result);
reply($status, $body);
return true;
