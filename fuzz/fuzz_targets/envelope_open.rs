//! The backend envelope: `Envelope::open` (what a backend does with payhook's body) and
//! `Envelope::decrypt` on arbitrary bytes, in each mode (`aes-256-ecb`, `aes192`, `key`), plus
//! arbitrary plaintext under a valid ciphertext so the JSON inside is fuzzed too.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use payhook::envelope::{Envelope, EnvelopeMode};
use payhook::secret::Secret;
use payhook_fuzz::trace;
use serde_json::{Map, Value};

/// The notify key of vk's own documentation vector (`vk-envelope.json`).
const NOTIFY_KEY: &str = "12345678901234561234567890123456";

static ENVELOPES: LazyLock<Vec<Envelope>> = LazyLock::new(|| {
    [EnvelopeMode::Aes256Ecb, EnvelopeMode::Aes192, EnvelopeMode::Key]
        .into_iter()
        .map(|mode| Envelope::new(mode, Secret::new(NOTIFY_KEY)).expect("a 32-character key"))
        .collect()
});

fuzz_target!(|data: &[u8]| {
    for env in ENVELOPES.iter() {
        let opened = env.open(data);
        trace(&(env.mode(), &opened));
        if let Ok(order) = &opened {
            // What opens, seals and opens again, with the same fields.
            let again = env.open(&env.seal(&serde_json::to_string(order).expect("a map serialises"))).expect("a sealed order opens");
            assert!(again.keys().eq(order.keys()), "{:?}: fields changed in a seal/open round trip", env.mode());
        }

        if let Ok(text) = std::str::from_utf8(data) {
            if let Ok(plain) = env.decrypt(text) {
                if env.mode() == EnvelopeMode::Key {
                    assert_eq!(plain, data);
                } else {
                    // Base64 decoding is canonical, so decrypt is the exact inverse of encrypt.
                    assert_eq!(env.encrypt(&plain), text.trim(), "{:?}: decrypt/encrypt round trip", env.mode());
                }
            }
        }

        if env.mode() != EnvelopeMode::Key {
            let body = serde_json::json!({ "encryptedData": env.encrypt(data) }).to_string();
            let opened = env.open(body.as_bytes());
            let is_object = serde_json::from_slice::<Map<String, Value>>(data).is_ok();
            assert_eq!(opened.is_ok(), is_object, "{:?}: a valid ciphertext of {data:?} opened as {opened:?}", env.mode());
        }
    }
});
