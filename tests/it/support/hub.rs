//! The project's Docker Hub emulator (`tests/hub/hub.py`): a real distribution registry behind
//! Docker Hub's token auth, CDN-style blob redirect, rate-limit headers, counters and faults.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use tempfile::TempDir;

pub struct Hub {
    /// `http://127.0.0.1:PORT`
    pub url: String,
    child: Option<Child>,
    dir: TempDir,
}

/// Debian's Python, which has the `python3-cryptography` that tests/run installs; a pyenv or
/// other `python3` first on PATH may lack it.
fn python() -> &'static str {
    if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/hub").join(name)
}

impl Hub {
    /// Start a hub whose CDN redirect stays on 127.0.0.1 (same host as the registry).
    pub fn start() -> Hub {
        Hub::start_with(&[])
    }

    /// Start a hub with extra `hub.py` arguments, e.g. `["--cdn-host", "localhost"]`.
    pub fn start_with(args: &[&str]) -> Hub {
        super::require("python3");
        super::require("docker-registry");
        let dir = tempfile::Builder::new().prefix("berth-hub-").tempdir().unwrap();
        let mut child = Command::new(python())
            .arg(script("hub.py"))
            .arg("--dir")
            .arg(dir.path())
            .args(["--port", "0"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn tests/hub/hub.py");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let ready: Value = serde_json::from_str(line.trim()).unwrap_or_else(|_| {
            panic!(
                "hub did not start (printed {line:?}); see {}/hub.log",
                dir.path().display()
            )
        });
        let url = ready["url"].as_str().expect("hub url").to_owned();
        Hub {
            url,
            child: Some(child),
            dir,
        }
    }

    /// `127.0.0.1:PORT`
    pub fn addr(&self) -> &str {
        self.url.trim_start_matches("http://")
    }

    /// Push the deterministic test images; returns the seed description (see tests/hub/README.md).
    pub fn seed(&self, big_mib: u32) -> Value {
        let out = self.dir.path().join("seed.json");
        super::run(
            Command::new(python())
                .arg(script("seed.py"))
                .args(["--hub", &self.url, "--big-mib", &big_mib.to_string(), "--out"])
                .arg(&out),
        );
        serde_json::from_slice(&std::fs::read(out).unwrap()).unwrap()
    }

    /// Push one random blob of `mib` MiB to `repo`; returns its digest.
    pub fn push_blob(&self, repo: &str, mib: u32, seed: u32) -> String {
        let out = super::run(Command::new(python()).arg(script("seed.py")).args([
            "--hub",
            &self.url,
            "--blob-mib",
            &mib.to_string(),
            "--repo",
            repo,
            "--seed",
            &seed.to_string(),
        ]));
        out.trim().lines().last().unwrap_or("").to_owned()
    }

    pub async fn stats(&self) -> Value {
        let r = super::client::client()
            .get(format!("{}/_hub/stats", self.url))
            .send()
            .await
            .expect("hub stats");
        r.json().await.expect("hub stats JSON")
    }

    pub async fn reset_stats(&self) {
        let r = super::client::client()
            .post(format!("{}/_hub/reset-stats", self.url))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
    }

    /// Merge `faults` (e.g. `{"down": true}`) into the hub's fault set; `{}` clears all.
    pub async fn fault(&self, faults: Value) {
        let r = super::client::client()
            .post(format!("{}/_hub/fault", self.url))
            .json(&faults)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "fault {faults}: {}", r.status());
    }
}

impl Hub {
    /// A push-scoped token for `repo` as the hub's user (hubuser:hubpass).
    pub async fn push_token(&self, repo: &str) -> String {
        let url = format!(
            "{}/token?service=registry.docker.io&scope=repository:{repo}:pull,push",
            self.url
        );
        let r = super::client::client()
            .get(url)
            .basic_auth("hubuser", Some("hubpass"))
            .send()
            .await
            .unwrap();
        let body: Value = r.json().await.unwrap();
        body["token"].as_str().expect("token").to_owned()
    }

    /// Point `repo:to_tag` at the manifest `repo:from` has, as a re-push to Docker Hub would.
    /// Returns the manifest digest.
    pub async fn retag(&self, repo: &str, from: &str, to_tag: &str) -> String {
        let token = self.push_token(repo).await;
        let c = super::client::client();
        let accept = "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json";
        let r = c
            .get(format!("{}/v2/{repo}/manifests/{from}", self.url))
            .bearer_auth(&token)
            .header("accept", accept)
            .send()
            .await
            .unwrap();
        assert!(
            r.status().is_success(),
            "hub GET manifest {repo}:{from}: {}",
            r.status()
        );
        let media_type = r.headers()["content-type"].to_str().unwrap().to_owned();
        let body = r.bytes().await.unwrap();
        let r = c
            .put(format!("{}/v2/{repo}/manifests/{to_tag}", self.url))
            .bearer_auth(&token)
            .header("content-type", media_type)
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert!(
            r.status().is_success(),
            "hub PUT manifest {repo}:{to_tag}: {}",
            r.status()
        );
        super::sha256(&body)
    }
}

impl Hub {
    /// Push `bytes` as a blob of `repo` as the hub's user (POST, then PUT to the upload's path);
    /// returns the digest.
    pub async fn push_blob_bytes(&self, repo: &str, bytes: &[u8]) -> String {
        let token = self.push_token(repo).await;
        let c = super::client::client();
        let digest = super::sha256(bytes);
        let r = c
            .post(format!("{}/v2/{repo}/blobs/uploads/", self.url))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 202, "hub start upload to {repo}");
        let location = r.headers()["location"].to_str().unwrap().to_owned();
        // The registry behind the hub may name itself in Location; keep only path and query.
        let url = reqwest::Url::parse(&self.url).unwrap().join(&location).unwrap();
        let sep = if url.query().is_some() { '&' } else { '?' };
        let put = format!(
            "{}{}{}{sep}digest={digest}",
            self.url,
            url.path(),
            url.query().map(|q| format!("?{q}")).unwrap_or_default()
        );
        let r = c
            .put(put)
            .bearer_auth(&token)
            .header("content-type", "application/octet-stream")
            .body(bytes.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 201, "hub upload {digest} to {repo}");
        digest
    }

    /// PUT a manifest to the hub as its user; returns its digest.
    pub async fn put_manifest_bytes(&self, repo: &str, reference: &str, media_type: &str, bytes: &[u8]) -> String {
        let token = self.push_token(repo).await;
        let r = super::client::client()
            .put(format!("{}/v2/{repo}/manifests/{reference}", self.url))
            .bearer_auth(&token)
            .header("content-type", media_type)
            .body(bytes.to_vec())
            .send()
            .await
            .unwrap();
        let status = r.status();
        assert!(
            status.is_success(),
            "hub PUT manifest {repo}:{reference}: {status} {}",
            r.text().await.unwrap_or_default()
        );
        super::sha256(bytes)
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            super::terminate(&mut c, Duration::from_secs(15));
        }
    }
}
