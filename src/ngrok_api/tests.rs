//! ApiClient against the in-test mock API.

use std::time::Duration;

use super::mock::{MOCK_KEY, MockApi};
use super::*;

fn endpoint(i: usize) -> Endpoint {
    Endpoint {
        id: Some(format!("ep_{i}")),
        url: Some(format!("http://svc{i}.default")),
        proto: Some("http".into()),
        ..Default::default()
    }
}

fn create_body() -> OperatorCreate {
    OperatorCreate {
        description: "bindgate".into(),
        metadata: "{}".into(),
        enabled_features: vec!["bindings".into()],
        region: "global".into(),
        deployment: DeploymentCreate {
            name: "bindgate".into(),
            namespace: "default".into(),
            version: "0.1.0".into(),
            cluster_name: String::new(),
        },
        binding: None,
    }
}

#[tokio::test]
async fn sends_bearer_key_version_and_json() {
    let mock = MockApi::start().await;
    let api = mock.client();
    let op = api.create_operator(&create_body()).await.unwrap();
    assert_eq!(op.id, "k8sop_0001");
    let got = api.get_operator(&op.id).await.unwrap();
    assert_eq!(got, op);
    let st = mock.state();
    assert_eq!(st.requests.len(), 2);
    for r in &st.requests {
        assert_eq!(
            r.authorization.as_deref(),
            Some("Bearer test-api-key-0123456789")
        );
        assert_eq!(r.ngrok_version.as_deref(), Some("2"));
    }
    let post = &st.requests[0];
    assert_eq!(
        (post.method.as_str(), post.target.as_str()),
        ("POST", "/kubernetes_operators")
    );
    assert_eq!(post.content_type.as_deref(), Some("application/json"));
    let body: serde_json::Value = serde_json::from_str(&post.body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"description":"bindgate","metadata":"{}","enabled_features":["bindings"],
            "region":"global","deployment":{"name":"bindgate","namespace":"default","version":"0.1.0"}})
    );
    let get = &st.requests[1];
    assert_eq!(
        (get.method.as_str(), get.target.as_str()),
        ("GET", "/kubernetes_operators/k8sop_0001")
    );
    assert_eq!(get.content_type, None);
    assert_eq!(get.body, "");
}

#[tokio::test]
async fn follows_pagination_across_three_pages() {
    let mock = MockApi::start().await;
    let api = mock.client();
    let id = api.create_operator(&create_body()).await.unwrap().id;
    {
        let mut st = mock.state();
        st.page_size = 2;
        st.endpoints = (0..5).map(endpoint).collect();
        st.requests.clear();
    }
    let eps = api.list_bound_endpoints(&id).await.unwrap();
    assert_eq!(eps, (0..5).map(endpoint).collect::<Vec<_>>());
    let targets: Vec<String> = mock
        .state()
        .requests
        .iter()
        .map(|r| r.target.clone())
        .collect();
    assert_eq!(
        targets,
        vec![
            format!("/kubernetes_operators/{id}/bound_endpoints?limit=100"),
            format!("/kubernetes_operators/{id}/bound_endpoints?limit=100&offset=2"),
            format!("/kubernetes_operators/{id}/bound_endpoints?limit=100&offset=4"),
        ]
    );
}

#[tokio::test]
async fn lists_all_operators() {
    let mock = MockApi::start().await;
    let api = mock.client();
    for _ in 0..3 {
        api.create_operator(&create_body()).await.unwrap();
    }
    mock.state().page_size = 1;
    let ids: Vec<String> = api
        .list_operators()
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.id)
        .collect();
    assert_eq!(ids, vec!["k8sop_0001", "k8sop_0002", "k8sop_0003"]);
    assert_eq!(mock.state().count("GET", "/kubernetes_operators"), 3);
}

#[tokio::test]
async fn a_repeating_next_page_uri_is_an_error_not_a_loop() {
    let mock = MockApi::start().await;
    let api = mock.client();
    api.create_operator(&create_body()).await.unwrap();
    mock.state().loop_pages = true;
    let err = api.list_operators().await.unwrap_err();
    assert!(
        matches!(err, ApiError::Decode(ref m) if m.contains("repeats")),
        "{err}"
    );
    assert_eq!(mock.state().count("GET", "/kubernetes_operators"), 2);
}

#[tokio::test]
async fn next_page_uri_on_another_origin_is_not_followed() {
    let mock = MockApi::start().await;
    let api = mock.client();
    mock.state().script.push_back((
        200,
        r#"{"operators":[],"next_page_uri":"https://evil.test/kubernetes_operators?offset=1"}"#
            .into(),
    ));
    let err = api.list_operators().await.unwrap_err();
    assert!(
        matches!(err, ApiError::Decode(ref m) if m.contains("leaves the API origin")),
        "{err}"
    );
    assert_eq!(mock.state().requests.len(), 1);
}

#[tokio::test]
async fn rejected_key_is_unauthorized_and_not_retried() {
    let mock = MockApi::start().await;
    let mut settings = mock.settings();
    settings.api_key = Secret::new("wrong-key");
    let api = ApiClient::new(settings).unwrap();
    let err = api.get_operator("k8sop_1").await.unwrap_err();
    assert_eq!(
        err,
        ApiError::Unauthorized {
            status: 401,
            error_code: "ERR_NGROK_205".into(),
            msg: "The API key you specified is invalid.".into(),
        }
    );
    assert_eq!(
        err.to_string(),
        "the API key was rejected (HTTP 401, ERR_NGROK_205: The API key you specified is invalid.)"
    );
    assert_eq!(mock.state().requests.len(), 1);
    assert!(!format!("{api:?}").contains("wrong-key"));
}

#[tokio::test]
async fn server_errors_are_retried_until_success() {
    let mock = MockApi::start().await;
    let api = mock.client();
    let id = api.create_operator(&create_body()).await.unwrap().id;
    {
        let mut st = mock.state();
        st.requests.clear();
        st.script
            .push_back((500, r#"{"error_code":"ERR_NGROK_500","msg":"boom"}"#.into()));
        st.script.push_back((500, "upstream trouble".into()));
    }
    let op = api.get_operator(&id).await.unwrap();
    assert_eq!(op.id, id);
    assert_eq!(
        mock.state()
            .count("GET", &format!("/kubernetes_operators/{id}")),
        3
    );
}

#[tokio::test]
async fn retries_are_bounded_and_the_last_error_is_returned() {
    let mock = MockApi::start().await;
    let api = mock.client();
    {
        let mut st = mock.state();
        for _ in 0..5 {
            st.script.push_back((502, "bad gateway".into()));
        }
    }
    let err = api.get_operator("k8sop_1").await.unwrap_err();
    assert_eq!(
        err,
        ApiError::Api {
            status: 502,
            error_code: String::new(),
            msg: "bad gateway".into(),
            operation_id: String::new(),
        }
    );
    assert_eq!(mock.state().requests.len(), 4);
}

#[tokio::test]
async fn create_is_not_retried_after_a_500_but_is_after_429() {
    let mock = MockApi::start().await;
    let api = mock.client();
    mock.state().script.push_back((500, "{}".into()));
    let err = api.create_operator(&create_body()).await.unwrap_err();
    assert!(matches!(err, ApiError::Api { status: 500, .. }), "{err}");
    assert_eq!(mock.state().count("POST", "/kubernetes_operators"), 1);
    mock.state().script.push_back((
        429,
        r#"{"error_code":"ERR_NGROK_226","msg":"slow down"}"#.into(),
    ));
    api.create_operator(&create_body()).await.unwrap();
    assert_eq!(mock.state().count("POST", "/kubernetes_operators"), 3);
}

#[tokio::test]
async fn missing_operator_is_not_found() {
    let mock = MockApi::start().await;
    let api = mock.client();
    let err = api.get_operator("k8sop_gone").await.unwrap_err();
    assert_eq!(
        err,
        ApiError::NotFound {
            error_code: "ERR_NGROK_15010".into(),
            msg: "The kubernetes operator k8sop_gone was not found.".into(),
        }
    );
    assert!(err.is_not_found());
    assert_eq!(mock.state().requests.len(), 1);
    let err = api.delete_operator("k8sop_gone").await.unwrap_err();
    assert!(err.is_not_found());
}

#[tokio::test]
async fn error_json_is_parsed() {
    let mock = MockApi::start().await;
    let api = mock.client();
    mock.state().script.push_back((
        400,
        r#"{"error_code":"ERR_NGROK_233","status_code":400,"msg":"page size out of range","details":{"operation_id":"op_42"}}"#.into(),
    ));
    let err = api.list_operators().await.unwrap_err();
    assert_eq!(
        err,
        ApiError::Api {
            status: 400,
            error_code: "ERR_NGROK_233".into(),
            msg: "page size out of range".into(),
            operation_id: "op_42".into(),
        }
    );
    assert_eq!(err.error_code(), Some("ERR_NGROK_233"));
}

#[tokio::test]
async fn server_text_echoing_the_key_is_scrubbed() {
    let mock = MockApi::start().await;
    let api = mock.client();
    mock.state().script.push_back((
        400,
        format!(r#"{{"error_code":"ERR_NGROK_1","msg":"bad header Bearer {MOCK_KEY}"}}"#),
    ));
    let err = api.get_operator("k8sop_1").await.unwrap_err();
    let text = format!("{err} {err:?}");
    assert!(!text.contains(MOCK_KEY), "{text}");
    assert!(text.contains("Bearer <redacted>"), "{text}");
}

#[tokio::test]
async fn server_text_is_one_printable_line() {
    let mock = MockApi::start().await;
    let api = mock.client();
    mock.state().script.push_back((
        400,
        r#"{"error_code":"ERR_NGROK_1\n","msg":"bad request.\r\n\r\nERR_NGROK_1\n2026-12-07T23:00:00Z  INFO forged \u001b[31m"}"#.into(),
    ));
    let err = api.get_operator("k8sop_1").await.unwrap_err();
    assert_eq!(
        err.to_string(),
        r"the API answered HTTP 400, ERR_NGROK_1: bad request. ERR_NGROK_1 2026-12-07T23:00:00Z  INFO forged \u{1b}[31m"
    );
}

#[tokio::test]
async fn update_and_delete() {
    let mock = MockApi::start().await;
    let api = mock.client();
    let id = api.create_operator(&create_body()).await.unwrap().id;
    let op = api
        .update_operator(
            &id,
            &OperatorUpdate {
                description: Some("renamed".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(op.description, "renamed");
    assert_eq!(
        mock.state().requests.last().unwrap().body,
        r#"{"description":"renamed"}"#
    );
    api.delete_operator(&id).await.unwrap();
    assert!(api.get_operator(&id).await.unwrap_err().is_not_found());
}

#[tokio::test]
async fn refused_connection_is_a_transport_error_after_retries() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let api = two_tries(([127, 0, 0, 1], port).into(), Duration::from_secs(5));
    let err = api.create_operator(&create_body()).await.unwrap_err();
    assert!(matches!(err, ApiError::Transport(_)), "{err}");
}

/// A client of the API at `http://addr` that tries twice, 1 ms apart.
fn two_tries(addr: std::net::SocketAddr, timeout: Duration) -> ApiClient {
    ApiClient::new(ApiSettings {
        api_url: format!("http://{addr}"),
        api_key: Secret::new("k"),
        api_ca: None,
        timeout,
    })
    .unwrap()
    .with_retry(RetryPolicy {
        attempts: 2,
        base_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(1),
        jitter: false,
    })
}

#[tokio::test]
async fn silent_server_times_out() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepts = tokio::spawn(async move {
        let mut held = Vec::new();
        for _ in 0..2 {
            let (s, _) = listener.accept().await.unwrap();
            held.push(s);
        }
        held
    });
    let api = two_tries(addr, Duration::from_millis(100));
    let err = api.get_operator("k8sop_1").await.unwrap_err();
    assert_eq!(err, ApiError::Timeout(Duration::from_millis(100)));
    // Both attempts connected: the timeout was retried once.
    assert_eq!(accepts.await.unwrap().len(), 2);
}

/// A server that answers `200` with a body that never ends, or with a `content-length` of
/// 1 GiB: the client reads no more than `MAX_ANSWER_BYTES` of it, and the attempt fails (and
/// is retried, the call being idempotent) instead of filling memory until the timeout.
#[tokio::test]
async fn an_endless_or_oversized_answer_is_read_no_further_than_the_bound() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    for endless in [true, false] {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let mut sent = Vec::new();
            for _ in 0..2 {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut head = [0u8; 4096];
                let _ = s.read(&mut head).await.unwrap();
                let mut n: usize = 0;
                if endless {
                    s.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
                        .await
                        .unwrap();
                    let chunk = [b'['; 64 * 1024];
                    let mut framed = format!("{:x}\r\n", chunk.len()).into_bytes();
                    framed.extend_from_slice(&chunk);
                    framed.extend_from_slice(b"\r\n");
                    // Until the client hangs up.
                    while s.write_all(&framed).await.is_ok() {
                        n += chunk.len();
                    }
                } else {
                    let head = "HTTP/1.1 200 OK\r\ncontent-length: 1073741824\r\n\r\n";
                    s.write_all(head.as_bytes()).await.unwrap();
                    let _ = s.read(&mut [0u8; 16]).await; // until the client hangs up
                }
                sent.push(n);
            }
            sent
        });
        let api = two_tries(addr, Duration::from_secs(5));
        let err = api.get_operator("k8sop_1").await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "unexpected answer from the API: the answer is larger than 16 MiB"
        );
        let sent = server.await.unwrap();
        // Two attempts, each cut off near the bound (the socket buffers hold some more).
        assert_eq!(sent.len(), 2);
        assert!(
            sent.iter().all(|&n| n < MAX_ANSWER_BYTES + (32 << 20)),
            "{sent:?}"
        );
    }
}

#[tokio::test]
async fn https_with_api_ca() {
    let (mock, ca_pem) = MockApi::start_tls().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, ca_pem).unwrap();
    let mut settings = mock.settings();
    settings.api_ca = Some(ca);
    let api = ApiClient::new(settings).unwrap();
    let op = api.create_operator(&create_body()).await.unwrap();
    assert_eq!(op.id, "k8sop_0001");
    // Without the CA the server is not trusted.
    let untrusted = ApiClient::new(mock.settings())
        .unwrap()
        .with_retry(RetryPolicy {
            attempts: 1,
            ..RetryPolicy::default()
        });
    let err = untrusted.get_operator("k8sop_0001").await.unwrap_err();
    assert!(
        matches!(err, ApiError::Transport(ref m) if m.contains("certificate")),
        "{err}"
    );
}

#[test]
fn settings_are_checked() {
    let make = |url: &str, key: &str| {
        ApiClient::new(ApiSettings {
            api_url: url.into(),
            api_key: Secret::new(key),
            api_ca: None,
            timeout: Duration::from_secs(1),
        })
    };
    let err = make("http://api.example.test", "k").unwrap_err();
    assert!(
        err.to_string()
            .contains("plain http is allowed only to a loopback"),
        "{err}"
    );
    assert!(make("http://localhost:1", "k").is_ok());
    assert!(make("http://[::1]:1", "k").is_ok());
    assert!(make("https://api.ngrok.com", "k").is_ok());
    assert!(make("ftp://x", "k").is_err());
    let err = make("https://api.ngrok.com", "bad\nkey").unwrap_err();
    assert!(!err.to_string().contains("bad\nkey"));
    assert!(make("https://api.ngrok.com", "").is_err());
    let api = make("https://example.test/prefix", "k").unwrap();
    assert_eq!(api.base_url(), "https://example.test/prefix/");
    assert_eq!(
        api.operator_url("a/b").unwrap().as_str(),
        "https://example.test/prefix/kubernetes_operators/a%2Fb"
    );
}
