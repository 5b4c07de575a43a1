//! The OCI Distribution HTTP API: one fallback route parses the path into an [`Endpoint`], the
//! request is authorized for what the endpoint does, and a single `match` dispatches it to a thin
//! handler that calls one service method.

mod access;
pub mod admin;
mod blobs;
mod cluster;
mod drain;
pub mod endpoint;
mod error;
mod events;
mod limits;
mod listing;
mod manifests;
mod ops;
mod origin;
mod range;
mod token;
mod uploads;

use std::net::IpAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::{from_fn_with_state, map_response};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;

pub use access::RequestId;
// The parsers of untrusted request bytes are public for the fuzz targets in fuzz/.
pub use endpoint::{Endpoint, ParseError};
pub use limits::ClientLimits;
pub use range::{RangeSpec, parse_range};
pub use uploads::parse_content_range;

use crate::auth::{Action, Auth, Denied, Identity, Scope, User};
use crate::oci::{NameError, RepoName};
use crate::service::{Error, PEER_BLOB_PATH, Route, Services};

/// Everything a request handler needs.
#[derive(Clone)]
pub struct AppState {
    pub services: Services,
    pub auth: Arc<Auth>,
    pub limits: Arc<ClientLimits>,
    /// Whether berth itself terminates TLS (for the token realm's scheme).
    pub tls: bool,
    /// `[server] trust_forwarded_headers`: take berth's own host and scheme from
    /// `X-Forwarded-Host`/`-Proto`.
    pub trust_forwarded: bool,
}

impl AppState {
    /// A registry with authentication and client limits off.
    pub fn open(services: Services) -> AppState {
        AppState {
            services,
            auth: Arc::new(Auth::disabled()),
            limits: Arc::new(ClientLimits::off()),
            tls: false,
            trust_forwarded: false,
        }
    }
}

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
const CACHE_STATUS: HeaderName = HeaderName::from_static("x-berth-cache");

/// The `/v2/` API, the token endpoint and the operations endpoints, with their state applied.
pub fn router(state: AppState) -> Router {
    router_with(state, Router::new())
}

/// [`router`] plus `pages` (the web UI), all behind the same access log, request metrics and
/// client rate limits.
pub fn router_with(state: AppState, pages: Router) -> Router {
    // Shared by reference: every request clones the state for each layer it passes through.
    let state = Arc::new(state);
    Router::new()
        .route("/token", get(token::token).post(token::token))
        .route("/metrics", get(ops::metrics))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route(&format!("{PEER_BLOB_PATH}{{digest}}"), get(cluster::blob))
        .fallback(dispatch)
        .with_state(state.clone())
        .merge(pages)
        .layer(from_fn_with_state(state.clone(), limits::per_ip))
        .layer(map_response(add_api_version))
        .layer(from_fn_with_state(state, access::access))
}

async fn add_api_version(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(API_VERSION, HeaderValue::from_static("registry/2.0"));
    response
}

/// One request, as the handlers see it. What only some requests need (the token realm for a
/// challenge, the owner of an upload session) is worked out when asked for: building both for
/// every manifest GET was about 6% of its instructions (callgrind, BENCHMARKS.md).
struct Call<'a> {
    app: &'a AppState,
    who: Identity,
    parts: &'a Parts,
    client: Option<IpAddr>,
    params: Params,
    headers: &'a HeaderMap,
}

async fn dispatch(State(app): State<Arc<AppState>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let endpoint = match endpoint::parse(parts.uri.path()) {
        Ok(e) => e,
        Err(ParseError::NotFound) => {
            return Error::Unsupported("no such endpoint").into_response_with(StatusCode::NOT_FOUND);
        }
        // No manifest can have an invalid tag, so reading one is "unknown", as the reference
        // registry and the conformance suite expect; a PUT with it stays 400 TAG_INVALID.
        Err(ParseError::Invalid(NameError::Tag(tag))) if matches!(parts.method, Method::GET | Method::HEAD) => {
            return Error::ManifestUnknown(tag).into_response();
        }
        Err(ParseError::Invalid(e)) => return Error::Name(e).into_response(),
    };
    // Kept for the notification event only when someone listens.
    let noted = app.services.core.notifier().enabled().then(|| endpoint.clone());
    let authorization = parts.headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let client = app.limits.client_ip(&parts.headers, &parts.extensions);
    let who = app.auth.identify(authorization, client).await;
    if let Some(retry_after) = who.throttled {
        return Error::throttled_login(retry_after).into_response();
    }
    if let Some(user) = &who.user
        && let Err(e) = app.limits.check_user(user)
    {
        return e.into_response();
    }
    let user = who.user.clone();
    let call = Call {
        app: &app,
        who,
        parts: &parts,
        client,
        params: match parts.uri.query() {
            Some(_) => Query::<Params>::try_from_uri(&parts.uri)
                .map(|q| q.0)
                .unwrap_or_default(),
            None => Params::default(),
        },
        headers: &parts.headers,
    };
    let mut response = call
        .handle(parts.method.clone(), endpoint, body)
        .await
        .unwrap_or_else(IntoResponse::into_response);
    if let Some(endpoint) = noted {
        events::note(&app, &parts, endpoint, user.clone(), &response).await;
    }
    if let Some(user) = user {
        response.extensions_mut().insert(User(user));
    }
    response
}

impl Call<'_> {
    /// The token endpoint to name in challenges; with authentication off, no challenge is sent.
    fn realm(&self) -> String {
        if !self.app.auth.enabled() {
            return String::new();
        }
        format!(
            "{}/token",
            origin::base_url(self.parts, self.app.tls, self.app.trust_forwarded)
        )
    }

    /// Who owns upload sessions this request opens: the user, else the client address.
    fn owner(&self) -> String {
        let client = || self.client.map(|ip| ip.to_string());
        self.who
            .user
            .clone()
            .or_else(client)
            .unwrap_or_else(|| "unknown".into())
    }

    fn authorize(&self, scope: Scope) -> Result<(), Error> {
        self.app
            .auth
            .authorize(&self.who, &scope, &self.realm())
            .map_err(|d| match d {
                Denied::Challenge(challenge) => Error::Unauthorized { challenge },
                Denied::Forbidden(message) => Error::Denied(message),
            })
    }

    /// Route a read of `repo` and check that the caller may pull it.
    async fn readable(&self, repo: &RepoName) -> Result<Route, Error> {
        let route = self.app.services.core.route(repo, self.params.ns.as_deref()).await?;
        let proxied = matches!(route, Route::Proxied(_));
        self.authorize(Scope::Repository {
            name: repo.as_str(),
            action: Action::Pull,
            proxied,
        })?;
        Ok(route)
    }

    /// Check that the caller may `action` in `repo` and route it as a write. A logged-in user is
    /// told first when the name is a mirror (with how to make it private); an anonymous caller
    /// is challenged first.
    async fn writable(&self, repo: &RepoName, action: Action) -> Result<RepoName, Error> {
        let scope = Scope::Repository {
            name: repo.as_str(),
            action,
            proxied: false,
        };
        if self.who.user.is_some() {
            let routed = self.app.services.core.route_push(repo).await?;
            self.authorize(scope)?;
            return Ok(routed);
        }
        self.authorize(scope)?;
        self.app.services.core.route_push(repo).await
    }

    async fn handle(self, method: Method, endpoint: Endpoint, body: Body) -> Result<Response, Error> {
        let (svc, h, params) = (&self.app.services, self.headers, &self.params);
        match (method, endpoint) {
            (Method::GET | Method::HEAD, Endpoint::Base) => {
                self.authorize(Scope::Base)?;
                Ok(base())
            }
            (Method::GET, Endpoint::Catalog) => {
                self.authorize(Scope::Catalog)?;
                listing::catalog(&svc.browse, &self.app.auth, &self.who, params).await
            }
            (Method::GET, Endpoint::Tags(repo)) => {
                listing::tags(&svc.manifests, &self.readable(&repo).await?, &repo, params).await
            }
            (Method::GET, Endpoint::Referrers(repo, d)) => {
                listing::referrers(&svc.manifests, &self.readable(&repo).await?, &d, params).await
            }
            (Method::GET, Endpoint::Manifest(repo, r)) => {
                manifests::get(&svc.manifests, &self.readable(&repo).await?, &r, h).await
            }
            (Method::HEAD, Endpoint::Manifest(repo, r)) => {
                manifests::head(&svc.manifests, &self.readable(&repo).await?, &r, h).await
            }
            (Method::GET, Endpoint::Blob(repo, d)) => blobs::get(&svc.blobs, &self.readable(&repo).await?, &d, h).await,
            (Method::HEAD, Endpoint::Blob(repo, d)) => blobs::head(&svc.blobs, &self.readable(&repo).await?, &d).await,
            (Method::PUT, Endpoint::Manifest(repo, r)) => {
                manifests::put(&svc.manifests, &self.writable(&repo, Action::Push).await?, &r, h, body).await
            }
            (Method::DELETE, Endpoint::Manifest(repo, r)) => {
                manifests::delete(&svc.manifests, &self.writable(&repo, Action::Delete).await?, &r).await
            }
            (Method::DELETE, Endpoint::Blob(repo, d)) => {
                blobs::delete(&svc.blobs, &self.writable(&repo, Action::Delete).await?, &d).await
            }
            (Method::POST, Endpoint::Upload(repo, None)) => {
                let repo = self.writable(&repo, Action::Push).await?;
                let from = self.mount_source(params).await?;
                uploads::start(&svc.uploads, &repo, params, from.as_ref(), &self.owner(), h, body).await
            }
            (method, Endpoint::Upload(repo, Some(id))) => {
                let repo = self.writable(&repo, Action::Push).await?;
                match method {
                    Method::GET => uploads::status(&svc.uploads, &repo, &id).await,
                    Method::PATCH => uploads::patch(&svc.uploads, &repo, &id, h, body).await,
                    Method::PUT => uploads::put(&svc.uploads, &repo, &id, params, h, body).await,
                    Method::DELETE => uploads::cancel(&svc.uploads, &repo, &id).await,
                    _ => Err(Error::Unsupported("method not allowed on this endpoint")),
                }
            }
            _ => Err(Error::Unsupported("method not allowed on this endpoint")),
        }
    }

    /// The `from` of a cross-repository mount, when the caller may read it; otherwise `None`, and
    /// the mount becomes a plain upload session, as the spec asks.
    async fn mount_source(&self, params: &Params) -> Result<Option<RepoName>, Error> {
        let (Some(_), Some(from)) = (&params.mount, &params.from) else {
            return Ok(None);
        };
        let from: RepoName = from.parse()?;
        Ok(self.readable(&from).await.ok().map(|route| route.local().clone()))
    }
}

/// `X-Berth-Cache: hit | miss | stale` on proxied responses; the access log and the cache metrics
/// read it from the response's extensions.
fn set_cache(response: &mut Response, cache: Option<crate::service::CacheResult>) {
    if let Some(cache) = cache {
        response
            .headers_mut()
            .insert(CACHE_STATUS, HeaderValue::from_static(cache.as_str()));
        response.extensions_mut().insert(cache);
    }
}

fn base() -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        Body::from("{}"),
    )
        .into_response()
}

impl Error {
    /// 429 for a login refused unchecked after repeated failures.
    fn throttled_login(retry_after: u64) -> Error {
        Error::TooManyRequests {
            retry_after,
            reason: "too many failed logins from this client or for this user; try again later".into(),
        }
    }

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
