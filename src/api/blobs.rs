//! Blob handlers: GET (with a single `Range`), HEAD, DELETE.

use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::range::{RangeSpec, parse_range};
use super::{CONTENT_DIGEST, set_cache};
use crate::oci::{Digest, RepoName};
use crate::service::{BlobBody, Blobs, Result, Route, Stored};

fn common(digest: &Digest) -> [(HeaderName, String); 3] {
    [
        (CONTENT_DIGEST, digest.to_string()),
        (header::ACCEPT_RANGES, "bytes".to_owned()),
        (header::ETAG, format!("\"{digest}\"")),
    ]
}

pub async fn get(blobs: &Blobs, route: &Route, digest: &Digest, h: &HeaderMap) -> Result<Response> {
    let range = h.get(header::RANGE).and_then(|v| v.to_str().ok());
    let body = match range {
        Some(range) => blobs.range(route, digest, range).await?,
        None => blobs.get(route, digest, false).await?,
    };
    let (mut response, cache) = match body {
        BlobBody::Stored(blob, cache) => (stored_response(blob, digest, range), cache),
        BlobBody::Stream { size, stream, cache } => {
            // A miss streaming in: the body ends in an error (aborting the response) if the
            // bytes fail to verify.
            let mut response = (
                common(digest),
                [(header::CONTENT_TYPE, "application/octet-stream".to_owned())],
                Body::from_stream(stream),
            )
                .into_response();
            if let Some(size) = size {
                response.headers_mut().insert(header::CONTENT_LENGTH, size.into());
            }
            (response, Some(cache))
        }
    };
    set_cache(&mut response, cache);
    Ok(response)
}

/// A stored blob, whole or the requested single range; or where to fetch it.
fn stored_response(blob: Stored, digest: &Digest, range: Option<&str>) -> Response {
    if let Stored::Redirect { url, .. } = &blob {
        return (
            StatusCode::TEMPORARY_REDIRECT,
            common(digest),
            [(header::LOCATION, url.clone())],
        )
            .into_response();
    }
    let size = blob.size();
    let (status, start, len) = match parse_range(range, size) {
        RangeSpec::Whole => (StatusCode::OK, 0, size),
        RangeSpec::Part { start, end } => (StatusCode::PARTIAL_CONTENT, start, end - start + 1),
        RangeSpec::Unsatisfiable => {
            let content_range = format!("bytes */{size}");
            return (
                StatusCode::RANGE_NOT_SATISFIABLE,
                common(digest),
                [(header::CONTENT_RANGE, content_range)],
            )
                .into_response();
        }
    };
    let body = Body::from_stream(blob.range(start, len).expect("a redirect was answered above"));
    let mut response = (
        status,
        common(digest),
        [(header::CONTENT_TYPE, "application/octet-stream".to_owned())],
        body,
    )
        .into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_LENGTH, len.into());
    if status == StatusCode::PARTIAL_CONTENT {
        let value = format!("bytes {start}-{}/{size}", start + len - 1);
        headers.insert(header::CONTENT_RANGE, value.parse().expect("ascii"));
    }
    response
}

pub async fn head(blobs: &Blobs, route: &Route, digest: &Digest) -> Result<Response> {
    let (size, cache) = blobs.size(route, digest).await?;
    let mut response = (
        common(digest),
        [(header::CONTENT_TYPE, "application/octet-stream".to_owned())],
    )
        .into_response();
    response.headers_mut().insert(header::CONTENT_LENGTH, size.into());
    set_cache(&mut response, cache);
    Ok(response)
}

pub async fn delete(blobs: &Blobs, repo: &RepoName, digest: &Digest) -> Result<Response> {
    blobs.delete(repo, digest).await?;
    Ok(StatusCode::ACCEPTED.into_response())
}
