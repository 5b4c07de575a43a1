//! Start the real `berth` binary on a free loopback port with its own store.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

pub fn digest_of(bytes: &[u8]) -> String {
    berth::oci::Digest::sha256_of(bytes).to_string()
}

/// A running berth. Killed (SIGKILL) on drop; `stop` shuts it down gracefully.
pub struct Berth {
    /// `127.0.0.1:PORT`
    pub addr: String,
    /// `http://127.0.0.1:PORT`
    pub url: String,
    /// Store root.
    pub root: PathBuf,
    pub config: PathBuf,
    child: Option<Child>,
    _dir: Option<TempDir>,
}

impl Berth {
    /// A fresh berth with an empty store and `extra` appended to its mirror.toml.
    pub fn start(extra: &str) -> Berth {
        let dir = tempfile::Builder::new().prefix("berth-test-").tempdir().unwrap();
        let mut b = Berth::start_in(dir.path(), extra);
        b._dir = Some(dir);
        b
    }

    /// A berth whose store and config live in `dir` (kept when it stops, for restarts).
    pub fn start_in(dir: &Path, extra: &str) -> Berth {
        let port = super::free_port();
        let root = dir.join("data");
        let config = dir.join("mirror.toml");
        // No test may reach the internet: without an upstream of its own, a test's berth has none.
        let upstreams = if extra.contains("[[upstream]]") {
            ""
        } else {
            "upstream = []\n"
        };
        let toml = format!(
            "{upstreams}[server]\nlisten = \"127.0.0.1:{port}\"\n[storage]\nroot = \"{}\"\n[log]\nlevel = \"info,berth=debug\"\n{extra}",
            root.display()
        );
        std::fs::write(&config, toml).unwrap();
        let mut b = Berth {
            addr: format!("127.0.0.1:{port}"),
            url: format!("http://127.0.0.1:{port}"),
            root,
            config,
            child: None,
            _dir: None,
        };
        b.spawn();
        b
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_berth"))
            .args(["serve", "--config"])
            .arg(&self.config)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn berth");
        self.child = Some(child);
        self.wait_ready();
    }

    pub fn log_path(&self) -> PathBuf {
        self.config.with_file_name("berth.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("berth exited early ({status}):\n{}", self.log());
            }
            if std::net::TcpStream::connect(&self.addr).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("berth did not listen on {} within 30 s:\n{}", self.addr, self.log());
    }

    /// SIGKILL: no chance to clean up, as in a crash.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for the exit status.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        super::terminate(&mut c, Duration::from_secs(30));
        c.try_wait().ok().flatten()
    }

    /// Start again on the same store, config and port.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Run `berth ARGS --config <this berth's config>` (gc, delete, du) and return its output.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_berth"))
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .env_remove("RUST_LOG")
            .output()
            .expect("run berth")
    }

    /// Where the store keeps `digest`'s bytes.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.root.join("blobs/sha256").join(&hex[..2]).join(hex)
    }

    /// The URL of `path` (which starts with `/`).
    pub fn at(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }
}

impl Drop for Berth {
    fn drop(&mut self) {
        self.kill();
    }
}
