//! Deserialization that reports every error of a document, not only serde's first.
//!
//! serde stops at the first error. To find the next one, the value tree is repaired where the
//! error was and deserialized again: a field with an unknown name or a bad value is removed (an
//! optional field then takes its default); a required field that is missing, or whose bad value
//! was removed, gets a placeholder of a type that deserializes (its error is reported once, never
//! followed by a "missing field"); a list item that cannot be repaired is dropped, and the paths
//! of later items keep their original indices. The items of big lists are deserialized one at a
//! time, so that repairing one item never costs a pass over all the others.
//!
//! This module owns the repair loop only; what a field means is the schema's business.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;

use serde::de::DeserializeOwned;
use serde_path_to_error::Segment;
use serde_yaml_ng::{Mapping, Value};

use super::{ConfigError, SourceMap};

/// Past this many errors in one document, the rest are not looked for.
pub(crate) const MAX_ERRORS: usize = 100;
/// Failed deserialization passes per document: one per error, a few more per placeholder search.
const MAX_PASSES: usize = 1000;

/// Deserializes `value` into `T`, reporting every error found rather than the first.
///
/// - `value`: the document, already parsed (and `${VAR}`-expanded) from YAML or JSON text;
///   JSON text parses into this type with `serde_yaml_ng::from_str` too.
/// - `source_map`: built from the text `value` was parsed from (for expanded YAML, the marked
///   text `expand_yaml` returns); it gives each error its line and column. Without one
///   (`SourceMap::default()`), errors still carry their paths.
/// - `split_lists`: dotted paths of lists (`static_resources.listeners`) whose items are
///   deserialized one at a time after the first pass failed. A path absent from the document or
///   not holding a list is ignored.
///
/// Returns the value when it deserializes; otherwise every error (at most [`MAX_ERRORS`]), each
/// with its dotted path (`static_resources.listeners[2].idle_timeout`, as the document wrote its
/// indices), message, and position when the source map has one, sorted by line. `file` is
/// `None`: a caller reading another file than the config sets it. A document that deserializes
/// on the first pass costs one pass and no copy.
pub(crate) fn deserialize_all<T: DeserializeOwned>(
    value: Value,
    source_map: &SourceMap,
    split_lists: &[&str],
) -> Result<T, Vec<ConfigError>> {
    let first = match attempt::<T>(&value) {
        Ok(t) => return Ok(t),
        Err(failure) => failure,
    };
    let found = collect::<T>(value, split_lists);
    let found = if found.is_empty() {
        // Splitting the lists made the error go away (a type that checks a list as a whole):
        // the first pass's error stands.
        vec![(first.path, first.message)]
    } else {
        found
    };
    let mut errors: Vec<ConfigError> = found
        .into_iter()
        .map(|(path, message)| source_map.error_at(display(&path), message))
        .collect();
    errors.sort_by_key(|e| (e.line.unwrap_or(usize::MAX), e.column.unwrap_or(0)));
    Err(errors)
}

/// Every error of a document that failed its first pass: the document without the split lists'
/// items first, then each item in a copy of that (repaired) document holding it alone.
fn collect<T: DeserializeOwned>(mut value: Value, split_lists: &[&str]) -> Vec<(Path, String)> {
    let mut lists: Vec<(Path, Vec<Value>)> = Vec::new();
    for list in split_lists {
        let path: Path = list.split('.').map(|k| Seg::Key(k.to_owned())).collect();
        if let Some(Value::Sequence(items)) = node_mut(&mut value, &path) {
            lists.push((path, std::mem::take(items)));
        }
    }
    let mut skeleton = Collector::new(value);
    let settled = skeleton.run::<T>(MAX_ERRORS);
    let mut found = std::mem::take(&mut skeleton.errors);
    if !settled {
        return found;
    }
    let mut passes = skeleton.passes;
    let mut value = skeleton.value;
    for (path, items) in lists {
        for (i, item) in items.into_iter().enumerate() {
            if found.len() >= MAX_ERRORS || passes >= MAX_PASSES {
                return found;
            }
            let Some(slot) = node_mut(&mut value, &path) else {
                break; // the list's parent was removed while repairing (already reported)
            };
            *slot = Value::Sequence(vec![item]);
            let mut one = Collector::new(value);
            one.passes = passes;
            one.run::<T>(MAX_ERRORS - found.len());
            passes = one.passes;
            for (mut at, message) in one.errors {
                // The item was alone at index 0; the document has it at `i`.
                if at.len() > path.len() && at.starts_with(&path) {
                    at[path.len()] = Seg::Index(i);
                }
                if !found.iter().any(|(p, m)| *p == at && *m == message) {
                    found.push((at, message));
                }
            }
            value = one.value;
            if let Some(slot) = node_mut(&mut value, &path) {
                *slot = Value::Sequence(Vec::new());
            }
        }
    }
    found
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Seg {
    Key(String),
    Index(usize),
}

type Path = Vec<Seg>;

/// `static_resources.listeners[0].address`, as `SourceMap` and `serde_path_to_error` write it.
fn display(path: &[Seg]) -> String {
    let mut s = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(k);
            }
            Seg::Index(i) => {
                let _ = write!(s, "[{i}]");
            }
        }
    }
    s
}

/// One failed pass: where (as far as serde tracked it) and what.
struct Failure {
    path: Path,
    /// The path stops short of the error (inside a value serde buffered, or a non-string key).
    truncated: bool,
    message: String,
}

fn attempt<T: DeserializeOwned>(value: &Value) -> Result<T, Failure> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let mut path = Vec::new();
        let mut truncated = false;
        for seg in e.path().iter() {
            match seg {
                Segment::Seq { index } => path.push(Seg::Index(*index)),
                Segment::Map { key } | Segment::Enum { variant: key } => {
                    path.push(Seg::Key(key.clone()))
                }
                Segment::Unknown => {
                    truncated = true;
                    break;
                }
            }
        }
        let shown = e.path().to_string();
        let message =
            super::strip_path_prefix(&super::strip_location(&e.into_inner().to_string()), &shown);
        Failure {
            path,
            truncated,
            message,
        }
    })
}

/// `missing field `name``: the field's name.
fn missing_field(message: &str) -> Option<&str> {
    message.strip_prefix("missing field `")?.split('`').next()
}

/// `unknown field `adress`, expected ...`: the field's name.
fn unknown_field(message: &str) -> Option<&str> {
    message.strip_prefix("unknown field `")?.split('`').next()
}

/// Whether `typo` is close enough to `field` to be it misspelt (`adress` for `address`): at
/// most one edit in four characters, and at least one allowed.
fn is_misspelling(typo: &str, field: &str) -> bool {
    let (a, b): (Vec<char>, Vec<char>) = (typo.chars().collect(), field.chars().collect());
    // Edit distance where swapping two neighbours (`nmae`) is one edit.
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()] <= (b.len() / 4).max(1)
}

/// The first value an error message says it expected (`expected `static` or ...`).
fn first_expected(message: &str) -> Option<&str> {
    let (_, rest) = message.split_once("expected ")?;
    let rest = rest.strip_prefix("one of ").unwrap_or(rest);
    rest.strip_prefix('`')?.split('`').next()
}

/// The key of `map` written as `key` (YAML keys may be numbers or booleans).
fn find_key(map: &Mapping, key: &str) -> Option<Value> {
    map.keys()
        .find(|k| match k {
            Value::String(s) => s == key,
            Value::Number(n) => n.to_string() == key,
            Value::Bool(b) => b.to_string() == key,
            _ => false,
        })
        .cloned()
}

fn node_mut<'v>(mut value: &'v mut Value, path: &[Seg]) -> Option<&'v mut Value> {
    for seg in path {
        while let Value::Tagged(tagged) = value {
            value = &mut tagged.value;
        }
        value = match (seg, value) {
            (Seg::Key(k), Value::Mapping(map)) => {
                let key = find_key(map, k)?;
                map.get_mut(&key)?
            }
            (Seg::Index(i), Value::Sequence(items)) => items.get_mut(*i)?,
            _ => return None,
        };
    }
    while let Value::Tagged(tagged) = value {
        value = &mut tagged.value;
    }
    Some(value)
}

/// The repair loop over one value tree.
struct Collector {
    value: Value,
    /// Per list (by its path in the original document), the original indices of the items
    /// removed, ascending: later items' errors are reported at their original indices.
    removed: HashMap<Path, Vec<usize>>,
    /// Fields whose bad value was reported and removed: their "missing field" is no new error.
    reported: HashSet<Path>,
    /// Unknown fields reported, by the original path of their map: a missing field they are a
    /// misspelling of is no new error.
    unknown: HashMap<Path, Vec<String>>,
    /// Fields given a placeholder (never twice: the second time the parent goes instead).
    filled: HashSet<Path>,
    /// Found so far, at original paths, in the order found.
    errors: Vec<(Path, String)>,
    passes: usize,
}

impl Collector {
    fn new(value: Value) -> Collector {
        Collector {
            value,
            removed: HashMap::new(),
            reported: HashSet::new(),
            unknown: HashMap::new(),
            filled: HashSet::new(),
            errors: Vec::new(),
            passes: 0,
        }
    }

    /// Repairs until the value deserializes (true), or gives up (false): `budget` errors found,
    /// too many passes, or an error nothing can be removed for (the root's own type).
    fn run<T: DeserializeOwned>(&mut self, budget: usize) -> bool {
        loop {
            let failure = match attempt::<T>(&self.value) {
                Ok(_) => return true,
                Err(f) => f,
            };
            self.passes += 1;
            if self.errors.len() >= budget || self.passes >= MAX_PASSES {
                return false;
            }
            if let (false, Some(field)) = (failure.truncated, missing_field(&failure.message)) {
                let field = field.to_owned();
                let mut field_path = failure.path.clone();
                field_path.push(Seg::Key(field.clone()));
                let original = self.original(&field_path);
                let misspelt = self
                    .unknown
                    .get(&original[..failure.path.len()])
                    .is_some_and(|typos| typos.iter().any(|t| is_misspelling(t, &field)));
                if !self.reported.contains(&original) && !misspelt {
                    self.record(&failure.path, failure.message);
                }
                if self.filled.insert(original) && self.fill::<T>(&failure.path, &field) {
                    continue;
                }
                if !self.remove(&failure.path) {
                    return false;
                }
                continue;
            }
            // An unknown field is located at its own key, and only it goes.
            let mut at = failure.path.clone();
            if let (false, Some(field)) = (failure.truncated, unknown_field(&failure.message)) {
                if at.last() != Some(&Seg::Key(field.to_owned())) {
                    at.push(Seg::Key(field.to_owned()));
                }
                let map = self.original(&at[..at.len() - 1]);
                self.unknown.entry(map).or_default().push(field.to_owned());
            }
            self.record(&at, failure.message);
            if !self.remove(&at) {
                return false;
            }
        }
    }

    /// `current` (a path in the value as repaired so far) as the original document wrote it.
    fn original(&self, current: &[Seg]) -> Path {
        let mut out = Vec::with_capacity(current.len());
        for seg in current {
            let seg = match seg {
                Seg::Index(i) => {
                    let mut index = *i;
                    for &gone in self.removed.get(&out).map(Vec::as_slice).unwrap_or(&[]) {
                        if gone <= index {
                            index += 1;
                        }
                    }
                    Seg::Index(index)
                }
                key => key.clone(),
            };
            out.push(seg);
        }
        out
    }

    fn record(&mut self, current: &[Seg], message: String) {
        let path = self.original(current);
        if !self.errors.iter().any(|(p, m)| *p == path && *m == message) {
            self.errors.push((path, message));
        }
    }

    /// Removes the node at `current`, or the nearest ancestor that exists; false at the root.
    fn remove(&mut self, current: &[Seg]) -> bool {
        let Some((last, parent)) = current.split_last() else {
            return false;
        };
        let original = self.original(current);
        let original_parent = original[..parent.len()].to_vec();
        let removed = match (last, node_mut(&mut self.value, parent)) {
            (Seg::Key(k), Some(Value::Mapping(map))) => {
                find_key(map, k).is_some_and(|key| map.remove(&key).is_some())
            }
            (Seg::Index(i), Some(Value::Sequence(items))) if *i < items.len() => {
                items.remove(*i);
                if let Some(Seg::Index(gone)) = original.last() {
                    let list = self.removed.entry(original_parent).or_default();
                    let at = list.partition_point(|x| x < gone);
                    list.insert(at, *gone);
                }
                true
            }
            _ => false,
        };
        if !removed {
            return self.remove(parent);
        }
        if matches!(last, Seg::Key(_)) {
            self.reported.insert(original);
        }
        true
    }

    /// Gives the missing `field` of the map at `parent` a placeholder that deserializes: true
    /// when one did (the next error, if any, is elsewhere).
    fn fill<T: DeserializeOwned>(&mut self, parent: &[Seg], field: &str) -> bool {
        let mut field_path = parent.to_vec();
        field_path.push(Seg::Key(field.to_owned()));
        let mut candidates = vec![
            Value::Mapping(Mapping::new()),
            Value::String(String::new()),
            Value::from(0),
            Value::Bool(false),
            Value::Sequence(Vec::new()),
            Value::String("1s".into()),
        ];
        candidates.reverse();
        let mut tried: Vec<Value> = Vec::new();
        while let Some(candidate) = candidates.pop() {
            if tried.contains(&candidate) || self.passes >= MAX_PASSES {
                continue;
            }
            tried.push(candidate.clone());
            let Some(Value::Mapping(map)) = node_mut(&mut self.value, parent) else {
                return false;
            };
            map.insert(Value::String(field.to_owned()), candidate);
            self.passes += 1;
            let failure = match attempt::<T>(&self.value) {
                Ok(_) => return true,
                Err(f) => f,
            };
            let about_field = failure.path.starts_with(&field_path)
                || (failure.path == parent && missing_field(&failure.message) == Some(field))
                || (failure.truncated && field_path.starts_with(&failure.path));
            if !about_field {
                return true;
            }
            if failure.path == field_path {
                if let Some(v) = first_expected(&failure.message) {
                    candidates.push(Value::String(v.to_owned()));
                }
            }
        }
        if let Some(Value::Mapping(map)) = node_mut(&mut self.value, parent) {
            map.remove(field);
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Doc {
        version: u32,
        #[serde(default)]
        items: Vec<Item>,
        #[serde(default)]
        tags: Vec<String>,
        #[serde(default)]
        nested: Option<Nested>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Item {
        name: String,
        kind: Kind,
        #[serde(default)]
        port: Option<u16>,
        #[serde(default)]
        timeout: Option<crate::config::HumanDuration>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(rename_all = "snake_case")]
    enum Kind {
        Plain,
        Fancy,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Nested {
        inner: Inner,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        count: u32,
    }

    fn all<T: DeserializeOwned>(text: &str, split: &[&str]) -> Result<T, Vec<ConfigError>> {
        let value: Value = serde_yaml_ng::from_str(text).unwrap();
        deserialize_all(value, &SourceMap::build(text), split)
    }

    /// (line, path, message) of each error.
    fn found(text: &str, split: &[&str]) -> Vec<(usize, String, String)> {
        all::<Doc>(text, split)
            .unwrap_err()
            .into_iter()
            .map(|e| (e.line.unwrap(), e.path, e.message))
            .collect()
    }

    #[test]
    fn a_good_document_deserializes() {
        let doc: Doc = all("version: 1\nitems:\n  - { name: a, kind: plain }\n", &[]).unwrap();
        assert_eq!(doc.items[0].name, "a");
    }

    const MANY: &str = "\
version: 1
items:
  - name: a
    kind: plain
    colour: red
  - name: b
    kind: fancy
  - name: c
    kind: plain
    timeout: 10 minutes
  - kind: fancy
    port: 70000
tags: 5
";

    #[test]
    fn every_error_is_reported_with_its_line() {
        for split in [&[][..], &["items"][..]] {
            let got = found(MANY, split);
            let lines: Vec<usize> = got.iter().map(|e| e.0).collect();
            assert_eq!(lines, [5, 10, 11, 12, 13], "{split:?}: {got:#?}");
            assert_eq!(got[0].1, "items[0].colour");
            assert!(got[0].2.starts_with("unknown field `colour`"), "{got:?}");
            assert_eq!(got[1].1, "items[2].timeout");
            assert!(got[1].2.contains("`10 minutes`"), "{got:?}");
            assert_eq!(got[2].1, "items[3]");
            assert_eq!(got[2].2, "missing field `name`");
            assert_eq!(got[3].1, "items[3].port");
            assert!(got[3].2.contains("70000"), "{got:?}");
            assert_eq!(got[4].1, "tags");
            assert!(got[4].2.starts_with("invalid type: integer"), "{got:?}");
        }
    }

    #[test]
    fn a_removed_required_value_is_not_also_missing() {
        let got = found(
            "version: 1\nitems:\n  - name: [ x ]\n    kind: plain\n    port: x\n",
            &["items"],
        );
        assert_eq!(got.len(), 2, "{got:#?}");
        assert_eq!((got[0].0, got[0].1.as_str()), (3, "items[0].name"));
        assert!(got[0].2.starts_with("invalid type: sequence"), "{got:?}");
        assert_eq!((got[1].0, got[1].1.as_str()), (5, "items[0].port"));
    }

    #[test]
    fn a_misspelt_required_field_is_one_error() {
        let got = found(
            "version: 1\nitems:\n  - nmae: a\n    kind: plain\n",
            &["items"],
        );
        assert_eq!(got.len(), 1, "{got:#?}");
        assert_eq!((got[0].0, got[0].1.as_str()), (3, "items[0].nmae"));
        // Not a misspelling: both are reported.
        let got = found(
            "version: 1\nitems:\n  - label: a\n    kind: plain\n",
            &["items"],
        );
        let paths: Vec<&str> = got.iter().map(|e| e.1.as_str()).collect();
        assert_eq!(paths, ["items[0].label", "items[0]"], "{got:#?}");
        assert_eq!(got[1].2, "missing field `name`");
        assert!(
            is_misspelling("adress", "address")
                && is_misspelling("max_conections", "max_connections")
        );
        assert!(!is_misspelling("label", "name") && !is_misspelling("a", "port"));
    }

    #[test]
    fn a_bad_required_enum_gets_an_expected_variant_as_placeholder() {
        let got = found(
            "version: 1\nitems:\n  - name: a\n    kind: shiny\n  - name: b\n    kind: plain\n    port: -1\n",
            &[],
        );
        assert_eq!(got.len(), 2, "{got:#?}");
        assert_eq!((got[0].0, got[0].1.as_str()), (4, "items[0].kind"));
        assert!(got[0].2.contains("unknown variant `shiny`"), "{got:?}");
        assert_eq!((got[1].0, got[1].1.as_str()), (7, "items[1].port"));
    }

    #[test]
    fn items_after_a_dropped_one_keep_their_indices() {
        // `tags[1]` cannot be a string, so it is dropped; `tags[3]` is still called `tags[3]`.
        let got = found(
            "version: 1\ntags:\n  - a\n  - [ b ]\n  - c\n  - { d: 1 }\n",
            &[],
        );
        let paths: Vec<&str> = got.iter().map(|e| e.1.as_str()).collect();
        assert_eq!(paths, ["tags[1]", "tags[3]"], "{got:#?}");
        assert_eq!(got[1].0, 6);
    }

    #[test]
    fn nested_missing_fields_and_wrong_root_keys() {
        let got = found("version: x\nnested:\n  inner: {}\nextra: 1\n", &["items"]);
        let want = [(1, "version"), (3, "nested.inner"), (4, "extra")];
        let paths: Vec<(usize, &str)> = got.iter().map(|e| (e.0, e.1.as_str())).collect();
        assert_eq!(paths, want, "{got:#?}");
        assert_eq!(got[1].2, "missing field `count`");
    }

    #[test]
    fn a_document_of_the_wrong_type_is_one_error() {
        let errs = all::<Doc>("- 1\n- 2\n", &["items"]).unwrap_err();
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].path, "");
        assert!(
            errs[0].message.starts_with("invalid type: sequence"),
            "{errs:?}"
        );
    }

    #[test]
    fn errors_are_capped() {
        let mut text = String::from("version: 1\n");
        for i in 0..150 {
            let _ = writeln!(text, "unknown_{i}: 1");
        }
        let errs = all::<Doc>(&text, &[]).unwrap_err();
        assert_eq!(errs.len(), MAX_ERRORS);
        assert_eq!(errs[0].line, Some(2));
    }

    #[test]
    fn json_documents_are_read_too() {
        let text = "{\n  \"version\": 1,\n  \"items\": [\n    {\"name\": \"a\", \"kind\": \"plain\"},\n    {\"name\": \"b\", \"kind\": \"odd\"}\n  ],\n  \"tagz\": []\n}\n";
        let got = found(text, &["items"]);
        let paths: Vec<(usize, &str)> = got.iter().map(|e| (e.0, e.1.as_str())).collect();
        assert_eq!(paths, [(5, "items[1].kind"), (7, "tagz")], "{got:#?}");
    }

    #[test]
    fn without_a_source_map_errors_keep_their_paths() {
        let value: Value =
            serde_yaml_ng::from_str("version: 1\nitems: [ { kind: plain } ]\n").unwrap();
        let errs = deserialize_all::<Doc>(value, &SourceMap::default(), &["items"]).unwrap_err();
        assert_eq!(errs.len(), 1);
        assert_eq!((errs[0].path.as_str(), errs[0].line), ("items[0]", None));
    }
}
