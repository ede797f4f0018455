//! The `payhook` command: run the gateway, check a config, reproduce an envelope.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use payhook::config::Config;
use payhook::envelope::{Envelope, EnvelopeMode};
use payhook::secret::Secret;

#[derive(Parser)]
#[command(name = "payhook", version, about = "Payment-notification gateway for legacy backends")]
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
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PAYHOOK_LOG").unwrap_or_else(|_| "info".into());
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
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
        Command::Run { config, upgrade } => {
            init_logging();
            let cfg = Config::load(&config).with_context(|| format!("loading {}", config.display()))?;
            let (listen, admin) = (cfg.server.listen.clone(), cfg.server.admin_listen.clone());
            let opt = pingora::server::configuration::Opt { upgrade, ..Default::default() };
            let server = payhook::server::build_server(cfg, Some(opt)).context("opening the ledger")?;
            tracing::info!(listen, admin, "payhook starting");
            server.run_forever()
        }
        Command::Check { config } => {
            let cfg = Config::load(&config).with_context(|| format!("checking {}", config.display()))?;
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
    }
}

fn trim_newline(input: &[u8]) -> &[u8] {
    input.strip_suffix(b"\n").unwrap_or(input)
}
