//! Removing a whole repository from the web UI: admins only (those who may delete in it), with
//! the same cross-site guards as deleting a tag, and the name typed again to confirm.

use std::sync::Arc;

use axum::extract::{Form, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::Ui;
use crate::auth::User;
use crate::oci::RepoName;
use crate::service;

#[derive(Deserialize)]
pub(super) struct RemoveForm {
    repo: String,
    csrf: String,
    /// The repository name, typed by the user.
    #[serde(default)]
    confirm: String,
}

pub(super) async fn remove(
    State(ui): State<Arc<Ui>>,
    headers: HeaderMap,
    uri: Uri,
    client: super::Client,
    Form(form): Form<RemoveForm>,
) -> Response {
    let viewer = match ui.form_viewer(&headers, &uri, client, &form.csrf).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let Ok(name) = form.repo.parse::<RepoName>() else {
        return ui.not_found(&viewer, "No such repository.");
    };
    if let Err(r) = ui
        .check_deleter(&viewer, &name, "You may not remove this repository.")
        .await
    {
        return r;
    }
    if form.confirm.trim() != name.as_str() {
        return ui.message(
            &viewer,
            StatusCode::BAD_REQUEST,
            "Not removed",
            "The name typed to confirm does not match the repository's. Nothing was removed.",
        );
    }
    match ui.services.manifests.remove_repository(&name).await {
        Ok(()) => {}
        Err(service::Error::NameUnknown(_)) => return ui.not_found(&viewer, "No such repository."),
        Err(e) => return ui.failed(&viewer, e),
    }
    tracing::info!(repo = %name, user = viewer.user.as_deref().unwrap_or("-"), "repository removed in the web UI");
    let mut response = ui
        .message(
            &viewer,
            StatusCode::OK,
            "Repository removed",
            &format!(
                "Removed {name}: its tags, manifests and links are gone, and the next garbage collection reclaims the blobs nothing else uses."
            ),
        )
        .into_response();
    if let Some(user) = &viewer.user {
        response.extensions_mut().insert(User(user.clone()));
    }
    response
}
