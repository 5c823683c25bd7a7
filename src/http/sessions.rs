//! Signing in, enrolment and a person's own account:
//! - `/api/v1/sessions/{firm_id}`: sign in (public, throttled per source),
//!   list, refresh and revoke one's sessions;
//! - `/api/v1/enrolment/{firm_id}`: an invitee sets a password and enrols
//!   TOTP (public: the enrolment token is the credential);
//! - `/api/v1/me/{firm_id}`: one's password, TOTP and recovery codes.
//!
//! Tokens, TOTP secrets and recovery codes appear in a response once, when
//! issued; passwords never.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::AppState;
use super::api::{ApiJson, blocking};
use super::authz::Authz;
use super::problem::Problem;
use super::users::{Revoked, SessionList};
use crate::auth::Origin;
use crate::auth::policy::perm;
use crate::firms::FirmError;
use crate::ids::FirmId;
use crate::people::{SessionView, SignIn, SignedIn, TotpEnrolment, UserView};

fn zeroizing<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Zeroizing<String>, D::Error> {
    String::deserialize(d).map(Zeroizing::new)
}

fn zeroizing_opt<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Zeroizing<String>>, D::Error> {
    Option::<String>::deserialize(d).map(|o| o.map(Zeroizing::new))
}

/// Where a public request came from, for throttling and the audit log.
pub struct ClientOrigin(pub Origin);

impl<S: Send + Sync> FromRequestParts<S> for ClientOrigin {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Problem> {
        Ok(ClientOrigin(super::authz::origin(parts)))
    }
}

/// The firm a public route names. An id that is not one answers like a
/// wrong credential (no oracle).
fn firm_of(s: &str, unknown: FirmError) -> Result<FirmId, Problem> {
    FirmId::parse(s).ok_or_else(|| Problem::from(unknown))
}

/// Bodies holding credentials never print them.
macro_rules! redacted_debug {
    ($($t:ty),*) => {$(
        impl std::fmt::Debug for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(concat!(stringify!($t), "(<redacted>)"))
            }
        }
    )*};
}

/// Body of `POST /api/v1/sessions/{firm_id}`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignInBody {
    login: String,
    #[serde(deserialize_with = "zeroizing")]
    #[schema(value_type = String)]
    password: Zeroizing<String>,
    /// A TOTP code, or a recovery code.
    #[serde(default, deserialize_with = "zeroizing_opt")]
    #[schema(value_type = Option<String>)]
    code: Option<Zeroizing<String>>,
}

impl SignInBody {
    pub(super) fn into_sign_in(self) -> SignIn {
        SignIn {
            login: self.login,
            password: self.password,
            code: self.code,
        }
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnrolStartBody {
    #[serde(deserialize_with = "zeroizing")]
    #[schema(value_type = String)]
    token: Zeroizing<String>,
    #[serde(deserialize_with = "zeroizing")]
    #[schema(value_type = String)]
    password: Zeroizing<String>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnrolConfirmBody {
    #[serde(deserialize_with = "zeroizing")]
    #[schema(value_type = String)]
    token: Zeroizing<String>,
    #[serde(default, deserialize_with = "zeroizing_opt")]
    #[schema(value_type = Option<String>)]
    code: Option<Zeroizing<String>>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordBody {
    #[serde(deserialize_with = "zeroizing")]
    #[schema(value_type = String)]
    current_password: Zeroizing<String>,
    #[serde(deserialize_with = "zeroizing")]
    #[schema(value_type = String)]
    new_password: Zeroizing<String>,
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CurrentPasswordBody {
    #[serde(default, deserialize_with = "zeroizing_opt")]
    #[schema(value_type = Option<String>)]
    current_password: Option<Zeroizing<String>>,
}

/// Body of `POST /api/v1/me/{firm_id}/recovery-codes`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReauthBody {
    #[serde(deserialize_with = "zeroizing")]
    #[schema(value_type = String)]
    current_password: Zeroizing<String>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CodeBody {
    #[serde(deserialize_with = "zeroizing")]
    #[schema(value_type = String)]
    code: Zeroizing<String>,
}

redacted_debug!(
    SignInBody,
    EnrolStartBody,
    EnrolConfirmBody,
    PasswordBody,
    CurrentPasswordBody,
    ReauthBody,
    CodeBody
);

/// A new session: the token, shown once.
#[derive(Serialize, utoipa::ToSchema)]
pub struct SessionIssued {
    /// `Authorization: Bearer <token>`. Not stored anywhere; not shown again.
    token: String,
    session: SessionView,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<UserView>,
    mfa_enrolment_required: bool,
}

impl From<SignedIn> for SessionIssued {
    fn from(s: SignedIn) -> Self {
        Self {
            token: s.token.reveal().to_owned(),
            session: s.session,
            user: Some(s.user),
            mfa_enrolment_required: s.mfa_enrolment_required,
        }
    }
}

/// TOTP material to scan, shown once.
#[derive(Serialize, utoipa::ToSchema)]
pub struct TotpView {
    /// Base32, for typing into an authenticator.
    secret: String,
    otpauth_uri: String,
    /// The URI as a QR code (SVG).
    qr_svg: String,
}

impl From<TotpEnrolment> for TotpView {
    fn from(t: TotpEnrolment) -> Self {
        Self {
            secret: t.secret.reveal().to_owned(),
            otpauth_uri: t.otpauth_uri.reveal().to_owned(),
            qr_svg: t.qr_svg.reveal().to_owned(),
        }
    }
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct RecoveryCodes {
    /// Each works once in place of a TOTP code. Shown once.
    recovery_codes: Vec<String>,
}

fn codes(v: Vec<crate::people::OneTime>) -> RecoveryCodes {
    RecoveryCodes {
        recovery_codes: v.iter().map(|c| c.reveal().to_owned()).collect(),
    }
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct EnrolledView {
    user: UserView,
    recovery_codes: Vec<String>,
}

/// `POST /api/v1/sessions/{firm_id}`: sign in.
pub async fn sign_in(
    State(shared): State<Arc<AppState>>,
    Path(firm): Path<String>,
    ClientOrigin(origin): ClientOrigin,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<SessionIssued>), Problem> {
    let ApiJson(b) = ApiJson::<SignInBody>::parse(&headers, &body)?;
    let firm = firm_of(&firm, FirmError::InvalidCredentials)?;
    let signed = shared
        .people
        .clone()
        .sign_in(firm, b.into_sign_in(), origin)
        .await?;
    Ok((StatusCode::CREATED, Json(signed.into())))
}

/// `POST /api/v1/enrolment/{firm_id}`: set a password; get TOTP to scan.
pub async fn enrol_start(
    State(shared): State<Arc<AppState>>,
    Path(firm): Path<String>,
    ClientOrigin(origin): ClientOrigin,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<TotpView>, Problem> {
    let ApiJson(b) = ApiJson::<EnrolStartBody>::parse(&headers, &body)?;
    let firm = firm_of(&firm, FirmError::InvalidEnrolment)?;
    let t = shared
        .people
        .clone()
        .enrol_start(firm, b.token, b.password, origin)
        .await?;
    Ok(Json(t.into()))
}

/// `POST /api/v1/enrolment/{firm_id}/confirm`: a TOTP code finishes it.
pub async fn enrol_confirm(
    State(shared): State<Arc<AppState>>,
    Path(firm): Path<String>,
    ClientOrigin(origin): ClientOrigin,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<EnrolledView>, Problem> {
    let ApiJson(b) = ApiJson::<EnrolConfirmBody>::parse(&headers, &body)?;
    let firm = firm_of(&firm, FirmError::InvalidEnrolment)?;
    let svc = shared.people.clone();
    let e = blocking(move || {
        svc.enrol_confirm(
            &firm,
            &b.token,
            b.code.as_deref().map(|c| c.as_str()),
            &origin,
        )
    })
    .await?;
    Ok(Json(EnrolledView {
        user: e.user,
        recovery_codes: e
            .recovery_codes
            .iter()
            .map(|c| c.reveal().to_owned())
            .collect(),
    }))
}

/// `GET /api/v1/sessions/{firm_id}`: the caller's live sessions.
pub async fn list(
    State(shared): State<Arc<AppState>>,
    Authz(auth): Authz<perm::Account>,
) -> Result<Json<SessionList>, Problem> {
    let svc = shared.people.clone();
    let sessions = blocking(move || svc.my_sessions(&auth)).await?;
    Ok(Json(SessionList { sessions }))
}

/// `DELETE /api/v1/sessions/{firm_id}/{session_id}`: sign out of one
/// session (`current`: this one).
pub async fn revoke(
    State(shared): State<Arc<AppState>>,
    Authz(auth): Authz<perm::Account>,
    Path((_, session)): Path<(String, String)>,
) -> Result<StatusCode, Problem> {
    let svc = shared.people.clone();
    blocking(move || svc.revoke_my_session(&auth, &session)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE /api/v1/sessions/{firm_id}`: sign out everywhere.
pub async fn revoke_all(
    State(shared): State<Arc<AppState>>,
    Authz(auth): Authz<perm::Account>,
) -> Result<Json<Revoked>, Problem> {
    let svc = shared.people.clone();
    let revoked = blocking(move || svc.revoke_my_sessions(&auth)).await?;
    Ok(Json(Revoked { revoked }))
}

/// `POST /api/v1/sessions/{firm_id}/refresh`: a new token for this session.
pub async fn refresh(
    State(shared): State<Arc<AppState>>,
    Authz(auth): Authz<perm::Account>,
) -> Result<(StatusCode, Json<SessionIssued>), Problem> {
    let svc = shared.people.clone();
    let (session, token) = blocking(move || svc.refresh(&auth)).await?;
    Ok((
        StatusCode::CREATED,
        Json(SessionIssued {
            token: token.reveal().to_owned(),
            mfa_enrolment_required: session.enrolment_only,
            session,
            user: None,
        }),
    ))
}

/// `GET /api/v1/me/{firm_id}`
pub async fn me(
    State(shared): State<Arc<AppState>>,
    Authz(auth): Authz<perm::Account>,
) -> Result<Json<UserView>, Problem> {
    let svc = shared.people.clone();
    Ok(Json(blocking(move || svc.me(&auth)).await?))
}

/// `POST /api/v1/me/{firm_id}/password`: other sessions end.
pub async fn password(
    State(shared): State<Arc<AppState>>,
    Authz(auth): Authz<perm::Account>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<StatusCode, Problem> {
    let ApiJson(b) = ApiJson::<PasswordBody>::parse(&headers, &body)?;
    shared
        .people
        .clone()
        .change_password(auth, b.current_password, b.new_password)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

fn optional_body<T: serde::de::DeserializeOwned + Default>(
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<T, Problem> {
    if body.is_empty() {
        return Ok(T::default());
    }
    ApiJson::<T>::parse(headers, body).map(|ApiJson(t)| t)
}

/// `POST /api/v1/me/{firm_id}/totp`: a TOTP secret to enrol (replacing
/// one needs `current_password`).
pub async fn totp_begin(
    State(shared): State<Arc<AppState>>,
    Authz(auth): Authz<perm::Account>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<TotpView>, Problem> {
    let b: CurrentPasswordBody = optional_body(&headers, &body)?;
    let t = shared
        .people
        .clone()
        .totp_begin(auth, b.current_password)
        .await?;
    Ok(Json(t.into()))
}

/// `POST /api/v1/me/{firm_id}/totp/confirm`: a code makes it count.
pub async fn totp_confirm(
    State(shared): State<Arc<AppState>>,
    Authz(auth): Authz<perm::Account>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<RecoveryCodes>, Problem> {
    let ApiJson(b) = ApiJson::<CodeBody>::parse(&headers, &body)?;
    let svc = shared.people.clone();
    Ok(Json(codes(
        blocking(move || svc.totp_confirm(&auth, &b.code)).await?,
    )))
}

/// `POST /api/v1/me/{firm_id}/recovery-codes`: ten new ones.
pub async fn recovery_codes(
    State(shared): State<Arc<AppState>>,
    Authz(auth): Authz<perm::Account>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<RecoveryCodes>, Problem> {
    let ApiJson(b) = ApiJson::<ReauthBody>::parse(&headers, &body)?;
    Ok(Json(codes(
        shared
            .people
            .clone()
            .regenerate_recovery_codes(auth, Some(b.current_password))
            .await?,
    )))
}
