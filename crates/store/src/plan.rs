//! Backend-neutral search plans: a conjunction of disjunctions of index conditions, which a
//! backend turns into its own query language.

use carevault_crypto::BlindTag;

use crate::backend::ParamRef;

/// One bound on a `[lo, hi)` range column.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Bound {
    /// `lo < v`
    LoLt(f64),
    /// `lo >= v`
    LoGe(f64),
    /// `hi > v`
    HiGt(f64),
    /// `hi <= v`
    HiLe(f64),
}

/// A range condition: all bounds hold for one indexed range (or, negated, for none).
#[derive(Debug, Clone, PartialEq)]
pub struct RangeCond {
    /// Bounds that must all hold.
    pub bounds: Vec<Bound>,
    /// `ne`: resources with no value satisfying the bounds.
    pub negate: bool,
}

/// The index table a parameter's values live in (used for `:missing`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexKind {
    /// Blind tags.
    Tag,
    /// References.
    Ref,
    /// Dates.
    Date,
    /// Numbers.
    Number,
    /// Quantities.
    Quantity,
}

/// One condition on a resource.
#[derive(Debug, Clone, PartialEq)]
pub enum Cond {
    /// Logical id equals.
    Id(String),
    /// `meta.lastUpdated` (a one-millisecond range) satisfies a range condition.
    LastUpdated(RangeCond),
    /// Has a row with this tag.
    Tag { param: ParamRef, tag: BlindTag },
    /// Has a row with any of these tags (a demographic-date range: the calendar units it covers).
    AnyTag {
        param: ParamRef,
        tags: Vec<BlindTag>,
    },
    /// Has a row for every one of these tags (`:contains` trigrams).
    AllTags {
        param: ParamRef,
        tags: Vec<BlindTag>,
    },
    /// Has no row with any of these tags (`:not`).
    NoTag {
        param: ParamRef,
        tags: Vec<BlindTag>,
    },
    /// References a target: type and id (either may be empty = any), or a URL.
    Ref {
        param: ParamRef,
        ttype: String,
        tid: String,
        url: String,
    },
    /// A date value satisfies the range condition.
    Date { param: ParamRef, range: RangeCond },
    /// A number value satisfies the range condition.
    Number { param: ParamRef, range: RangeCond },
    /// A quantity with this unit tag satisfies the range condition.
    Quantity {
        param: ParamRef,
        tag: BlindTag,
        range: RangeCond,
    },
    /// `:missing`: `missing=true` selects resources without any value for the parameter.
    Missing {
        param: ParamRef,
        kind: IndexKind,
        missing: bool,
    },
    /// Chaining: the reference `param` points at a `target` resource matching `inner`.
    Chain {
        param: ParamRef,
        target: String,
        inner: Box<Plan>,
    },
    /// Reverse chaining: some resource matching `inner` (of `inner.rtype`) points at this one
    /// through its reference parameter `param`.
    Has { param: ParamRef, inner: Box<Plan> },
    /// Visibility (see `search::visibility`): the resource is in the Patient compartment of at
    /// least one of `patients` (through the compartment reference parameters `params`, or, with
    /// `own_id`, by being one of those Patients) and references no Patient outside them through
    /// those parameters.
    Compartment {
        params: Vec<ParamRef>,
        patients: std::sync::Arc<Vec<String>>,
        own_id: bool,
    },
    /// Matches nothing (e.g. a reference to a type the parameter cannot point at).
    Nothing,
}

/// A search: resources of `rtype` for which every clause holds; a clause holds when any of its
/// conditions does.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Resource type searched.
    pub rtype: String,
    /// AND of ORs.
    pub clauses: Vec<Vec<Cond>>,
}

impl Plan {
    /// A plan matching every current resource of a type.
    pub fn all(rtype: &str) -> Self {
        Plan {
            rtype: rtype.to_owned(),
            clauses: Vec::new(),
        }
    }
}
