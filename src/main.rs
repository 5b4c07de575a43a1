//! The `berth` binary: parse the command line, load the configuration, run the chosen command.

mod cli;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use berth::api::admin::Admin;
use berth::api::{AppState, ClientLimits};
use berth::auth::Auth;
use berth::config::{Config, LogFormat};
use berth::server::{Options, TlsFiles};
use berth::service::Registry;
use berth::store::Store;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

/// How often pull times noted in memory are written to the metadata store.
const PULL_FLUSH: Duration = Duration::from_secs(30);
/// How often the store's disk use is measured for the `berth_store_*` gauges.
const USAGE_PERIOD: std::time::Duration = std::time::Duration::from_secs(60);

#[derive(Parser)]
#[command(version, about = "An OCI registry and pull-through mirror")]
struct Cli {
    /// Configuration file; default ./mirror.toml, or the built-in defaults when that is absent.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the registry.
    Serve,
    /// Evict expired cached images and collect unreferenced blobs now. Talks to the running
    /// server over its admin socket in the store root when there is one, else works on the
    /// store directly. Needs only the config file.
    Gc {
        /// List what would be removed now, and what the grace period holds back until when;
        /// remove nothing.
        #[arg(long)]
        dry_run: bool,
        /// Override `[gc] grace` for this run, e.g. `0s` to collect what was deleted a moment
        /// ago (only safe while nobody pushes).
        #[arg(long, value_name = "DURATION")]
        grace: Option<String>,
    },
    /// Delete REPO:TAG (the tag, and its manifest when no other tag points at it), REPO@DIGEST
    /// (the manifest and all its tags), or with --repository a whole repository. `berth gc` then
    /// reclaims the blobs only they used.
    Delete {
        /// REPO:TAG or REPO@DIGEST; there is no implicit :latest.
        #[arg(required_unless_present = "repository", conflicts_with = "repository")]
        reference: Option<String>,
        /// Remove this whole repository: its tags, manifests and links. It leaves the catalog
        /// and the UI; a name an upstream serves is mirrored again.
        #[arg(long, value_name = "REPO")]
        repository: Option<String>,
    },
    /// Disk use per repository, private vs cached.
    Du,
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
async fn main() -> std::process::ExitCode {
    // Failures end as one line of sentences (the error and its causes), never a debug dump or a
    // backtrace, whatever RUST_BACKTRACE says: the reader is a person at a terminal or a log.
    match run(Cli::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("berth: {}", sentences(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

/// An error and its causes on one line, each cause once: many errors already quote their
/// source in their own message.
fn sentences(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain().map(ToString::to_string) {
        if !text.contains(&cause) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&cause);
        }
    }
    text
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    berth::install_crypto_provider();
    let config = Config::load(cli.config.as_deref())?;
    match cli.command {
        Command::Serve => serve(config).await,
        Command::Gc { dry_run, grace } => cli::gc(&config, dry_run, grace.as_deref()).await,
        Command::Delete { reference, repository } => cli::delete(&config, reference, repository).await,
        Command::Du => cli::du(&config).await,
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
    let registry = Registry::new(store.clone(), upstreams)
        .with_private_namespaces(config.private.namespaces.clone())
        .with_claim_on_push(config.private.claim_on_push)
        .with_upload_session_limit(config.limits.max_upload_sessions)
        .with_min_free(config.min_free()?);
    let auth = Auth::with_metrics(&config.auth, registry.metrics().clone()).map_err(anyhow::Error::msg)?;
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
    let policy = config.gc_policy()?;
    let state = AppState {
        registry: registry.clone(),
        auth: Arc::new(auth),
        limits: Arc::new(ClientLimits::new(&config.limits)),
        tls: tls.is_some(),
    };
    tokio::spawn(flush_pulls(registry.clone()));
    tokio::spawn(collect_periodically(
        registry.clone(),
        policy.clone(),
        config.gc_interval()?,
    ));
    // Cancelled when shutdown begins: background tasks watch it and end.
    let stop = CancellationToken::new();
    tokio::spawn({
        let (registry, stop) = (registry.clone(), stop.clone());
        async move { registry.measure_usage_every(USAGE_PERIOD, stop).await }
    });
    // The admin channel of `berth gc`/`du`/`delete`; the token file of the old HTTP channel goes.
    let _ = std::fs::remove_file(root.join("admin.token"));
    let admin = Admin {
        registry: registry.clone(),
        policy: policy.clone(),
    };
    // Without it the registry still serves; only the maintenance commands cannot reach it (a
    // store root too long for a socket path, say), and the log says why.
    match berth::api::admin::bind(root) {
        Ok(socket) => {
            tokio::spawn({
                let stop = stop.clone();
                async move {
                    if let Err(e) = socket.serve(admin, stop).await {
                        tracing::error!(error = %e, "the admin socket failed; berth gc/du/delete cannot reach this server");
                    }
                }
            });
        }
        Err(e) => {
            tracing::error!(error = %e, "no admin socket; berth gc/du/delete cannot reach this server")
        }
    }
    let options = Options {
        addr,
        tls,
        drain_timeout: config.drain_timeout()?,
    };
    tracing::info!(listen = %addr, root = %root.display(), tls = options.tls.is_some(), "berth serving");
    berth::server::serve(berth::app(state), options, stop)
        .await
        .with_context(|| format!("serving on {addr}"))?;
    // The drain is over: no request runs any more. Pull times noted in memory are written now,
    // before the process exits 0.
    write_pulls(&registry).await;
    tracing::info!("berth stopped");
    Ok(())
}

async fn write_pulls(registry: &Registry) {
    let batch = registry.pulls().drain();
    if batch.is_empty() {
        return;
    }
    let meta = registry.store().meta.clone();
    match tokio::task::spawn_blocking(move || meta.record_pulls(&batch)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "could not record pull times"),
        Err(e) => tracing::warn!(error = %e, "could not record pull times"),
    }
}

/// Pull times reach the metadata store in batches, off the request path.
async fn flush_pulls(registry: Registry) {
    let mut tick = tokio::time::interval(PULL_FLUSH);
    loop {
        tick.tick().await;
        write_pulls(&registry).await;
    }
}

/// Online eviction and garbage collection every `[gc] interval`.
async fn collect_periodically(registry: Registry, policy: berth::gc::Policy, interval: Duration) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    loop {
        tick.tick().await;
        if let Err(e) = berth::gc::run(
            registry.store(),
            registry.pulls(),
            Some(registry.metrics()),
            &policy,
            false,
            &|_| {},
        )
        .await
        {
            tracing::error!(error = %e, "garbage collection failed");
        }
    }
}
