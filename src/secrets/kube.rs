//! Kubernetes Secrets through kube's watcher (list + watch, with backoff and resumption).
//!
//! Secrets are decoded into [`TlsSecret`], which has fields for `tls.crt` and `ca.crt` only:
//! `tls.key` is skipped by the JSON decoder and never becomes a value in this process.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use gateway_api::gateways::Gateway;
use k8s_openapi::ByteString;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource};
use serde::Deserialize;
use tokio::task::JoinHandle;

use super::{SecretCerts, SecretKey, SecretStore, log_problems};

/// A Secret as far as the exporter reads it.
#[derive(Debug, Clone, Deserialize)]
pub struct TlsSecret {
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

/// Applies one watcher stream of Secrets to the store under `reader`, forever. The caller has
/// registered `reader` with [`SecretStore::begin`].
async fn follow_secrets(
    reader: String,
    what: String,
    stream: impl Stream<Item = Result<Event<TlsSecret>, watcher::Error>>,
    store: SecretStore,
    expected: Option<SecretKey>,
) {
    futures::pin_mut!(stream);
    let mut listing: Option<(Instant, Vec<SecretCerts>)> = None;
    let mut known: BTreeMap<SecretKey, SecretCerts> = BTreeMap::new();
    while let Some(event) = stream.next().await {
        match event {
            Ok(Event::Init) => listing = Some((Instant::now(), Vec::new())),
            Ok(Event::InitApply(secret)) => {
                if let Some((_, buffer)) = listing.as_mut() {
                    buffer.push(secret.summarise());
                }
            }
            Ok(Event::InitDone) => {
                let (started, mut secrets) = listing.take().unwrap_or((Instant::now(), Vec::new()));
                if let Some((namespace, name)) = &expected
                    && secrets.is_empty()
                {
                    secrets.push(SecretCerts::missing(namespace, name));
                }
                let recovered = store.is_failing(&reader);
                for s in &secrets {
                    let key = (s.namespace.clone(), s.name.clone());
                    log_problems(known.get(&key), s);
                }
                known = secrets
                    .iter()
                    .map(|s| ((s.namespace.clone(), s.name.clone()), s.clone()))
                    .collect();
                store.replace(&reader, secrets, started.elapsed());
                if recovered {
                    tracing::info!("watching {what} works again");
                }
            }
            Ok(Event::Apply(secret)) => {
                let summary = secret.summarise();
                let key = secret.key();
                log_problems(known.get(&key), &summary);
                known.insert(key, summary.clone());
                store.upsert(&reader, summary);
            }
            Ok(Event::Delete(secret)) => {
                let key = secret.key();
                known.remove(&key);
                match &expected {
                    Some((namespace, name)) => {
                        store.upsert(&reader, SecretCerts::missing(namespace, name))
                    }
                    None => store.remove(&reader, &key),
                }
            }
            Err(error) => {
                let (reason, line) = classify(&error, &what);
                if !store.is_failing(&reader) {
                    tracing::warn!(reason, "{line}");
                } else {
                    tracing::debug!(reason, "{line}");
                }
                store.fail(&reader, reason);
            }
        }
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
        let stream = watcher::watcher(api, config.clone()).default_backoff();
        store.begin(&reader);
        follow_secrets(reader, what, stream, store.clone(), None)
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
/// (cross-namespace ones included). Runs forever.
pub async fn watch_gateway(client: Client, name: String, namespace: String, store: SecretStore) {
    let api = Api::<Gateway>::namespaced(client.clone(), &namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let stream = watcher::watcher(api, config).default_backoff();
    futures::pin_mut!(stream);
    store.begin("gateway");
    store.forget(CLIENT_READER);
    let what = format!("Gateway {namespace}/{name}");
    let mut watches: BTreeMap<SecretKey, JoinHandle<()>> = BTreeMap::new();
    let mut initial: Option<Instant> = None;
    let mut seen_in_list = false;
    let mut current: BTreeMap<SecretKey, Vec<String>> = BTreeMap::new();
    while let Some(event) = stream.next().await {
        let refs = match event {
            Ok(Event::Init) => {
                initial = Some(Instant::now());
                seen_in_list = false;
                continue;
            }
            Ok(Event::InitApply(gateway)) => {
                seen_in_list = true;
                certificate_refs(&gateway)
            }
            Ok(Event::InitDone) => {
                store.replace(
                    "gateway",
                    Vec::new(),
                    initial.take().map(|s| s.elapsed()).unwrap_or_default(),
                );
                if seen_in_list {
                    continue;
                }
                tracing::warn!("{what} not found; no Secrets to watch until it exists");
                BTreeMap::new()
            }
            Ok(Event::Apply(gateway)) => certificate_refs(&gateway),
            Ok(Event::Delete(_)) => BTreeMap::new(),
            Err(error) => {
                let (reason, line) = classify(&error, &what);
                if !store.is_failing("gateway") {
                    tracing::warn!(reason, "{line}");
                }
                store.fail("gateway", reason);
                continue;
            }
        };
        let wanted: BTreeSet<&SecretKey> = refs.keys().collect();
        watches.retain(|key, task| {
            let keep = wanted.contains(key);
            if !keep {
                task.abort();
                store.forget(&reader_for(key));
            }
            keep
        });
        for key in refs.keys() {
            if watches.contains_key(key) {
                continue;
            }
            let (secret_namespace, secret_name) = key.clone();
            let api = Api::<TlsSecret>::namespaced(client.clone(), &secret_namespace);
            let config = secret_watch_config().fields(&format!("metadata.name={secret_name}"));
            let stream = watcher::watcher(api, config).default_backoff();
            store.begin(&reader_for(key));
            let task = tokio::spawn(follow_secrets(
                reader_for(key),
                format!("Secret {secret_namespace}/{secret_name}"),
                stream,
                store.clone(),
                Some(key.clone()),
            ));
            watches.insert(key.clone(), task);
        }
        if refs != current {
            let names: Vec<String> = refs.keys().map(|(ns, n)| format!("{ns}/{n}")).collect();
            tracing::info!(
                "{what} references {} Secret(s): {}",
                refs.len(),
                names.join(", ")
            );
            store.set_listeners(refs.clone());
            current = refs;
        }
    }
}

fn reader_for((namespace, name): &SecretKey) -> String {
    format!("secret:{namespace}/{name}")
}

/// The reader name under which building the client is tracked.
pub const CLIENT_READER: &str = "client";

/// How long to wait before re-creating a client after a failure to build one.
pub const CLIENT_RETRY: Duration = Duration::from_secs(10);
