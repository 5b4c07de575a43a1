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
    /// Variables set for the server process and its restarts (e.g. `BERTH_SERVER_TLS_CERT`).
    env: Vec<(String, String)>,
    /// The soft and (if given) hard `RLIMIT_NOFILE` berth starts with, when a test sets them.
    nofile: Option<(u64, Option<u64>)>,
    child: Option<Child>,
    _dir: Option<TempDir>,
}

impl Berth {
    /// A fresh berth with an empty store and `extra` merged into its mirror.toml (`extra` may add
    /// keys to the sections the launcher writes, e.g. `[server] drain_timeout`).
    pub fn start(extra: &str) -> Berth {
        let dir = tempfile::Builder::new().prefix("berth-test-").tempdir().unwrap();
        let mut b = Berth::start_in(dir.path(), extra);
        b._dir = Some(dir);
        b
    }

    /// [`Berth::start`] with `env` set for the server process only.
    pub fn start_with_env(extra: &str, env: &[(&str, &str)]) -> Berth {
        let dir = tempfile::Builder::new().prefix("berth-test-").tempdir().unwrap();
        let mut b = Berth::start_in_with_env(dir.path(), extra, env);
        b._dir = Some(dir);
        b
    }

    /// A fresh berth started with a soft `RLIMIT_NOFILE` of `soft` (as systemd's default of 1024),
    /// and a hard one of `hard` (`None`: as it is).
    pub fn start_with_nofile(extra: &str, soft: u64, hard: Option<u64>) -> Berth {
        let dir = tempfile::Builder::new().prefix("berth-test-").tempdir().unwrap();
        let mut b = Berth::configure(dir.path(), extra, &[]);
        b.nofile = Some((soft, hard));
        b.spawn();
        b._dir = Some(dir);
        b
    }

    /// A berth whose store and config live in `dir` (kept when it stops, for restarts).
    pub fn start_in(dir: &Path, extra: &str) -> Berth {
        Berth::start_in_with_env(dir, extra, &[])
    }

    fn start_in_with_env(dir: &Path, extra: &str, env: &[(&str, &str)]) -> Berth {
        let mut b = Berth::configure(dir, extra, env);
        b.spawn();
        b
    }

    /// Write the config in `dir`; the process is not started yet ([`Berth::spawn`] starts it).
    pub fn configure(dir: &Path, extra: &str, env: &[(&str, &str)]) -> Berth {
        let port = super::free_port();
        let root = dir.join("data");
        let config = dir.join("mirror.toml");
        // No test may reach the internet: without an upstream of its own, a test's berth has none.
        let base = format!(
            "upstream = []\n[server]\nlisten = \"127.0.0.1:{port}\"\n[storage]\nroot = \"{}\"\n[log]\nlevel = \"info,berth=debug\"\n",
            root.display()
        );
        let mut toml: toml::Table = base.parse().unwrap();
        merge(&mut toml, extra.parse().expect("extra TOML parses"));
        std::fs::write(&config, toml.to_string()).unwrap();
        Berth {
            addr: format!("127.0.0.1:{port}"),
            url: format!("http://127.0.0.1:{port}"),
            root,
            config,
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            nofile: None,
            child: None,
            _dir: None,
        }
    }

    /// Set `name` for the server process from its next start on (and for [`Berth::cli`]).
    pub fn set_env(&mut self, name: &str, value: &str) {
        self.env.retain(|(k, _)| k != name);
        self.env.push((name.to_owned(), value.to_owned()));
    }

    /// Start the process (again, after [`Berth::stop`] or [`Berth::kill`]) on the same store,
    /// config and port, and wait until it listens.
    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_berth"));
        if let Some((soft, hard)) = self.nofile {
            use std::os::unix::process::CommandExt;
            // SAFETY: between fork and exec the closure only calls getrlimit and setrlimit, which
            // are async-signal-safe, on a local struct.
            unsafe {
                command.pre_exec(move || {
                    let mut limit = libc::rlimit {
                        rlim_cur: 0,
                        rlim_max: 0,
                    };
                    if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    let hard = hard.map_or(limit.rlim_max, |h| h.min(limit.rlim_max));
                    limit.rlim_max = hard;
                    limit.rlim_cur = soft.min(hard);
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = command
            .args(["serve", "--config"])
            .arg(&self.config)
            .env_remove("RUST_LOG")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
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

    /// Send `signal` (e.g. `"TERM"`) to the process.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal}");
    }

    /// Wait up to `timeout` for the process to exit by itself; its status, or `None` if it is
    /// still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.as_mut()?.try_wait().unwrap() {
                self.child = None;
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM and wait for the exit status.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        super::terminate(&mut c, Duration::from_secs(30));
        c.try_wait().ok().flatten()
    }

    /// Stop gracefully and start again on the same store, config and port, with `env` for the
    /// server process instead of the variables it had.
    pub fn restart_with_env(&mut self, env: &[(&str, &str)]) {
        self.stop();
        self.env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        self.spawn();
    }

    /// Start again on the same store, config and port.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Run `berth ARGS --config <this berth's config>` (gc, delete, du), with the variables the
    /// server gets, and return its output.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_berth"))
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .env_remove("RUST_LOG")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .output()
            .expect("run berth")
    }

    /// [`Berth::cli`] that must succeed; its stdout.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        super::succeeded(&self.cli(args), args)
    }

    /// The URL of `path` (which starts with `/`).
    pub fn at(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }
}

/// Merge `extra` into `base`: tables recursively, any other value replaced.
pub(super) fn merge(base: &mut toml::Table, extra: toml::Table) {
    for (key, value) in extra {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(e)) => merge(b, e),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

impl Drop for Berth {
    fn drop(&mut self) {
        self.kill();
    }
}
