//! Headless Chromium (Debian's `chromium`) for looking at the web UI as a browser renders it: the
//! DOM after rendering, and screenshots. Each run gets a fresh profile and is killed if it hangs.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// How long one Chromium run may take.
const RUN_LIMIT: Duration = Duration::from_secs(90);

fn run(args: &[String], url: &str) -> Output {
    super::require("chromium");
    let profile = tempfile::Builder::new().prefix("berth-chromium-").tempdir().unwrap();
    let mut child = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox", // tests run as root, where Chromium's sandbox refuses to start
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn chromium");
    let deadline = Instant::now() + RUN_LIMIT;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("chromium did not finish {url} within {RUN_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "chromium {url} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The DOM of `url` after Chromium rendered it.
pub fn dom(url: &str) -> String {
    String::from_utf8(run(&["--dump-dom".into()], url).stdout).unwrap()
}

/// A `width`×`height` PNG screenshot of `url`, written to `out`.
pub fn screenshot(url: &str, out: &Path, width: u32, height: u32) {
    let _ = std::fs::remove_file(out);
    run(
        &[
            format!("--screenshot={}", out.display()),
            format!("--window-size={width},{height}"),
        ],
        url,
    );
    assert!(out.is_file(), "chromium wrote no screenshot of {url}");
}
