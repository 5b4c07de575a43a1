//! The admin channel that `berth gc`, `delete`, `du`, `export`, `import` and `prefetch` use while
//! a server runs (the server holds the store's database lock, so the commands ask it instead of
//! opening the store).
//!
//! It is a Unix socket, `<root>/admin.sock`, mode 0600, not a route of the registry's HTTP
//! listener: whoever may open it owns the store, and nothing about it depends on the server's
//! address, its TLS settings or its upstream secrets. The commands need only the config file
//! (to find the store root). Answers are plain sentences on failure, NDJSON for a collection.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::json;

// issue 15: `berth export` and `berth import` through the running server.
mod layout;

use crate::oci::{RepoName, parse_image_ref};
use crate::service::gc::{self, Policy};
use crate::service::{self, Services};

/// The socket's file name in the store root.
pub const SOCKET_FILE: &str = "admin.sock";

/// What the admin channel works on.
pub struct Admin {
    pub services: Services,
    /// `[gc]`/`[cache]` as configured; a request may override the grace for one run.
    pub policy: Policy,
}

/// A failure, answered as a sentence the command prints as it is.
struct Failure(StatusCode, String);

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        (self.0, [("content-type", "text/plain; charset=utf-8")], self.1).into_response()
    }
}

impl From<service::Error> for Failure {
    fn from(e: service::Error) -> Failure {
        let status = match e {
            service::Error::NameUnknown(_) | service::Error::ManifestUnknown(_) => StatusCode::NOT_FOUND,
            service::Error::Name(_) => StatusCode::BAD_REQUEST,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Failure(status, e.to_string())
    }
}

pub fn router(admin: Admin) -> Router {
    Router::new()
        .route("/gc", post(run_gc))
        .route("/delete", post(delete))
        .route("/du", get(du))
        // issue 15
        .route("/export", post(layout::export))
        .route("/import", post(layout::import))
        .route("/prefetch", post(run_prefetch))
        .with_state(Arc::new(admin))
}

#[derive(Deserialize)]
struct GcQuery {
    #[serde(default)]
    dry_run: bool,
    /// Overrides `[gc] grace` for this run, e.g. `0s`.
    grace: Option<String>,
}

/// Run a collection and stream it as NDJSON: progress lines, then `{"report": …}` or
/// `{"error": …}`.
async fn run_gc(State(admin): State<Arc<Admin>>, Query(q): Query<GcQuery>) -> Result<Response, Failure> {
    let mut policy = admin.policy.clone();
    if let Some(grace) = &q.grace {
        policy.grace = parse_grace(grace).map_err(|e| Failure(StatusCode::BAD_REQUEST, e))?;
    }
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    // The run goes on if the command is interrupted: a collection stopped half-way is safe, but
    // one that finishes is more useful than one abandoned.
    tokio::spawn(async move {
        let progress_tx = tx.clone();
        let progress = move |p: gc::GcProgress| {
            let _ = progress_tx.send(json!({ "progress": p }).to_string() + "\n");
        };
        let line = match admin
            .services
            .admin
            .collect_garbage(&policy, q.dry_run, &progress)
            .await
        {
            Ok(Some(report)) => json!({ "report": report }),
            Ok(None) => json!({ "error": "another garbage collection is running; try again when it has finished" }),
            Err(e) => json!({ "error": e.to_string() }),
        };
        let _ = tx.send(line.to_string() + "\n");
    });
    Ok(ndjson(rx))
}

/// A streamed answer: each line sent on `rx` as it comes, until every sender is gone.
fn ndjson(mut rx: tokio::sync::mpsc::UnboundedReceiver<String>) -> Response {
    let lines = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)).map(Ok::<_, std::io::Error>);
    (
        StatusCode::OK,
        [("content-type", "application/x-ndjson")],
        Body::from_stream(lines),
    )
        .into_response()
}

/// `[gc] grace`-style durations (`0s`, `10m`, `1h`), capped as the config's are (a century), so
/// an absurd one cannot overflow the cut-off arithmetic.
pub fn parse_grace(text: &str) -> Result<Duration, String> {
    crate::config::value::parse_duration(text).map_err(|e| format!("--grace {e}"))
}

#[derive(Deserialize)]
struct DeleteQuery {
    /// `repo:tag` or `repo@digest`.
    reference: Option<String>,
    /// A whole repository.
    repository: Option<String>,
}

/// Delete `repo:tag` (the tag), `repo@digest` (the manifest and its tags), or a whole
/// repository, in any repository.
async fn delete(State(admin): State<Arc<Admin>>, Query(q): Query<DeleteQuery>) -> Result<Response, Failure> {
    match (q.reference, q.repository) {
        (Some(reference), None) => {
            let (repo, reference) = parse_image_ref(&reference).map_err(|e| Failure(StatusCode::BAD_REQUEST, e))?;
            admin.services.manifests.delete_image(&repo, &reference).await?;
        }
        (None, Some(repository)) => {
            let repo: RepoName = repository
                .parse()
                .map_err(|e: crate::oci::NameError| Failure(StatusCode::BAD_REQUEST, e.to_string()))?;
            admin.services.manifests.remove_repository(&repo).await?;
        }
        _ => {
            return Err(Failure(
                StatusCode::BAD_REQUEST,
                "give either reference or repository".into(),
            ));
        }
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn du(State(admin): State<Arc<Admin>>) -> Result<Response, Failure> {
    let usage = admin
        .services
        .admin
        .disk_usage()
        .await
        .map_err(|e| Failure(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(axum::Json(usage).into_response())
}

// --- issue 15: `berth prefetch` through the running server ---

/// Images one request may name at most (a request is one run, streamed back as it goes).
const MAX_PREFETCH_JOBS: usize = 10_000;

#[derive(Deserialize)]
struct PrefetchRequest {
    jobs: Vec<crate::service::prefetch::Job>,
}

/// Prefetch the images named in the body and stream NDJSON: `{"progress": …}` lines, then
/// `{"reports": [...]}`, one per image, failures included.
async fn run_prefetch(
    State(admin): State<Arc<Admin>>,
    axum::Json(request): axum::Json<PrefetchRequest>,
) -> Result<Response, Failure> {
    if request.jobs.len() > MAX_PREFETCH_JOBS {
        return Err(Failure(
            StatusCode::BAD_REQUEST,
            format!("at most {MAX_PREFETCH_JOBS} images per prefetch run"),
        ));
    }
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    // As with gc, an interrupted command does not stop the run: what it fetches stays useful.
    tokio::spawn(async move {
        let progress_tx = tx.clone();
        let progress = move |e: crate::service::prefetch::Event| {
            let _ = progress_tx.send(json!({ "progress": e }).to_string() + "\n");
        };
        let reports = admin.services.prefetch.run(&request.jobs, &progress).await;
        let _ = tx.send(json!({ "reports": reports }).to_string() + "\n");
    });
    Ok(ndjson(rx))
}
