//! How much of the function layout (`link/symbol-order.txt`, see link/README.md) names functions
//! of the binary a bench measures. The file-backed part of its RSS depends on it: with most names
//! missing, the functions that run are spread over the whole text again. `cargo bench`'s own
//! build of the binary is such a build: the dev-dependencies' features rename most functions.

use std::collections::HashSet;
use std::path::Path;

use serde::Serialize;

/// Names of the layout the binary does not define, out of those listed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct LayoutCoverage {
    pub missing: usize,
    pub listed: usize,
}

impl LayoutCoverage {
    /// The coverage of `bin`, when `nm` can list its functions and the list is there.
    pub fn of(bin: &Path) -> Option<LayoutCoverage> {
        let listed = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/link/symbol-order.txt"
        ))
        .ok()?;
        let nm = std::process::Command::new("nm")
            .arg("--defined-only")
            .arg(bin)
            .output()
            .ok()
            .filter(|out| out.status.success())?;
        Some(LayoutCoverage::count(
            &listed,
            &String::from_utf8_lossy(&nm.stdout),
        ))
    }

    /// `listed`: one name per line; `nm`: `nm --defined-only`'s output (address, kind, name).
    fn count(listed: &str, nm: &str) -> LayoutCoverage {
        let defined: HashSet<&str> = nm
            .lines()
            .filter_map(|line| line.split_whitespace().nth(2))
            .collect();
        let names: HashSet<&str> = listed
            .lines()
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .collect();
        LayoutCoverage {
            missing: names.iter().filter(|n| !defined.contains(*n)).count(),
            listed: names.len(),
        }
    }

    /// One sentence for a report.
    pub fn describe(coverage: Option<LayoutCoverage>) -> String {
        match coverage {
            Some(LayoutCoverage { missing: 0, listed }) => {
                format!("Function layout: all {listed} listed functions are in the binary.")
            }
            Some(LayoutCoverage { missing, listed }) => format!(
                "Function layout: {missing} of {listed} listed functions are missing from the \
                 binary, so its file-backed memory is not a release build's (see link/README.md)."
            ),
            None => "Function layout: not checked (no `nm`, or no link/symbol-order.txt).".into(),
        }
    }
}

// Run by the `bench_smoke` test binary; no `use` here (see the note in `loadgen.rs`).
#[cfg(test)]
mod tests {
    #[test]
    fn names_the_binary_does_not_define_are_counted_once() {
        let nm = "\
0000000000001000 T main
0000000000002000 t _ZN8bindgate5proxy4tcp5serve17h0123456789abcdefE
0000000000003000 W rol64
                 U memcpy@GLIBC_2.14
";
        let listed = "rol64\n_ZN8bindgate5proxy4tcp5serve17h0123456789abcdefE\n\
                      _ZN8bindgate5proxy4tcp5serve17hffffffffffffffffE\nmemcpy@GLIBC_2.14\n\
                      rol64\n\n";
        assert_eq!(
            super::LayoutCoverage::count(listed, nm),
            super::LayoutCoverage {
                missing: 2,
                listed: 4,
            }
        );
        assert_eq!(
            super::LayoutCoverage::count("main\n", nm),
            super::LayoutCoverage {
                missing: 0,
                listed: 1
            }
        );
    }
}
