//! What the performance work must not cost: berth writes its log in batches (one `write` per
//! batch, not per request), and yet no access-log line is lost when it stops.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::support::Berth;
use crate::support::client::client;
use futures_util::future::join_all;
use reqwest::StatusCode;
use serde_json::Value;

/// A burst of requests, then SIGTERM at once: the lines still waiting in the buffer must be in
/// the log when the process has exited, each request's exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_right_after_a_burst_loses_no_access_line() {
    let mut b = Berth::start("[log]\nformat = \"json\"\n");
    let c = client();
    const N: usize = 400;
    let sent = join_all((0..N).map(|i| {
        let request = c.get(b.at("/v2/")).header("x-request-id", format!("perf-{i}"));
        async move { request.send().await.map(|r| r.status()) }
    }))
    .await;
    for (i, status) in sent.into_iter().enumerate() {
        assert_eq!(status.unwrap(), StatusCode::OK, "request perf-{i}");
    }
    // No pause. Lines logged during the shutdown itself (the drain, "berth stopped") come
    // within the flush interval of the exit, so they are still buffered unless the shutdown
    // writes them out; with that flush removed, this test fails.
    b.signal("TERM");
    let status = b.wait_exit(Duration::from_secs(30)).expect("berth exits after SIGTERM");
    assert!(status.success(), "{status}");

    let mut seen = BTreeMap::<String, usize>::new();
    for line in b.log().lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()) {
        if line["target"] == "berth::access"
            && let Some(id) = line["fields"]["request_id"]
                .as_str()
                .filter(|id| id.starts_with("perf-"))
        {
            *seen.entry(id.to_owned()).or_default() += 1;
        }
    }
    let missing: Vec<usize> = (0..N).filter(|i| !seen.contains_key(&format!("perf-{i}"))).collect();
    assert!(
        missing.is_empty(),
        "no access line for {} requests: {missing:?}",
        missing.len()
    );
    assert!(seen.values().all(|&n| n == 1), "one line per request: {seen:?}");
    assert!(
        b.log().contains("berth stopped"),
        "the last line logged before the exit is there too"
    );
}
