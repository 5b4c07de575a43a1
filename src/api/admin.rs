//! The admin API that `berth gc`, `berth delete` and `berth du` use while a server runs (the
//! store's database is locked by the server, so the commands ask it instead of opening the
//! store). Each request must carry the token the server writes to `<root>/admin.token` at startup
//! (mode 0600): whoever may read the store may administer it, nobody else.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;

use super::AppState;
use crate::gc::{self, Policy};
use crate::oci::{Digest, parse_image_ref};
use crate::service::Error;

pub const TOKEN_HEADER: &str = "x-berth-admin-token";
pub const TOKEN_FILE: &str = "admin.token";

/// What the admin API needs besides the registry.
pub struct Admin {
    pub token: String,
    pub policy: Policy,
}

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/_berth/gc", post(run_gc))
        .route("/_berth/delete", post(delete))
        .route("/_berth/du", get(du))
}

fn admin(app: &AppState, headers: &HeaderMap) -> Result<Arc<Admin>, Error> {
    let admin = app.admin.clone().ok_or(Error::Denied("the admin API is off".into()))?;
    let sent = headers.get(TOKEN_HEADER).and_then(|v| v.to_str().ok()).unwrap_or("");
    // Compare digests, not the strings: the comparison's timing then says nothing about the token.
    if Digest::sha256_of(sent.as_bytes()) != Digest::sha256_of(admin.token.as_bytes()) {
        return Err(Error::Denied(format!("missing or wrong {TOKEN_HEADER}")));
    }
    Ok(admin)
}

#[derive(Deserialize)]
struct GcQuery {
    #[serde(default)]
    dry_run: bool,
}

/// Run a collection and stream it as NDJSON: progress lines, then `{"report": …}` or
/// `{"error": …}`.
async fn run_gc(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<GcQuery>,
) -> Result<Response, Error> {
    let admin = admin(&app, &headers)?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    tokio::spawn(async move {
        let progress_tx = tx.clone();
        let progress = move |p: gc::Progress| {
            let _ = progress_tx.send(json!({ "progress": p }).to_string() + "\n");
        };
        let (store, pulls) = (app.registry.store(), app.registry.pulls());
        let line = match gc::run(
            store,
            pulls,
            Some(app.registry.metrics()),
            &admin.policy,
            q.dry_run,
            &progress,
        )
        .await
        {
            Ok(report) => json!({ "report": report }),
            Err(e) => json!({ "error": e.to_string() }),
        };
        let _ = tx.send(line.to_string() + "\n");
    });
    let lines = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)).map(Ok::<_, std::io::Error>);
    Ok((
        StatusCode::OK,
        [("content-type", "application/x-ndjson")],
        Body::from_stream(lines),
    )
        .into_response())
}

use futures_util::StreamExt;

#[derive(Deserialize)]
struct DeleteQuery {
    reference: String,
}

/// Delete `repo:tag` (the tag) or `repo@digest` (the manifest and its tags), in any repository.
async fn delete(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<DeleteQuery>,
) -> Result<Response, Error> {
    admin(&app, &headers)?;
    let (repo, reference) = parse_image_ref(&q.reference)?;
    app.registry.delete_image(&repo, &reference).await?;
    Ok(axum::Json(json!({ "deleted": q.reference })).into_response())
}

async fn du(State(app): State<Arc<AppState>>, headers: HeaderMap) -> Result<Response, Error> {
    admin(&app, &headers)?;
    let store = app.registry.store().clone();
    let usage = tokio::task::spawn_blocking(move || gc::disk_usage(&store))
        .await
        .map_err(|e| crate::store::Error::Meta(e.to_string()))??;
    Ok(axum::Json(usage).into_response())
}
