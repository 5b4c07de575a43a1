//! The `berth` binary: parse the command line, load the configuration, run the chosen command.

use std::path::PathBuf;

use anyhow::Context;
use berth::config::{Config, LogFormat};
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
    let store = Store::open(&config.storage.root)
        .with_context(|| format!("opening the store at {}", config.storage.root.display()))?;
    let listener = tokio::net::TcpListener::bind(config.listen_addr()?)
        .await
        .with_context(|| format!("binding {}", config.server.listen))?;
    tracing::info!(listen = %listener.local_addr()?, root = %config.storage.root.display(), "berth serving");
    let upstreams = config
        .upstream_settings()?
        .into_iter()
        .map(|settings| berth::upstream::Upstream::new(settings).context("building an upstream client"))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let app = berth::app(Registry::new(store, upstreams));
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    tracing::info!("berth stopped");
    Ok(())
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
