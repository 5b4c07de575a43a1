//! The [`Coordinator`] conformance suite, written once against `Arc<dyn Coordinator>`. Every
//! implementation's tests call [`run`] with a constructor of a fresh, empty coordinator (for a
//! database-backed one: a fresh schema), so all of them keep the same contract.

use std::sync::Arc;
use std::time::Duration;

use super::{Coordinator, FillClaim, LocalFill, Notice, Task};
use crate::oci::Digest;

/// Run every check against coordinators made by `fresh`.
pub async fn run<F: Fn() -> Arc<dyn Coordinator>>(fresh: F) {
    a_second_lead_of_a_task_is_refused_while_the_first_is_held(fresh()).await;
    a_dropped_lead_guard_lets_the_next_lead_win(fresh()).await;
    leads_of_different_tasks_do_not_exclude_each_other(fresh()).await;
    notices_reach_every_subscriber_in_order(fresh()).await;
    fill_claims_are_single_flight_under_concurrency(fresh()).await;
    a_released_fill_claim_leads_again_with_a_higher_generation(fresh()).await;
    a_check_is_granted_once_per_window_and_again_after_a_release_or_the_window(fresh()).await;
}

async fn a_check_is_granted_once_per_window_and_again_after_a_release_or_the_window(c: Arc<dyn Coordinator>) {
    let window = Duration::from_millis(600);
    let attempts = (0..8).map(|_| {
        let c = c.clone();
        tokio::spawn(async move { c.claim_check("library/alpine:latest", window).await.unwrap() })
    });
    let mut granted = 0;
    for a in attempts {
        granted += usize::from(a.await.unwrap());
    }
    assert_eq!(granted, 1, "one check per window, however many ask at once");
    assert!(
        c.claim_check("library/alpine:3", window).await.unwrap(),
        "another key is checked on its own"
    );
    c.release_check("library/alpine:latest").await.unwrap();
    assert!(
        c.claim_check("library/alpine:latest", window).await.unwrap(),
        "a released (failed) check is claimed again at once"
    );
    assert!(!c.claim_check("library/alpine:latest", window).await.unwrap());
    tokio::time::sleep(window + Duration::from_millis(200)).await;
    assert!(
        c.claim_check("library/alpine:latest", window).await.unwrap(),
        "the next window is checked again"
    );
}

async fn a_second_lead_of_a_task_is_refused_while_the_first_is_held(c: Arc<dyn Coordinator>) {
    let first = c.lead(&Task::Gc).await.unwrap();
    assert!(first.is_some(), "the first GC leads");
    assert!(
        c.lead(&Task::Gc).await.unwrap().is_none(),
        "two GCs at once give one run"
    );
    // Concurrent attempts: exactly one of them wins once the first is dropped.
    drop(first);
    let attempts = (0..8).map(|_| {
        let c = c.clone();
        tokio::spawn(async move { c.lead(&Task::Gc).await.unwrap() })
    });
    let mut guards = Vec::new();
    for a in attempts {
        guards.push(a.await.unwrap());
    }
    assert_eq!(
        guards.iter().filter(|g| g.is_some()).count(),
        1,
        "one of 8 concurrent leads wins"
    );
}

async fn a_dropped_lead_guard_lets_the_next_lead_win(c: Arc<dyn Coordinator>) {
    let guard = c.lead(&Task::UsageWalk).await.unwrap().expect("leads");
    assert_eq!(guard.task(), &Task::UsageWalk);
    drop(guard);
    assert!(c.lead(&Task::UsageWalk).await.unwrap().is_some(), "released on drop");
}

async fn leads_of_different_tasks_do_not_exclude_each_other(c: Arc<dyn Coordinator>) {
    let _gc = c.lead(&Task::Gc).await.unwrap().expect("gc leads");
    assert!(c.lead(&Task::UsageWalk).await.unwrap().is_some());
    let _a = c
        .lead(&Task::Prefetch("a".into()))
        .await
        .unwrap()
        .expect("list a leads");
    assert!(c.lead(&Task::Prefetch("b".into())).await.unwrap().is_some());
    assert!(c.lead(&Task::Prefetch("a".into())).await.unwrap().is_none());
}

async fn notices_reach_every_subscriber_in_order(c: Arc<dyn Coordinator>) {
    let (mut one, mut two) = (c.subscribe(), c.subscribe());
    let repo: crate::oci::RepoName = "team/app".parse().unwrap();
    let sent = [
        Notice::TagMoved {
            repo: repo.clone(),
            tag: "1".parse().unwrap(),
        },
        Notice::ManifestDeleted {
            repo: repo.clone(),
            digest: Digest::sha256_of(b"m"),
        },
        Notice::RepoRemoved { repo },
        Notice::ManifestsChanged,
        Notice::BlobsChanged,
    ];
    for n in &sent {
        c.publish(n.clone());
    }
    for rx in [&mut one, &mut two] {
        for n in &sent {
            let got = tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .expect("a notice arrives")
                .expect("not lagged");
            assert_eq!(&got, n);
        }
    }
}

async fn fill_claims_are_single_flight_under_concurrency(c: Arc<dyn Coordinator>) {
    let digest = Digest::sha256_of(b"blob");
    let barrier = Arc::new(tokio::sync::Barrier::new(16));
    let claims = (0..16u32).map(|i| {
        let (c, digest, barrier) = (c.clone(), digest.clone(), barrier.clone());
        tokio::spawn(async move {
            barrier.wait().await;
            let mine: LocalFill = Arc::new(i);
            c.claim_fill(&digest, mine).await.unwrap()
        })
    });
    let claims: Vec<_> = claims.collect(); // spawned all at once, not one by one
    let mut leases = Vec::new();
    let mut followed = Vec::new();
    for claim in claims {
        match claim.await.unwrap() {
            FillClaim::Lead(lease) => leases.push(lease),
            FillClaim::Follow(f) => followed.push(f),
        }
    }
    assert_eq!(leases.len(), 1, "exactly one of 16 concurrent claims leads");
    assert_eq!(followed.len(), 15);
    let leader = leases[0].generation();
    for f in &followed {
        assert_eq!(f.generation, leader, "followers follow the leader's claim");
    }
    // In one process, every follower is handed the leader's own in-process fill.
    let handed: Vec<u32> = followed
        .iter()
        .filter_map(|f| f.local.as_ref()?.downcast_ref::<u32>().copied())
        .collect();
    if !handed.is_empty() {
        assert_eq!(handed.len(), followed.len());
        assert!(handed.windows(2).all(|w| w[0] == w[1]), "one leader's fill: {handed:?}");
    }
    // Another digest is claimed independently.
    assert!(matches!(
        c.claim_fill(&Digest::sha256_of(b"other"), Arc::new(())).await.unwrap(),
        FillClaim::Lead(_)
    ));
}

async fn a_released_fill_claim_leads_again_with_a_higher_generation(c: Arc<dyn Coordinator>) {
    let digest = Digest::sha256_of(b"again");
    let FillClaim::Lead(first) = c.claim_fill(&digest, Arc::new(())).await.unwrap() else {
        panic!("the first claim leads");
    };
    let generation = first.generation();
    drop(first);
    match c.claim_fill(&digest, Arc::new(())).await.unwrap() {
        FillClaim::Lead(second) => assert!(second.generation() > generation),
        FillClaim::Follow(_) => panic!("a dropped lease still held the claim"),
    }
}
