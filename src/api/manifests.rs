//! Manifest handlers: GET, HEAD, PUT, DELETE by tag or digest.

use std::borrow::Cow;
use std::sync::LazyLock;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;

use super::{CONTENT_DIGEST, set_cache};
use crate::oci::media::DEFAULT_ACCEPT;
use crate::oci::{Reference, RepoName};
use crate::service::{Error, MAX_MANIFEST_BYTES, ManifestHead, Manifests, Result, Route};

const OCI_SUBJECT: HeaderName = HeaderName::from_static("oci-subject");

fn headers(head: &ManifestHead) -> [(HeaderName, String); 4] {
    let digest = head.digest.to_string();
    let etag = format!("\"{digest}\"");
    [
        (header::CONTENT_TYPE, head.media_type.clone()),
        (header::CONTENT_LENGTH, head.size.to_string()),
        (CONTENT_DIGEST, digest),
        (header::ETAG, etag),
    ]
}

/// The manifest's entity tag: its digest, quoted, as registry:2 sends it.
fn etag(head: &ManifestHead) -> String {
    format!("\"{}\"", head.digest)
}

/// `304 Not Modified` when the client's `If-None-Match` names this manifest (or is `*`).
fn not_modified(head: &ManifestHead, h: &HeaderMap) -> Option<Response> {
    // Most GETs are unconditional: no entity tag to build for them.
    if !h.contains_key(header::IF_NONE_MATCH) {
        return None;
    }
    let ours = etag(head);
    let matches = h
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().trim_start_matches("W/"))
        .any(|t| t == "*" || t == ours);
    matches.then(|| {
        let headers = [(header::ETAG, ours), (CONTENT_DIGEST, head.digest.to_string())];
        (StatusCode::NOT_MODIFIED, headers).into_response()
    })
}

pub async fn get(manifests: &Manifests, route: &Route, reference: &Reference, h: &HeaderMap) -> Result<Response> {
    let m = manifests.get(route, reference, &accept(h)).await?;
    let mut response = not_modified(&m.head, h).unwrap_or_else(|| (headers(&m.head), m.bytes).into_response());
    set_cache(&mut response, m.head.cache);
    Ok(response)
}

pub async fn head(manifests: &Manifests, route: &Route, reference: &Reference, h: &HeaderMap) -> Result<Response> {
    let head = manifests.head(route, reference, &accept(h)).await?;
    let mut response = not_modified(&head, h).unwrap_or_else(|| (headers(&head), Body::empty()).into_response());
    set_cache(&mut response, head.cache);
    Ok(response)
}

/// The client's `Accept` headers, each as sent (repeated headers are not merged). When they name
/// no manifest type (curl's `*/*`, or none at all), every type berth stores: a bare `*/*` makes the
/// reference registry answer with a schema-1 conversion.
fn accept(h: &HeaderMap) -> Cow<'static, [String]> {
    static ALL: LazyLock<Vec<String>> = LazyLock::new(|| DEFAULT_ACCEPT.map(str::to_owned).to_vec());
    let sent: Vec<&str> = h
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    // Most clients send one type per header, so an exact match comes first: the substring search
    // was 4% of a manifest GET's instructions.
    let names = |a: &str| DEFAULT_ACCEPT.contains(&a) || DEFAULT_ACCEPT.iter().any(|m| a.contains(m));
    if sent.iter().any(|a| names(a)) {
        Cow::Owned(sent.into_iter().map(str::to_owned).collect())
    } else {
        Cow::Borrowed(ALL.as_slice())
    }
}

pub async fn put(
    manifests: &Manifests,
    repo: &RepoName,
    reference: &Reference,
    h: &HeaderMap,
    body: Body,
) -> Result<Response> {
    let declared = h
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if declared.is_some_and(|n| n > DRAIN_LIMIT) {
        return Err(Error::ManifestTooLarge);
    }
    let bytes = read_limited(body).await?;
    let content_type = h.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
    let put = manifests.put(repo, reference, content_type, bytes).await?;
    let location = format!("/v2/{repo}/manifests/{}", put.digest);
    let mut response = (
        StatusCode::CREATED,
        [(header::LOCATION, location), (CONTENT_DIGEST, put.digest.to_string())],
    )
        .into_response();
    if let Some(subject) = put.subject {
        let value = HeaderValue::from_str(&subject.to_string()).expect("digest is ascii");
        response.headers_mut().insert(OCI_SUBJECT, value);
    }
    response.extensions_mut().insert(super::events::Pushed {
        media_type: put.media_type,
        size: put.size,
    });
    Ok(response)
}

/// Oversize bodies up to this length are read and dropped before the 413, so the client sees the
/// error instead of a reset connection; past it, berth stops reading and closes.
const DRAIN_LIMIT: usize = 4 * MAX_MANIFEST_BYTES;

/// The body, refused once it grows past the manifest limit (a missing or lying Content-Length
/// cannot make berth buffer more).
async fn read_limited(body: Body) -> Result<Bytes> {
    let mut stream = body.into_data_stream();
    let mut buf = BytesMut::new();
    let mut seen = 0;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| Error::ManifestInvalid(format!("reading the body failed: {e}")))?;
        seen += chunk.len();
        if seen > DRAIN_LIMIT {
            break;
        }
        if seen <= MAX_MANIFEST_BYTES {
            buf.extend_from_slice(&chunk);
        }
    }
    if seen > MAX_MANIFEST_BYTES {
        return Err(Error::ManifestTooLarge);
    }
    Ok(buf.freeze())
}

pub async fn delete(manifests: &Manifests, repo: &RepoName, reference: &Reference) -> Result<Response> {
    manifests.delete(repo, reference).await?;
    Ok(StatusCode::ACCEPTED.into_response())
}
