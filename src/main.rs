//! The `berth` binary: parse the command line, load the configuration, run the chosen command.

use std::path::PathBuf;

use anyhow::Context;
use std::sync::Arc;

use berth::api::{AppState, ClientLimits};
use berth::auth::Auth;
use berth::config::{Config, LogFormat};
use berth::server::TlsFiles;
use berth::service::Registry;
use berth::store::Store;
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

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
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
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
        registry,
        auth: Arc::new(auth),
        limits: Arc::new(ClientLimits::new(&config.limits)),
        tls: tls.is_some(),
    };
    tracing::info!(listen = %addr, root = %root.display(), tls = tls.is_some(), "berth serving");
    berth::server::serve(berth::app(state), addr, tls)
        .await
        .with_context(|| format!("serving on {addr}"))?;
    tracing::info!("berth stopped");
    Ok(())
}
