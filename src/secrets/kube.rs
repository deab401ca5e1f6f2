//! Kubernetes Secrets through kube's watcher (list + watch, with backoff and resumption).
//!
//! Secrets are decoded into [`TlsSecret`], which has fields for `tls.crt` and `ca.crt` only:
//! `tls.key` is skipped by the JSON decoder and never becomes a value in this process.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use gateway_api::gateways::Gateway;
use k8s_openapi::ByteString;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource};
use serde::Deserialize;
use tokio::task::JoinHandle;

use super::{SecretCerts, SecretKey, SecretStore, log_problems};

/// A Secret as far as the exporter reads it.
#[derive(Debug, Clone, Deserialize)]
pub struct TlsSecret {
    #[serde(deserialize_with = "identity_only")]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub data: TlsData,
}

/// The certificate keys of a Secret's `data`; every other key (`tls.key`) is ignored unread.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct TlsData {
    #[serde(rename = "tls.crt")]
    pub tls_crt: Option<ByteString>,
    #[serde(rename = "ca.crt")]
    pub ca_crt: Option<ByteString>,
}

/// Decodes only the identity fields of a Secret's metadata. Annotations are skipped unread: a
/// Secret created with `kubectl apply` carries its whole manifest, private key included, in
/// `kubectl.kubernetes.io/last-applied-configuration`.
fn identity_only<'de, D: serde::Deserializer<'de>>(decoder: D) -> Result<ObjectMeta, D::Error> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Identity {
        name: Option<String>,
        namespace: Option<String>,
        resource_version: Option<String>,
        uid: Option<String>,
    }
    let identity = Identity::deserialize(decoder)?;
    Ok(ObjectMeta {
        name: identity.name,
        namespace: identity.namespace,
        resource_version: identity.resource_version,
        uid: identity.uid,
        ..ObjectMeta::default()
    })
}

impl Resource for TlsSecret {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        "Secret".into()
    }
    fn group(_: &()) -> Cow<'_, str> {
        "".into()
    }
    fn version(_: &()) -> Cow<'_, str> {
        "v1".into()
    }
    fn plural(_: &()) -> Cow<'_, str> {
        "secrets".into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

impl TlsSecret {
    fn key(&self) -> SecretKey {
        (
            self.metadata.namespace.clone().unwrap_or_default(),
            self.metadata.name.clone().unwrap_or_default(),
        )
    }

    fn summarise(&self) -> SecretCerts {
        let (namespace, name) = self.key();
        let data = [
            ("tls.crt", &self.data.tls_crt),
            ("ca.crt", &self.data.ca_crt),
        ];
        SecretCerts::from_data(
            &namespace,
            &name,
            data.into_iter()
                .filter_map(|(k, v)| v.as_ref().map(|b| (k, b.0.as_slice()))),
        )
    }
}

/// The `reason` label and an operator-facing line for a watcher error.
pub fn classify(error: &watcher::Error, what: &str) -> (&'static str, String) {
    let client_error = match error {
        watcher::Error::InitialListFailed(e)
        | watcher::Error::WatchStartFailed(e)
        | watcher::Error::WatchFailed(e) => Some(e),
        _ => None,
    };
    let status = match (error, client_error) {
        (watcher::Error::WatchError(status), _) => Some(status.as_ref()),
        (_, Some(kube::Error::Api(status))) => Some(status.as_ref()),
        _ => None,
    };
    if let Some(status) = status {
        return match status.code {
            401 | 403 => (
                "forbidden",
                format!(
                    "the API server refused to list/watch {what}: {}; the exporter's ServiceAccount needs get, list and watch on them (see deploy/rbac)",
                    status.message
                ),
            ),
            code => (
                "http_status",
                format!(
                    "the API server answered {code} for {what}: {}",
                    status.message
                ),
            ),
        };
    }
    match client_error {
        Some(kube::Error::HyperError(e)) if e.is_timeout() => {
            ("timeout", format!("watching {what} timed out: {e}"))
        }
        Some(kube::Error::HyperError(_)) | Some(kube::Error::Service(_)) => (
            "connect",
            format!("cannot reach the API server for {what}: {error}"),
        ),
        _ => ("io", format!("watching {what} failed: {error}")),
    }
}

/// Restart delays after a failed watch: doubling from 1 s to 60 s, back to 1 s after a list.
struct Backoff(Duration);

impl Backoff {
    const FIRST: Duration = Duration::from_secs(1);
    const MAX: Duration = Duration::from_secs(60);

    fn new() -> Backoff {
        Backoff(Backoff::FIRST)
    }

    async fn wait(&mut self) {
        tokio::time::sleep(self.0).await;
        self.0 = (self.0 * 2).min(Backoff::MAX);
    }

    fn reset(&mut self) {
        self.0 = Backoff::FIRST;
    }
}

/// Logs a failed watch once (again at debug while it keeps failing) and records it.
fn report_failure(store: &SecretStore, reader: &str, what: &str, error: &watcher::Error) {
    let (reason, line) = classify(error, what);
    if !store.is_failing(reader) {
        tracing::warn!(reason, "{line}");
    } else {
        tracing::debug!(reason, "{line}");
    }
    store.fail(reader, reason);
}

/// Applies a watcher of Secrets to the store under `reader`, forever. After an error the watcher
/// is dropped and a new one started after a backoff: its fresh list is what proves the source
/// healthy again (kube's own retry resumes the watch without a list, so nothing would say so
/// until a Secret changed). A watch that merely ends is resumed by the watcher itself. The caller
/// has registered `reader` with [`SecretStore::begin`].
async fn follow_secrets<S>(
    reader: String,
    what: String,
    new_stream: impl Fn() -> S,
    store: SecretStore,
    expected: Option<SecretKey>,
) where
    S: Stream<Item = Result<Event<TlsSecret>, watcher::Error>>,
{
    // Problems last logged per Secret, so each is logged when it appears or changes.
    let mut logged: BTreeMap<SecretKey, Vec<String>> = BTreeMap::new();
    let mut log = |s: &SecretCerts| {
        let key = (s.namespace.clone(), s.name.clone());
        log_problems(logged.get(&key).map(Vec::as_slice), s);
        logged.insert(key, s.problems.clone());
    };
    let mut backoff = Backoff::new();
    loop {
        let stream = new_stream();
        futures::pin_mut!(stream);
        let mut listing: Option<(Instant, Vec<SecretCerts>)> = None;
        while let Some(event) = stream.next().await {
            match event {
                Ok(Event::Init) => listing = Some((Instant::now(), Vec::new())),
                Ok(Event::InitApply(secret)) => {
                    if let Some((_, buffer)) = listing.as_mut() {
                        buffer.push(secret.summarise());
                    }
                }
                Ok(Event::InitDone) => {
                    let (started, mut secrets) =
                        listing.take().unwrap_or((Instant::now(), Vec::new()));
                    if let Some((namespace, name)) = &expected
                        && secrets.is_empty()
                    {
                        secrets.push(SecretCerts::missing(namespace, name));
                    }
                    secrets.iter().for_each(&mut log);
                    let recovered = store.is_failing(&reader);
                    store.replace(&reader, secrets, started.elapsed(), None);
                    if recovered {
                        tracing::info!("watching {what} works again");
                    }
                    backoff.reset();
                }
                Ok(Event::Apply(secret)) => {
                    let summary = secret.summarise();
                    log(&summary);
                    store.upsert(&reader, summary);
                }
                Ok(Event::Delete(secret)) => match &expected {
                    Some((namespace, name)) => {
                        store.upsert(&reader, SecretCerts::missing(namespace, name))
                    }
                    None => store.remove(&reader, &secret.key()),
                },
                Err(error) => {
                    report_failure(&store, &reader, &what, &error);
                    break;
                }
            }
        }
        backoff.wait().await;
    }
}

fn secret_watch_config() -> watcher::Config {
    // Paginated initial lists keep the API server's and our memory flat in large namespaces.
    watcher::Config::default().page_size(500)
}

/// Selector mode: every `kubernetes.io/tls` Secret matching the label selector in the namespaces
/// (all namespaces when empty). Runs forever.
pub async fn watch_selected(
    client: Client,
    namespaces: Vec<String>,
    label_selector: Option<String>,
    store: SecretStore,
) {
    let mut config = secret_watch_config().fields("type=kubernetes.io/tls");
    if let Some(selector) = &label_selector {
        config = config.labels(selector);
    }
    let scopes: Vec<Option<String>> = if namespaces.is_empty() {
        vec![None]
    } else {
        namespaces.into_iter().map(Some).collect()
    };
    let watches = scopes.into_iter().map(|namespace| {
        let (api, reader, what) = match &namespace {
            Some(ns) => (
                Api::<TlsSecret>::namespaced(client.clone(), ns),
                format!("selector:{ns}"),
                format!("secrets in namespace {ns}"),
            ),
            None => (
                Api::<TlsSecret>::all(client.clone()),
                "selector:*".to_string(),
                "secrets in all namespaces".to_string(),
            ),
        };
        let config = config.clone();
        store.begin(&reader);
        follow_secrets(
            reader,
            what,
            move || watcher::watcher(api.clone(), config.clone()),
            store.clone(),
            None,
        )
    });
    let watches: Vec<_> = watches.collect();
    store.forget(CLIENT_READER);
    futures::future::join_all(watches).await;
}

/// The Secrets a Gateway's listeners reference, with the listeners that reference each.
pub fn certificate_refs(gateway: &Gateway) -> BTreeMap<SecretKey, Vec<String>> {
    let gateway_namespace = gateway.metadata.namespace.clone().unwrap_or_default();
    let mut refs: BTreeMap<SecretKey, Vec<String>> = BTreeMap::new();
    for listener in &gateway.spec.listeners {
        let Some(tls) = &listener.tls else { continue };
        for cert_ref in tls.certificate_refs.iter().flatten() {
            let group = cert_ref.group.as_deref().unwrap_or("");
            let kind = cert_ref.kind.as_deref().unwrap_or("Secret");
            if !group.is_empty() || kind != "Secret" {
                continue;
            }
            let namespace = cert_ref
                .namespace
                .clone()
                .unwrap_or_else(|| gateway_namespace.clone());
            let listeners = refs.entry((namespace, cert_ref.name.clone())).or_default();
            if !listeners.contains(&listener.name) {
                listeners.push(listener.name.clone());
            }
        }
    }
    refs
}

/// Gateway mode: follows the Gateway and watches exactly the Secrets its listeners reference
/// (cross-namespace ones included), re-planned when the Gateway changes. Runs forever.
pub async fn watch_gateway(client: Client, name: String, namespace: String, store: SecretStore) {
    let api = Api::<Gateway>::namespaced(client.clone(), &namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    store.begin(GATEWAY_READER);
    store.forget(CLIENT_READER);
    let what = format!("Gateway {namespace}/{name}");
    let mut watches: BTreeMap<SecretKey, JoinHandle<()>> = BTreeMap::new();
    let mut current: BTreeMap<SecretKey, Vec<String>> = BTreeMap::new();
    let mut backoff = Backoff::new();
    loop {
        // As for Secrets: after an error, a new watcher whose list proves recovery.
        let stream = watcher::watcher(api.clone(), config.clone());
        futures::pin_mut!(stream);
        let mut listed: Option<(Instant, bool)> = None;
        while let Some(event) = stream.next().await {
            let refs = match event {
                Ok(Event::Init) => {
                    listed = Some((Instant::now(), false));
                    continue;
                }
                Ok(Event::InitApply(gateway)) => {
                    if let Some((_, seen)) = listed.as_mut() {
                        *seen = true;
                    }
                    certificate_refs(&gateway)
                }
                Ok(Event::InitDone) => {
                    let (started, seen) = listed.take().unwrap_or((Instant::now(), false));
                    store.replace(GATEWAY_READER, Vec::new(), started.elapsed(), None);
                    backoff.reset();
                    if seen {
                        continue;
                    }
                    tracing::warn!("{what} not found; no Secrets to watch until it exists");
                    BTreeMap::new()
                }
                Ok(Event::Apply(gateway)) => certificate_refs(&gateway),
                Ok(Event::Delete(_)) => BTreeMap::new(),
                Err(error) => {
                    report_failure(&store, GATEWAY_READER, &what, &error);
                    break;
                }
            };
            if refs == current {
                continue;
            }
            let stale: Vec<SecretKey> = watches
                .keys()
                .filter(|k| !refs.contains_key(*k))
                .cloned()
                .collect();
            for key in stale {
                if let Some(task) = watches.remove(&key) {
                    task.abort();
                    // Only once it has stopped can it no longer write what we forget.
                    let _ = task.await;
                }
                store.forget(&reader_for(&key));
            }
            let new: Vec<SecretKey> = refs
                .keys()
                .filter(|k| !watches.contains_key(*k))
                .cloned()
                .collect();
            for key in &new {
                let (secret_namespace, secret_name) = key.clone();
                let api = Api::<TlsSecret>::namespaced(client.clone(), &secret_namespace);
                let config = secret_watch_config().fields(&format!("metadata.name={secret_name}"));
                store.begin(&reader_for(key));
                let task = tokio::spawn(follow_secrets(
                    reader_for(key),
                    format!("Secret {secret_namespace}/{secret_name}"),
                    move || watcher::watcher(api.clone(), config.clone()),
                    store.clone(),
                    Some(key.clone()),
                ));
                watches.insert(key.clone(), task);
            }
            let names: Vec<String> = refs.keys().map(|(ns, n)| format!("{ns}/{n}")).collect();
            tracing::info!(
                "{what} references {} Secret(s): {}",
                refs.len(),
                names.join(", ")
            );
            store.set_listeners(refs.clone());
            current = refs;
        }
        backoff.wait().await;
    }
}

/// The reader name of the Gateway watch.
const GATEWAY_READER: &str = "gateway";

fn reader_for((namespace, name): &SecretKey) -> String {
    format!("secret:{namespace}/{name}")
}

/// The reader name under which building the client is tracked.
pub const CLIENT_READER: &str = "client";

/// How long to wait before re-creating a client after a failure to build one.
pub const CLIENT_RETRY: Duration = Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_is_decoded_without_its_key_even_from_annotations() {
        let json = r#"{
            "metadata": {"name": "site", "namespace": "apps", "resourceVersion": "7", "uid": "u",
                "annotations": {"kubectl.kubernetes.io/last-applied-configuration":
                    "{\"data\":{\"tls.key\":\"S0VZLUJZVEVTLUhFUkU=\"}}"},
                "managedFields": [{"manager": "kubectl"}]},
            "data": {"tls.crt": "Q0VSVA==", "tls.key": "S0VZLUJZVEVTLUhFUkU="},
            "type": "kubernetes.io/tls"
        }"#;
        let secret: TlsSecret = serde_json::from_str(json).unwrap();
        assert_eq!(secret.key(), ("apps".to_string(), "site".to_string()));
        assert_eq!(secret.metadata.resource_version.as_deref(), Some("7"));
        assert!(secret.metadata.annotations.is_none());
        assert_eq!(
            secret.data.tls_crt.as_ref().map(|b| b.0.as_slice()),
            Some(b"CERT".as_slice())
        );
        assert!(!format!("{secret:?}").contains("S0VZ"));
    }
}
