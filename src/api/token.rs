//! `GET|POST /token`: the built-in token service for the Bearer flows of docker, containerd and
//! podman. Credentials come as Basic auth (GET) or an OAuth2 password form (POST).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{Method, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::AppState;
use crate::auth::{Action, Actions, Grant, Login, User, decode_basic};
use crate::oci::RepoName;
use crate::service::{Error, Route};

/// Largest token request body read (an OAuth2 form is tiny).
const MAX_FORM: usize = 64 << 10;

pub async fn token(State(app): State<Arc<AppState>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let mut params: Vec<(String, String)> = form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes())
        .into_owned()
        .collect();
    if parts.method == Method::POST {
        let Ok(body) = axum::body::to_bytes(body, MAX_FORM).await else {
            return Error::ManifestInvalid("token request body too large".into()).into_response();
        };
        params.extend(parse_form(&body));
    }
    let param = |k: &str| params.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
    let basic = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(decode_basic);
    let credentials = basic.or_else(|| Some((param("username")?, param("password")?)));
    // `scope` may repeat (GET) or hold several space-separated scopes (OAuth2 form).
    let scopes: Vec<String> = params
        .iter()
        .filter(|(k, _)| k == "scope")
        .flat_map(|(_, v)| v.split(' ').map(str::to_owned))
        .filter(|s| !s.is_empty())
        .collect();

    let mut user = None;
    if let Some((name, password)) = credentials {
        let client = app.limits.client_ip(&parts.headers, &parts.extensions);
        let login = app.auth.login(&name, &password, client).await;
        if let Login::Throttled { retry_after } = login {
            return Error::throttled_login(retry_after).into_response();
        }
        if login == Login::Ok {
            user = Some(name);
        } else if scopes.is_empty() || !scopes.iter().all(|s| s.ends_with(":pull")) {
            // A login, or a push: the password is wrong. Pull-only requests carrying foreign
            // credentials (a Docker Hub login sent to its mirror) get an anonymous token instead.
            return Error::Unauthorized {
                challenge: String::new(),
            }
            .into_response();
        }
    }
    let mut grants = Vec::with_capacity(scopes.len());
    for scope in &scopes {
        grants.extend(grant(&app, user.as_deref(), scope).await);
    }
    let (token, ttl) = app.auth.issue(user.as_deref(), grants);
    let issued_at = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let mut response =
        axum::Json(json!({ "token": token, "access_token": token, "expires_in": ttl, "issued_at": issued_at }))
            .into_response();
    if let Some(user) = user {
        response.extensions_mut().insert(User(user));
    }
    response
}

fn parse_form(body: &Bytes) -> Vec<(String, String)> {
    form_urlencoded::parse(body).into_owned().collect()
}

/// What `user` gets of one requested scope (`repository:NAME:ACTIONS` or `registry:catalog:*`).
async fn grant(app: &AppState, user: Option<&str>, scope: &str) -> Option<Grant> {
    let (kind_and_name, actions) = scope.rsplit_once(':')?;
    let (kind, name) = kind_and_name.split_once(':')?;
    match kind {
        "registry" if name == "catalog" && user.is_some() => Some(Grant {
            kind: kind.into(),
            name: name.into(),
            actions: vec!["*".into()],
        }),
        "repository" => {
            let repo: RepoName = name.parse().ok()?;
            let proxied = matches!(app.services.core.route(&repo, None).await, Ok(Route::Proxied(_)));
            let allowed = app.auth.allowed(user, name, proxied);
            let requested = actions
                .split(',')
                .filter_map(Action::parse)
                .fold(Actions::NONE, Actions::with);
            let actions: Vec<String> = requested
                .iter()
                .filter(|a| allowed.contains(*a))
                .map(|a| a.as_str().to_owned())
                .collect();
            Some(Grant {
                kind: kind.into(),
                name: name.into(),
                actions,
            })
        }
        _ => None,
    }
}
