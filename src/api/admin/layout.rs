//! The admin channel's `export` and `import` (issue 15). The command sends its options as JSON
//! with absolute paths: the server and the command share the filesystem, and the socket is
//! owner-only, so only the store's owner can name files for the server to read or write. The
//! answer is NDJSON, as for gc: `{"progress": …}` lines, then `{"report": …}` or `{"error": …}`.
//! When the command goes away (Ctrl-C), the job stops at its next step, which leaves every image
//! whole or absent.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde::Serialize;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::{Admin, Failure};
use crate::service::layout::{self, ExportOptions, ImportOptions, LayoutProgress, Sink};

pub(super) async fn export(
    State(admin): State<Arc<Admin>>,
    Json(opts): Json<ExportOptions>,
) -> Result<Response, Failure> {
    absolute(&opts.output)?;
    Ok(job(move |sink, cancel| async move {
        admin.services.admin.export(&opts, sink, &cancel).await
    }))
}

pub(super) async fn import(
    State(admin): State<Arc<Admin>>,
    Json(opts): Json<ImportOptions>,
) -> Result<Response, Failure> {
    absolute(&opts.path)?;
    Ok(job(move |sink, cancel| async move {
        admin.services.admin.import(&opts, sink, &cancel).await
    }))
}

fn absolute(path: &Path) -> Result<(), Failure> {
    if path.is_absolute() {
        return Ok(());
    }
    Err(Failure(
        StatusCode::BAD_REQUEST,
        format!("{} is not an absolute path", path.display()),
    ))
}

/// Run `f` and stream its progress and outcome as NDJSON; cancel it when the reader goes away.
fn job<F, Fut, R>(f: F) -> Response
where
    F: FnOnce(Sink, CancellationToken) -> Fut + Send + 'static,
    Fut: Future<Output = layout::Result<R>> + Send + 'static,
    R: Serialize + Send + 'static,
{
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let (cancel, done) = (CancellationToken::new(), CancellationToken::new());
    tokio::spawn({
        let (tx, cancel, done) = (tx.clone(), cancel.clone(), done.clone());
        async move {
            tokio::select! {
                _ = tx.closed() => cancel.cancel(),
                _ = done.cancelled() => {}
            }
        }
    });
    tokio::spawn(async move {
        let progress_tx = tx.clone();
        let sink: Sink = Arc::new(move |p: LayoutProgress| {
            let _ = progress_tx.send(json!({ "progress": p }).to_string() + "\n");
        });
        let line = match f(sink, cancel).await {
            Ok(report) => json!({ "report": report }),
            Err(e) => json!({ "error": e.to_string() }),
        };
        let _ = tx.send(line.to_string() + "\n");
        done.cancel();
    });
    let lines = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)).map(Ok::<_, std::io::Error>);
    (
        StatusCode::OK,
        [("content-type", "application/x-ndjson")],
        Body::from_stream(lines),
    )
        .into_response()
}
