//! `berth gc`, `berth delete` and `berth du`. While a server runs, its database lock keeps other
//! processes out of the store, so these commands ask the server through its admin API (with the
//! token it wrote to `<root>/admin.token`). With no server running, they open the store directly.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{Context, bail};
use berth::api::admin::{TOKEN_FILE, TOKEN_HEADER};
use berth::cache::Pulls;
use berth::config::Config;
use berth::gc::{self, Progress, Report, Usage};
use berth::oci::parse_image_ref;
use berth::service::Registry;
use berth::store::{self, Store};
use bytesize::ByteSize;
use futures_util::StreamExt;

enum Target {
    Direct(Store),
    Server {
        url: String,
        token: String,
        http: reqwest::Client,
    },
}

fn target(config: &Config) -> anyhow::Result<Target> {
    let root = &config.storage.root;
    match Store::open(root) {
        Ok(store) => Ok(Target::Direct(store)),
        Err(store::Error::Locked) => {
            let token = std::fs::read_to_string(root.join(TOKEN_FILE))
                .with_context(|| format!("reading {}", root.join(TOKEN_FILE).display()))?;
            let addr = config.listen_addr()?;
            let ip = match addr.ip() {
                IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
                ip => ip,
            };
            let tls = !config.server.tls.cert.is_empty();
            let url = format!(
                "{}://{}",
                if tls { "https" } else { "http" },
                std::net::SocketAddr::new(ip, addr.port())
            );
            // The server is this machine's own; the admin token, not the certificate, is what
            // authenticates here (it may be issued for a public name, not for 127.0.0.1).
            let http = reqwest::Client::builder().danger_accept_invalid_certs(tls).build()?;
            eprintln!("berth: a server is running on this store; asking it at {url}");
            Ok(Target::Server {
                url,
                token: token.trim().to_owned(),
                http,
            })
        }
        Err(e) => Err(e).with_context(|| format!("opening the store at {}", root.display())),
    }
}

fn show_progress(p: Progress) {
    match p {
        Progress::Plan {
            manifests,
            blobs,
            store_bytes,
        } => {
            eprintln!(
                "gc: {manifests} manifests, {blobs} blobs, {} in the store",
                ByteSize(store_bytes)
            )
        }
        Progress::Evict { manifests } => eprintln!("gc: {manifests} manifests to remove"),
        Progress::Sweep { done, total } => eprintln!("gc: sweeping blobs {done}/{total}"),
        Progress::Uploads { stale } => eprintln!("gc: {stale} stale upload sessions"),
    }
}

fn print_report(r: &Report) {
    let (remove, verb) = if r.dry_run {
        ("would remove", "would reclaim")
    } else {
        ("removed", "reclaimed")
    };
    for m in &r.evicted {
        println!("{remove} cached manifest {m}");
    }
    for m in &r.untagged {
        println!("{remove} untagged manifest {m}");
    }
    for b in &r.blobs {
        println!("{remove} blob {} ({})", b.digest, ByteSize(b.size));
    }
    for u in &r.uploads {
        println!("{remove} upload session {u}");
    }
    println!(
        "{verb} {} in {} blobs; the store held {}",
        ByteSize(r.reclaimed_bytes),
        r.blobs.len(),
        ByteSize(r.store_bytes_before)
    );
}

pub async fn gc(config: &Config, dry_run: bool) -> anyhow::Result<()> {
    let report = match target(config)? {
        Target::Direct(store) => {
            let policy = config.gc_policy()?;
            gc::run(&store, &Pulls::default(), None, &policy, dry_run, &show_progress).await?
        }
        Target::Server { url, token, http } => {
            let response = http
                .post(format!("{url}/_berth/gc?dry_run={dry_run}"))
                .header(TOKEN_HEADER, token)
                .send()
                .await?;
            if !response.status().is_success() {
                bail!(
                    "the server refused: {} {}",
                    response.status(),
                    response.text().await.unwrap_or_default()
                );
            }
            let mut lines = response.bytes_stream();
            let (mut buffer, mut report) = (Vec::new(), None);
            while let Some(chunk) = lines.next().await {
                buffer.extend_from_slice(&chunk?);
                while let Some(end) = buffer.iter().position(|&b| b == b'\n') {
                    let line: serde_json::Value = serde_json::from_slice(&buffer[..end])?;
                    buffer.drain(..=end);
                    if let Some(error) = line.get("error") {
                        bail!("gc failed on the server: {error}");
                    }
                    if let Some(r) = line.get("report") {
                        report = Some(serde_json::from_value(r.clone())?);
                    } else if let Some(p) = line.get("progress") {
                        show_progress(serde_json::from_value(p.clone())?);
                    }
                }
            }
            report.context("the server ended the gc stream without a report")?
        }
    };
    print_report(&report);
    Ok(())
}

pub async fn delete(config: &Config, reference: &str) -> anyhow::Result<()> {
    let (repo, r) = parse_image_ref(reference)?;
    match target(config)? {
        Target::Direct(store) => {
            let registry = Registry::new(store, Vec::new());
            registry.apply_switches(&config.storage); // [storage] delete and read_only hold here too
            registry.delete_image(&repo, &r).await?
        }
        Target::Server { url, token, http } => {
            let query: String = form_urlencoded::byte_serialize(reference.as_bytes()).collect();
            let response = http
                .post(format!("{url}/_berth/delete?reference={query}"))
                .header(TOKEN_HEADER, token)
                .send()
                .await?;
            if !response.status().is_success() {
                bail!("{}", response.text().await.unwrap_or_default());
            }
        }
    }
    println!("deleted {reference}; run `berth gc` to reclaim the blobs only it used");
    Ok(())
}

pub async fn du(config: &Config) -> anyhow::Result<()> {
    let usage: Usage = match target(config)? {
        Target::Direct(store) => tokio::task::spawn_blocking(move || gc::disk_usage(&store)).await??,
        Target::Server { url, token, http } => {
            http.get(format!("{url}/_berth/du"))
                .header(TOKEN_HEADER, token)
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?
        }
    };
    println!(
        "{:<50} {:<24} {:>9} {:>6} {:>12}",
        "REPOSITORY", "ORIGIN", "MANIFESTS", "TAGS", "SIZE"
    );
    for r in &usage.repositories {
        println!(
            "{:<50} {:<24} {:>9} {:>6} {:>12}",
            r.repository,
            r.origin,
            r.manifests,
            r.tags,
            ByteSize(r.bytes).to_string()
        );
    }
    println!(
        "private {}, cached {}, unreferenced {}, total {}",
        ByteSize(usage.private_bytes),
        ByteSize(usage.cached_bytes),
        ByteSize(usage.unreferenced_bytes),
        ByteSize(usage.total_bytes)
    );
    Ok(())
}
