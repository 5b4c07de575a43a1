//! `berth export` and `berth import` (issue 15): through the running server's admin socket, or on
//! the stopped store directly, with the same registry rules either way (upstream names,
//! `[private] namespaces`, read-only mode).

use std::io::{IsTerminal, Write};
use std::sync::Arc;

use anyhow::{Context, bail};
use berth::config::Config;
use berth::service::layout::{ExportOptions, ExportReport, ImportOptions, ImportReport, LayoutProgress, Origins, Sink};
use berth::service::{Core, Services};
use berth::wiring::Backends;
use bytesize::ByteSize;
use futures_util::StreamExt;
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

use super::{Target, admin_url, ask, target};

/// `berth export`'s arguments.
#[derive(clap::Args)]
pub struct ExportArgs {
    /// The directory or .tar file to write; it must not exist yet.
    #[arg(long, short, value_name = "PATH")]
    output: std::path::PathBuf,
    /// REPO or REPO:TAG; `*` matches any run of characters (`team/*`, `library/alpine:3.*`).
    /// A pattern without a tag takes every tag.
    #[arg(value_name = "REPO[:TAG]", required_unless_present = "all")]
    patterns: Vec<String>,
    /// Every tag of every repository.
    #[arg(long)]
    all: bool,
    /// Only private (pushed) repositories.
    #[arg(long, conflicts_with = "cached")]
    private: bool,
    /// Only repositories cached from an upstream.
    #[arg(long)]
    cached: bool,
    /// Bring along the manifests that refer to an exported one (signatures, SBOMs).
    #[arg(long)]
    referrers: bool,
    /// Export what the store has of incomplete images (a multi-arch image of which only some
    /// platforms were pulled carries those platforms) instead of refusing.
    #[arg(long)]
    partial: bool,
}

impl From<ExportArgs> for ExportOptions {
    fn from(a: ExportArgs) -> ExportOptions {
        let origins = match (a.private, a.cached) {
            (true, _) => Origins::Private,
            (_, true) => Origins::Cached,
            _ => Origins::Both,
        };
        ExportOptions {
            output: a.output,
            patterns: a.patterns,
            all: a.all,
            origins,
            referrers: a.referrers,
            partial: a.partial,
        }
    }
}

/// `berth import`'s arguments.
#[derive(clap::Args)]
pub struct ImportArgs {
    /// The layout directory or tar.
    path: std::path::PathBuf,
    /// Store the images as cached content of this configured upstream.
    #[arg(long, value_name = "NAME")]
    upstream: Option<String>,
    /// The repository for ref names that are bare tags (skopeo's `oci:DIR:TAG`).
    #[arg(long, value_name = "REPO")]
    repository: Option<String>,
    /// Accept multi-arch images of which some platforms are not in the layout.
    #[arg(long)]
    partial: bool,
}

impl From<ImportArgs> for ImportOptions {
    fn from(a: ImportArgs) -> ImportOptions {
        ImportOptions {
            path: a.path,
            upstream: a.upstream,
            repository: a.repository,
            partial: a.partial,
        }
    }
}

/// A registry over the stopped store, routed as the server would route it.
fn direct(config: &Config, backends: &Backends) -> anyhow::Result<Services> {
    let upstreams = config
        .upstream_settings()?
        .into_iter()
        .map(|s| berth::upstream::Upstream::new(s).context("building an upstream client"))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let services = Services::new(
        Core::new(backends.store.clone(), upstreams, backends.coord.clone())
            .with_private_namespaces(config.private.namespaces.clone())
            .with_claim_on_push(config.private.claim_on_push),
    );
    services.admin.apply_switches(&config.storage); // read-only mode holds for imports too
    Ok(services)
}

/// Progress on a terminal only: a log or a pipe gets the report alone.
fn show(p: LayoutProgress) {
    let mut err = std::io::stderr();
    if !err.is_terminal() {
        return;
    }
    let _ = match p {
        LayoutProgress::Plan { images, blobs, bytes } => {
            writeln!(err, "{images} images, {blobs} blobs, {} to write", ByteSize(bytes))
        }
        LayoutProgress::Blobs { done, bytes } => write!(err, "\r{done} blobs, {}   ", ByteSize(bytes)),
        LayoutProgress::Imported(name) => writeln!(err, "\rimported {name}"),
        LayoutProgress::Warning(w) => writeln!(err, "\rwarning: {w}"),
    };
}

/// Read an admin job's NDJSON stream: show progress, return the report or the error.
async fn follow<R: DeserializeOwned>(response: reqwest::Response, what: &str) -> anyhow::Result<R> {
    let mut chunks = response.bytes_stream();
    let mut buffer = Vec::new();
    while let Some(chunk) = chunks.next().await {
        buffer.extend_from_slice(&chunk?);
        while let Some(end) = buffer.iter().position(|&b| b == b'\n') {
            let line: serde_json::Value = serde_json::from_slice(&buffer[..end])?;
            buffer.drain(..=end);
            if let Some(error) = line.get("error").and_then(|e| e.as_str()) {
                bail!("{what} failed: {error}");
            }
            if let Some(r) = line.get("report") {
                return Ok(serde_json::from_value(r.clone())?);
            }
            if let Some(p) = line.get("progress") {
                show(serde_json::from_value(p.clone())?);
            }
        }
    }
    bail!("the server ended the {what} stream without a report")
}

fn sink() -> Sink {
    Arc::new(show)
}

pub async fn export(config: &Config, mut opts: ExportOptions) -> anyhow::Result<()> {
    opts.output = std::path::absolute(&opts.output)?;
    let report: ExportReport = match target(config).await? {
        Target::Direct(backends) => {
            let services = direct(config, &backends)?;
            let report = services.admin.export(&opts, sink(), &CancellationToken::new()).await;
            backends.leave().await;
            report?
        }
        Target::Server { socket, http } => {
            let request = http.post(admin_url("export", &[])).json(&opts);
            follow(ask(&socket, request).await?, "export").await?
        }
    };
    if std::io::stderr().is_terminal() {
        eprintln!();
    }
    for name in &report.images {
        println!("exported {name}");
    }
    for w in &report.warnings {
        println!("warning: {w}");
    }
    println!(
        "wrote {}: {} images, {} referrers, {} blobs, {}",
        report.output,
        report.images.len(),
        report.referrers,
        report.blobs,
        ByteSize(report.bytes)
    );
    Ok(())
}

pub async fn import(config: &Config, mut opts: ImportOptions) -> anyhow::Result<()> {
    opts.path = std::path::absolute(&opts.path)?;
    let report: ImportReport = match target(config).await? {
        Target::Direct(backends) => {
            let services = direct(config, &backends)?;
            let report = services.admin.import(&opts, sink(), &CancellationToken::new()).await;
            backends.leave().await;
            report?
        }
        Target::Server { socket, http } => {
            let request = http.post(admin_url("import", &[])).json(&opts);
            follow(ask(&socket, request).await?, "import").await?
        }
    };
    if std::io::stderr().is_terminal() {
        eprintln!();
    }
    for name in &report.images {
        println!("imported {name}");
    }
    for w in &report.warnings {
        println!("warning: {w}");
    }
    println!(
        "{} images and {} referrers imported; {} blobs in the layout, {} new ({})",
        report.images.len(),
        report.referrers,
        report.blobs,
        report.new_blobs,
        ByteSize(report.new_bytes)
    );
    Ok(())
}
