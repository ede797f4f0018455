//! The order data a backend receives: the fields of vk-uni-pay's `vk-pay-orders` row that a
//! `service/pay-notify/{type}.js` callback reads, so a backend written for vk keeps working.

use serde_json::{Map, Value};

use crate::provider::PaidOrder;

/// vk's `notify_mode`: 1 = the provider's asynchronous notification, 0 = an active query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotifyMode {
    Active = 0,
    Notification = 1,
}

/// Builds the order object in vk's field order (JSON.stringify keeps insertion order).
pub fn order_data(paid: PaidOrder, order_type: &str, mode: NotifyMode, notify_date_ms: i64) -> Map<String, Value> {
    let mut m = Map::with_capacity(14);
    m.insert("out_trade_no".into(), paid.out_trade_no.into());
    m.insert("transaction_id".into(), paid.transaction_id.into());
    m.insert("total_fee".into(), paid.total_fee.into());
    m.insert("type".into(), order_type.into());
    m.insert("status".into(), 1.into());
    m.insert("provider".into(), paid.provider.into());
    m.insert("mch_id".into(), paid.mch_id.into());
    m.insert("appid".into(), paid.appid.into());
    m.insert("openid".into(), paid.openid.into());
    m.insert("pay_date".into(), paid.pay_date.into());
    m.insert("notify_date".into(), notify_date_ms.into());
    m.insert("notify_mode".into(), (mode as u8).into());
    m.insert("attach".into(), paid.attach);
    m.insert("notify_info".into(), Value::Object(paid.notify_info));
    m
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
            notify_info: Map::new(),
            unparsed: Vec::new(),
        };
        let text = serde_json::to_string(&order_data(paid, "goods", NotifyMode::Active, 2000)).unwrap();
        assert_eq!(
            text,
            r#"{"out_trade_no":"o1","transaction_id":"t1","total_fee":1234,"type":"goods","status":1,"provider":"wxpay","mch_id":"m","appid":"a","openid":"u","pay_date":1000,"notify_date":2000,"notify_mode":0,"attach":{"k":1},"notify_info":{}}"#
        );
    }
}
