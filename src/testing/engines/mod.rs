//! Launchers of real engines for tests: PostgreSQL ([`postgres`]), a 3-node Garage cluster
//! ([`garage`]) and SeaweedFS's S3 gateway ([`seaweed`]). Each fails loudly (naming what
//! `tests/run` installs) when its engine is missing: a test that needs a real component never
//! skips.

pub mod garage;
pub mod postgres;
pub mod seaweed;

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// A child process, killed (SIGKILL, by its PID) and reaped when dropped.
pub struct Process {
    child: Option<Child>,
    name: String,
}

impl Process {
    /// Start `command`; `name` says which engine in messages.
    pub fn spawn(mut command: Command, name: &str) -> Process {
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name} ({command:?}) failed: {e}"));
        Process {
            child: Some(child),
            name: name.to_owned(),
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kill the process now (a node failure in a test); a no-op when it is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Panic if the process has exited (it failed to start).
    pub fn check_running(&mut self) {
        if let Some(child) = self.child.as_mut()
            && let Ok(Some(status)) = child.try_wait()
        {
            panic!("{} exited early: {status}", self.name);
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

/// Wait until something accepts connections on `port` of 127.0.0.1, checking that `process`
/// still runs.
pub fn wait_for_port(port: u16, process: &mut Process, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        process.check_running();
        assert!(
            Instant::now() < deadline,
            "{} did not listen on {addr} within {timeout:?}",
            process.name
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The engine binary named by the environment variable `var`, else `default` (a path, or a
/// name looked up on PATH). Missing, the test fails, saying how to install it.
pub fn binary(var: &str, default: &str, install: &str) -> PathBuf {
    let path = std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(default));
    let found = if path.components().count() > 1 {
        path.is_file().then_some(path.clone())
    } else {
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
            .map(|dir| dir.join(&path))
            .find(|p| p.is_file())
    };
    found.unwrap_or_else(|| {
        panic!(
            "{} is missing (set {var} to it): tests/run installs it with `{install}`",
            path.display()
        )
    })
}
