#!/usr/bin/env python3
"""Writes the seed corpora under fuzz/corpus/<target>/ from the real vectors in
tests/fixtures/vectors/ (and the shapes payhook's unit tests use).

Raw-bytes targets get the bytes as a provider sends them. Structured targets (those whose
fuzz_target! takes an `arbitrary`-derived struct) get inputs encoded the way `arbitrary` 1.x
decodes them: fixed-size values from the front (little-endian), byte-string lengths from the
end, enum variants as a u32, collections as a `true` byte before each element and `false` after.
Check what a seed decodes to with `PAYHOOK_FUZZ_TRACE=1 cargo fuzz run <target> <file>`.

    python3 fuzz/seeds.py      # rewrites fuzz/corpus/*/seed-*

Files named regression-* are inputs that once crashed a target, kept as seeds so every run
replays them; this script leaves them alone.
"""

import hashlib
import hmac
import json
import os
import pathlib
import urllib.parse

ROOT = pathlib.Path(__file__).resolve().parent.parent
VECTORS = ROOT / "tests" / "fixtures" / "vectors"
CORPUS = ROOT / "fuzz" / "corpus"

# The fuzz accounts (fuzz/src/lib.rs).
V2_KEY = "192006250b4c09247ec02edce69f6a2d"
V3_MCHID, V3_APPID = "1230000109", "wxd678efh567hg6787"
NOTIFY_KEY = "12345678901234561234567890123456"


def vector(name):
    return json.loads((VECTORS / name).read_text(encoding="utf-8"))


class Enc:
    """An `arbitrary` 1.x input, built field by field in declaration order."""

    def __init__(self):
        self.parts = []  # ("fixed", bytes) | ("var", bytes) | ("rest", bytes)

    def u8(self, v):
        self.parts.append(("fixed", bytes([v])))
        return self

    def u16(self, v):
        self.parts.append(("fixed", v.to_bytes(2, "little")))
        return self

    def u32(self, v):
        self.parts.append(("fixed", v.to_bytes(4, "little")))
        return self

    def i64(self, v):
        self.parts.append(("fixed", v.to_bytes(8, "little", signed=True)))
        return self

    def bool(self, v):
        return self.u8(1 if v else 0)

    def tag(self, index, count):
        """Variant `index` of an enum with `count` variants: (u32 * count) >> 32 == index."""
        return self.u32(-(-index * 2**32 // count))

    def var(self, b):
        """A byte string or str that is not the last field."""
        self.parts.append(("var", b.encode() if isinstance(b, str) else b))
        return self

    def rest(self, b):
        """The last field (take_rest)."""
        self.parts.append(("rest", b.encode() if isinstance(b, str) else b))
        return self

    def vec(self, items, each):
        for item in items:
            self.bool(True)
            each(self, item)
        return self.bool(False)

    def finish(self):
        front = b"".join(b for _, b in self.parts)
        var_lens = [len(b) for kind, b in self.parts if kind == "var"]
        widths = [1] * len(var_lens)
        for _ in range(10):  # widths depend on the total, which depends on widths
            total = len(front) + sum(widths)
            consumed, new, j = 0, [], 0
            for kind, b in self.parts:
                if kind == "var":
                    remaining = total - consumed
                    assert remaining >= 2, "a length read from fewer than 2 bytes"
                    new.append(1 if remaining <= 256 else 2)
                    consumed += new[-1] + len(b)
                    j += 1
                else:
                    consumed += len(b)
            if new == widths:
                break
            widths = new
        total = len(front) + sum(widths)
        consumed, tail = 0, []
        for kind, b in self.parts:
            if kind == "var":
                w = widths[len(tail)]
                max_size = total - consumed - w
                n = len(b)
                assert n <= max_size
                if w == 1:
                    tail.append(bytes([n]))
                elif max_size >= 256:
                    tail.append(bytes([n >> 8, n & 0xFF]))
                else:
                    tail.append(bytes([n, 0]))
                consumed += w + n
            else:
                consumed += len(b)
        return front + b"".join(reversed(tail))


def write(target, name, data):
    d = CORPUS / target
    d.mkdir(parents=True, exist_ok=True)
    (d / f"seed-{name}").write_bytes(data if isinstance(data, bytes) else data.encode())


# ---- WeChat Pay v2 ----------------------------------------------------------------------

def v2_sign(fields, kind="MD5"):
    text = "".join(f"{k}={v}&" for k, v in sorted(fields.items()) if k != "sign" and v) + f"key={V2_KEY}"
    if kind == "MD5":
        return hashlib.md5(text.encode()).hexdigest().upper()
    return hmac.new(V2_KEY.encode(), text.encode(), hashlib.sha256).hexdigest().upper()


def to_xml(fields):
    body = "".join(f"<{k}><![CDATA[{v.replace(']]>', ']]]]><![CDATA[>')}]]></{k}>" for k, v in sorted(fields.items()))
    return f"<xml>{body}</xml>"


V2_PAID = {
    "appid": "wxd930ea5d5a258f4f", "attach": '{"user_id":"u1"}', "bank_type": "CFT", "cash_fee": "1",
    "coupon_fee_0": "0", "device_info": "", "fee_type": "CNY", "is_subscribe": "Y", "mch_id": "10000100",
    "nonce_str": "5d2b6c2a8db53831f7eda20af46e531c", "openid": "oUpF8uMEb4qRXf22hE3X68TekukE",
    "out_trade_no": "1409811653", "result_code": "SUCCESS", "return_code": "SUCCESS",
    "time_end": "20140903131540", "total_fee": "101", "trade_type": "JSAPI",
    "transaction_id": "1004400740201409030005092168",
}


def v2_seeds():
    v = vector("wechat-v2-sign.json")
    fields = dict(v["fields"], sign=v["md5"])
    write("wechat_v2_xml", "official-vector.xml", to_xml(fields))
    write("wechat_v2_xml", "paid-md5.xml", to_xml(dict(V2_PAID, sign=v2_sign(V2_PAID))))
    hmac_fields = dict(V2_PAID, sign_type="HMAC-SHA256")
    write("wechat_v2_xml", "paid-hmac.xml", to_xml(dict(hmac_fields, sign=v2_sign(hmac_fields, "HMAC"))))
    # Plain text, entities, CDATA, empty elements and whitespace between elements.
    write("wechat_v2_xml", "plain.xml",
          '<?xml version="1.0"?>\n<xml>\n  <a>x &amp; y</a>\n  <b><![CDATA[<z>]]></b><c/><d></d>\n</xml>\n')
    write("wechat_v2_xml", "doctype.xml",
          '<?xml version="1.0"?><!DOCTYPE xml [<!ENTITY xxe SYSTEM "file:///etc/passwd">]><xml><a>&xxe;</a></xml>')


# ---- Alipay -----------------------------------------------------------------------------

def form(fields, charset="utf-8"):
    return "&".join(f"{urllib.parse.quote_plus(k, encoding=charset)}={urllib.parse.quote_plus(v, encoding=charset)}"
                    for k, v in fields.items())


def alipay_seeds():
    real = vector("alipay-notify-real.json")["fields"]
    write("alipay_form", "real-notification.form", form(real))
    write("alipay_form", "real-sign-type-rsa.form", form(dict(real, sign_type="RSA")))
    write("alipay_form", "gbk.form", form(dict(real, charset="gbk"), charset="gbk"))
    write("alipay_form", "duplicate.form", "a=1&a=2&charset=utf-8")

    def pairs(e, kv):
        e.var(kv[0]).var(kv[1])

    def seed(name, base, remove, set_, charset, sign_type):
        e = Enc().bool(base).vec(remove, lambda e, i: e.u8(i)).vec(set_, pairs).bool(charset)
        if sign_type == "RSA2":
            e.tag(0, 3)
        elif sign_type is None:
            e.tag(1, 3)
        else:
            e.tag(2, 3).rest(sign_type)
        write("alipay_signed", name, e.finish())

    seed("real-fields", True, [], [], True, "RSA2")
    seed("passback-params", True, [], [("passback_params", "%7B%22a%22%3A1%7D")], False, None)
    seed("refund", True, [], [("refund_fee", "0.05"), ("gmt_refund", "2019-08-16 10:00:00.000")], True, "RSA2")
    seed("closed-sign-type-rsa", True, [0], [("trade_status", "TRADE_CLOSED")], True, "RSA")


# ---- WeChat Pay v3 ----------------------------------------------------------------------

def v3_seeds():
    v = vector("wechat-v3-notify-gosdk.json")
    h = v["headers"]

    def seed(name, serial_tag, serial_other=None, signature=None):
        e = Enc().var(h["Wechatpay-Timestamp"]).var(h["Wechatpay-Nonce"]).var(signature or h["Wechatpay-Signature"])
        e.tag(serial_tag, 4)
        if serial_other is not None:
            e.var(serial_other)
        write("wechat_v3_notify", name, e.rest(v["body"]).finish())

    seed("gosdk", 2)
    seed("gosdk-serial-text", 3, h["Wechatpay-Serial"])
    seed("gosdk-key-a", 0)
    seed("probe", 2, signature="WECHATPAY/SIGNTEST/abc")

    # wechat_v3_signed: Timestamp(3) Event(2) Algorithm(2) Nonce(2) aad Transaction(2).
    FIELDS = ["Mchid", "Appid", "OutTradeNo", "TransactionId", "TradeState", "SuccessTime", "Attach",
              "Amount", "AmountTotal", "Payer", "PayerOpenid", "Other"]
    JSON = ["Str", "U64", "I64", "F64", "Bool", "Null", "Text"]

    def field(e, fv):
        (f, other), (j, val) = fv
        e.tag(FIELDS.index(f), len(FIELDS))
        if f == "Other":
            e.var(other)
        e.tag(JSON.index(j), len(JSON))
        {"Str": lambda: e.var(val), "Text": lambda: e.var(val), "U64": lambda: e.i64(val),
         "I64": lambda: e.i64(val), "Bool": lambda: e.bool(val), "Null": lambda: None}[j]()

    def signed(name, event, fields=None, raw=None):
        e = Enc().tag(0, 3).u8(127)
        if event == "TRANSACTION.SUCCESS":
            e.tag(0, 2)
        else:
            e.tag(1, 2).var(event)
        e.tag(0, 2)  # AEAD_AES_256_GCM
        e.tag(0, 2).u8(0).u8(1).u8(2).u8(3).u8(4).u8(5).u8(6).u8(7).u8(8).u8(9).u8(10).u8(11)
        e.var("transaction")
        if raw is None:
            e.tag(0, 2).vec(fields or [], field)
        else:
            e.tag(1, 2).rest(raw)
        write("wechat_v3_signed", name, e.finish())

    signed("paid", "TRANSACTION.SUCCESS")
    signed("paid-amount-attach", "TRANSACTION.SUCCESS",
           [(("AmountTotal", None), ("U64", 1)), (("Attach", None), ("Str", "plain text"))])
    signed("refund-event", "REFUND.SUCCESS")
    signed("raw-plaintext", "TRANSACTION.SUCCESS", raw=json.dumps({"mchid": V3_MCHID, "trade_state": "SUCCESS"}))
    signed("gosdk-plaintext", "TRANSACTION.SUCCESS", raw=v["plaintext"])


# ---- Envelope ---------------------------------------------------------------------------

def envelope_seeds():
    for i, vec in enumerate(vector("vk-envelope.json")["vectors"]):
        if vec["mode"] == "aes192-legacy":
            continue
        write("envelope_open", f"vk-{i}-{vec['mode']}.json", json.dumps({"encryptedData": vec["ciphertext"]}))
        if i < 2:
            write("envelope_open", f"vk-{i}-{vec['mode']}.b64", vec["ciphertext"])
    order = {"out_trade_no": "订单-1", "total_fee": 1234, "key": NOTIFY_KEY}
    write("envelope_open", "key-mode.json", json.dumps(order, ensure_ascii=False, separators=(",", ":")))


# ---- Order queries ----------------------------------------------------------------------

ALIPAY_PAID = ('{"code":"10000","msg":"Success","buyer_logon_id":"tes***@sandbox.com","buyer_pay_amount":"88.88",'
               '"buyer_user_id":"2088102177846880","invoice_amount":"88.88","out_trade_no":"o1","point_amount":"0.00",'
               '"receipt_amount":"88.88","send_pay_date":"2026-11-27 13:29:35","subject":"\\u5546\\u54c1", '
               '"total_amount":"88.88","trade_no":"2026112722001446880500001234","trade_status":"TRADE_SUCCESS"}')


def order_query_seeds():
    def seed(name, which, status, signed, out_trade_no, body):
        e = Enc().tag(which, 3).tag(status, 3).bool(signed).var(out_trade_no)
        for _ in range(4):
            e.var(b"")
        write("order_query", name, e.rest(body).finish())

    v2 = dict(V2_PAID, return_msg="OK", trade_state="SUCCESS", trade_state_desc="支付成功")
    seed("v2-paid", 0, 0, True, "1409811653", to_xml(v2))
    missing = {"appid": "wxd930ea5d5a258f4f", "err_code": "ORDERNOTEXIST", "err_code_des": "订单不存在",
               "mch_id": "10000100", "nonce_str": "5d2b6c2a8db53831", "result_code": "FAIL",
               "return_code": "SUCCESS", "return_msg": "OK"}
    seed("v2-order-not-exist", 0, 0, True, "1409811653", to_xml(missing))
    tx = {"appid": V3_APPID, "mchid": V3_MCHID, "out_trade_no": "order-1",
          "transaction_id": "4200002345202611271234567890", "trade_type": "JSAPI", "trade_state": "SUCCESS",
          "trade_state_desc": "支付成功", "bank_type": "OTHERS", "attach": '{"user_id":"u001"}',
          "success_time": "2026-11-27T13:29:35+08:00", "payer": {"openid": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"},
          "amount": {"total": 1234, "payer_total": 1234, "currency": "CNY", "payer_currency": "CNY"}}
    seed("v3-paid", 1, 0, True, "order-1", json.dumps(tx, ensure_ascii=False))
    seed("v3-order-not-exist", 1, 1, True, "order-1", '{"code":"ORDER_NOT_EXIST","message":"订单不存在"}')
    seed("alipay-paid", 2, 0, True, "o1", ALIPAY_PAID)
    seed("alipay-trade-not-exist", 2, 0, True, "o1",
         '{"code":"40004","msg":"Business Failed","sub_code":"ACQ.TRADE_NOT_EXIST","sub_msg":"交易不存在","out_trade_no":"o1"}')


if __name__ == "__main__":
    for d in CORPUS.glob("*/seed-*"):
        os.remove(d)
    v2_seeds()
    alipay_seeds()
    v3_seeds()
    envelope_seeds()
    order_query_seeds()
    for d in sorted(CORPUS.iterdir()):
        print(f"{d.relative_to(ROOT)}: {len(list(d.glob('seed-*')))} seeds")
