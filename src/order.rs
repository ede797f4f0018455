//! The order data a backend receives: the fields of vk-uni-pay's `vk-pay-orders` row that a
//! `service/pay-notify/{type}.js` callback reads, so a backend written for vk keeps working.

use indexmap::IndexMap;
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::provider::{NotifyInfo, PaidOrder};

/// vk's `notify_mode`: 1 = the provider's asynchronous notification, 0 = an active query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotifyMode {
    Active = 0,
    Notification = 1,
}

/// The order object in vk's field order (JSON.stringify keeps insertion order), written
/// straight from the verified notification: `notify_info` is copied, not decoded and re-encoded.
#[derive(Serialize)]
struct OrderData<'a> {
    out_trade_no: &'a str,
    transaction_id: &'a str,
    total_fee: u64,
    #[serde(rename = "type")]
    order_type: &'a str,
    status: u8,
    provider: &'static str,
    mch_id: &'a str,
    appid: &'a str,
    openid: &'a str,
    pay_date: &'a Value,
    notify_date: i64,
    notify_mode: u8,
    attach: &'a Value,
    notify_info: &'a NotifyInfo,
    #[serde(flatten)]
    registration: Map<String, Value>,
}

/// The names above: a registration's `fields` never replace one of them.
const ORDER_FIELDS: [&str; 14] = [
    "out_trade_no", "transaction_id", "total_fee", "type", "status", "provider", "mch_id", "appid", "openid", "pay_date",
    "notify_date", "notify_mode", "attach", "notify_info",
];

/// The order data's JSON text, with a registration's `fields` (a JSON object's text) after
/// vk's fields.
pub fn order_json(paid: &PaidOrder, order_type: &str, mode: NotifyMode, notify_date_ms: i64, fields: Option<&str>) -> String {
    let data = OrderData {
        out_trade_no: &paid.out_trade_no,
        transaction_id: &paid.transaction_id,
        total_fee: paid.total_fee,
        order_type,
        status: 1,
        provider: paid.provider,
        mch_id: &paid.mch_id,
        appid: &paid.appid,
        openid: &paid.openid,
        pay_date: &paid.pay_date,
        notify_date: notify_date_ms,
        notify_mode: mode as u8,
        attach: &paid.attach,
        notify_info: &paid.notify_info,
        registration: registration_fields(fields),
    };
    serde_json::to_string(&data).expect("order data serialises")
}

/// The members of a registration's `fields` that may join the order data: not one of vk's
/// fields, which payhook derives from the provider, nor `key`, where the `key` envelope puts the
/// notify key (the backend would see two). Not an object: none.
pub fn registration_fields(fields: Option<&str>) -> Map<String, Value> {
    let Some(Ok(Value::Object(mut extra))) = fields.map(serde_json::from_str::<Value>) else { return Map::new() };
    extra.retain(|name, _| name != "key" && !ORDER_FIELDS.contains(&name.as_str()));
    extra
}

/// A held order's data as an operator's `resolve forward` sends it: its members in order, each
/// value kept as its original bytes (`notify_info` above all).
pub struct HeldOrder(IndexMap<String, Box<RawValue>>);

impl HeldOrder {
    /// The ledger's text of the order; None when it is not a JSON object.
    pub fn parse(stored: &str) -> Option<HeldOrder> {
        serde_json::from_str(stored).ok().map(HeldOrder)
    }

    /// The JSON text with `type` set to the operator's and the registration's fields added
    /// where absent.
    pub fn into_json(self, order_type: &str, registration: Map<String, Value>) -> String {
        let HeldOrder(mut members) = self;
        let raw = |value: &Value| RawValue::from_string(value.to_string()).expect("a Value is JSON");
        // An existing `type` keeps its place.
        members.insert("type".into(), raw(&Value::from(order_type)));
        for (name, value) in registration {
            members.entry(name).or_insert_with(|| raw(&value));
        }
        serde_json::to_string(&members).expect("raw members serialise")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_in_vk_order() {
        let paid = PaidOrder {
            provider: "wxpay",
            out_trade_no: "o1".into(),
            transaction_id: "t1".into(),
            total_fee: 1234,
            mch_id: "m".into(),
            appid: "a".into(),
            openid: "u".into(),
            pay_date: 1000.into(),
            attach: serde_json::json!({"k": 1}),
            notify_info: NotifyInfo::from_object(serde_json::from_str(r#"{"b": 2, "a":"\u5546"}"#).unwrap()),
            unparsed: Vec::new(),
        };
        assert_eq!(
            order_json(&paid, "goods", NotifyMode::Active, 2000, None),
            r#"{"out_trade_no":"o1","transaction_id":"t1","total_fee":1234,"type":"goods","status":1,"provider":"wxpay","mch_id":"m","appid":"a","openid":"u","pay_date":1000,"notify_date":2000,"notify_mode":0,"attach":{"k":1},"notify_info":{"b": 2, "a":"\u5546"}}"#
        );
        // A registration's fields follow, never over one of vk's.
        let fields = r#"{"user_id":"u9","total_fee":1,"type":"vip","notify_info":null,"key":"k"}"#;
        assert_eq!(
            order_json(&paid, "goods", NotifyMode::Notification, 2000, Some(fields)),
            r#"{"out_trade_no":"o1","transaction_id":"t1","total_fee":1234,"type":"goods","status":1,"provider":"wxpay","mch_id":"m","appid":"a","openid":"u","pay_date":1000,"notify_date":2000,"notify_mode":1,"attach":{"k":1},"notify_info":{"b": 2, "a":"\u5546"},"user_id":"u9"}"#
        );
        assert_eq!(order_json(&paid, "goods", NotifyMode::Active, 2000, Some("[1]")), order_json(&paid, "goods", NotifyMode::Active, 2000, None));
        // The names a registration may not take are exactly the order data's own.
        let own: Map<String, Value> = serde_json::from_str(&order_json(&paid, "goods", NotifyMode::Active, 2000, None)).unwrap();
        assert!(own.keys().eq(ORDER_FIELDS.iter()));

        // An operator's resolve: the type set, registered fields added after vk's, the
        // provider's `notify_info` bytes untouched (a Value round trip wrote {"b":2,"a":"商"}).
        let held = order_json(&paid, "vip", NotifyMode::Notification, 2000, Some(r#"{"user_id":"u9"}"#));
        let registration = registration_fields(Some(r#"{"user_id":"other","level":2}"#));
        assert_eq!(
            HeldOrder::parse(&held).unwrap().into_json("goods", registration),
            r#"{"out_trade_no":"o1","transaction_id":"t1","total_fee":1234,"type":"goods","status":1,"provider":"wxpay","mch_id":"m","appid":"a","openid":"u","pay_date":1000,"notify_date":2000,"notify_mode":1,"attach":{"k":1},"notify_info":{"b": 2, "a":"\u5546"},"user_id":"u9","level":2}"#
        );
        assert!(HeldOrder::parse("[1]").is_none());
    }
}
