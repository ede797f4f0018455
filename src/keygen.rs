//! `payhook keygen`: fresh keys for a test or staging gateway, so it need not share the public
//! demo keys. The private half (or the shared secret) is for `payhook simulate`; the public half
//! goes in the gateway's config.
//!
//! ring, which does all of payhook's RSA signing and verifying, cannot generate RSA keys, so
//! this one command uses the `rsa` crate. Its advisory RUSTSEC-2023-0071 (Marvin) is a timing
//! side channel in private-key *operations* observed over a network; generating a key once on
//! the operator's machine exposes no such operation, and nothing else in payhook uses the crate.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::Context;
use payhook::keys::random_hex;
use payhook::simulate::DEMO_SERIAL;
use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};

use crate::ProviderArg;

/// WeChat and Alipay both sign with 2048-bit RSA keys.
const RSA_BITS: usize = 2048;
/// Private keys and shared secrets: readable by their owner only.
const PRIVATE: u32 = 0o600;
const PUBLIC: u32 = 0o644;

/// One file to write, and who may read it.
struct Output {
    name: &'static str,
    contents: Vec<u8>,
    mode: u32,
}

/// Writes the provider's new key files into `out` and prints the lines that use them.
pub fn keygen(provider: ProviderArg, out: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let dir = out.canonicalize().with_context(|| format!("resolving {}", out.display()))?;
    let outputs = match provider {
        ProviderArg::WechatV3 => {
            let (private, public) = rsa_pair()?;
            vec![
                Output { name: "wechat_v3_platform.key.pem", contents: private, mode: PRIVATE },
                Output { name: "wechat_v3_platform.pub.pem", contents: public, mode: PUBLIC },
                Output { name: "wechat_v3_apiv3_key.txt", contents: random_hex(16).into_bytes(), mode: PRIVATE },
            ]
        }
        ProviderArg::WechatV2 => vec![Output { name: "wechat_v2_api_key.txt", contents: random_hex(16).into_bytes(), mode: PRIVATE }],
        ProviderArg::Alipay => {
            let (private, public) = rsa_pair()?;
            vec![
                Output { name: "alipay.key.pem", contents: private, mode: PRIVATE },
                Output { name: "alipay.pub.pem", contents: public, mode: PUBLIC },
            ]
        }
    };
    // Check them all first, so a clash leaves no half-written set behind.
    for output in &outputs {
        let path = dir.join(output.name);
        if path.exists() {
            anyhow::bail!("{} exists; keygen never overwrites keys (choose another --out)", path.display());
        }
    }
    for output in &outputs {
        let path = dir.join(output.name);
        write_new(&path, &output.contents, output.mode)?;
        println!("wrote {}{}", path.display(), if output.mode == PRIVATE { " (private, mode 0600)" } else { "" });
    }

    let file = |name: &str| dir.join(name);
    let toml = |name: &str| toml::Value::String(file(name).display().to_string()).to_string();
    let (config, flags) = match provider {
        ProviderArg::WechatV3 => (
            format!(
                "apiv3_key_file = {}\nplatform_public_keys = [ {{ id = \"{DEMO_SERIAL}\", pem_file = {} }} ]",
                toml("wechat_v3_apiv3_key.txt"),
                toml("wechat_v3_platform.pub.pem")
            ),
            format!(
                "--key-file {} --apiv3-key-file {}",
                file("wechat_v3_platform.key.pem").display(),
                file("wechat_v3_apiv3_key.txt").display()
            ),
        ),
        ProviderArg::WechatV2 => (
            format!("api_key_file = {}", toml("wechat_v2_api_key.txt")),
            format!("--api-key-file {}", file("wechat_v2_api_key.txt").display()),
        ),
        ProviderArg::Alipay => (
            format!("alipay_public_key_file = {}", toml("alipay.pub.pem")),
            format!("--key-file {}", file("alipay.key.pem").display()),
        ),
    };
    let name = provider.name();
    println!("\n# In the gateway config, the [accounts.NAME] section with provider = \"{name}\":\n{config}");
    println!("\n# Then simulate with:\npayhook simulate --provider {name} {flags} --to URL --out-trade-no N --total-fee FEN");
    Ok(())
}

/// A fresh RSA key as PKCS#8 (private) and SPKI (public) PEM.
fn rsa_pair() -> anyhow::Result<(Vec<u8>, Vec<u8>)> {
    let key = rsa::RsaPrivateKey::new(&mut rand_core::OsRng, RSA_BITS).context("generating an RSA key")?;
    let private = key.to_pkcs8_pem(LineEnding::LF).context("encoding the private key")?;
    let public = key.to_public_key().to_public_key_pem(LineEnding::LF).context("encoding the public key")?;
    Ok((private.as_bytes().to_vec(), public.into_bytes()))
}

/// Creates `path` with `mode` from the start (never world-readable for a moment), refusing to
/// replace an existing file.
fn write_new(path: &Path, contents: &[u8], mode: u32) -> anyhow::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(contents).and_then(|()| file.sync_all()).with_context(|| format!("writing {}", path.display()))
}
