//! What an http listener does to a request target before it matches routes, so that a route's
//! `path_prefix` sees the path the upstream will act on (Envoy's `normalize_path` and
//! `merge_slashes`, HAProxy's `normalize-uri`):
//!
//! 1. percent-escapes of unreserved characters (`A-Z a-z 0-9 - . _ ~`) are decoded, other
//!    escapes get upper-case hex (`%2e` → `.`, `%3a` → `%3A`);
//! 2. an escape that is not two hex digits, an escaped `/` or `\` (`%2F`, `%5C`), and an escaped
//!    NUL or other control byte are refused with `400`: they cannot be normalised without
//!    guessing what the upstream makes of them;
//! 3. runs of `/` become one;
//! 4. `.` and `..` segments are removed (RFC 3986 §5.2.4); `..` never climbs above `/`.
//!
//! The query is left as it is. The normalised path is what the upstream receives.

use std::borrow::Cow;

/// Why a path was refused.
pub type Refusal = &'static str;

/// The normalised form of `path` (an origin-form path, without the query), or why it is refused.
pub fn normalize(path: &str) -> Result<Cow<'_, str>, Refusal> {
    if !path.starts_with('/') {
        return Err("the path does not start with `/`");
    }
    if is_normal(path) {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode_unreserved(path)?;
    Ok(Cow::Owned(remove_dot_segments(&decoded)))
}

/// Already normal: no escapes, no empty (but the last), `.` or `..` segments (the common case,
/// no allocation).
fn is_normal(path: &str) -> bool {
    if path.contains('%') {
        return false;
    }
    let mut segments = path[1..].split('/').peekable();
    while let Some(seg) = segments.next() {
        let last = segments.peek().is_none();
        if seg == "." || seg == ".." || (seg.is_empty() && !last) {
            return false;
        }
    }
    true
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn decode_unreserved(path: &str) -> Result<String, Refusal> {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'%' {
            // Non-escape bytes are copied whole characters at a time.
            let next = path[i..].find('%').map_or(bytes.len(), |n| i + n);
            out.push_str(&path[i..next]);
            i = next;
            continue;
        }
        let (Some(hi), Some(lo)) = (
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) else {
            return Err("a `%` escape that is not two hex digits");
        };
        let c = hi << 4 | lo;
        match c {
            b'/' | b'\\' => return Err("an escaped `/` or `\\` in the path"),
            0..=0x1f | 0x7f => return Err("an escaped control character in the path"),
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(c as char)
            }
            _ => {
                out.push('%');
                out.push(char::from(b"0123456789ABCDEF"[usize::from(hi)]));
                out.push(char::from(b"0123456789ABCDEF"[usize::from(lo)]));
            }
        }
        i += 3;
    }
    Ok(out)
}

/// Merges `/` runs and resolves `.` and `..` segments; the result starts with `/`.
fn remove_dot_segments(path: &str) -> String {
    let mut kept: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path[1..].split('/').collect();
    let last = segments.len() - 1;
    // A path ending in `/`, `/.` or `/..` names a directory: keep its trailing slash.
    let mut trailing = false;
    for (i, seg) in segments.iter().enumerate() {
        match *seg {
            "" => trailing = i == last && !kept.is_empty(),
            "." => trailing = i == last,
            ".." => {
                kept.pop();
                trailing = i == last;
            }
            s => {
                kept.push(s);
                trailing = false;
            }
        }
    }
    let mut out = String::with_capacity(path.len());
    for seg in &kept {
        out.push('/');
        out.push_str(seg);
    }
    if trailing || kept.is_empty() {
        out.push('/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_paths_are_borrowed_unchanged() {
        for p in ["/", "/a", "/a/b", "/a/b/", "/a.b/c..d/.e"] {
            assert!(
                matches!(normalize(p), Ok(Cow::Borrowed(q)) if q == p),
                "{p}"
            );
        }
    }

    #[test]
    fn dot_segments_and_slash_runs_are_resolved() {
        for (p, want) in [
            ("/public/../private", "/private"),
            ("/public/./x", "/public/x"),
            ("/a/b/..", "/a/"),
            ("/a/b/.", "/a/b/"),
            ("/..", "/"),
            ("/../../etc/passwd", "/etc/passwd"),
            ("//a///b", "/a/b"),
            ("/public//../private", "/private"),
            ("/a//", "/a/"),
            ("//", "/"),
        ] {
            assert_eq!(normalize(p).unwrap(), want, "{p}");
        }
    }

    #[test]
    fn unreserved_escapes_are_decoded_before_dot_segments() {
        for (p, want) in [
            ("/public/%2e%2e/private", "/private"),
            ("/public/%2E./private", "/private"),
            ("/%7euser/%41", "/~user/A"),
            ("/a%3ab", "/a%3Ab"),
            ("/caf%C3%A9", "/caf%C3%A9"),
            ("/a%20b", "/a%20b"),
        ] {
            assert_eq!(normalize(p).unwrap(), want, "{p}");
        }
    }

    #[test]
    fn what_cannot_be_normalised_is_refused() {
        for p in [
            "/public/..%2fprivate",
            "/public/..%2Fprivate",
            "/a%5c..%5cb",
            "/a%00b",
            "/a%0a",
            "/a%zz",
            "/a%4",
            "/a%",
            "*",
            "",
        ] {
            assert!(normalize(p).is_err(), "{p}");
        }
    }
}
