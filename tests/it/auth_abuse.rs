//! Authentication under abuse: password guessing is throttled per client and per user name and
//! the throttle wears off; a flood of bogus credentials cannot starve other clients; and the
//! catalog shows a logged-in user only the repositories they may pull.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::support::client::{client, client_from, error_code, header, push_image};
use crate::support::in_process::App;
use crate::support::{Berth, Server, htpasswd, htpasswd_with_cost};
use reqwest::StatusCode;
use serde_json::Value;

/// A token request with a Basic login, as `docker login` sends it.
async fn login(c: &reqwest::Client, b: &impl Server, user: &str, password: &str) -> reqwest::Response {
    c.get(b.at("/token?service=berth&scope=repository:team/app:push,pull"))
        .basic_auth(user, Some(password))
        .send()
        .await
        .unwrap()
}

/// The value of one series in `/metrics` (0 when absent).
async fn metric(b: &impl Server, series: &str) -> f64 {
    crate::support::client::metric(b.url(), series).await.unwrap_or(0.0)
}

/// Statuses of `n` concurrent wrong-password logins for `user` from `c`, each with its own password.
async fn guesses(c: &reqwest::Client, b: &impl Server, user: &str, n: usize) -> Vec<reqwest::Response> {
    // Every guess is a new password: berth remembers a refused pair and answers it again without
    // a check (and without a place in the throttle), so two clients guessing the same passwords
    // would take fewer places than guesses, depending on which finished first.
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let tries = (0..n).map(|_| {
        let i = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let password = format!("guess-{user}-{i}");
        async move { login(c, b, user, &password).await }
    });
    futures_util::future::join_all(tries).await
}

#[tokio::test]
async fn password_guessing_is_throttled_per_client_and_per_user_and_wears_off() {
    let dir = tempfile::tempdir().unwrap();
    let pw = htpasswd(dir.path(), &[("alice", "alice-pw"), ("bob", "bob-pw")]);
    // Long enough that the buckets barely leak while a slow machine answers the guesses.
    let window = Duration::from_secs(16);
    let b = App::start(&format!(
        "[auth]\nhtpasswd = \"{}\"\nscheme = \"token\"\nlogin_failures_per_ip = 5\nlogin_failures_per_user = 8\nlogin_failure_window = \"{}s\"\n",
        pw.display(),
        window.as_secs()
    ))
    .await;

    // A burst of wrong passwords from one client: the first 5 are checked (401; one or two more if
    // the bucket leaked while they arrived), the rest are refused unchecked with 429,
    // Retry-After and the OCI error code.
    let attacker = client_from(1);
    let statuses = guesses(&attacker, &b, "alice", 12).await;
    let unauthorized = statuses
        .iter()
        .filter(|r| r.status() == StatusCode::UNAUTHORIZED)
        .count();
    assert!((5..=7).contains(&unauthorized), "{unauthorized} guesses were checked");
    let mut throttled = 0;
    for r in statuses
        .into_iter()
        .filter(|r| r.status() == StatusCode::TOO_MANY_REQUESTS)
    {
        let retry_after: u64 = header(&r, "retry-after").parse().expect("Retry-After");
        assert!(
            (1..=window.as_secs()).contains(&retry_after),
            "Retry-After {retry_after}"
        );
        assert_eq!(error_code(r, StatusCode::TOO_MANY_REQUESTS).await, "TOOMANYREQUESTS");
        throttled += 1;
    }
    assert_eq!(throttled, 12 - unauthorized);
    // The client stays throttled, even with the right password, on the /v2 API and the web UI too.
    assert_eq!(
        login(&attacker, &b, "alice", "alice-pw").await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    let v2 = attacker
        .get(b.at("/v2/"))
        .basic_auth("alice", Some("another-guess"))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(v2, StatusCode::TOO_MANY_REQUESTS).await, "TOOMANYREQUESTS");
    let ui = attacker
        .get(b.at("/ui"))
        .basic_auth("alice", Some("a-third-guess"))
        .send()
        .await
        .unwrap();
    assert_eq!(ui.status(), StatusCode::TOO_MANY_REQUESTS, "the web UI's login too");
    assert!(!header(&ui, "retry-after").is_empty());
    assert!(metric(&b, "berth_login_failures_total").await >= 5.0);
    assert!(metric(&b, "berth_login_throttled_total{by=\"ip\"}").await >= 6.0);

    // alice herself, from her own machine, is not affected.
    assert_eq!(
        login(&client_from(2), &b, "alice", "alice-pw").await.status(),
        StatusCode::OK
    );

    // Guessing bob's password from several clients, each under its own limit, throttles the name.
    let (third, fourth) = (client_from(3), client_from(4));
    let (a, c) = tokio::join!(guesses(&third, &b, "bob", 5), guesses(&fourth, &b, "bob", 5));
    let refused = a
        .iter()
        .chain(&c)
        .filter(|r| r.status() == StatusCode::TOO_MANY_REQUESTS)
        .count();
    assert!(refused >= 1, "10 guesses at bob over a per-user limit of 8");
    assert_eq!(
        login(&client_from(5), &b, "bob", "bob-pw").await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    assert!(metric(&b, "berth_login_throttled_total{by=\"user\"}").await >= 2.0);

    // The throttle wears off: after the window, both log in again from where the guesses came.
    tokio::time::sleep(window).await;
    assert_eq!(login(&attacker, &b, "alice", "alice-pw").await.status(), StatusCode::OK);
    assert_eq!(login(&third, &b, "bob", "bob-pw").await.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_flood_of_bogus_credentials_does_not_starve_other_clients() {
    let dir = tempfile::tempdir().unwrap();
    // Cost 10: a usual bcrypt cost (Go's default); `htpasswd -B` would use 5.
    let pw = htpasswd_with_cost(dir.path(), &[("alice", "alice-pw")], 10);
    // The login throttle is off, so only the bound on password checks protects the server here.
    let b = Berth::start(&format!(
        "[auth]\nhtpasswd = \"{}\"\nscheme = \"token\"\nlogin_failures_per_ip = 0\nlogin_failures_per_user = 0\n",
        pw.display()
    ));
    let c = client();
    let basic = |r: reqwest::RequestBuilder| r.basic_auth("alice", Some("alice-pw"));
    assert_eq!(
        basic(c.get(b.at("/v2/"))).send().await.unwrap().status(),
        StatusCode::OK
    );

    // 96 tasks, each sending distinct wrong passwords to /v2/ for 5 seconds.
    let flood_for = Duration::from_secs(5);
    let started = Instant::now();
    let (sent, refused) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let flood: Vec<_> = (0..96)
        .map(|task| {
            let (c, url, sent, refused) = (c.clone(), b.at("/v2/"), sent.clone(), refused.clone());
            tokio::spawn(async move {
                for i in 0.. {
                    if started.elapsed() >= flood_for {
                        break;
                    }
                    sent.fetch_add(1, Ordering::Relaxed);
                    let password = format!("bogus-{task}-{i}");
                    let r = c.get(&url).basic_auth("mallory", Some(password)).send().await;
                    if r.is_ok_and(|r| r.status() == StatusCode::UNAUTHORIZED) {
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();

    // While it runs, /healthz and a client whose login was verified before answer within 1 s, and
    // no more bcrypt checks run at once than there are cores.
    let cores = std::thread::available_parallelism().unwrap().get() as f64;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (mut slowest, mut most_running, mut most_waiting) = (Duration::ZERO, 0.0f64, 0.0f64);
    while started.elapsed() < flood_for - Duration::from_millis(500) {
        let t = Instant::now();
        let health = c.get(b.at("/healthz")).send().await.unwrap();
        assert_eq!(health.status(), StatusCode::OK);
        let api = basic(c.get(b.at("/v2/"))).send().await.unwrap();
        assert_eq!(api.status(), StatusCode::OK);
        slowest = slowest.max(t.elapsed());
        most_running = most_running.max(metric(&b, "berth_login_checks_running").await);
        most_waiting = most_waiting.max(metric(&b, "berth_login_checks_waiting").await);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Requests still queued for a check are dropped with their tasks.
    for task in flood {
        task.abort();
    }
    let (sent, refused) = (sent.load(Ordering::Relaxed), refused.load(Ordering::Relaxed));
    assert!(
        slowest < Duration::from_secs(1),
        "/healthz and a logged-in client took {slowest:?} under a flood of {sent} bogus logins"
    );
    assert!(
        most_running <= cores,
        "{most_running} bcrypt checks ran at once on {cores} cores"
    );
    assert!(
        most_waiting >= 1.0,
        "the flood ({sent} requests) never made a check wait"
    );
    assert!(refused >= 1, "no bogus login was answered");
    assert!(metric(&b, "berth_login_failures_total").await >= refused as f64);
}

/// The catalog's names, and its `Link` header, for `user`.
async fn catalog(b: &Berth, user: (&str, &str), query: &str) -> (Vec<String>, String) {
    let r = client()
        .get(b.at(&format!("/v2/_catalog{query}")))
        .basic_auth(user.0, Some(user.1))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let link = header(&r, "link");
    let body: Value = r.json().await.unwrap();
    let names = body["repositories"].as_array().unwrap();
    (names.iter().map(|n| n.as_str().unwrap().to_owned()).collect(), link)
}

#[tokio::test]
async fn the_catalog_lists_only_repositories_the_caller_may_pull() {
    let dir = tempfile::tempdir().unwrap();
    let repos = ["secret/keys", "secret/vault", "team/app", "team/web"];
    {
        // Pushed while authentication is off; the same store then serves with access rules.
        let mut open = Berth::start_in(dir.path(), "[private]\nnamespaces = [\"team/*\", \"secret/*\"]\n");
        for repo in repos {
            push_image(&open.url, repo, "v1", &[repo.as_bytes()]).await;
        }
        open.stop();
    }
    let pw = htpasswd(dir.path(), &[("admin", "admin-pw"), ("alice", "alice-pw")]);
    let b = Berth::start_in(
        dir.path(),
        &format!(
            r#"
[private]
namespaces = ["team/*", "secret/*"]
[auth]
htpasswd = "{}"
scheme = "token"
[[auth.access]]
repository = "*"
users = ["admin"]
actions = ["pull", "push", "delete"]
[[auth.access]]
repository = "team/*"
users = ["alice"]
actions = ["pull", "push"]
"#,
            pw.display()
        ),
    );
    let admin = ("admin", "admin-pw");
    let alice = ("alice", "alice-pw");

    assert_eq!(catalog(&b, admin, "").await.0, repos);
    assert_eq!(catalog(&b, alice, "").await.0, ["team/app", "team/web"]);

    // Pagination counts only what the caller sees.
    let (page, link) = catalog(&b, alice, "?n=1").await;
    assert_eq!(page, ["team/app"]);
    assert_eq!(link, "</v2/_catalog?n=1&last=team/app>; rel=\"next\"");
    let (page, link) = catalog(&b, alice, "?n=1&last=team/app").await;
    assert_eq!((page, link), (vec!["team/web".to_owned()], String::new()));
    let (page, link) = catalog(&b, admin, "?n=2").await;
    assert_eq!(page, ["secret/keys", "secret/vault"]);
    assert_eq!(link, "</v2/_catalog?n=2&last=secret/vault>; rel=\"next\"");
}
