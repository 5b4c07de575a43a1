//! The internal blob endpoint of cluster mode, `GET /_berth/cluster/blobs/{digest}?repo=…`: a
//! replica whose client waits for a blob this one is filling streams it from here (see
//! `service::fill`). It takes the cluster secret instead of a login, and `Range: bytes=N-` to
//! resume. Without cluster mode it does not exist (404).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};

use super::{AppState, CONTENT_DIGEST};
use crate::oci::{Digest, RepoName};
use crate::service::{Error, PEER_SECRET_HEADER, PeerBlob};

pub async fn blob(
    State(app): State<Arc<AppState>>,
    Path(digest): Path<String>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let blobs = &app.services.blobs;
    if !blobs.cluster_mode() {
        return Error::Unsupported("no such endpoint").into_response_with(StatusCode::NOT_FOUND);
    }
    let secret = headers.get(PEER_SECRET_HEADER).and_then(|v| v.to_str().ok());
    let answer = async {
        let digest: Digest = digest.parse()?;
        let repo = form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes())
            .find(|(key, _)| key == "repo")
            .map(|(_, value)| value.into_owned());
        let repo: RepoName = repo.unwrap_or_default().parse()?;
        let from = resume_from(headers.get(header::RANGE).and_then(|v| v.to_str().ok()))?;
        let blob = blobs.for_peer(secret, &repo, &digest, from).await?;
        Ok::<_, Error>(response(blob, &digest))
    };
    answer.await.unwrap_or_else(IntoResponse::into_response)
}

/// The first byte wanted: 0 without a `Range`, `N` for `bytes=N-` (the only form a replica
/// sends).
fn resume_from(range: Option<&str>) -> Result<u64, Error> {
    let Some(range) = range else {
        return Ok(0);
    };
    range
        .trim()
        .strip_prefix("bytes=")
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| Error::ContentRange(format!("only bytes=N- is served here, not {range:?}")))
}

fn response(blob: PeerBlob, digest: &Digest) -> Response {
    let PeerBlob { size, from, body } = blob;
    let status = if from > 0 {
        StatusCode::PARTIAL_CONTENT
    } else {
        StatusCode::OK
    };
    let mut response = (
        status,
        [
            (CONTENT_DIGEST, digest.to_string()),
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
        ],
        Body::from_stream(body),
    )
        .into_response();
    let headers = response.headers_mut();
    if let Some(size) = size {
        headers.insert(header::CONTENT_LENGTH, (size - from).into());
        if from > 0 {
            let value = format!("bytes {from}-{}/{size}", size.saturating_sub(1));
            headers.insert(header::CONTENT_RANGE, value.parse().expect("ascii"));
        }
    }
    response
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_an_open_ended_range_is_a_resume() {
        assert_eq!(super::resume_from(None).unwrap(), 0);
        assert_eq!(super::resume_from(Some("bytes=1048576-")).unwrap(), 1 << 20);
        for refused in ["bytes=0-99", "bytes=-5", "items=3-", "bytes=x-"] {
            assert!(super::resume_from(Some(refused)).is_err(), "{refused}");
        }
    }
}
