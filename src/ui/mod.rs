//! The web UI at `/ui`: server-rendered HTML, no JavaScript (the Content-Security-Policy forbids
//! scripts outright). Repositories with a name search, a repository's tags, a manifest's platforms
//! and layers, cache statistics, and delete-tag and remove-repository actions for admins.
//!
//! Who may see what follows the registry's own rules ([`Auth::allowed`]): with authentication on,
//! every page needs an HTTP Basic login against the htpasswd users, a repository is listed only to
//! users who may pull it, and its delete buttons appear only for users who may delete in it (an
//! "admin" of that repository). With authentication off, anyone may browse and delete, and the
//! page says so.
//!
//! Deleting is a POST form, guarded against cross-site requests twice: the request must come from
//! this origin (`Sec-Fetch-Site`, then `Origin` or `Referer` against `Host`), and it must carry a
//! token that is an HMAC, under a per-process key, of the browser's session cookie
//! (`SameSite=Strict`, `HttpOnly`) and the user. Handlers are thin: the views come from the
//! service layer, which never lets the UI near a file path.

mod html;
mod pages;
mod remove;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Extension, Form, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Router, body::Body};
use hmac::{Hmac, KeyInit, Mac};
use serde::Deserialize;
use sha2::Sha256;

use crate::auth::{Action, Auth, ClientAddr, ProcessLocalKey, User};
use crate::clock::unix_now;
use crate::oci::{Reference, RepoName, Tag};
use crate::service::{self, RepoSummary, Services};
use pages::{Ctx, Deletion, Flash, Stats};

/// Rows per page of repositories or tags.
const PAGE_SIZE: usize = 100;
/// A disk-use measurement this recent is shown as it is rather than measured again.
const USAGE_MAX_AGE: Duration = Duration::from_secs(2);
const SESSION_COOKIE: &str = "berth_ui";

/// The client's address, which the access middleware records (absent when the UI runs alone).
type Client = Option<Extension<ClientAddr>>;

/// Everything the UI's handlers need.
pub struct Ui {
    services: Services,
    auth: Arc<Auth>,
    /// Signs the delete forms' CSRF tokens: [`Auth::csrf_key`], random each start unless
    /// `auth.token_key` is set (always set in cluster mode, so any replica takes a form).
    csrf_key: ProcessLocalKey,
    /// Whether berth terminates TLS itself (the session cookie is then `Secure`).
    tls: bool,
}

impl Ui {
    pub fn new(services: Services, auth: Arc<Auth>, tls: bool) -> Ui {
        Ui {
            services,
            csrf_key: auth.csrf_key().clone(),
            auth,
            tls,
        }
    }
}

/// The `/ui` routes with their state applied.
pub fn router(ui: Ui) -> Router {
    Router::new()
        .route("/ui", get(home))
        .route("/ui/", get(|| async { Redirect::permanent("/ui") }))
        .route("/ui/repo", get(repo))
        .route("/ui/manifest", get(manifest))
        .route("/ui/delete", post(delete))
        .route("/ui/remove", post(remove::remove))
        .with_state(Arc::new(ui))
}

/// Who is looking, and their browser session.
struct Viewer {
    user: Option<String>,
    session: String,
    /// The session cookie is set by this response.
    new_session: bool,
    host: String,
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The session id from the cookie, when it is one berth could have made (32 hex digits).
fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().strip_prefix(SESSION_COOKIE)?.strip_prefix('='))
        .find(|v| v.len() == 32 && v.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(str::to_owned)
}

/// The host the browser addressed: `Host`, or the HTTP/2 `:authority`.
fn host(headers: &HeaderMap, uri: &Uri) -> String {
    header_str(headers, "host")
        .map(str::to_owned)
        .or_else(|| uri.authority().map(|a| a.to_string()))
        .unwrap_or_else(|| "localhost".into())
}

/// Whether a form POST comes from a page of this origin.
fn same_origin(headers: &HeaderMap, host: &str) -> bool {
    if header_str(headers, "sec-fetch-site").is_some_and(|site| site != "same-origin") {
        return false;
    }
    let source = header_str(headers, "origin")
        .filter(|o| *o != "null")
        .or_else(|| header_str(headers, "referer"));
    let Some((_, rest)) = source.and_then(|s| s.split_once("://")) else {
        return false;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    authority.eq_ignore_ascii_case(host)
}

impl Ui {
    /// Who is looking; with authentication on and no valid Basic login, the 401 that asks for one.
    async fn viewer(&self, headers: &HeaderMap, uri: &Uri, client: Client) -> Result<Viewer, Response> {
        let user = if self.auth.enabled() {
            let client = client.and_then(|c| c.0.0);
            let who = self.auth.identify(header_str(headers, "authorization"), client).await;
            if let Some(retry_after) = who.throttled {
                return Err(throttled(retry_after));
            }
            match who.user {
                Some(user) => Some(user),
                None => return Err(login_required()),
            }
        } else {
            None
        };
        let (session, new_session) = match session_cookie(headers) {
            Some(s) => (s, false),
            None => (uuid::Uuid::new_v4().simple().to_string(), true),
        };
        Ok(Viewer {
            user,
            session,
            new_session,
            host: host(headers, uri),
        })
    }

    fn may(&self, viewer: &Viewer, repo: &RepoSummary, action: Action) -> bool {
        self.auth
            .allowed(viewer.user.as_deref(), &repo.name, !repo.private)
            .contains(action)
    }

    /// Deleting tags is offered in private repositories, to users the rules let delete there.
    fn may_delete(&self, viewer: &Viewer, repo: &RepoSummary) -> bool {
        repo.private && self.may(viewer, repo, Action::Delete)
    }

    fn csrf_mac(&self, viewer: &Viewer) -> Hmac<Sha256> {
        let mut mac =
            <Hmac<Sha256> as KeyInit>::new_from_slice(self.csrf_key.bytes()).expect("HMAC takes any key length");
        mac.update(b"berth-ui-delete\0");
        mac.update(viewer.session.as_bytes());
        mac.update(b"\0");
        mac.update(viewer.user.as_deref().unwrap_or("").as_bytes());
        mac
    }

    /// The token a delete form of this viewer carries.
    fn csrf(&self, viewer: &Viewer) -> String {
        hex::encode(self.csrf_mac(viewer).finalize().into_bytes())
    }

    fn csrf_ok(&self, viewer: &Viewer, token: &str) -> bool {
        let Ok(token) = hex::decode(token) else {
            return false;
        };
        !viewer.new_session && self.csrf_mac(viewer).verify_slice(&token).is_ok()
    }

    fn ctx<'a>(&self, viewer: &'a Viewer) -> Ctx<'a> {
        Ctx {
            user: viewer.user.as_deref(),
            auth_on: self.auth.enabled(),
            now: unix_now(),
            host: &viewer.host,
        }
    }

    /// An HTML response with the UI's headers, the session cookie when new, and the user for the
    /// access log.
    fn respond(&self, viewer: &Viewer, status: StatusCode, html: String) -> Response {
        let mut response = (status, Body::from(html)).into_response();
        secure_headers(&mut response);
        if viewer.new_session {
            let secure = if self.tls { "; Secure" } else { "" };
            let cookie = format!(
                "{SESSION_COOKIE}={}; Path=/ui; HttpOnly; SameSite=Strict{secure}",
                viewer.session
            );
            response.headers_mut().insert(
                header::SET_COOKIE,
                HeaderValue::from_str(&cookie).expect("ascii cookie"),
            );
        }
        if let Some(user) = &viewer.user {
            response.extensions_mut().insert(User(user.clone()));
        }
        response
    }

    fn message(&self, viewer: &Viewer, status: StatusCode, title: &str, text: &str) -> Response {
        self.respond(viewer, status, pages::message(&self.ctx(viewer), title, text))
    }

    fn failed(&self, viewer: &Viewer, e: service::Error) -> Response {
        tracing::error!(error = %e, "web UI request failed");
        self.message(
            viewer,
            StatusCode::INTERNAL_SERVER_ERROR,
            "Something went wrong",
            "The store could not answer; the log has the details.",
        )
    }

    fn not_found(&self, viewer: &Viewer, what: &str) -> Response {
        self.message(viewer, StatusCode::NOT_FOUND, "Not found", what)
    }
}

fn secure_headers(response: &mut Response) {
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
}

/// 429 for a login refused unchecked after repeated failures.
fn throttled(retry_after: u64) -> Response {
    let mut response = (
        StatusCode::TOO_MANY_REQUESTS,
        [(header::RETRY_AFTER, HeaderValue::from(retry_after))],
        Body::from("<!doctype html><title>Too many failed logins · berth</title><p>Too many failed logins; try again later.</p>"),
    )
        .into_response();
    secure_headers(&mut response);
    response
}

fn login_required() -> Response {
    let mut response = (
        StatusCode::UNAUTHORIZED,
        Body::from(
            "<!doctype html><title>Log in · berth</title><p>Log in with your registry user name and password.</p>",
        ),
    )
        .into_response();
    secure_headers(&mut response);
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"berth\", charset=\"UTF-8\""),
    );
    response
}

#[derive(Deserialize)]
struct HomeQuery {
    q: Option<String>,
    last: Option<String>,
}

async fn home(
    State(ui): State<Arc<Ui>>,
    Query(q): Query<HomeQuery>,
    headers: HeaderMap,
    uri: Uri,
    client: Client,
) -> Response {
    let viewer = match ui.viewer(&headers, &uri, client).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let query = q.q.unwrap_or_default();
    let list = match ui
        .services
        .browse
        .repos(&query, q.last.as_deref(), PAGE_SIZE, |r| {
            ui.may(&viewer, r, Action::Pull)
        })
        .await
    {
        Ok(list) => list,
        Err(e) => return ui.failed(&viewer, e),
    };
    let (hits, misses, stale) = ui.services.core.metrics().cache_totals();
    let usage = ui.services.admin.usage(USAGE_MAX_AGE).await;
    if let Err(e) = &usage {
        tracing::warn!(error = %e, "measuring the store's disk use failed");
    }
    let stats = Stats {
        hits,
        misses,
        stale,
        saved: ui.services.core.metrics().bytes_saved(),
        usage: usage.ok(),
        upstreams: ui.services.admin.upstream_modes(),
    };
    ui.respond(
        &viewer,
        StatusCode::OK,
        pages::home(&ui.ctx(&viewer), &stats, &query, &list),
    )
}

#[derive(Deserialize)]
struct RepoQuery {
    name: String,
    last: Option<String>,
    deleted: Option<String>,
}

async fn repo(
    State(ui): State<Arc<Ui>>,
    Query(q): Query<RepoQuery>,
    headers: HeaderMap,
    uri: Uri,
    client: Client,
) -> Response {
    let viewer = match ui.viewer(&headers, &uri, client).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let Ok(name) = q.name.parse::<RepoName>() else {
        return ui.not_found(&viewer, "No such repository.");
    };
    let view = match ui.services.browse.repo(&name, q.last.as_deref(), PAGE_SIZE).await {
        Ok(Some(view)) if ui.may(&viewer, &view.repo, Action::Pull) => view,
        Ok(_) => return ui.not_found(&viewer, "No such repository."),
        Err(e) => return ui.failed(&viewer, e),
    };
    let csrf = ui.csrf(&viewer);
    // No delete buttons while deletes are off or in read-only mode.
    let deletion = (ui.may_delete(&viewer, &view.repo) && ui.services.core.check_delete().is_ok())
        .then_some(Deletion { csrf: &csrf });
    let flash = q.deleted.as_deref().map(Flash::Deleted);
    let html = pages::repo(&ui.ctx(&viewer), &view, deletion, flash);
    ui.respond(&viewer, StatusCode::OK, html)
}

#[derive(Deserialize)]
struct ManifestQuery {
    repo: String,
    #[serde(rename = "ref")]
    reference: String,
}

async fn manifest(
    State(ui): State<Arc<Ui>>,
    Query(q): Query<ManifestQuery>,
    headers: HeaderMap,
    uri: Uri,
    client: Client,
) -> Response {
    let viewer = match ui.viewer(&headers, &uri, client).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let (Ok(name), Ok(reference)) = (q.repo.parse::<RepoName>(), q.reference.parse::<Reference>()) else {
        return ui.not_found(&viewer, "No such manifest.");
    };
    match ui.services.browse.manifest(&name, &reference).await {
        Ok(Some(view)) if ui.may(&viewer, &view.repo, Action::Pull) => {
            ui.respond(&viewer, StatusCode::OK, pages::manifest(&ui.ctx(&viewer), &view))
        }
        Ok(_) => ui.not_found(&viewer, "No such manifest in the store."),
        Err(e) => ui.failed(&viewer, e),
    }
}

#[derive(Deserialize)]
struct DeleteForm {
    repo: String,
    tag: String,
    csrf: String,
}

impl Ui {
    /// The viewer of a deleting form, once it passed the cross-site guards (same origin, and a
    /// token bound to this session and user).
    async fn form_viewer(
        &self,
        headers: &HeaderMap,
        uri: &Uri,
        client: Client,
        csrf: &str,
    ) -> Result<Viewer, Response> {
        let viewer = self.viewer(headers, uri, client).await?;
        let forbidden = |text: &str| self.message(&viewer, StatusCode::FORBIDDEN, "Not allowed", text);
        if !same_origin(headers, &viewer.host) {
            return Err(forbidden(
                "The request did not come from a berth page (cross-site requests are refused).",
            ));
        }
        if !self.csrf_ok(&viewer, csrf) {
            return Err(forbidden("The form has expired. Reload the page and try again."));
        }
        Ok(viewer)
    }

    /// Check that `viewer` may delete in `name` (an admin of it); `refusal` says what not.
    // The error is the page to send, built only on a refusal and sent at once; boxing it would
    // buy nothing.
    #[allow(clippy::result_large_err)]
    async fn check_deleter(&self, viewer: &Viewer, name: &RepoName, refusal: &str) -> Result<(), Response> {
        let summary = match self.services.browse.repo_summary(name.as_str()).await {
            Ok(Some(s)) if self.may(viewer, &s, Action::Pull) => s,
            Ok(_) => return Err(self.not_found(viewer, "No such repository.")),
            Err(e) => return Err(self.failed(viewer, e)),
        };
        if !self.may_delete(viewer, &summary) {
            return Err(self.message(viewer, StatusCode::FORBIDDEN, "Not allowed", refusal));
        }
        Ok(())
    }
}

async fn delete(
    State(ui): State<Arc<Ui>>,
    headers: HeaderMap,
    uri: Uri,
    client: Client,
    Form(form): Form<DeleteForm>,
) -> Response {
    let viewer = match ui.form_viewer(&headers, &uri, client, &form.csrf).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let (Ok(name), Ok(tag)) = (form.repo.parse::<RepoName>(), form.tag.parse::<Tag>()) else {
        return ui.not_found(&viewer, "No such tag.");
    };
    if let Err(r) = ui
        .check_deleter(&viewer, &name, "You may not delete tags in this repository.")
        .await
    {
        return r;
    }
    match ui.services.manifests.delete(&name, &Reference::Tag(tag.clone())).await {
        Ok(()) => {}
        Err(service::Error::ManifestUnknown(_)) => return ui.not_found(&viewer, "No such tag."),
        Err(e @ (service::Error::ReadOnly | service::Error::DeleteDisabled)) => {
            return ui.message(&viewer, StatusCode::METHOD_NOT_ALLOWED, "Not deleted", &e.to_string());
        }
        Err(e) => return ui.failed(&viewer, e),
    }
    tracing::info!(repo = %name, tag = %tag.as_str(), user = viewer.user.as_deref().unwrap_or("-"), "tag deleted in the web UI");
    notify_deleted(&ui.services, &name, &tag, &viewer, &headers);
    let target = html::url("/ui/repo", &[("name", name.as_str()), ("deleted", tag.as_str())]);
    let mut response = Redirect::to(&target).into_response();
    if let Some(user) = &viewer.user {
        response.extensions_mut().insert(User(user.clone()));
    }
    response
}

/// The `delete` notification event of a tag deleted here, as the API sends for a `DELETE`.
fn notify_deleted(services: &Services, repo: &RepoName, tag: &Tag, viewer: &Viewer, headers: &HeaderMap) {
    use crate::notify::{Action, Actor, Request, Target};
    if !services.core.notifier().enabled() {
        return;
    }
    let target = Target {
        repository: repo.to_string(),
        tag: tag.as_str().to_owned(),
        ..Target::default()
    };
    let request = Request {
        host: viewer.host.clone(),
        method: "POST".into(),
        useragent: header_str(headers, "user-agent").unwrap_or("").to_owned(),
        ..Request::default()
    };
    let actor = Actor {
        name: viewer.user.clone(),
    };
    services.core.notifier().emit(Action::Delete, target, request, actor);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn same_origin_needs_a_matching_origin_or_referer() {
        let host = "berth.corp:5000";
        assert!(same_origin(&headers(&[("origin", "http://berth.corp:5000")]), host));
        assert!(same_origin(
            &headers(&[("referer", "https://berth.corp:5000/ui/repo?name=a")]),
            host
        ));
        assert!(same_origin(
            &headers(&[("sec-fetch-site", "same-origin"), ("origin", "http://berth.corp:5000")]),
            host
        ));
        for bad in [
            headers(&[]),
            headers(&[("origin", "http://evil.example")]),
            headers(&[("origin", "null")]),
            headers(&[("origin", "http://berth.corp:5000.evil.example")]),
            headers(&[("sec-fetch-site", "cross-site"), ("origin", "http://berth.corp:5000")]),
        ] {
            assert!(!same_origin(&bad, host), "{bad:?}");
        }
    }

    #[test]
    fn session_cookie_is_read_only_when_well_formed() {
        let id = "0123456789abcdef0123456789abcdef";
        let h = headers(&[("cookie", "a=b; berth_ui=0123456789abcdef0123456789abcdef")]);
        assert_eq!(session_cookie(&h).as_deref(), Some(id));
        assert_eq!(session_cookie(&headers(&[("cookie", "berth_ui=<script>")])), None);
        assert_eq!(session_cookie(&headers(&[("cookie", "berth_uix=0123")])), None);
    }

    #[test]
    fn csrf_tokens_bind_the_session_and_the_user() {
        let dir = tempfile::tempdir().unwrap();
        let ui = Ui::new(
            Services::new(service::Core::new(
                crate::store::fs::open(dir.path()).unwrap(),
                Vec::new(),
                crate::coord::Local::shared(),
            )),
            Arc::new(Auth::disabled()),
            false,
        );
        let viewer = |session: &str, user: Option<&str>| Viewer {
            user: user.map(str::to_owned),
            session: session.to_owned(),
            new_session: false,
            host: "h".into(),
        };
        let alice = viewer("0123456789abcdef0123456789abcdef", Some("alice"));
        let token = ui.csrf(&alice);
        assert!(ui.csrf_ok(&alice, &token));
        assert!(!ui.csrf_ok(&viewer("ffffffffffffffffffffffffffffffff", Some("alice")), &token));
        assert!(!ui.csrf_ok(&viewer("0123456789abcdef0123456789abcdef", Some("bob")), &token));
        assert!(!ui.csrf_ok(&alice, "zz"));
        let fresh = Viewer {
            new_session: true,
            ..viewer("0123456789abcdef0123456789abcdef", Some("alice"))
        };
        assert!(
            !ui.csrf_ok(&fresh, &token),
            "a session made by this very request proves nothing"
        );
    }
}
