//! Authorization: permissions, the role matrix, per-key overrides and the
//! one policy function every request goes through.
//!
//! `decide` is pure and deterministic: the same principal, permission and
//! firm always give the same [`Decision`], which names the rule that made it
//! (for the audit log and for the stable error code). A state-changing
//! service takes an [`Authorized<P>`], which only [`authorize`] can build, so
//! a write path that skips the check does not compile.

use std::collections::BTreeSet;
use std::fmt;
use std::marker::PhantomData;
use std::sync::OnceLock;

use super::{Principal, Role};
use crate::ids::FirmId;

macro_rules! permissions {
    ($( $variant:ident => $marker:ident, $name:literal, $doc:literal; )*) => {
        /// A permission, named `resource:action`.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum Permission {
            $( #[doc = $doc] $variant, )*
        }

        impl Permission {
            /// Every permission, in matrix order.
            pub const ALL: &'static [Permission] = &[$(Permission::$variant),*];

            pub fn as_str(self) -> &'static str {
                match self { $( Permission::$variant => $name, )* }
            }

            pub fn parse(s: &str) -> Option<Self> {
                match s { $( $name => Some(Permission::$variant), )* _ => None }
            }

            pub fn describe(self) -> &'static str {
                match self { $( Permission::$variant => $doc, )* }
            }
        }

        /// Type-level permissions: `Authorized<perm::KeysCreate>` proves that
        /// `keys:create` was granted.
        pub mod perm {
            pub trait Marker: Send + Sync + 'static {
                const PERMISSION: super::Permission;
            }
            $(
                #[doc = $doc]
                #[derive(Debug)]
                pub struct $marker;
                impl Marker for $marker {
                    const PERMISSION: super::Permission = super::Permission::$variant;
                }
            )*
        }
    };
}

permissions! {
    FirmRead => FirmRead, "firm:read", "read the firm's public info and profile";
    FirmUpdate => FirmUpdate, "firm:update", "change the firm's profile";
    KeysRead => KeysRead, "keys:read", "list API keys and read their metadata";
    KeysCreate => KeysCreate, "keys:create", "mint API keys (never more powerful than one's own)";
    KeysRotate => KeysRotate, "keys:rotate", "rotate an API key (a new key replaces it)";
    KeysRevoke => KeysRevoke, "keys:revoke", "revoke an API key";
    AuditRead => AuditRead, "audit:read", "read and verify the firm's audit log";
    SecretsRead => SecretsRead, "secrets:read", "list secrets and read their metadata (never a value)";
    SecretsWrite => SecretsWrite, "secrets:write", "write or rotate a secret's value";
    SecretsDelete => SecretsDelete, "secrets:delete", "destroy a secret";
    SecretsVerify => SecretsVerify, "secrets:verify", "check a presented value against a secret (yes or no)";
    CollectionsWrite => CollectionsWrite, "collections:write", "declare or change a collection's schema";
    RecordsRead => RecordsRead, "records:read", "read records and schemas (sensitive fields masked)";
    RecordsWrite => RecordsWrite, "records:write", "create, replace and patch records";
    RecordsDelete => RecordsDelete, "records:delete", "delete records";
    RecordsReadSensitive => RecordsReadSensitive, "records:read_sensitive", "see sensitive fields in clear (each read audited)";
    SubjectsErase => SubjectsErase, "subjects:erase", "erase a data subject: delete their records, destroy their key, certify it";
    UsersRead => UsersRead, "users:read", "list the firm's users and their sessions";
    UsersInvite => UsersInvite, "users:invite", "invite a user (never with more power than one's own)";
    UsersUpdate => UsersUpdate, "users:update", "change a user's role, overrides or state; unlock, reset MFA, revoke sessions";
    UsersDelete => UsersDelete, "users:delete", "delete a user";
    WebhooksRead => WebhooksRead, "webhooks:read", "list webhook endpoints and their delivery attempts (never a signing secret)";
    WebhooksWrite => WebhooksWrite, "webhooks:write", "create, change, delete and test webhook endpoints; rotate their secrets; redeliver";
    Account => Account, "account:self", "manage one's own password, second factor and sessions (people only)";
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for Permission {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// A permission's name, as API bodies spell it: the enum of every one.
impl utoipa::PartialSchema for Permission {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::schema::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .enum_values(Some(Permission::ALL.iter().map(|p| p.as_str())))
            .into()
    }
}

impl utoipa::ToSchema for Permission {}

/// What each role grants. Each role holds everything the roles below it hold.
pub fn role_grants(role: Role) -> &'static [Permission] {
    use Permission::*;
    match role {
        Role::Owner | Role::Admin => &[
            FirmRead,
            FirmUpdate,
            KeysRead,
            KeysCreate,
            KeysRotate,
            KeysRevoke,
            AuditRead,
            SecretsRead,
            SecretsWrite,
            SecretsDelete,
            SecretsVerify,
            CollectionsWrite,
            RecordsRead,
            RecordsWrite,
            RecordsDelete,
            RecordsReadSensitive,
            SubjectsErase,
            UsersRead,
            UsersInvite,
            UsersUpdate,
            UsersDelete,
            WebhooksRead,
            WebhooksWrite,
            Account,
        ],
        Role::Operator => &[
            FirmRead,
            SecretsRead,
            SecretsVerify,
            RecordsRead,
            RecordsWrite,
            RecordsDelete,
            Account,
        ],
        Role::Viewer => &[FirmRead, SecretsRead, RecordsRead, Account],
    }
}

/// The policy version: SHA-256 over the role matrix and the rule order, so
/// two daemons with the same version decide the same way.
pub fn policy_version() -> &'static str {
    static V: OnceLock<String> = OnceLock::new();
    V.get_or_init(|| {
        let mut text = String::from(
            "strongroom-policy/v1\nrules: tenant_scope,credential_kind,mfa_enrolment,deny_override,allow_override,role\n",
        );
        for role in [Role::Owner, Role::Admin, Role::Operator, Role::Viewer] {
            text.push_str(role.as_str());
            text.push(':');
            for p in role_grants(role) {
                text.push(' ');
                text.push_str(p.as_str());
            }
            text.push('\n');
        }
        let digest = crate::crypto::sha256(text.as_bytes());
        format!("sha256:{}", &crate::crypto::hex(&digest)[..16])
    })
}

/// A key's explicit allow and deny lists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    pub allow: BTreeSet<Permission>,
    pub deny: BTreeSet<Permission>,
}

impl Overrides {
    /// Parses the stored (or submitted) lists; `Err` names the unknown entry.
    pub fn parse<'a>(
        allow: impl IntoIterator<Item = &'a str>,
        deny: impl IntoIterator<Item = &'a str>,
    ) -> Result<Self, String> {
        let set = |items: &mut dyn Iterator<Item = &'a str>| {
            items
                .map(|s| Permission::parse(s).ok_or_else(|| s.to_owned()))
                .collect::<Result<BTreeSet<_>, _>>()
        };
        Ok(Self {
            allow: set(&mut allow.into_iter())?,
            deny: set(&mut deny.into_iter())?,
        })
    }

    pub fn allow_names(&self) -> Vec<&'static str> {
        self.allow.iter().map(|p| p.as_str()).collect()
    }

    pub fn deny_names(&self) -> Vec<&'static str> {
        self.deny.iter().map(|p| p.as_str()).collect()
    }
}

/// The rule that decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// The credential belongs to another firm (or the firm does not exist).
    TenantScope,
    /// The key's deny list names the permission. Deny wins over everything.
    DenyOverride,
    /// The key's allow list names the permission.
    AllowOverride,
    /// The key's role grants the permission.
    RoleGrant(Role),
    /// Nothing grants the permission.
    NoGrant(Role),
    /// The key would give (or reach) more power than the caller holds.
    Escalation,
    /// The permission is a person's own (`account:self`) and the
    /// credential is an API key.
    CredentialKind,
    /// The session must enrol a second factor before anything else.
    MfaEnrolment,
    /// A state-changing request with the console's session cookie lacked
    /// its session's CSRF token (decided before the policy, by the HTTP
    /// layer).
    Csrf,
}

impl Rule {
    /// Stable name for logs and the audit log.
    pub fn name(self) -> String {
        match self {
            Rule::TenantScope => "tenant_scope".to_owned(),
            Rule::DenyOverride => "deny_override".to_owned(),
            Rule::AllowOverride => "allow_override".to_owned(),
            Rule::RoleGrant(r) => format!("role:{}", r.as_str()),
            Rule::NoGrant(r) => format!("no_grant:{}", r.as_str()),
            Rule::Escalation => "escalation".to_owned(),
            Rule::CredentialKind => "credential_kind".to_owned(),
            Rule::MfaEnrolment => "mfa_enrolment".to_owned(),
            Rule::Csrf => "csrf".to_owned(),
        }
    }

    /// The stable API error code for a denial by this rule. It says which
    /// rule refused, never whether anything exists.
    pub fn denial_code(self) -> &'static str {
        match self {
            Rule::TenantScope => "forbidden_firm",
            Rule::DenyOverride => "forbidden_override",
            Rule::Escalation => "forbidden_escalation",
            Rule::CredentialKind => "forbidden_credential",
            Rule::MfaEnrolment => "mfa_enrolment_required",
            Rule::Csrf => "csrf_failed",
            Rule::AllowOverride | Rule::RoleGrant(_) | Rule::NoGrant(_) => "forbidden_role",
        }
    }
}

/// A policy decision and the rule that made it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub rule: Rule,
}

/// The policy: pure, deterministic, evaluated on every API request.
pub fn decide(principal: &Principal, permission: Permission, firm: &FirmId) -> Decision {
    let (allowed, rule) = if principal.firm != *firm {
        // Security invariant: a credential never reaches another firm.
        (false, Rule::TenantScope)
    } else if permission == Permission::Account && principal.actor.user().is_none() {
        // Security invariant: a key has no account of its own to manage.
        (false, Rule::CredentialKind)
    } else if principal.enrolment_only && permission != Permission::Account {
        // Security invariant: a user who must have MFA and has none can only enrol it.
        (false, Rule::MfaEnrolment)
    } else if principal.overrides.deny.contains(&permission) {
        // Security invariant: deny wins over the allow list and the role.
        (false, Rule::DenyOverride)
    } else if principal.overrides.allow.contains(&permission) {
        (true, Rule::AllowOverride)
    } else if role_grants(principal.role).contains(&permission) {
        (true, Rule::RoleGrant(principal.role))
    } else {
        (false, Rule::NoGrant(principal.role))
    };
    Decision { allowed, rule }
}

/// Everything a key with this role and these overrides may do.
pub fn effective(role: Role, overrides: &Overrides) -> BTreeSet<Permission> {
    role_grants(role)
        .iter()
        .chain(overrides.allow.iter())
        .filter(|p| !overrides.deny.contains(p))
        .copied()
        .collect()
}

/// Whether `principal` may create (or take over, by rotation, or revoke) a
/// key with this role and these overrides: never one with a higher role or
/// any permission the principal does not itself hold.
pub fn may_manage(principal: &Principal, role: Role, overrides: &Overrides) -> Decision {
    let mine = effective(principal.role, &principal.overrides);
    let theirs = effective(role, overrides);
    // Security invariant: no key can mint or take over a key more powerful than itself.
    let allowed = role >= principal.role && theirs.is_subset(&mine);
    Decision {
        allowed,
        rule: if allowed {
            Rule::RoleGrant(principal.role)
        } else {
            Rule::Escalation
        },
    }
}

/// Proof that the policy granted `P` to a principal on its own firm. Only
/// [`authorize`] builds one; services that change state require it.
pub struct Authorized<P: perm::Marker> {
    principal: Principal,
    decision: Decision,
    _p: PhantomData<P>,
}

impl<P: perm::Marker> Authorized<P> {
    pub fn principal(&self) -> &Principal {
        &self.principal
    }

    /// The firm the grant is for (always the principal's own).
    pub fn firm(&self) -> &FirmId {
        &self.principal.firm
    }

    pub fn decision(&self) -> Decision {
        self.decision
    }
}

impl<P: perm::Marker> fmt::Debug for Authorized<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authorized")
            .field("permission", &P::PERMISSION)
            .field("actor", &self.principal.actor)
            .field("rule", &self.decision.rule)
            .finish()
    }
}

/// Runs the policy for `P`; the grant, or the denying decision.
pub fn authorize<P: perm::Marker>(
    principal: Principal,
    firm: &FirmId,
) -> Result<Authorized<P>, Decision> {
    let decision = decide(&principal, P::PERMISSION, firm);
    if decision.allowed {
        Ok(Authorized {
            principal,
            decision,
            _p: PhantomData,
        })
    } else {
        Err(decision)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::ApiKeyId;
    use proptest::prelude::*;

    const ROLES: [Role; 4] = [Role::Owner, Role::Admin, Role::Operator, Role::Viewer];

    fn principal(firm: &FirmId, role: Role, overrides: Overrides) -> Principal {
        Principal {
            firm: firm.clone(),
            actor: crate::auth::Actor::Key(ApiKeyId::parse("key_0000000000000001").unwrap()),
            role,
            overrides,
            expires_at: None,
            enrolment_only: false,
            origin: Default::default(),
        }
    }

    fn perm_set() -> impl Strategy<Value = BTreeSet<Permission>> {
        proptest::collection::btree_set(proptest::sample::select(Permission::ALL), 0..4)
    }

    fn is_write(p: Permission) -> bool {
        !p.as_str().ends_with(":read")
    }

    #[test]
    fn roles_nest_and_names_round_trip() {
        for w in ROLES.windows(2) {
            let (hi, lo) = (role_grants(w[0]), role_grants(w[1]));
            assert!(lo.iter().all(|p| hi.contains(p)), "{:?} ⊉ {:?}", w[0], w[1]);
        }
        for p in Permission::ALL {
            assert_eq!(Permission::parse(p.as_str()), Some(*p));
        }
        assert!(policy_version().starts_with("sha256:"));
    }

    #[test]
    fn another_firm_is_always_denied() {
        let (a, b) = (FirmId::generate().unwrap(), FirmId::generate().unwrap());
        let all = Overrides {
            allow: Permission::ALL.iter().copied().collect(),
            deny: BTreeSet::new(),
        };
        let p = principal(&a, Role::Owner, all);
        for perm in Permission::ALL {
            assert_eq!(decide(&p, *perm, &b).rule, Rule::TenantScope);
        }
    }

    #[test]
    fn account_routes_are_for_people_and_enrolment_sessions_only_enrol() {
        let f = FirmId::generate().unwrap();
        let key = principal(&f, Role::Owner, Overrides::default());
        assert_eq!(
            decide(&key, Permission::Account, &f).rule,
            Rule::CredentialKind
        );
        let mut person = principal(&f, Role::Viewer, Overrides::default());
        person.actor = crate::auth::Actor::User {
            user: crate::ids::UserId::parse("usr_0000000000000001").unwrap(),
            session: crate::ids::SessionId::parse("ses_0000000000000001").unwrap(),
        };
        assert!(decide(&person, Permission::Account, &f).allowed);
        assert!(decide(&person, Permission::FirmRead, &f).allowed);
        person.role = Role::Owner;
        person.enrolment_only = true;
        for p in Permission::ALL {
            let d = decide(&person, *p, &f);
            assert_eq!(d.allowed, *p == Permission::Account, "{p}");
            if *p != Permission::Account {
                assert_eq!(d.rule, Rule::MfaEnrolment);
            }
        }
        // Tenant scope still comes first.
        let other = FirmId::generate().unwrap();
        assert_eq!(
            decide(&person, Permission::Account, &other).rule,
            Rule::TenantScope
        );
    }

    proptest! {
        #[test]
        fn deny_always_wins(role in proptest::sample::select(&ROLES[..]), allow in perm_set(), deny in perm_set()) {
            let f = FirmId::generate().unwrap();
            let p = principal(&f, role, Overrides { allow, deny: deny.clone() });
            for perm in deny {
                let d = decide(&p, perm, &f);
                prop_assert!(!d.allowed);
                // A key never holds the person-only permission, deny list or not.
                let want = if perm == Permission::Account { Rule::CredentialKind } else { Rule::DenyOverride };
                prop_assert_eq!(d.rule, want);
            }
        }

        #[test]
        fn viewer_never_writes_without_an_allow(deny in perm_set()) {
            let f = FirmId::generate().unwrap();
            let p = principal(&f, Role::Viewer, Overrides { allow: BTreeSet::new(), deny });
            for perm in Permission::ALL.iter().copied().filter(|p| is_write(*p)) {
                prop_assert!(!decide(&p, perm, &f).allowed);
            }
        }

        #[test]
        fn decisions_are_deterministic(role in proptest::sample::select(&ROLES[..]), allow in perm_set(), deny in perm_set(), perm in proptest::sample::select(Permission::ALL)) {
            let f = FirmId::generate().unwrap();
            let p = principal(&f, role, Overrides { allow, deny });
            let first = decide(&p, perm, &f);
            for _ in 0..8 {
                prop_assert_eq!(decide(&p.clone(), perm, &f), first);
            }
        }

        #[test]
        fn nobody_manages_a_more_powerful_key(
            role in proptest::sample::select(&ROLES[..]), allow in perm_set(), deny in perm_set(),
            new_role in proptest::sample::select(&ROLES[..]), new_allow in perm_set(), new_deny in perm_set(),
        ) {
            let f = FirmId::generate().unwrap();
            let me = principal(&f, role, Overrides { allow, deny });
            let theirs = Overrides { allow: new_allow, deny: new_deny };
            if may_manage(&me, new_role, &theirs).allowed {
                prop_assert!(new_role >= role);
                let mine = effective(me.role, &me.overrides);
                prop_assert!(effective(new_role, &theirs).iter().all(|p| mine.contains(p)));
            }
        }
    }
}
