//! A throwaway certificate authority and a server certificate for 127.0.0.1, made with openssl.

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct TestCa {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    dir: PathBuf,
}

impl TestCa {
    pub fn new(dir: &Path) -> TestCa {
        super::require("openssl");
        let ca = TestCa {
            ca: dir.join("ca.crt"),
            cert: dir.join("server.crt"),
            key: dir.join("server.key"),
            dir: dir.to_owned(),
        };
        super::run(
            Command::new("openssl")
                .args([
                    "req",
                    "-x509",
                    "-newkey",
                    "rsa:2048",
                    "-nodes",
                    "-days",
                    "2",
                    "-subj",
                    "/CN=berth test CA",
                ])
                .arg("-keyout")
                .arg(dir.join("ca.key"))
                .arg("-out")
                .arg(&ca.ca),
        );
        ca.issue();
        ca
    }

    /// Issue a fresh server certificate (new serial) into `cert` and `key`; returns its serial.
    pub fn issue(&self) -> String {
        let d = &self.dir;
        std::fs::write(
            d.join("ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        super::run(
            Command::new("openssl")
                .args(["req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1"])
                .arg("-keyout")
                .arg(d.join("new.key"))
                .arg("-out")
                .arg(d.join("server.csr")),
        );
        super::run(
            Command::new("openssl")
                .args(["x509", "-req", "-days", "2", "-set_serial"])
                .arg(format!("0x{:x}", rand_serial()))
                .arg("-in")
                .arg(d.join("server.csr"))
                .arg("-CA")
                .arg(&self.ca)
                .arg("-CAkey")
                .arg(d.join("ca.key"))
                .arg("-extfile")
                .arg(d.join("ext"))
                .arg("-out")
                .arg(d.join("new.crt")),
        );
        // Replace both files by rename, as certbot does, so a reader never sees half a pair.
        std::fs::rename(d.join("new.key"), &self.key).unwrap();
        std::fs::rename(d.join("new.crt"), &self.cert).unwrap();
        serial_of(&self.cert)
    }
}

fn rand_serial() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    t.as_nanos() as u64 ^ u64::from(std::process::id())
}

/// The serial number of a PEM certificate file, as openssl prints it.
pub fn serial_of(cert: &Path) -> String {
    let out = super::run(
        Command::new("openssl")
            .args(["x509", "-noout", "-serial", "-in"])
            .arg(cert),
    );
    out.trim().trim_start_matches("serial=").to_owned()
}

/// The serial of the certificate a TLS server at `addr` presents now.
pub fn served_serial(addr: &str, ca: &Path) -> String {
    let s_client = Command::new("openssl")
        .args(["s_client", "-connect", addr, "-CAfile"])
        .arg(ca)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("openssl s_client");
    let pem = String::from_utf8_lossy(&s_client.stdout).into_owned();
    let mut child = Command::new("openssl")
        .args(["x509", "-noout", "-serial"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(pem.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .trim_start_matches("serial=")
        .to_owned()
}
