//! API keys and access control through the real daemon: the route ×
//! credential matrix, rotation and revocation, overrides and escalation.

use std::time::Duration;

use serde_json::{Value, json};

use crate::client::Response;
use crate::firms::{Firm, create_firm};
use crate::harness::{Daemon, ctl};

fn call(
    d: &Daemon,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> Response {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers: Vec<(&str, &str)> = Vec::new();
    if let Some(a) = auth.as_deref() {
        headers.push(("Authorization", a));
    }
    let body = body.map(|b| b.to_string());
    if body.is_some() {
        headers.push(("Content-Type", "application/json"));
    }
    // Records are replaced and patched at the version just created.
    if path.contains("/api/v1/records/") && matches!(method, "PUT" | "PATCH") {
        headers.push(("If-Match", "\"1\""));
    }
    d.client()
        .request(method, path, &headers, body.as_deref().map(str::as_bytes))
}

struct Key {
    id: String,
    token: String,
}

fn mint(d: &Daemon, firm: &Firm, token: &str, body: Value) -> Key {
    let r = call(
        d,
        "POST",
        &format!("/api/v1/keys/{}", firm.id),
        Some(token),
        Some(&body),
    );
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    Key {
        id: v["id"].as_str().unwrap().to_owned(),
        token: v["secret"].as_str().unwrap().to_owned(),
    }
}

fn mint_role(d: &Daemon, firm: &Firm, role: &str) -> Key {
    mint(
        d,
        firm,
        &firm.token,
        json!({"name": format!("{role} key"), "role": role}),
    )
}

fn code(r: &Response) -> String {
    r.json()["code"].as_str().unwrap_or("").to_owned()
}

fn without_request_id(r: &Response) -> Value {
    let mut v = r.json();
    v.as_object_mut().unwrap().remove("request_id");
    v
}

/// A disabled endpoint at an allowed loopback port nobody listens on:
/// nothing is ever sent to it.
static WEBHOOK: std::sync::LazyLock<Value> = std::sync::LazyLock::new(
    || json!({"url": "https://127.0.0.1:9/hook", "events": ["*"], "enabled": false}),
);

/// The API routes, as the README documents them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    GetFirm,
    PatchFirm,
    MintKey,
    ListKeys,
    ShowKey,
    RotateKey,
    RevokeKey,
    ListAudit,
    VerifyAudit,
    InclusionProof,
    ConsistencyProof,
    Checkpoint,
    Evidence,
    Subject,
    Erase,
    VerifierKey,
    Export,
    ListSecrets,
    PutSecret,
    ShowSecret,
    DeleteSecret,
    VerifySecret,
    PutCollection,
    GetCollection,
    CreateRecord,
    ListRecords,
    GetRecord,
    ReplaceRecord,
    PatchRecord,
    DeleteRecord,
    InviteUser,
    ListUsers,
    ShowUser,
    UpdateUser,
    DeleteUser,
    Reinvite,
    DisableUser,
    EnableUser,
    UnlockUser,
    ResetMfa,
    UserSessions,
    RevokeUserSessions,
    MySessions,
    SignOutEverywhere,
    SignOut,
    Refresh,
    Me,
    ChangePassword,
    TotpBegin,
    TotpConfirm,
    RecoveryCodes,
    CreateWebhook,
    ListWebhooks,
    ShowWebhook,
    UpdateWebhook,
    DeleteWebhook,
    RotateWebhook,
    WebhookAttempts,
    RedeliverWebhookMessage,
    RedeliverFailedWebhooks,
    TestWebhook,
}

const ROUTES: [Route; 61] = [
    Route::GetFirm,
    Route::PatchFirm,
    Route::MintKey,
    Route::ListKeys,
    Route::ShowKey,
    Route::RotateKey,
    Route::RevokeKey,
    Route::ListAudit,
    Route::VerifyAudit,
    Route::InclusionProof,
    Route::ConsistencyProof,
    Route::Checkpoint,
    Route::Evidence,
    Route::Subject,
    Route::Erase,
    Route::VerifierKey,
    Route::Export,
    Route::ListSecrets,
    Route::PutSecret,
    Route::ShowSecret,
    Route::DeleteSecret,
    Route::VerifySecret,
    Route::PutCollection,
    Route::GetCollection,
    Route::CreateRecord,
    Route::ListRecords,
    Route::GetRecord,
    Route::ReplaceRecord,
    Route::PatchRecord,
    Route::DeleteRecord,
    Route::InviteUser,
    Route::ListUsers,
    Route::ShowUser,
    Route::UpdateUser,
    Route::DeleteUser,
    Route::Reinvite,
    Route::DisableUser,
    Route::EnableUser,
    Route::UnlockUser,
    Route::ResetMfa,
    Route::UserSessions,
    Route::RevokeUserSessions,
    Route::MySessions,
    Route::SignOutEverywhere,
    Route::SignOut,
    Route::Refresh,
    Route::Me,
    Route::ChangePassword,
    Route::TotpBegin,
    Route::TotpConfirm,
    Route::RecoveryCodes,
    Route::CreateWebhook,
    Route::ListWebhooks,
    Route::ShowWebhook,
    Route::UpdateWebhook,
    Route::DeleteWebhook,
    Route::RotateWebhook,
    Route::WebhookAttempts,
    Route::RedeliverWebhookMessage,
    Route::RedeliverFailedWebhooks,
    Route::TestWebhook,
];

impl Route {
    fn method(self) -> &'static str {
        match self {
            Route::GetFirm
            | Route::ListKeys
            | Route::ShowKey
            | Route::ListAudit
            | Route::VerifyAudit
            | Route::InclusionProof
            | Route::ConsistencyProof
            | Route::Checkpoint
            | Route::Evidence
            | Route::Subject
            | Route::VerifierKey
            | Route::Export
            | Route::ListSecrets
            | Route::ShowSecret
            | Route::GetCollection
            | Route::ListRecords
            | Route::GetRecord
            | Route::ListUsers
            | Route::ShowUser
            | Route::UserSessions
            | Route::MySessions
            | Route::ListWebhooks
            | Route::ShowWebhook
            | Route::WebhookAttempts
            | Route::Me => "GET",
            Route::PatchFirm | Route::PatchRecord | Route::UpdateUser | Route::UpdateWebhook => {
                "PATCH"
            }
            Route::MintKey
            | Route::RotateKey
            | Route::VerifySecret
            | Route::CreateRecord
            | Route::Erase
            | Route::InviteUser
            | Route::Reinvite
            | Route::DisableUser
            | Route::EnableUser
            | Route::UnlockUser
            | Route::ResetMfa
            | Route::Refresh
            | Route::ChangePassword
            | Route::TotpBegin
            | Route::TotpConfirm
            | Route::RecoveryCodes
            | Route::CreateWebhook
            | Route::RotateWebhook
            | Route::RedeliverWebhookMessage
            | Route::RedeliverFailedWebhooks
            | Route::TestWebhook => "POST",
            Route::RevokeKey
            | Route::DeleteWebhook
            | Route::DeleteSecret
            | Route::DeleteRecord
            | Route::DeleteUser
            | Route::RevokeUserSessions
            | Route::SignOutEverywhere
            | Route::SignOut => "DELETE",
            Route::PutSecret | Route::PutCollection | Route::ReplaceRecord => "PUT",
        }
    }

    fn path(self, firm: &str, key: &str) -> String {
        match self {
            Route::GetFirm | Route::PatchFirm => format!("/api/v1/firms/{firm}"),
            Route::MintKey | Route::ListKeys => format!("/api/v1/keys/{firm}"),
            Route::ShowKey | Route::RevokeKey => format!("/api/v1/keys/{firm}/{key}"),
            Route::RotateKey => format!("/api/v1/keys/{firm}/{key}/rotate"),
            Route::ListAudit => format!("/api/v1/audit/{firm}"),
            Route::VerifyAudit => format!("/api/v1/audit/{firm}/verify"),
            Route::InclusionProof => format!("/api/v1/audit/{firm}/proof/inclusion?seq=0"),
            Route::ConsistencyProof => format!("/api/v1/audit/{firm}/proof/consistency?from=1"),
            Route::Checkpoint => format!("/api/v1/audit/{firm}/checkpoint"),
            Route::VerifierKey => format!("/api/v1/audit/{firm}/verifier-key"),
            Route::Evidence => format!("/api/v1/evidence/{firm}"),
            Route::Subject => format!("/api/v1/subjects/{firm}?value=Ann"),
            Route::Erase => format!("/api/v1/erasure/{firm}"),
            Route::Export => format!("/api/v1/audit/{firm}/export"),
            // Secrets are named after the fresh target key: one per call.
            Route::ListSecrets => format!("/api/v1/secrets/{firm}"),
            Route::PutSecret | Route::ShowSecret | Route::DeleteSecret => {
                format!("/api/v1/secrets/{firm}/{key}")
            }
            Route::VerifySecret => format!("/api/v1/secrets/{firm}/{key}/verify"),
            // The collection is `matrix`; a schema change names its own.
            Route::PutCollection => format!("/api/v1/collections/{firm}/c{}", &key[4..]),
            Route::GetCollection => format!("/api/v1/collections/{firm}/matrix"),
            Route::CreateRecord | Route::ListRecords => format!("/api/v1/records/{firm}/matrix"),
            Route::GetRecord | Route::ReplaceRecord | Route::PatchRecord | Route::DeleteRecord => {
                format!("/api/v1/records/{firm}/matrix/{key}")
            }
            // The target is a fresh user (or, for SignOut, a session).
            Route::InviteUser | Route::ListUsers => format!("/api/v1/users/{firm}"),
            Route::ShowUser | Route::UpdateUser | Route::DeleteUser => {
                format!("/api/v1/users/{firm}/{key}")
            }
            Route::Reinvite => format!("/api/v1/users/{firm}/{key}/invitation"),
            Route::DisableUser => format!("/api/v1/users/{firm}/{key}/disable"),
            Route::EnableUser => format!("/api/v1/users/{firm}/{key}/enable"),
            Route::UnlockUser => format!("/api/v1/users/{firm}/{key}/unlock"),
            Route::ResetMfa => format!("/api/v1/users/{firm}/{key}/reset-mfa"),
            Route::UserSessions | Route::RevokeUserSessions => {
                format!("/api/v1/users/{firm}/{key}/sessions")
            }
            Route::MySessions | Route::SignOutEverywhere => format!("/api/v1/sessions/{firm}"),
            Route::SignOut => format!("/api/v1/sessions/{firm}/{key}"),
            Route::Refresh => format!("/api/v1/sessions/{firm}/refresh"),
            Route::Me => format!("/api/v1/me/{firm}"),
            Route::ChangePassword => format!("/api/v1/me/{firm}/password"),
            Route::TotpBegin => format!("/api/v1/me/{firm}/totp"),
            Route::TotpConfirm => format!("/api/v1/me/{firm}/totp/confirm"),
            Route::RecoveryCodes => format!("/api/v1/me/{firm}/recovery-codes"),
            // The target is a fresh (disabled) endpoint.
            Route::CreateWebhook | Route::ListWebhooks => format!("/api/v1/webhooks/{firm}"),
            Route::ShowWebhook | Route::UpdateWebhook | Route::DeleteWebhook => {
                format!("/api/v1/webhooks/{firm}/{key}")
            }
            Route::RotateWebhook => format!("/api/v1/webhooks/{firm}/{key}/rotate"),
            Route::WebhookAttempts => format!("/api/v1/webhooks/{firm}/{key}/attempts"),
            Route::RedeliverWebhookMessage => format!(
                "/api/v1/webhooks/{firm}/{key}/messages/msg_000000000000000000000000/redeliver"
            ),
            Route::RedeliverFailedWebhooks => format!("/api/v1/webhooks/{firm}/{key}/redeliver"),
            Route::TestWebhook => format!("/api/v1/webhooks/{firm}/{key}/test"),
        }
    }

    /// Routes that act on an existing user (a fresh invited viewer).
    fn needs_user(self) -> bool {
        matches!(
            self,
            Route::ShowUser
                | Route::UpdateUser
                | Route::DeleteUser
                | Route::Reinvite
                | Route::DisableUser
                | Route::EnableUser
                | Route::UnlockUser
                | Route::ResetMfa
                | Route::UserSessions
                | Route::RevokeUserSessions
        )
    }

    /// Routes only a person has (`account:self`).
    fn personal(self) -> bool {
        matches!(
            self,
            Route::MySessions
                | Route::SignOutEverywhere
                | Route::SignOut
                | Route::Refresh
                | Route::Me
                | Route::ChangePassword
                | Route::TotpBegin
                | Route::TotpConfirm
                | Route::RecoveryCodes
        )
    }

    /// Routes that act on an existing record (whose id replaces the key's).
    fn needs_record(self) -> bool {
        matches!(
            self,
            Route::GetRecord | Route::ReplaceRecord | Route::PatchRecord | Route::DeleteRecord
        )
    }

    /// Routes that act on an existing webhook endpoint.
    fn needs_webhook(self) -> bool {
        matches!(
            self,
            Route::ShowWebhook
                | Route::UpdateWebhook
                | Route::DeleteWebhook
                | Route::RotateWebhook
                | Route::WebhookAttempts
                | Route::RedeliverWebhookMessage
                | Route::RedeliverFailedWebhooks
                | Route::TestWebhook
        )
    }

    /// Routes that act on an existing secret named after the target key.
    fn needs_secret(self) -> bool {
        matches!(
            self,
            Route::ShowSecret | Route::DeleteSecret | Route::VerifySecret
        )
    }

    fn body(self) -> Option<Value> {
        match self {
            Route::PatchFirm => Some(json!({"display_name": "Matrix"})),
            Route::MintKey => Some(json!({"name": "minted", "role": "viewer"})),
            Route::PutSecret | Route::VerifySecret => Some(json!({"value": "matrix-value"})),
            Route::PutCollection => Some(json!({"fields": {"title": {"type": "string"}}})),
            Route::CreateRecord | Route::ReplaceRecord | Route::PatchRecord => {
                Some(json!({"title": "matrix"}))
            }
            Route::InviteUser => Some(json!({"login": "m", "display_name": "M", "role": "viewer"})),
            Route::UpdateUser => Some(json!({"display_name": "Matrix"})),
            Route::ChangePassword => Some(
                json!({"current_password": crate::people::PASSWORD, "new_password": crate::people::PASSWORD}),
            ),
            Route::TotpConfirm => Some(json!({"code": "000000"})),
            Route::Erase => Some(json!({"values": ["Nobody Held"]})),
            Route::RecoveryCodes => Some(json!({"current_password": crate::people::PASSWORD})),
            Route::CreateWebhook => Some(WEBHOOK.clone()),
            Route::UpdateWebhook => Some(json!({"description": "Matrix"})),
            Route::RedeliverFailedWebhooks => Some(json!({"since": "2000-01-01T00:00:00Z"})),
            _ => None,
        }
    }

    /// The documented success status, for a role the matrix allows.
    fn ok_status(self) -> u16 {
        match self {
            Route::MintKey
            | Route::RotateKey
            | Route::PutSecret
            | Route::PutCollection
            | Route::CreateRecord
            | Route::InviteUser
            | Route::Reinvite
            | Route::CreateWebhook
            | Route::RotateWebhook
            | Route::Refresh => 201,
            Route::TestWebhook => 202,
            // Allowed, then refused: no such message of the endpoint.
            Route::RedeliverWebhookMessage => 404,
            Route::DeleteSecret
            | Route::DeleteWebhook
            | Route::DeleteRecord
            | Route::DeleteUser
            | Route::SignOut
            | Route::ChangePassword => 204,
            // Allowed, then refused for what they are: a made-up code, and
            // recovery codes for a user without TOTP.
            Route::TotpConfirm => 422,
            Route::RecoveryCodes => 409,
            _ => 200,
        }
    }

    /// The documented matrix: does `role` get this route?
    fn allowed(self, role: &str) -> bool {
        match self {
            Route::GetFirm
            | Route::ListSecrets
            | Route::ShowSecret
            | Route::GetCollection
            | Route::ListRecords
            | Route::GetRecord => true,
            Route::VerifySecret
            | Route::CreateRecord
            | Route::ReplaceRecord
            | Route::PatchRecord
            | Route::DeleteRecord => role != "viewer",
            r if r.personal() => true,
            _ => matches!(role, "owner" | "admin"),
        }
    }
}

#[test]
fn route_by_credential_matrix_gives_the_documented_answers() {
    use crate::people::{PASSWORD, person, session, set_mfa_policy, sign_in};
    let d = crate::people::unthrottled("[webhooks]\nallow = [\"https://127.0.0.1:9\"]\n");
    let a = create_firm(&d, "Matrix Firm A");
    let b = create_firm(&d, "Matrix Firm B");
    // People sign in with a password only here (the TOTP flows have their own tests).
    set_mfa_policy(&d, &a, "optional");
    set_mfa_policy(&d, &b, "optional");

    // The expired key is minted first so that it has lapsed by the time it is used.
    let expires = time::OffsetDateTime::now_utc() + Duration::from_secs(2);
    let expires = expires
        .replace_nanosecond(0)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let expired = mint(
        &d,
        &a,
        &a.token,
        json!({"name": "short", "role": "owner", "expires_at": expires}),
    );
    assert_eq!(
        call(
            &d,
            "GET",
            &format!("/api/v1/firms/{}", a.id),
            Some(&expired.token),
            None
        )
        .status,
        200
    );

    let revoked = mint_role(&d, &a, "owner");
    let r = call(
        &d,
        "DELETE",
        &format!("/api/v1/keys/{}/{}", a.id, revoked.id),
        Some(&a.token),
        None,
    );
    assert_eq!(r.status, 200);
    let rotated_out = mint_role(&d, &a, "owner");
    let r = call(
        &d,
        "POST",
        &format!("/api/v1/keys/{}/{}/rotate", a.id, rotated_out.id),
        Some(&a.token),
        None,
    );
    assert_eq!(r.status, 201);
    const ROLES: [&str; 4] = ["owner", "admin", "operator", "viewer"];
    let roles: Vec<(&str, Key)> = ROLES
        .into_iter()
        .map(|role| (role, mint_role(&d, &a, role)))
        .collect();
    // A person of each role in each firm, and their sessions.
    let people: Vec<crate::people::Person> = ROLES
        .iter()
        .map(|role| person(&d, &a, role, &format!("{role}@a.test"), false))
        .collect();
    let mut sessions: Vec<String> = people.iter().map(|p| session(&d, &a, p)).collect();
    let foreign_sessions: Vec<String> = ROLES
        .iter()
        .map(|role| {
            let p = person(&d, &b, role, &format!("{role}@b.test"), false);
            session(&d, &b, &p)
        })
        .collect();
    let signed_out = session(&d, &a, &people[0]);
    let r = call(
        &d,
        "DELETE",
        &format!("/api/v1/sessions/{}/current", a.id),
        Some(&signed_out),
        None,
    );
    assert_eq!(r.status, 204);
    let malformed = format!("{}x", a.token);

    // Time passes on the daemon's clock, not the test's.
    d.advance_clock(5);
    assert_eq!(
        call(
            &d,
            "GET",
            &format!("/api/v1/firms/{}", a.id),
            Some(&expired.token),
            None,
        )
        .status,
        401,
        "the expiring key expired"
    );

    // The collection record routes work in.
    let r = call(
        &d,
        "PUT",
        &format!("/api/v1/collections/{}/matrix", a.id),
        Some(&a.token),
        Some(&json!({"fields": {"title": {"type": "string"}}})),
    );
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    // The id a route acts on: a fresh key's, a fresh record's or a fresh user's.
    let target_of = |route: Route| -> String {
        if route.needs_user() {
            let login = format!("t{}@a.test", mint_role(&d, &a, "viewer").id);
            let r = call(
                &d,
                "POST",
                &format!("/api/v1/users/{}", a.id),
                Some(&a.token),
                Some(&json!({"login": login, "display_name": "T", "role": "viewer"})),
            );
            assert_eq!(r.status, 201);
            let id = r.json()["user"]["id"].as_str().unwrap().to_owned();
            if matches!(route, Route::EnableUser) {
                let path = format!("/api/v1/users/{}/{id}/disable", a.id);
                assert_eq!(call(&d, "POST", &path, Some(&a.token), None).status, 200);
            }
            return id;
        }
        if route.needs_webhook() {
            let r = call(
                &d,
                "POST",
                &format!("/api/v1/webhooks/{}", a.id),
                Some(&a.token),
                Some(&WEBHOOK),
            );
            assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
            return r.json()["id"].as_str().unwrap().to_owned();
        }
        let key = mint_role(&d, &a, "viewer").id;
        if !route.needs_record() {
            return key;
        }
        let r = call(
            &d,
            "POST",
            &format!("/api/v1/records/{}/matrix", a.id),
            Some(&a.token),
            Some(&json!({"title": "t"})),
        );
        assert_eq!(r.status, 201);
        r.json()["id"].as_str().unwrap().to_owned()
    };

    let mut cells = 0;
    for route in ROUTES {
        // A target nobody cares about, fresh for each route that uses one.
        let target = target_of(route);
        let path = route.path(&a.id, &target);
        let body = route.body();
        let unauth: [(&str, Option<&str>); 6] = [
            ("no key", None),
            ("malformed key", Some(&malformed)),
            ("revoked key", Some(&revoked.token)),
            ("rotated-out key", Some(&rotated_out.token)),
            ("expired key", Some(&expired.token)),
            ("signed-out session", Some(&signed_out)),
        ];
        for (what, token) in unauth {
            let r = call(&d, route.method(), &path, token, body.as_ref());
            assert_eq!(r.status, 401, "{route:?} with {what}");
            assert_eq!(code(&r), "unauthenticated", "{route:?} with {what}");
            assert!(r.header("www-authenticate").unwrap().starts_with("Bearer"));
            cells += 1;
        }

        let foreign: Vec<(String, &str)> = std::iter::once((b.token.clone(), "owner key"))
            .chain(foreign_sessions.iter().cloned().zip(ROLES))
            .collect();
        for (token, what) in &foreign {
            let r = call(&d, route.method(), &path, Some(token), body.as_ref());
            assert_eq!(
                (r.status, code(&r).as_str()),
                (403, "forbidden_firm"),
                "{route:?} with firm B's {what}"
            );
            cells += 1;
        }

        for (i, (role, key)) in roles.iter().enumerate() {
            for as_person in [false, true] {
                // Each allowed write gets its own target, so rotate/revoke find it live.
                let mut target = target_of(route);
                let token = if as_person {
                    sessions[i].clone()
                } else {
                    key.token.clone()
                };
                if route == Route::SignOut {
                    // Another session of the same person, to sign out of.
                    target = if as_person {
                        let r = sign_in(&d, &a, &people[i].login, PASSWORD, None);
                        r.json()["session"]["id"].as_str().unwrap().to_owned()
                    } else {
                        "ses_0000000000000000".to_owned()
                    };
                }
                let path = route.path(&a.id, &target);
                if route.needs_secret() {
                    let put = call(
                        &d,
                        "PUT",
                        &Route::PutSecret.path(&a.id, &target),
                        Some(&a.token),
                        Some(&json!({"value": "matrix-value"})),
                    );
                    assert_eq!(put.status, 201);
                }
                let body = match route {
                    Route::InviteUser => Some(json!({
                        "login": format!("i{target}@a.test"), "display_name": "I", "role": "viewer"
                    })),
                    _ => body.clone(),
                };
                let r = call(&d, route.method(), &path, Some(&token), body.as_ref());
                let who = if as_person { "session" } else { "key" };
                if route.personal() && !as_person {
                    assert_eq!(
                        (r.status, code(&r).as_str()),
                        (403, "forbidden_credential"),
                        "{route:?} as a {role} key"
                    );
                } else if route.allowed(role) {
                    assert_eq!(
                        r.status,
                        route.ok_status(),
                        "{route:?} as {role} {who}: {}",
                        String::from_utf8_lossy(&r.body)
                    );
                } else {
                    assert_eq!(
                        (r.status, code(&r).as_str()),
                        (403, "forbidden_role"),
                        "{route:?} as {role} {who}"
                    );
                }
                // The routes that end the credential's own session: sign in again.
                if as_person && matches!(route, Route::SignOutEverywhere) {
                    sessions[i] = session(&d, &a, &people[i]);
                }
                if as_person && matches!(route, Route::Refresh) {
                    sessions[i] = r.json()["token"].as_str().unwrap().to_owned();
                }
                cells += 1;
            }
        }

        // A foreign firm that exists and one that does not answer alike.
        for token in [&b.token, &foreign_sessions[0]] {
            let foreign = call(
                &d,
                route.method(),
                &route.path(&a.id, &target),
                Some(token),
                body.as_ref(),
            );
            let nowhere = call(
                &d,
                route.method(),
                &route.path("frm_000000000000000000000000", &target),
                Some(token),
                body.as_ref(),
            );
            assert_eq!(foreign.status, nowhere.status, "{route:?}");
            assert_eq!(
                without_request_id(&foreign),
                without_request_id(&nowhere),
                "{route:?}"
            );
        }
    }
    assert_eq!(cells, ROUTES.len() * 19);
    // Every authenticated API route in the daemon's table is in this matrix.
    let api_routes = strongroom::http::route_table()
        .into_iter()
        .filter(|r| matches!(r.access, strongroom::http::Access::Firm(_)))
        .count();
    assert_eq!(api_routes, ROUTES.len());

    // Inside one's own firm, another firm's key id and a made-up one are both 404.
    let b_keys = call(
        &d,
        "GET",
        &format!("/api/v1/keys/{}", b.id),
        Some(&b.token),
        None,
    )
    .json();
    let b_key = b_keys["keys"][0]["id"].as_str().unwrap().to_owned();
    let theirs = call(
        &d,
        "GET",
        &format!("/api/v1/keys/{}/{b_key}", a.id),
        Some(&a.token),
        None,
    );
    let made_up = call(
        &d,
        "GET",
        &format!("/api/v1/keys/{}/key_0123456789abcdef", a.id),
        Some(&a.token),
        None,
    );
    assert_eq!(theirs.status, 404);
    assert_eq!(without_request_id(&theirs), without_request_id(&made_up));
}

#[test]
fn rotation_and_revocation_take_effect_on_the_very_next_request() {
    let d = Daemon::start();
    let a = create_firm(&d, "Rotation LLP");
    let firm_path = format!("/api/v1/firms/{}", a.id);
    let k = mint_role(&d, &a, "admin");
    assert_eq!(
        call(&d, "GET", &firm_path, Some(&k.token), None).status,
        200
    );

    let r = call(
        &d,
        "POST",
        &format!("/api/v1/keys/{}/{}/rotate", a.id, k.id),
        Some(&a.token),
        None,
    );
    assert_eq!(r.status, 201);
    let v = r.json();
    let new_token = v["secret"].as_str().unwrap().to_owned();
    let new_id = v["id"].as_str().unwrap().to_owned();
    assert_ne!(new_id, k.id, "rotation creates a new key");
    assert_eq!(v["role"], "admin");
    assert_eq!(v["name"], "admin key");
    assert_eq!(
        call(&d, "GET", &firm_path, Some(&k.token), None).status,
        401
    );
    assert_eq!(
        call(&d, "GET", &firm_path, Some(&new_token), None).status,
        200
    );
    let old = call(
        &d,
        "GET",
        &format!("/api/v1/keys/{}/{}", a.id, k.id),
        Some(&a.token),
        None,
    )
    .json();
    assert_eq!(old["state"], "revoked");
    assert_eq!(old["replaced_by"], new_id.as_str());
    // Rotating a rotated-out key again is refused, not a second replacement.
    let r = call(
        &d,
        "POST",
        &format!("/api/v1/keys/{}/{}/rotate", a.id, k.id),
        Some(&a.token),
        None,
    );
    assert_eq!((r.status, code(&r).as_str()), (409, "key_revoked"));

    let r = call(
        &d,
        "DELETE",
        &format!("/api/v1/keys/{}/{new_id}", a.id),
        Some(&a.token),
        None,
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["state"], "revoked");
    assert_eq!(
        call(&d, "GET", &firm_path, Some(&new_token), None).status,
        401
    );
    // Revoking again changes nothing and answers the same.
    let again = call(
        &d,
        "DELETE",
        &format!("/api/v1/keys/{}/{new_id}", a.id),
        Some(&a.token),
        None,
    );
    assert_eq!(again.status, 200);
    assert_eq!(again.json()["revoked_at"], r.json()["revoked_at"]);

    // The last live owner key cannot be revoked; with a second owner it can.
    let own = create_owner_id(&d, &a);
    let r = call(
        &d,
        "DELETE",
        &format!("/api/v1/keys/{}/{own}", a.id),
        Some(&a.token),
        None,
    );
    assert_eq!((r.status, code(&r).as_str()), (409, "last_owner_key"));
    let second = mint_role(&d, &a, "owner");
    let r = call(
        &d,
        "DELETE",
        &format!("/api/v1/keys/{}/{own}", a.id),
        Some(&second.token),
        None,
    );
    assert_eq!(r.status, 200);
    assert_eq!(
        call(&d, "GET", &firm_path, Some(&a.token), None).status,
        401
    );
}

/// The id of the firm's first owner key (the one `firm create` printed).
fn create_owner_id(d: &Daemon, a: &Firm) -> String {
    let v = call(
        d,
        "GET",
        &format!("/api/v1/keys/{}", a.id),
        Some(&a.token),
        None,
    )
    .json();
    v["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "initial owner key")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[test]
fn deny_beats_role_and_no_key_exceeds_its_minter() {
    let d = Daemon::start();
    let a = create_firm(&d, "Override & Co");
    let keys_path = format!("/api/v1/keys/{}", a.id);

    // Deny override beats the role's allow.
    let admin = mint(
        &d,
        &a,
        &a.token,
        json!({"name": "no reads", "role": "admin", "deny": ["keys:read"]}),
    );
    let r = call(&d, "GET", &keys_path, Some(&admin.token), None);
    assert_eq!((r.status, code(&r).as_str()), (403, "forbidden_override"));
    assert_eq!(
        call(
            &d,
            "GET",
            &format!("/api/v1/firms/{}", a.id),
            Some(&admin.token),
            None
        )
        .status,
        200
    );

    // An admin cannot mint an owner, nor hand out what it is denied.
    for body in [
        json!({"name": "up", "role": "owner"}),
        json!({"name": "sneak", "role": "viewer", "allow": ["keys:read"]}),
        json!({"name": "sneak2", "role": "operator", "deny": ["firm:read"], "allow": ["keys:read"]}),
    ] {
        let r = call(&d, "POST", &keys_path, Some(&admin.token), Some(&body));
        assert_eq!(
            (r.status, code(&r).as_str()),
            (403, "forbidden_escalation"),
            "{body}"
        );
    }
    // ... nor revoke or rotate (and so take over) an owner key.
    let owner2 = mint_role(&d, &a, "owner");
    for (m, p) in [
        ("DELETE", format!("{keys_path}/{}", owner2.id)),
        ("POST", format!("{keys_path}/{}/rotate", owner2.id)),
    ] {
        let r = call(&d, m, &p, Some(&admin.token), None);
        assert_eq!(
            (r.status, code(&r).as_str()),
            (403, "forbidden_escalation"),
            "{m} {p}"
        );
    }

    // An allow override grants; the key it mints stays within its own power.
    let viewer = mint(
        &d,
        &a,
        &a.token,
        json!({"name": "helper", "role": "viewer", "allow": ["keys:create"]}),
    );
    let v = call(
        &d,
        "POST",
        &keys_path,
        Some(&viewer.token),
        Some(&json!({"name": "child", "role": "viewer"})),
    );
    assert_eq!(v.status, 201, "{}", String::from_utf8_lossy(&v.body));
    assert_eq!(v.json()["created_by"], viewer.id.as_str());
    let r = call(
        &d,
        "POST",
        &keys_path,
        Some(&viewer.token),
        Some(&json!({"name": "c2", "role": "viewer", "allow": ["firm:update"]})),
    );
    assert_eq!((r.status, code(&r).as_str()), (403, "forbidden_escalation"));
    let r = call(
        &d,
        "POST",
        &keys_path,
        Some(&viewer.token),
        Some(&json!({"name": "c3", "role": "admin"})),
    );
    assert_eq!((r.status, code(&r).as_str()), (403, "forbidden_escalation"));

    // The decision and its rule are on the request's log line.
    // The line is written after the response; give it a moment to land.
    let mut logged = false;
    for _ in 0..100 {
        logged = d
            .stderr()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .any(|v| {
                v["decision"] == "deny_override"
                    && v["permission"] == "keys:read"
                    && v["actor"] == admin.id.as_str()
                    && v["firm"] == a.id.as_str()
                    && v["status"] == 403
            });
        if logged {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(logged, "no log line with the deny decision\n{}", d.logs());
}

#[test]
fn key_metadata_never_shows_secrets_and_bad_input_changes_nothing() {
    let d = Daemon::start();
    let a = create_firm(&d, "Metadata GmbH");
    let keys_path = format!("/api/v1/keys/{}", a.id);
    let k = mint(
        &d,
        &a,
        &a.token,
        json!({"name": "ops", "role": "operator", "deny": ["firm:update"], "allow": []}),
    );
    assert!(k.token.starts_with("sr_") && k.token.len() > 64);
    assert_eq!(
        call(
            &d,
            "GET",
            &format!("/api/v1/firms/{}", a.id),
            Some(&k.token),
            None
        )
        .status,
        200
    );

    let list = call(&d, "GET", &keys_path, Some(&a.token), None);
    assert_eq!(list.status, 200);
    let text = String::from_utf8_lossy(&list.body).to_string();
    let secret_part = k.token.rsplit('_').next().unwrap();
    assert!(!text.contains(secret_part), "a secret in the listing");
    assert!(!text.contains(a.token.rsplit('_').next().unwrap()));
    assert!(!text.contains("\"mac\""));
    let v = list.json();
    let keys = v["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 2);
    let ops = keys.iter().find(|x| x["id"] == k.id.as_str()).unwrap();
    assert_eq!(ops["role"], "operator");
    assert_eq!(ops["deny"], json!(["firm:update"]));
    assert_eq!(ops["state"], "active");
    assert!(ops["last_used_at"].is_string(), "last use recorded: {ops}");
    let shown = call(
        &d,
        "GET",
        &format!("{keys_path}/{}", k.id),
        Some(&a.token),
        None,
    )
    .json();
    assert_eq!(&shown, ops);
    assert!(shown.get("secret").is_none());

    let count = || {
        call(&d, "GET", &keys_path, Some(&a.token), None).json()["keys"]
            .as_array()
            .unwrap()
            .len()
    };
    let bad: [(Value, u16, &str); 7] = [
        (json!({"name": "x", "role": "root"}), 422, "invalid_field"),
        (
            json!({"name": "x", "role": "viewer", "allow": ["keys:everything"]}),
            422,
            "invalid_field",
        ),
        (
            json!({"name": "x", "role": "viewer", "expires_at": "tomorrow"}),
            422,
            "invalid_field",
        ),
        (
            json!({"name": "x", "role": "viewer", "expires_at": "2001-01-01T00:00:00Z"}),
            422,
            "invalid_field",
        ),
        (json!({"name": "", "role": "viewer"}), 422, "invalid_name"),
        (
            json!({"name": "x", "role": "viewer", "secret": "mine"}),
            400,
            "invalid_body",
        ),
        (json!({"role": "viewer"}), 400, "invalid_body"),
    ];
    for (body, status, c) in bad {
        let r = call(&d, "POST", &keys_path, Some(&a.token), Some(&body));
        assert_eq!((r.status, code(&r).as_str()), (status, c), "{body}");
    }
    let auth = format!("Bearer {}", a.token);
    let r = d.client().request(
        "POST",
        &keys_path,
        &[("Authorization", &auth), ("Content-Type", "text/plain")],
        Some(b"{}"),
    );
    assert_eq!(
        (r.status, code(&r).as_str()),
        (415, "unsupported_media_type")
    );
    let r = call(
        &d,
        "GET",
        &format!("{keys_path}/not-a-key"),
        Some(&a.token),
        None,
    );
    assert_eq!((r.status, code(&r).as_str()), (404, "key_not_found"));
    assert_eq!(count(), 2, "refused requests created nothing");

    // A frozen firm refuses key writes with 423 and still lists keys.
    assert!(
        ctl(&d.admin_socket, &["firm", "freeze", &a.id])
            .status
            .success()
    );
    let r = call(
        &d,
        "POST",
        &keys_path,
        Some(&a.token),
        Some(&json!({"name": "x", "role": "viewer"})),
    );
    assert_eq!((r.status, code(&r).as_str()), (423, "firm_frozen"));
    let r = call(
        &d,
        "DELETE",
        &format!("{keys_path}/{}", k.id),
        Some(&a.token),
        None,
    );
    assert_eq!(r.status, 423);
    assert_eq!(count(), 2);

    // A key's last use waits for the firm's next write (it is informational),
    // and is on disk by the time the daemon has stopped.
    let used = ops["last_used_at"].clone();
    let d = d.restart(crate::harness::Options::default());
    let list = call(&d, "GET", &keys_path, Some(&a.token), None).json();
    let ops = list["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["id"] == k.id.as_str())
        .unwrap()
        .clone();
    assert_eq!(ops["last_used_at"], used, "{ops}");
}

#[test]
fn the_last_managing_owner_key_stays_and_expiry_is_stored_in_utc() {
    let d = Daemon::start();
    let a = create_firm(&d, "Guard Rails");
    let keys_path = format!("/api/v1/keys/{}", a.id);
    let first = call(&d, "GET", &keys_path, Some(&a.token), None).json()["keys"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // An owner key that cannot manage keys does not count as a second owner.
    let crippled = mint(
        &d,
        &a,
        &a.token,
        json!({"name": "no revoke", "role": "owner", "deny": ["keys:revoke"]}),
    );
    let r = call(
        &d,
        "DELETE",
        &format!("{keys_path}/{first}"),
        Some(&a.token),
        None,
    );
    assert_eq!((r.status, code(&r).as_str()), (409, "last_owner_key"));
    // The crippled key can be revoked (the first one still manages).
    let r = call(
        &d,
        "DELETE",
        &format!("{keys_path}/{}", crippled.id),
        Some(&a.token),
        None,
    );
    assert_eq!(r.status, 200);

    // Expiry with an offset is stored in UTC.
    let later = time::OffsetDateTime::now_utc() + Duration::from_secs(3600);
    let in_plus5 = later
        .to_offset(time::UtcOffset::from_hms(5, 0, 0).unwrap())
        .replace_nanosecond(0)
        .unwrap();
    let text = in_plus5
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    assert!(text.ends_with("+05:00"), "{text}");
    let r = call(
        &d,
        "POST",
        &keys_path,
        Some(&a.token),
        Some(&json!({"name": "tz", "role": "viewer", "expires_at": text})),
    );
    assert_eq!(r.status, 201);
    let stored = r.json()["expires_at"].as_str().unwrap().to_owned();
    assert!(stored.ends_with('Z'), "{stored}");
    assert_eq!(
        time::OffsetDateTime::parse(&stored, &time::format_description::well_known::Rfc3339)
            .unwrap(),
        in_plus5
    );

    // A token pasted into a key-id path segment never reaches the audit log.
    let r = call(
        &d,
        "DELETE",
        &format!("{keys_path}/{}", a.token),
        Some(&a.token),
        None,
    );
    assert_eq!((r.status, code(&r).as_str()), (404, "key_not_found"));
    let log = call(
        &d,
        "GET",
        &format!("/api/v1/audit/{}?limit=500", a.id),
        Some(&a.token),
        None,
    );
    let text = String::from_utf8_lossy(&log.body);
    assert!(!text.contains(a.token.rsplit('_').next().unwrap()));
    assert!(text.contains("<invalid key id>"));
}
