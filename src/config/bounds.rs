//! Bounds on the shape of a YAML (or JSON) document, checked before anything is built from it.
//!
//! What a document costs once read is not what it weighs as text. An alias (`*name`) stands for
//! the whole node its anchor (`&name`) names, and the YAML reader builds a full copy for each
//! use: a list of 4,000 addresses anchored once and aliased by 4,000 clusters is 266 KB of text
//! and 16 million strings once read (2.2 GB, measured with `bindgate validate`); aliases nested
//! in each other do the same exponentially (`serde_yaml_ng` bounds alias uses only to 100 per
//! event of the document, which stops neither). Without aliases, a document read for its
//! errors is held several times over (the reader's events, a value tree, the map of every
//! field's line): 16 MiB of `a: [1,1,1,…]` took 3.6 GB and 16 s, and 16 MiB of `[[[[…` 3.7 GB
//! and two minutes, since each level's position is named by the path to it.
//!
//! So every document bindgate reads as YAML (the config file, a `path` source's files, a REST
//! source's YAML answer) is first walked here as a stream of events, copying nothing, and
//! refused when it nests deeper than [`MAX_DEPTH`] or holds more than [`MAX_NODES`] nodes with
//! its aliases expanded; a REST source's JSON answer gets the same bounds from one pass over
//! its bytes ([`check_json`]), and the walk too before its errors are located (read as YAML).
//! The check stops at the node that crosses a bound and names its line.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, Parser};

use super::ConfigError;

/// How deep collections may nest (a config needs about ten levels; the YAML and JSON readers
/// stop at 128).
pub const MAX_DEPTH: usize = 64;

/// How many nodes (scalars, lists, maps) a document may hold, each use of an alias counted as
/// the nodes it repeats. A 10,000-listener document holds about 150,000.
pub const MAX_NODES: u64 = 1_000_000;

/// Refuses `text` when it nests deeper than [`MAX_DEPTH`], holds more than [`MAX_NODES`] nodes
/// with its aliases expanded, or cannot be read as YAML events at all (a syntax error, at its
/// position: past it nothing could be checked). The error's path is empty: a bound is the
/// document's, not a field's.
pub fn check(text: &str) -> Result<(), ConfigError> {
    let mut parser = Parser::new_from_str(text);
    // Nodes per anchor id (a redefined name gets a new id), and the open collections: each
    // with its anchor and the nodes it holds so far, itself included.
    let mut anchored: HashMap<usize, u64> = HashMap::new();
    let mut open: Vec<(usize, u64)> = Vec::new();
    let mut total: u64 = 0;
    loop {
        let (event, mark) = match parser.next_token() {
            Ok(next) => next,
            Err(e) => {
                let m = e.marker();
                return Err(at(m.line(), m.col(), e.info().to_owned()));
            }
        };
        let (nodes, alias) = match &event {
            Event::StreamEnd => break,
            Event::Scalar(..) | Event::SequenceStart(..) | Event::MappingStart(..) => (1, false),
            Event::Alias(id) => (anchored.get(id).copied().unwrap_or(1), true),
            _ => (0, false),
        };
        total = total.saturating_add(nodes);
        if total > MAX_NODES {
            let message = if alias {
                format!(
                    "the document holds more than {MAX_NODES} nodes once its YAML aliases \
                     (`*name`) are expanded (this one repeats {nodes}); write the repeated parts \
                     out, or repeat smaller ones"
                )
            } else {
                format!("the document holds more than {MAX_NODES} nodes")
            };
            return Err(at(mark.line(), mark.col(), message));
        }
        let done = match event {
            Event::Scalar(_, _, anchor, _) => Some((anchor, 1)),
            Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _) => {
                if open.len() == MAX_DEPTH {
                    return Err(at(
                        mark.line(),
                        mark.col(),
                        format!("the document nests deeper than {MAX_DEPTH} levels"),
                    ));
                }
                open.push((anchor, 1));
                None
            }
            Event::SequenceEnd | Event::MappingEnd => open.pop(),
            Event::Alias(_) => Some((0, nodes)),
            _ => None,
        };
        if let Some((anchor, nodes)) = done {
            if anchor != 0 {
                anchored.insert(anchor, nodes);
            }
            if let Some(parent) = open.last_mut() {
                parent.1 = parent.1.saturating_add(nodes);
            }
        }
    }
    Ok(())
}

/// The same bounds for JSON, by one pass over the bytes (JSON has no aliases): nesting deeper
/// than [`MAX_DEPTH`] or more than [`MAX_NODES`] values (each key counted, as the YAML walk
/// counts it) is refused at the byte that crossed. Text that is not JSON is not judged here
/// (its parser says what is wrong); only what is counted before the mistake can be refused.
pub fn check_json(text: &str) -> Result<(), ConfigError> {
    let (mut depth, mut nodes, mut line, mut line_start) = (0usize, 0u64, 1usize, 0usize);
    let (mut in_string, mut escaped, mut in_scalar) = (false, false, false);
    for (i, &b) in text.as_bytes().iter().enumerate() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                b'\n' => (line, line_start) = (line + 1, i + 1),
                _ => {}
            }
            continue;
        }
        let starts = match b {
            b'"' => {
                in_string = true;
                in_scalar = false;
                true
            }
            b'[' | b'{' => {
                depth += 1;
                in_scalar = false;
                if depth > MAX_DEPTH {
                    return Err(at(
                        line,
                        i - line_start,
                        format!("the document nests deeper than {MAX_DEPTH} levels"),
                    ));
                }
                true
            }
            b']' | b'}' => {
                depth = depth.saturating_sub(1);
                in_scalar = false;
                false
            }
            b',' | b':' | b' ' | b'\t' | b'\r' => {
                in_scalar = false;
                false
            }
            b'\n' => {
                (line, line_start, in_scalar) = (line + 1, i + 1, false);
                false
            }
            _ => !std::mem::replace(&mut in_scalar, true),
        };
        if starts {
            nodes += 1;
            if nodes > MAX_NODES {
                return Err(at(
                    line,
                    i - line_start,
                    format!("the document holds more than {MAX_NODES} nodes"),
                ));
            }
        }
    }
    Ok(())
}

/// An error at `line` and the 0-based byte `column` of it.
fn at(line: usize, column: usize, message: String) -> ConfigError {
    ConfigError {
        file: None,
        path: String::new(),
        line: Some(line),
        column: Some(column + 1),
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` clusters sharing one anchored list of `m` addresses.
    fn shared_endpoints(n: usize, m: usize) -> String {
        let list: Vec<String> = (0..m).map(|i| format!("\"127.0.0.1:{}\"", i + 1)).collect();
        let mut out = format!(
            "version: 1\nstatic_resources:\n  clusters:\n    - {{name: c0, type: static, endpoints: &e [{}]}}\n",
            list.join(", ")
        );
        for i in 1..n {
            out.push_str(&format!(
                "    - {{name: c{i}, type: static, endpoints: *e}}\n"
            ));
        }
        out
    }

    #[test]
    fn aliases_are_counted_as_they_expand() {
        // The header holds 7 nodes (the top map, three keys, `1`, a map and the list); each
        // cluster 6 (its map, three keys, two values) and its addresses, m + 1 whether written
        // or repeated by an alias. 7 + 500 × (6 + 1,800) = 903,007: under the bound.
        check(&shared_endpoints(500, 1_799)).unwrap();
        // With m = 1,000, cluster i's alias brings the count to 7 + 1,007 i + 6 + 1,001: past
        // 1,000,000 first for i = 993, on line 4 + 993.
        let e = check(&shared_endpoints(2_000, 1_000)).unwrap_err();
        assert!(e.message.contains("YAML aliases"), "{e}");
        assert_eq!(e.line, Some(4 + 993), "{e}");
        // Nested aliases multiply: ten levels of ten uses of the level below.
        let mut nested = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for level in 1..10 {
            let uses = vec![format!("*a{}", level - 1); 10].join(", ");
            nested.push_str(&format!("a{level}: &a{level} [{uses}]\n"));
        }
        let e = check(&nested).unwrap_err();
        assert_eq!(e.line, Some(6), "{e}");
        // A merge key is an alias too; a small one is fine.
        check("d: &d {a: 1, b: 2}\nx: {<<: *d, c: 3}\n").unwrap();
    }

    #[test]
    fn an_anchor_redefined_counts_its_latest_node() {
        let text = format!(
            "a: &x [{}]\nb: &x 1\nc: [{}]\n",
            vec!["y"; 1_000].join(", "),
            vec!["*x"; 1_500].join(", ")
        );
        check(&text).unwrap();
    }

    #[test]
    fn too_many_nodes_or_levels_are_refused_at_the_node_that_crossed() {
        let wide = format!("a: [{}]\n", vec!["1"; MAX_NODES as usize].join(","));
        let e = check(&wide).unwrap_err();
        // The map, the key, the list and 999,997 items: the 999,998th item crosses.
        assert_eq!(e.line, Some(1), "{e}");
        assert!(e.message.contains("more than 1000000 nodes"), "{e}");
        check(&format!(
            "a: [{}]\n",
            vec!["1"; MAX_NODES as usize - 3].join(",")
        ))
        .unwrap();
        // Maps in maps, one more level a line: the 65th opens on line 65.
        let deep = |levels: usize| -> String {
            let mut s: String = (0..levels)
                .map(|i| format!("{}k{i}:\n", " ".repeat(i)))
                .collect();
            s.push_str(&format!("{}leaf: 1\n", " ".repeat(levels)));
            s
        };
        let e = check(&deep(100)).unwrap_err();
        assert_eq!(e.line, Some(MAX_DEPTH + 1), "{e}");
        assert!(e.message.contains("deeper than 64"), "{e}");
        check(&deep(MAX_DEPTH - 1)).unwrap();
        // A megabyte of `[`: refused at once, by the walk or by the reader's own limit.
        let e = check(&"[".repeat(1 << 20)).unwrap_err();
        assert_eq!(e.line, Some(1), "{e}");
        // JSON is YAML to the walk.
        check(r#"{"version_info": "1", "resources": {"listeners": [], "clusters": []}}"#).unwrap();
    }

    #[test]
    fn json_is_bounded_alike() {
        let doc = r#"{"version_info": "1", "resources": {"listeners": [{"name": "a\"]}[{", "address": "127.0.0.1:0"}], "clusters": [1, -2.5e3, true, null]}}"#;
        check_json(doc).unwrap();
        // As the YAML walk counts: the map, the two keys and values, the inner map, its keys,
        // the lists, the listener's map with its 2 pairs, the four scalars.
        let wide = format!(
            "{{\"a\": [{}]}}",
            vec!["1"; MAX_NODES as usize - 3].join(",")
        );
        check_json(&wide).unwrap();
        check(&wide).unwrap();
        let wider = format!(
            "{{\"a\": [{}]}}",
            vec!["1"; MAX_NODES as usize - 2].join(", ")
        );
        let e = check_json(&wider).unwrap_err();
        assert!(e.message.contains("more than 1000000 nodes"), "{e}");
        assert!(check(&wider).is_err());
        // Nesting, with the position of the bracket that crossed.
        let deep = format!("{{\"a\":\n{}", "[".repeat(100));
        let e = check_json(&deep).unwrap_err();
        assert_eq!((e.line, e.column), (Some(2), Some(MAX_DEPTH)), "{e}");
        assert!(e.message.contains("deeper than 64"), "{e}");
        check_json(&format!(
            "{}{}",
            "[".repeat(MAX_DEPTH),
            "]".repeat(MAX_DEPTH)
        ))
        .unwrap();
        // Brackets and quotes inside strings are text.
        check_json(&format!("[\"{}\"]", "[\\\"".repeat(1_000))).unwrap();
    }

    #[test]
    fn text_that_is_not_yaml_is_refused_at_its_line() {
        let e = check("a: 1\nb: *\n").unwrap_err();
        assert_eq!(e.line, Some(2), "{e}");
    }
}
