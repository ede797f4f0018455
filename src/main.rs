//! The `payhook` command: run the gateway, check a config, reproduce an envelope, and the
//! backend developer's kit: simulate a provider's notification, generate keys for it.

// `Command` is parsed once per process: boxing its largest variant would only add indirection.
#![allow(clippy::large_enum_variant)]

mod keygen;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use payhook::config::{Config, LogFormat};
use payhook::envelope::{Envelope, EnvelopeMode};
use payhook::forward::{Backend, Forwarder};
use payhook::provider::wechat_v2::SignKind;
use payhook::secret::Secret;
use payhook::simulate::{self, Fresh, Order, Simulator};

// Fewer, cheaper allocations than glibc's malloc under the gateway's many small, short-lived
// ones (bodies, headers, JSON), and no arena lock contention between the runtime threads.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;


/// Longer than any gateway's reply budget (WeChat itself waits 5 s).
const SIMULATE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Parser)]
#[command(name = "payhook", version = payhook::metrics::VERSION, about = "Payment-notification gateway for legacy backends")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start the gateway.
    Run {
        #[arg(long, short)]
        config: PathBuf,
        /// Take over the listeners of a running payhook (pingora graceful upgrade; then SIGQUIT the old one).
        #[arg(long, short)]
        upgrade: bool,
        /// Overrides `[server] log_format`.
        #[arg(long, value_enum)]
        log_format: Option<LogFormat>,
    },
    /// Validate a config (keys load, URLs parse, backends resolve) and exit.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Encrypt or decrypt an order as payhook sends it (stdin → stdout).
    Envelope {
        #[arg(value_parser = ["encrypt", "decrypt"])]
        action: String,
        #[arg(long)]
        mode: EnvelopeMode,
        /// The route's notify_key; prefer PAYHOOK_NOTIFY_KEY in the environment.
        #[arg(long, env = "PAYHOOK_NOTIFY_KEY", hide_env_values = true)]
        key: String,
    },
    /// Send a paid-order notification signed as a provider would; exit 1 unless the gateway says success.
    Simulate(SimulateArgs),
    /// Write fresh keys for `simulate` and the gateway, and print the config lines.
    Keygen {
        #[arg(long)]
        provider: ProviderArg,
        /// Directory for the new files; existing files are never overwritten.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum ProviderArg {
    WechatV3,
    WechatV2,
    Alipay,
}

impl ProviderArg {
    fn name(self) -> &'static str {
        match self {
            ProviderArg::WechatV3 => "wechat-v3",
            ProviderArg::WechatV2 => "wechat-v2",
            ProviderArg::Alipay => "alipay",
        }
    }
}

/// The defaults are the demo accounts of conf/payhook.toml, with paths from the repository root.
#[derive(Args)]
struct SimulateArgs {
    #[arg(long)]
    provider: ProviderArg,
    /// The gateway's notify URL, e.g. http://127.0.0.1:8080/notify/wx-demo/goods
    #[arg(long)]
    to: String,
    /// For an https URL: trust only the CAs in this PEM file (default: the system's roots).
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// The merchant's order number.
    #[arg(long)]
    out_trade_no: String,
    /// The amount in fen (1234 = 12.34 yuan).
    #[arg(long)]
    total_fee: u64,
    /// The provider's private key, PEM [default: conf/demo/wechat_v3_platform.key.pem or conf/demo/alipay.key.pem]
    #[arg(long)]
    key_file: Option<PathBuf>,
    /// wechat-v3: file holding the APIv3 key.
    #[arg(long, default_value = simulate::DEMO_APIV3_KEY_FILE)]
    apiv3_key_file: PathBuf,
    /// wechat-v2: file holding the API key.
    #[arg(long, default_value = simulate::DEMO_WECHAT_V2_API_KEY_FILE)]
    api_key_file: PathBuf,
    /// wechat-v3: the Wechatpay-Serial (public-key id or certificate serial).
    #[arg(long, default_value = simulate::DEMO_SERIAL)]
    serial: String,
    /// wechat-v3: mchid; wechat-v2: mch_id.
    #[arg(long, alias = "mch-id", default_value = simulate::DEMO_MCHID)]
    mchid: String,
    /// wechat-v3, wechat-v2: appid.
    #[arg(long, default_value = simulate::DEMO_WECHAT_APPID)]
    appid: String,
    /// alipay: app_id.
    #[arg(long, default_value = simulate::DEMO_ALIPAY_APP_ID)]
    app_id: String,
    /// alipay: seller_id.
    #[arg(long, default_value = simulate::DEMO_ALIPAY_SELLER_ID)]
    seller_id: String,
    /// The order's attach (alipay: passback_params), e.g. '{"user_id":"u001"}'.
    #[arg(long)]
    attach: Option<String>,
    /// wechat-v2: signature algorithm.
    #[arg(long, value_enum, default_value = "MD5")]
    sign_type: SignTypeArg,
    /// alipay: body charset.
    #[arg(long, value_enum, default_value = "utf-8")]
    charset: CharsetArg,
    /// Send the same notification K more times, as a provider's retries do; all must succeed.
    #[arg(long, value_name = "K", default_value_t = 0)]
    duplicate: u32,
    /// Change one signed byte after signing: the gateway must reject it, so this exits 1.
    #[arg(long)]
    tamper: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum SignTypeArg {
    #[value(name = "MD5")]
    Md5,
    #[value(name = "HMAC-SHA256")]
    HmacSha256,
}

#[derive(Clone, Copy, ValueEnum)]
enum CharsetArg {
    #[value(name = "utf-8")]
    Utf8,
    #[value(name = "gbk")]
    Gbk,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("payhook: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run { config, upgrade, log_format } => {
            let cfg = Config::load(&config).with_context(|| format!("loading {}", config.display()))?;
            // Kept to the end of `run`: dropping it would stop the span export.
            let _tracer = payhook::telemetry::init(log_format.unwrap_or(cfg.server.log_format), cfg.telemetry.otlp_endpoint.as_deref())?;
            for warning in cfg.certificate_warnings(chrono::Utc::now().timestamp()) {
                tracing::warn!("{warning}");
            }
            let (listen, admin) = (cfg.server.listen.clone(), cfg.server.admin_listen.clone());
            let opt = pingora::server::configuration::Opt { upgrade, ..Default::default() };
            let pid_file = cfg.server.pid_file.clone();
            let server = payhook::server::build_server(cfg, &config, Some(opt)).context("opening the ledger")?;
            // pingora writes the pid file only when it daemonises; operators need it in the
            // foreground too (SIGHUP, the upgrade's SIGQUIT). A new process of an upgrade overwrites it.
            std::fs::write(&pid_file, format!("{}\n", std::process::id())).with_context(|| format!("writing server.pid_file {pid_file}"))?;
            tracing::info!(listen, admin, version = payhook::metrics::VERSION, "payhook starting");
            server.run_forever()
        }
        Command::Check { config } => {
            let cfg = Config::load(&config).with_context(|| format!("checking {}", config.display()))?;
            let demo = cfg.demo_files();
            let loopback = cfg.server.listen.parse::<SocketAddr>().is_ok_and(|a| a.ip().is_loopback());
            if !demo.is_empty() && !loopback {
                let files: Vec<String> = demo.iter().map(|p| p.display().to_string()).collect();
                eprintln!(
                    "WARNING: server.listen {} is not a loopback address, yet the config uses public demo keys and \
                     secrets ({}): anyone can forge a paid notification with them. Replace them (see payhook keygen) \
                     before real traffic.",
                    cfg.server.listen,
                    files.join(", ")
                );
            }
            let published = cfg.routes_with_published_keys();
            if !published.is_empty() && !loopback {
                eprintln!(
                    "WARNING: routes {} use vk-uni-pay's published default notifyKey: anyone can seal an order those \
                     backends accept. Give each backend a key of its own (e.g. openssl rand -hex 32) on both sides.",
                    published.join(", ")
                );
            }
            for warning in cfg.certificate_warnings(chrono::Utc::now().timestamp()) {
                eprintln!("WARNING: {warning}");
            }
            println!(
                "{}: ok ({} accounts, {} routes)",
                config.display(),
                cfg.accounts.len(),
                cfg.routes.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Envelope { action, mode, key } => {
            let envelope = Envelope::new(mode, Secret::new(key))?;
            let mut input = Vec::new();
            std::io::stdin().read_to_end(&mut input)?;
            let output = if action == "encrypt" {
                envelope.encrypt(trim_newline(&input)).into_bytes()
            } else {
                envelope.decrypt(std::str::from_utf8(&input)?)?
            };
            let mut out = std::io::stdout().lock();
            out.write_all(&output)?;
            out.write_all(b"\n")?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Simulate(args) => simulate(args),
        Command::Keygen { provider, out } => {
            keygen::keygen(provider, &out)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn simulate(args: SimulateArgs) -> anyhow::Result<ExitCode> {
    let simulator = match args.provider {
        ProviderArg::WechatV3 => {
            let key = read_file(args.key_file.as_deref().unwrap_or(simulate::DEMO_WECHAT_V3_KEY_FILE.as_ref()))?;
            let apiv3_key = read_secret(&args.apiv3_key_file)?;
            Simulator::wechat_v3(&key, &apiv3_key, &args.serial, &args.mchid, &args.appid)?
        }
        ProviderArg::WechatV2 => {
            let sign = match args.sign_type {
                SignTypeArg::Md5 => SignKind::Md5,
                SignTypeArg::HmacSha256 => SignKind::HmacSha256,
            };
            Simulator::wechat_v2(read_secret(&args.api_key_file)?, &args.mchid, &args.appid, sign)
        }
        ProviderArg::Alipay => {
            let key = read_file(args.key_file.as_deref().unwrap_or(simulate::DEMO_ALIPAY_KEY_FILE.as_ref()))?;
            let charset = match args.charset {
                CharsetArg::Utf8 => encoding_rs::UTF_8,
                CharsetArg::Gbk => encoding_rs::GBK,
            };
            Simulator::alipay(&key, &args.app_id, &args.seller_id, charset)?
        }
    };
    let order = Order { out_trade_no: args.out_trade_no, total_fee: args.total_fee, attach: args.attach };
    let notification = simulator.notification(&order, &Fresh::now(), args.tamper);
    let target = Backend::parse(&args.to).map_err(anyhow::Error::msg).context("--to")?;
    let headers: Vec<(&str, &str)> = notification.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();

    println!(
        "{} notification: out_trade_no={} total_fee={}{} -> {}",
        simulator.kind(),
        order.out_trade_no,
        order.total_fee,
        if args.tamper { " (tampered after signing)" } else { "" },
        target.url()
    );
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let forwarder = Forwarder::new(args.ca_file.as_ref().map(|p| p.display().to_string()));
    let sends = 1 + args.duplicate;
    let mut failures = 0;
    for n in 1..=sends {
        let body = bytes::Bytes::from(notification.body.clone());
        let reply = runtime
            .block_on(forwarder.exchange(&target, "POST", &headers, body, SIMULATE_TIMEOUT))
            .with_context(|| format!("POST {}", target.url()))?;
        let success = simulator.is_success(reply.status, &reply.body);
        failures += u32::from(!success);
        println!(
            "send {n}/{sends}: HTTP {} {:?} -> {}",
            reply.status,
            String::from_utf8_lossy(&reply.body),
            if success { "success" } else { "NOT the provider's success reply" }
        );
    }
    if failures == 0 {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("payhook simulate: {failures} of {sends} answers were not {}'s success reply", simulator.kind());
        Ok(ExitCode::FAILURE)
    }
}

fn read_file(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

/// A key file as the config reads one: its content without the trailing newline.
fn read_secret(path: &Path) -> anyhow::Result<Secret> {
    let text = String::from_utf8(read_file(path)?).with_context(|| format!("{} is not UTF-8", path.display()))?;
    Ok(Secret::new(text.trim_end_matches(['\r', '\n'])))
}

fn trim_newline(input: &[u8]) -> &[u8] {
    input.strip_suffix(b"\n").unwrap_or(input)
}
