#!/usr/bin/env python3
"""Pre-signs WeChat Pay v3 payment notifications for benches/compare.sh.

Each line of the output file is one notification, one new order each:

    timestamp <TAB> nonce <TAB> base64 signature <TAB> JSON body (UTF-8, no tabs or newlines)

The body has the shape of tests/it/support/mod.rs (`WxV3::transaction`, `WxV3::body`): a paid
Transaction sealed with AEAD_AES_256_GCM under the APIv3 key, and the whole body signed with
RSA-SHA256 (PKCS#1 v1.5) over "timestamp\\nnonce\\nbody\\n" by the platform key that payhook's
config trusts. RSA-2048 signing costs ~1 ms of CPU, so the work is spread over every core.

usage: presign.py --key PEM --out FILE --count N --prefix ORDER_PREFIX [--ahead SECONDS]
"""
import argparse
import base64
import datetime
import json
import multiprocessing
import os
import secrets
import sys
import time

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

MCHID = "1230000109"
APPID = "wxd678efh567hg6787"
APIV3_KEY = b"0123456789abcdef0123456789abcdef"

_key = None
_args = None


def _init(key_path, args):
    global _key, _args
    with open(key_path, "rb") as f:
        _key = serialization.load_pem_private_key(f.read(), password=None)
    _args = args


def _one(i, aead, ts, now_cn):
    prefix = _args["prefix"]
    out_trade_no = f"{prefix}-{i}"
    total = 100 + i % 900
    tx = {
        "appid": APPID, "mchid": MCHID, "out_trade_no": out_trade_no,
        "transaction_id": f"42{i:026d}", "trade_type": "JSAPI",
        "trade_state": "SUCCESS", "trade_state_desc": "支付成功", "bank_type": "OTHERS",
        "attach": "{\"user_id\":\"u001\"}", "success_time": now_cn,
        "payer": {"openid": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"},
        "amount": {"total": total, "payer_total": total, "currency": "CNY", "payer_currency": "CNY"},
    }
    gcm_nonce = secrets.token_hex(6)
    sealed = aead.encrypt(gcm_nonce.encode(), json.dumps(tx, ensure_ascii=False, separators=(",", ":")).encode(), b"transaction")
    body = json.dumps({
        "id": f"EV-{prefix}-{i}", "create_time": now_cn,
        "resource_type": "encrypt-resource", "event_type": "TRANSACTION.SUCCESS", "summary": "支付成功",
        "resource": {"original_type": "transaction", "algorithm": "AEAD_AES_256_GCM",
                     "ciphertext": base64.b64encode(sealed).decode(), "associated_data": "transaction",
                     "nonce": gcm_nonce},
    }, ensure_ascii=False, separators=(",", ":"))
    nonce = secrets.token_hex(16).upper()
    message = f"{ts}\n{nonce}\n{body}\n".encode()
    sig = _key.sign(message, padding.PKCS1v15(), hashes.SHA256())
    return f"{ts}\t{nonce}\t{base64.b64encode(sig).decode()}\t{body}\n"


def _chunk(bounds):
    lo, hi = bounds
    aead = AESGCM(APIV3_KEY)
    ts = int(time.time()) + _args["ahead"]
    now_cn = datetime.datetime.now(datetime.timezone(datetime.timedelta(hours=8))).isoformat(timespec="seconds")
    return "".join(_one(i, aead, ts, now_cn) for i in range(lo, hi))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--key", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--prefix", required=True)
    p.add_argument("--ahead", type=int, default=0, help="seconds added to each timestamp")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    a = p.parse_args()
    step = 500
    chunks = [(lo, min(lo + step, a.count)) for lo in range(0, a.count, step)]
    started = time.time()
    args = {"prefix": a.prefix, "ahead": a.ahead}
    with multiprocessing.Pool(a.jobs, initializer=_init, initargs=(a.key, args)) as pool, open(a.out, "w", encoding="utf-8") as out:
        for text in pool.imap(_chunk, chunks):
            out.write(text)
    took = time.time() - started
    print(f"presign: {a.count} notifications in {took:.1f} s ({a.count / max(took, 1e-9):.0f}/s, {a.jobs} processes)", file=sys.stderr)


if __name__ == "__main__":
    main()
