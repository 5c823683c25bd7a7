//! `/api/v1/users/{firm_id}`: a firm's people, for its owners and admins.
//! An invitation's enrolment token is in a response exactly once.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};

use super::AppState;
use super::api::{ApiJson, blocking};
use super::authz::Authz;
use super::problem::Problem;
use crate::auth::Role;
use crate::auth::policy::{Overrides, Permission, perm};
use crate::people::users::StateOp;
use crate::people::{Invitation, NewUser, SessionView, UserChange, UserView};

fn invalid_field(detail: String) -> Problem {
    Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", detail)
}

fn role(s: &str) -> Result<Role, Problem> {
    Role::parse(s).ok_or_else(|| {
        invalid_field(format!(
            "role must be one of owner, admin, operator, viewer; got {s:?}"
        ))
    })
}

fn permissions(list: &[String]) -> Result<std::collections::BTreeSet<Permission>, Problem> {
    list.iter()
        .map(|p| {
            Permission::parse(p).ok_or_else(|| invalid_field(format!("unknown permission {p:?}")))
        })
        .collect()
}

/// Body of `POST /api/v1/users/{firm_id}`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InviteBody {
    login: String,
    display_name: String,
    #[schema(value_type = crate::auth::Role)]
    role: String,
    #[serde(default)]
    #[schema(value_type = Vec<crate::auth::policy::Permission>)]
    allow: Vec<String>,
    #[serde(default)]
    #[schema(value_type = Vec<crate::auth::policy::Permission>)]
    deny: Vec<String>,
}

/// An invitation: the user and the one-time enrolment token.
#[derive(Serialize, utoipa::ToSchema)]
pub struct InvitationView {
    user: UserView,
    /// Give this to the invitee. Not stored anywhere; not shown again.
    enrolment_token: String,
    expires_at: String,
}

impl From<Invitation> for InvitationView {
    fn from(i: Invitation) -> Self {
        Self {
            enrolment_token: i.token.reveal().to_owned(),
            expires_at: i.expires_at.clone(),
            user: i.user,
        }
    }
}

/// `POST /api/v1/users/{firm_id}`: invite a user.
pub async fn invite(
    State(shared): State<Arc<AppState>>,
    Authz(auth): Authz<perm::UsersInvite>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<InvitationView>), Problem> {
    let ApiJson(b) = ApiJson::<InviteBody>::parse(&headers, &body)?;
    let new = NewUser {
        login: b.login,
        display_name: b.display_name,
        role: role(&b.role)?,
        overrides: Overrides {
            allow: permissions(&b.allow)?,
            deny: permissions(&b.deny)?,
        },
    };
    let svc = shared.people.clone();
    let inv = blocking(move || svc.invite(&auth, new)).await?;
    Ok((StatusCode::CREATED, Json(inv.into())))
}

/// `POST /api/v1/users/{firm_id}/{user_id}/invitation`: a new enrolment
/// token; the user's password, second factor and sessions are gone.
pub async fn reinvite(
    State(shared): State<Arc<AppState>>,
    Authz(auth): Authz<perm::UsersUpdate>,
    Path((_, user)): Path<(String, String)>,
) -> Result<(StatusCode, Json<InvitationView>), Problem> {
    let svc = shared.people.clone();
    let inv = blocking(move || svc.reinvite(&auth, &user)).await?;
    Ok((StatusCode::CREATED, Json(inv.into())))
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct UserList {
    users: Vec<UserView>,
}

/// `GET /api/v1/users/{firm_id}`
pub async fn list(
    State(shared): State<Arc<AppState>>,
    Authz(auth): Authz<perm::UsersRead>,
) -> Result<Json<UserList>, Problem> {
    let svc = shared.people.clone();
    let users = blocking(move || svc.list_users(&auth)).await?;
    Ok(Json(UserList { users }))
}

/// `GET /api/v1/users/{firm_id}/{user_id}`
pub async fn show(
    State(shared): State<Arc<AppState>>,
    Authz(auth): Authz<perm::UsersRead>,
    Path((_, user)): Path<(String, String)>,
) -> Result<Json<UserView>, Problem> {
    let svc = shared.people.clone();
    Ok(Json(blocking(move || svc.show_user(&auth, &user)).await?))
}

/// Body of `PATCH /api/v1/users/{firm_id}/{user_id}`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateBody {
    display_name: Option<String>,
    #[schema(value_type = Option<crate::auth::Role>)]
    role: Option<String>,
    #[schema(value_type = Option<Vec<crate::auth::policy::Permission>>)]
    allow: Option<Vec<String>>,
    #[schema(value_type = Option<Vec<crate::auth::policy::Permission>>)]
    deny: Option<Vec<String>>,
}

/// `PATCH /api/v1/users/{firm_id}/{user_id}`
pub async fn update(
    State(shared): State<Arc<AppState>>,
    Authz(auth): Authz<perm::UsersUpdate>,
    Path((_, user)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<UserView>, Problem> {
    let ApiJson(b) = ApiJson::<UpdateBody>::parse(&headers, &body)?;
    let change = UserChange {
        display_name: b.display_name,
        role: b.role.as_deref().map(role).transpose()?,
        allow: b.allow.as_deref().map(permissions).transpose()?,
        deny: b.deny.as_deref().map(permissions).transpose()?,
    };
    let svc = shared.people.clone();
    Ok(Json(
        blocking(move || svc.update_user(&auth, &user, change)).await?,
    ))
}

async fn set_state(
    shared: Arc<AppState>,
    auth: crate::auth::policy::Authorized<perm::UsersUpdate>,
    user: String,
    op: StateOp,
) -> Result<Json<UserView>, Problem> {
    let svc = shared.people.clone();
    Ok(Json(
        blocking(move || svc.set_user_state(&auth, &user, op)).await?,
    ))
}

/// `POST /api/v1/users/{firm_id}/{user_id}/disable`: no more sign-ins;
/// every session ends.
pub async fn disable(
    State(shared): State<Arc<AppState>>,
    Authz(auth): Authz<perm::UsersUpdate>,
    Path((_, user)): Path<(String, String)>,
) -> Result<Json<UserView>, Problem> {
    set_state(shared, auth, user, StateOp::Disable).await
}

/// `POST /api/v1/users/{firm_id}/{user_id}/enable`
pub async fn enable(
    State(shared): State<Arc<AppState>>,
    Authz(auth): Authz<perm::UsersUpdate>,
    Path((_, user)): Path<(String, String)>,
) -> Result<Json<UserView>, Problem> {
    set_state(shared, auth, user, StateOp::Enable).await
}

/// `POST /api/v1/users/{firm_id}/{user_id}/unlock`
pub async fn unlock(
    State(shared): State<Arc<AppState>>,
    Authz(auth): Authz<perm::UsersUpdate>,
    Path((_, user)): Path<(String, String)>,
) -> Result<Json<UserView>, Problem> {
    set_state(shared, auth, user, StateOp::Unlock).await
}

/// `POST /api/v1/users/{firm_id}/{user_id}/reset-mfa`
pub async fn reset_mfa(
    State(shared): State<Arc<AppState>>,
    Authz(auth): Authz<perm::UsersUpdate>,
    Path((_, user)): Path<(String, String)>,
) -> Result<Json<UserView>, Problem> {
    set_state(shared, auth, user, StateOp::ResetMfa).await
}

/// `DELETE /api/v1/users/{firm_id}/{user_id}`
pub async fn delete(
    State(shared): State<Arc<AppState>>,
    Authz(auth): Authz<perm::UsersDelete>,
    Path((_, user)): Path<(String, String)>,
) -> Result<StatusCode, Problem> {
    let svc = shared.people.clone();
    blocking(move || svc.delete_user(&auth, &user)).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct SessionList {
    pub(super) sessions: Vec<SessionView>,
}

/// `GET /api/v1/users/{firm_id}/{user_id}/sessions`
pub async fn sessions(
    State(shared): State<Arc<AppState>>,
    Authz(auth): Authz<perm::UsersRead>,
    Path((_, user)): Path<(String, String)>,
) -> Result<Json<SessionList>, Problem> {
    let svc = shared.people.clone();
    let sessions = blocking(move || svc.user_sessions(&auth, &user)).await?;
    Ok(Json(SessionList { sessions }))
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Revoked {
    pub(super) revoked: u64,
}

/// `DELETE /api/v1/users/{firm_id}/{user_id}/sessions`: ends every
/// session of the user.
pub async fn revoke_sessions(
    State(shared): State<Arc<AppState>>,
    Authz(auth): Authz<perm::UsersUpdate>,
    Path((_, user)): Path<(String, String)>,
) -> Result<Json<Revoked>, Problem> {
    let svc = shared.people.clone();
    let revoked = blocking(move || svc.revoke_user_sessions(&auth, &user)).await?;
    Ok(Json(Revoked { revoked }))
}
