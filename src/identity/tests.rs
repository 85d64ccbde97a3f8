//! Registration, reuse, adoption and renewal against the in-test mock API (which signs CSRs
//! with its own CA, so the certificates here are genuine).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use time::Duration as TimeDuration;

use super::*;
use crate::config::KeyType;
use crate::ngrok_api::mock::{MOCK_INGRESS, MockApi};
use crate::ngrok_api::{Operator, OperatorDeployment};
use crate::secret::Secret;

const DAY: Duration = Duration::from_secs(86_400);

fn settings() -> RegistrationSettings {
    RegistrationSettings {
        description: "bindgate test".into(),
        key_type: KeyType::EcdsaP256,
        renew_before: 30 * DAY,
        endpoint_selectors: vec!["true".into()],
        deployment_name: "bindgate".into(),
        deployment_namespace: "testns".into(),
        api_url: None,
        fleet: None,
        deregister_on_shutdown: false,
        reap_after: crate::config::ngrok::DEFAULT_REAP_AFTER,
        heartbeat_interval: crate::config::ngrok::DEFAULT_HEARTBEAT_INTERVAL,
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

struct Setup {
    mock: MockApi,
    _root: tempfile::TempDir,
    store: StateStore,
}

async fn setup() -> Setup {
    let mock = MockApi::start().await;
    let root = tempfile::tempdir().unwrap();
    let store = StateStore::open(root.path().join("state")).unwrap();
    Setup {
        mock,
        _root: root,
        store,
    }
}

fn posts(mock: &MockApi) -> usize {
    mock.state().count("POST", "/kubernetes_operators")
}

fn patches(mock: &MockApi, id: &str) -> usize {
    mock.state()
        .count("PATCH", &format!("/kubernetes_operators/{id}"))
}

#[tokio::test]
async fn first_run_registers_once_and_stores_private_files() {
    let s = setup().await;
    let api = s.mock.client();
    let creds = Registrar::ensure(&api, &s.store, &settings())
        .await
        .unwrap();
    assert_eq!(posts(&s.mock), 1);
    assert_eq!(creds.operator_id, "k8sop_0001");
    assert_eq!(creds.ingress_endpoint, format!("{MOCK_INGRESS}:443"));

    // The request is what ngrok's operator sends.
    let node_id = s.store.node_id().unwrap();
    let body: serde_json::Value = {
        let st = s.mock.state();
        let post = st.requests.iter().find(|r| r.method == "POST").unwrap();
        serde_json::from_str(&post.body).unwrap()
    };
    assert_eq!(body["description"], "bindgate test");
    assert_eq!(body["enabled_features"], serde_json::json!(["bindings"]));
    assert_eq!(body["region"], "global");
    assert_eq!(
        body["deployment"],
        serde_json::json!({"name":"bindgate","namespace":"testns","version":env!("CARGO_PKG_VERSION")})
    );
    assert_eq!(
        body["binding"]["endpoint_selectors"],
        serde_json::json!(["true"])
    );
    assert!(
        body["binding"]["csr"]
            .as_str()
            .unwrap()
            .starts_with("-----BEGIN CERTIFICATE REQUEST-----")
    );
    let metadata: serde_json::Value =
        serde_json::from_str(body["metadata"].as_str().unwrap()).unwrap();
    assert_eq!(
        metadata,
        serde_json::json!({"bindgate":{"node_id": node_id, "version": env!("CARGO_PKG_VERSION")}})
    );

    // A genuine certificate from the mock CA, for our key.
    let info = certificate::inspect(&creds.cert_pem).unwrap();
    assert_eq!(info.issuer, "CN=mock ngrok CA");
    assert_eq!(info.sans, vec!["DNS:acct-mock.bindings.ngrok.test"]);
    assert_eq!(info.key_type, "ECDSA P-256");
    assert_eq!(info.not_after, creds.not_after);
    certificate::certified_key(&creds.cert_pem, &creds.key).unwrap();

    // Private files, private directory, and what they hold.
    assert_eq!(mode(s.store.dir()), 0o700);
    for path in [
        s.store.key_path(),
        s.store.cert_path(),
        s.store.operator_path(),
        s.store.node_id_path(),
    ] {
        assert_eq!(mode(&path), 0o600, "{}", path.display());
    }
    assert_eq!(
        std::fs::read_to_string(s.store.key_path()).unwrap(),
        creds.key.expose()
    );
    assert_eq!(
        std::fs::read_to_string(s.store.cert_path()).unwrap(),
        creds.cert_pem
    );
    let saved = s.store.load_operator().unwrap().unwrap();
    assert_eq!(saved.operator_id, "k8sop_0001");
    assert_eq!(saved.ingress_endpoint, format!("{MOCK_INGRESS}:443"));
    assert_eq!(
        saved.not_after,
        Some(registration::rfc3339(creds.not_after))
    );
    // The key never shows in Debug output.
    assert!(!format!("{creds:?}").contains("PRIVATE KEY"));
}

#[tokio::test]
async fn second_ensure_reuses_the_saved_registration() {
    let s = setup().await;
    let api = s.mock.client();
    let first = Registrar::ensure(&api, &s.store, &settings())
        .await
        .unwrap();
    let second = Registrar::ensure(&api, &s.store, &settings())
        .await
        .unwrap();
    assert_eq!(posts(&s.mock), 1);
    assert_eq!(patches(&s.mock, &first.operator_id), 0);
    assert_eq!(
        s.mock.state().count(
            "GET",
            &format!("/kubernetes_operators/{}", first.operator_id)
        ),
        1
    );
    assert_eq!(second.operator_id, first.operator_id);
    assert_eq!(second.cert_pem, first.cert_pem);
    assert_eq!(second.key, first.key);
}

#[tokio::test]
async fn changed_settings_are_patched_without_a_new_certificate() {
    let s = setup().await;
    let api = s.mock.client();
    let first = Registrar::ensure(&api, &s.store, &settings())
        .await
        .unwrap();
    let mut changed = settings();
    changed.description = "bindgate gw-2".into();
    let second = Registrar::ensure(&api, &s.store, &changed).await.unwrap();
    assert_eq!(posts(&s.mock), 1);
    assert_eq!(patches(&s.mock, &first.operator_id), 1);
    assert_eq!(second.cert_pem, first.cert_pem);
    let body: serde_json::Value =
        serde_json::from_str(&s.mock.state().requests.last().unwrap().body).unwrap();
    assert_eq!(body["description"], "bindgate gw-2");
    assert!(body["binding"].get("csr").is_none(), "{body}");
    assert!(body["deployment"].get("namespace").is_none(), "{body}");
}

#[tokio::test]
async fn saved_operator_gone_registers_again() {
    let s = setup().await;
    let api = s.mock.client();
    let first = Registrar::ensure(&api, &s.store, &settings())
        .await
        .unwrap();
    s.mock.state().operators.clear();
    let second = Registrar::ensure(&api, &s.store, &settings())
        .await
        .unwrap();
    assert_eq!(posts(&s.mock), 2);
    assert_eq!(first.operator_id, "k8sop_0001");
    assert_eq!(second.operator_id, "k8sop_0002");
    assert_ne!(second.cert_pem, first.cert_pem);
    assert_eq!(
        s.store.load_operator().unwrap().unwrap().operator_id,
        "k8sop_0002"
    );
}

#[tokio::test]
async fn other_errors_on_the_saved_operator_start_with_the_saved_identity_or_fail_without_registering()
 {
    let s = setup().await;
    let api = s.mock.client();
    let first = Registrar::ensure(&api, &s.store, &settings())
        .await
        .unwrap();
    // A 500 or a rejected key: the saved, usable certificate is used as it is, without
    // registering. With it, the API gets one try (a start does not wait out the retries).
    s.mock.state().script.push_back((500, "{}".into()));
    s.mock.state().script.push_back((200, "not reached".into()));
    let offline = Registrar::ensure(&api, &s.store, &settings())
        .await
        .unwrap();
    assert_eq!(
        s.mock.state().script.pop_front(),
        Some((200, "not reached".into())),
        "one try"
    );
    assert_eq!(offline.operator_id, first.operator_id);
    assert_eq!(offline.cert_pem, first.cert_pem);
    assert_eq!(offline.ingress_endpoint, first.ingress_endpoint);
    s.mock.state().script.push_back((
        401,
        r#"{"error_code":"ERR_NGROK_205","msg":"bad key"}"#.into(),
    ));
    let offline = Registrar::ensure(&api, &s.store, &settings())
        .await
        .unwrap();
    assert_eq!(offline.cert_pem, first.cert_pem);
    // Without a usable saved certificate, the error is returned and nothing registers.
    std::fs::remove_file(s.store.cert_path()).unwrap();
    for _ in 0..4 {
        s.mock.state().script.push_back((500, "{}".into()));
    }
    let err = Registrar::ensure(&api, &s.store, &settings())
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "look up saved operator k8sop_0001: the API answered HTTP 500"
    );
    s.mock.state().script.push_back((
        401,
        r#"{"error_code":"ERR_NGROK_205","msg":"bad key"}"#.into(),
    ));
    let err = Registrar::ensure(&api, &s.store, &settings())
        .await
        .unwrap_err();
    assert!(err.api_error().unwrap().is_unauthorized(), "{err}");
    assert_eq!(posts(&s.mock), 1);
}

#[tokio::test]
async fn adopts_this_hosts_operator_instead_of_creating_one() {
    let s = setup().await;
    let api = s.mock.client();
    let node_id = s.store.node_id().unwrap();
    let operator = |namespace: &str, node: &str| Operator {
        created_at: "2026-01-01T00:00:00Z".into(),
        metadata: registration::metadata(node),
        deployment: Some(OperatorDeployment {
            name: "bindgate".into(),
            namespace: namespace.into(),
            version: "0.0.1".into(),
            cluster_name: String::new(),
        }),
        ..Default::default()
    };
    let (other_host, other_ns, mine) = {
        let mut st = s.mock.state();
        (
            st.insert_operator(operator("testns", "another-node")),
            st.insert_operator(operator("elsewhere", &node_id)),
            st.insert_operator(operator("testns", &node_id)),
        )
    };
    let creds = Registrar::ensure(&api, &s.store, &settings())
        .await
        .unwrap();
    assert_eq!(posts(&s.mock), 0);
    assert_eq!(creds.operator_id, mine);
    assert_eq!(patches(&s.mock, &mine), 1);
    assert_eq!(patches(&s.mock, &other_host), 0);
    assert_eq!(patches(&s.mock, &other_ns), 0);
    certificate::certified_key(&creds.cert_pem, &creds.key).unwrap();
    assert_eq!(s.store.load_operator().unwrap().unwrap().operator_id, mine);
    // The adopted operator now carries this version and the config's description.
    let st = s.mock.state();
    let op = &st.operators[&mine];
    assert_eq!(op.description, "bindgate test");
    assert!(op.binding.as_ref().unwrap().cert.is_some());
}

#[tokio::test]
async fn missing_local_certificate_is_reissued_not_reregistered() {
    let s = setup().await;
    let api = s.mock.client();
    let first = Registrar::ensure(&api, &s.store, &settings())
        .await
        .unwrap();
    std::fs::remove_file(s.store.key_path()).unwrap();
    let second = Registrar::ensure(&api, &s.store, &settings())
        .await
        .unwrap();
    assert_eq!(posts(&s.mock), 1);
    assert_eq!(patches(&s.mock, &first.operator_id), 1);
    assert_eq!(second.operator_id, first.operator_id);
    assert_ne!(second.key, first.key);
    certificate::certified_key(&second.cert_pem, &second.key).unwrap();
    // A key that does not match the cert (a crash between the two writes) is reissued too.
    std::fs::write(
        s.store.key_path(),
        certificate::new_key(KeyType::EcdsaP256)
            .unwrap()
            .serialize_pem(),
    )
    .unwrap();
    Registrar::ensure(&api, &s.store, &settings())
        .await
        .unwrap();
    assert_eq!(patches(&s.mock, &first.operator_id), 2);
    assert_eq!(posts(&s.mock), 1);
}

#[tokio::test]
async fn renews_with_a_new_key_when_within_renew_before() {
    let s = setup().await;
    let api = s.mock.client();
    // Issued 80 days ago, 10 days left: within the 30-day window.
    s.mock.state().validity = (TimeDuration::days(-80), TimeDuration::days(10));
    let old = Registrar::ensure(&api, &s.store, &settings())
        .await
        .unwrap();
    assert!(old.renewal_due(30 * DAY, time::OffsetDateTime::now_utc()));
    assert!(!old.renewal_due(5 * DAY, time::OffsetDateTime::now_utc()));

    s.mock.state().validity = (TimeDuration::minutes(-5), TimeDuration::days(90));
    let new = Registrar::renew_if_due(&api, &s.store, &settings(), &old)
        .await
        .unwrap()
        .expect("due");
    assert_eq!(patches(&s.mock, &old.operator_id), 1);
    assert_eq!(posts(&s.mock), 1);
    assert_eq!(new.operator_id, old.operator_id);
    assert_ne!(new.key, old.key);
    assert!(new.not_after - old.not_after > TimeDuration::days(79));
    let (cert, key) = s.store.load_credentials().unwrap().unwrap();
    assert_eq!((cert.as_str(), &key), (new.cert_pem.as_str(), &new.key));
    let csr = {
        let st = s.mock.state();
        let body: serde_json::Value =
            serde_json::from_str(&st.requests.last().unwrap().body).unwrap();
        body["binding"]["csr"].as_str().unwrap().to_owned()
    };
    assert!(csr.starts_with("-----BEGIN CERTIFICATE REQUEST-----"));

    // The fresh certificate is not due: no PATCH.
    assert!(
        Registrar::renew_if_due(&api, &s.store, &settings(), &new)
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(patches(&s.mock, &old.operator_id), 1);
}

#[tokio::test]
async fn renewal_task_swaps_the_identity() {
    let s = setup().await;
    let api = s.mock.client();
    s.mock.state().validity = (TimeDuration::days(-80), TimeDuration::days(10));
    let old = Registrar::ensure(&api, &s.store, &settings())
        .await
        .unwrap();
    s.mock.state().validity = (TimeDuration::minutes(-5), TimeDuration::days(90));
    let identity = Arc::new(ClientIdentity::from_credentials(&old).unwrap());
    let mut changes = identity.subscribe();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(run_renewal(
        api,
        s.store.clone(),
        settings(),
        identity.clone(),
        shutdown.clone(),
    ));
    tokio::time::timeout(Duration::from_secs(30), changes.changed())
        .await
        .expect("renewed in time")
        .unwrap();
    let info = identity.certificate_info().unwrap();
    assert!(info.not_after - old.not_after > TimeDuration::days(79));
    let (cert, key) = s.store.load_credentials().unwrap().unwrap();
    assert_eq!(info, certificate::inspect(&cert).unwrap());
    assert_ne!(key, old.key);
    assert_eq!(patches(&s.mock, &old.operator_id), 1);
    shutdown.cancel();
    task.await.unwrap();
    assert_eq!(*changes.borrow(), 1);
}

#[tokio::test]
async fn renewal_registers_again_when_the_operator_was_deleted() {
    let s = setup().await;
    let api = s.mock.client();
    Registrar::ensure(&api, &s.store, &settings())
        .await
        .unwrap();
    s.mock.state().operators.clear();
    let identity = ClientIdentity::new(
        &std::fs::read_to_string(s.store.cert_path()).unwrap(),
        &Secret::new(std::fs::read_to_string(s.store.key_path()).unwrap()),
    )
    .unwrap();
    let creds = renewal::renew_once(&api, &s.store, &settings(), &identity)
        .await
        .unwrap();
    assert_eq!(creds.operator_id, "k8sop_0002");
    assert_eq!(posts(&s.mock), 2);
}

#[tokio::test]
async fn forced_renew_without_registration_is_explained() {
    let s = setup().await;
    let api = s.mock.client();
    let err = Registrar::renew(&api, &s.store, &settings())
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "not registered with ngrok yet: no {}",
            s.store.operator_path().display()
        )
    );
    assert!(s.mock.state().requests.is_empty());
}

#[tokio::test]
async fn deregister_deletes_the_operator_and_local_files() {
    let s = setup().await;
    let api = s.mock.client();
    let creds = Registrar::ensure(&api, &s.store, &settings())
        .await
        .unwrap();
    let done = Registrar::deregister(&api, &s.store).await.unwrap();
    assert_eq!(done.operator_id, creds.operator_id);
    assert!(!done.already_gone);
    assert_eq!(done.removed_files.len(), 3);
    assert_eq!(
        s.mock.state().count(
            "DELETE",
            &format!("/kubernetes_operators/{}", creds.operator_id)
        ),
        1
    );
    assert!(s.mock.state().operators.is_empty());
    assert!(s.store.load_operator().unwrap().is_none());
    assert!(!s.store.key_path().exists());
    assert!(matches!(
        Registrar::deregister(&api, &s.store).await,
        Err(IdentityError::NotRegistered(_))
    ));
}

#[tokio::test]
async fn p384_keys_are_requested_when_configured() {
    let s = setup().await;
    let api = s.mock.client();
    let mut p384 = settings();
    p384.key_type = KeyType::EcdsaP384;
    let creds = Registrar::ensure(&api, &s.store, &p384).await.unwrap();
    assert_eq!(
        certificate::inspect(&creds.cert_pem).unwrap().key_type,
        "ECDSA P-384"
    );
}

#[test]
fn the_provider_prefers_the_sha256_suites() {
    let provider = crate::identity::crypto_provider();
    let names: Vec<String> = provider
        .cipher_suites
        .iter()
        .map(|s| format!("{:?}", s.suite()))
        .collect();
    assert_eq!(names[0], "TLS13_AES_128_GCM_SHA256", "{names:?}");
    let first_sha384 = names.iter().position(|n| n.ends_with("SHA384")).unwrap();
    assert!(
        names[..first_sha384]
            .iter()
            .any(|n| n.starts_with("TLS_ECDHE")),
        "TLS 1.2 SHA-256 suites come before any SHA-384 one too: {names:?}"
    );
    assert_eq!(
        names.len(),
        rustls::crypto::aws_lc_rs::default_provider()
            .cipher_suites
            .len(),
        "reordered, nothing dropped"
    );
}
