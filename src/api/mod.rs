//! The OCI Distribution HTTP API: one fallback route parses the path into an [`Endpoint`] and a
//! single `match` dispatches it to a thin handler that calls one service method.

mod blobs;
mod endpoint;
mod error;
mod listing;
mod manifests;
mod uploads;

use axum::Router;
use axum::body::Body;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::map_response;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

pub use endpoint::{Endpoint, ParseError};

use crate::service::{Error, Registry};

/// Query parameters any endpoint may take; each handler reads the ones it knows.
#[derive(Debug, Default, Deserialize)]
struct Params {
    digest: Option<String>,
    mount: Option<String>,
    from: Option<String>,
    n: Option<String>,
    last: Option<String>,
    #[serde(rename = "artifactType")]
    artifact_type: Option<String>,
    /// containerd's upstream namespace, e.g. `docker.io`.
    ns: Option<String>,
}

const API_VERSION: HeaderName = HeaderName::from_static("docker-distribution-api-version");
pub(crate) const CONTENT_DIGEST: HeaderName = HeaderName::from_static("docker-content-digest");

/// The `/v2/` API as a router with its state applied.
pub fn router(registry: Registry) -> Router {
    Router::new()
        .fallback(dispatch)
        .with_state(registry)
        .layer(map_response(add_api_version))
}

async fn add_api_version(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(API_VERSION, HeaderValue::from_static("registry/2.0"));
    response
}

async fn dispatch(State(registry): State<Registry>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let endpoint = match endpoint::parse(parts.uri.path()) {
        Ok(e) => e,
        Err(ParseError::NotFound) => {
            return Error::Unsupported("no such endpoint").into_response_with(StatusCode::NOT_FOUND);
        }
        Err(ParseError::Invalid(e)) => return Error::Name(e).into_response(),
    };
    let params = Query::<Params>::try_from_uri(&parts.uri)
        .map(|q| q.0)
        .unwrap_or_default();
    let (reg, headers) = (&registry, &parts.headers);
    let ns = params.ns.as_deref();
    let result = match (parts.method, endpoint) {
        (Method::GET | Method::HEAD, Endpoint::Base) => Ok(base()),
        (Method::GET, Endpoint::Catalog) => listing::catalog(reg, &params),
        (Method::GET, Endpoint::Tags(repo)) => match reg.route(&repo, ns) {
            Ok(route) => listing::tags(reg, &route, &repo, &params).await,
            Err(e) => Err(e),
        },
        (Method::GET, Endpoint::Referrers(repo, d)) => listing::referrers(reg, &repo, &d, &params),
        (Method::GET, Endpoint::Manifest(repo, r)) => match reg.route(&repo, ns) {
            Ok(route) => manifests::get(reg, &route, &r, headers).await,
            Err(e) => Err(e),
        },
        (Method::HEAD, Endpoint::Manifest(repo, r)) => match reg.route(&repo, ns) {
            Ok(route) => manifests::head(reg, &route, &r, headers).await,
            Err(e) => Err(e),
        },
        (Method::GET, Endpoint::Blob(repo, d)) => match reg.route(&repo, ns) {
            Ok(route) => blobs::get(reg, &route, &d, headers).await,
            Err(e) => Err(e),
        },
        (Method::HEAD, Endpoint::Blob(repo, d)) => match reg.route(&repo, ns) {
            Ok(route) => blobs::head(reg, &route, &d).await,
            Err(e) => Err(e),
        },
        (method, endpoint) => writes(reg, method, endpoint, &params, headers, body).await,
    };
    result.unwrap_or_else(IntoResponse::into_response)
}

/// Endpoints that change the store; they act on private repositories only.
async fn writes(
    reg: &Registry,
    method: Method,
    endpoint: Endpoint,
    params: &Params,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, Error> {
    match (method, endpoint) {
        (Method::PUT, Endpoint::Manifest(repo, r)) => {
            manifests::put(reg, &reg.route_push(&repo)?, &r, headers, body).await
        }
        (Method::DELETE, Endpoint::Manifest(repo, r)) => manifests::delete(reg, &reg.route_push(&repo)?, &r).await,
        (Method::DELETE, Endpoint::Blob(repo, d)) => blobs::delete(reg, &reg.route_push(&repo)?, &d).await,
        (Method::POST, Endpoint::Upload(repo, None)) => {
            uploads::start(reg, &reg.route_push(&repo)?, params, headers, body).await
        }
        (Method::GET, Endpoint::Upload(repo, Some(id))) => uploads::status(reg, &repo, &id).await,
        (Method::PATCH, Endpoint::Upload(repo, Some(id))) => uploads::patch(reg, &repo, &id, headers, body).await,
        (Method::PUT, Endpoint::Upload(repo, Some(id))) => uploads::put(reg, &repo, &id, params, headers, body).await,
        (Method::DELETE, Endpoint::Upload(repo, Some(id))) => uploads::cancel(reg, &repo, &id).await,
        _ => Err(Error::Unsupported("method not allowed on this endpoint")),
    }
}

const CACHE_STATUS: HeaderName = HeaderName::from_static("x-berth-cache");

/// `X-Berth-Cache: hit | miss | stale` on proxied responses.
fn set_cache(response: &mut Response, cache: Option<crate::service::Cache>) {
    if let Some(cache) = cache {
        response
            .headers_mut()
            .insert(CACHE_STATUS, HeaderValue::from_static(cache.as_str()));
    }
}

fn base() -> Response {
    (
        StatusCode::OK,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        Body::from("{}"),
    )
        .into_response()
}

impl Error {
    /// The OCI error body with a status other than the default for the variant.
    fn into_response_with(self, status: StatusCode) -> Response {
        let mut response = self.into_response();
        *response.status_mut() = status;
        response
    }
}

/// A request body as the byte stream the store consumes.
fn body_stream(body: Body) -> impl futures_util::Stream<Item = std::io::Result<bytes::Bytes>> + Unpin {
    use futures_util::TryStreamExt;
    body.into_data_stream().map_err(std::io::Error::other)
}
