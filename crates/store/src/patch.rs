//! RFC 6902 JSON Patch (add, remove, replace, move, copy, test) with RFC 6901 pointers.

use serde_json::Value;

use crate::error::RestError;

fn bad(op: usize, why: &str) -> RestError {
    RestError::BadRequest {
        diagnostics: format!("JSON Patch operation {op} {why}"),
        expression: None,
    }
}

fn pointer_tokens(p: &str) -> Option<Vec<String>> {
    if p.is_empty() {
        return Some(Vec::new());
    }
    let rest = p.strip_prefix('/')?;
    Some(
        rest.split('/')
            .map(|t| t.replace("~1", "/").replace("~0", "~"))
            .collect(),
    )
}

/// Splits a pointer into the parent container and the last token.
fn parent_mut<'a>(doc: &'a mut Value, tokens: &[String]) -> Option<(&'a mut Value, String)> {
    let (last, parents) = tokens.split_last()?;
    let mut cur = doc;
    for t in parents {
        cur = match cur {
            Value::Object(o) => o.get_mut(t)?,
            Value::Array(a) => a.get_mut(t.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some((cur, last.clone()))
}

fn get<'a>(doc: &'a Value, tokens: &[String]) -> Option<&'a Value> {
    let mut cur = doc;
    for t in tokens {
        cur = match cur {
            Value::Object(o) => o.get(t)?,
            Value::Array(a) => a.get(t.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(cur)
}

fn add(doc: &mut Value, tokens: &[String], value: Value) -> Option<()> {
    if tokens.is_empty() {
        *doc = value;
        return Some(());
    }
    let (parent, last) = parent_mut(doc, tokens)?;
    match parent {
        Value::Object(o) => {
            o.insert(last, value);
        }
        Value::Array(a) => {
            let i = if last == "-" {
                a.len()
            } else {
                last.parse::<usize>().ok()?
            };
            if i > a.len() {
                return None;
            }
            a.insert(i, value);
        }
        _ => return None,
    }
    Some(())
}

fn remove(doc: &mut Value, tokens: &[String]) -> Option<Value> {
    let (parent, last) = parent_mut(doc, tokens)?;
    match parent {
        Value::Object(o) => o.shift_remove(&last),
        Value::Array(a) => {
            let i = last.parse::<usize>().ok()?;
            (i < a.len()).then(|| a.remove(i))
        }
        _ => None,
    }
}

/// Applies `patch` (an array of operations) to `doc`; all or nothing.
pub fn apply(mut doc: Value, patch: &Value) -> Result<Value, RestError> {
    let ops = patch
        .as_array()
        .ok_or_else(|| RestError::bad("a JSON Patch must be an array of operations"))?;
    for (i, op) in ops.iter().enumerate() {
        let name = op
            .get("op")
            .and_then(Value::as_str)
            .ok_or_else(|| bad(i, "has no \"op\""))?;
        let path = op
            .get("path")
            .and_then(Value::as_str)
            .ok_or_else(|| bad(i, "has no \"path\""))?;
        let tokens = pointer_tokens(path).ok_or_else(|| bad(i, "has an invalid \"path\""))?;
        let value = || {
            op.get("value")
                .cloned()
                .ok_or_else(|| bad(i, "has no \"value\""))
        };
        let from = || {
            op.get("from")
                .and_then(Value::as_str)
                .and_then(pointer_tokens)
                .ok_or_else(|| bad(i, "has no valid \"from\""))
        };
        match name {
            "add" => add(&mut doc, &tokens, value()?)
                .ok_or_else(|| bad(i, "points at a missing location"))?,
            "remove" => {
                remove(&mut doc, &tokens).ok_or_else(|| bad(i, "removes a missing value"))?;
            }
            "replace" => {
                let v = value()?;
                remove(&mut doc, &tokens).ok_or_else(|| bad(i, "replaces a missing value"))?;
                add(&mut doc, &tokens, v).ok_or_else(|| bad(i, "points at a missing location"))?;
            }
            "move" => {
                let f = from()?;
                if tokens.starts_with(&f) && tokens.len() > f.len() {
                    return Err(bad(i, "moves a value into itself"));
                }
                let v = remove(&mut doc, &f).ok_or_else(|| bad(i, "moves a missing value"))?;
                add(&mut doc, &tokens, v).ok_or_else(|| bad(i, "points at a missing location"))?;
            }
            "copy" => {
                let v = get(&doc, &from()?)
                    .cloned()
                    .ok_or_else(|| bad(i, "copies a missing value"))?;
                add(&mut doc, &tokens, v).ok_or_else(|| bad(i, "points at a missing location"))?;
            }
            "test" => {
                if get(&doc, &tokens) != Some(&value()?) {
                    return Err(RestError::PreconditionFailed(format!(
                        "JSON Patch test operation {i} failed"
                    )));
                }
            }
            _ => return Err(bad(i, "has an unknown \"op\"")),
        }
    }
    Ok(doc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn operations_apply_in_order() {
        let doc = json!({"a": 1, "b": [1, 2], "c": {"d": "x"}});
        let p = json!([
            {"op": "add", "path": "/b/-", "value": 3},
            {"op": "replace", "path": "/a", "value": 2},
            {"op": "move", "from": "/c/d", "path": "/e"},
            {"op": "copy", "from": "/e", "path": "/f"},
            {"op": "remove", "path": "/b/0"},
            {"op": "test", "path": "/f", "value": "x"}
        ]);
        assert_eq!(
            apply(doc, &p).unwrap(),
            json!({"a": 2, "b": [2, 3], "c": {}, "e": "x", "f": "x"})
        );
    }

    #[test]
    fn bad_operations_are_rejected() {
        let doc = json!({"a": 1});
        assert!(matches!(
            apply(doc.clone(), &json!([{"op": "remove", "path": "/zz"}])),
            Err(RestError::BadRequest { .. })
        ));
        assert!(matches!(
            apply(
                doc.clone(),
                &json!([{"op": "test", "path": "/a", "value": 2}])
            ),
            Err(RestError::PreconditionFailed(_))
        ));
        assert!(matches!(
            apply(doc, &json!({"op": "add"})),
            Err(RestError::BadRequest { .. })
        ));
    }
}
