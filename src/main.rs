//! The `berth` binary: parse the command line, load the configuration, run the chosen command.

use std::path::PathBuf;

use anyhow::Context;
use std::sync::Arc;

use berth::api::{AppState, ClientLimits};
use berth::auth::Auth;
use berth::config::{Config, LogFormat};
use berth::server::{Options, TlsFiles};
use berth::service::Registry;
use berth::store::Store;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

/// How often the store's disk use is measured for the `berth_store_*` gauges.
const USAGE_PERIOD: std::time::Duration = std::time::Duration::from_secs(60);

#[derive(Parser)]
#[command(version, about = "An OCI registry and pull-through mirror")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the registry.
    Serve {
        /// Configuration file; default ./mirror.toml, or the built-in defaults when that is absent.
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

fn init_logging(config: &Config) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.log.level));
    // Colours only for a person at a terminal, never in files, journald or log shippers.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    berth::install_crypto_provider();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config } => serve(Config::load(config.as_deref())?).await,
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    init_logging(&config);
    let root = &config.storage.root;
    let store = Store::open(root).with_context(|| format!("opening the store at {}", root.display()))?;
    let upstreams = config
        .upstream_settings()?
        .into_iter()
        .map(|settings| berth::upstream::Upstream::new(settings).context("building an upstream client"))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let registry = Registry::new(store, upstreams)
        .with_private_namespaces(config.private.namespaces.clone())
        .with_upload_session_limit(config.limits.max_upload_sessions);
    let auth = Auth::new(&config.auth).map_err(anyhow::Error::msg)?;
    let addr = config.listen_addr()?;
    if !auth.enabled() && !addr.ip().is_loopback() {
        tracing::warn!(%addr, "authentication is off ([auth] htpasswd is empty): anyone who reaches this address may push");
    }
    let tls = &config.server.tls;
    let tls = match (tls.cert.is_empty(), tls.key.is_empty()) {
        (true, true) => None,
        (false, false) => Some(TlsFiles {
            cert: tls.cert.clone().into(),
            key: tls.key.clone().into(),
        }),
        _ => anyhow::bail!("[server.tls] needs both cert and key"),
    };
    let state = AppState {
        registry: registry.clone(),
        auth: Arc::new(auth),
        limits: Arc::new(ClientLimits::new(&config.limits)),
        tls: tls.is_some(),
    };
    // Cancelled when shutdown begins: background tasks watch it and end.
    let stop = CancellationToken::new();
    tokio::spawn({
        let (registry, stop) = (registry.clone(), stop.clone());
        async move { registry.measure_usage_every(USAGE_PERIOD, stop).await }
    });
    let options = Options {
        addr,
        tls,
        drain_timeout: config.drain_timeout()?,
    };
    tracing::info!(listen = %addr, root = %root.display(), tls = options.tls.is_some(), "berth serving");
    berth::server::serve(berth::app(state), options, stop)
        .await
        .with_context(|| format!("serving on {addr}"))?;
    // The drain is over: no request runs any more. State that lives in memory is flushed here,
    // before the process exits 0.
    tracing::info!("berth stopped");
    Ok(())
}
