//! Where each config path (`static_resources.listeners[0].address`) was written: line and column,
//! so that errors found after parsing (cross-references) still point at the user's line.

use std::collections::HashMap;

use super::ConfigError;
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// Maps dotted paths to 1-based `(line, column)` positions of their values' keys (or items).
#[derive(Debug, Default, Clone)]
pub struct SourceMap {
    positions: HashMap<String, (usize, usize)>,
}

impl SourceMap {
    /// Builds the map; text that does not parse yields an empty map (serde reports that error).
    pub fn build(text: &str) -> SourceMap {
        let mut recv = Recorder::default();
        let mut parser = Parser::new_from_str(text);
        if parser.load(&mut recv, false).is_err() {
            return SourceMap::default();
        }
        SourceMap {
            positions: recv.positions,
        }
    }

    /// The position recorded for exactly `path`.
    pub fn exact(&self, path: &str) -> Option<(usize, usize)> {
        self.positions.get(path).copied()
    }

    /// An error at `path`, placed at its position or its nearest recorded ancestor's.
    pub fn error_at(&self, path: impl Into<String>, message: impl Into<String>) -> ConfigError {
        let path = path.into();
        let (line, column) = match self.locate(&path) {
            Some((l, c)) => (Some(l), Some(c)),
            None => (None, None),
        };
        ConfigError {
            file: None,
            path,
            line,
            column,
            message: message.into(),
        }
    }

    /// The position of `path`, or of its nearest recorded ancestor.
    pub fn locate(&self, path: &str) -> Option<(usize, usize)> {
        let mut p = path;
        loop {
            if let Some(pos) = self.positions.get(p) {
                return Some(*pos);
            }
            let cut = p.rfind(['.', '['])?;
            p = &p[..cut];
        }
    }
}

enum Frame {
    Map {
        path: String,
        pending_key: Option<(String, Marker)>,
        expect_key: bool,
    },
    Seq {
        path: String,
        next: usize,
    },
}

#[derive(Default)]
struct Recorder {
    stack: Vec<Frame>,
    positions: HashMap<String, (usize, usize)>,
}

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}

impl Recorder {
    /// The path of the node starting now, recording its position; advances the parent's state.
    fn enter_value(&mut self, mark: Marker) -> Option<String> {
        match self.stack.last_mut() {
            None => Some(String::new()),
            Some(Frame::Seq { path, next }) => {
                let p = format!("{path}[{next}]");
                *next += 1;
                self.positions
                    .insert(p.clone(), (mark.line(), mark.col() + 1));
                Some(p)
            }
            Some(Frame::Map {
                path,
                pending_key,
                expect_key,
            }) => {
                if *expect_key {
                    return None; // a key, handled by the caller
                }
                *expect_key = true;
                let (key, key_mark) = pending_key.take()?;
                let p = join(path, &key);
                self.positions
                    .insert(p.clone(), (key_mark.line(), key_mark.col() + 1));
                Some(p)
            }
        }
    }
}

impl MarkedEventReceiver for Recorder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        match ev {
            Event::Scalar(value, ..) => {
                if let Some(Frame::Map {
                    expect_key: expect @ true,
                    pending_key,
                    ..
                }) = self.stack.last_mut()
                {
                    *pending_key = Some((value, mark));
                    *expect = false;
                } else {
                    self.enter_value(mark);
                }
            }
            Event::MappingStart(..) => {
                let path = self.enter_value(mark).unwrap_or_default();
                self.stack.push(Frame::Map {
                    path,
                    pending_key: None,
                    expect_key: true,
                });
            }
            Event::SequenceStart(..) => {
                let path = self.enter_value(mark).unwrap_or_default();
                self.stack.push(Frame::Seq { path, next: 0 });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            Event::Alias(_) => {
                self.enter_value(mark);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locates_nested_keys_and_items() {
        let text = "version: 1\nstatic_resources:\n  listeners:\n    - name: a\n      address: 127.0.0.1:1\n    - name: b\n      routes:\n        - cluster: x\n";
        let map = SourceMap::build(text);
        assert_eq!(map.locate("version"), Some((1, 1)));
        assert_eq!(
            map.locate("static_resources.listeners[0].address"),
            Some((5, 7))
        );
        assert_eq!(
            map.locate("static_resources.listeners[1]").map(|p| p.0),
            Some(6)
        );
        assert_eq!(
            map.locate("static_resources.listeners[1].routes[0].cluster"),
            Some((8, 11))
        );
        // Unknown leaf: falls back to the nearest ancestor.
        assert_eq!(
            map.locate("static_resources.listeners[1].routes[0].match")
                .map(|p| p.0),
            Some(8)
        );
    }

    #[test]
    fn flow_style_is_mapped_too() {
        let map = SourceMap::build("a:\n  limits: { max: 1, burst: 2 }\n  list: [x, y]\n");
        assert_eq!(map.locate("a.limits.burst"), Some((2, 21)));
        assert_eq!(map.locate("a.list[1]"), Some((3, 13)));
    }
}
