//! `/api/v1/secrets/{firm_id}`: the write-only vault. No route returns a
//! value: PUT takes one in, verify answers yes or no, GET shows metadata.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::AppState;
use super::api::{ApiJson, blocking};
use super::authz::Authz;
use super::problem::Problem;
use crate::auth::policy::perm;
use crate::vault::{SecretValue, SecretView};

/// Body of PUT and of verify: `{"value": "..."}`. The string is wiped when
/// it is dropped (after it is copied into a [`SecretValue`]).
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ValueBody {
    #[serde(deserialize_with = "zeroizing")]
    #[schema(value_type = String)]
    value: Zeroizing<String>,
}

fn zeroizing<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Zeroizing<String>, D::Error> {
    String::deserialize(d).map(Zeroizing::new)
}

impl std::fmt::Debug for ValueBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ValueBody(<redacted>)")
    }
}

fn value_of(headers: &HeaderMap, body: &Bytes) -> Result<SecretValue, Problem> {
    let ApiJson(b) = ApiJson::<ValueBody>::parse(headers, body)?;
    Ok(SecretValue::new(b.value))
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct SecretList {
    secrets: Vec<SecretView>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct VerifyAnswer {
    #[serde(rename = "match")]
    matched: bool,
}

/// `PUT /api/v1/secrets/{firm_id}/{name}`: 201 for a new secret, 200 for a
/// new version of an existing one; metadata only.
pub async fn put(
    State(shared): State<Arc<AppState>>,
    Authz(auth): Authz<perm::SecretsWrite>,
    Path((_, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<SecretView>), Problem> {
    let value = value_of(&headers, &body)?;
    let svc = shared.vault.clone();
    let (view, created) = blocking(move || svc.put_secret(&auth, &name, value)).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(view)))
}

/// `GET /api/v1/secrets/{firm_id}/{name}`: metadata, never the value.
pub async fn show(
    State(shared): State<Arc<AppState>>,
    Authz(auth): Authz<perm::SecretsRead>,
    Path((_, name)): Path<(String, String)>,
) -> Result<Json<SecretView>, Problem> {
    let svc = shared.vault.clone();
    Ok(Json(blocking(move || svc.secret_meta(&auth, &name)).await?))
}

/// `GET /api/v1/secrets/{firm_id}`: every secret's metadata.
pub async fn list(
    State(shared): State<Arc<AppState>>,
    Authz(auth): Authz<perm::SecretsRead>,
) -> Result<Json<SecretList>, Problem> {
    let svc = shared.vault.clone();
    let secrets = blocking(move || svc.list_secrets(&auth)).await?;
    Ok(Json(SecretList { secrets }))
}

/// `DELETE /api/v1/secrets/{firm_id}/{name}`: destroy (204).
pub async fn delete(
    State(shared): State<Arc<AppState>>,
    Authz(auth): Authz<perm::SecretsDelete>,
    Path((_, name)): Path<(String, String)>,
) -> Result<StatusCode, Problem> {
    let svc = shared.vault.clone();
    blocking(move || svc.delete_secret(&auth, &name)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /api/v1/secrets/{firm_id}/{name}/verify`: `{"match": true|false}`.
pub async fn verify(
    State(shared): State<Arc<AppState>>,
    Authz(auth): Authz<perm::SecretsVerify>,
    Path((_, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<VerifyAnswer>, Problem> {
    let value = value_of(&headers, &body)?;
    let svc = shared.vault.clone();
    let matched = blocking(move || svc.verify_secret(&auth, &name, value)).await?;
    Ok(Json(VerifyAnswer { matched }))
}
