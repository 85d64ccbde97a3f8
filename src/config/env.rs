//! `${VAR}` and `${VAR:-default}` expansion over the config text, before YAML parsing, so that
//! numbers and booleans keep their types and line numbers stay where the user wrote them.
//! `$${` writes a literal `${`. Comments are left alone.

/// An unset variable without a default, or a malformed reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvError {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// Expands variables with `lookup`; returns every error found, not only the first.
pub fn expand(
    text: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<String, Vec<EnvError>> {
    let mut out = String::with_capacity(text.len());
    let mut errors = Vec::new();
    for (idx, line) in text.split_inclusive('\n').enumerate() {
        expand_line(line, idx + 1, &lookup, &mut out, &mut errors);
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

fn expand_line(
    line: &str,
    line_no: usize,
    lookup: &impl Fn(&str) -> Option<String>,
    out: &mut String,
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
                out.push_str("${");
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
                        Some(v) => out.push_str(&v),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "PORT" => Some("8080".into()),
            "KEY" => Some("secret".into()),
            _ => None,
        }
    }

    #[test]
    fn expands_set_default_and_escaped() {
        let got = expand(
            "a: ${PORT}\nb: ${NOPE:-x y}\nc: \"$${PORT}\"\nd: ${KEY}-${PORT}\n",
            env,
        )
        .unwrap();
        assert_eq!(got, "a: 8080\nb: x y\nc: \"${PORT}\"\nd: secret-8080\n");
    }

    #[test]
    fn comments_are_not_expanded() {
        let got = expand(
            "a: 1 # uses ${UNSET}\n# ${ALSO_UNSET}\nb: \"x # ${PORT}\"\n",
            env,
        )
        .unwrap();
        assert_eq!(
            got,
            "a: 1 # uses ${UNSET}\n# ${ALSO_UNSET}\nb: \"x # 8080\"\n"
        );
    }

    #[test]
    fn reports_every_unset_variable_with_position() {
        let errs = expand("a: ${ONE}\nb:\n  c: x-${TWO}\n", env).unwrap_err();
        assert_eq!(errs.len(), 2);
        assert_eq!((errs[0].line, errs[0].column), (1, 4));
        assert!(errs[0].message.contains("`ONE`"));
        assert_eq!((errs[1].line, errs[1].column), (3, 8));
        assert!(errs[1].message.contains("`TWO`"));
    }

    #[test]
    fn malformed_references_are_errors() {
        assert!(expand("a: ${}\n", env).is_err());
        assert!(expand("a: ${1X}\n", env).is_err());
        assert!(expand("a: ${OPEN\n", env).is_err());
    }
}
