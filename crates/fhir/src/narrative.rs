//! Safety and well-formedness checks of narrative XHTML (`text.div`), after the FHIR narrative rules.

/// Why a narrative `div` was rejected; each message is one sentence.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NarrativeError {
    /// The XHTML is not well-formed.
    #[error("the narrative is not well-formed XHTML: {0}")]
    Malformed(String),
    /// The root is not `<div xmlns="http://www.w3.org/1999/xhtml">`.
    #[error("the narrative must be a single <div xmlns=\"http://www.w3.org/1999/xhtml\"> element")]
    Root,
    /// An element outside the narrative whitelist.
    #[error("the narrative element <{0}> is not allowed")]
    Element(String),
    /// An attribute outside the whitelist, an event handler or an unsafe URL.
    #[error("the narrative attribute {0} is not allowed")]
    Attribute(String),
    /// An entity that XHTML without a DTD does not define.
    #[error("the narrative uses the undefined entity '&{0};'")]
    Entity(String),
    /// A narrative without any text or image.
    #[error("the narrative has no non-whitespace content")]
    Empty,
}

const ALLOWED_ELEMENTS: &[&str] = &[
    "a",
    "abbr",
    "acronym",
    "address",
    "area",
    "b",
    "bdo",
    "big",
    "blockquote",
    "br",
    "caption",
    "cite",
    "code",
    "col",
    "colgroup",
    "dd",
    "dfn",
    "div",
    "dl",
    "dt",
    "em",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "hr",
    "i",
    "img",
    "kbd",
    "li",
    "map",
    "ol",
    "p",
    "pre",
    "q",
    "samp",
    "small",
    "span",
    "strong",
    "sub",
    "sup",
    "table",
    "tbody",
    "td",
    "tfoot",
    "th",
    "thead",
    "tr",
    "tt",
    "ul",
    "var",
];

const ALLOWED_ATTRIBUTES: &[&str] = &[
    "abbr",
    "accesskey",
    "align",
    "alt",
    "axis",
    "bgcolor",
    "border",
    "cellhalign",
    "cellpadding",
    "cellspacing",
    "cellvalign",
    "char",
    "charoff",
    "charset",
    "class",
    "colspan",
    "compact",
    "coords",
    "dir",
    "frame",
    "headers",
    "height",
    "href",
    "hreflang",
    "hspace",
    "id",
    "lang",
    "longdesc",
    "name",
    "nowrap",
    "rel",
    "rev",
    "rowspan",
    "rules",
    "scope",
    "shape",
    "span",
    "src",
    "start",
    "style",
    "summary",
    "tabindex",
    "title",
    "type",
    "valign",
    "value",
    "vspace",
    "width",
    "xml:lang",
    "xmlns",
];

/// Checks that `div` is a safe FHIR narrative: well-formed, rooted at an XHTML `div`, only
/// whitelisted elements and attributes, no scripts, event handlers, `javascript:` URLs or
/// external images.
pub fn check_narrative(div: &str) -> Result<(), NarrativeError> {
    let mut stack: Vec<&str> = Vec::new();
    let mut rest = div.trim();
    let mut seen_root = false;
    let mut has_content = false;
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix("<!--") {
            let end = after
                .find("-->")
                .ok_or_else(|| NarrativeError::Malformed("a comment is not closed".into()))?;
            rest = &after[end + 3..];
        } else if let Some(after) = rest.strip_prefix("</") {
            let end = after
                .find('>')
                .ok_or_else(|| NarrativeError::Malformed("a closing tag is not finished".into()))?;
            let name = after[..end].trim();
            match stack.pop() {
                Some(open) if open == name => {}
                _ => {
                    return Err(NarrativeError::Malformed(format!(
                        "</{name}> does not match the open element"
                    )));
                }
            }
            rest = &after[end + 1..];
            if stack.is_empty() && !rest.trim().is_empty() {
                return Err(NarrativeError::Root);
            }
        } else if let Some(after) = rest.strip_prefix('<') {
            if after.starts_with('!') || after.starts_with('?') {
                return Err(NarrativeError::Malformed(
                    "declarations and processing instructions are not allowed".into(),
                ));
            }
            let end = tag_end(after)
                .ok_or_else(|| NarrativeError::Malformed("a tag is not finished".into()))?;
            let (inner, self_closing) = match after[..end].strip_suffix('/') {
                Some(inner) => (inner, true),
                None => (&after[..end], false),
            };
            let name_end = inner
                .find(|c: char| c.is_whitespace())
                .unwrap_or(inner.len());
            let name = &inner[..name_end];
            if !ALLOWED_ELEMENTS.contains(&name) {
                return Err(NarrativeError::Element(name.to_string()));
            }
            let attributes = parse_attributes(&inner[name_end..])?;
            if stack.is_empty() {
                if seen_root
                    || name != "div"
                    || !attributes
                        .iter()
                        .any(|(k, v)| *k == "xmlns" && *v == "http://www.w3.org/1999/xhtml")
                {
                    return Err(NarrativeError::Root);
                }
                seen_root = true;
            }
            for (key, value) in &attributes {
                check_attribute(name, key, value)?;
            }
            if name == "img" {
                has_content = true;
            }
            if !self_closing {
                stack.push(name);
            } else if stack.is_empty() {
                return Err(NarrativeError::Root);
            }
            rest = &after[end + 1..];
        } else {
            if stack.is_empty() {
                return Err(NarrativeError::Root);
            }
            let end = rest.find('<').unwrap_or(rest.len());
            let text = &rest[..end];
            check_entities(text)?;
            if !text.trim().is_empty() {
                has_content = true;
            }
            rest = &rest[end..];
        }
    }
    if !stack.is_empty() {
        return Err(NarrativeError::Malformed(format!(
            "<{}> is not closed",
            stack[stack.len() - 1]
        )));
    }
    if !seen_root {
        return Err(NarrativeError::Root);
    }
    if !has_content {
        return Err(NarrativeError::Empty);
    }
    Ok(())
}

/// The index of the `>` that ends a tag, skipping `>` inside quoted attribute values.
fn tag_end(tag: &str) -> Option<usize> {
    let mut quote = None;
    for (i, c) in tag.char_indices() {
        match (quote, c) {
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), _) if q == c => quote = None,
            (None, '>') => return Some(i),
            (None, '<') => return None,
            _ => {}
        }
    }
    None
}

fn parse_attributes(mut text: &str) -> Result<Vec<(&str, &str)>, NarrativeError> {
    let mut out = Vec::new();
    loop {
        text = text.trim_start();
        if text.is_empty() {
            return Ok(out);
        }
        let eq = text
            .find('=')
            .ok_or_else(|| NarrativeError::Malformed("an attribute has no value".into()))?;
        let key = text[..eq].trim();
        if key.is_empty() || key.contains(char::is_whitespace) {
            return Err(NarrativeError::Malformed(
                "an attribute has no value".into(),
            ));
        }
        let after = text[eq + 1..].trim_start();
        let quote = after.chars().next().filter(|c| *c == '"' || *c == '\'');
        let Some(quote) = quote else {
            return Err(NarrativeError::Malformed(format!(
                "the value of attribute {key} is not quoted"
            )));
        };
        let body = &after[1..];
        let close = body.find(quote).ok_or_else(|| {
            NarrativeError::Malformed(format!("the value of attribute {key} is not closed"))
        })?;
        let value = &body[..close];
        check_entities(value)?;
        if out.iter().any(|(k, _)| *k == key) {
            return Err(NarrativeError::Malformed(format!(
                "attribute {key} appears twice"
            )));
        }
        out.push((key, value));
        text = &body[close + 1..];
    }
}

fn check_attribute(element: &str, key: &str, value: &str) -> Result<(), NarrativeError> {
    let lower = key.to_ascii_lowercase();
    if lower.starts_with("on") || !ALLOWED_ATTRIBUTES.contains(&lower.as_str()) {
        return Err(NarrativeError::Attribute(key.to_string()));
    }
    let compact: String = value
        .chars()
        .filter(|c| !c.is_whitespace() && !c.is_control())
        .collect::<String>()
        .to_ascii_lowercase();
    if compact.starts_with("javascript:")
        || compact.starts_with("vbscript:")
        || (compact.starts_with("data:") && lower == "href")
    {
        return Err(NarrativeError::Attribute(format!(
            "{key} with a script URL"
        )));
    }
    if lower == "style" && (compact.contains("url(") || compact.contains("expression(")) {
        return Err(NarrativeError::Attribute("style that loads content".into()));
    }
    if element == "img"
        && lower == "src"
        && !(value.starts_with('#') || compact.starts_with("data:"))
    {
        return Err(NarrativeError::Attribute(
            "src of an image outside the resource (use #id or data:)".into(),
        ));
    }
    Ok(())
}

fn check_entities(text: &str) -> Result<(), NarrativeError> {
    let mut rest = text;
    while let Some(start) = rest.find('&') {
        let after = &rest[start + 1..];
        let end = after
            .find(';')
            .ok_or_else(|| NarrativeError::Malformed("an '&' is not escaped as &amp;".into()))?;
        let name = &after[..end];
        let known = matches!(name, "amp" | "lt" | "gt" | "quot" | "apos")
            || name
                .strip_prefix("#x")
                .is_some_and(|h| !h.is_empty() && h.chars().all(|c| c.is_ascii_hexdigit()))
            || name
                .strip_prefix('#')
                .is_some_and(|d| !d.is_empty() && d.chars().all(|c| c.is_ascii_digit()));
        if !known {
            return Err(NarrativeError::Entity(name.chars().take(20).collect()));
        }
        rest = &after[end + 1..];
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPEN: &str = r#"<div xmlns="http://www.w3.org/1999/xhtml">"#;

    fn wrap(body: &str) -> String {
        format!("{OPEN}{body}</div>")
    }

    #[test]
    fn accepts_ordinary_narrative() {
        assert_eq!(
            check_narrative(&wrap(
                "<p>Hello <b>world</b> &amp; &#169;<br/></p><img src=\"#pic\"/>"
            )),
            Ok(())
        );
        assert_eq!(
            check_narrative(&wrap(
                "<table><tr><td colspan=\"2\">x</td></tr></table><!-- note -->"
            )),
            Ok(())
        );
    }

    #[test]
    fn rejects_script_and_forbidden_elements() {
        for body in [
            "<script>alert(1)</script>",
            "<iframe src=\"x\"></iframe>",
            "<object></object>",
            "<form></form>",
            "<style>p{}</style>",
        ] {
            assert!(
                matches!(
                    check_narrative(&wrap(body)),
                    Err(NarrativeError::Element(_))
                ),
                "{body}"
            );
        }
    }

    #[test]
    fn rejects_event_handlers_and_script_urls() {
        assert!(matches!(
            check_narrative(&wrap("<p onclick=\"x()\">a</p>")),
            Err(NarrativeError::Attribute(_))
        ));
        assert!(matches!(
            check_narrative(&wrap("<a href=\" JavaScript:alert(1)\">a</a>")),
            Err(NarrativeError::Attribute(_))
        ));
        assert!(matches!(
            check_narrative(&wrap("<img src=\"http://evil.example/t.png\"/>a")),
            Err(NarrativeError::Attribute(_))
        ));
        assert!(matches!(
            check_narrative(&wrap("<p style=\"background:url(http://x)\">a</p>")),
            Err(NarrativeError::Attribute(_))
        ));
    }

    #[test]
    fn rejects_wrong_root_and_malformed_markup() {
        assert_eq!(
            check_narrative("<div>text</div>"),
            Err(NarrativeError::Root)
        );
        assert_eq!(
            check_narrative(r#"<p xmlns="http://www.w3.org/1999/xhtml">x</p>"#),
            Err(NarrativeError::Root)
        );
        assert!(matches!(
            check_narrative(&format!("{OPEN}<p>x</div>")),
            Err(NarrativeError::Malformed(_))
        ));
        assert!(matches!(
            check_narrative(&format!("{OPEN}<p>x</p>")),
            Err(NarrativeError::Malformed(_))
        ));
        assert_eq!(
            check_narrative(&wrap("a &reg; b")),
            Err(NarrativeError::Entity("reg".into()))
        );
        assert_eq!(check_narrative(&wrap("  ")), Err(NarrativeError::Empty));
    }
}
