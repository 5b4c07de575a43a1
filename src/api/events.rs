//! Notification events for what a request did, read off the request and its response once the
//! handler has answered: manifest and blob pulls (GET), pushes (a manifest PUT, a finished blob
//! upload or mount) and deletes. Failed and partial answers (a 304, say) are not events.

use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::Response;

use super::{AppState, CONTENT_DIGEST, Endpoint, RequestId, origin};
use crate::notify::{Action, Actor, BLOB_MEDIA_TYPE, Request, Target};
use crate::oci::Reference;

/// What a manifest PUT stored, left in the response for the push event.
#[derive(Clone, Debug)]
pub struct Pushed {
    pub media_type: String,
    pub size: u64,
}

fn text(h: &HeaderMap, name: impl header::AsHeaderName) -> &str {
    h.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

fn number(h: &HeaderMap, name: impl header::AsHeaderName) -> u64 {
    text(h, name).parse().unwrap_or(0)
}

/// Emit the event of a handled request, if it is one.
pub fn note<'a>(
    app: &'a AppState,
    parts: &'a Parts,
    endpoint: Endpoint,
    user: Option<String>,
    response: &Response,
) -> impl Future<Output = ()> + Send + 'a {
    // Only what is `Sync` crosses an await (a response body is not).
    let pushed = response.extensions().get::<Pushed>().cloned();
    let (status, headers) = (response.status(), response.headers().clone());
    async move { note_parts(app, parts, endpoint, user, status, &headers, pushed).await }
}

async fn note_parts(
    app: &AppState,
    parts: &Parts,
    endpoint: Endpoint,
    user: Option<String>,
    status: StatusCode,
    h: &HeaderMap,
    pushed: Option<Pushed>,
) {
    let digest = text(h, CONTENT_DIGEST).to_owned();
    let (action, repo, mut target) = match (&parts.method, endpoint) {
        (&Method::GET, Endpoint::Manifest(repo, reference)) if status == StatusCode::OK => {
            let size = number(h, header::CONTENT_LENGTH);
            let target = Target {
                media_type: text(h, header::CONTENT_TYPE).to_owned(),
                tag: tag_of(&reference),
                ..sized(size)
            };
            (Action::Pull, repo, target)
        }
        (&Method::GET, Endpoint::Blob(repo, _)) if matches!(status, StatusCode::OK | StatusCode::PARTIAL_CONTENT) => {
            // Of a range, the whole blob's size (after the `/` of Content-Range).
            let size = match text(h, header::CONTENT_RANGE).rsplit_once('/') {
                Some((_, total)) => total.parse().unwrap_or(0),
                None => number(h, header::CONTENT_LENGTH),
            };
            (Action::Pull, repo, blob(size))
        }
        (&Method::PUT, Endpoint::Manifest(repo, reference)) if status == StatusCode::CREATED => {
            let Some(Pushed { media_type, size }) = pushed else {
                return;
            };
            let target = Target {
                media_type,
                tag: tag_of(&reference),
                ..sized(size)
            };
            (Action::Push, repo, target)
        }
        (&Method::POST | &Method::PUT, Endpoint::Upload(repo, _)) if status == StatusCode::CREATED => {
            let size = match digest.parse() {
                Ok(d) => app
                    .services
                    .core
                    .store()
                    .blobs
                    .size(&d)
                    .await
                    .ok()
                    .flatten()
                    .unwrap_or(0),
                Err(_) => 0,
            };
            (Action::Push, repo, blob(size))
        }
        (&Method::DELETE, Endpoint::Manifest(repo, reference)) if status == StatusCode::ACCEPTED => {
            let target = match reference {
                Reference::Tag(t) => Target {
                    tag: t.as_str().to_owned(),
                    ..Target::default()
                },
                Reference::Digest(d) => Target {
                    digest: d.to_string(),
                    ..Target::default()
                },
            };
            (Action::Delete, repo, target)
        }
        (&Method::DELETE, Endpoint::Blob(repo, d)) if status == StatusCode::ACCEPTED => {
            let target = Target {
                digest: d.to_string(),
                ..Target::default()
            };
            (Action::Delete, repo, target)
        }
        _ => return,
    };
    let base = origin::base_url(parts, app.tls, app.trust_forwarded);
    if target.digest.is_empty() {
        target.digest = digest;
    }
    if !target.digest.is_empty() {
        let kind = if matches!(parts.uri.path().rsplit('/').nth(1), Some("manifests")) {
            "manifests"
        } else {
            "blobs"
        };
        target.url = format!("{base}/v2/{repo}/{kind}/{}", target.digest);
    }
    target.repository = repo.to_string();
    let request = Request {
        id: parts
            .extensions
            .get::<RequestId>()
            .map(|r| r.0.clone())
            .unwrap_or_default(),
        addr: app
            .limits
            .client_ip(&parts.headers, &parts.extensions)
            .map(|ip| ip.to_string())
            .unwrap_or_default(),
        host: base
            .split_once("://")
            .map(|(_, host)| host.to_owned())
            .unwrap_or_default(),
        method: parts.method.to_string(),
        useragent: text(&parts.headers, header::USER_AGENT).to_owned(),
    };
    app.services
        .core
        .notifier()
        .emit(action, target, request, Actor { name: user });
}

fn sized(size: u64) -> Target {
    Target {
        size,
        length: size,
        ..Target::default()
    }
}

fn blob(size: u64) -> Target {
    Target {
        media_type: BLOB_MEDIA_TYPE.to_owned(),
        ..sized(size)
    }
}

fn tag_of(reference: &Reference) -> String {
    match reference {
        Reference::Tag(t) => t.as_str().to_owned(),
        Reference::Digest(_) => String::new(),
    }
}
