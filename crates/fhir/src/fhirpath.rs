//! A focused FHIRPath parser and evaluator for the expressions the R4 SearchParameters use.

use serde_json::Value;

/// Why an expression could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot parse FHIRPath '{expression}': {reason}")]
pub struct FhirPathError {
    /// The expression as given.
    pub expression: String,
    /// What was wrong, at which position.
    pub reason: String,
}

/// A parsed FHIRPath expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// The evaluation context (`$this`, or the start of a relative path).
    This,
    /// `%resource`: the resource being indexed.
    Resource,
    /// A string literal.
    Text(String),
    /// A boolean literal.
    Bool(bool),
    /// A member access (`name`) on a collection; a leading type name selects the context.
    Member(Box<Expr>, String),
    /// A function call on a collection.
    Call(Box<Expr>, String, Vec<Expr>),
    /// `[n]`.
    Index(Box<Expr>, usize),
    /// `a | b`.
    Union(Box<Expr>, Box<Expr>),
    /// `x is T`.
    Is(Box<Expr>, String),
    /// `x as T`.
    As(Box<Expr>, String),
    /// `a = b` (`negated`: `!=`).
    Equals(Box<Expr>, Box<Expr>, bool),
    /// `a and b`.
    And(Box<Expr>, Box<Expr>),
    /// `a or b`.
    Or(Box<Expr>, Box<Expr>),
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Ident(String),
    Text(String),
    Number(usize),
    Symbol(&'static str),
}

fn tokenize(s: &str) -> Result<Vec<Token>, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        match c {
            b' ' | b'\t' | b'\r' | b'\n' => i += 1,
            b'\'' => {
                let end = s[i + 1..].find('\'').ok_or("a string is not closed")?;
                out.push(Token::Text(s[i + 1..i + 1 + end].to_string()));
                i += end + 2;
            }
            b'0'..=b'9' => {
                let end = s[i..]
                    .find(|c: char| !c.is_ascii_digit())
                    .map_or(s.len(), |e| i + e);
                out.push(Token::Number(s[i..end].parse().map_err(|_| "bad number")?));
                i = end;
            }
            b'!' if bytes.get(i + 1) == Some(&b'=') => {
                out.push(Token::Symbol("!="));
                i += 2;
            }
            b'.' | b'(' | b')' | b'[' | b']' | b'|' | b'=' | b',' => {
                let symbol = match c {
                    b'.' => ".",
                    b'(' => "(",
                    b')' => ")",
                    b'[' => "[",
                    b']' => "]",
                    b'|' => "|",
                    b'=' => "=",
                    _ => ",",
                };
                out.push(Token::Symbol(symbol));
                i += 1;
            }
            b'%' | b'$' | b'_' | b'a'..=b'z' | b'A'..=b'Z' => {
                let end = s[i + 1..]
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .map_or(s.len(), |e| i + 1 + e);
                out.push(Token::Ident(s[i..end].to_string()));
                i = end;
            }
            _ => return Err(format!("unexpected character '{}' at {i}", c as char)),
        }
    }
    Ok(out)
}

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos)
    }

    fn eat_symbol(&mut self, symbol: &str) -> bool {
        if matches!(self.peek(), Some(Token::Symbol(s)) if *s == symbol) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn eat_word(&mut self, word: &str) -> bool {
        if matches!(self.peek(), Some(Token::Ident(w)) if w == word) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, symbol: &str) -> Result<(), String> {
        if self.eat_symbol(symbol) {
            Ok(())
        } else {
            Err(format!("expected '{symbol}' at token {}", self.pos))
        }
    }

    fn ident(&mut self) -> Result<String, String> {
        match self.tokens.get(self.pos) {
            Some(Token::Ident(name)) => {
                self.pos += 1;
                Ok(name.clone())
            }
            _ => Err(format!("expected a name at token {}", self.pos)),
        }
    }

    fn type_name(&mut self) -> Result<String, String> {
        let mut name = self.ident()?;
        while self.eat_symbol(".") {
            name = self.ident()?;
        }
        Ok(name)
    }

    fn or(&mut self) -> Result<Expr, String> {
        let mut left = self.and()?;
        while self.eat_word("or") {
            left = Expr::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Expr, String> {
        let mut left = self.equality()?;
        while self.eat_word("and") {
            left = Expr::And(Box::new(left), Box::new(self.equality()?));
        }
        Ok(left)
    }

    fn equality(&mut self) -> Result<Expr, String> {
        let mut left = self.union()?;
        loop {
            let negated = if self.eat_symbol("=") {
                false
            } else if self.eat_symbol("!=") {
                true
            } else {
                return Ok(left);
            };
            left = Expr::Equals(Box::new(left), Box::new(self.union()?), negated);
        }
    }

    fn union(&mut self) -> Result<Expr, String> {
        let mut left = self.type_op()?;
        while self.eat_symbol("|") {
            left = Expr::Union(Box::new(left), Box::new(self.type_op()?));
        }
        Ok(left)
    }

    fn type_op(&mut self) -> Result<Expr, String> {
        let mut left = self.postfix()?;
        loop {
            if self.eat_word("is") {
                left = Expr::Is(Box::new(left), self.type_name()?);
            } else if self.eat_word("as") {
                left = Expr::As(Box::new(left), self.type_name()?);
            } else {
                return Ok(left);
            }
        }
    }

    fn postfix(&mut self) -> Result<Expr, String> {
        let mut expr = self.term()?;
        loop {
            if self.eat_symbol(".") {
                expr = self.invocation(expr)?;
            } else if self.eat_symbol("[") {
                let Some(Token::Number(n)) = self.peek().cloned() else {
                    return Err("expected an index".into());
                };
                self.pos += 1;
                self.expect("]")?;
                expr = Expr::Index(Box::new(expr), n);
            } else {
                return Ok(expr);
            }
        }
    }

    fn invocation(&mut self, on: Expr) -> Result<Expr, String> {
        let name = self.ident()?;
        if !self.eat_symbol("(") {
            return Ok(Expr::Member(Box::new(on), name));
        }
        let mut args = Vec::new();
        if !self.eat_symbol(")") {
            loop {
                // Type arguments (`as(Quantity)`, `ofType(FHIR.Patient)`) parse as member paths.
                args.push(self.or()?);
                if self.eat_symbol(")") {
                    break;
                }
                self.expect(",")?;
            }
        }
        Ok(Expr::Call(Box::new(on), name, args))
    }

    fn term(&mut self) -> Result<Expr, String> {
        match self.tokens.get(self.pos).cloned() {
            Some(Token::Symbol("(")) => {
                self.pos += 1;
                let inner = self.or()?;
                self.expect(")")?;
                Ok(inner)
            }
            Some(Token::Text(t)) => {
                self.pos += 1;
                Ok(Expr::Text(t))
            }
            Some(Token::Ident(word)) => {
                self.pos += 1;
                match word.as_str() {
                    "true" => Ok(Expr::Bool(true)),
                    "false" => Ok(Expr::Bool(false)),
                    "%resource" | "%rootResource" => Ok(Expr::Resource),
                    "$this" => Ok(Expr::This),
                    _ if self.eat_symbol("(") => {
                        self.pos -= 2;
                        self.invocation(Expr::This)
                    }
                    _ => Ok(Expr::Member(Box::new(Expr::This), word)),
                }
            }
            other => Err(format!("unexpected {other:?} at token {}", self.pos)),
        }
    }
}

/// Parses a FHIRPath expression of the subset the R4 SearchParameters use.
pub fn parse(expression: &str) -> Result<Expr, FhirPathError> {
    let fail = |reason: String| FhirPathError {
        expression: expression.to_string(),
        reason,
    };
    let tokens = tokenize(expression).map_err(fail)?;
    let mut parser = Parser { tokens, pos: 0 };
    let expr = parser.or().map_err(fail)?;
    if parser.pos != parser.tokens.len() {
        return Err(fail(format!(
            "unexpected trailing input at token {}",
            parser.pos
        )));
    }
    Ok(expr)
}

/// One item of an evaluation result.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Item<'a> {
    /// A JSON node, with its FHIR type when the path revealed it (a choice suffix such as
    /// `Quantity` in `valueQuantity`, the resource type of a resource, or the target type of a
    /// resolved reference).
    Node(&'a Value, Option<&'a str>),
    /// A computed boolean.
    Bool(bool),
}

impl<'a> Item<'a> {
    /// The JSON value, when the item is one.
    pub fn value(&self) -> Option<&'a Value> {
        match self {
            Item::Node(v, _) => Some(v),
            Item::Bool(_) => None,
        }
    }

    /// The FHIR type the path revealed, if any.
    pub fn type_name(&self) -> Option<&'a str> {
        match self {
            Item::Node(_, t) => *t,
            Item::Bool(_) => Some("boolean"),
        }
    }
}

fn type_matches(item: &Item<'_>, wanted: &str) -> bool {
    item.type_name()
        .is_some_and(|t| t.eq_ignore_ascii_case(wanted))
}

fn push_value<'a>(out: &mut Vec<Item<'a>>, value: &'a Value, ty: Option<&'a str>) {
    match value {
        Value::Array(items) => out.extend(items.iter().map(|v| Item::Node(v, ty))),
        Value::Null => {}
        v => out.push(Item::Node(v, ty)),
    }
}

fn resource_type_of(value: &Value) -> Option<&str> {
    value.get("resourceType").and_then(Value::as_str)
}

/// Evaluates `expr` with `context` as `$this` and `resource` as `%resource`.
pub fn evaluate<'a>(expr: &Expr, context: &[Item<'a>], resource: &'a Value) -> Vec<Item<'a>> {
    match expr {
        Expr::This => context.to_vec(),
        Expr::Resource => vec![Item::Node(resource, resource_type_of(resource))],
        Expr::Text(_) => Vec::new(),
        Expr::Bool(b) => vec![Item::Bool(*b)],
        Expr::Member(on, name) => {
            let base = evaluate(on, context, resource);
            let mut out = Vec::new();
            for item in &base {
                let Item::Node(value, ty) = item else {
                    continue;
                };
                let is_type_name = name.starts_with(|c: char| c.is_ascii_uppercase());
                if is_type_name && matches!(**on, Expr::This) {
                    let matches = name == "Resource"
                        || name == "DomainResource"
                        || ty.is_some_and(|t| t == name)
                        || resource_type_of(value) == Some(name);
                    if matches {
                        out.push(*item);
                    }
                    continue;
                }
                let Value::Object(map) = value else { continue };
                if let Some(v) = map.get(name.as_str()) {
                    push_value(&mut out, v, None);
                    continue;
                }
                for (key, v) in map {
                    if let Some(suffix) = key.strip_prefix(name.as_str())
                        && suffix.starts_with(|c: char| c.is_ascii_uppercase())
                    {
                        push_value(&mut out, v, Some(suffix));
                    }
                }
            }
            out
        }
        Expr::Index(on, n) => evaluate(on, context, resource)
            .into_iter()
            .nth(*n)
            .into_iter()
            .collect(),
        Expr::Union(a, b) => {
            let mut out = evaluate(a, context, resource);
            for item in evaluate(b, context, resource) {
                if !out.contains(&item) {
                    out.push(item);
                }
            }
            out
        }
        Expr::Is(on, ty) => evaluate(on, context, resource)
            .iter()
            .map(|i| Item::Bool(type_matches(i, ty)))
            .collect(),
        Expr::As(on, ty) => evaluate(on, context, resource)
            .into_iter()
            .filter(|i| type_matches(i, ty))
            .collect(),
        Expr::Equals(a, b, negated) => {
            let left = evaluate(a, context, resource);
            if left.is_empty() {
                return Vec::new();
            }
            let equal = match &**b {
                Expr::Text(t) => left
                    .iter()
                    .any(|i| i.value().and_then(Value::as_str) == Some(t.as_str())),
                Expr::Bool(v) => left.iter().any(|i| match i {
                    Item::Bool(x) => x == v,
                    Item::Node(n, _) => n.as_bool() == Some(*v),
                }),
                other => {
                    let right = evaluate(other, context, resource);
                    left.iter().any(|l| {
                        right
                            .iter()
                            .any(|r| l.value().is_some() && l.value() == r.value())
                    })
                }
            };
            vec![Item::Bool(equal != *negated)]
        }
        Expr::And(a, b) => {
            let both =
                truthy(&evaluate(a, context, resource)) && truthy(&evaluate(b, context, resource));
            vec![Item::Bool(both)]
        }
        Expr::Or(a, b) => {
            let either =
                truthy(&evaluate(a, context, resource)) || truthy(&evaluate(b, context, resource));
            vec![Item::Bool(either)]
        }
        Expr::Call(on, name, args) => call(on, name, args, context, resource),
    }
}

fn truthy(items: &[Item<'_>]) -> bool {
    match items {
        [Item::Bool(b)] => *b,
        [] => false,
        _ => true,
    }
}

fn type_argument(args: &[Expr]) -> Option<&str> {
    match args.first() {
        Some(Expr::Member(on, name)) if matches!(**on, Expr::This) => Some(name.as_str()),
        Some(Expr::Member(_, name)) => Some(name.as_str()),
        _ => None,
    }
}

fn call<'a>(
    on: &Expr,
    name: &str,
    args: &[Expr],
    context: &[Item<'a>],
    resource: &'a Value,
) -> Vec<Item<'a>> {
    let base = evaluate(on, context, resource);
    match name {
        "where" => {
            let Some(condition) = args.first() else {
                return Vec::new();
            };
            base.into_iter()
                .filter(|item| truthy(&evaluate(condition, std::slice::from_ref(item), resource)))
                .collect()
        }
        "exists" => vec![Item::Bool(!base.is_empty())],
        "empty" => vec![Item::Bool(base.is_empty())],
        "not" => vec![Item::Bool(!truthy(&base))],
        "first" => base.into_iter().take(1).collect(),
        "as" | "ofType" => match type_argument(args) {
            Some(ty) => base.into_iter().filter(|i| type_matches(i, ty)).collect(),
            None => Vec::new(),
        },
        "is" => match type_argument(args) {
            Some(ty) => base
                .iter()
                .map(|i| Item::Bool(type_matches(i, ty)))
                .collect(),
            None => Vec::new(),
        },
        "resolve" => base
            .into_iter()
            .filter_map(|item| {
                let value = item.value()?;
                let reference = value
                    .get("reference")
                    .and_then(Value::as_str)
                    .or_else(|| value.as_str())?;
                Some(Item::Node(value, reference_target_type(reference)))
            })
            .collect(),
        "extension" => {
            let Some(Expr::Text(url)) = args.first() else {
                return Vec::new();
            };
            let mut out = Vec::new();
            for item in &base {
                let Some(extensions) = item
                    .value()
                    .and_then(|v| v.get("extension"))
                    .and_then(Value::as_array)
                else {
                    continue;
                };
                for extension in extensions {
                    if extension.get("url").and_then(Value::as_str) == Some(url.as_str()) {
                        out.push(Item::Node(extension, Some("Extension")));
                    }
                }
            }
            out
        }
        _ => Vec::new(),
    }
}

/// The resource type a literal reference points to (`Patient/1`, `http://x/fhir/Patient/1`,
/// `Patient/1/_history/2`), if it names one.
pub fn reference_target_type(reference: &str) -> Option<&str> {
    let path = reference.split('?').next().unwrap_or(reference);
    let segments: Vec<&str> = path.split('/').collect();
    let mut n = segments.len();
    if n >= 4 && segments[n - 2] == "_history" {
        n -= 2;
    }
    if n < 2 {
        return None;
    }
    let rtype = segments[n - 2];
    rtype
        .starts_with(|c: char| c.is_ascii_uppercase())
        .then_some(rtype)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn eval<'a>(expression: &str, resource: &'a Value) -> Vec<Item<'a>> {
        let expr = parse(expression).expect("parses");
        let root = [Item::Node(resource, resource_type_of(resource))];
        evaluate(&expr, &root, resource)
    }

    #[test]
    fn paths_unions_and_choice_types() {
        let obs = json!({"resourceType": "Observation", "code": {"text": "a"}, "valueQuantity": {"value": 1}, "component": [{"code": {"text": "b"}}]});
        assert_eq!(
            eval("Observation.code | Observation.component.code", &obs).len(),
            2
        );
        assert_eq!(eval("(Observation.value as Quantity)", &obs).len(), 1);
        assert_eq!(eval("Observation.value.as(CodeableConcept)", &obs).len(), 0);
        assert_eq!(eval("Observation.value.ofType(Quantity)", &obs).len(), 1);
        assert!(eval("Patient.name", &obs).is_empty());
        assert_eq!(eval("Resource.code", &obs).len(), 1);
    }

    #[test]
    fn where_resolve_and_comparisons() {
        let enc = json!({"resourceType": "Encounter", "subject": {"reference": "Patient/1"}, "telecom": [{"system": "phone", "value": "1"}, {"system": "email", "value": "x"}]});
        assert_eq!(
            eval("Encounter.subject.where(resolve() is Patient)", &enc).len(),
            1
        );
        assert_eq!(
            eval("Encounter.subject.where(resolve() is Group)", &enc).len(),
            0
        );
        assert_eq!(
            eval("Encounter.telecom.where(system='email')", &enc).len(),
            1
        );
        let dead = json!({"resourceType": "Patient", "deceasedBoolean": true});
        assert_eq!(
            eval(
                "Patient.deceased.exists() and Patient.deceased != false",
                &dead
            ),
            vec![Item::Bool(true)]
        );
        let alive = json!({"resourceType": "Patient", "deceasedBoolean": false});
        assert_eq!(
            eval(
                "Patient.deceased.exists() and Patient.deceased != false",
                &alive
            ),
            vec![Item::Bool(false)]
        );
    }

    #[test]
    fn extensions_and_indexers() {
        let r = json!({"resourceType": "Bundle", "entry": [{"resource": {"resourceType": "Composition", "extension": [{"url": "u", "valueString": "v"}]}}]});
        assert_eq!(eval("Bundle.entry[0].resource", &r).len(), 1);
        assert_eq!(
            eval("Bundle.entry[0].resource.extension('u').value", &r).len(),
            1
        );
        assert_eq!(eval("Bundle.entry.resource.first()", &r).len(), 1);
    }

    #[test]
    fn rejects_malformed_expressions() {
        assert!(parse("Patient.name.where(").is_err());
        assert!(parse("Patient..name").is_err());
        assert!(parse("Patient.name #").is_err());
    }

    #[test]
    fn reference_types() {
        assert_eq!(reference_target_type("Patient/1"), Some("Patient"));
        assert_eq!(
            reference_target_type("https://x.org/fhir/Patient/1/_history/2"),
            Some("Patient")
        );
        assert_eq!(reference_target_type("urn:uuid:123"), None);
    }
}
