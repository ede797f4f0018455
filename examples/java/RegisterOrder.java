/*
 * Registers an order with payhook's admin API when the shop creates it (JDK 17, no dependencies).
 *
 *   PAYHOOK_ADMIN_TOKEN=... java RegisterOrder.java wx-demo demo-1001 goods 1234
 *   PAYHOOK_ADMIN_TOKEN=... java RegisterOrder.java wx-demo demo-1002 goods 500 2h user_id=u001 recharge_balance=100
 *
 * Arguments: account out_trade_no type total_fee(fen) [expires_in] [field=value ...]
 * (a field value that is a plain integer is sent as a JSON number, anything else as a string).
 * Environment: PAYHOOK_ADMIN (http://127.0.0.1:9090), PAYHOOK_ADMIN_TOKEN (required).
 *
 * In a shop, call RegisterOrder.register(...) right after the order row is committed, before the
 * customer is sent to the payment page. 201 and 200 (same content registered again) are both fine.
 */

import java.io.IOException;
import java.math.BigDecimal;
import java.math.BigInteger;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.Collection;
import java.util.LinkedHashMap;
import java.util.Map;

public final class RegisterOrder {
    static final HttpClient CLIENT = HttpClient.newBuilder()
            .version(HttpClient.Version.HTTP_1_1) // plain http: no h2c upgrade attempt
            .connectTimeout(Duration.ofSeconds(5))
            .followRedirects(HttpClient.Redirect.NEVER)
            .build();

    /** Any answer other than 200/201. {@link #status()} and {@link #body()} are payhook's reply. */
    public static class RegisterException extends IOException {
        private static final long serialVersionUID = 1L;
        private final int status;
        private final String body;

        RegisterException(String message, int status, String body) {
            super(message);
            this.status = status;
            this.body = body;
        }

        public int status() {
            return status;
        }

        public String body() {
            return body;
        }
    }

    /** 409: the order is already registered with another type or amount. Do not retry it. */
    public static final class ConflictException extends RegisterException {
        private static final long serialVersionUID = 1L;

        ConflictException(String message, int status, String body) {
            super(message, status, body);
        }
    }

    /**
     * PUT /v1/orders/{account}/{outTradeNo}. Returns 201 (registered now) or 200 (already registered
     * with the same content). Throws {@link ConflictException} on 409 and {@link RegisterException} on any
     * other status (400 invalid body, 401 bad token, ...). Network errors propagate as IOException.
     *
     * @param expiresIn optional duration such as "2h" (null: payhook's default)
     * @param fields    optional; merged into the order data payhook forwards (values: String, Number,
     *                  Boolean, null, Map, Collection). At most 4 KiB once encoded.
     */
    public static int register(String adminBase, String token, String account, String outTradeNo, String type,
                               long totalFee, String expiresIn, Map<String, Object> fields)
            throws IOException, InterruptedException {
        if (account == null || account.isEmpty()) throw new IllegalArgumentException("account is required");
        if (outTradeNo == null || outTradeNo.isEmpty()) throw new IllegalArgumentException("outTradeNo is required");
        if (type == null || type.isEmpty()) throw new IllegalArgumentException("type is required");
        if (totalFee <= 0) throw new IllegalArgumentException("totalFee must be > 0 (fen)");

        Map<String, Object> body = new LinkedHashMap<>();
        body.put("type", type);
        body.put("total_fee", totalFee);
        if (expiresIn != null) body.put("expires_in", expiresIn);
        if (fields != null) body.put("fields", fields);

        String base = adminBase.endsWith("/") ? adminBase.substring(0, adminBase.length() - 1) : adminBase;
        HttpRequest req = HttpRequest.newBuilder(URI.create(base + "/v1/orders/" + pathSegment(account) + "/" + pathSegment(outTradeNo)))
                .timeout(Duration.ofSeconds(10))
                .header("Authorization", "Bearer " + token)
                .header("Content-Type", "application/json")
                .PUT(HttpRequest.BodyPublishers.ofString(Json.write(body), StandardCharsets.UTF_8))
                .build();
        HttpResponse<String> resp = CLIENT.send(req, HttpResponse.BodyHandlers.ofString(StandardCharsets.UTF_8));
        int status = resp.statusCode();
        if (status == 200 || status == 201) return status;
        String text = resp.body().length() > 512 ? resp.body().substring(0, 512) + "..." : resp.body();
        String what = "order " + account + "/" + outTradeNo;
        if (status == 409) {
            throw new ConflictException(what + " is already registered with another type or amount: " + text, status, resp.body());
        }
        throw new RegisterException("registering " + what + " failed: HTTP " + status + " " + text, status, resp.body());
    }

    /** RFC 3986 percent-encoding of one path segment ("a/b 1" -> "a%2Fb%201"); URLEncoder is for forms. */
    static String pathSegment(String s) {
        StringBuilder b = new StringBuilder();
        for (byte x : s.getBytes(StandardCharsets.UTF_8)) {
            int c = x & 0xff;
            if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '.' || c == '_' || c == '~') {
                b.append((char) c);
            } else {
                b.append('%').append(Character.toUpperCase(Character.forDigit(c >> 4, 16))).append(Character.toUpperCase(Character.forDigit(c & 15, 16)));
            }
        }
        return b.toString();
    }

    public static void main(String[] args) throws Exception {
        if (args.length < 4) {
            System.err.println("usage: java RegisterOrder.java <account> <out_trade_no> <type> <total_fee> [expires_in] [field=value ...]");
            System.err.println("environment: PAYHOOK_ADMIN (http://127.0.0.1:9090), PAYHOOK_ADMIN_TOKEN (required)");
            System.exit(2);
        }
        String admin = System.getenv().getOrDefault("PAYHOOK_ADMIN", "http://127.0.0.1:9090");
        String token = System.getenv("PAYHOOK_ADMIN_TOKEN");
        if (token == null || token.isBlank()) {
            System.err.println("error: PAYHOOK_ADMIN_TOKEN is required");
            System.exit(2);
        }
        long fee;
        try {
            fee = Long.parseLong(args[3]);
        } catch (NumberFormatException e) {
            System.err.println("error: total_fee must be an integer number of fen");
            System.exit(2);
            return;
        }
        String expiresIn = null;
        int next = 4;
        if (args.length > 4 && !args[4].contains("=")) {
            expiresIn = args[4];
            next = 5;
        }
        Map<String, Object> fields = null;
        for (int n = next; n < args.length; n++) {
            int eq = args[n].indexOf('=');
            if (eq <= 0) {
                System.err.println("error: expected field=value, got " + args[n]);
                System.exit(2);
            }
            if (fields == null) fields = new LinkedHashMap<>();
            String v = args[n].substring(eq + 1);
            fields.put(args[n].substring(0, eq), v.matches("-?(0|[1-9][0-9]{0,17})") ? (Object) Long.valueOf(v) : v);
        }
        try {
            int status = register(admin, token.strip(), args[0], args[1], args[2], fee, expiresIn, fields);
            System.out.println((status == 201 ? "registered " : "already registered ") + args[0] + "/" + args[1] + " (HTTP " + status + ")");
        } catch (ConflictException e) {
            System.err.println("conflict: " + e.getMessage());
            System.exit(3);
        } catch (RegisterException | IllegalArgumentException e) {
            System.err.println("error: " + e.getMessage());
            System.exit(1);
        } catch (IOException e) { // connection refused, timeout, ...
            System.err.println("error: payhook admin API unreachable at " + admin + ": " + e);
            System.exit(1);
        }
    }

    // ------------------------------------------------------- JSON writer

    static final class Json {
        private Json() {
        }

        static String write(Object v) {
            StringBuilder b = new StringBuilder();
            write(b, v);
            return b.toString();
        }

        private static void write(StringBuilder b, Object v) {
            if (v == null) {
                b.append("null");
            } else if (v instanceof String s) {
                string(b, s);
            } else if (v instanceof Boolean || v instanceof Long || v instanceof Integer || v instanceof Short
                    || v instanceof Byte || v instanceof BigInteger) {
                b.append(v);
            } else if (v instanceof BigDecimal d) {
                b.append(d.toString()); // e.g. 1E+3: valid JSON
            } else if (v instanceof Double || v instanceof Float) {
                double d = ((Number) v).doubleValue();
                if (Double.isNaN(d) || Double.isInfinite(d)) throw new IllegalArgumentException("JSON has no NaN or Infinity");
                b.append(v); // Double.toString: 1.5, 1.0E10 (valid JSON)
            } else if (v instanceof Map<?, ?> m) {
                b.append('{');
                boolean first = true;
                for (Map.Entry<?, ?> e : m.entrySet()) {
                    if (!(e.getKey() instanceof String k)) throw new IllegalArgumentException("JSON object keys must be strings");
                    if (!first) b.append(',');
                    first = false;
                    string(b, k);
                    b.append(':');
                    write(b, e.getValue());
                }
                b.append('}');
            } else if (v instanceof Collection<?> c) {
                b.append('[');
                boolean first = true;
                for (Object x : c) {
                    if (!first) b.append(',');
                    first = false;
                    write(b, x);
                }
                b.append(']');
            } else {
                throw new IllegalArgumentException("cannot write " + v.getClass().getName() + " as JSON");
            }
        }

        private static void string(StringBuilder b, String s) {
            b.append('"');
            for (int n = 0; n < s.length(); n++) {
                char c = s.charAt(n);
                switch (c) {
                    case '"': b.append("\\\""); break;
                    case '\\': b.append("\\\\"); break;
                    case '\n': b.append("\\n"); break;
                    case '\r': b.append("\\r"); break;
                    case '\t': b.append("\\t"); break;
                    case '\b': b.append("\\b"); break;
                    case '\f': b.append("\\f"); break;
                    default:
                        if (Character.isHighSurrogate(c) && n + 1 < s.length() && Character.isLowSurrogate(s.charAt(n + 1))) {
                            b.append(c).append(s.charAt(++n)); // valid pair: sent as 4 UTF-8 bytes
                        } else if (c < 0x20 || Character.isSurrogate(c)) {
                            b.append(String.format("\\u%04x", (int) c)); // control char, or lone surrogate (not encodable as UTF-8)
                        } else {
                            b.append(c);
                        }
                }
            }
            b.append('"');
        }
    }
}
