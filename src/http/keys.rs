//! `/api/v1/keys/{firm_id}`: API key lifecycle. The secret is in a response
//! exactly twice in a key's life: when it is minted and when it is rotated
//! (as a new key). Listing and showing give metadata only.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use super::AppState;
use super::api::{ApiJson, blocking};
use super::authz::Authz;
use super::problem::Problem;
use crate::auth::Role;
use crate::auth::policy::{Overrides, perm};
use crate::auth::{KeyView, Minted, NewKey};
use crate::clock::parse_rfc3339;

/// Body of `POST /api/v1/keys/{firm_id}`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MintBody {
    name: String,
    #[schema(value_type = Role)]
    role: String,
    #[serde(default)]
    #[schema(value_type = Vec<crate::auth::policy::Permission>)]
    allow: Vec<String>,
    #[serde(default)]
    #[schema(value_type = Vec<crate::auth::policy::Permission>)]
    deny: Vec<String>,
    /// RFC 3339; in the future.
    #[schema(format = DateTime)]
    expires_at: Option<String>,
}

/// A minted or rotated key: its metadata plus the secret, shown once.
#[derive(Serialize, utoipa::ToSchema)]
pub struct MintedView {
    #[serde(flatten)]
    key: KeyView,
    /// The full bearer token. Not stored anywhere; not shown again.
    secret: String,
}

impl From<Minted> for MintedView {
    fn from(m: Minted) -> Self {
        Self {
            secret: m.token.reveal().to_owned(),
            key: m.view,
        }
    }
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct KeyList {
    keys: Vec<KeyView>,
}

fn invalid_field(detail: String) -> Problem {
    Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", detail)
}

fn new_key(body: MintBody) -> Result<NewKey, Problem> {
    let role = Role::parse(&body.role).ok_or_else(|| {
        invalid_field(format!(
            "role must be one of owner, admin, operator, viewer; got {:?}",
            body.role
        ))
    })?;
    let overrides = Overrides::parse(
        body.allow.iter().map(String::as_str),
        body.deny.iter().map(String::as_str),
    )
    .map_err(|p| invalid_field(format!("unknown permission {p:?}")))?;
    let expires_at =
        match body.expires_at.as_deref() {
            None => None,
            Some(s) => Some(parse_rfc3339(s).ok_or_else(|| {
                invalid_field("expires_at must be an RFC 3339 timestamp".to_owned())
            })?),
        };
    Ok(NewKey {
        name: body.name,
        role,
        overrides,
        expires_at,
    })
}

/// `POST /api/v1/keys/{firm_id}`: mint a key.
pub async fn mint(
    State(shared): State<Arc<AppState>>,
    Authz(auth): Authz<perm::KeysCreate>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<MintedView>), Problem> {
    let ApiJson(body) = ApiJson::<MintBody>::parse(&headers, &body)?;
    let new = new_key(body)?;
    let svc = shared.keys.clone();
    let minted = blocking(move || svc.mint_key(&auth, new)).await?;
    Ok((StatusCode::CREATED, Json(minted.into())))
}

/// `GET /api/v1/keys/{firm_id}`: every key's metadata, revoked ones included.
pub async fn list(
    State(shared): State<Arc<AppState>>,
    Authz(auth): Authz<perm::KeysRead>,
) -> Result<Json<KeyList>, Problem> {
    let svc = shared.keys.clone();
    let keys = blocking(move || svc.list_keys(&auth)).await?;
    Ok(Json(KeyList { keys }))
}

/// `GET /api/v1/keys/{firm_id}/{key_id}`
pub async fn show(
    State(shared): State<Arc<AppState>>,
    Authz(auth): Authz<perm::KeysRead>,
    Path((_, key_id)): Path<(String, String)>,
) -> Result<Json<KeyView>, Problem> {
    let svc = shared.keys.clone();
    Ok(Json(blocking(move || svc.show_key(&auth, &key_id)).await?))
}

/// `POST /api/v1/keys/{firm_id}/{key_id}/rotate`: a new key replaces this one.
pub async fn rotate(
    State(shared): State<Arc<AppState>>,
    Authz(auth): Authz<perm::KeysRotate>,
    Path((_, key_id)): Path<(String, String)>,
) -> Result<(StatusCode, Json<MintedView>), Problem> {
    let svc = shared.keys.clone();
    let minted = blocking(move || svc.rotate_key(&auth, &key_id)).await?;
    Ok((StatusCode::CREATED, Json(minted.into())))
}

/// `DELETE /api/v1/keys/{firm_id}/{key_id}`: revoke.
pub async fn revoke(
    State(shared): State<Arc<AppState>>,
    Authz(auth): Authz<perm::KeysRevoke>,
    Path((_, key_id)): Path<(String, String)>,
) -> Result<Json<KeyView>, Problem> {
    let svc = shared.keys.clone();
    Ok(Json(
        blocking(move || svc.revoke_key(&auth, &key_id)).await?,
    ))
}
