//! Authorization for carevault: the built-in roles, the resource classes of PRODUCT.md 2.3, and
//! the decision of whether a principal may perform an action on a resource type given the facts
//! of the request (care relationship, break-the-glass, own compartment), made by a cedar policy
//! that operators can read (`carevault policy show`) and replace (`carevault policy set`).
//!
//! The server asks [`Engine::requirement`] what a principal needs for an action on a type (a
//! cached hash lookup) and filters what it returns by it, and [`Engine::decide`] for the
//! decision on one concrete request (with the reason its audit event records).
#![forbid(unsafe_code)]

mod active;
mod class;
mod engine;
mod role;

pub use active::{
    ActivePolicy, ActivePolicyError, POLICY_POLL, POLICY_RECORD_KEY, POLICY_RECORD_KIND,
    load_engine, set_policy, stored_policy,
};
pub use class::{Action, Class, UnknownAction, class_of};
pub use engine::{
    BUILTIN_POLICY, Decision, Engine, Facts, PolicyError, Principal, Requirement, SCHEMA_TEXT,
    schema,
};
pub use role::{Role, UnknownRole};

#[cfg(test)]
mod matrix;
