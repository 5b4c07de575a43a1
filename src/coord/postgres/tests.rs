//! PgCoordinator against a real PostgreSQL 15: the coordinator conformance suite, and what only
//! several replicas on one database show: one fill claim cluster-wide, a takeover after the
//! owner's lease expires, notices across replicas, one GC leader, membership.

use std::sync::Arc;
use std::time::Duration;

use super::PgCoordinator;
use crate::config::ClusterConfig;
use crate::coord::{Coordinator, FillClaim, Notice, Task};
use crate::oci::Digest;
use crate::testing::engines::postgres::Postgres;

/// The next notice `rx` receives, within 10 s.
async fn next(rx: &mut crate::coord::Notices, what: &str) -> Notice {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .unwrap_or_else(|_| panic!("{what}"))
        .unwrap()
}

/// A migrated database of `pg`: its URL.
async fn database(pg: &Postgres) -> String {
    let url = pg.database().await;
    crate::store::postgres::migrate(&crate::store::postgres::pool(&url, 2).unwrap())
        .await
        .unwrap();
    url
}

/// `[cluster]` advertising `advertise`, with a short lease so takeovers are quick to test.
fn config(advertise: &str) -> ClusterConfig {
    ClusterConfig {
        advertise: advertise.into(),
        lease: Duration::from_secs(1),
        heartbeat: Duration::from_millis(200),
        ..ClusterConfig::default()
    }
}

/// A replica advertised as `advertise` (see [`config`]).
async fn replica(url: &str, advertise: &str) -> Arc<PgCoordinator> {
    PgCoordinator::new(crate::store::postgres::pool(url, 4).unwrap(), url, &config(advertise))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_coordinator_passes_the_coordinator_conformance_suite() {
    let pg = Postgres::start();
    // One database per check, as the suite asks for a fresh coordinator each time; made up
    // front because the suite's constructor is synchronous.
    let mut urls = Vec::new();
    for _ in 0..7 {
        urls.push(database(&pg).await);
    }
    let mut coordinators = Vec::new();
    for url in &urls {
        coordinators.push(replica(url, "http://127.0.0.1:1").await as Arc<dyn Coordinator>);
    }
    let fresh = std::sync::Mutex::new(coordinators.into_iter());
    crate::coord::conformance::run(|| fresh.lock().unwrap().next().expect("one coordinator per check")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_claims_a_fill_and_another_takes_over_after_its_lease_expires() {
    let pg = Postgres::start();
    let url = database(&pg).await;
    let (owner, waiter) = (
        replica(&url, "http://owner:5000").await,
        replica(&url, "http://waiter:5000").await,
    );
    let digest = Digest::sha256_of(b"cold blob");
    let FillClaim::Lead(lease) = owner.claim_fill(&digest, Arc::new(())).await.unwrap() else {
        panic!("the first claim leads");
    };
    let FillClaim::Follow(follower) = waiter.claim_fill(&digest, Arc::new(())).await.unwrap() else {
        panic!("a second replica's claim follows while the owner holds the lease");
    };
    assert_eq!(follower.generation, lease.generation());
    assert!(follower.local.is_none(), "the leader is in another process");
    assert_eq!(
        follower.leader_url.as_deref(),
        Some("http://owner:5000"),
        "where to stream from"
    );
    // The owner keeps renewing while it fills: past several lease durations it still leads.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(matches!(
        waiter.claim_fill(&digest, Arc::new(())).await.unwrap(),
        FillClaim::Follow(_)
    ));
    // The owner dies mid-fill: it neither releases nor renews.
    let generation = lease.generation();
    std::mem::forget(lease);
    drop(owner);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let taken = loop {
        match waiter.claim_fill(&digest, Arc::new(())).await.unwrap() {
            FillClaim::Lead(taken) => break taken,
            FillClaim::Follow(_) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the expired lease was never taken over"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert!(taken.generation() > generation, "a takeover claims a higher generation");
    assert_eq!(waiter.stats().takeovers.load(std::sync::atomic::Ordering::Relaxed), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notice_crosses_replicas_and_one_gc_leads_until_released_or_dead() {
    let pg = Postgres::start();
    let url = database(&pg).await;
    let (one, two) = (
        replica(&url, "http://one:5000").await,
        replica(&url, "http://two:5000").await,
    );
    let mut heard = two.subscribe();
    let notice = Notice::TagMoved {
        repo: "library/alpine".parse().unwrap(),
        tag: "latest".parse().unwrap(),
    };
    one.publish(notice.clone());
    one.publish(Notice::ManifestsChanged);
    for expected in [notice, Notice::ManifestsChanged] {
        let got = next(&mut heard, "the other replica hears the notice").await;
        assert_eq!(got, expected, "in the publisher's order");
    }
    // Two replicas asked to GC at once: one run.
    let (a, b) = tokio::join!(one.lead(&Task::Gc), two.lead(&Task::Gc));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.is_some() as u8 + b.is_some() as u8, 1, "exactly one GC leader");
    let (guard, leader, other) = match (a, b) {
        (Some(guard), None) => (guard, one, two),
        (None, Some(guard)) => (guard, two, one),
        _ => panic!("exactly one GC leader"),
    };
    assert!(
        other.lead(&Task::Gc).await.unwrap().is_none(),
        "still one while it runs"
    );
    drop(guard);
    let guard = eventually_lead(&other, "a released GC lease lets the other replica lead").await;
    // That leader dies mid-run (no release, no renewal): the first leads once its lease expires.
    std::mem::forget(guard);
    drop(other);
    assert!(
        leader.lead(&Task::Gc).await.unwrap().is_none(),
        "not before the lease expires"
    );
    eventually_lead(&leader, "a dead GC leader's lease expires").await;
    let takeovers = leader.stats().takeovers.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(
        takeovers, 1,
        "the expired lease counts as a takeover; the released one did not"
    );
}

/// Lead `Task::Gc` on `replica` within 10 s.
async fn eventually_lead(replica: &PgCoordinator, what: &str) -> crate::coord::LeaderGuard {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(guard) = replica.lead(&Task::Gc).await.unwrap() {
            return guard;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_leaves_sends_its_queued_notices_first() {
    // `berth delete` on a cluster publishes a notice and leaves right away; the notice must
    // still reach the replicas that memoized the tag.
    let pg = Postgres::start();
    let url = database(&pg).await;
    let (one, two) = (
        replica(&url, "http://one:5000").await,
        replica(&url, "http://two:5000").await,
    );
    let mut heard = one.subscribe();
    let notices: Vec<Notice> = (0..20)
        .map(|i| Notice::TagMoved {
            repo: "team/app".parse().unwrap(),
            tag: format!("t{i}").parse().unwrap(),
        })
        .collect();
    for notice in &notices {
        two.publish(notice.clone());
    }
    two.leave().await.unwrap();
    for notice in &notices {
        assert_eq!(&next(&mut heard, "a queued notice arrives").await, notice);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_join_and_leave_without_restarting_the_others() {
    let pg = Postgres::start();
    let url = database(&pg).await;
    let pool = crate::store::postgres::pool(&url, 1).unwrap();
    let refused = PgCoordinator::new(pool, &url, &ClusterConfig::default())
        .await
        .err()
        .expect("a replica without [cluster] advertise is refused");
    assert!(refused.0.contains("advertise"), "{refused}");
    let one = replica(&url, "http://one:5000").await;
    assert_eq!(
        one.members().await.unwrap().len(),
        1,
        "the refused replica never joined"
    );
    let two = replica(&url, "http://two:5000").await;
    let urls: Vec<String> = one.members().await.unwrap().into_iter().map(|m| m.url).collect();
    assert_eq!(urls.len(), 2);
    assert!(urls.contains(&"http://two:5000".to_owned()));
    two.leave().await.unwrap();
    assert_eq!(
        one.members().await.unwrap().len(),
        1,
        "a replica that left is gone at once"
    );
    // A replica that dies is gone after three missed heartbeats.
    let three = replica(&url, "http://three:5000").await;
    assert_eq!(one.members().await.unwrap().len(), 2);
    drop(three);
    tokio::time::sleep(Duration::from_millis(900)).await;
    let left: Vec<String> = one.members().await.unwrap().into_iter().map(|m| m.url).collect();
    assert_eq!(left, ["http://one:5000"], "the silent replica is no longer counted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_that_loses_its_connection_reconnects_and_says_everything_changed() {
    let pg = Postgres::start();
    let url = database(&pg).await;
    let (one, two) = (
        replica(&url, "http://one:5000").await,
        replica(&url, "http://two:5000").await,
    );
    let mut heard = two.subscribe();
    // What a database restart or a dropped connection does to the listening sessions.
    let (admin, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    let killed: i64 = admin
        .query_one(
            "SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE query LIKE 'LISTEN%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(killed, 2, "both replicas' listening connections");
    let got = next(&mut heard, "told after reconnecting").await;
    assert_eq!(
        got,
        Notice::ManifestsChanged,
        "notices in the gap may be lost: all is stale"
    );
    let notice = Notice::RepoRemoved {
        repo: "team/app".parse().unwrap(),
    };
    // The publisher's listener may still be reconnecting; its publishing does not depend on it.
    one.publish(notice.clone());
    let got = next(&mut heard, "notices flow again").await;
    assert_eq!(got, notice);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_maintenance_command_coordinates_with_the_replicas_without_being_a_member() {
    let pg = Postgres::start();
    let url = database(&pg).await;
    let serving = replica(&url, "http://replica:5000").await;
    // The replica's own file, as `berth gc --config` reads it.
    let cfg = config("http://replica:5000");
    let tool = PgCoordinator::for_tool(crate::store::postgres::pool(&url, 4).unwrap(), &url, &cfg)
        .await
        .unwrap();
    // Several heartbeats: the command's loop renews its leases but writes no membership row.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let members = serving.members().await.unwrap();
    assert_eq!(members.len(), 1, "only the replica is a member: {members:?}");
    let gc = tool.lead(&Task::Gc).await.unwrap();
    assert!(gc.is_some(), "the command leads GC");
    assert!(
        serving.lead(&Task::Gc).await.unwrap().is_none(),
        "and the replica steps aside"
    );
    // A fill the command leads offers no URL: the replica fetches itself rather than stream
    // from a process that serves nothing.
    let digest = Digest::sha256_of(b"prefetched");
    let FillClaim::Lead(_lease) = tool.claim_fill(&digest, Arc::new(())).await.unwrap() else {
        panic!("the command leads the fill");
    };
    let FillClaim::Follow(follower) = serving.claim_fill(&digest, Arc::new(())).await.unwrap() else {
        panic!("the replica follows while the command holds the lease");
    };
    assert_eq!(follower.leader_url, None);
}
