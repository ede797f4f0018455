/*
 * Reference merchant backend for payhook (JDK 17, no dependencies).
 *
 *   javac -d out PayhookBackend.java && NOTIFY_KEY=... java -cp out PayhookBackend
 *   NOTIFY_KEY=... java PayhookBackend.java
 *   java PayhookBackend.java --selftest      (decrypts the known test vectors)
 *
 * Environment: PORT (8081), HOST (127.0.0.1), NOTIFY_KEY (required),
 * ENVELOPE (aes-256-ecb | aes192 | key), ORDERS_FILE (orders.json), PATHNAME (/pay/notify).
 */

import com.sun.net.httpserver.HttpExchange;
import com.sun.net.httpserver.HttpServer;

import javax.crypto.Cipher;
import javax.crypto.spec.IvParameterSpec;
import javax.crypto.spec.SecretKeySpec;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.math.BigDecimal;
import java.net.InetSocketAddress;
import java.nio.ByteBuffer;
import java.nio.channels.FileChannel;
import java.nio.charset.CharacterCodingException;
import java.nio.charset.CodingErrorAction;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.NoSuchFileException;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.nio.file.StandardCopyOption;
import java.nio.file.StandardOpenOption;
import java.security.MessageDigest;
import java.time.Instant;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Base64;
import java.util.HexFormat;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.Executors;

public final class PayhookBackend {
    static final int MAX_BODY = 1 << 20;
    static final Object ORDERS_LOCK = new Object(); // process-wide lock around read-modify-write of ORDERS_FILE

    static String notifyKey;
    static String envelope;
    static String pathname;
    static Path ordersFile;

    public static void main(String[] args) throws Exception {
        if (args.length == 1 && args[0].equals("--selftest")) {
            System.exit(selfTest() ? 0 : 1);
        }
        notifyKey = System.getenv("NOTIFY_KEY");
        envelope = env("ENVELOPE", "aes-256-ecb");
        pathname = env("PATHNAME", "/pay/notify");
        ordersFile = Paths.get(env("ORDERS_FILE", "orders.json")).toAbsolutePath();
        String host = env("HOST", "127.0.0.1");
        int port;
        try {
            port = Integer.parseInt(env("PORT", "8081"));
        } catch (NumberFormatException e) {
            die("PORT must be a number");
            return;
        }
        if (notifyKey == null || notifyKey.isEmpty()) die("NOTIFY_KEY is required");
        switch (envelope) {
            case "aes-256-ecb":
                if (notifyKey.getBytes(StandardCharsets.UTF_8).length < 32) die("NOTIFY_KEY must be at least 32 bytes for aes-256-ecb");
                break;
            case "aes192":
            case "key":
                break;
            default:
                die("ENVELOPE must be one of aes-256-ecb, aes192, key");
        }
        if (!Files.isRegularFile(ordersFile)) System.err.println("warning: ORDERS_FILE " + ordersFile + " does not exist yet");

        HttpServer server = HttpServer.create(new InetSocketAddress(host, port), 64);
        server.createContext("/", PayhookBackend::handle);
        server.setExecutor(Executors.newFixedThreadPool(4));
        server.start();
        System.out.println("listening on " + server.getAddress().getPort());
        System.out.flush();
    }

    static String env(String name, String def) {
        String v = System.getenv(name);
        return v == null || v.isEmpty() ? def : v;
    }

    static void die(String msg) {
        System.err.println("error: " + msg);
        System.exit(2);
    }

    // ---------------------------------------------------------------- HTTP

    record Result(int http, String body, Object tradeNo, Object fee, String result) {}

    static void handle(HttpExchange ex) throws IOException {
        try {
            if (!ex.getRequestURI().getPath().equals(pathname)) {
                reply(ex, 404, fail("not found"));
                return;
            }
            if (!ex.getRequestMethod().equals("POST")) {
                ex.getResponseHeaders().set("Allow", "POST");
                reply(ex, 405, fail("method not allowed"));
                return;
            }
            byte[] body;
            try (InputStream in = ex.getRequestBody()) {
                body = in.readNBytes(MAX_BODY + 1);
            }
            Result r = body.length > MAX_BODY
                    ? new Result(413, fail("body too large"), null, null, "too_large")
                    : process(body);
            System.out.println(Instant.now() + " out_trade_no=" + logValue(r.tradeNo())
                    + " total_fee=" + logValue(r.fee()) + " result=" + r.result());
            reply(ex, r.http(), r.body());
        } catch (Exception e) {
            System.out.println(Instant.now() + " out_trade_no=null total_fee=null result=internal_error (" + e.getClass().getSimpleName() + ")");
            try {
                reply(ex, 500, fail("internal error"));
            } catch (IOException ignored) {
                // headers already sent or client gone
            }
        } finally {
            ex.close();
        }
    }

    /** Only short scalars reach the log (JSON-quoted, so no log injection). */
    static String logValue(Object v) {
        if (v instanceof Long) return v.toString();
        if (v instanceof String str) return Json.write(str.length() > 64 ? str.substring(0, 64) + "..." : str, false);
        return "null";
    }

    static void reply(HttpExchange ex, int status, String json) throws IOException {
        byte[] b = json.getBytes(StandardCharsets.UTF_8);
        ex.getResponseHeaders().set("Content-Type", "application/json; charset=utf-8");
        ex.sendResponseHeaders(status, b.length);
        try (OutputStream os = ex.getResponseBody()) {
            os.write(b);
        }
    }

    static final String OK = "{\"code\":0}";

    static String fail(String msg) {
        return "{\"code\":-1,\"msg\":" + Json.write(msg, false) + "}";
    }

    // ------------------------------------------------------- business rule

    @SuppressWarnings("unchecked")
    static Result process(byte[] body) throws IOException {
        Map<String, Object> order;
        try {
            Object outer = Json.parse(utf8(body));
            if (!(outer instanceof Map)) throw new IllegalArgumentException("envelope is not an object");
            Map<String, Object> m = (Map<String, Object>) outer;
            if (envelope.equals("key")) {
                Object k = m.remove("key");
                if (!(k instanceof String)) throw new IllegalArgumentException("missing key");
                if (!MessageDigest.isEqual(((String) k).getBytes(StandardCharsets.UTF_8), notifyKey.getBytes(StandardCharsets.UTF_8))) {
                    return new Result(403, fail("bad key"), m.get("out_trade_no"), m.get("total_fee"), "bad_key");
                }
                order = m;
            } else {
                Object enc = m.get("encryptedData");
                if (!(enc instanceof String)) throw new IllegalArgumentException("missing encryptedData");
                Object inner = Json.parse(utf8(decrypt(envelope, notifyKey, (String) enc)));
                if (!(inner instanceof Map)) throw new IllegalArgumentException("payload is not an object");
                order = (Map<String, Object>) inner;
            }
        } catch (Exception e) { // bad JSON, bad base64, bad padding, bad UTF-8 ...
            return new Result(400, fail("bad envelope"), null, null, "bad_envelope");
        }

        Object tradeNo = order.get("out_trade_no");
        Object fee = order.get("total_fee");
        if (!(tradeNo instanceof String) || ((String) tradeNo).isEmpty() || !(fee instanceof Long)) {
            return new Result(400, fail("bad order"), tradeNo, fee, "bad_order");
        }

        synchronized (ORDERS_LOCK) {
            Map<String, Object> orders;
            try {
                Object all = Json.parse(new String(Files.readAllBytes(ordersFile), StandardCharsets.UTF_8));
                if (!(all instanceof Map)) throw new IllegalArgumentException("ORDERS_FILE is not a JSON object");
                orders = (Map<String, Object>) all;
            } catch (NoSuchFileException | IllegalArgumentException e) {
                return new Result(500, fail("orders file error"), tradeNo, fee, "orders_file_error");
            }
            if (!(orders.get(tradeNo) instanceof Map)) {
                return new Result(200, fail("unknown order"), tradeNo, fee, "unknown_order");
            }
            Map<String, Object> rec = (Map<String, Object>) orders.get(tradeNo);
            if (!fee.equals(rec.get("total_fee"))) {
                return new Result(200, fail("amount mismatch"), tradeNo, fee, "amount_mismatch");
            }
            Object status = rec.get("status") == null ? Long.valueOf(0) : rec.get("status"); // missing/null = unpaid
            if (Long.valueOf(1).equals(status)) { // already paid: idempotent, just count the delivery
                long n = rec.get("deliveries") instanceof Long d ? d : 0;
                rec.put("deliveries", n + 1);
                save(orders);
                return new Result(200, OK, tradeNo, fee, "duplicate");
            }
            if (!Long.valueOf(0).equals(status)) {
                return new Result(200, fail("order not payable"), tradeNo, fee, "not_payable");
            }
            rec.put("status", 1L);
            rec.put("transaction_id", order.get("transaction_id"));
            rec.put("paid_at", order.get("pay_date") instanceof Long p ? p : System.currentTimeMillis());
            rec.put("notify_mode", order.get("notify_mode"));
            rec.put("deliveries", 1L);
            save(orders);
            return new Result(200, OK, tradeNo, fee, "paid");
        }
    }

    /** Write temp file in the same directory, fsync, rename over ORDERS_FILE. */
    static void save(Map<String, Object> orders) throws IOException {
        Path tmp = Files.createTempFile(ordersFile.getParent(), "." + ordersFile.getFileName() + ".", ".tmp");
        try {
            try {
                Files.setPosixFilePermissions(tmp, Files.getPosixFilePermissions(ordersFile));
            } catch (Exception ignored) {
                // non-POSIX filesystem: keep default permissions
            }
            ByteBuffer buf = ByteBuffer.wrap((Json.write(orders, true) + "\n").getBytes(StandardCharsets.UTF_8));
            try (FileChannel ch = FileChannel.open(tmp, StandardOpenOption.WRITE, StandardOpenOption.TRUNCATE_EXISTING)) {
                while (buf.hasRemaining()) ch.write(buf);
                ch.force(true);
            }
            Files.move(tmp, ordersFile, StandardCopyOption.ATOMIC_MOVE, StandardCopyOption.REPLACE_EXISTING);
        } finally {
            Files.deleteIfExists(tmp);
        }
    }

    // -------------------------------------------------------------- crypto

    static byte[] decrypt(String mode, String key, String b64) throws Exception {
        byte[] ct = Base64.getDecoder().decode(b64);
        byte[] k = key.getBytes(StandardCharsets.UTF_8);
        Cipher c;
        if (mode.equals("aes-256-ecb")) {
            c = Cipher.getInstance("AES/ECB/PKCS5Padding");
            c.init(Cipher.DECRYPT_MODE, new SecretKeySpec(Arrays.copyOf(k, 32), "AES"));
        } else { // aes192: key/iv are ASCII prefixes of hex(md5(notify_key))
            String h = HexFormat.of().formatHex(MessageDigest.getInstance("MD5").digest(k));
            c = Cipher.getInstance("AES/CBC/PKCS5Padding");
            c.init(Cipher.DECRYPT_MODE,
                    new SecretKeySpec(h.substring(0, 24).getBytes(StandardCharsets.US_ASCII), "AES"),
                    new IvParameterSpec(h.substring(0, 16).getBytes(StandardCharsets.US_ASCII)));
        }
        return c.doFinal(ct);
    }

    static String utf8(byte[] b) throws CharacterCodingException {
        return StandardCharsets.UTF_8.newDecoder()
                .onMalformedInput(CodingErrorAction.REPORT)
                .onUnmappableCharacter(CodingErrorAction.REPORT)
                .decode(ByteBuffer.wrap(b)).toString();
    }

    static boolean selfTest() throws Exception {
        String k1 = "12345678901234561234567890123456";
        String k2 = "5fb2cd73c7b53918728417c50762e6d45fb2cd73c7b53918728417c50762e6d4";
        String[][] vectors = {
                {"aes-256-ecb", k1, "es2aF7DWr169X4fvMnlKNg=="},
                {"aes192", k1, "H2jlKZwafiGdl5x02zWR5Q=="},
                {"aes192", k2, "V1xgxF2hQPoswo/JeFw3eg=="},
        };
        boolean ok = true;
        for (String[] v : vectors) {
            String pt = utf8(decrypt(v[0], v[1], v[2]));
            boolean good = pt.equals("{\"a\":1,\"b\":\"2\"}");
            System.out.println((good ? "ok   " : "FAIL ") + v[0] + " " + v[2]);
            ok &= good;
        }
        String tricky = "{\"s\":\"q\\\" b\\\\ s\\/ \\b\\f\\n\\r\\t \\u00e9\\u4E2D\\ud83d\\ude00 中文\",\"n\":[-1,0,1.5e3,true,false,null,{},[]],"
                + "\"big\":12345678901234567890,\"o\":{\"x\":{\"y\":[1,{\"z\":null}]}}}";
        Object a = Json.parse(tricky);
        Object b = Json.parse(Json.write(a, true));
        boolean good = a.equals(b) && ((Map<?, ?>) a).get("s").equals("q\" b\\ s/ \b\f\n\r\t é中\uD83D\uDE00 中文");
        System.out.println((good ? "ok   " : "FAIL ") + "json round trip");
        ok &= good;
        for (String bad : new String[] {"", "{", "[1,]", "{\"a\":1,}", "01", "\"\\u12g4\"", "\"\\u-001\"", "tru", "{\"a\" 1}", "1 2", "\"a\nb\""}) {
            try {
                Json.parse(bad);
                System.out.println("FAIL json accepted " + Json.write(bad, false));
                ok = false;
            } catch (IllegalArgumentException expected) {
                // rejected as it should be
            }
        }
        System.out.println(ok ? "selftest passed" : "selftest FAILED");
        return ok;
    }

    // ---------------------------------------------------------------- JSON
    // Objects -> LinkedHashMap, arrays -> ArrayList, strings, integers -> Long
    // (BigDecimal if too large or fractional), booleans, null.

    static final class Json {
        private final String s;
        private int i;

        private Json(String s) {
            this.s = s;
        }

        static Object parse(String s) {
            Json p = new Json(s);
            p.ws();
            Object v = p.value(0);
            p.ws();
            if (p.i != s.length()) throw p.err("trailing data");
            return v;
        }

        private IllegalArgumentException err(String what) {
            return new IllegalArgumentException("JSON: " + what + " at " + i);
        }

        private void ws() {
            while (i < s.length() && " \t\r\n".indexOf(s.charAt(i)) >= 0) i++;
        }

        private char peek() {
            return i < s.length() ? s.charAt(i) : '\0';
        }

        private char next() {
            if (i >= s.length()) throw err("unexpected end");
            return s.charAt(i++);
        }

        private Object value(int depth) {
            if (depth > 64) throw err("nesting too deep");
            char c = peek();
            switch (c) {
                case '{': return object(depth);
                case '[': return array(depth);
                case '"': return string();
                case 't': return literal("true", Boolean.TRUE);
                case 'f': return literal("false", Boolean.FALSE);
                case 'n': return literal("null", null);
                default:
                    if (c == '-' || (c >= '0' && c <= '9')) return number();
                    throw err("unexpected character");
            }
        }

        private Object literal(String word, Object v) {
            if (!s.startsWith(word, i)) throw err("bad literal");
            i += word.length();
            return v;
        }

        private Map<String, Object> object(int depth) {
            Map<String, Object> m = new LinkedHashMap<>();
            i++;
            ws();
            if (peek() == '}') {
                i++;
                return m;
            }
            while (true) {
                ws();
                if (peek() != '"') throw err("expected string key");
                String k = string();
                ws();
                if (next() != ':') throw err("expected ':'");
                ws();
                m.put(k, value(depth + 1));
                ws();
                char c = next();
                if (c == '}') return m;
                if (c != ',') throw err("expected ',' or '}'");
            }
        }

        private List<Object> array(int depth) {
            List<Object> a = new ArrayList<>();
            i++;
            ws();
            if (peek() == ']') {
                i++;
                return a;
            }
            while (true) {
                ws();
                a.add(value(depth + 1));
                ws();
                char c = next();
                if (c == ']') return a;
                if (c != ',') throw err("expected ',' or ']'");
            }
        }

        private String string() {
            i++; // opening quote
            StringBuilder b = new StringBuilder();
            while (true) {
                char c = next();
                if (c == '"') return b.toString();
                if (c < 0x20) throw err("control character in string");
                if (c != '\\') {
                    b.append(c);
                    continue;
                }
                char e = next();
                switch (e) {
                    case '"': b.append('"'); break;
                    case '\\': b.append('\\'); break;
                    case '/': b.append('/'); break;
                    case 'b': b.append('\b'); break;
                    case 'f': b.append('\f'); break;
                    case 'n': b.append('\n'); break;
                    case 'r': b.append('\r'); break;
                    case 't': b.append('\t'); break;
                    case 'u': {
                        int cp = 0;
                        for (int n = 0; n < 4; n++) {
                            int d = Character.digit(next(), 16);
                            if (d < 0) throw err("bad \\u escape");
                            cp = cp * 16 + d;
                        }
                        b.append((char) cp); // surrogate pairs recombine naturally in UTF-16
                        break;
                    }
                    default: throw err("bad escape");
                }
            }
        }

        private Object number() {
            int start = i;
            boolean integral = true;
            if (peek() == '-') i++;
            if (peek() == '0') {
                i++;
            } else if (peek() >= '1' && peek() <= '9') {
                while (peek() >= '0' && peek() <= '9') i++;
            } else {
                throw err("bad number");
            }
            if (peek() == '.') {
                integral = false;
                i++;
                if (!(peek() >= '0' && peek() <= '9')) throw err("bad fraction");
                while (peek() >= '0' && peek() <= '9') i++;
            }
            if (peek() == 'e' || peek() == 'E') {
                integral = false;
                i++;
                if (peek() == '+' || peek() == '-') i++;
                if (!(peek() >= '0' && peek() <= '9')) throw err("bad exponent");
                while (peek() >= '0' && peek() <= '9') i++;
            }
            String t = s.substring(start, i);
            if (integral) {
                try {
                    return Long.parseLong(t);
                } catch (NumberFormatException tooBig) {
                    // fall through to BigDecimal
                }
            }
            return new BigDecimal(t);
        }

        static String write(Object v, boolean pretty) {
            StringBuilder b = new StringBuilder();
            write(b, v, pretty ? 0 : -1);
            return b.toString();
        }

        private static void newline(StringBuilder b, int level) {
            if (level < 0) return;
            b.append('\n');
            b.append("  ".repeat(level));
        }

        private static void write(StringBuilder b, Object v, int level) {
            int inner = level < 0 ? -1 : level + 1;
            if (v == null) {
                b.append("null");
            } else if (v instanceof String str) {
                writeString(b, str);
            } else if (v instanceof Boolean || v instanceof Long || v instanceof Integer || v instanceof BigDecimal) {
                b.append(v);
            } else if (v instanceof Map<?, ?> m) {
                if (m.isEmpty()) {
                    b.append("{}");
                    return;
                }
                b.append('{');
                boolean first = true;
                for (Map.Entry<?, ?> e : m.entrySet()) {
                    if (!first) b.append(',');
                    first = false;
                    newline(b, inner);
                    writeString(b, (String) e.getKey());
                    b.append(level < 0 ? ":" : ": ");
                    write(b, e.getValue(), inner);
                }
                newline(b, level);
                b.append('}');
            } else if (v instanceof List<?> l) {
                if (l.isEmpty()) {
                    b.append("[]");
                    return;
                }
                b.append('[');
                for (int n = 0; n < l.size(); n++) {
                    if (n > 0) b.append(',');
                    newline(b, inner);
                    write(b, l.get(n), inner);
                }
                newline(b, level);
                b.append(']');
            } else {
                throw new IllegalArgumentException("cannot serialize " + v.getClass());
            }
        }

        private static void writeString(StringBuilder b, String s) {
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
                            b.append(c).append(s.charAt(++n)); // valid pair, emitted as UTF-8
                        } else if (c < 0x20 || Character.isSurrogate(c)) {
                            b.append(String.format("\\u%04x", (int) c)); // control char or lone surrogate
                        } else {
                            b.append(c);
                        }
                }
            }
            b.append('"');
        }
    }
}
