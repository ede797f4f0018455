//! Alipay: `Provider::verify` on arbitrary form bodies, under the test key (`alipay.pub.pem`)
//! and under Alipay's real key (which the real notification in the seed corpus verifies with).
#![no_main]

use libfuzzer_sys::fuzz_target;
use payhook::provider::Inbound;
use payhook_fuzz::{check_verified, ACCOUNTS, ALIPAY_SELLER_ID, NOW};

fuzz_target!(|data: &[u8]| {
    let headers = http::HeaderMap::new();
    let inbound = Inbound { headers: &headers, body: data, now: NOW };
    check_verified(&ACCOUNTS.alipay.verify(&inbound), ALIPAY_SELLER_ID);
    check_verified(&ACCOUNTS.alipay_real.verify(&inbound), ALIPAY_SELLER_ID);
});
