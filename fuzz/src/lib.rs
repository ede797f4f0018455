//! Shared set-up for payhook's fuzz targets: the provider accounts (built once, through
//! `payhook::config::Config::parse` exactly as the gateway builds them), the test keys that sign
//! the structured targets' inputs, and the invariants every target checks.
//!
//! Every key here is a published test key from `tests/fixtures/keys` or a public vector from
//! `tests/fixtures/vectors`; they are embedded so the fuzz binaries run from any directory.

use std::fmt::Debug;
use std::sync::{Arc, LazyLock};

use payhook::config::{Config, ConfigDir};
use payhook::keys::RsaPrivateKey;
use payhook::provider::{PaidOrder, Provider, ProviderError, QueryOutcome, Verified};
use serde_json::Value;

/// Unix seconds every target passes as `now`: the wechatpay-go vector's timestamp + 10 s, so
/// its real signed notification (a seed) passes the freshness check.
pub const NOW: i64 = 1_624_523_846 + 10;

// wechat-v2 account: the official v2 signature example's merchant and key.
pub const V2_MCH_ID: &str = "10000100";
pub const V2_APPID: &str = "wxd930ea5d5a258f4f";
pub const V2_API_KEY: &str = "192006250b4c09247ec02edce69f6a2d";

// wechat-v3 account.
pub const V3_MCHID: &str = "1230000109";
pub const V3_APPID: &str = "wxd678efh567hg6787";
pub const V3_APIV3_KEY: &str = "0123456789abcdef0123456789abcdef";
/// `Wechatpay-Serial` of platform key A (public-key mode); the structured targets sign with it.
pub const V3_PUB_KEY_ID: &str = "PUB_KEY_ID_0114232020240000000000000001";
/// Serial of `wx_platform_b.cert.pem` (certificate mode).
pub const V3_CERT_B_SERIAL: &str = "5157F09EFDC096DE15EBE81A47057A7232F1B8E1";
/// Serial of the wechatpay-go vector's platform certificate.
pub const V3_GOSDK_SERIAL: &str = "D7CE59D1F522D701";

// Alipay accounts: the real notification's app and seller, under two keys.
pub const ALIPAY_APP_ID: &str = "2019073166072302";
pub const ALIPAY_SELLER_ID: &str = "2088531891668739";

const KEY_FILES: &[(&str, &[u8])] = &[
    ("wx_platform_a.pub.pem", include_bytes!("../../tests/fixtures/keys/wx_platform_a.pub.pem")),
    ("wx_platform_b.cert.pem", include_bytes!("../../tests/fixtures/keys/wx_platform_b.cert.pem")),
    ("wx_merchant.key.pem", include_bytes!("../../tests/fixtures/keys/wx_merchant.key.pem")),
    ("alipay.pub.pem", include_bytes!("../../tests/fixtures/keys/alipay.pub.pem")),
    ("alipay_app.key.pem", include_bytes!("../../tests/fixtures/keys/alipay_app.key.pem")),
];
const WX_PLATFORM_A_KEY: &[u8] = include_bytes!("../../tests/fixtures/keys/wx_platform_a.key.pem");
const ALIPAY_KEY: &[u8] = include_bytes!("../../tests/fixtures/keys/alipay.key.pem");
const GOSDK_VECTOR: &str = include_str!("../../tests/fixtures/vectors/wechat-v3-notify-gosdk.json");
const ALIPAY_VECTOR: &str = include_str!("../../tests/fixtures/vectors/alipay-notify-real.json");

/// The accounts under test, as `[accounts.NAME]` of one config.
pub struct Accounts {
    /// `wx2`: mch_id + appid + api_key (+ api_base, so it is a query-capable account).
    pub wechat_v2: Arc<dyn Provider>,
    /// `wx3`: platform key A, certificate B and the wechatpay-go vector's certificate.
    pub wechat_v3: Arc<dyn Provider>,
    /// `ali`: the test key `alipay.pub.pem`, which the structured targets sign with.
    pub alipay: Arc<dyn Provider>,
    /// `ali_real`: Alipay's real public key, under which the real notification (a seed) verifies.
    pub alipay_real: Arc<dyn Provider>,
}

pub static ACCOUNTS: LazyLock<Accounts> = LazyLock::new(load_accounts);

fn load_accounts() -> Accounts {
    let gosdk: Value = serde_json::from_str(GOSDK_VECTOR).expect("gosdk vector is JSON");
    let real: Value = serde_json::from_str(ALIPAY_VECTOR).expect("alipay vector is JSON");
    let spki = real["alipay_public_key_b64_spki"].as_str().expect("vector has the SPKI");
    let config = format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"

[ledger]
backend = "embedded"
path = "ledger.redb"

[accounts.wx2]
provider = "wechat-v2"
mch_id = "{V2_MCH_ID}"
appid = "{V2_APPID}"
api_key = "{V2_API_KEY}"
api_base = "http://127.0.0.1:9"

[accounts.wx3]
provider = "wechat-v3"
mchid = "{V3_MCHID}"
appid = "{V3_APPID}"
apiv3_key = "{V3_APIV3_KEY}"
platform_public_keys = [{{ id = "{V3_PUB_KEY_ID}", pem_file = "wx_platform_a.pub.pem" }}]
platform_certs = [{{ pem_file = "wx_platform_b.cert.pem" }}, {{ pem_file = "gosdk.cert.pem" }}]
api_base = "http://127.0.0.1:9"
merchant_private_key_file = "wx_merchant.key.pem"
merchant_serial = "3775B6A45ACD588826D15E583A95F5DD00000001"

[accounts.ali]
provider = "alipay"
app_id = "{ALIPAY_APP_ID}"
seller_id = "{ALIPAY_SELLER_ID}"
alipay_public_key_file = "alipay.pub.pem"
api_base = "http://127.0.0.1:9/gateway.do"
app_private_key_file = "alipay_app.key.pem"

[accounts.ali_real]
provider = "alipay"
app_id = "{ALIPAY_APP_ID}"
seller_id = "{ALIPAY_SELLER_ID}"
alipay_public_key = "{spki}"

[routes.goods]
backend = "http://127.0.0.1:9/notify"
notify_key = "12345678901234561234567890123456"
"#
    );
    // Keys are parsed when the config is, so the files are only needed until `parse` returns.
    let dir = tempfile::tempdir().expect("temp dir");
    for (name, bytes) in KEY_FILES {
        std::fs::write(dir.path().join(name), bytes).expect("write test key");
    }
    let cert = gosdk["platform_cert_pem"].as_str().expect("vector has the certificate");
    std::fs::write(dir.path().join("gosdk.cert.pem"), cert).expect("write gosdk certificate");
    let mut parsed = Config::parse(&config, &ConfigDir::new(dir.path())).unwrap_or_else(|e| panic!("fuzz config: {e}"));
    let mut take = |name: &str| parsed.accounts.remove(name).unwrap_or_else(|| panic!("account {name}")).provider;
    Accounts { wechat_v2: take("wx2"), wechat_v3: take("wx3"), alipay: take("ali"), alipay_real: take("ali_real") }
}

/// Signs like WeChat Pay's platform key A (the `V3_PUB_KEY_ID` serial).
pub static WX_PLATFORM_A: LazyLock<RsaPrivateKey> =
    LazyLock::new(|| RsaPrivateKey::from_pem(WX_PLATFORM_A_KEY).expect("wx_platform_a.key.pem"));

/// Signs like Alipay for the `ali` account (`alipay.key.pem`).
pub static ALIPAY: LazyLock<RsaPrivateKey> = LazyLock::new(|| RsaPrivateKey::from_pem(ALIPAY_KEY).expect("alipay.key.pem"));

/// The real Alipay notification's fields (the `alipay-notify-real.json` vector).
pub fn alipay_real_fields() -> Vec<(String, String)> {
    let real: Value = serde_json::from_str(ALIPAY_VECTOR).expect("alipay vector is JSON");
    real["fields"]
        .as_object()
        .expect("fields")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().expect("string field").to_string()))
        .collect()
}

/// A header map with the values that are valid header values; the rest are left out, as an
/// HTTP server would never hand them to payhook.
pub fn header_map<'a>(pairs: impl IntoIterator<Item = (&'static str, &'a [u8])>) -> http::HeaderMap {
    let mut headers = http::HeaderMap::new();
    for (name, value) in pairs {
        if let Ok(value) = http::HeaderValue::from_bytes(value) {
            headers.insert(name, value);
        }
    }
    headers
}

static TRACE: LazyLock<bool> = LazyLock::new(|| std::env::var_os("PAYHOOK_FUZZ_TRACE").is_some());

/// With `PAYHOOK_FUZZ_TRACE=1`, prints what an input did (to check seeds, or triage a crash).
pub fn trace(what: &dyn Debug) {
    if *TRACE {
        eprintln!("{what:?}");
    }
}

/// The invariants of any verified notification: a paid order names an order, and names the
/// merchant of the account that verified it (each provider checks the merchant before it
/// reports a payment).
pub fn check_verified(result: &Result<Verified, ProviderError>, mch_id: &str) {
    trace(result);
    if let Ok(Verified::Paid(order)) = result {
        check_paid(order, mch_id);
    }
    if let Err(err) = result {
        // Error reasons are fixed labels (they are metric labels and reply text).
        assert!(!err.reason().is_empty());
    }
}

pub fn check_query(result: &Result<QueryOutcome, ProviderError>, mch_id: &str, out_trade_no: &str) {
    trace(result);
    match result {
        Ok(QueryOutcome::Paid(order)) => {
            check_paid(order, mch_id);
            assert_eq!(order.out_trade_no, out_trade_no, "a query answer about another order was taken");
        }
        Ok(QueryOutcome::NotPaid { trade_state }) => assert!(!trade_state.is_empty(), "NotPaid without a state"),
        Err(err) => assert!(!err.reason().is_empty()),
    }
}

fn check_paid(order: &PaidOrder, mch_id: &str) {
    assert!(!order.out_trade_no.is_empty(), "a paid order without out_trade_no");
    assert!(matches!(order.provider, "wxpay" | "alipay"));
    assert_eq!(order.mch_id, mch_id, "a paid order of another merchant");
}
