//! Users: invitation and administration. Every change takes the policy's
//! proof for exactly what it does; nobody invites, changes or removes a
//! user more powerful than themselves (the rule keys follow). Changes that
//! alter what a user may do revoke their sessions in the same transaction.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use super::{OneTime, People, UserView, grants_of, new_token};
use crate::audit::trail::{AdminActor, Outcome};
use crate::auth::keys::{escalation_check, list_json};
use crate::auth::policy::{Authorized, Overrides, Permission, perm};
use crate::auth::{Principal, Role};
use crate::clock::rfc3339;
use crate::crypto::keyring;
use crate::firms::{FirmError, validate_name};
use crate::ids::{FirmId, UserId};
use crate::store::firm::{UserRow, WriteTx};

/// Who to invite.
#[derive(Debug)]
pub struct NewUser {
    pub login: String,
    pub display_name: String,
    pub role: Role,
    pub overrides: Overrides,
}

/// An invited user and their one-time enrolment token.
#[derive(Debug)]
pub struct Invitation {
    pub user: UserView,
    pub token: OneTime,
    pub expires_at: String,
}

/// A change to a user (`None`: unchanged).
#[derive(Debug, Default)]
pub struct UserChange {
    pub display_name: Option<String>,
    pub role: Option<Role>,
    pub allow: Option<BTreeSet<Permission>>,
    pub deny: Option<BTreeSet<Permission>>,
}

/// What the audit log records for a user id from a URL: the id if it is
/// one, never raw client input.
pub(crate) fn audit_resource(user: &str) -> String {
    UserId::parse(user).map_or_else(|| "<invalid user id>".to_owned(), |u| u.to_string())
}

/// Reads `id` inside the write, applies `f`, stores it: so a change never
/// overwrites a concurrent one (a sign-in's counters, say).
pub(crate) fn mutate(
    tx: &WriteTx<'_>,
    id: &str,
    f: impl Fn(&mut UserRow) -> Result<(), FirmError>,
) -> Result<UserRow, FirmError> {
    let mut u = tx.read().user(id)?.ok_or(FirmError::UserNotFound)?;
    f(&mut u)?;
    tx.put_user(&u)?;
    Ok(u)
}

impl People {
    fn user_row(&self, firm: &FirmId, user: &str) -> Result<UserRow, FirmError> {
        let id = UserId::parse(user).ok_or(FirmError::UserNotFound)?;
        let h = self.pool.handle(firm)?;
        h.db.read_short(|r| r.user(id.as_str()))?
            .ok_or(FirmError::UserNotFound)
    }

    /// The user a change acts on, once the caller is shown to hold at
    /// least as much power as they do.
    fn target(&self, firm: &FirmId, caller: &Principal, user: &str) -> Result<UserRow, FirmError> {
        let row = self.user_row(firm, user)?;
        let (role, overrides) = grants_of(&row)?;
        escalation_check(caller, role, &overrides)?;
        Ok(row)
    }

    fn view_in(&self, firm: &FirmId, u: &UserRow) -> Result<UserView, FirmError> {
        let h = self.pool.handle(firm)?;
        self.view(u, self.mfa_policy(&h)?)
    }

    /// Invites a user: their row (state `invited`) and a one-time
    /// enrolment token, valid for `invitation_ttl`.
    pub fn invite(
        &self,
        auth: &Authorized<perm::UsersInvite>,
        new: NewUser,
    ) -> Result<Invitation, FirmError> {
        let login = super::normalise_login(&new.login)?;
        let display_name = validate_name(&new.display_name)
            .map_err(|e| FirmError::Invalid(format!("display_name: {e}")))?
            .to_owned();
        let details = json!({
            "login": login,
            "role": new.role,
            "allow": new.overrides.allow_names(),
            "deny": new.overrides.deny_names(),
        });
        self.trail
            .change(auth, "users.invite", "", details.clone(), |c| {
                escalation_check(auth.principal(), new.role, &new.overrides)?;
                let id = UserId::generate()?;
                let (secret, token) = new_token(super::ENROLMENT_PREFIX, auth.firm(), id.hex())?;
                let now = self.pool.clock.now();
                let expires_at = rfc3339(now + self.cfg.invitation_ttl);
                let row = UserRow {
                    id: id.to_string(),
                    login: login.clone(),
                    display_name: display_name.clone(),
                    role: new.role.as_str().to_owned(),
                    allow: list_json(&new.overrides.allow_names()),
                    deny: list_json(&new.overrides.deny_names()),
                    state: "invited".to_owned(),
                    password: None,
                    totp: None,
                    totp_pending: None,
                    totp_last_step: 0,
                    recovery: "[]".to_owned(),
                    invite_mac: Some(
                        keyring::credential_mac(
                            &c.h.auth_key,
                            "enrolment",
                            id.as_str(),
                            secret.reveal().as_bytes(),
                        )
                        .to_vec(),
                    ),
                    invite_expires_at: Some(expires_at.clone()),
                    failed_signins: 0,
                    lockouts: 0,
                    locked_until: None,
                    created_at: rfc3339(now),
                    created_by: Some(auth.principal().actor.label()),
                    updated_at: rfc3339(now),
                    last_signin_at: None,
                };
                let stored = row.clone();
                c.commit(id.as_str(), details.clone(), move |tx| {
                    tx.put_user(&stored).map_err(|e| match e {
                        crate::store::StoreError::Exists => FirmError::LoginTaken,
                        other => other.into(),
                    })
                })?;
                Ok(Invitation {
                    user: self.view(&row, self.mfa_policy(&c.h)?)?,
                    token,
                    expires_at,
                })
            })
    }

    /// A new enrolment token for a user, who goes back to `invited`: their
    /// password, second factor and sessions are gone. How an admin helps
    /// someone who lost their password.
    /// Needs `users:update`, not just `users:invite`: it wipes an
    /// existing user's credentials.
    pub fn reinvite(
        &self,
        auth: &Authorized<perm::UsersUpdate>,
        user: &str,
    ) -> Result<Invitation, FirmError> {
        let resource = audit_resource(user);
        self.trail
            .change(auth, "users.reinvite", &resource, json!({}), |c| {
                let row = self.target(auth.firm(), auth.principal(), user)?;
                let (secret, token) =
                    new_token(super::ENROLMENT_PREFIX, auth.firm(), &row.id[4..])?;
                let mac = keyring::credential_mac(
                    &c.h.auth_key,
                    "enrolment",
                    &row.id,
                    secret.reveal().as_bytes(),
                )
                .to_vec();
                let now = self.pool.clock.now();
                let expires_at = rfc3339(now + self.cfg.invitation_ttl);
                let (id, exp, at) = (row.id.clone(), expires_at.clone(), rfc3339(now));
                let done = c.commit(&row.id, json!({}), move |tx| {
                    tx.revoke_sessions_of(&id, None, &at)?;
                    mutate(tx, &id, |u| {
                        u.state = "invited".to_owned();
                        u.password = None;
                        u.totp = None;
                        u.totp_pending = None;
                        u.recovery = "[]".to_owned();
                        u.invite_mac = Some(mac.clone());
                        u.invite_expires_at = Some(exp.clone());
                        u.failed_signins = 0;
                        u.locked_until = None;
                        u.updated_at = at.clone();
                        Ok(())
                    })
                });
                c.h.sessions.invalidate();
                let row = done?;
                Ok(Invitation {
                    user: self.view(&row, self.mfa_policy(&c.h)?)?,
                    token,
                    expires_at,
                })
            })
    }

    pub fn list_users(
        &self,
        auth: &Authorized<perm::UsersRead>,
    ) -> Result<Vec<UserView>, FirmError> {
        let h = self.pool.handle(auth.firm())?;
        let policy = self.mfa_policy(&h)?;
        let rows = h.db.read_blocking(|r| r.users())?;
        rows.iter().map(|u| self.view(u, policy)).collect()
    }

    pub fn show_user(
        &self,
        auth: &Authorized<perm::UsersRead>,
        user: &str,
    ) -> Result<UserView, FirmError> {
        self.view_in(auth.firm(), &self.user_row(auth.firm(), user)?)
    }

    /// Changes a user's display name, role or overrides. A change of role
    /// or overrides revokes the user's sessions in the same transaction.
    pub fn update_user(
        &self,
        auth: &Authorized<perm::UsersUpdate>,
        user: &str,
        change: UserChange,
    ) -> Result<UserView, FirmError> {
        let resource = audit_resource(user);
        let display_name = match &change.display_name {
            Some(n) => Some(
                validate_name(n)
                    .map_err(|e| FirmError::Invalid(format!("display_name: {e}")))?
                    .to_owned(),
            ),
            None => None,
        };
        let details = json!({
            "display_name": display_name,
            "role": change.role,
            "allow": change.allow.as_ref().map(|a| a.iter().map(|p| p.as_str()).collect::<Vec<_>>()),
            "deny": change.deny.as_ref().map(|d| d.iter().map(|p| p.as_str()).collect::<Vec<_>>()),
        });
        self.trail
            .change(auth, "users.update", &resource, details.clone(), |c| {
                let row = self.target(auth.firm(), auth.principal(), user)?;
                let (role, overrides) = grants_of(&row)?;
                let new_role = change.role.unwrap_or(role);
                let new_overrides = Overrides {
                    allow: change.allow.clone().unwrap_or(overrides.allow.clone()),
                    deny: change.deny.clone().unwrap_or(overrides.deny.clone()),
                };
                // Security invariant: nobody gives a user more power than they hold.
                escalation_check(auth.principal(), new_role, &new_overrides)?;
                let power_changed = new_role != role || new_overrides != overrides;
                let at = self.pool.now();
                let id = row.id.clone();
                let (allow, deny) = (
                    list_json(&new_overrides.allow_names()),
                    list_json(&new_overrides.deny_names()),
                );
                let name = display_name.clone();
                let mut d = details.clone();
                d["sessions_revoked"] = json!(power_changed);
                let done = c.commit(&row.id, d, move |tx| {
                    if power_changed {
                        tx.revoke_sessions_of(&id, None, &at)?;
                    }
                    mutate(tx, &id, |u| {
                        if let Some(n) = &name {
                            u.display_name = n.clone();
                        }
                        u.role = new_role.as_str().to_owned();
                        u.allow = allow.clone();
                        u.deny = deny.clone();
                        u.updated_at = at.clone();
                        Ok(())
                    })
                });
                c.h.sessions.invalidate();
                self.view(&done?, self.mfa_policy(&c.h)?)
            })
    }

    /// Disables, enables, unlocks or resets the second factor of a user.
    pub fn set_user_state(
        &self,
        auth: &Authorized<perm::UsersUpdate>,
        user: &str,
        op: StateOp,
    ) -> Result<UserView, FirmError> {
        let resource = audit_resource(user);
        self.trail
            .change(auth, op.action(), &resource, json!({}), |c| {
                let row = self.target(auth.firm(), auth.principal(), user)?;
                let at = self.pool.now();
                let id = row.id.clone();
                let done = c.commit(&row.id, json!({}), move |tx| apply_state(tx, &id, op, &at));
                c.h.sessions.invalidate();
                self.view(&done?, self.mfa_policy(&c.h)?)
            })
    }

    /// Deletes a user and their sessions. Their audit history stays.
    pub fn delete_user(
        &self,
        auth: &Authorized<perm::UsersDelete>,
        user: &str,
    ) -> Result<(), FirmError> {
        let resource = audit_resource(user);
        self.trail
            .change(auth, "users.delete", &resource, json!({}), |c| {
                let row = self.target(auth.firm(), auth.principal(), user)?;
                let id = row.id.clone();
                let details = json!({ "login": row.login });
                let done = c.commit(&row.id, details, move |tx| {
                    if tx.delete_user(&id)? {
                        Ok(())
                    } else {
                        Err(FirmError::UserNotFound)
                    }
                });
                c.h.sessions.invalidate();
                done
            })
    }

    /// Break-glass over the admin socket: the operator acts on a user of
    /// any firm. Recorded in the firm's log (same transaction) and, by the
    /// admin server, in the system log.
    pub fn admin_set_state(
        &self,
        firm: &FirmId,
        user: &str,
        op: StateOp,
        by: &AdminActor,
    ) -> Result<UserView, FirmError> {
        self.pool.require_writable(firm)?;
        let h = self.pool.handle(firm)?;
        let row = self.user_row(firm, user)?;
        let entry = self.trail.sealed_entry(
            &h,
            &by.label(),
            &crate::auth::Origin {
                request_id: by.request_id.clone(),
                source_ip: "admin-socket".to_owned(),
            },
            "allow",
            "admin_socket".to_owned(),
            op.action(),
            &row.id,
            Outcome::Success,
            json!({ "login": row.login }),
        )?;
        let at = self.pool.now();
        let id = row.id.clone();
        let done = h.db.write_with(move |tx| {
            let u = apply_state(tx, &id, op, &at)?;
            tx.append_audit(entry.clone())?;
            Ok::<_, FirmError>(u)
        });
        h.sessions.invalidate();
        self.view(&done?, self.mfa_policy(&h)?)
    }

    pub fn admin_list(&self, firm: &FirmId) -> Result<Vec<UserView>, FirmError> {
        let h = self.pool.handle(firm)?;
        let policy = self.mfa_policy(&h)?;
        let rows = h.db.read_blocking(|r| r.users())?;
        rows.iter().map(|u| self.view(u, policy)).collect()
    }

    pub fn admin_show(&self, firm: &FirmId, user: &str) -> Result<Value, FirmError> {
        let row = self.user_row(firm, user)?;
        let h = self.pool.handle(firm)?;
        let sessions = self.session_views(&h, &row.id, None)?;
        Ok(json!({ "user": self.view_in(firm, &row)?, "sessions": sessions }))
    }
}

/// The state changes an admin makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateOp {
    /// No sign-in; every session revoked.
    Disable,
    /// Back to active (or invited, if never enrolled).
    Enable,
    /// Ends a lockout and clears the failure count.
    Unlock,
    /// Removes TOTP and recovery codes; sessions revoked. The user enrols
    /// again at their next sign-in if the firm requires it.
    ResetMfa,
}

impl StateOp {
    pub fn action(self) -> &'static str {
        match self {
            StateOp::Disable => "users.disable",
            StateOp::Enable => "users.enable",
            StateOp::Unlock => "users.unlock",
            StateOp::ResetMfa => "users.reset_mfa",
        }
    }
}

fn apply_state(tx: &WriteTx<'_>, id: &str, op: StateOp, at: &str) -> Result<UserRow, FirmError> {
    if matches!(op, StateOp::Disable | StateOp::ResetMfa) {
        tx.revoke_sessions_of(id, None, at)?;
    }
    mutate(tx, id, |u| {
        match op {
            StateOp::Disable => u.state = "disabled".to_owned(),
            StateOp::Enable => {
                if u.state != "disabled" {
                    return Err(FirmError::UserState(format!(
                        "only a disabled user can be enabled; this one is {}",
                        u.state
                    )));
                }
                u.state = if u.password.is_some() && u.invite_mac.is_none() {
                    "active"
                } else {
                    "invited"
                }
                .to_owned();
            }
            StateOp::Unlock => {
                u.locked_until = None;
                u.failed_signins = 0;
                u.lockouts = 0;
            }
            StateOp::ResetMfa => {
                u.totp = None;
                u.totp_pending = None;
                u.recovery = "[]".to_owned();
            }
        }
        u.updated_at = at.to_owned();
        Ok(())
    })
}
