//! Parsing of search parameters into a backend-neutral [`Plan`](crate::plan::Plan), driven by the SearchParameter
//! tables: every kind, modifier and prefix the server supports, and the blind tags to look up.

use carevault_crypto::Keyring;
use carevault_fhir::{SearchParam, SearchParamType};

use crate::backend::ParamRef;
use crate::error::RestError;
use crate::fhirdefs;
use crate::indexing::{self, TagKind, tag};
use crate::instant;
use crate::plan::{Bound, Cond, IndexKind, RangeCond};

/// An in-memory check a clause needs after the index lookup (the index can only narrow).
#[derive(Debug, Clone)]
pub enum Check {
    /// Some normalised value of the parameter starts with this text.
    Prefix(String),
    /// Some normalised value contains this text.
    Contains(String),
}

/// The in-memory checks of one clause: it holds when any check does.
#[derive(Debug, Clone)]
pub struct Verifier {
    /// Parameter code.
    pub code: String,
    /// Alternatives.
    pub any_of: Vec<Check>,
}

/// What one query parameter turned into.
pub enum Parsed {
    /// A clause (OR of conditions) and maybe the checks it needs.
    Clause(Vec<Cond>, Option<Verifier>),
    /// A parameter this server does not know or support, with the reason.
    Unsupported(String),
}

/// Splits a value on unescaped commas (`\,` is a literal comma).
pub fn split_or(v: &str) -> Vec<String> {
    split_unescaped(v, ',')
}

fn split_unescaped(v: &str, sep: char) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut chars = v.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(&n) = chars.peek()
                && (n == ',' || n == '|' || n == '$' || n == '\\')
            {
                if let Some(s) = out.last_mut() {
                    s.push(n)
                }
                chars.next();
                continue;
            }
            if let Some(s) = out.last_mut() {
                s.push(c)
            }
        } else if c == sep {
            out.push(String::new());
        } else {
            if let Some(s) = out.last_mut() {
                s.push(c)
            }
        }
    }
    out
}

/// Splits a token value at its first unescaped `|`.
fn split_bar(v: &str) -> (Option<String>, String) {
    let parts = split_unescaped(v, '|');
    if parts.len() == 1 {
        (None, parts.into_iter().next().unwrap_or_default())
    } else {
        let mut it = parts.into_iter();
        let system = it.next().unwrap_or_default();
        let rest: Vec<String> = it.collect();
        (Some(system), rest.join("|"))
    }
}

const PREFIXES: [&str; 9] = ["eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap"];

fn split_prefix(v: &str) -> (&str, &str) {
    match (v.get(..2), v.as_bytes().get(2)) {
        (Some(p), Some(next))
            if PREFIXES.contains(&p) && (next.is_ascii_digit() || *next == b'-') =>
        {
            (p, &v[2..])
        }
        _ => ("eq", v),
    }
}

fn bad_value(name: &str) -> RestError {
    RestError::BadRequest {
        diagnostics: format!("the value of search parameter '{name}' is not valid"),
        expression: None,
    }
}

/// Range condition for a date-like search value against stored `[lo, hi)` ranges.
pub fn date_range(name: &str, value: &str) -> Result<RangeCond, RestError> {
    let (prefix, text) = split_prefix(value);
    let (lo, hi) = instant::parse_range(text).ok_or_else(|| bad_value(name))?;
    let (lo, hi) = (lo as f64, hi as f64);
    let (bounds, negate) = match prefix {
        "eq" => (vec![Bound::LoGe(lo), Bound::HiLe(hi)], false),
        "ne" => (vec![Bound::LoGe(lo), Bound::HiLe(hi)], true),
        "gt" => (vec![Bound::HiGt(hi)], false),
        "lt" => (vec![Bound::LoLt(lo)], false),
        "ge" => (vec![Bound::HiGt(lo)], false),
        "le" => (vec![Bound::LoLt(hi)], false),
        "sa" => (vec![Bound::LoGe(hi)], false),
        "eb" => (vec![Bound::HiLe(lo)], false),
        _ => {
            // ap: the value's range widened by 10% of its distance from now.
            let w = ((instant::now_ms() as f64 - lo).abs() * 0.1).max(hi - lo);
            (vec![Bound::HiGt(lo - w), Bound::LoLt(hi + w)], false)
        }
    };
    Ok(RangeCond { bounds, negate })
}

/// Parses a decimal, with the half-unit of its last digit (the precision implied by its text).
fn decimal(text: &str) -> Option<(f64, f64)> {
    let v: f64 = text.parse().ok()?;
    if !v.is_finite() {
        return None;
    }
    let mantissa = text.split(['e', 'E']).next().unwrap_or(text);
    let decimals = mantissa.split_once('.').map_or(0, |(_, f)| f.len()) as i32;
    Some((v, 0.5 * 10f64.powi(-decimals)))
}

/// Range condition for a number search value against stored point values (`lo = hi = value`).
pub fn number_range(name: &str, value: &str) -> Result<RangeCond, RestError> {
    let (prefix, text) = split_prefix(value);
    let (v, half) = decimal(text).ok_or_else(|| bad_value(name))?;
    let (bounds, negate) = match prefix {
        "eq" => (vec![Bound::LoGe(v - half), Bound::LoLt(v + half)], false),
        "ne" => (vec![Bound::LoGe(v - half), Bound::LoLt(v + half)], true),
        "gt" | "sa" => (vec![Bound::HiGt(v)], false),
        "lt" | "eb" => (vec![Bound::LoLt(v)], false),
        "ge" => (vec![Bound::LoGe(v)], false),
        "le" => (vec![Bound::HiLe(v)], false),
        _ => {
            let w = (v.abs() * 0.1).max(half);
            (vec![Bound::LoGe(v - w), Bound::HiLe(v + w)], false)
        }
    };
    Ok(RangeCond { bounds, negate })
}

/// Strips the server's own base from an absolute reference.
fn relative_ref<'v>(value: &'v str, base_url: &str) -> &'v str {
    let base = base_url.trim_end_matches('/');
    if !base.is_empty()
        && let Some(rest) = value.strip_prefix(base).and_then(|r| r.strip_prefix('/'))
    {
        return rest;
    }
    value
}

fn kind_of(kind: SearchParamType) -> Option<IndexKind> {
    Some(match kind {
        SearchParamType::String | SearchParamType::Token | SearchParamType::Uri => IndexKind::Tag,
        SearchParamType::Reference => IndexKind::Ref,
        SearchParamType::Date => IndexKind::Date,
        SearchParamType::Number => IndexKind::Number,
        SearchParamType::Quantity => IndexKind::Quantity,
        _ => return None,
    })
}

/// The definition of a parameter, including the common ones every type has.
pub fn lookup(rtype: &str, code: &str) -> Option<SearchParam> {
    if let Some(sp) = fhirdefs::definitions().search_param(rtype, code) {
        return Some(sp.clone());
    }
    let kind = match code {
        "_tag" | "_security" => SearchParamType::Token,
        "_profile" => SearchParamType::Uri,
        _ => return None,
    };
    Some(SearchParam {
        code: code.into(),
        kind,
        expression: None,
        targets: vec![],
        components: vec![],
        component_expressions: vec![],
    })
}

/// Parses one query parameter (`name`, raw `value`) of a search on `rtype`.
pub fn parse_param(
    keyring: &Keyring,
    rtype: &str,
    name: &str,
    value: &str,
    base_url: &str,
) -> Result<Parsed, RestError> {
    if let Some(rest) = name.strip_prefix("_has:") {
        return parse_has(keyring, rtype, rest, value, base_url);
    }
    // Chaining: `subject:Patient.name`, `patient.name`.
    if let Some((head, chained)) = name.split_once('.') {
        return parse_chain(keyring, rtype, head, chained, value, base_url);
    }
    let (code, modifier) = match name.split_once(':') {
        Some((c, m)) => (c, Some(m)),
        None => (name, None),
    };
    let values = split_or(value);
    match code {
        "_id" => {
            if modifier.is_some() {
                return Ok(Parsed::Unsupported(format!("modifier on '{name}'")));
            }
            return Ok(Parsed::Clause(
                values.into_iter().map(Cond::Id).collect(),
                None,
            ));
        }
        "_lastUpdated" => {
            if modifier.is_some() {
                return Ok(Parsed::Unsupported(format!("modifier on '{name}'")));
            }
            let conds = values
                .iter()
                .map(|v| date_range(name, v).map(Cond::LastUpdated))
                .collect::<Result<_, _>>()?;
            return Ok(Parsed::Clause(conds, None));
        }
        _ => {}
    }
    let Some(sp) = lookup(rtype, code) else {
        return Ok(Parsed::Unsupported(format!(
            "unknown search parameter '{code}' for {rtype}"
        )));
    };
    let param = ParamRef::new(rtype, code);
    if modifier == Some("missing") {
        let demographic = indexing::is_demographic_date(rtype, code);
        let Some(kind) = kind_of(sp.kind).map(|k| if demographic { IndexKind::Tag } else { k })
        else {
            return Ok(Parsed::Unsupported(format!("':missing' on '{code}'")));
        };
        let missing = match value {
            "true" => true,
            "false" => false,
            _ => return Err(bad_value(name)),
        };
        return Ok(Parsed::Clause(
            vec![Cond::Missing {
                param,
                kind,
                missing,
            }],
            None,
        ));
    }
    let t = |kind, v: &str| tag(keyring, &param, kind, v);
    match sp.kind {
        SearchParamType::String => {
            let mut conds = Vec::new();
            let mut checks = Vec::new();
            let mut verify = false;
            for v in &values {
                match modifier {
                    None => {
                        let n = fhirdefs::normalize_string(v);
                        let clipped = indexing::clip_prefix(&n);
                        verify |= clipped.len() != n.len();
                        if n.is_empty() {
                            conds.push(Cond::Missing {
                                param: param.clone(),
                                kind: IndexKind::Tag,
                                missing: false,
                            });
                        } else {
                            conds.push(Cond::Tag {
                                param: param.clone(),
                                tag: t(TagKind::StrPrefix, clipped),
                            });
                        }
                        checks.push(Check::Prefix(n));
                    }
                    Some("exact") => conds.push(Cond::Tag {
                        param: param.clone(),
                        tag: t(TagKind::StrExact, v),
                    }),
                    Some("contains") => {
                        let n = fhirdefs::normalize_string(v);
                        if n.chars().count() < 3 {
                            return Err(RestError::BadRequest {
                                diagnostics: format!("'{name}' needs at least 3 characters"),
                                expression: None,
                            });
                        }
                        let tags = indexing::trigrams(&n)
                            .iter()
                            .map(|g| t(TagKind::StrTrigram, g))
                            .collect();
                        conds.push(Cond::AllTags {
                            param: param.clone(),
                            tags,
                        });
                        checks.push(Check::Contains(n));
                        verify = true;
                    }
                    Some(m) => {
                        return Ok(Parsed::Unsupported(format!("modifier ':{m}' on '{code}'")));
                    }
                }
            }
            let verifier = (verify && checks.len() == conds.len()).then(|| Verifier {
                code: code.into(),
                any_of: checks,
            });
            Ok(Parsed::Clause(conds, verifier))
        }
        SearchParamType::Token => {
            let token_tag = |v: &str| match split_bar(v) {
                (None, c) => t(TagKind::TokCode, &c),
                (Some(s), c) if s.is_empty() => t(TagKind::TokNoSystem, &c),
                (Some(s), c) if c.is_empty() => t(TagKind::TokSystem, &s),
                (Some(s), c) => t(TagKind::TokSystemCode, &format!("{s}|{c}")),
            };
            match modifier {
                None => Ok(Parsed::Clause(
                    values
                        .iter()
                        .map(|v| Cond::Tag {
                            param: param.clone(),
                            tag: token_tag(v),
                        })
                        .collect(),
                    None,
                )),
                Some("not") => {
                    let tags = values.iter().map(|v| token_tag(v)).collect();
                    Ok(Parsed::Clause(vec![Cond::NoTag { param, tags }], None))
                }
                Some("text") => Ok(Parsed::Clause(
                    values
                        .iter()
                        .map(|v| {
                            let n = fhirdefs::normalize_string(v);
                            let tags = n
                                .split(' ')
                                .filter(|w| !w.is_empty())
                                .map(|w| t(TagKind::TokText, w))
                                .collect();
                            Cond::AllTags {
                                param: param.clone(),
                                tags,
                            }
                        })
                        .collect(),
                    None,
                )),
                Some(m) => Ok(Parsed::Unsupported(format!("modifier ':{m}' on '{code}'"))),
            }
        }
        SearchParamType::Uri => match modifier {
            None => Ok(Parsed::Clause(
                values
                    .iter()
                    .map(|v| Cond::Tag {
                        param: param.clone(),
                        tag: t(TagKind::Uri, v),
                    })
                    .collect(),
                None,
            )),
            Some(m) => Ok(Parsed::Unsupported(format!("modifier ':{m}' on '{code}'"))),
        },
        SearchParamType::Reference => {
            let type_mod = match modifier {
                None => None,
                Some(m) if fhirdefs::definitions().is_resource_type(m) => Some(m),
                Some(m) => return Ok(Parsed::Unsupported(format!("modifier ':{m}' on '{code}'"))),
            };
            let mut conds = Vec::new();
            for v in &values {
                let v = relative_ref(v, base_url);
                let cond = if v.contains("://") || v.starts_with("urn:") {
                    Cond::Ref {
                        param: param.clone(),
                        ttype: String::new(),
                        tid: String::new(),
                        url: v.to_owned(),
                    }
                } else {
                    let segs: Vec<&str> = v.split('/').collect();
                    let (ttype, tid) = match segs.as_slice() {
                        [id] => (type_mod.unwrap_or("").to_owned(), (*id).to_owned()),
                        [t, id] | [t, id, "_history", _] => ((*t).to_owned(), (*id).to_owned()),
                        _ => return Err(bad_value(name)),
                    };
                    if type_mod.is_some_and(|m| !ttype.is_empty() && m != ttype) {
                        Cond::Nothing
                    } else {
                        Cond::Ref {
                            param: param.clone(),
                            ttype,
                            tid,
                            url: String::new(),
                        }
                    }
                };
                conds.push(cond);
            }
            Ok(Parsed::Clause(conds, None))
        }
        SearchParamType::Date if indexing::is_demographic_date(rtype, code) => {
            if let Some(m) = modifier {
                return Ok(Parsed::Unsupported(format!("modifier ':{m}' on '{code}'")));
            }
            // Blind tags only: the calendar units the range covers, enumerated here.
            let mut tags = Vec::new();
            for v in &values {
                let range = date_range(name, v)?;
                let holds = |lo: i64, hi: i64| {
                    let (lo, hi) = (lo as f64, hi as f64);
                    let all = range.bounds.iter().all(|b| match *b {
                        Bound::LoLt(x) => lo < x,
                        Bound::LoGe(x) => lo >= x,
                        Bound::HiGt(x) => hi > x,
                        Bound::HiLe(x) => hi <= x,
                    });
                    all != range.negate
                };
                for (kind, unit) in indexing::date_units_matching(&holds) {
                    tags.push(t(kind, &unit));
                }
            }
            Ok(Parsed::Clause(vec![Cond::AnyTag { param, tags }], None))
        }
        SearchParamType::Date => {
            if let Some(m) = modifier {
                return Ok(Parsed::Unsupported(format!("modifier ':{m}' on '{code}'")));
            }
            let conds = values
                .iter()
                .map(|v| {
                    date_range(name, v).map(|range| Cond::Date {
                        param: param.clone(),
                        range,
                    })
                })
                .collect::<Result<_, _>>()?;
            Ok(Parsed::Clause(conds, None))
        }
        SearchParamType::Number => {
            if let Some(m) = modifier {
                return Ok(Parsed::Unsupported(format!("modifier ':{m}' on '{code}'")));
            }
            let conds = values
                .iter()
                .map(|v| {
                    number_range(name, v).map(|range| Cond::Number {
                        param: param.clone(),
                        range,
                    })
                })
                .collect::<Result<_, _>>()?;
            Ok(Parsed::Clause(conds, None))
        }
        SearchParamType::Quantity => {
            if let Some(m) = modifier {
                return Ok(Parsed::Unsupported(format!("modifier ':{m}' on '{code}'")));
            }
            let mut conds = Vec::new();
            for v in &values {
                let parts = split_unescaped(v, '|');
                let (num, system, unit) = match parts.as_slice() {
                    [n] => (n.as_str(), "", ""),
                    [n, s, c] => (n.as_str(), s.as_str(), c.as_str()),
                    _ => return Err(bad_value(name)),
                };
                let range = number_range(name, num)?;
                let qtag = match (system.is_empty(), unit.is_empty()) {
                    (_, true) => t(TagKind::QtyAny, ""),
                    (true, false) => t(TagKind::QtyCode, unit),
                    (false, false) => t(TagKind::QtySystemCode, &format!("{system}|{unit}")),
                };
                conds.push(Cond::Quantity {
                    param: param.clone(),
                    tag: qtag,
                    range,
                });
            }
            Ok(Parsed::Clause(conds, None))
        }
        SearchParamType::Composite | SearchParamType::Special => Ok(Parsed::Unsupported(format!(
            "search parameter '{code}' (composite and special parameters are not supported)"
        ))),
    }
}

fn parse_chain(
    keyring: &Keyring,
    rtype: &str,
    head: &str,
    chained: &str,
    value: &str,
    base_url: &str,
) -> Result<Parsed, RestError> {
    let (code, type_mod) = match head.split_once(':') {
        Some((c, m)) => (c, Some(m)),
        None => (head, None),
    };
    let Some(sp) = lookup(rtype, code).filter(|sp| sp.kind == SearchParamType::Reference) else {
        return Ok(Parsed::Unsupported(format!(
            "chained parameter '{head}' is not a reference parameter of {rtype}"
        )));
    };
    let targets: Vec<String> = match type_mod {
        Some(t) => vec![t.to_owned()],
        None => sp.targets.clone(),
    };
    let mut conds = Vec::new();
    for target in targets {
        let chained_code = chained.split([':', '.']).next().unwrap_or(chained);
        if chained_code != "_id"
            && chained_code != "_lastUpdated"
            && !chained_code.starts_with("_has")
            && lookup(&target, chained_code).is_none()
        {
            continue;
        }
        match parse_param(keyring, &target, chained, value, base_url)? {
            Parsed::Clause(inner, _) => conds.push(Cond::Chain {
                param: ParamRef::new(rtype, code),
                target: target.clone(),
                inner: Box::new(crate::plan::Plan {
                    rtype: target,
                    clauses: vec![inner],
                }),
            }),
            Parsed::Unsupported(why) => return Ok(Parsed::Unsupported(why)),
        }
    }
    if conds.is_empty() {
        return Ok(Parsed::Unsupported(format!(
            "chained parameter '{head}.{chained}'"
        )));
    }
    Ok(Parsed::Clause(conds, None))
}

fn parse_has(
    keyring: &Keyring,
    rtype: &str,
    rest: &str,
    value: &str,
    base_url: &str,
) -> Result<Parsed, RestError> {
    // `_has:Observation:patient:code` (the inner part may itself be a `_has`).
    let mut it = rest.splitn(3, ':');
    let (Some(src), Some(refp), Some(inner_name)) = (it.next(), it.next(), it.next()) else {
        return Err(RestError::bad(
            "a _has parameter needs the form _has:Type:reference:parameter",
        ));
    };
    if !fhirdefs::definitions().is_resource_type(src) {
        return Ok(Parsed::Unsupported(format!("_has on unknown type '{src}'")));
    }
    if lookup(src, refp).is_none_or(|sp| sp.kind != SearchParamType::Reference) {
        return Ok(Parsed::Unsupported(format!(
            "_has reference parameter '{refp}' of {src}"
        )));
    }
    let _ = rtype;
    match parse_param(keyring, src, inner_name, value, base_url)? {
        Parsed::Clause(inner, _) => Ok(Parsed::Clause(
            vec![Cond::Has {
                param: ParamRef::new(src, refp),
                inner: Box::new(crate::plan::Plan {
                    rtype: src.to_owned(),
                    clauses: vec![inner],
                }),
            }],
            None,
        )),
        other => Ok(other),
    }
}
