//! Whole images pulled and pushed the way clients do, failures returned rather than panicked,
//! so a test can run them as load (while replicas restart, a storage node dies, GC runs) and
//! count what failed: [`pull`], [`push`], [`upload`] and [`PullLoop`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use reqwest::{Client, StatusCode};
use serde_json::Value;
use tokio::sync::Mutex;

use super::client::{self, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST, header};
use super::{pseudo_random, sha256};

const MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// Pull `repo:reference` from `base` as a client would: the manifest (an index's children too),
/// then every blob, each verified against its digest. The manifest's digest, or what went wrong.
pub async fn pull(c: &Client, base: &str, repo: &str, reference: &str) -> Result<String, String> {
    let accept = [OCI_INDEX, MANIFEST_LIST, OCI_MANIFEST, DOCKER_MANIFEST].join(", ");
    let get = |path: String| {
        let accept = accept.clone();
        async move {
            let r = c
                .get(format!("{base}{path}"))
                .header("accept", accept)
                .send()
                .await
                .map_err(|e| format!("GET {path}: {e}"))?;
            if r.status() != StatusCode::OK {
                return Err(format!("GET {path}: {}", r.status()));
            }
            let digest = header(&r, "docker-content-digest");
            let bytes = r.bytes().await.map_err(|e| format!("GET {path} body: {e}"))?;
            Ok::<_, String>((digest, bytes))
        }
    };
    let (digest, bytes) = get(format!("/v2/{repo}/manifests/{reference}")).await?;
    let mut manifests = vec![bytes];
    while let Some(bytes) = manifests.pop() {
        let m: Value = serde_json::from_slice(&bytes).map_err(|e| format!("{repo}:{reference}: {e}"))?;
        if let Some(children) = m["manifests"].as_array() {
            for child in children {
                let d = child["digest"].as_str().unwrap_or_default();
                let (_, bytes) = get(format!("/v2/{repo}/manifests/{d}")).await?;
                if sha256(&bytes) != d {
                    return Err(format!("{repo}@{d}: the manifest does not verify"));
                }
                manifests.push(bytes);
            }
            continue;
        }
        let layers = m["layers"].as_array().cloned().unwrap_or_default();
        for d in std::iter::once(&m["config"])
            .chain(&layers)
            .filter_map(|d| d["digest"].as_str())
        {
            let (_, bytes) = get(format!("/v2/{repo}/blobs/{d}")).await?;
            if sha256(&bytes) != d {
                return Err(format!("{repo}@{d}: the blob does not verify"));
            }
        }
    }
    Ok(digest)
}

/// Push a fresh image (a config and `layers` layers of `layer_size` pseudo-random bytes from
/// `seed`) to `repo:tag` at `base` with chunked uploads; its manifest digest, or what failed.
pub async fn push(
    c: &Client,
    base: &str,
    repo: &str,
    tag: &str,
    layers: u64,
    layer_size: usize,
    seed: u64,
) -> Result<String, String> {
    let mut descriptors = Vec::new();
    for i in 0..layers {
        let bytes = pseudo_random(layer_size, seed * 100 + i);
        descriptors.push(client::descriptor(
            "application/vnd.oci.image.layer.v1.tar",
            &upload(c, base, repo, &bytes).await?,
            bytes.len(),
        ));
    }
    let config = format!(r#"{{"architecture":"amd64","os":"linux","seed":{seed}}}"#);
    let config_digest = upload(c, base, repo, config.as_bytes()).await?;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": client::descriptor("application/vnd.oci.image.config.v1+json", &config_digest, config.len()),
        "layers": descriptors,
    });
    let body = serde_json::to_vec(&manifest).unwrap();
    let r = c
        .put(format!("{base}/v2/{repo}/manifests/{tag}"))
        .header("content-type", OCI_MANIFEST)
        .body(body.clone())
        .send()
        .await
        .map_err(|e| format!("PUT manifest {repo}:{tag}: {e}"))?;
    if r.status() != StatusCode::CREATED {
        return Err(format!(
            "PUT manifest {repo}:{tag}: {} {}",
            r.status(),
            r.text().await.unwrap_or_default()
        ));
    }
    Ok(sha256(&body))
}

/// POST, one PATCH, PUT: the upload of `bytes` to `repo`; its digest.
pub async fn upload(c: &Client, base: &str, repo: &str, bytes: &[u8]) -> Result<String, String> {
    let digest = sha256(bytes);
    let fail = |what: &str, e: String| format!("{what} {repo} upload: {e}");
    let r = c
        .post(format!("{base}/v2/{repo}/blobs/uploads/"))
        .send()
        .await
        .map_err(|e| fail("POST", e.to_string()))?;
    if r.status() != StatusCode::ACCEPTED {
        return Err(fail("POST", r.status().to_string()));
    }
    let location = |r: &reqwest::Response| {
        let l = header(r, "location");
        if l.starts_with('/') { format!("{base}{l}") } else { l }
    };
    let r = c
        .patch(location(&r))
        .header("content-type", "application/octet-stream")
        .body(bytes.to_vec())
        .send()
        .await
        .map_err(|e| fail("PATCH", e.to_string()))?;
    if r.status() != StatusCode::ACCEPTED {
        return Err(fail("PATCH", r.status().to_string()));
    }
    let put = location(&r);
    let separator = if put.contains('?') { '&' } else { '?' };
    let r = c
        .put(format!("{put}{separator}digest={digest}"))
        .send()
        .await
        .map_err(|e| fail("PUT", e.to_string()))?;
    if r.status() != StatusCode::CREATED {
        return Err(fail(
            "PUT",
            format!("{} {}", r.status(), r.text().await.unwrap_or_default()),
        ));
    }
    Ok(digest)
}

/// Clients pulling images in a loop until [`PullLoop::finish`], counting pulls and failures.
pub struct PullLoop {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<(usize, Vec<String>)>,
}

impl PullLoop {
    /// `clients` concurrent loops pulling `images` (in turn) through `base`.
    pub fn start(base: &str, images: &[(&'static str, &'static str)], clients: usize) -> PullLoop {
        let stop = Arc::new(AtomicBool::new(false));
        let (base, images, flag) = (base.to_owned(), images.to_vec(), stop.clone());
        let task = tokio::spawn(async move {
            let done = Arc::new(AtomicUsize::new(0));
            let failures = Arc::new(Mutex::new(Vec::new()));
            let loops = (0..clients).map(|n| {
                let (base, images, stop, done, failures) = (
                    base.clone(),
                    images.clone(),
                    flag.clone(),
                    done.clone(),
                    failures.clone(),
                );
                tokio::spawn(async move {
                    let c = client::client();
                    let mut i = n;
                    while !stop.load(Ordering::Relaxed) {
                        let (repo, tag) = images[i % images.len()];
                        match pull(&c, &base, repo, tag).await {
                            Ok(_) => {
                                done.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => failures.lock().await.push(e),
                        }
                        i += 1;
                    }
                })
            });
            for l in loops.collect::<Vec<_>>() {
                l.await.unwrap();
            }
            let failures = failures.lock().await.clone();
            (done.load(Ordering::Relaxed), failures)
        });
        PullLoop { stop, task }
    }

    /// Stop the loops and assert that no pull failed and at least `min` completed.
    pub async fn finish(self, min: usize) {
        self.stop.store(true, Ordering::Relaxed);
        let (done, failures) = self.task.await.unwrap();
        assert!(
            failures.is_empty(),
            "{} of {} pulls failed: {failures:#?}",
            failures.len(),
            done + failures.len()
        );
        assert!(done >= min, "the loop kept pulling ({done} pulls)");
    }
}
