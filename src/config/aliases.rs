//! A bound on what YAML aliases may repeat.
//!
//! An alias (`*name`) stands for the whole node its anchor (`&name`) names, and the YAML reader
//! builds a full copy for each use. So a small document can stand for an enormous one: a list of
//! 4,000 addresses anchored once and aliased by 4,000 clusters is 266 KB of text and 16 million
//! strings once read (2.2 GB, measured with `bindgate validate`), and a few aliases nested
//! inside each other do the same exponentially. `serde_yaml_ng` bounds alias uses only to 100
//! per event of the document, which stops neither. Every YAML text bindgate deserializes (the
//! config file, a `path` source's files, a REST source's YAML answer) is first walked here as
//! events, without copying anything, counting the nodes the aliases would add; a text over
//! [`MAX_ALIASED_NODES`] is refused with the line of the alias that crossed the bound, before
//! anything is built from it. Text without a `*` has no alias and is not walked.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, Parser};

use super::ConfigError;

/// How many nodes the aliases of one text may add in all (each use of an alias adds as many
/// nodes as its anchor's node holds, aliases inside it counted as they expand).
pub const MAX_ALIASED_NODES: u64 = 1_000_000;

/// Refuses `text` when its aliases would add more than [`MAX_ALIASED_NODES`] nodes, or when it
/// has a `*` and cannot be read as YAML events (its aliases could not be counted). The error's
/// path is empty: the bound is the document's, not a field's.
pub fn check(text: &str) -> Result<(), ConfigError> {
    if !text.contains('*') {
        return Ok(());
    }
    let error = |line: usize, column: usize, message: String| ConfigError {
        file: None,
        path: String::new(),
        line: Some(line),
        column: Some(column),
        message,
    };
    let mut parser = Parser::new_from_str(text);
    // Nodes per anchor id (a redefined name gets a new id), and the open collections: each
    // with its anchor and the nodes it holds so far, itself included.
    let mut anchored: HashMap<usize, u64> = HashMap::new();
    let mut open: Vec<(usize, u64)> = Vec::new();
    let mut added: u64 = 0;
    loop {
        let (event, mark) = match parser.next_token() {
            Ok(next) => next,
            Err(e) => {
                let m = e.marker();
                return Err(error(m.line(), m.col() + 1, e.info().to_owned()));
            }
        };
        let done = match event {
            Event::StreamEnd => break,
            Event::Scalar(_, _, anchor, _) => Some((anchor, 1)),
            Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _) => {
                open.push((anchor, 1));
                None
            }
            Event::SequenceEnd | Event::MappingEnd => open.pop(),
            Event::Alias(id) => {
                let nodes = anchored.get(&id).copied().unwrap_or(1);
                added = added.saturating_add(nodes);
                if added > MAX_ALIASED_NODES {
                    return Err(error(
                        mark.line(),
                        mark.col() + 1,
                        format!(
                            "the YAML aliases (`*name`) of this document repeat more than \
                             {MAX_ALIASED_NODES} nodes in all (this one {nodes}); write the \
                             repeated parts out, or repeat smaller ones"
                        ),
                    ));
                }
                Some((0, nodes))
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` clusters sharing one anchored list of `m` addresses: `m * (n - 1)` nodes added.
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
        // Each use adds the list and its items: 999 uses of 1,000 nodes, under the bound.
        check(&shared_endpoints(1_000, 999)).unwrap();
        // 1,001 nodes a use: the 1,000th use crosses it (1,001,000), on cluster c1000's line
        // (the header is 4 lines).
        let e = check(&shared_endpoints(1_002, 1_000)).unwrap_err();
        assert_eq!(e.line, Some(1_004), "{e}");
        assert!(e.message.contains("1000000 nodes"), "{e}");
        // Nested aliases multiply: ten levels of ten uses of the level below.
        let mut nested = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for level in 1..10 {
            let uses = vec![format!("*a{}", level - 1); 10].join(", ");
            nested.push_str(&format!("a{level}: &a{level} [{uses}]\n"));
        }
        let e = check(&nested).unwrap_err();
        assert_eq!(e.line, Some(6), "{e}");
        // A merge key is an alias too; a small one is fine, as is text with no alias.
        check("d: &d {a: 1, b: 2}\nx: {<<: *d, c: 3}\n").unwrap();
        check("hosts: ['*.internal']\n").unwrap();
        check(&"x".repeat(10)).unwrap();
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
    fn text_with_a_star_that_is_not_yaml_is_refused_at_its_line() {
        let e = check("a: *\nb: [\n").unwrap_err();
        assert!(e.line.is_some(), "{e}");
    }
}
