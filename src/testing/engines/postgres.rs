//! PostgreSQL 15 from Debian (`postgresql-15`, which `tests/run` installs) for the PostgreSQL
//! metadata and coordination tests.
//!
//! One server per test function: [`Postgres::start`] runs `initdb` and the postmaster as the
//! `postgres` user (PostgreSQL refuses to run as root, and the tests run as root; as another
//! user they run as that user) in a temporary directory owned by it, on a free port of 127.0.0.1 with its unix socket inside that
//! directory, and with `fsync=off` (a test's data needs no durability). Each test then gets its
//! own database from [`Postgres::database`], which is much faster than a server each.
//!
//! The postmaster is the direct child (`setpriv` execs it, where `runuser` would fork and wait),
//! so the handle's Drop stops it by its PID: SIGQUIT (an immediate shutdown that ends its
//! backends too), then SIGKILL if it lingers.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::free_port;

/// Where Debian's `postgresql-15` puts the server binaries.
pub const BIN: &str = "/usr/lib/postgresql/15/bin";

const MISSING: &str = "PostgreSQL 15 is not installed: tests/run installs it (apt-get install postgresql-15, \
     which also creates the `postgres` user)";

/// A running PostgreSQL server; stopped when dropped.
pub struct Postgres {
    dir: tempfile::TempDir,
    port: u16,
    postmaster: Child,
    databases: AtomicU32,
}

impl Postgres {
    /// Start a fresh server. Panics (failing the test) when PostgreSQL 15 or the `postgres` user
    /// is missing, or the server does not come up.
    pub fn start() -> Postgres {
        assert!(Path::new(BIN).join("postgres").exists(), "{MISSING}");
        let dir = tempfile::Builder::new()
            .prefix("berth-pg-")
            .tempdir()
            .expect("a temporary directory");
        if as_root() {
            let (uid, gid) = postgres_user().unwrap_or_else(|| panic!("{MISSING}"));
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).expect("chown the directory to postgres");
        }
        let data = dir.path().join("data");
        let out = as_postgres(dir.path(), "initdb")
            .args([
                "--auth=trust",
                "--username=postgres",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ])
            .arg("-D")
            .arg(&data)
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("postgres.log")).expect("the server log");
        let postmaster = as_postgres(dir.path(), "postgres")
            .arg("-D")
            .arg(&data)
            .arg("-p")
            .arg(port.to_string())
            .arg("-k")
            .arg(dir.path())
            .args(["-c", "listen_addresses=127.0.0.1"])
            .args([
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
            ])
            .args(["-c", "max_connections=300", "-c", "shared_buffers=32MB"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start postgres");
        let server = Postgres {
            dir,
            port,
            postmaster,
            databases: AtomicU32::new(0),
        };
        server.wait_ready();
        server
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The connection URL of database `name` (trust authentication, user `postgres`).
    pub fn url(&self, name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    /// Create a fresh, empty database and return its URL.
    pub async fn database(&self) -> String {
        let name = format!("t{}", self.databases.fetch_add(1, Ordering::Relaxed));
        let (client, connection) = tokio_postgres::connect(&self.url("postgres"), tokio_postgres::NoTls)
            .await
            .expect("connect to the test server");
        let connection = tokio::spawn(connection);
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create a test database");
        drop(client);
        let _ = connection.await;
        self.url(&name)
    }

    /// The server's log so far (for a failing test's message).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }

    /// Wait until the postmaster says it accepts connections: line 8 of `postmaster.pid` reads
    /// `ready` then (PostgreSQL 10 and later).
    fn wait_ready(&self) {
        let pid_file = self.data().join("postmaster.pid");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ready = std::fs::read_to_string(&pid_file)
                .ok()
                .is_some_and(|s| s.lines().nth(7).is_some_and(|l| l.trim() == "ready"));
            if ready {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "PostgreSQL did not start within 60 s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let pid = self.postmaster.id() as libc::pid_t;
        // SAFETY: signalling our own child, which has not been reaped, so the PID is still ours.
        unsafe { libc::kill(pid, libc::SIGQUIT) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.postmaster.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.postmaster.kill();
        let _ = self.postmaster.wait();
    }
}

/// A command for one of PostgreSQL's binaries, run in `dir` as the `postgres` user when the
/// tests run as root (PostgreSQL refuses root), else as the user running them.
fn as_postgres(dir: &Path, binary: &str) -> Command {
    let binary = Path::new(BIN).join(binary);
    let mut command = if as_root() {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=postgres", "--regid=postgres", "--clear-groups", "--"])
            .arg(binary);
        c
    } else {
        Command::new(binary)
    };
    command.current_dir(dir).env_remove("PGDATA");
    command
}

fn as_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The uid and gid of the `postgres` user, if there is one.
fn postgres_user() -> Option<(u32, u32)> {
    // SAFETY: getpwnam reads a static buffer; the tests call it before any other thread does.
    let entry = unsafe { libc::getpwnam(c"postgres".as_ptr()) };
    // SAFETY: a non-null result points at a valid passwd record.
    (!entry.is_null()).then(|| unsafe { ((*entry).pw_uid, (*entry).pw_gid) })
}

#[cfg(test)]
mod tests {
    use super::Postgres;

    #[tokio::test]
    async fn a_started_server_takes_connections_and_makes_separate_databases() {
        let pg = Postgres::start();
        let (one, two) = (pg.database().await, pg.database().await);
        assert_ne!(one, two);
        let (client, connection) = tokio_postgres::connect(&one, tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(connection);
        let row = client.query_one("SELECT current_database(), 1 + 1", &[]).await.unwrap();
        assert_eq!(row.get::<_, i32>(1), 2);
        assert!(one.ends_with(&row.get::<_, String>(0)));
        let pid = pg.postmaster.id() as libc::pid_t;
        drop(pg);
        // SAFETY: signal 0 only checks whether the PID exists.
        assert_ne!(unsafe { libc::kill(pid, 0) }, 0, "the postmaster is gone after drop");
    }
}
