//! Listing handlers: `_catalog`, tags list (both paginated with `n`, `last` and `Link`), referrers.

use axum::http::{HeaderName, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::Params;
use crate::auth::{Auth, Identity};
use crate::oci::{Digest, RepoName, media};
use crate::service::{Browse, Manifests, Page, Result, Route, listing_limit};

/// `n` from the query; without it, one maximal page.
fn page_size(params: &Params) -> usize {
    params
        .n
        .as_deref()
        .and_then(|n| n.parse().ok())
        .unwrap_or(listing_limit())
}

/// Attach `Link: <path?n=N&last=L>; rel="next"` when there is a next page. An empty page (`n=0`)
/// has none: its cursor would be the request itself, and a client following it would loop.
fn with_link(mut response: Response, path: &str, n: usize, page: &Page) -> Response {
    if let Some(last) = page.next.as_ref().filter(|_| !page.items.is_empty()) {
        let link = format!("<{path}?n={n}&last={last}>; rel=\"next\"");
        if let Ok(v) = HeaderValue::from_str(&link) {
            response.headers_mut().insert(header::LINK, v);
        }
    }
    response
}

/// The catalog as `who` may see it: only repositories they may pull.
pub async fn catalog(browse: &Browse, auth: &Auth, who: &Identity, params: &Params) -> Result<Response> {
    let n = page_size(params);
    let last = params.last.as_deref();
    let page = if auth.enabled() {
        browse
            .catalog_filtered(last, n, |name, proxied| auth.may_pull(who, name, proxied))
            .await?
    } else {
        browse.catalog(last, n).await?
    };
    let response = axum::Json(json!({ "repositories": page.items })).into_response();
    Ok(with_link(response, "/v2/_catalog", n, &page))
}

pub async fn tags(manifests: &Manifests, route: &Route, repo: &RepoName, params: &Params) -> Result<Response> {
    let n = page_size(params);
    let page = manifests.tags(route, params.last.as_deref(), n).await?;
    let response = axum::Json(json!({ "name": repo.as_str(), "tags": page.items })).into_response();
    Ok(with_link(response, &format!("/v2/{repo}/tags/list"), n, &page))
}

/// The referrers of `subject`; a mirrored repository's come from its upstream (see
/// `service::referrers`).
pub async fn referrers(manifests: &Manifests, route: &Route, subject: &Digest, params: &Params) -> Result<Response> {
    let filter = params.artifact_type.as_deref();
    let (body, cache) = manifests.referrers_of(route, subject, filter).await?;
    let mut response = ([(header::CONTENT_TYPE, media::OCI_INDEX)], body).into_response();
    super::set_cache(&mut response, cache);
    if filter.is_some() {
        const FILTERS: HeaderName = HeaderName::from_static("oci-filters-applied");
        response
            .headers_mut()
            .insert(FILTERS, HeaderValue::from_static("artifactType"));
    }
    Ok(response)
}
