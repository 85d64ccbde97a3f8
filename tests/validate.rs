//! `bindgate validate`: every example validates; each kind of mistake is named with its line.

mod common;

use common::{run_to_end, write};

/// A CA, a server cert and a client cert, so examples that reference TLS files can validate.
fn tls_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["ac_test".into()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    write(dir.path(), "ca.pem", &ca.pem());
    write(dir.path(), "tls.crt", &cert.pem());
    write(dir.path(), "tls.key", &key.serialize_pem());
    dir
}

#[test]
fn every_example_config_validates() {
    let tls = tls_dir();
    let tls_path = tls.path().to_str().unwrap();
    let mut checked = 0;
    for entry in
        std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/configs")).unwrap()
    {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let (code, out, err) = run_to_end(
            &["validate", "-c", path.to_str().unwrap()],
            &[
                ("BINDGATE_TLS_DIR", tls_path),
                ("BINDGATE_DEMO_DIR", tls_path),
            ],
        );
        assert_eq!(
            (code, out.as_str()),
            (0, "OK\n"),
            "{}: {out}{err}",
            path.display()
        );
        checked += 1;
    }
    assert!(checked >= 2, "expected several examples, found {checked}");
}

const GOOD: &str = "\
version: 1
static_resources:
  listeners:
    - name: a
      address: 127.0.0.1:7001
      routes:
        - cluster: c
  clusters:
    - name: c
      type: static
      endpoints: [ \"127.0.0.1:9000\" ]
";

/// Each case: a config, then fragments every one of which the output must contain.
#[test]
fn bad_configs_fail_naming_field_value_and_line() {
    let cases: &[(&str, String, &[&str])] = &[
        (
            "unknown field",
            GOOD.replace("      address: 127.0.0.1:7001", "      adress: 127.0.0.1:7001"),
            &["line 5", "unknown field `adress`", "static_resources.listeners[0]"],
        ),
        (
            "bad duration",
            GOOD.replace("      routes:\n", "      idle_timeout: 10 minutes\n      routes:\n"),
            &["line 6", "`10 minutes`", "static_resources.listeners[0].idle_timeout"],
        ),
        (
            "missing cluster",
            GOOD.replace("        - cluster: c", "        - cluster: nope"),
            &["line 7", "no cluster named `nope`", "static_resources.listeners[0].routes[0].cluster"],
        ),
        (
            "duplicate address",
            GOOD.replace(
                "  clusters:",
                "    - name: b\n      address: 127.0.0.1:7001\n      routes: [ { cluster: c } ]\n  clusters:",
            ),
            &["line 9", "`127.0.0.1:7001` is already used by listener `a`", "static_resources.listeners[1].address"],
        ),
        (
            // Binding all addresses takes the port on 127.0.0.1 too: the bind would fail at run.
            "wildcard address on a port taken",
            GOOD.replace(
                "  clusters:",
                "    - name: b\n      address: 0.0.0.0:7001\n      routes: [ { cluster: c } ]\n  clusters:",
            ),
            &["line 9", "`0.0.0.0:7001` is already used by listener `a`", "static_resources.listeners[1].address"],
        ),
        (
            "the admin server's address",
            format!("admin: {{ address: 127.0.0.1:7001 }}\n{GOOD}"),
            &["line 6", "`127.0.0.1:7001` is already used by the admin server (`admin.address`)", "static_resources.listeners[0].address"],
        ),
        (
            "tcp endpoint without port",
            format!(
                "{GOOD}    - name: b\n      type: binding_upstream\n      endpoint: tcp://orders.default\n      ingress: i\n"
            ),
            &["line 15", "`tcp://orders.default`", "explicit port", "static_resources.clusters[1].endpoint", "no ingress named `i`"],
        ),
        (
            "unset env var",
            GOOD.replace("127.0.0.1:7001", "${BINDGATE_TEST_SURELY_UNSET}"),
            &["line 5", "`BINDGATE_TEST_SURELY_UNSET` is not set"],
        ),
        (
            "bad endpoint host",
            format!("{GOOD}    - name: b\n      type: binding_upstream\n      endpoint: http://a.b.c\n      ingress: i\n"),
            &["line 15", "exactly `service.namespace`"],
        ),
        (
            "tcp route with match",
            GOOD.replace("        - cluster: c", "        - cluster: c\n          match: { host: x }"),
            &["line 8", "takes no `match`"],
        ),
        (
            "sni on an http route",
            GOOD.replace("      routes:\n        - cluster: c", "      protocol: http\n      routes:\n        - cluster: c\n          match: { sni: a.test }"),
            &["line 9", "static_resources.listeners[0].routes[0].match.sni", "`sni` applies to tls listeners"],
        ),
        (
            "host on a tls route",
            GOOD.replace("      routes:\n        - cluster: c", "      protocol: tls\n      routes:\n        - cluster: c\n          match: { host: a.test }"),
            &["line 9", "static_resources.listeners[0].routes[0].match.host", "`host` applies to http listeners"],
        ),
        (
            "unreachable http route",
            GOOD.replace("      routes:\n        - cluster: c", "      protocol: http\n      routes:\n        - cluster: c\n        - cluster: c\n          match: { path_prefix: /api }"),
            &["line 10", "static_resources.listeners[0].routes[1].match", "unreachable: route [0]"],
        ),
        (
            "zero idle timeout",
            GOOD.replace("      routes:\n", "      idle_timeout: 0s\n      routes:\n"),
            &["line 6", "static_resources.listeners[0].idle_timeout", "must be more than 0s"],
        ),
        (
            "zero header timeout",
            GOOD.replace("      routes:\n", "      request_headers_timeout: 0ms\n      routes:\n"),
            &["line 6", "static_resources.listeners[0].request_headers_timeout", "must be more than 0s"],
        ),
        (
            "zero global cap",
            format!("{GOOD}limits:\n  max_connections: 0\n"),
            &["limits.max_connections", "must be at least 1"],
        ),
        (
            "env value typed in a flow mapping, then checked",
            GOOD.replace("      routes:\n", "      limits: { max_connections: ${BINDGATE_TEST_SURELY_UNSET:-0} }\n      routes:\n"),
            &["line 6", "static_resources.listeners[0].limits.max_connections", "must be at least 1"],
        ),
        ("syntax error", format!("{GOOD}  - : :\n  bad"), &["line "]),
        ("wrong version", GOOD.replace("version: 1", "version: 2"), &["line 1", "unsupported version 2"]),
    ];
    let dir = tempfile::tempdir().unwrap();
    for (name, text, wants) in cases {
        let path = write(dir.path(), "bad.yaml", text);
        let (code, out, _) = run_to_end(&["validate", "-c", &path], &[]);
        assert_eq!(code, 1, "{name}: expected failure, got: {out}");
        for want in *wants {
            assert!(out.contains(want), "{name}: output lacks {want:?}:\n{out}");
        }
    }
}

/// A name or value holding a newline or an escape sequence is refused, and the error that quotes
/// it shows it escaped: a config (or a source serving one) cannot forge a line of the output or
/// of the log, nor colour a terminal.
#[test]
fn control_characters_in_names_and_values_are_refused_and_shown_escaped() {
    let forged = r"\nINFO bindgate: forged\u001b[31m";
    let cases = [
        (
            GOOD.replace("    - name: a\n", &format!("    - name: \"a{forged}\"\n")),
            [
                "line 4",
                "`static_resources.listeners[0].name`",
                "a listener name is printable text",
            ],
        ),
        (
            GOOD.replace("    - name: c\n", &format!("    - name: \"c{forged}\"\n")),
            [
                "line 9",
                "`static_resources.clusters[0].name`",
                "a cluster name is printable text",
            ],
        ),
        (
            GOOD.replace("- cluster: c", &format!("- cluster: \"c{forged}\"")),
            [
                "line 7",
                "`static_resources.listeners[0].routes[0].cluster`",
                r"no cluster named `c\nINFO bindgate: forged\u{1b}[31m`",
            ],
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    for (text, wants) in cases {
        let path = write(dir.path(), "bad.yaml", &text);
        let (code, out, _) = run_to_end(&["validate", "-c", &path], &[]);
        assert_eq!(code, 1, "{out}");
        for want in wants {
            assert!(out.contains(want), "output lacks {want:?}:\n{out}");
        }
        assert!(!out.contains("\nINFO") && !out.contains('\u{1b}'), "{out}");
    }
}

/// Editors on Windows save UTF-8 with a byte order mark: the file reads as without it, and its
/// errors keep their lines.
#[test]
fn a_config_saved_with_a_byte_order_mark_reads_as_without_one() {
    let dir = tempfile::tempdir().unwrap();
    let good = write(
        dir.path(),
        "bom.yaml",
        &format!("\u{feff}# a comment first\n{GOOD}"),
    );
    let (code, out, _) = run_to_end(&["validate", "-c", &good], &[]);
    assert_eq!(code, 0, "{out}");
    let bad = write(
        dir.path(),
        "bad.yaml",
        &format!("\u{feff}{}", GOOD.replace("version: 1", "version: 2")),
    );
    let (code, out, _) = run_to_end(&["validate", "-c", &bad], &[]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("line 1, column 1: `version`: unsupported version 2"),
        "{out}"
    );
}

#[test]
fn all_errors_are_reported_not_only_the_first() {
    let text = GOOD
        .replace("        - cluster: c", "        - cluster: x1")
        .replace("127.0.0.1:9000", "no-port");
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "bad.yaml", &text);
    let (code, out, _) = run_to_end(&["validate", "-c", &path], &[]);
    assert_eq!(code, 1);
    assert!(out.contains("2 errors"), "{out}");
    assert!(
        out.contains("no cluster named `x1`") && out.contains("`no-port` is not a `host:port`"),
        "{out}"
    );
}

#[test]
fn filters_are_checked_by_name_and_field() {
    // `filters:` is on line 8, its first entry on line 9.
    let with_filter = |entry: &str| {
        GOOD.replace(
            "        - cluster: c\n",
            &format!("        - cluster: c\n      filters:\n        - {entry}\n"),
        )
    };
    let at = "static_resources.listeners[0].filters[0]";
    let cases: Vec<(&str, String, Vec<String>)> = vec![
        (
            "unknown filter",
            with_filter("rate_limiter: {}"),
            vec![
                "line 9".into(),
                format!("`{at}`"),
                "unknown variant `rate_limiter`".into(),
                "`connection_limit`".into(),
                "`source_ip`".into(),
            ],
        ),
        (
            "misspelt field",
            with_filter("connection_limit: { max_conections: 5 }"),
            vec![
                "line 9".into(),
                format!("`{at}.connection_limit.max_conections`"),
                "unknown field `max_conections`, expected `max_connections`".into(),
            ],
        ),
        (
            "zero limit",
            with_filter("connection_limit: { max_connections: 0 }"),
            vec![
                "line 9".into(),
                format!("`{at}.connection_limit.max_connections`: must be at least 1"),
            ],
        ),
        (
            "two filters in one entry",
            with_filter("{ connection_limit: { max_connections: 5 }, source_ip: { deny: [ 10.0.0.0/8 ] } }"),
            vec![
                "line 9".into(),
                format!("`{at}`"),
                "one filter per list entry: `source_ip` follows `connection_limit`".into(),
            ],
        ),
        (
            "bad network on a later line",
            GOOD.replace(
                "        - cluster: c\n",
                "        - cluster: c\n      filters:\n        - connection_limit: { max_connections: 5 }\n        - source_ip:\n            allow: [ 127.0.0.0/8 ]\n            deny: [ 10.0.0.1/8 ]\n",
            ),
            vec![
                "line 12".into(),
                "`static_resources.listeners[0].filters[1].source_ip.deny[0]`".into(),
                "host bits set".into(),
            ],
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    for (name, text, wants) in &cases {
        let path = write(dir.path(), "bad.yaml", text);
        let (code, out, _) = run_to_end(&["validate", "-c", &path], &[]);
        assert_eq!(code, 1, "{name}: expected failure, got: {out}");
        assert!(out.contains("1 error\n"), "{name}: one error only:\n{out}");
        for want in wants {
            assert!(
                out.contains(want.as_str()),
                "{name}: output lacks {want:?}:\n{out}"
            );
        }
    }

    // Both YAML styles of an entry are read, for network and http filters alike.
    let good = GOOD
        .replace("      routes:\n", "      protocol: http\n      routes:\n")
        .replace(
            "        - cluster: c\n",
            "        - cluster: c\n          filters:\n            - header_mutation:\n                request: { set: { x-gateway: gw-1 } }\n            - { max_request_body: { bytes: 10 } }\n      filters:\n        - connection_limit:\n            max_connections: 5\n        - { source_ip: { allow: [ 127.0.0.0/8 ] } }\n",
        );
    let path = write(dir.path(), "good.yaml", &good);
    let (code, out, err) = run_to_end(&["validate", "-c", &path], &[]);
    assert_eq!((code, out.as_str()), (0, "OK\n"), "{good}\n{err}");
}

#[test]
fn missing_tls_files_are_named() {
    let text = "\
version: 1
ingresses:
  - name: i
    address: 127.0.0.1:4443
    client_cert: /nonexistent/tls.crt
    client_key: /nonexistent/tls.key
";
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "bad.yaml", text);
    let (code, out, _) = run_to_end(&["validate", "-c", &path], &[]);
    assert_eq!(code, 1);
    assert!(
        out.contains("line 5") && out.contains("/nonexistent/tls.crt"),
        "{out}"
    );
    assert!(
        out.contains("line 6") && out.contains("/nonexistent/tls.key"),
        "{out}"
    );
}

#[test]
fn schema_command_matches_committed_schema() {
    let (code, out, _) = run_to_end(&["schema"], &[]);
    assert_eq!(code, 0);
    let committed = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/schema/bindgate.schema.json"
    ))
    .unwrap();
    assert_eq!(out, committed);
}

#[test]
fn transport_settings_are_checked() {
    let tls = tls_dir();
    let t = tls.path().display();
    let ingress = |lines: &str| {
        format!(
            "\
version: 1
ingresses:
  - name: i
    address: 127.0.0.1:4443
    server_name: localhost
    ca: {t}/ca.pem
    client_cert: {t}/tls.crt
    client_key: {t}/tls.key
{lines}"
        )
    };
    let cases: &[(&str, String, &[&str])] = &[
        (
            "out of range",
            ingress(
                "    transport: multiplex\n    pool: { min_idle: 8, max_idle: 4, max_age: 500ms }\n    multiplex: { connections: 0, max_streams: 20000 }\n",
            ),
            &[
                "4 errors",
                "line 10",
                "`ingresses[0].pool.max_idle`: is less than min_idle (8)",
                "`ingresses[0].pool.max_age`: must be at least 1s",
                "line 11",
                "`ingresses[0].multiplex.connections`: must be at least 1",
                "`ingresses[0].multiplex.max_streams`: must be at most 10000",
            ],
        ),
        (
            "no idle connections",
            ingress("    pool: { min_idle: 0 }\n"),
            &[
                "line 9",
                "`ingresses[0].pool.min_idle`: must be at least 1 (use `transport: direct` for no pool)",
            ],
        ),
        (
            "unknown transport",
            ingress("    transport: quic\n"),
            &[
                "line 9",
                "unknown variant `quic`",
                "direct",
                "pool",
                "multiplex",
            ],
        ),
        (
            "unknown fallback",
            ingress("    multiplex: { fallback: direct }\n"),
            &["line 9", "unknown variant `direct`", "`pool`", "`none`"],
        ),
        (
            "typo in pool",
            ingress("    pool: { min_idel: 1 }\n"),
            &["line 9", "unknown field `min_idel`"],
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    for (name, text, wants) in cases {
        let path = write(dir.path(), "bad.yaml", text);
        let (code, out, _) = run_to_end(&["validate", "-c", &path], &[]);
        assert_eq!(code, 1, "{name}: expected failure, got: {out}");
        for want in *wants {
            assert!(out.contains(want), "{name}: output lacks {want:?}:\n{out}");
        }
    }
    let path = write(
        dir.path(),
        "good.yaml",
        &ingress(
            "    transport: multiplex\n    multiplex: { connections: 4, max_streams: 500, fallback: none }\n",
        ),
    );
    let (code, out, err) = run_to_end(&["validate", "-c", &path], &[]);
    assert_eq!((code, out.as_str()), (0, "OK\n"), "{err}");
}

#[test]
fn expose_settings_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    // `expose:` is on line 8; its fields from line 9 on.
    let dynamic = |expose: &str| {
        format!(
            "\
version: 1
ngrok: {{ api_key: k }}
ingresses: [ {{ name: n }} ]
dynamic_resources:
  bound_endpoints:
    ingress: n
    poll_interval: 10s
    expose:
{expose}"
        )
    };
    let path = "dynamic_resources.bound_endpoints.expose";
    let cases: Vec<(&str, String, Vec<String>)> = vec![
        (
            "bad cidr",
            dynamic("      mode: virtual\n      cidr: 127.77.0.1/16\n"),
            vec![
                "line 10".into(),
                format!("`{path}.cidr`"),
                "host bits are set (the network is `127.77.0.0/16`)".into(),
            ],
        ),
        (
            "not a cidr",
            dynamic("      mode: virtual\n      cidr: loopback\n"),
            vec![
                "line 10".into(),
                format!("`{path}.cidr`"),
                "`loopback` is not a CIDR".into(),
            ],
        ),
        (
            "hosts file in a missing directory",
            dynamic(&format!(
                "      mode: shared\n      hosts_file: {d}/nope/hosts\n"
            )),
            vec![
                "line 10".into(),
                format!("`{path}.hosts_file`"),
                format!("`{d}/nope/hosts`: its directory does not exist"),
            ],
        ),
        (
            "port_range without ports",
            dynamic("      mode: port_range\n"),
            vec![
                "line 8".into(),
                format!("`{path}.ports`"),
                "mode port_range needs `ports`".into(),
            ],
        ),
        (
            "unknown mode",
            dynamic("      mode: virtul\n"),
            vec![
                "line 9".into(),
                "unknown variant `virtul`".into(),
                "port_range".into(),
                "shared".into(),
            ],
        ),
    ];
    for (name, text, wants) in &cases {
        let file = write(dir.path(), "bad.yaml", text);
        let (code, out, _) = run_to_end(&["validate", "-c", &file], &[]);
        assert_eq!(code, 1, "{name}: expected failure, got: {out}");
        for want in wants {
            assert!(
                out.contains(want.as_str()),
                "{name}: output lacks {want:?}:\n{out}"
            );
        }
    }

    // Valid, and validation writes nothing: the hosts file is not created.
    let hosts = dir.path().join("hosts");
    let file = write(
        dir.path(),
        "good.yaml",
        &dynamic(&format!(
            "      mode: virtual\n      cidr: 127.77.0.0/16\n      hosts_file: {}\n",
            hosts.display()
        )),
    );
    let (code, out, err) = run_to_end(&["validate", "-c", &file], &[]);
    assert_eq!((code, out.as_str()), (0, "OK\n"), "{err}");
    assert!(!hosts.exists(), "validate must not write the hosts file");

    // Switching DESIGN.md's example to another mode keeps working: fields of the other modes
    // are ignored, not errors.
    for mode in ["virtual", "shared"] {
        let file = write(
            dir.path(),
            "switched.yaml",
            &dynamic(&format!(
                "      mode: {mode}\n      address: 127.0.0.1\n      ports: 10000-10999\n      cidr: 127.77.0.0/16\n"
            )),
        );
        let (code, out, err) = run_to_end(&["validate", "-c", &file], &[]);
        assert_eq!((code, out.as_str()), (0, "OK\n"), "{mode}: {err}");
    }
}

/// An ingress whose `ca`, `client_cert` and `client_key` do not exist, used by a cluster.
const SECRETS_ELSEWHERE: &str = "\
version: 1
ingresses:
  - name: i
    address: 127.0.0.1:4443
    ca: /nonexistent/ca.pem
    client_cert: /nonexistent/tls.crt
    client_key: /nonexistent/tls.key
static_resources:
  listeners:
    - name: a
      address: 127.0.0.1:7001
      routes: [ { cluster: c } ]
  clusters:
    - name: c
      type: binding_upstream
      endpoint: tcp://orders.default:5432
      ingress: i
";

#[test]
fn offline_reads_no_referenced_file_but_checks_everything_else() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "gw.yaml", SECRETS_ELSEWHERE);
    let (code, out, err) = run_to_end(&["validate", "--offline", "-c", &path], &[]);
    assert_eq!((code, out.as_str()), (0, "OK\n"), "{err}");
    let (code, out, _) = run_to_end(
        &["validate", "--offline", "--format", "json", "-c", &path],
        &[],
    );
    assert_eq!(code, 0);
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report, serde_json::json!({ "ok": true, "errors": [] }));

    // Without --offline the same files are read, and each missing one is named.
    let (code, out, _) = run_to_end(&["validate", "-c", &path], &[]);
    assert_eq!(code, 1, "{out}");
    for want in [
        "line 5, column 5: `ingresses[0].ca`",
        "/nonexistent/ca.pem",
        "line 6, column 5: `ingresses[0].client_cert`",
        "line 7, column 5: `ingresses[0].client_key`",
    ] {
        assert!(out.contains(want), "output lacks {want:?}:\n{out}");
    }

    // Offline, a typo (and the cross-reference it breaks) still fails.
    let typo = SECRETS_ELSEWHERE.replace("      ingress: i", "      ingres: i");
    let path = write(dir.path(), "typo.yaml", &typo);
    let (code, out, _) = run_to_end(&["validate", "--offline", "-c", &path], &[]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("1 error\n")
            && out.contains(
                "line 17, column 7: `static_resources.clusters[0].ingres`: unknown field `ingres`"
            ),
        "{out}"
    );
    let bad_ref = SECRETS_ELSEWHERE.replace("      ingress: i", "      ingress: j");
    let path = write(dir.path(), "ref.yaml", &bad_ref);
    let (code, out, _) = run_to_end(&["validate", "--offline", "-c", &path], &[]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("line 17") && out.contains("no ingress named `j`"),
        "{out}"
    );
}

#[test]
fn a_missing_ca_file_is_named_with_its_field() {
    let text = SECRETS_ELSEWHERE
        .replace("/nonexistent/tls.crt", "TLS/tls.crt")
        .replace("/nonexistent/tls.key", "TLS/tls.key");
    let tls = tls_dir();
    let text = text.replace("TLS", tls.path().to_str().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "gw.yaml", &text);
    let (code, out, _) = run_to_end(&["validate", "-c", &path], &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("1 error\n"), "{out}");
    assert!(
        out.contains("line 5, column 5: `ingresses[0].ca`") && out.contains("/nonexistent/ca.pem"),
        "{out}"
    );
    // With the CA in place too, the file is valid.
    let good = text.replace(
        "/nonexistent/ca.pem",
        &format!("{}/ca.pem", tls.path().display()),
    );
    let path = write(dir.path(), "good.yaml", &good);
    let (code, out, err) = run_to_end(&["validate", "-c", &path], &[]);
    assert_eq!((code, out.as_str()), (0, "OK\n"), "{err}");
}

/// A mistake in listener 0, listener 2, cluster 1 and at the top level.
const SEVERAL_MISTAKES: &str = "\
version: 1
static_resources:
  listeners:
    - name: a
      address: 127.0.0.1:7001
      colour: red
      routes: [ { cluster: c } ]
    - name: b
      address: 127.0.0.1:7002
      routes: [ { cluster: c } ]
    - name: d
      address: 127.0.0.1:7003
      idle_timeout: 10 minutes
      routes: [ { cluster: c } ]
  clusters:
    - name: c
      type: static
      endpoints: [ \"127.0.0.1:9000\" ]
    - type: static
      endpoints: [ \"127.0.0.1:9001\" ]
ingresses: {}
";

/// (line, path, start of message) of each mistake in [`SEVERAL_MISTAKES`].
const MISTAKES: &[(u64, &str, &str)] = &[
    (
        6,
        "static_resources.listeners[0].colour",
        "unknown field `colour`",
    ),
    (
        13,
        "static_resources.listeners[2].idle_timeout",
        "invalid duration `10 minutes`",
    ),
    (19, "static_resources.clusters[1]", "missing field `name`"),
    (21, "ingresses", "invalid type: map, expected a sequence"),
];

#[test]
fn every_mistake_of_a_file_is_listed_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "gw.yaml", SEVERAL_MISTAKES);

    let (code, out, _) = run_to_end(&["validate", "-c", &path], &[]);
    assert_eq!(code, 1, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], format!("{path}: 4 errors"), "{out}");
    assert_eq!(lines.len(), 1 + MISTAKES.len(), "{out}");
    for (got, (line, at, message)) in lines[1..].iter().zip(MISTAKES) {
        assert!(
            got.starts_with(&format!("  line {line}, column ")),
            "{got:?}: not at line {line}"
        );
        assert!(got.contains(&format!(": `{at}`: {message}")), "{got:?}");
    }

    let (code, out, _) = run_to_end(&["validate", "--format", "json", "-c", &path], &[]);
    assert_eq!(code, 1, "{out}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["ok"], false);
    let errors = report["errors"].as_array().unwrap();
    let got: Vec<(u64, &str)> = errors
        .iter()
        .map(|e| (e["line"].as_u64().unwrap(), e["path"].as_str().unwrap()))
        .collect();
    let want: Vec<(u64, &str)> = MISTAKES.iter().map(|m| (m.0, m.1)).collect();
    assert_eq!(got, want);
    for (e, (line, _, message)) in errors.iter().zip(MISTAKES) {
        assert_eq!(e["file"], path.as_str());
        let column = e["column"].as_u64().unwrap();
        let text = e["text"].as_str().unwrap();
        assert!(
            text.starts_with(&format!("{path}:{line}:{column}: {message}")),
            "{text}"
        );
        assert!(e["message"].as_str().unwrap().starts_with(message), "{e}");
    }
}

#[test]
fn json_reports_an_unreadable_file_without_a_position() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.yaml");
    let missing = missing.to_str().unwrap();
    let (code, out, _) = run_to_end(&["validate", "--format", "json", "-c", missing], &[]);
    assert_eq!(code, 1, "{out}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    let e = &report["errors"][0];
    assert_eq!(report["ok"], false);
    assert_eq!(report["errors"].as_array().unwrap().len(), 1);
    assert_eq!(
        (&e["file"], &e["line"], &e["column"]),
        (
            &serde_json::json!(missing),
            &serde_json::Value::Null,
            &serde_json::Value::Null
        )
    );
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .starts_with("cannot read the file"),
        "{e}"
    );
    assert_eq!(
        e["text"],
        format!("{missing}: {}", e["message"].as_str().unwrap())
    );
}

#[test]
fn exit_codes_are_documented_and_usage_errors_exit_2() {
    let (code, out, _) = run_to_end(&["validate", "--help"], &[]);
    assert_eq!(code, 0);
    for want in [
        "Exit codes:",
        "0  the config is valid",
        "1  the config has errors",
        "2  command-line usage error",
        "--offline",
        "--format",
    ] {
        assert!(out.contains(want), "help lacks {want:?}:\n{out}");
    }
    let (code, _, err) = run_to_end(&["validate", "--format", "xml", "-c", "gw.yaml"], &[]);
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = run_to_end(&["validate"], &[]);
    assert_eq!(code, 2, "{err}");
}
