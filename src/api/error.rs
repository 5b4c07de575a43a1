//! The one place where failures become OCI error JSON: `{"errors":[{"code","message","detail"}]}`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::oci::NameError;
use crate::service::{Error, StoreError, UpstreamError};

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        use StatusCode as S;
        let (status, code) = match &self {
            Error::Name(NameError::Repo(_)) => (S::BAD_REQUEST, "NAME_INVALID"),
            Error::Name(NameError::Tag(_)) => (S::BAD_REQUEST, "TAG_INVALID"),
            Error::Name(NameError::Digest(_)) | Error::DigestMismatch { .. } | Error::DigestMissing(_) => {
                (S::BAD_REQUEST, "DIGEST_INVALID")
            }
            Error::NameUnknown(_) => (S::NOT_FOUND, "NAME_UNKNOWN"),
            Error::ManifestUnknown(_) => (S::NOT_FOUND, "MANIFEST_UNKNOWN"),
            Error::BlobUnknown(_) => (S::NOT_FOUND, "BLOB_UNKNOWN"),
            Error::ManifestOffline { .. } => (S::NOT_FOUND, "MANIFEST_UNKNOWN"),
            Error::BlobOffline { .. } => (S::NOT_FOUND, "BLOB_UNKNOWN"),
            Error::Upstream(UpstreamError::Offline { .. }) => (S::NOT_FOUND, "NAME_UNKNOWN"),
            Error::ManifestInvalid(_) => (S::BAD_REQUEST, "MANIFEST_INVALID"),
            Error::ManifestTooLarge => (S::PAYLOAD_TOO_LARGE, "MANIFEST_INVALID"),
            Error::ManifestBlobUnknown(_) => (S::BAD_REQUEST, "MANIFEST_BLOB_UNKNOWN"),
            Error::ContentRange(_) => (S::BAD_REQUEST, "BLOB_UPLOAD_INVALID"),
            // As registry:2 answers with `storage.delete.enabled: false` or in read-only mode; a
            // 405 fails the client at once with the message, where a 503 would make it retry.
            Error::Unsupported(_) | Error::ReadOnly | Error::DeleteDisabled => (S::METHOD_NOT_ALLOWED, "UNSUPPORTED"),
            Error::Denied(_) => (S::FORBIDDEN, "DENIED"),
            Error::Unauthorized { .. } => (S::UNAUTHORIZED, "UNAUTHORIZED"),
            Error::TooManyRequests { .. } => (S::TOO_MANY_REQUESTS, "TOOMANYREQUESTS"),
            Error::Upstream(UpstreamError::RateLimited { .. }) => (S::TOO_MANY_REQUESTS, "TOOMANYREQUESTS"),
            Error::Upstream(UpstreamError::NotFound) => (S::NOT_FOUND, "NAME_UNKNOWN"),
            Error::Upstream(UpstreamError::Unavailable { .. } | UpstreamError::Invalid { .. }) => {
                (S::SERVICE_UNAVAILABLE, "UNAVAILABLE")
            }
            Error::Store(e) => match e {
                StoreError::UploadUnknown => (S::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN"),
                StoreError::RangeMismatch { .. } => (S::RANGE_NOT_SATISFIABLE, "BLOB_UPLOAD_INVALID"),
                StoreError::ChunkLength { .. } => (S::BAD_REQUEST, "SIZE_INVALID"),
                StoreError::DigestMismatch { .. } => (S::BAD_REQUEST, "DIGEST_INVALID"),
                StoreError::TooLarge { .. } => (S::PAYLOAD_TOO_LARGE, "SIZE_INVALID"),
                StoreError::Body(_) => (S::BAD_REQUEST, "BLOB_UPLOAD_INVALID"),
                StoreError::SessionLimit { .. } => (S::TOO_MANY_REQUESTS, "TOOMANYREQUESTS"),
                // A manifest naming a blob that is not (or no longer) stored: the GC invariant.
                StoreError::BlobUnregistered(_) => (S::BAD_REQUEST, "MANIFEST_BLOB_UNKNOWN"),
                // A sweep is deleting it: a retry uploads it again.
                StoreError::BlobDeleting(_) => (S::SERVICE_UNAVAILABLE, "UNAVAILABLE"),
                // Not the server's fault nor the client's: a retry succeeds once space is freed.
                StoreError::Full(_) => (S::INSUFFICIENT_STORAGE, "UNAVAILABLE"),
                // The metadata store reopens itself on its next use (see `store`).
                StoreError::MetaIo(_) => (S::SERVICE_UNAVAILABLE, "UNAVAILABLE"),
                StoreError::Io(e) if exhausted(e) => (S::SERVICE_UNAVAILABLE, "UNAVAILABLE"),
                StoreError::Io(_) | StoreError::Meta(_) | StoreError::Locked | StoreError::Missing(_) => {
                    (S::INTERNAL_SERVER_ERROR, "UNKNOWN")
                }
            },
        };
        if status == S::INTERNAL_SERVER_ERROR {
            tracing::error!(error = %self, "request failed");
        } else if matches!(self, Error::Store(_)) && status.is_server_error() {
            tracing::warn!(error = %self, "the store refused a write");
        } else if status.is_server_error() || status == S::TOO_MANY_REQUESTS {
            tracing::warn!(error = %self, "upstream failure passed on");
        }
        let body = json!({ "errors": [{ "code": code, "message": self.to_string(), "detail": null }] });
        let mut response = (status, axum::Json(body)).into_response();
        if let Error::Store(StoreError::RangeMismatch { offset, .. }) = &self {
            // Tell the client where to resume, as the spec asks for a 416 on uploads.
            response.headers_mut().insert(header::RANGE, range_value(*offset));
        }
        match &self {
            Error::Unauthorized { challenge } if !challenge.is_empty() => {
                if let Ok(v) = HeaderValue::from_str(challenge) {
                    response.headers_mut().insert(header::WWW_AUTHENTICATE, v);
                }
            }
            Error::TooManyRequests { retry_after, .. } => {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, (*retry_after).into());
            }
            _ => {}
        }
        if let Error::Store(StoreError::Io(e)) = &self
            && exhausted(e)
        {
            // Passing: descriptors or memory come back as requests finish.
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, EXHAUSTED_RETRY_AFTER.into());
        }
        if let Error::Upstream(UpstreamError::RateLimited { retry_after, .. }) = &self {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, (*retry_after).into());
        }
        response
    }
}

/// Seconds a client is asked to wait when berth ran out of descriptors or memory.
const EXHAUSTED_RETRY_AFTER: u32 = 1;

/// Whether `e` says the process or system ran out of file descriptors or memory: a passing
/// overload (503), not a fault of the store (500).
fn exhausted(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::OutOfMemory
        || matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE | libc::ENOMEM))
}

/// The `Range: 0-<last>` header of an upload holding `len` bytes (`0-0` when empty, as
/// distribution does and clients expect).
pub fn range_value(len: u64) -> HeaderValue {
    HeaderValue::from_str(&format!("0-{}", len.saturating_sub(1))).expect("ascii")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_out_of_descriptors_or_memory_is_503_with_retry_after_not_500() {
        for errno in [libc::EMFILE, libc::ENFILE, libc::ENOMEM] {
            let e = Error::Store(StoreError::Io(std::io::Error::from_raw_os_error(errno)));
            let response = e.into_response();
            assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE, "errno {errno}");
            assert_eq!(response.headers()[header::RETRY_AFTER], "1");
        }
        let other = Error::Store(StoreError::Io(std::io::Error::from_raw_os_error(libc::EIO)));
        assert_eq!(other.into_response().status(), StatusCode::INTERNAL_SERVER_ERROR);
    }
}
