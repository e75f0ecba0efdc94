//! The decision: a cedar policy set evaluated against the schema of carevault requests, and the
//! per-type requirement derived from it (cached) that search filtering and reads apply.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::str::FromStr;

use cedar_policy::{
    Authorizer, Context, Entities, Entity, EntityId, EntityTypeName, EntityUid, PolicyId,
    PolicySet, Request, RestrictedExpression, Schema, ValidationMode, Validator,
};
use parking_lot::RwLock;

use crate::class::{Action, class_of};
use crate::role::Role;

/// The schema every policy is validated against (`policies/schema.cedarschema`).
pub const SCHEMA_TEXT: &str = include_str!("../policies/schema.cedarschema");

/// The built-in policy (`policies/builtin.cedar`): the roles table of PRODUCT.md 2.3.
pub const BUILTIN_POLICY: &str = include_str!("../policies/builtin.cedar");

/// Who is asking.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Principal {
    /// The signed-in user's account name; `None` for a system client (client_credentials),
    /// whose `system/` scopes alone decide.
    pub user: Option<String>,
    /// The account's roles.
    pub roles: Vec<Role>,
    /// `Practitioner/ID` linked to the account.
    pub practitioner: Option<String>,
    /// `Patient/ID` linked to the account.
    pub patient: Option<String>,
    /// The OAuth client the request came through.
    pub client_id: String,
}

/// What the server established about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct Facts {
    /// A care relationship (PRODUCT.md 2.3 rules 1-5) with the resource's patient.
    pub relationship: bool,
    /// A billing relationship (rule 6) with the resource's patient.
    pub billing_relationship: bool,
    /// A break-the-glass grant for the resource's patient.
    pub break_glass: bool,
    /// The resource is in the compartment of the principal's own Patient.
    pub own_compartment: bool,
}

/// The outcome of one decision, with the reason the audit event records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request may proceed.
    pub allowed: bool,
    /// Which policies decided (`permitted by physician-clinical`), or why nothing allowed it.
    pub reason: String,
}

/// What a principal needs to perform an action on a resource type, in terms of facts about the
/// patient of each resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Requirement {
    /// Not allowed whatever the facts.
    Never,
    /// Allowed without conditions (directory, patient search, system clients).
    Always,
    /// Allowed for patients with whom the principal has a care relationship; with
    /// `break_glass`, a break-the-glass grant for the patient stands in for it.
    Relationship {
        /// Whether break-the-glass may stand in for the relationship.
        break_glass: bool,
    },
    /// Allowed for patients with a billing relationship (rule 6).
    BillingRelationship,
    /// Allowed only within the principal's own Patient compartment.
    OwnCompartment,
}

/// A policy that cannot be used, with where the problem is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// The policy text does not parse.
    #[error("the policy does not parse at line {line}, column {column}: {message}")]
    Syntax {
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What the parser said.
        message: String,
    },
    /// The policy parses but does not fit the schema of carevault requests.
    #[error(
        "policy {policy} does not fit the request schema at line {line}, column {column}: {message}"
    )]
    Invalid {
        /// The policy's `@id` (or cedar's own id).
        policy: String,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What the validator said.
        message: String,
    },
    /// The built-in schema is broken (a defect in carevault, caught by a test).
    #[error("the built-in request schema is invalid: {0}")]
    Schema(String),
}

/// Line and column (1-based) of byte `offset` in `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let upto = &text[..offset.min(text.len())];
    let line = upto.matches('\n').count() + 1;
    let column = upto.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// The first labelled source offset of a diagnostic, if any.
fn first_offset(d: &dyn miette::Diagnostic) -> Option<usize> {
    d.labels()
        .and_then(|mut l| l.next())
        .map(|l| l.offset())
        .or_else(|| {
            d.related()
                .and_then(|mut r| r.next().and_then(first_offset))
        })
}

/// A role set as a bit mask (bit = index in [`Role::ALL`]); bit 15 marks a system client.
fn role_mask(p: &Principal) -> u16 {
    if p.user.is_none() {
        return 1 << 15;
    }
    p.roles.iter().fold(0u16, |m, r| {
        m | Role::ALL
            .iter()
            .position(|x| x == r)
            .map_or(0, |i| 1u16 << i)
    })
}

/// What is known about one (principal kind, action, type): the requirement and the decision
/// under each of the 16 fact combinations, filled as they are asked for.
#[derive(Default)]
struct Cached {
    requirement: Option<Requirement>,
    decisions: [Option<Decision>; 16],
}

/// Cached answers by (role mask, action, principal name when the policy names principals), then
/// by resource type.
type DecisionCache = HashMap<(u16, Action, String), HashMap<String, Cached>>;

/// Beyond this many cached (principal kind, action) groups the cache starts over: it only grows
/// past a few hundred when the policy names individual principals.
const CACHE_GROUPS: usize = 65_536;

fn facts_index(f: &Facts) -> usize {
    usize::from(f.relationship)
        | usize::from(f.billing_relationship) << 1
        | usize::from(f.break_glass) << 2
        | usize::from(f.own_compartment) << 3
}

/// Cedar names used in every request, parsed once.
struct Names {
    user: EntityTypeName,
    client: EntityTypeName,
    role: EntityTypeName,
    resource: EntityTypeName,
    action: EntityTypeName,
}

/// A compiled, validated policy and the cache of requirements derived from it. Immutable: a
/// changed policy is a new `Engine` (see [`crate::ActivePolicy`]).
pub struct Engine {
    text: String,
    policies: PolicySet,
    names: Names,
    authorizer: Authorizer,
    /// Whether some policy names a principal (`User::"..."`, `Client::"..."`): then cached
    /// answers are kept per principal, else per role set.
    per_principal: bool,
    cache: RwLock<DecisionCache>,
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine")
            .field("policies", &self.policies.policies().count())
            .finish_non_exhaustive()
    }
}

/// The request schema.
pub fn schema() -> Result<Schema, PolicyError> {
    Schema::from_cedarschema_str(SCHEMA_TEXT)
        .map(|(s, _warnings)| s)
        .map_err(|e| PolicyError::Schema(e.to_string()))
}

fn type_name(name: &str) -> Result<EntityTypeName, PolicyError> {
    EntityTypeName::from_str(name).map_err(|e| PolicyError::Schema(e.to_string()))
}

impl Engine {
    /// The engine of the built-in policy.
    pub fn builtin() -> Result<Engine, PolicyError> {
        Engine::from_text(BUILTIN_POLICY)
    }

    /// Parses `text` and validates it against the request schema (strict mode); errors name
    /// the line and column.
    pub fn from_text(text: &str) -> Result<Engine, PolicyError> {
        let policies = PolicySet::from_str(text).map_err(|e| {
            let (line, column) = first_offset(&e).map_or((1, 1), |o| line_col(text, o));
            PolicyError::Syntax {
                line,
                column,
                message: e.to_string(),
            }
        })?;
        let schema = schema()?;
        let result = Validator::new(schema).validate(&policies, ValidationMode::Strict);
        if let Some(e) = result.validation_errors().next() {
            let (line, column) = first_offset(e).map_or((1, 1), |o| line_col(text, o));
            let id = e.policy_id();
            return Err(PolicyError::Invalid {
                policy: policies
                    .annotation(id, "id")
                    .map_or_else(|| id.to_string(), str::to_owned),
                line,
                column,
                message: e.to_string(),
            });
        }
        Ok(Engine {
            text: text.to_owned(),
            policies,
            names: Names {
                user: type_name("User")?,
                client: type_name("Client")?,
                role: type_name("Role")?,
                resource: type_name("Resource")?,
                action: type_name("Action")?,
            },
            authorizer: Authorizer::new(),
            per_principal: text.contains("User::") || text.contains("Client::"),
            cache: RwLock::new(HashMap::new()),
        })
    }

    /// The policy text this engine runs.
    pub fn text(&self) -> &str {
        &self.text
    }

    fn uid(name: &EntityTypeName, id: &str) -> EntityUid {
        EntityUid::from_type_name_and_id(name.clone(), EntityId::new(id))
    }

    fn policy_names(&self, ids: impl Iterator<Item = PolicyId>) -> String {
        let mut names: Vec<String> = ids
            .map(|id| {
                self.policies
                    .annotation(&id, "id")
                    .map_or_else(|| id.to_string(), str::to_owned)
            })
            .collect();
        names.sort();
        names.join(", ")
    }

    fn cache_key(&self, p: &Principal, a: Action) -> (u16, Action, String) {
        let name = if !self.per_principal {
            String::new()
        } else {
            match &p.user {
                Some(u) => format!("u:{u}"),
                None => format!("c:{}", p.client_id),
            }
        };
        (role_mask(p), a, name)
    }

    fn remember(&self, key: (u16, Action, String), rtype: &str, f: impl FnOnce(&mut Cached)) {
        let mut cache = self.cache.write();
        if cache.len() >= CACHE_GROUPS && !cache.contains_key(&key) {
            cache.clear();
        }
        let group = cache.entry(key).or_default();
        match group.get_mut(rtype) {
            Some(c) => f(c),
            None => {
                let mut c = Cached::default();
                f(&mut c);
                group.insert(rtype.to_owned(), c);
            }
        }
    }

    /// Decides one concrete request: may `p` perform `a` on a resource of type `rtype`, given
    /// the facts `f` about its patient? Answers are cached per role set (or per principal when
    /// the policy names principals), action, type and facts: the policy is evaluated once per
    /// combination.
    pub fn decide(&self, p: &Principal, a: Action, rtype: &str, f: &Facts) -> Decision {
        let key = self.cache_key(p, a);
        let i = facts_index(f);
        if let Some(d) = self
            .cache
            .read()
            .get(&key)
            .and_then(|m| m.get(rtype))
            .and_then(|c| c.decisions[i].clone())
        {
            return d;
        }
        let d = self.evaluate(p, a, rtype, f);
        self.remember(key, rtype, |c| c.decisions[i] = Some(d.clone()));
        d
    }

    /// Evaluates the policy for one request, without the cache.
    fn evaluate(&self, p: &Principal, a: Action, rtype: &str, f: &Facts) -> Decision {
        let deny = |reason: String| Decision {
            allowed: false,
            reason,
        };
        let class = class_of(rtype);
        let (principal, parents) = match &p.user {
            Some(user) => (
                Self::uid(&self.names.user, user),
                p.roles
                    .iter()
                    .map(|r| Self::uid(&self.names.role, r.as_str()))
                    .collect::<HashSet<_>>(),
            ),
            None => (Self::uid(&self.names.client, &p.client_id), HashSet::new()),
        };
        let resource = Self::uid(&self.names.resource, rtype);
        let attrs = HashMap::from([
            (
                "type".to_owned(),
                RestrictedExpression::new_string(rtype.to_owned()),
            ),
            (
                "class".to_owned(),
                RestrictedExpression::new_string(class.as_str().to_owned()),
            ),
        ]);
        let resource_entity = match Entity::new(resource.clone(), attrs, HashSet::new()) {
            Ok(e) => e,
            Err(e) => return deny(format!("the request could not be built: {e}")),
        };
        let entities = match Entities::from_entities(
            [
                Entity::new_no_attrs(principal.clone(), parents),
                resource_entity,
            ],
            None,
        ) {
            Ok(e) => e,
            Err(e) => return deny(format!("the request could not be built: {e}")),
        };
        let context = match Context::from_pairs([
            (
                "relationship".to_owned(),
                RestrictedExpression::new_bool(f.relationship),
            ),
            (
                "billing_relationship".to_owned(),
                RestrictedExpression::new_bool(f.billing_relationship),
            ),
            (
                "break_glass".to_owned(),
                RestrictedExpression::new_bool(f.break_glass),
            ),
            (
                "own_compartment".to_owned(),
                RestrictedExpression::new_bool(f.own_compartment),
            ),
        ]) {
            Ok(c) => c,
            Err(e) => return deny(format!("the request could not be built: {e}")),
        };
        let action = Self::uid(&self.names.action, a.as_str());
        let request = match Request::new(principal, action, resource, context, None) {
            Ok(r) => r,
            Err(e) => return deny(format!("the request could not be built: {e}")),
        };
        let response = self
            .authorizer
            .is_authorized(&request, &self.policies, &entities);
        let diagnostics = response.diagnostics();
        let decided = self.policy_names(diagnostics.reason().cloned());
        let failed = diagnostics.errors().count();
        match response.decision() {
            cedar_policy::Decision::Allow => Decision {
                allowed: true,
                reason: format!("permitted by {decided}"),
            },
            cedar_policy::Decision::Deny if !decided.is_empty() => {
                deny(format!("forbidden by {decided}"))
            }
            cedar_policy::Decision::Deny => {
                let who = match &p.user {
                    None => "a system client".to_owned(),
                    Some(_) if p.roles.is_empty() => "an account without roles".to_owned(),
                    Some(_) => format!(
                        "role {}",
                        p.roles
                            .iter()
                            .map(|r| r.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                };
                let errors = if failed > 0 {
                    format!(" ({failed} policies failed to evaluate)")
                } else {
                    String::new()
                };
                deny(format!(
                    "no policy permits {who} to {a} {rtype} ({class}) with these facts{errors}"
                ))
            }
        }
    }

    /// What `p` needs to perform `a` on `rtype`, derived by evaluating the policy with each
    /// fact alone and cached per role set, action and type (a hash lookup once warm).
    ///
    /// Derivation, in order: allowed with no fact → `Always`; with `own_compartment` alone →
    /// `OwnCompartment`; with `relationship` alone → `Relationship` (with `break_glass` when
    /// `break_glass` alone is enough too); with `billing_relationship` alone →
    /// `BillingRelationship`; else `Never`. A policy that lets break-the-glass alone allow what a
    /// relationship does not is treated as `Never` (deny is the safe reading). A principal with
    /// several roles gets the weakest requirement among them, in the order above.
    pub fn requirement(&self, p: &Principal, a: Action, rtype: &str) -> Requirement {
        let key = self.cache_key(p, a);
        if let Some(r) = self
            .cache
            .read()
            .get(&key)
            .and_then(|m| m.get(rtype))
            .and_then(|c| c.requirement)
        {
            return r;
        }
        let allowed = |f: Facts| self.decide(p, a, rtype, &f).allowed;
        let req = if allowed(Facts::default()) {
            Requirement::Always
        } else if allowed(Facts {
            own_compartment: true,
            ..Facts::default()
        }) {
            Requirement::OwnCompartment
        } else if allowed(Facts {
            relationship: true,
            ..Facts::default()
        }) {
            Requirement::Relationship {
                break_glass: allowed(Facts {
                    break_glass: true,
                    ..Facts::default()
                }),
            }
        } else if allowed(Facts {
            billing_relationship: true,
            ..Facts::default()
        }) {
            Requirement::BillingRelationship
        } else {
            Requirement::Never
        };
        self.remember(key, rtype, |c| c.requirement = Some(req));
        req
    }
}
