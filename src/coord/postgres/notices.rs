//! Change notices between replicas over LISTEN/NOTIFY. A publisher sends them from one task, in
//! order; a listener holds its own connection (a pooled one would drop notifications), forwards
//! other replicas' notices to this process's subscribers, and reconnects when the connection is
//! lost, telling subscribers then that everything may have changed (notices sent in the gap
//! are lost; the memo's tag entries also expire on their own, as a second line of defence).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc, watch};
use tokio_postgres::AsyncMessage;

use super::Shared;
use crate::coord::Notice;

/// The channel berth's notices travel on.
pub(super) const CHANNEL: &str = "berth_notices";

/// How long the listener waits before reconnecting.
const RECONNECT: Duration = Duration::from_secs(1);

/// A notice on the wire, with the replica that sent it.
#[derive(Serialize, Deserialize)]
struct Envelope {
    from: String,
    #[serde(flatten)]
    notice: Wire,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Wire {
    TagMoved { repo: String, tag: String },
    ManifestDeleted { repo: String, digest: String },
    RepoRemoved { repo: String },
    ManifestsChanged,
    BlobsChanged,
}

pub(super) fn encode(from: &str, notice: &Notice) -> String {
    let notice = match notice {
        Notice::TagMoved { repo, tag } => Wire::TagMoved {
            repo: repo.to_string(),
            tag: tag.to_string(),
        },
        Notice::ManifestDeleted { repo, digest } => Wire::ManifestDeleted {
            repo: repo.to_string(),
            digest: digest.to_string(),
        },
        Notice::RepoRemoved { repo } => Wire::RepoRemoved { repo: repo.to_string() },
        Notice::ManifestsChanged => Wire::ManifestsChanged,
        Notice::BlobsChanged => Wire::BlobsChanged,
    };
    serde_json::to_string(&Envelope {
        from: from.to_owned(),
        notice,
    })
    .expect("a notice serialises")
}

/// The sender and the notice of a payload; a payload that does not parse (a newer replica's
/// notice kind) reads as "everything changed", which is always safe.
pub(super) fn decode(payload: &str) -> (String, Notice) {
    let Ok(envelope) = serde_json::from_str::<Envelope>(payload) else {
        return (String::new(), Notice::ManifestsChanged);
    };
    let parsed = match envelope.notice {
        Wire::TagMoved { repo, tag } => (|| {
            Some(Notice::TagMoved {
                repo: repo.parse().ok()?,
                tag: tag.parse().ok()?,
            })
        })(),
        Wire::ManifestDeleted { repo, digest } => (|| {
            Some(Notice::ManifestDeleted {
                repo: repo.parse().ok()?,
                digest: digest.parse().ok()?,
            })
        })(),
        Wire::RepoRemoved { repo } => repo.parse().ok().map(|repo| Notice::RepoRemoved { repo }),
        Wire::ManifestsChanged => Some(Notice::ManifestsChanged),
        Wire::BlobsChanged => Some(Notice::BlobsChanged),
    };
    (envelope.from, parsed.unwrap_or(Notice::ManifestsChanged))
}

/// Send queued notices, one at a time so they arrive in order. A notice that cannot be sent is
/// logged and dropped: the write it announces is committed, and other replicas' memo entries
/// expire on their own.
pub(super) async fn publish(shared: Arc<Shared>, mut queue: mpsc::UnboundedReceiver<Notice>) {
    while let Some(notice) = queue.recv().await {
        let payload = encode(&shared.replica, &notice);
        let sent = async {
            let client = shared.pool.get().await.map_err(|e| e.to_string())?;
            client
                .execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &payload])
                .await
                .map_err(|e| e.to_string())
        };
        if let Err(e) = sent.await {
            tracing::warn!(error = %e, "a change notice could not be sent to the other replicas");
        }
        shared.unsent.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Listen for other replicas' notices for as long as the coordinator lives; `listening` turns
/// true each time a LISTEN is in place.
pub(super) async fn listen(
    shared: Arc<Shared>,
    config: tokio_postgres::Config,
    notices: broadcast::Sender<Notice>,
    listening: watch::Sender<bool>,
) {
    let mut first = true;
    loop {
        match config.connect(tokio_postgres::NoTls).await {
            Ok((client, mut connection)) => {
                let (tx, mut rx) = mpsc::unbounded_channel();
                // The connection carries both the LISTEN's answer and the notifications.
                let driver = tokio::spawn(async move {
                    let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
                    while let Some(Ok(message)) = messages.next().await {
                        if let AsyncMessage::Notification(n) = message
                            && tx.send(n.payload().to_owned()).is_err()
                        {
                            break;
                        }
                    }
                });
                match client.batch_execute(&format!("LISTEN {CHANNEL}")).await {
                    Ok(()) => {
                        if !first {
                            let _ = notices.send(Notice::ManifestsChanged);
                        }
                        first = false;
                        listening.send_replace(true);
                        while let Some(payload) = rx.recv().await {
                            let (from, notice) = decode(&payload);
                            // This replica applied its own notices when it published them.
                            if from != shared.replica {
                                shared.stats.notices.fetch_add(1, Ordering::Relaxed);
                                let _ = notices.send(notice);
                            }
                        }
                        tracing::warn!("the change-notice connection to PostgreSQL was lost; reconnecting");
                    }
                    Err(e) => tracing::warn!(error = %e, "LISTEN failed; retrying"),
                }
                listening.send_replace(false);
                driver.abort();
            }
            Err(e) => tracing::warn!(error = %e, "cannot connect to PostgreSQL for change notices; retrying"),
        }
        tokio::time::sleep(RECONNECT).await;
    }
}
