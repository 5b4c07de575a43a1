//! Upload handlers: start (plain, monolithic, or mount), PATCH chunks, status, finish, cancel.

use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::drain::drainable;
use super::error::range_value;
use super::{CONTENT_DIGEST, Params, body_stream};
use crate::oci::{Digest, RepoName};
use crate::service::{ChunkRange, Error, Mount, Result, UploadState, Uploads};

const UPLOAD_UUID: HeaderName = HeaderName::from_static("docker-upload-uuid");

/// 202 with the session's location and progress.
fn session(repo: &RepoName, state: &UploadState, status: StatusCode) -> Response {
    let location = format!("/v2/{repo}/blobs/uploads/{}", state.id);
    let mut response = (status, [(header::LOCATION, location), (UPLOAD_UUID, state.id.clone())]).into_response();
    response.headers_mut().insert(header::RANGE, range_value(state.len));
    response.headers_mut().insert(header::CONTENT_LENGTH, 0.into());
    response
}

/// 201 for a blob now in the repository.
fn created(repo: &RepoName, digest: &Digest) -> Response {
    let location = format!("/v2/{repo}/blobs/{digest}");
    (
        StatusCode::CREATED,
        [(header::LOCATION, location), (CONTENT_DIGEST, digest.to_string())],
    )
        .into_response()
}

fn digest_param(params: &Params) -> Result<Option<Digest>> {
    params
        .digest
        .as_deref()
        .map(|d| d.parse().map_err(Error::from))
        .transpose()
}

/// The request's `Content-Range`, if any; a malformed one is a 400.
fn chunk_range(h: &HeaderMap) -> Result<Option<ChunkRange>> {
    let Some(value) = h.get(header::CONTENT_RANGE) else {
        return Ok(None);
    };
    let text = value.to_str().unwrap_or("");
    parse_content_range(text)
        .map(Some)
        .ok_or_else(|| Error::ContentRange(text.chars().take(100).collect()))
}

/// Parse `Content-Range: <start>-<end>` (distribution's form; a `bytes ` prefix and a `/<size>`
/// suffix are tolerated). The chunk's length, `end + 1 - start`, must be a `u64`, so an end of
/// `u64::MAX` is refused here: the store computes that length without checking.
// Hand-written: no crate parses OCI's unit-less `<start>-<end>` (`headers`' `ContentRange` wants `bytes a-b/len`).
pub fn parse_content_range(text: &str) -> Option<ChunkRange> {
    let spec = text.trim().trim_start_matches("bytes ").split('/').next().unwrap_or("");
    let (a, b) = spec.split_once('-')?;
    let (start, end) = (a.trim().parse::<u64>().ok()?, b.trim().parse::<u64>().ok()?);
    (start <= end && end < u64::MAX).then_some(ChunkRange { start, end })
}

pub async fn start(
    uploads: &Uploads,
    repo: &RepoName,
    params: &Params,
    readable_from: Option<&RepoName>,
    owner: &str,
    h: &HeaderMap,
    body: Body,
) -> Result<Response> {
    if let Some(mount) = &params.mount {
        let digest: Digest = mount.parse()?;
        return Ok(match uploads.mount(repo, &digest, readable_from, owner).await? {
            Mount::Mounted(d) => created(repo, &d),
            Mount::Started(state) => session(repo, &state, StatusCode::ACCEPTED),
        });
    }
    // Check the digest before opening a session, so a bad request leaves nothing behind.
    let digest = digest_param(params)?;
    let state = uploads.start(repo, owner, digest.is_none()).await?;
    let Some(digest) = digest else {
        return Ok(session(repo, &state, StatusCode::ACCEPTED));
    };
    // Monolithic: the client never saw the session, so neither a failure nor a request cut off
    // mid-body may leave it open.
    let guard = uploads.cancel_on_drop(repo, &state.id);
    let (body, rest) = drainable(body_stream(body));
    let finished = match chunk_range(h) {
        Ok(range) => uploads.finish(repo, &state.id, &digest, range, body).await,
        Err(e) => Err(e),
    };
    if let Err(e) = finished {
        let _ = uploads.cancel(repo, &state.id).await;
        guard.disarm();
        return rest.after(Err(e)).await;
    }
    guard.disarm();
    Ok(created(repo, &digest))
}

pub async fn status(uploads: &Uploads, repo: &RepoName, id: &str) -> Result<Response> {
    let state = uploads.status(repo, id).await?;
    Ok(session(repo, &state, StatusCode::NO_CONTENT))
}

pub async fn patch(uploads: &Uploads, repo: &RepoName, id: &str, h: &HeaderMap, body: Body) -> Result<Response> {
    let (body, rest) = drainable(body_stream(body));
    let state = rest.after(uploads.chunk(repo, id, chunk_range(h)?, body).await).await?;
    Ok(session(repo, &state, StatusCode::ACCEPTED))
}

pub async fn put(
    uploads: &Uploads,
    repo: &RepoName,
    id: &str,
    params: &Params,
    h: &HeaderMap,
    body: Body,
) -> Result<Response> {
    let digest = digest_param(params)?.ok_or(Error::DigestMissing(
        "the digest query parameter is required to finish an upload",
    ))?;
    let (body, rest) = drainable(body_stream(body));
    rest.after(uploads.finish(repo, id, &digest, chunk_range(h)?, body).await)
        .await?;
    Ok(created(repo, &digest))
}

pub async fn cancel(uploads: &Uploads, repo: &RepoName, id: &str) -> Result<Response> {
    uploads.cancel(repo, id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_lengths_always_fit_in_a_u64() {
        assert_eq!(parse_content_range("0-9"), Some(ChunkRange { start: 0, end: 9 }));
        assert_eq!(
            parse_content_range("bytes 5-5/*"),
            Some(ChunkRange { start: 5, end: 5 })
        );
        assert_eq!(parse_content_range("9-0"), None);
        assert_eq!(parse_content_range("0-"), None);
        // end + 1 would wrap: issue 11's overflow (a panic in debug builds, a bogus length else).
        assert_eq!(parse_content_range("0-18446744073709551615"), None);
        assert_eq!(parse_content_range("18446744073709551615-18446744073709551615"), None);
        let max = u64::MAX - 1;
        assert_eq!(
            parse_content_range(&format!("0-{max}")),
            Some(ChunkRange { start: 0, end: max })
        );
    }
}
