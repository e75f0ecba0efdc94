//! Accounting of disclosures and user-activity reports: one row per AuditEvent, rendered as CSV,
//! JSON or a self-contained HTML page.
//!
//! The organisation of the person comes from the event's `detail` fact named
//! [`DETAIL_ORGANISATION`] (the server puts the user's department there). A search's query is
//! never shown, since its values may name other patients: the row says `search <path>` instead.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Map, Value, json};

use crate::event::{
    Action, EventKind, Outcome, SYSTEM_ACT_REASON, SYSTEM_CAREVAULT_ENTITY_TYPE,
    SYSTEM_OBJECT_ROLE, SYSTEM_ROLE, client_of, patients_of, user_of,
};

/// The `detail` key under which an event carries the acting person's organisation.
pub const DETAIL_ORGANISATION: &str = "organisation";

/// The stylesheet of [`render_html`], inside its only `<style>` element.
pub const HTML_STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2em;color:#111}\
table{border-collapse:collapse;width:100%;font-size:0.9em}\
th,td{border:1px solid #bbb;padding:0.3em 0.5em;text-align:left;vertical-align:top}\
th{background:#eee}tbody tr:nth-child(even){background:#f7f7f7}";

/// The CSP source for [`HTML_STYLE`]: `style-src 'sha256-…'` admits exactly that stylesheet.
pub const HTML_STYLE_SHA256: &str = "sha256-TvxW9qOPzpeCE0uGjI8wGlWBMEpL74G44NFhDv1XQ94=";

/// The column names, in order, as used by every format.
pub const COLUMNS: [&str; 10] = [
    "when",
    "who",
    "role",
    "organisation",
    "client",
    "what",
    "action",
    "purpose",
    "outcome",
    "patients",
];

/// One line of a report: who did what to whose data, when, why and how it ended.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReportRow {
    /// When, as recorded (UTC with milliseconds).
    pub when: String,
    /// The user account, or the client id when an app acted alone.
    pub who: String,
    /// The user's roles, comma-separated.
    pub role: String,
    /// The user's organisation, when the event names it.
    pub organisation: String,
    /// The client app.
    pub client: String,
    /// What was seen or changed: resource references, `search <path>`, or the event kind.
    pub what: String,
    /// What was done: the interaction (`read`, `search-type`, `$export`, ...) or event kind.
    pub action: String,
    /// Purposes of use, with the break-the-glass reason.
    pub purpose: String,
    /// How it ended: success or the kind of failure, with its description.
    pub outcome: String,
    /// Patients whose data was involved.
    pub patients: Vec<String>,
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> Option<&'a str> {
    v.pointer(pointer).and_then(Value::as_str)
}

fn array<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v.get(key)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

fn coded(c: &Value, system: &str) -> Option<String> {
    (c.get("system")?.as_str()? == system).then(|| c.get("code")?.as_str().map(str::to_owned))?
}

impl ReportRow {
    /// The row for one stored AuditEvent; elements it lacks stay empty.
    pub fn from_event(event: &Value) -> ReportRow {
        let user = user_of(event);
        let client = client_of(event).unwrap_or_default();
        let requestor = array(event, "agent")
            .iter()
            .find(|a| a.get("requestor") == Some(&Value::Bool(true)));
        let role = requestor
            .map(|a| {
                array(a, "role")
                    .iter()
                    .flat_map(|r| array(r, "coding"))
                    .filter_map(|c| coded(c, SYSTEM_ROLE))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default();
        let entities = array(event, "entity");
        let organisation = entities
            .iter()
            .filter(|e| {
                e.get("type")
                    .and_then(|t| coded(t, SYSTEM_CAREVAULT_ENTITY_TYPE))
                    .as_deref()
                    == Some("detail")
            })
            .flat_map(|e| array(e, "detail"))
            .find(|d| d.get("type").and_then(Value::as_str) == Some(DETAIL_ORGANISATION))
            .and_then(|d| d.get("valueString").and_then(Value::as_str))
            .unwrap_or_default()
            .to_owned();
        let kind = EventKind::from_event(event);
        let mut what: Vec<String> = entities
            .iter()
            .filter(|e| {
                e.get("role")
                    .and_then(|r| coded(r, SYSTEM_OBJECT_ROLE))
                    .as_deref()
                    == Some("4")
            })
            .filter_map(|e| str_at(e, "/what/reference").map(str::to_owned))
            .collect();
        if what.is_empty()
            && let Some(query) = entities.iter().find_map(|e| {
                let role = e.get("role").and_then(|r| coded(r, SYSTEM_OBJECT_ROLE));
                (role.as_deref() == Some("24")).then(|| e.get("query")?.as_str())?
            })
        {
            what.push(search_label(query));
        }
        if what.is_empty()
            && let Some(k) = &kind
        {
            what.push(k.code().to_owned());
        }
        let action = match &kind {
            Some(k) => k.code().to_owned(),
            None => str_at(event, "/action")
                .and_then(Action::from_code)
                .map(|a| a.label().to_owned())
                .unwrap_or_default(),
        };
        let purpose = array(event, "purposeOfEvent")
            .iter()
            .filter_map(|p| {
                let code = array(p, "coding")
                    .iter()
                    .find_map(|c| coded(c, SYSTEM_ACT_REASON))?;
                Some(match p.get("text").and_then(Value::as_str) {
                    Some(text) => format!("{code} ({text})"),
                    None => code,
                })
            })
            .collect::<Vec<_>>()
            .join(", ");
        let mut outcome = str_at(event, "/outcome")
            .and_then(Outcome::from_code)
            .map(|o| o.label().to_owned())
            .unwrap_or_default();
        if let Some(desc) = str_at(event, "/outcomeDesc") {
            outcome = format!("{outcome}: {desc}");
        }
        ReportRow {
            when: str_at(event, "/recorded").unwrap_or_default().to_owned(),
            who: user.unwrap_or_else(|| client.clone()),
            role,
            organisation,
            client,
            what: what.join(" "),
            action,
            purpose,
            outcome,
            patients: patients_of(event),
        }
    }

    fn cells(&self) -> [String; 10] {
        [
            self.when.clone(),
            self.who.clone(),
            self.role.clone(),
            self.organisation.clone(),
            self.client.clone(),
            self.what.clone(),
            self.action.clone(),
            self.purpose.clone(),
            self.outcome.clone(),
            self.patients.join(" "),
        ]
    }
}

/// `search Observation` for a query `Observation?code=...`: the path only, never the values.
fn search_label(query_b64: &str) -> String {
    let raw = B64.decode(query_b64).unwrap_or_default();
    let text = String::from_utf8_lossy(&raw);
    let path = text
        .split(['?', '#'])
        .next()
        .unwrap_or_default()
        .trim_matches('/');
    // The path of a FHIR search is a type, a compartment or nothing: keep only the characters
    // such a path can hold, so nothing else of the query can leak through it.
    let safe: String = path
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '-' | '.' | '_' | '$'))
        .take(100)
        .collect();
    if safe.is_empty() {
        "search".to_owned()
    } else {
        format!("search {safe}")
    }
}

/// One CSV cell: formula triggers neutralised with a leading `'`, then RFC 4180 quoting.
fn csv_cell(value: &str, out: &mut String) {
    let guarded = matches!(
        value.chars().next(),
        Some('=' | '+' | '-' | '@' | '\t' | '\r')
    );
    let needs_quotes = guarded || value.contains([',', '"', '\r', '\n']);
    if needs_quotes {
        out.push('"');
    }
    if guarded {
        out.push('\'');
    }
    for c in value.chars() {
        if c == '"' {
            out.push('"');
        }
        out.push(c);
    }
    if needs_quotes {
        out.push('"');
    }
}

/// The rows as RFC 4180 CSV with a header line and CRLF line ends.
///
/// A cell that starts with `=`, `+`, `-`, `@`, tab or carriage return is prefixed with `'` so
/// that no spreadsheet evaluates it as a formula.
pub fn render_csv(rows: &[ReportRow]) -> String {
    let mut out = String::with_capacity(128 * (rows.len() + 1));
    out.push_str(&COLUMNS.join(","));
    out.push_str("\r\n");
    for row in rows {
        for (i, cell) in row.cells().iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            csv_cell(cell, &mut out);
        }
        out.push_str("\r\n");
    }
    out
}

/// The rows as a JSON array of objects with the [`COLUMNS`] as keys (`patients` an array).
pub fn render_json(rows: &[ReportRow]) -> Value {
    Value::Array(
        rows.iter()
            .map(|r| {
                let mut m = Map::new();
                m.insert("when".into(), json!(r.when));
                m.insert("who".into(), json!(r.who));
                m.insert("role".into(), json!(r.role));
                m.insert("organisation".into(), json!(r.organisation));
                m.insert("client".into(), json!(r.client));
                m.insert("what".into(), json!(r.what));
                m.insert("action".into(), json!(r.action));
                m.insert("purpose".into(), json!(r.purpose));
                m.insert("outcome".into(), json!(r.outcome));
                m.insert("patients".into(), json!(r.patients));
                Value::Object(m)
            })
            .collect(),
    )
}

fn html_escape(value: &str, out: &mut String) {
    for c in value.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
}

/// A complete HTML5 page with `title` and a table of the rows.
///
/// Every value is escaped; the page has no script and no `style` attribute, and its one
/// `<style>` element is admitted by a CSP of `style-src '`[`HTML_STYLE_SHA256`]`'`.
pub fn render_html(title: &str, rows: &[ReportRow]) -> String {
    let mut out = String::with_capacity(1024 + 256 * rows.len());
    out.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    out.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n");
    out.push_str("<title>");
    html_escape(title, &mut out);
    out.push_str("</title>\n<style>");
    out.push_str(HTML_STYLE);
    out.push_str("</style>\n</head>\n<body>\n<h1>");
    html_escape(title, &mut out);
    out.push_str("</h1>\n");
    if rows.is_empty() {
        out.push_str("<p>No recorded access.</p>\n");
    } else {
        out.push_str("<table>\n<thead><tr>");
        for c in COLUMNS {
            out.push_str("<th scope=\"col\">");
            out.push_str(c);
            out.push_str("</th>");
        }
        out.push_str("</tr></thead>\n<tbody>\n");
        for row in rows {
            out.push_str("<tr>");
            for cell in row.cells() {
                out.push_str("<td>");
                html_escape(&cell, &mut out);
                out.push_str("</td>");
            }
            out.push_str("</tr>\n");
        }
        out.push_str("</tbody>\n</table>\n");
    }
    out.push_str("</body>\n</html>\n");
    out
}

#[cfg(test)]
mod tests;
