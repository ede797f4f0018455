#!/usr/bin/env bash
# Smoke test for the reference payhook backends (examples/java, examples/php).
#
# Needs only bash, curl, openssl, python3, plus java/javac 17 and php 8.2 (cli).
# For each backend x envelope mode it starts the backend on a free port with a
# fresh orders.json, encrypts orders independently with the openssl CLI, POSTs
# them and checks the answers and the orders file.
#
#   examples/test-backends.sh              # both backends
#   BACKENDS=php examples/test-backends.sh # just one
set -u

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BACKENDS=${BACKENDS:-"java php"}
MODES="aes-256-ecb aes192 key"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/payhook-backends.XXXXXX")
PASS=0
FAIL=0
SERVER_PID=

stop_server() {
    if [ -n "$SERVER_PID" ]; then
        # php -S with PHP_CLI_SERVER_WORKERS forks workers that outlive the master: kill them by pid first
        local kids
        kids=$(ps -o pid= --ppid "$SERVER_PID" 2>/dev/null)
        [ -n "$kids" ] && kill $kids 2>/dev/null
        kill "$SERVER_PID" 2>/dev/null
        wait "$SERVER_PID" 2>/dev/null
        SERVER_PID=
    fi
}
cleanup() {
    stop_server
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ok() { PASS=$((PASS + 1)); echo "ok   $*"; }
bad() { FAIL=$((FAIL + 1)); echo "FAIL $*"; }
check() { # check "description" command...
    local desc=$1
    shift
    if "$@"; then ok "$desc"; else bad "$desc"; fi
}
eq() { # eq actual expected
    [ "$1" = "$2" ] && return 0
    echo "     got:      $1" >&2
    echo "     expected: $2" >&2
    return 1
}

valid_json() { python3 -m json.tool "$1" >/dev/null; }

for tool in curl openssl python3; do
    command -v "$tool" >/dev/null || { echo "missing $tool" >&2; exit 2; }
done

# ------------------------------------------------------------ crypto (openssl CLI)
hex() { printf %s "$1" | od -An -v -tx1 | tr -d ' \n'; }
md5hex() { printf %s "$1" | openssl dgst -md5 -r | cut -c1-32; }
enc_ecb() { # key plaintext -> base64 (AES-256-ECB, key = first 32 bytes of notify_key)
    printf %s "$2" | openssl enc -aes-256-ecb -nosalt -K "$(hex "${1:0:32}")" -a -A
}
enc_192() { # key plaintext -> base64 (AES-192-CBC, key/iv = ASCII of hex(md5(key))[:24]/[:16])
    local h
    h=$(md5hex "$1")
    printf %s "$2" | openssl enc -aes-192-cbc -K "$(hex "${h:0:24}")" -iv "$(hex "${h:0:16}")" -a -A
}
envelope() { # mode key order_json -> request body
    case $1 in
        aes-256-ecb) printf '{"encryptedData":"%s"}' "$(enc_ecb "$2" "$3")" ;;
        aes192) printf '{"encryptedData":"%s"}' "$(enc_192 "$2" "$3")" ;;
        key) python3 -c 'import json,sys; o=json.loads(sys.argv[1]); o["key"]=sys.argv[2]; print(json.dumps(o, ensure_ascii=False))' "$3" "$2" ;;
    esac
}
order_json() { # out_trade_no total_fee -> order JSON with UTF-8, \u escapes, nesting, bool, null
    printf '{"out_trade_no":"%s","transaction_id":"42000%s","total_fee":%s,"type":"goods","status":1,"provider":"wxpay","mch_id":"1230000109","appid":"wx2421b1c4370ec43b","openid":"oUpF8uMuAJO_M2pxb1Q9zNjWeS6o","pay_date":1700000000000,"notify_date":1700000000123,"notify_mode":1,"attach":{"note":"测试商品 \\u4e2d\\u6587 \\"q\\" \\\\ \\/ \\ud83d\\ude00 \\n","tags":["a",-1,2.5e3,true,null,{"x":[]}]},"notify_info":{"trade_state":"SUCCESS","amount":{"total":%s,"currency":"CNY"},"promotion_detail":[],"is_subscribe":false,"extra":null}}' \
        "$1" "$1" "$2" "$2"
}

K1=12345678901234561234567890123456
K2=5fb2cd73c7b53918728417c50762e6d45fb2cd73c7b53918728417c50762e6d4
VPT='{"a":1,"b":"2"}'

echo "# test vectors via openssl CLI"
check "openssl aes-256-ecb vector" eq "$(enc_ecb "$K1" "$VPT")" "es2aF7DWr169X4fvMnlKNg=="
check "openssl aes192 vector (key 1)" eq "$(enc_192 "$K1" "$VPT")" "H2jlKZwafiGdl5x02zWR5Q=="
check "openssl aes192 vector (key 2)" eq "$(enc_192 "$K2" "$VPT")" "V1xgxF2hQPoswo/JeFw3eg=="

# ------------------------------------------------------------ backends
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

write_orders() {
    cat >"$DIR/orders.json" <<'EOF'
{
  "demo-1001": {"total_fee": 1234, "status": 0, "title": "测试商品 \u2603", "meta": {}},
  "demo-1002": {"total_fee": 500, "status": 0},
  "demo-1003": {"total_fee": 1, "status": 0},
  "demo-1004": {"total_fee": 800, "status": 0}
}
EOF
}

start_server() { # backend mode key
    local backend=$1 mode=$2 key=$3 i
    PORT=$(free_port)
    LOG=$DIR/server.log
    case $backend in
        java)
            NOTIFY_KEY=$key ENVELOPE=$mode ORDERS_FILE=$DIR/orders.json PORT=$PORT \
                java -cp "$WORK/out" PayhookBackend >"$LOG" 2>&1 &
            SERVER_PID=$!
            for i in $(seq 1 100); do
                grep -q "^listening on $PORT\$" "$LOG" && return 0
                kill -0 "$SERVER_PID" 2>/dev/null || break
                sleep 0.1
            done
            ;;
        php)
            # 4 worker processes, so concurrent deliveries really contend for the flock
            PHP_CLI_SERVER_WORKERS=4 NOTIFY_KEY=$key ENVELOPE=$mode ORDERS_FILE=$DIR/orders.json \
                php -S "127.0.0.1:$PORT" -t "$DIR" "$HERE/php/index.php" >"$LOG" 2>&1 &
            SERVER_PID=$!
            for i in $(seq 1 100); do
                curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$PORT/" && return 0
                kill -0 "$SERVER_PID" 2>/dev/null || break
                sleep 0.1
            done
            ;;
    esac
    echo "     server did not start; log:" >&2
    sed 's/^/     | /' "$LOG" >&2
    return 1
}

post() { # body [path] -> sets CODE (HTTP status) and RESP (body)
    local out
    out=$(curl -s --max-time 10 -w '\n%{http_code}' -X POST -H 'Content-Type: application/json' \
        --data-binary "$1" "http://127.0.0.1:$PORT${2:-/pay/notify}")
    CODE=${out##*$'\n'}
    RESP=${out%$'\n'*}
}
resp() { # HTTP status + "code" + optional msg, e.g. "200 -1 amount mismatch"
    python3 -c '
import json, sys
try:
    o = json.loads(sys.argv[2])
    print(" ".join(str(x) for x in [sys.argv[1], o.get("code"), o.get("msg")] if x is not None))
except Exception:
    print(sys.argv[1], "unparseable:", sys.argv[2][:80])' "$CODE" "$RESP"
}
field() { # out_trade_no key -> JSON value in orders.json ("absent" if missing)
    python3 -c '
import json, sys
o = json.load(open(sys.argv[1], encoding="utf-8"))[sys.argv[2]]
print(json.dumps(o[sys.argv[3]], ensure_ascii=False) if sys.argv[3] in o else "absent")' "$DIR/orders.json" "$1" "$2"
}

if [[ " $BACKENDS " == *" java "* ]]; then
    echo "# java: compile + selftest"
    check "javac PayhookBackend.java" javac -d "$WORK/out" "$HERE/java/PayhookBackend.java"
    check "java --selftest (vectors + JSON reader/writer)" java -cp "$WORK/out" PayhookBackend --selftest
    check "java PayhookBackend.java --selftest (source launcher)" java "$HERE/java/PayhookBackend.java" --selftest
fi
if [[ " $BACKENDS " == *" php "* ]]; then
    echo "# php: lint + selftest"
    check "php -l index.php" php -l "$HERE/php/index.php"
    check "php index.php --selftest (vectors)" php "$HERE/php/index.php" --selftest
fi

for backend in $BACKENDS; do
    for mode in $MODES; do
        echo "# $backend / $mode"
        DIR=$WORK/$backend-$mode
        mkdir -p "$DIR"
        write_orders
        # Keys chosen so the published vectors decrypt on the running server:
        # aes-256-ecb only uses the first 32 bytes of a longer key; aes192 uses md5 of the whole key.
        case $mode in
            aes-256-ecb) KEY="${K1}-tail-ignored-by-aes-256-ecb" ;;
            aes192) KEY=$K2 ;;
            key) KEY="payhook-demo-notify-key-0123456789abcdef" ;;
        esac
        if ! start_server "$backend" "$mode" "$KEY"; then
            bad "$backend/$mode: server start"
            stop_server
            continue
        fi

        # 1. first delivery
        post "$(envelope "$mode" "$KEY" "$(order_json demo-1001 1234)")"
        check "$backend/$mode: first delivery -> {\"code\":0}" eq "$CODE $RESP" '200 {"code":0}'
        check "$backend/$mode: order paid (status 1)" eq "$(field demo-1001 status)" 1
        check "$backend/$mode: deliveries 1" eq "$(field demo-1001 deliveries)" 1
        check "$backend/$mode: transaction_id / notify_mode / paid_at stored" \
            eq "$(field demo-1001 transaction_id) $(field demo-1001 notify_mode) $(field demo-1001 paid_at)" \
            '"42000demo-1001" 1 1700000000000'
        check "$backend/$mode: other fields preserved (UTF-8 title, empty object)" \
            eq "$(field demo-1001 title) $(field demo-1001 meta) $(field demo-1001 total_fee)" '"测试商品 ☃" {} 1234'

        # 2. identical redelivery: idempotent
        post "$(envelope "$mode" "$KEY" "$(order_json demo-1001 1234)")"
        check "$backend/$mode: second delivery -> {\"code\":0}" eq "$CODE $RESP" '200 {"code":0}'
        check "$backend/$mode: deliveries 2, status still 1" \
            eq "$(field demo-1001 deliveries) $(field demo-1001 status)" "2 1"

        # 3. amount mismatch
        post "$(envelope "$mode" "$KEY" "$(order_json demo-1002 999)")"
        check "$backend/$mode: amount mismatch -> code -1" eq "$(resp)" "200 -1 amount mismatch"
        check "$backend/$mode: mismatched order still unpaid" \
            eq "$(field demo-1002 status) $(field demo-1002 deliveries)" "0 absent"

        # 4. unknown order
        post "$(envelope "$mode" "$KEY" "$(order_json demo-9999 1)")"
        check "$backend/$mode: unknown order -> code -1" eq "$(resp)" "200 -1 unknown order"

        # 5. wrong key / garbage
        if [ "$mode" = key ]; then
            post "$(envelope key "wrong-${KEY}" "$(order_json demo-1004 800)")"
            check "$backend/$mode: wrong key rejected" eq "$(resp)" "403 -1 bad key"
            post "$(order_json demo-1004 800)"
            check "$backend/$mode: missing key -> 400" eq "$(resp)" "400 -1 bad envelope"
            post "$(envelope key "$KEY" '{"a":1,"b":"2"}')"
            check "$backend/$mode: right key, not an order -> 400 bad order" eq "$(resp)" "400 -1 bad order"
        else
            post "$(envelope "$mode" "wrong-key-wrong-key-wrong-key-wrong-key" "$(order_json demo-1004 800)")"
            check "$backend/$mode: wrong key -> 400" eq "$(resp)" "400 -1 bad envelope"
            post '{"encryptedData":"not base64!!"}'
            check "$backend/$mode: bad base64 -> 400" eq "$(resp)" "400 -1 bad envelope"
            post "{\"encryptedData\":\"$(head -c 48 /dev/urandom | openssl base64 -A)\"}"
            check "$backend/$mode: random ciphertext -> 400" eq "$(resp)" "400 -1 bad envelope"
            post '{"encrypted":"x"}'
            check "$backend/$mode: missing encryptedData -> 400" eq "$(resp)" "400 -1 bad envelope"
            # the published vector decrypts on the server ('bad order', not 'bad envelope')
            if [ "$mode" = aes-256-ecb ]; then vec=es2aF7DWr169X4fvMnlKNg==; else vec=V1xgxF2hQPoswo/JeFw3eg==; fi
            post "{\"encryptedData\":\"$vec\"}"
            check "$backend/$mode: vector $vec decrypts to {\"a\":1,\"b\":\"2\"} -> 400 bad order" \
                eq "$(resp)" "400 -1 bad order"
        fi
        check "$backend/$mode: rejected order still unpaid" eq "$(field demo-1004 status)" 0
        post 'this is not json'
        check "$backend/$mode: garbage body -> 400" eq "$(resp)" "400 -1 bad envelope"

        # 6. routing
        CODE=$(curl -s -o /dev/null --max-time 10 -w '%{http_code}' "http://127.0.0.1:$PORT/pay/notify")
        check "$backend/$mode: GET -> 405" eq "$CODE" 405
        post "$(envelope "$mode" "$KEY" "$(order_json demo-1003 1)")" /other/path
        check "$backend/$mode: other path -> 404" eq "$CODE" 404

        # 7. concurrent redeliveries are serialised by the lock
        body=$(envelope "$mode" "$KEY" "$(order_json demo-1003 1)")
        pids=()
        for i in 1 2 3 4 5 6 7 8; do
            curl -s --max-time 20 -w '\n' -X POST -H 'Content-Type: application/json' --data-binary "$body" \
                "http://127.0.0.1:$PORT/pay/notify" >"$DIR/c$i.out" &
            pids+=($!)
        done
        wait "${pids[@]}"
        check "$backend/$mode: 8 concurrent deliveries all {\"code\":0}" \
            eq "$(cat "$DIR"/c?.out | sort | uniq -c | tr -s ' ')" ' 8 {"code":0}'
        check "$backend/$mode: concurrent deliveries counted exactly (8, status 1)" \
            eq "$(field demo-1003 deliveries) $(field demo-1003 status)" "8 1"

        # 8. hygiene
        check "$backend/$mode: orders.json still valid JSON" valid_json "$DIR/orders.json"
        check "$backend/$mode: no temp files left" eq "$(ls -A "$DIR" | grep -c '\.tmp$')" 0
        check "$backend/$mode: log has one line per notification" \
            grep -q 'out_trade_no="demo-1001" total_fee=1234 result=duplicate' "$LOG"
        check "$backend/$mode: log never contains the notify key" eq "$(grep -cF -- "$KEY" "$LOG")" 0
        check "$backend/$mode: log never contains the decrypted payload" eq "$(grep -c 'notify_info\|trade_state' "$LOG")" 0

        stop_server
    done
done

echo "$PASS passed, $FAIL failed"
[ "$FAIL" -eq 0 ]
