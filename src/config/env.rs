//! `${VAR}` and `${VAR:-default}` expansion inside parsed YAML scalar values. Each reference is
//! first replaced by an inert marker, the text is parsed, and the markers inside each scalar's
//! value are then replaced by the variables' values, so a value can never add fields, end a
//! string or start a comment, whatever it holds (`#`, newlines, quotes). A plain (unquoted)
//! scalar is typed after expansion as YAML types it (`port: ${PORT}` is a number when
//! `PORT=8080`); a quoted one stays a string. References work in block and flow style alike, and
//! errors name the line and column the user wrote. `$${` writes a literal `${`. Comments are
//! never expanded.

use std::borrow::Cow;
use std::collections::HashMap;

use serde_yaml_ng::{Mapping, Value};
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// An unset variable without a default, or a malformed reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvError {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// Marks a reference's place in the text handed to the YAML parser: `OPEN index CLOSE`, from
/// Unicode's private use area, so that it is a plain scalar's ordinary characters in any context
/// (block, flow, quoted) and can never be YAML syntax.
const OPEN: char = '\u{E000}';
const CLOSE: char = '\u{E001}';

/// The text with every reference replaced by a marker, and each marker's value.
fn mark_references(
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<(String, Vec<String>), Vec<EnvError>> {
    let mut out = String::with_capacity(text.len());
    let mut values = Vec::new();
    let mut errors = Vec::new();
    if let Some((n, line)) = text
        .lines()
        .enumerate()
        .find(|(_, l)| l.contains([OPEN, CLOSE]))
    {
        errors.push(EnvError {
            line: n + 1,
            column: line.find([OPEN, CLOSE]).map_or(1, |c| c + 1),
            message: "characters U+E000 and U+E001 are reserved in config files".into(),
        });
    }
    for (idx, line) in text.split_inclusive('\n').enumerate() {
        expand_line(line, idx + 1, lookup, &mut out, &mut values, &mut errors);
    }
    if errors.is_empty() {
        Ok((out, values))
    } else {
        Err(errors)
    }
}

fn push_marker(out: &mut String, values: &mut Vec<String>, value: String) {
    out.push(OPEN);
    out.push_str(&values.len().to_string());
    out.push(CLOSE);
    values.push(value);
}

/// A scalar's value with its markers replaced by what they stand for.
fn substitute<'a>(scalar: &'a str, values: &[String]) -> Cow<'a, str> {
    if !scalar.contains(OPEN) {
        return Cow::Borrowed(scalar);
    }
    let mut out = String::with_capacity(scalar.len());
    let mut rest = scalar;
    while let Some(i) = rest.find(OPEN) {
        out.push_str(&rest[..i]);
        let after = &rest[i + OPEN.len_utf8()..];
        let Some(j) = after.find(CLOSE) else {
            break;
        };
        if let Some(v) = after[..j].parse::<usize>().ok().and_then(|k| values.get(k)) {
            out.push_str(v);
        }
        rest = &after[j + CLOSE.len_utf8()..];
    }
    out.push_str(rest);
    Cow::Owned(out)
}

fn expand_line(
    line: &str,
    line_no: usize,
    lookup: &dyn Fn(&str) -> Option<String>,
    out: &mut String,
    values: &mut Vec<String>,
    errors: &mut Vec<EnvError>,
) {
    let bytes = line.as_bytes();
    let (mut in_single, mut in_double) = (false, false);
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        match c {
            b'\'' if !in_double => in_single = !in_single,
            b'"' if !in_single && (i == 0 || bytes[i - 1] != b'\\') => in_double = !in_double,
            // A comment starts at `#` after whitespace (or at line start) outside quotes.
            b'#' if !in_single && !in_double && (i == 0 || bytes[i - 1].is_ascii_whitespace()) => {
                out.push_str(&line[i..]);
                return;
            }
            b'$' if line[i..].starts_with("$${") => {
                push_marker(out, values, "${".to_owned());
                i += 3;
                continue;
            }
            b'$' if line[i..].starts_with("${") => {
                let Some(close) = line[i + 2..].find('}') else {
                    errors.push(EnvError {
                        line: line_no,
                        column: i + 1,
                        message: "unterminated `${` (missing `}`)".into(),
                    });
                    out.push_str(&line[i..]);
                    return;
                };
                let inner = &line[i + 2..i + 2 + close];
                let (name, default) = match inner.split_once(":-") {
                    Some((n, d)) => (n, Some(d)),
                    None => (inner, None),
                };
                let valid = !name.is_empty()
                    && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                    && !name.starts_with(|c: char| c.is_ascii_digit());
                if !valid {
                    errors.push(EnvError {
                        line: line_no,
                        column: i + 1,
                        message: format!("`${{{inner}}}` is not a valid variable reference"),
                    });
                } else {
                    match lookup(name).or_else(|| default.map(str::to_owned)) {
                        Some(v) => push_marker(out, values, v),
                        None => errors.push(EnvError {
                            line: line_no,
                            column: i + 1,
                            message: format!(
                                "environment variable `{name}` is not set and has no default (write `${{{name}:-default}}` to give one)"
                            ),
                        }),
                    }
                }
                i += 2 + close + 1;
                continue;
            }
            _ => {}
        }
        // Copy one whole UTF-8 character.
        let ch_len = line[i..].chars().next().map_or(1, char::len_utf8);
        out.push_str(&line[i..i + ch_len]);
        i += ch_len;
    }
}

/// Parses YAML `text` into a value tree with every scalar expanded, and returns it with the text
/// the parser read (references replaced by markers on the same lines, for locating fields).
/// `Err(None)`: the text is not YAML (the caller reports the syntax error); `Err(Some(errors))`:
/// references that failed.
pub fn expand_yaml(
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<(Value, String), Option<Vec<EnvError>>> {
    let (marked, values) = mark_references(text, lookup).map_err(Some)?;
    // Nothing is built from text too deep or too large once read (see `bounds`).
    if let Err(e) = super::bounds::check(&marked) {
        return Err(Some(vec![EnvError {
            line: e.line.unwrap_or(1),
            column: e.column.unwrap_or(1),
            message: e.message,
        }]));
    }
    let mut builder = Builder {
        values: &values,
        stack: Vec::new(),
        anchors: HashMap::new(),
        root: None,
        documents: 0,
    };
    let mut parser = Parser::new_from_str(&marked);
    if parser.load(&mut builder, true).is_err() || builder.documents > 1 {
        return Err(None);
    }
    Ok((builder.root.unwrap_or(Value::Null), marked))
}

enum Node {
    Map(Mapping, Option<Value>, usize),
    Seq(Vec<Value>, usize),
}

struct Builder<'a> {
    values: &'a [String],
    stack: Vec<Node>,
    anchors: HashMap<usize, Value>,
    root: Option<Value>,
    documents: usize,
}

impl Builder<'_> {
    fn push(&mut self, v: Value, anchor: usize) {
        if anchor > 0 {
            self.anchors.insert(anchor, v.clone());
        }
        match self.stack.last_mut() {
            None => self.root = Some(v),
            Some(Node::Seq(items, _)) => items.push(v),
            Some(Node::Map(map, key, _)) => match key.take() {
                None => *key = Some(v),
                Some(k) => {
                    map.insert(k, v);
                }
            },
        }
    }

    fn scalar(&self, text: &str, style: TScalarStyle) -> Value {
        let value = substitute(text, self.values);
        if style == TScalarStyle::Plain {
            resolve_plain(&value)
        } else {
            Value::String(value.into_owned())
        }
    }
}

/// How YAML types a plain scalar: null, a boolean, a number, else a string. A value with
/// whitespace, `#`, or an anchor's or alias's `&` or `*` is always a string: it is never parsed
/// as YAML again (so a variable's value cannot hold aliases that expand; see `bounds`).
fn resolve_plain(s: &str) -> Value {
    if s.is_empty() || s == "~" {
        return Value::Null;
    }
    if s.contains(|c: char| c.is_whitespace() || matches!(c, '#' | '&' | '*')) {
        return Value::String(s.to_owned());
    }
    match serde_yaml_ng::from_str::<Value>(s) {
        Ok(v @ (Value::Null | Value::Bool(_) | Value::Number(_))) => v,
        _ => Value::String(s.to_owned()),
    }
}

impl MarkedEventReceiver for Builder<'_> {
    fn on_event(&mut self, ev: Event, _mark: Marker) {
        match ev {
            Event::DocumentStart => self.documents += 1,
            Event::Scalar(text, style, anchor, _tag) => {
                let v = self.scalar(&text, style);
                self.push(v, anchor);
            }
            Event::Alias(id) => {
                let v = self.anchors.get(&id).cloned().unwrap_or(Value::Null);
                self.push(v, 0);
            }
            Event::MappingStart(anchor, _) => {
                self.stack.push(Node::Map(Mapping::new(), None, anchor))
            }
            Event::SequenceStart(anchor, _) => self.stack.push(Node::Seq(Vec::new(), anchor)),
            Event::MappingEnd => {
                if let Some(Node::Map(map, _, anchor)) = self.stack.pop() {
                    self.push(Value::Mapping(map), anchor);
                }
            }
            Event::SequenceEnd => {
                if let Some(Node::Seq(items, anchor)) = self.stack.pop() {
                    self.push(Value::Sequence(items), anchor);
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "PORT" => Some("8080".into()),
            "KEY" => Some("secret".into()),
            "HASH" => Some("a # b".into()),
            "LINES" => Some("x\nextra: 1".into()),
            "QUOTE" => Some("\" ' }".into()),
            "ALIASES" => Some("[&a[x,x],*a,*a]".into()),
            "ANCHOR" => Some("&a1".into()),
            _ => None,
        }
    }

    fn yaml(text: &str) -> Value {
        expand_yaml(text, &env).unwrap().0
    }

    #[test]
    fn expands_set_default_and_escaped() {
        let got = yaml(
            "a: ${PORT}\nb: ${NOPE:-x y}\nc: \"$${PORT}\"\nd: ${KEY}-${PORT}\ne: \"${PORT}\"\n",
        );
        let want: Value = serde_yaml_ng::from_str(
            "a: 8080\nb: x y\nc: \"${PORT}\"\nd: secret-8080\ne: \"8080\"\n",
        )
        .unwrap();
        assert_eq!(got, want);
        assert!(
            got["a"].is_u64(),
            "a plain reference is typed after expansion"
        );
        assert!(got["e"].is_string(), "a quoted one stays a string");
    }

    #[test]
    fn comments_are_not_expanded() {
        let got = yaml("a: 1 # uses ${UNSET}\n# ${ALSO_UNSET}\nb: \"x # ${PORT}\"\n");
        assert_eq!(got["a"], Value::from(1));
        assert_eq!(got["b"], Value::from("x # 8080"));
    }

    #[test]
    fn a_value_cannot_cut_a_string_or_add_fields() {
        let got = yaml("a: ${HASH}\nb: ${LINES}\nc: '${QUOTE}'\nd: [${HASH}, ${PORT}]\n");
        assert_eq!(got["a"], Value::from("a # b"));
        assert_eq!(got["b"], Value::from("x\nextra: 1"));
        assert_eq!(got.get("extra"), None);
        assert_eq!(got["c"], Value::from("\" ' }"));
        assert_eq!(got["d"][0], Value::from("a # b"));
        assert_eq!(got["d"][1], Value::from(8080));
        assert_eq!(got.as_mapping().unwrap().len(), 4);
    }

    /// A value is never read as YAML with anchors or aliases: it stays the text it was, and
    /// nothing it could alias is expanded.
    #[test]
    fn a_value_with_an_anchor_or_alias_is_its_text() {
        let got = yaml("a: ${ALIASES}\nb: ${ANCHOR}\n");
        assert_eq!(got["a"], Value::from("[&a[x,x],*a,*a]"));
        assert_eq!(got["b"], Value::from("&a1"));
    }

    #[test]
    fn anchors_and_aliases_carry_expanded_values() {
        let got = yaml("a: &p ${PORT}\nb: *p\n");
        assert_eq!(got["b"], Value::from(8080));
    }

    #[test]
    fn reports_every_unset_variable_with_position() {
        let errs = expand_yaml("a: ${ONE}\nb:\n  c: x-${TWO}\n", &env)
            .unwrap_err()
            .unwrap();
        assert_eq!(errs.len(), 2);
        assert_eq!((errs[0].line, errs[0].column), (1, 4));
        assert!(errs[0].message.contains("`ONE`"));
        assert_eq!((errs[1].line, errs[1].column), (3, 8));
        assert!(errs[1].message.contains("`TWO`"));
    }

    #[test]
    fn malformed_references_are_errors() {
        for text in ["a: ${}\n", "a: ${1X}\n", "a: ${OPEN\n"] {
            assert!(matches!(expand_yaml(text, &env), Err(Some(_))), "{text}");
        }
        // Not YAML: the error at its position (`bounds` reads the text first).
        match expand_yaml("a: [\n", &env) {
            Err(Some(e)) => assert_eq!(e[0].line, 2, "{}", e[0].message),
            other => panic!("{:?}", other.map(|v| v.0)),
        }
    }
}
