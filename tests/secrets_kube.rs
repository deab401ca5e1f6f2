//! The Kubernetes code path against kube's own mock service (tower-test), answering with the
//! JSON a real API server sends: lists (paginated), watch event streams, a 403 Status.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use base64::Engine;
use envoy_gateway_exporter::collect::Snapshot;
use envoy_gateway_exporter::metrics::{DeriveOptions, derive, encode};
use envoy_gateway_exporter::secrets::kube::{classify, watch_gateway, watch_selected};
use envoy_gateway_exporter::secrets::{SecretStore, SecretsSnapshot};
use http::{Request, Response, StatusCode};
use kube::client::Body;
use prometheus::{IntCounterVec, Opts};
use serde_json::{Value, json};
use tower_test::mock::{Handle, SendResponse};

type ApiHandle = Handle<Request<Body>, Response<Body>>;

/// Answers requests of the code under test, one at a time, in the order they come.
struct ApiServer {
    handle: ApiHandle,
    /// Watches left open (their responses never sent), so the watcher waits instead of looping.
    held: Vec<SendResponse<Response<Body>>>,
}

impl ApiServer {
    fn new() -> (kube::Client, ApiServer) {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = kube::Client::new(service, "default");
        (
            client,
            ApiServer {
                handle,
                held: Vec::new(),
            },
        )
    }

    /// The next request: its path and query, and where to send the answer.
    async fn next(&mut self) -> (String, SendResponse<Response<Body>>) {
        let (request, send) =
            tokio::time::timeout(Duration::from_secs(10), self.handle.next_request())
                .await
                .expect("the exporter should have sent another request")
                .expect("the mock service is alive");
        assert_eq!(request.method(), http::Method::GET);
        (request.uri().to_string(), send)
    }

    fn hold(&mut self, send: SendResponse<Response<Body>>) {
        self.held.push(send);
    }
}

fn ok(body: &Value) -> Response<Body> {
    Response::builder()
        .status(StatusCode::OK)
        .body(Body::from(serde_json::to_vec(body).unwrap()))
        .unwrap()
}

/// An API error: the Status object the API server sends with a non-2xx code.
fn status(code: StatusCode, reason: &str, message: &str) -> Response<Body> {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code.as_u16()
    });
    Response::builder()
        .status(code)
        .body(Body::from(serde_json::to_vec(&body).unwrap()))
        .unwrap()
}

/// A watch response: one JSON event per line, then the end of the stream (a dropped watch).
fn events(events: &[(&str, Value)]) -> Response<Body> {
    let mut body = Vec::new();
    for (kind, object) in events {
        body.extend(serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap());
        body.push(b'\n');
    }
    Response::builder()
        .status(StatusCode::OK)
        .body(Body::from(body))
        .unwrap()
}

struct TestCert {
    pem: String,
    key_pem: String,
    serial: String,
}

fn cert(cn: &str, serial: u8) -> TestCert {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec![format!("{cn}.example.com")]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    params.serial_number = Some(rcgen::SerialNumber::from_slice(&[serial, 0x01]));
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(30);
    TestCert {
        pem: params.self_signed(&key).unwrap().pem(),
        key_pem: key.serialize_pem(),
        serial: format!("{serial:02x}01"),
    }
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// A Secret as the API server serialises it (list items carry no kind/apiVersion).
fn secret(namespace: &str, name: &str, rv: &str, cert: &TestCert) -> Value {
    json!({
        "metadata": {
            "name": name, "namespace": namespace, "uid": format!("uid-{name}"),
            "resourceVersion": rv, "creationTimestamp": "2026-11-01T00:00:00Z",
            "labels": {"team": "edge"},
            "managedFields": [{"manager": "cert-manager-certificates-issuing", "operation": "Update", "apiVersion": "v1"}]
        },
        "data": {"tls.crt": b64(&cert.pem), "tls.key": b64(&cert.key_pem)},
        "type": "kubernetes.io/tls"
    })
}

fn secret_list(rv: &str, items: Vec<Value>, continue_token: Option<&str>) -> Value {
    let mut metadata = json!({"resourceVersion": rv});
    if let Some(token) = continue_token {
        metadata["continue"] = json!(token);
    }
    json!({"kind": "SecretList", "apiVersion": "v1", "metadata": metadata, "items": items})
}

fn errors_counter() -> IntCounterVec {
    IntCounterVec::new(Opts::new("errors_total", "test"), &["source", "reason"]).unwrap()
}

/// Polls the store until `check` holds.
async fn until(
    store: &SecretStore,
    what: &str,
    check: impl Fn(&SecretsSnapshot) -> bool,
) -> SecretsSnapshot {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let snapshot = store.snapshot();
        if check(&snapshot) {
            return snapshot;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}: {snapshot:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn serials(snapshot: &SecretsSnapshot) -> BTreeMap<String, Option<String>> {
    snapshot
        .secrets
        .iter()
        .map(|s| {
            (
                format!("{}/{}", s.namespace, s.name),
                s.leaf_serial().map(str::to_string),
            )
        })
        .collect()
}

#[tokio::test]
async fn selector_mode_lists_every_page_then_follows_added_modified_deleted_and_resumes_the_watch()
{
    let (client, mut api) = ApiServer::new();
    let store = SecretStore::new(errors_counter());
    let (a, b, c, d) = (
        cert("site", 0x10),
        cert("legacy", 0x20),
        cert("other", 0x30),
        cert("site-renewed", 0x40),
    );
    let task = tokio::spawn(watch_selected(
        client,
        vec!["apps".into()],
        Some("team=edge".into()),
        store.clone(),
    ));

    let (uri, send) = api.next().await;
    assert!(uri.starts_with("/api/v1/namespaces/apps/secrets?"), "{uri}");
    for part in [
        "fieldSelector=type%3Dkubernetes.io%2Ftls",
        "labelSelector=team%3Dedge",
        "limit=500",
    ] {
        assert!(uri.contains(part), "{uri} lacks {part}");
    }
    send.send_response(ok(&secret_list(
        "100",
        vec![secret("apps", "site-tls", "90", &a)],
        Some("page-2"),
    )));
    let (uri, send) = api.next().await;
    assert!(uri.contains("continue=page-2"), "second page: {uri}");
    send.send_response(ok(&secret_list(
        "100",
        vec![secret("apps", "legacy-tls", "95", &b)],
        None,
    )));

    let listed = until(&store, "the initial list", |s| s.secrets.len() == 2).await;
    assert!(listed.up);
    assert_eq!(
        serials(&listed)["apps/site-tls"].as_deref(),
        Some(a.serial.as_str())
    );
    assert_eq!(
        serials(&listed)["apps/legacy-tls"].as_deref(),
        Some(b.serial.as_str())
    );

    let (uri, send) = api.next().await;
    assert!(
        uri.contains("watch=true") && uri.contains("resourceVersion=100"),
        "{uri}"
    );
    send.send_response(events(&[
        ("ADDED", secret("apps", "other-tls", "101", &c)),
        ("MODIFIED", secret("apps", "site-tls", "102", &d)),
        ("DELETED", secret("apps", "legacy-tls", "103", &b)),
    ]));
    let followed = until(&store, "the watch events", |s| {
        serials(s).get("apps/site-tls") == Some(&Some(d.serial.clone())) && s.secrets.len() == 2
    })
    .await;
    assert_eq!(
        serials(&followed).keys().cloned().collect::<Vec<_>>(),
        vec!["apps/other-tls".to_string(), "apps/site-tls".to_string()]
    );

    // The watch stream ended (dropped connection): it resumes from the last version seen.
    let (uri, send) = api.next().await;
    assert!(
        uri.contains("watch=true") && uri.contains("resourceVersion=103"),
        "resumed watch: {uri}"
    );
    api.hold(send);

    // Only summaries are kept: no trace of any private key.
    let kept = format!("{followed:?}");
    for cert in [&a, &b, &c, &d] {
        let body: String = cert
            .key_pem
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
        assert!(!kept.contains(&body[..32]));
        assert!(!kept.contains(&b64(&cert.key_pem)[..32]));
    }
    task.abort();
}

#[tokio::test]
async fn a_forbidden_list_is_up_0_with_reason_forbidden_then_recovers() {
    let (client, mut api) = ApiServer::new();
    let errors = errors_counter();
    let store = SecretStore::new(errors.clone());
    let task = tokio::spawn(watch_selected(
        client,
        vec!["apps".into()],
        None,
        store.clone(),
    ));

    let (_, send) = api.next().await;
    send.send_response(status(
        StatusCode::FORBIDDEN,
        "Forbidden",
        "secrets is forbidden: User \"system:serviceaccount:envoy-gateway-system:envoy-default-eg\" cannot list resource \"secrets\" in API group \"\" in the namespace \"apps\"",
    ));
    let forbidden = errors.with_label_values(&["secrets", "forbidden"]);
    let counted = until(&store, "the failure to be counted", |_| {
        forbidden.get() == 1
    })
    .await;
    assert!(!counted.up);
    assert!(counted.secrets.is_empty());

    // The watcher retries with backoff; once RBAC is fixed the source is up again.
    let (uri, send) = api.next().await;
    assert!(uri.starts_with("/api/v1/namespaces/apps/secrets?"), "{uri}");
    send.send_response(ok(&secret_list(
        "7",
        vec![secret("apps", "site-tls", "5", &cert("site", 0x11))],
        None,
    )));
    until(&store, "recovery", |s| s.up && s.secrets.len() == 1).await;
    task.abort();
}

#[test]
fn a_forbidden_answer_is_explained_with_the_missing_permission() {
    let status = kube::core::Status {
        code: 403,
        message: "secrets is forbidden: User \"x\" cannot watch resource \"secrets\"".into(),
        reason: "Forbidden".into(),
        ..Default::default()
    };
    let error =
        kube::runtime::watcher::Error::InitialListFailed(kube::Error::Api(Box::new(status)));
    let (reason, line) = classify(&error, "secrets in namespace apps");
    assert_eq!(reason, "forbidden");
    assert!(line.contains("cannot watch resource \"secrets\""), "{line}");
    assert!(line.contains("needs get, list and watch"), "{line}");
    assert!(!line.contains('\n'));
}

fn gateway_list() -> Value {
    json!({
        "kind": "GatewayList", "apiVersion": "gateway.networking.k8s.io/v1",
        "metadata": {"resourceVersion": "200"},
        "items": [{
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": {"name": "eg", "namespace": "default", "uid": "gw-1", "resourceVersion": "150", "generation": 3},
            "spec": {
                "gatewayClassName": "eg",
                "listeners": [
                    {"name": "http", "port": 80, "protocol": "HTTP", "allowedRoutes": {"namespaces": {"from": "Same"}}},
                    {"name": "https", "port": 443, "protocol": "HTTPS", "hostname": "www.example.com",
                     "tls": {"mode": "Terminate", "certificateRefs": [{"group": "", "kind": "Secret", "name": "site-tls"}]}},
                    {"name": "https-alt", "port": 8443, "protocol": "HTTPS",
                     "tls": {"mode": "Terminate", "certificateRefs": [{"kind": "Secret", "name": "site-tls"}]}},
                    {"name": "api", "port": 9443, "protocol": "HTTPS",
                     "tls": {"mode": "Terminate", "certificateRefs": [
                         {"kind": "Secret", "name": "api-tls", "namespace": "certs"},
                         {"kind": "Secret", "name": "gone-tls", "namespace": "certs"}
                     ]}}
                ]
            },
            "status": {"conditions": [{"type": "Programmed", "status": "True", "reason": "Programmed", "message": "", "lastTransitionTime": "2026-11-01T00:00:00Z", "observedGeneration": 3}]}
        }]
    })
}

#[tokio::test]
async fn gateway_mode_watches_exactly_the_referenced_secrets_including_another_namespace() {
    let (client, mut api) = ApiServer::new();
    let store = SecretStore::new(errors_counter());
    let (site, apis) = (cert("site", 0x50), cert("api", 0x60));
    let task = tokio::spawn(watch_gateway(
        client,
        "eg".into(),
        "default".into(),
        store.clone(),
    ));

    let (uri, send) = api.next().await;
    assert!(
        uri.starts_with("/apis/gateway.networking.k8s.io/v1/namespaces/default/gateways?")
            && uri.contains("fieldSelector=metadata.name%3Deg"),
        "{uri}"
    );
    send.send_response(ok(&gateway_list()));

    // The Gateway watch and one list per referenced Secret, in whatever order they come.
    let mut listed = Vec::new();
    for _ in 0..4 {
        let (uri, send) = api.next().await;
        if uri.contains("/gateways?") {
            assert!(uri.contains("watch=true"), "{uri}");
            api.hold(send);
        } else if uri.starts_with("/api/v1/namespaces/default/secrets?")
            && uri.contains("fieldSelector=metadata.name%3Dsite-tls")
        {
            listed.push("default/site-tls");
            send.send_response(ok(&secret_list(
                "300",
                vec![secret("default", "site-tls", "290", &site)],
                None,
            )));
        } else if uri.starts_with("/api/v1/namespaces/certs/secrets?")
            && uri.contains("fieldSelector=metadata.name%3Dapi-tls")
        {
            listed.push("certs/api-tls");
            send.send_response(ok(&secret_list(
                "300",
                vec![secret("certs", "api-tls", "291", &apis)],
                None,
            )));
        } else if uri.starts_with("/api/v1/namespaces/certs/secrets?")
            && uri.contains("fieldSelector=metadata.name%3Dgone-tls")
        {
            listed.push("certs/gone-tls");
            send.send_response(ok(&secret_list("300", vec![], None)));
        } else {
            panic!("unexpected request {uri}");
        }
    }
    listed.sort();
    assert_eq!(
        listed,
        vec!["certs/api-tls", "certs/gone-tls", "default/site-tls"]
    );

    let snapshot = until(&store, "three Secrets", |s| s.secrets.len() == 3).await;
    let by_name: BTreeMap<String, (bool, Option<String>)> = snapshot
        .secrets
        .iter()
        .map(|s| {
            (
                format!("{}/{}", s.namespace, s.name),
                (s.valid(), s.leaf_serial().map(str::to_string)),
            )
        })
        .collect();
    assert_eq!(
        by_name["default/site-tls"],
        (true, Some(site.serial.clone()))
    );
    assert_eq!(by_name["certs/api-tls"], (true, Some(apis.serial.clone())));
    // A reference to a Secret that does not exist is an invalid Secret, not a silent gap.
    assert_eq!(by_name["certs/gone-tls"], (false, None));
    assert_eq!(
        snapshot.listeners[&("default".to_string(), "site-tls".to_string())],
        vec!["https".to_string(), "https-alt".to_string()]
    );

    // The metrics carry the listeners and the validity.
    let text = encode(&derive(
        &Snapshot::new(None, Some(snapshot), SystemTime::now()),
        DeriveOptions { host_metrics: true },
    ));
    assert!(text.contains(
        "envoy_gateway_exporter_secret_listener_info{secret_namespace=\"certs\",secret_name=\"api-tls\",listener=\"api\"} 1"
    ));
    assert!(text.contains(
        "envoy_gateway_exporter_secret_valid{secret_namespace=\"certs\",secret_name=\"gone-tls\"} 0"
    ));
    assert!(text.contains("envoy_gateway_exporter_up{source=\"secrets\"} 1"));
    task.abort();
}

/// kube and the rest of the tree must agree on one rustls crypto provider, or building a real
/// client panics at start-up (mock-based tests would not notice).
#[tokio::test]
async fn a_real_kube_client_can_be_built() {
    let config = kube::Config::new("https://127.0.0.1:6443".parse().unwrap());
    kube::Client::try_from(config).expect("a client with the rustls provider");
}

/// kube's watcher resumes a failed watch without listing again; the exporter instead starts over
/// with a list, so the source is proven healthy again without waiting for a Secret to change.
#[tokio::test]
async fn after_a_failed_watch_a_fresh_list_brings_the_source_back_up() {
    let (client, mut api) = ApiServer::new();
    let errors = errors_counter();
    let store = SecretStore::new(errors.clone());
    let task = tokio::spawn(watch_selected(
        client,
        vec!["apps".into()],
        None,
        store.clone(),
    ));
    let site = cert("site", 0x12);

    let (_, send) = api.next().await;
    send.send_response(ok(&secret_list(
        "10",
        vec![secret("apps", "site-tls", "9", &site)],
        None,
    )));
    until(&store, "the list", |s| s.up && s.secrets.len() == 1).await;

    let (uri, send) = api.next().await;
    assert!(uri.contains("watch=true"), "{uri}");
    send.send_response(status(
        StatusCode::INTERNAL_SERVER_ERROR,
        "InternalError",
        "etcdserver: leader changed",
    ));
    let http_status = errors.with_label_values(&["secrets", "http_status"]);
    let down = until(&store, "the failure", |_| http_status.get() == 1).await;
    assert!(!down.up);
    // What was read stays published while the source is down.
    assert_eq!(down.secrets.len(), 1);

    let (uri, send) = api.next().await;
    assert!(
        !uri.contains("watch=true"),
        "a list, not a resumed watch: {uri}"
    );
    send.send_response(ok(&secret_list(
        "12",
        vec![secret("apps", "site-tls", "9", &site)],
        None,
    )));
    until(&store, "recovery without any Secret changing", |s| s.up).await;
    task.abort();
}
