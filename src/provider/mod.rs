//! Payment providers behind one trait.
//!
//! A provider turns the raw bytes of a notification into a verified, normalised [`Verified`]
//! and builds its own exact replies. Providers do no I/O: keys are parsed when the config is
//! loaded, and the clock is passed in. Adding a provider is one file plus one arm in [`build`].

pub mod alipay;
pub mod wechat_v2;
pub mod wechat_v3;

use std::sync::Arc;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::config::{ConfigDir, ConfigError};
use crate::forward::{Backend, HttpReply};
use crate::keys::{Certificate, KeyRefusal, VerifyingKey};

/// WeChat Pay (v2 and v3) counts a notification as failed after 5 s without a reply.
pub(crate) const WECHAT_REPLY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The raw notification, exactly as received.
pub struct Inbound<'a> {
    pub headers: &'a http::HeaderMap,
    pub body: &'a [u8],
    /// Unix seconds, passed in so tests can replay old vectors.
    pub now: i64,
}

/// What a verified notification says.
#[derive(Debug)]
pub enum Verified {
    /// An explicit, successful payment: forward it.
    Paid(PaidOrder),
    /// Authentic, but not a payment to forward (refund, close, other event): acknowledge only.
    NotPayment { what: String },
}

/// The provider-neutral facts of a paid order (the vk-pay-orders fields a backend needs).
#[derive(Debug, Clone, PartialEq)]
pub struct PaidOrder {
    /// vk-uni-pay's provider name: `wxpay` or `alipay`.
    pub provider: &'static str,
    pub out_trade_no: String,
    pub transaction_id: String,
    /// Integer fen.
    pub total_fee: u64,
    pub mch_id: String,
    pub appid: String,
    pub openid: String,
    /// When the payer paid, in milliseconds since the epoch; the provider's own text when it
    /// does not parse (it decides no money, so it never blocks a payment).
    pub pay_date: Value,
    pub attach: Value,
    /// The provider's own fields (vk's `notify_info`).
    pub notify_info: NotifyInfo,
    /// Fields that decide no money and did not parse, forwarded as the provider sent them.
    pub unparsed: Vec<&'static str>,
}

impl PaidOrder {
    /// Milliseconds since the epoch, or the raw `text` (noted in `unparsed`) when it does not parse.
    pub(crate) fn lenient_date(millis: Option<i64>, text: String, field: &'static str, unparsed: &mut Vec<&'static str>) -> Value {
        match millis {
            Some(ms) => Value::from(ms),
            None => {
                unparsed.push(field);
                Value::String(text)
            }
        }
    }
}

/// vk's `notify_info`: the provider's own fields as one JSON object, forwarded as they are.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(transparent)]
pub struct NotifyInfo(Box<RawValue>);

impl NotifyInfo {
    /// Decoded text fields (an XML notification, a signed form), each name once, in the order
    /// given: written straight into JSON, without a map of `Value`s in between.
    pub fn from_fields<'a, I>(fields: I) -> NotifyInfo
    where
        I: IntoIterator<Item = (&'a String, &'a String)> + Clone,
    {
        struct Fields<I>(I);
        impl<'a, I: IntoIterator<Item = (&'a String, &'a String)> + Clone> serde::Serialize for Fields<I> {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_map(self.0.clone())
            }
        }
        NotifyInfo(serde_json::value::to_raw_value(&Fields(fields)).expect("text fields serialise"))
    }

    /// A JSON object's text as the provider sent (and signed or sealed) it: kept byte for byte
    /// instead of decoded into a map and written again. The caller checked it is an object.
    pub(crate) fn from_object(object: &RawValue) -> NotifyInfo {
        NotifyInfo(object.to_owned())
    }

    pub fn json(&self) -> &str {
        self.0.get()
    }

    /// The fields decoded, for checks; delivery forwards [`NotifyInfo::json`] as it is.
    pub fn to_map(&self) -> Map<String, Value> {
        serde_json::from_str(self.json()).expect("notify_info is a JSON object")
    }
}

impl PartialEq for NotifyInfo {
    fn eq(&self, other: &NotifyInfo) -> bool {
        self.json() == other.json()
    }
}

/// Which reply a provider should hear.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Stop retrying: the order reached the backend, was already done, or is not a payment.
    Success,
    /// Please retry later (backend or ledger failure).
    Retry,
    /// The notification failed verification.
    Rejected,
}

/// Exact reply bytes for a provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub content_type: Option<&'static str>,
    pub body: Bytes,
}

#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("missing header {0}")]
    MissingHeader(&'static str),
    #[error("probe signature (WECHATPAY/SIGNTEST/)")]
    ProbeSignature,
    #[error("signature does not verify")]
    BadSignature,
    #[error("no key for serial {0}")]
    UnknownSerial(String),
    #[error("certificate {0} has expired or is not yet valid")]
    CertificateExpired(String),
    #[error("timestamp outside tolerance")]
    StaleTimestamp,
    #[error("resource does not decrypt")]
    Decrypt,
    #[error("malformed notification: {0}")]
    Malformed(String),
    #[error("XML with a DTD or entity declaration")]
    XmlDoctype,
    #[error("merchant or app id does not match the account")]
    MerchantMismatch,
    #[error("bad amount {0:?}")]
    BadAmount(String),
    #[error("the provider asks to slow down")]
    Throttled,
}

impl ProviderError {
    /// Stable snake_case label for metrics and replies; details stay in logs.
    pub fn reason(&self) -> &'static str {
        match self {
            ProviderError::MissingHeader(_) => "missing_header",
            ProviderError::ProbeSignature => "probe_signature",
            ProviderError::BadSignature => "bad_signature",
            ProviderError::UnknownSerial(_) => "unknown_serial",
            ProviderError::CertificateExpired(_) => "certificate_expired",
            ProviderError::StaleTimestamp => "stale_timestamp",
            ProviderError::Decrypt => "decrypt_failed",
            ProviderError::Malformed(_) => "malformed",
            ProviderError::XmlDoctype => "xml_doctype",
            ProviderError::MerchantMismatch => "merchant_mismatch",
            ProviderError::BadAmount(_) => "bad_amount",
            ProviderError::Throttled => "throttled",
        }
    }
}

pub trait Provider: Send + Sync {
    /// The config name (`wechat-v3`, ...), for logs.
    fn kind(&self) -> &'static str;

    /// (provider family, merchant id): with `out_trade_no`, the payment's identity in the
    /// ledger. Accounts of one merchant (a v2 and a v3 account of one `mchid`) share it.
    fn merchant(&self) -> (&'static str, &str);

    /// How long the provider waits for a reply before it counts the notification as failed.
    fn reply_timeout(&self) -> Option<std::time::Duration> {
        None
    }

    /// The certificates whose keys verify this account's signatures (none in public-key mode),
    /// for their expiry gauge and warnings.
    fn certificates(&self) -> Vec<&Certificate> {
        Vec::new()
    }

    /// Verifies the raw notification and normalises it. Never trusts a byte before the signature.
    fn verify(&self, inbound: &Inbound) -> Result<Verified, ProviderError>;

    /// The provider's exact reply for `answer`; `reason` is a short fixed label, never user data.
    fn reply(&self, answer: Answer, reason: &str) -> Reply;

    /// Whether [`Provider::order_query`] can build a request (the account has query
    /// credentials). Asked every sweep round, so it must not build (and sign) one.
    fn can_query(&self) -> bool;

    /// The signed order-query request for `out_trade_no` (the active trigger), or `None` when the
    /// account has no `api_base` / signing key configured. `now` is unix seconds.
    fn order_query(&self, out_trade_no: &str, now: i64) -> Option<QueryRequest<'_>>;

    /// Verifies and interprets the provider's answer to [`Provider::order_query`]; a reply that
    /// does not verify is an error, never "not paid".
    fn parse_order_query(&self, out_trade_no: &str, reply: &HttpReply, now: i64) -> Result<QueryOutcome, ProviderError>;
}

/// A provider API call, built without I/O; the flow sends it.
pub struct QueryRequest<'a> {
    pub endpoint: &'a Backend,
    pub method: &'static str,
    /// Path and query on the endpoint's host.
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

/// What a verified order query says.
#[derive(Debug)]
pub enum QueryOutcome {
    Paid(PaidOrder),
    /// Not paid (yet), or unknown to the provider: the provider's own state word.
    NotPaid { trade_state: String },
}

/// A provider's signature over `message`, checked with `key` as of `now` (unix seconds).
pub(crate) fn verify_sha256_at(key: &VerifyingKey, message: &[u8], signature: &[u8], now: i64) -> Result<(), ProviderError> {
    key.verify_sha256_at(message, signature, now).map_err(|refusal| match refusal {
        KeyRefusal::BadSignature => ProviderError::BadSignature,
        KeyRefusal::OutsideValidity => {
            ProviderError::CertificateExpired(key.certificate().map(|c| c.serial_hex.clone()).unwrap_or_default())
        }
    })
}

/// Builds the provider of one `[accounts.NAME]` section: the only registry of providers.
pub fn build(account: &str, mut table: toml::Table, dir: &ConfigDir) -> Result<Arc<dyn Provider>, ConfigError> {
    let key = format!("accounts.{account}");
    let kind = match table.remove("provider") {
        Some(toml::Value::String(kind)) => kind,
        _ => return Err(ConfigError::invalid(format!("{key}.provider"), "required (wechat-v3 | wechat-v2 | alipay)")),
    };
    Ok(match kind.as_str() {
        "wechat-v3" => Arc::new(wechat_v3::WechatV3::from_config(&key, section(&key, table)?, dir)?),
        "wechat-v2" => Arc::new(wechat_v2::WechatV2::from_config(&key, section(&key, table)?)?),
        "alipay" => Arc::new(alipay::Alipay::from_config(&key, section(&key, table)?, dir)?),
        other => return Err(ConfigError::invalid(format!("{key}.provider"), format!("unknown provider {other:?}"))),
    })
}

fn section<T: DeserializeOwned>(key: &str, table: toml::Table) -> Result<T, ConfigError> {
    T::deserialize(toml::Value::Table(table)).map_err(|e| ConfigError::invalid(key, e.message()))
}

/// Parses an account's `api_base`, under which request paths are appended: a query string there
/// would land in the middle of the path, so it is refused.
pub(crate) fn api_base(key: &str, url: &str) -> Result<Backend, ConfigError> {
    let k = format!("{key}.api_base");
    let api = Backend::parse(url).map_err(|e| ConfigError::invalid(&k, e))?;
    if api.path().contains('?') {
        return Err(ConfigError::invalid(k, "must not have a query string"));
    }
    Ok(api)
}

/// `suffix` under the base path of `api` (which may or may not end in `/`).
pub(crate) fn api_path(api: &Backend, suffix: &str) -> String {
    format!("{}{suffix}", api.path().trim_end_matches('/'))
}

/// Providers in mainland China stamp local times in Beijing time (UTC+8, no DST): → epoch ms.
pub(crate) fn beijing_millis(text: &str, format: &str) -> Option<i64> {
    let local = chrono::NaiveDateTime::parse_from_str(text, format).ok()?;
    // Checked: within 8 hours of chrono's earliest date (`-262143-01-01`) the shift overflows.
    Some(local.checked_sub_signed(chrono::Duration::hours(8))?.and_utc().timestamp_millis())
}

/// `attach` / `passback_params`: a JSON object when it is one, else the plain string.
pub fn parse_attach(text: &str) -> Value {
    match serde_json::from_str::<Value>(text) {
        Ok(v @ Value::Object(_)) => v,
        _ => Value::String(text.to_string()),
    }
}
