//! Descriptors, connections and slow clients: berth under a low descriptor limit, slowloris
//! connections, a full connection cap, and request bodies that stop halfway.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support;
use crate::support::client::{OCI_MANIFEST, client, header, push_image};
use crate::support::{Berth, PRIVATE, pseudo_random, sha256, store_layout};
use futures_util::StreamExt;
use reqwest::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The tests here time berth closely, and one loads the machine with 1,000 clients: they run one
/// at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Raise this test process's own soft descriptor limit (it holds a socket per client); the hard
/// limit.
fn raise_own_descriptor_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = limit.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
    }
    limit.rlim_max
}

/// berth's log lines above INFO (the last 20).
fn warnings(b: &Berth) -> String {
    let log = b.log();
    let lines: Vec<_> = log
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// An error with its causes, which say what went wrong on the connection.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text += &format!(": {c}");
        cause = c.source();
    }
    text
}

/// Read from `s` until berth closes it (EOF or reset); how long that took, or `None` if it was
/// still open after `cap`.
async fn closed_within(s: &mut TcpStream, cap: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(cap, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return start.elapsed(),
                Ok(_) => {}
            }
        }
    })
    .await
    .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_keep_alive_clients_under_a_soft_descriptor_limit_of_1024_get_no_failed_response() {
    let _serial = SERIAL.lock().await;
    const CLIENTS: usize = 1000;
    const ROUNDS: usize = 3;
    let hard = raise_own_descriptor_limit();
    assert!(
        hard >= 4096,
        "the hard RLIMIT_NOFILE is {hard}: too low for 1,000 clients and berth (raise it for the test run)"
    );
    // Timeouts far above the test's length: on a loaded machine a client that waits at the
    // barrier must not see its kept-alive connection closed as idle.
    let b = Berth::start_with_nofile(
        &format!("{PRIVATE}[server]\nheader_timeout = \"5m\"\nidle_timeout = \"5m\"\n"),
        1024,
        None,
    );
    assert!(
        b.log().contains("soft_before=1024") && b.log().contains(&format!("hard={hard}")),
        "berth logs the soft limit it started with and the hard one:\n{}",
        b.log()
    );
    let layers: Vec<Vec<u8>> = (0..4).map(|i| pseudo_random(128 << 10, i)).collect();
    let refs: Vec<&[u8]> = layers.iter().map(Vec::as_slice).collect();
    let manifest = push_image(&b.url, "team/app", "v1", &refs).await;
    let layers = Arc::new(layers);

    // Every client holds its own kept-alive connection; all connect before any goes on, so
    // berth holds 1,000 connections at once while it opens blob files to answer them.
    let barrier = Arc::new(tokio::sync::Barrier::new(CLIENTS));
    // Built before any connects: building 1,000 clients takes seconds of CPU.
    berth::install_crypto_provider();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            reqwest::Client::builder()
                .http1_only()
                .pool_max_idle_per_host(1)
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap()
        })
        .collect();
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            let (base, manifest, layers, barrier) = (b.url.clone(), manifest.clone(), layers.clone(), barrier.clone());
            tokio::spawn(async move {
                let mut failures = Vec::new();
                for round in 0..ROUNDS {
                    if round == 1 {
                        barrier.wait().await;
                    }
                    let r = c
                        .get(format!("{base}/v2/team/app/manifests/v1"))
                        .header("accept", OCI_MANIFEST)
                        .send()
                        .await;
                    match r {
                        Ok(r) if r.status() == StatusCode::OK && header(&r, "docker-content-digest") == manifest => {}
                        Ok(r) => failures.push(format!("manifest: {} {:?}", r.status(), r.text().await)),
                        Err(e) => failures.push(format!("round {round} manifest: {}", chain(&e))),
                    }
                    let layer = &layers[(i + round) % layers.len()];
                    let r = c
                        .get(format!("{base}/v2/team/app/blobs/{}", sha256(layer)))
                        .send()
                        .await;
                    match r {
                        Ok(r) if r.status() == StatusCode::OK => match r.bytes().await {
                            Ok(body) if body[..] == layer[..] => {}
                            Ok(body) => failures.push(format!("blob: {} bytes, not the layer", body.len())),
                            Err(e) => failures.push(format!("blob body: {e}")),
                        },
                        Ok(r) => failures.push(format!("blob: {} {:?}", r.status(), r.text().await)),
                        Err(e) => failures.push(format!("round {round} blob: {}", chain(&e))),
                    }
                }
                failures
            })
        })
        .collect();
    let mut failures = Vec::new();
    for t in tasks {
        failures.extend(t.await.unwrap());
    }
    assert!(
        failures.is_empty(),
        "{} of {} responses failed, e.g. {:?}\nberth's warnings:\n{}",
        failures.len(),
        CLIENTS * ROUNDS * 2,
        &failures[..failures.len().min(5)],
        warnings(&b)
    );
}

/// Send `request` on `s` and read the response head and what follows of it within `cap`.
async fn answer(mut s: TcpStream, request: String, cap: Duration) -> Option<String> {
    s.write_all(request.as_bytes()).await.ok()?;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let _ = tokio::time::timeout(cap, async {
        while let Ok(n @ 1..) = s.read(&mut buf).await {
            got.extend_from_slice(&buf[..n]);
            if got.windows(4).any(|w| w == b"\r\n\r\n") && got.ends_with(b"}") {
                return; // a head and a JSON error body (a blob body may come in pieces)
            }
        }
    })
    .await;
    (!got.is_empty()).then(|| String::from_utf8_lossy(&got).into_owned())
}

#[tokio::test]
async fn out_of_descriptors_berth_answers_503_with_retry_after_logs_failed_accepts_sparingly_and_recovers() {
    let _serial = SERIAL.lock().await;
    // A hard limit berth cannot raise: a few dozen descriptors beyond what it needs to start.
    let b = Berth::start_with_nofile(PRIVATE, 64, Some(64));
    assert!(b.log().contains("descriptor limit is low"), "no warning:\n{}", b.log());
    let layer = pseudo_random(64 << 10, 9);
    push_image(&b.url, "team/app", "v1", &[&layer]).await;
    let blob = format!("/v2/team/app/blobs/{}", sha256(&layer));

    // More connections than berth has descriptors: it accepts until its table is full, and the
    // rest wait in the listen queue while every accept fails.
    let mut conns = Vec::new();
    for _ in 0..100 {
        conns.push(TcpStream::connect(&b.addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let request = format!("GET {blob} HTTP/1.1\r\nHost: berth\r\n\r\n");
    let answers: Vec<_> = conns
        .into_iter()
        .map(|s| tokio::spawn(answer(s, request.clone(), Duration::from_secs(3))))
        .collect();
    let mut unavailable = 0;
    for a in answers {
        let Some(text) = a.await.unwrap() else { continue }; // still queued, never accepted
        let status = text.split(' ').nth(1).unwrap_or("");
        let lower = text.to_ascii_lowercase();
        match status {
            "200" => {}
            "503" => {
                assert!(lower.contains("retry-after: 1\r\n"), "503 without Retry-After: {text}");
                assert!(text.contains("\"UNAVAILABLE\""), "503 without the OCI code: {text}");
                unavailable += 1;
            }
            _ => panic!("out of descriptors, berth answered {text:?}"),
        }
    }
    assert!(unavailable > 0, "no request ran into the descriptor limit");
    // Accepts failed every 50 ms or so for seconds; they are logged at most every 5 s.
    let logged = b.log().matches("accepting a connection failed").count();
    assert!(
        (1..=2).contains(&logged),
        "failed accepts logged {logged} times:\n{}",
        b.log()
    );

    // The clients are gone: berth serves again, without a restart.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let r = client().get(b.at(&blob)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.bytes().await.unwrap()[..], layer[..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_connections_are_closed_within_the_header_timeout_while_others_are_served() {
    let _serial = SERIAL.lock().await;
    const STALLED: usize = 500;
    let header_timeout = Duration::from_secs(2);
    raise_own_descriptor_limit();
    let b = Berth::start("[server]\nheader_timeout = \"2s\"\n");
    // Three ways to stall: say nothing, stop inside a request's headers, and stop inside the
    // headers of the second request on a kept-alive connection.
    let stalls = [
        "",
        "GET /v2/ HTTP/1.1\r\nHost: berth\r\nUser-Agent: slow",
        "GET /v2/ HTTP/1.1\r\nHost: berth\r\n\r\nGET /v2/ HTTP/1.1\r\nHost: berth\r\nX-Slow: 1",
    ];
    let mut conns = Vec::new();
    for i in 0..STALLED {
        let mut s = TcpStream::connect(&b.addr).await.unwrap();
        s.write_all(stalls[i % stalls.len()].as_bytes()).await.unwrap();
        conns.push(s);
    }
    let stalled_at = Instant::now();
    let closed: Vec<_> = conns
        .into_iter()
        .map(|mut s| tokio::spawn(async move { closed_within(&mut s, Duration::from_secs(15)).await }))
        .collect();

    // Meanwhile new clients, each on a new connection, keep being answered promptly.
    let mut served = 0;
    while stalled_at.elapsed() < header_timeout + Duration::from_secs(1) {
        berth::install_crypto_provider();
        let c = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .unwrap();
        let r = c.get(b.at("/v2/")).send().await;
        assert!(
            r.as_ref().is_ok_and(|r| r.status() == StatusCode::OK),
            "a new client was not served while slowloris connections were open: {r:?}"
        );
        served += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(served >= 5, "only {served} requests went through");

    let mut open = 0;
    let mut slowest = Duration::ZERO;
    for t in closed {
        match t.await.unwrap() {
            Some(after) => slowest = slowest.max(after),
            None => open += 1,
        }
    }
    assert_eq!(
        open, 0,
        "{open} of {STALLED} stalled connections were still open after 15 s"
    );
    // The timer starts when berth accepts, a little before the last stall was written.
    let slack = Duration::from_secs(3);
    assert!(
        slowest <= header_timeout + slack,
        "the last stalled connection closed {slowest:?} after it stalled (header timeout {header_timeout:?})"
    );
}

#[tokio::test]
async fn over_the_connection_cap_a_new_client_waits_for_a_slot_and_is_served_when_stalled_ones_are_cut() {
    let _serial = SERIAL.lock().await;
    let header_timeout = Duration::from_secs(2);
    let b = Berth::start("[server]\nheader_timeout = \"2s\"\nmax_connections = 20\n");
    let mut stalled = Vec::new();
    for _ in 0..20 {
        stalled.push(TcpStream::connect(&b.addr).await.unwrap());
    }
    // Let berth accept them all, so they hold every slot.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let start = Instant::now();
    berth::install_crypto_provider();
    let c = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let r = c.get(b.at("/v2/")).send().await.expect("served once a slot frees");
    let waited = start.elapsed();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        waited >= header_timeout / 2,
        "answered after {waited:?}: the 20 stalled connections did not hold the 20 slots"
    );
    assert!(
        waited <= header_timeout + Duration::from_secs(3),
        "answered only after {waited:?}"
    );
    for mut s in stalled {
        assert!(
            closed_within(&mut s, Duration::from_secs(5)).await.is_some(),
            "a stalled connection stayed open"
        );
    }
}

/// Upload session files in the store.
fn sessions(b: &Berth) -> usize {
    store_layout::upload_files(&b.root)
}

/// Send `head` and `sent` bytes of a body it declares longer, then stall. How long until berth
/// cuts the request off (answers or closes), and what it answered.
async fn stall_body(b: &Berth, head: &str, sent: &[u8]) -> (Option<Duration>, String) {
    let mut s = TcpStream::connect(&b.addr).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(sent).await.unwrap();
    let start = Instant::now();
    let mut answer = Vec::new();
    let done = tokio::time::timeout(Duration::from_secs(15), async {
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
            if answer.windows(4).any(|w| w == b"\r\n\r\n") {
                return; // a response head: berth has cut the request off
            }
        }
    })
    .await;
    (
        done.ok().map(|_| start.elapsed()),
        String::from_utf8_lossy(&answer).into_owned(),
    )
}

#[tokio::test]
async fn an_upload_body_that_stops_halfway_is_cut_off_within_the_body_timeout_and_changes_no_session() {
    let _serial = SERIAL.lock().await;
    let body_timeout = Duration::from_secs(2);
    let b = Berth::start(&format!("{PRIVATE}[server]\nbody_timeout = \"2s\"\n"));
    let content = pseudo_random(3000, 7);
    let c = client();
    let r = c.post(b.at("/v2/team/up/blobs/uploads/")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let location = header(&r, "location");
    let r = c
        .patch(b.at(&location))
        .header("content-range", "0-999")
        .header("content-type", "application/octet-stream")
        .body(content[..1000].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(header(&r, "range"), "0-999");
    let before = sessions(&b);

    // A chunk that declares 2000 bytes and sends 1000.
    let head = format!(
        "PATCH {location} HTTP/1.1\r\nHost: berth\r\nContent-Type: application/octet-stream\r\nContent-Range: 1000-2999\r\nContent-Length: 2000\r\n\r\n"
    );
    let (cut, answer) = stall_body(&b, &head, &content[1000..2000]).await;
    let cut = cut.unwrap_or_else(|| panic!("the stalled chunk was still open after 15 s; answer so far: {answer:?}"));
    assert!(
        cut <= body_timeout + Duration::from_secs(3),
        "cut off after {cut:?} (body timeout {body_timeout:?})"
    );
    assert!(
        !answer.starts_with("HTTP/1.1 2"),
        "a cut-off chunk is no success: {answer}"
    );

    // The session is as it was before the chunk (or closed), and no other session appeared.
    let r = c.get(b.at(&location)).send().await.unwrap();
    match r.status() {
        StatusCode::NO_CONTENT => {
            assert_eq!(header(&r, "range"), "0-999", "the cut-off chunk moved the session");
            assert_eq!(sessions(&b), before, "session files changed");
            // It resumes where it was and finishes with the right bytes.
            let r = c
                .patch(b.at(&location))
                .header("content-range", "1000-2999")
                .header("content-type", "application/octet-stream")
                .body(content[1000..].to_vec())
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::ACCEPTED);
            let location = header(&r, "location");
            let sep = if location.contains('?') { '&' } else { '?' };
            let digest = sha256(&content);
            let r = c
                .put(b.at(&format!("{location}{sep}digest={digest}")))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::CREATED);
            let got = c
                .get(b.at(&format!("/v2/team/up/blobs/{digest}")))
                .send()
                .await
                .unwrap();
            assert_eq!(got.bytes().await.unwrap()[..], content[..]);
        }
        StatusCode::NOT_FOUND => assert!(sessions(&b) < before, "the session is gone but its files stayed"),
        other => panic!("upload status answered {other}"),
    }

    // A monolithic upload whose body stops halfway leaves no session and no blob.
    let before = sessions(&b);
    let whole = pseudo_random(2000, 8);
    let digest = sha256(&whole);
    let head = format!(
        "POST /v2/team/up/blobs/uploads/?digest={digest} HTTP/1.1\r\nHost: berth\r\nContent-Type: application/octet-stream\r\nContent-Length: 2000\r\n\r\n"
    );
    let (cut, answer) = stall_body(&b, &head, &whole[..1000]).await;
    let cut = cut.unwrap_or_else(|| panic!("the stalled upload was still open after 15 s; answer so far: {answer:?}"));
    assert!(cut <= body_timeout + Duration::from_secs(3), "cut off after {cut:?}");
    assert!(
        !answer.starts_with("HTTP/1.1 2"),
        "a cut-off upload is no success: {answer}"
    );
    assert_eq!(sessions(&b), before, "the cut-off upload left a session behind");
    let r = c
        .head(b.at(&format!("/v2/team/up/blobs/{digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND, "half a blob was published");
}

#[tokio::test]
async fn a_body_that_keeps_sending_slowly_is_not_cut_off_by_the_body_timeout() {
    let _serial = SERIAL.lock().await;
    let b = Berth::start(&format!("{PRIVATE}[server]\nbody_timeout = \"2s\"\n"));
    let content = pseudo_random(5000, 11);
    // 1000 bytes a second for 5 s: longer than the body timeout in all, never silent that long.
    let chunks: Vec<Vec<u8>> = content.chunks(1000).map(<[u8]>::to_vec).collect();
    let body = futures_util::stream::iter(chunks).then(|chunk| async move {
        tokio::time::sleep(Duration::from_secs(1)).await;
        Ok::<_, std::io::Error>(chunk)
    });
    let digest = sha256(&content);
    let r = client()
        .post(b.at(&format!("/v2/team/slow/blobs/uploads/?digest={digest}")))
        .header("content-type", "application/octet-stream")
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED, "{:?}", r.text().await);
}

#[tokio::test]
async fn idle_connections_are_closed_after_the_idle_timeout_on_http1_and_http2() {
    let _serial = SERIAL.lock().await;
    let idle = Duration::from_secs(2);
    let b = Berth::start("[server]\nidle_timeout = \"2s\"\nheader_timeout = \"1m\"\n");

    // HTTP/2 (cleartext, prior knowledge): one request, then nothing.
    let tcp = TcpStream::connect(&b.addr).await.unwrap();
    let (mut h2, mut conn) = h2::client::handshake(tcp).await.unwrap();
    let request = axum::http::Request::get(b.at("/v2/")).body(()).unwrap();
    let (response, _) = h2.send_request(request, true).unwrap();
    let response = tokio::select! {
        r = response => r.unwrap(),
        e = &mut conn => panic!("connection ended first: {e:?}"),
    };
    assert_eq!(response.status(), 200);
    drop(h2);
    let start = Instant::now();
    let closed = tokio::time::timeout(Duration::from_secs(15), conn).await;
    assert!(closed.is_ok(), "an idle HTTP/2 connection stayed open for 15 s");
    assert!(
        start.elapsed() <= idle + Duration::from_secs(3),
        "closed after {:?}",
        start.elapsed()
    );

    // HTTP/1.1: one request, then nothing (header_timeout, which also ends the wait for a next
    // request, is a minute here).
    let mut s = TcpStream::connect(&b.addr).await.unwrap();
    s.write_all(b"GET /v2/ HTTP/1.1\r\nHost: berth\r\n\r\n").await.unwrap();
    let after = closed_within(&mut s, Duration::from_secs(15)).await;
    let after = after.expect("an idle HTTP/1.1 connection stayed open for 15 s");
    assert!(after <= idle + Duration::from_secs(3), "closed after {after:?}");
}

#[tokio::test]
async fn berth_advertises_its_http2_stream_cap() {
    let _serial = SERIAL.lock().await;
    let b = Berth::start("[server]\nmax_streams = 7\n");
    let tcp = TcpStream::connect(&b.addr).await.unwrap();
    let (mut h2, mut conn) = h2::client::handshake(tcp).await.unwrap();
    let request = axum::http::Request::get(b.at("/v2/")).body(()).unwrap();
    let (response, _) = h2.send_request(request, true).unwrap();
    // Answered: berth's SETTINGS came before its response.
    tokio::select! {
        r = response => assert_eq!(r.unwrap().status(), 200),
        e = &mut conn => panic!("connection ended first: {e:?}"),
    }
    assert_eq!(conn.max_concurrent_send_streams(), 7, "SETTINGS_MAX_CONCURRENT_STREAMS");
}

#[tokio::test]
async fn a_client_that_stops_reading_a_download_is_cut_off_after_the_idle_timeout() {
    let _serial = SERIAL.lock().await;
    let b = Berth::start(&format!("{PRIVATE}[server]\nidle_timeout = \"2s\"\n"));
    // Far more than the socket buffers of both ends hold.
    let blob = pseudo_random(64 << 20, 12);
    let digest = support::client::push_blob(&b.url, "team/big", &blob).await;
    let mut s = TcpStream::connect(&b.addr).await.unwrap();
    let request = format!("GET /v2/team/big/blobs/{digest} HTTP/1.1\r\nHost: berth\r\n\r\n");
    s.write_all(request.as_bytes()).await.unwrap();
    // Read nothing while berth's writes stall, then see how much arrives before the end.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let mut received = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    let ended = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received += n,
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the connection stayed open");
    assert!(
        received < blob.len(),
        "all {received} bytes arrived: the stalled download was not cut off"
    );
}
