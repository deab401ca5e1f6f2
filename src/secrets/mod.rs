//! TLS Secrets: watched in the background (secret volume mounts, the Kubernetes API) and kept as
//! certificate summaries in a [`SecretStore`] that each collection reads. Private keys are never
//! read from files, never decoded from the API, never kept.

pub mod files;
pub mod kube;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use prometheus::IntCounterVec;

use envoy_gateway_exporter_parsers::x509::{CertSummary, parse_chain};

/// The keys of a TLS Secret that hold certificates, in the order they are reported.
pub const CERT_KEYS: [&str; 2] = ["tls.crt", "ca.crt"];

/// Reasons a secret source can fail to read (`source_errors_total{source="secrets"}`).
pub const SECRET_ERROR_REASONS: [&str; 5] =
    ["connect", "timeout", "http_status", "forbidden", "io"];

/// What the exporter keeps of one Secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretCerts {
    pub namespace: String,
    pub name: String,
    /// Certificates per key (`tls.crt`, then `ca.crt` when present).
    pub keys: Vec<(String, Vec<CertSummary>)>,
    /// Why some of the data could not be read (never containing the data itself).
    pub problems: Vec<String>,
}

impl SecretCerts {
    /// Summarises the certificate keys of a Secret; `data` yields `(key, bytes)`.
    pub fn from_data<'a>(
        namespace: &str,
        name: &str,
        data: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    ) -> SecretCerts {
        let mut keys = Vec::new();
        let mut problems = Vec::new();
        let mut found_tls_crt = false;
        for (key, bytes) in data {
            found_tls_crt |= key == "tls.crt";
            let chain = parse_chain(bytes);
            problems.extend(chain.problems.into_iter().map(|p| format!("{key}: {p}")));
            keys.push((key.to_string(), chain.certs));
        }
        if !found_tls_crt {
            problems.push("tls.crt: missing".to_string());
        }
        keys.sort_by_key(|(k, _)| {
            CERT_KEYS
                .iter()
                .position(|c| c == k)
                .unwrap_or(CERT_KEYS.len())
        });
        SecretCerts {
            namespace: namespace.to_string(),
            name: name.to_string(),
            keys,
            problems,
        }
    }

    /// A Secret that a Gateway references but that does not exist.
    pub fn missing(namespace: &str, name: &str) -> SecretCerts {
        SecretCerts {
            namespace: namespace.to_string(),
            name: name.to_string(),
            keys: Vec::new(),
            problems: vec!["Secret not found".to_string()],
        }
    }

    /// At least one parseable certificate.
    pub fn valid(&self) -> bool {
        self.keys.iter().any(|(_, certs)| !certs.is_empty())
    }

    /// The serial of the served certificate: the first certificate of `tls.crt`.
    pub fn leaf_serial(&self) -> Option<&str> {
        self.keys
            .iter()
            .find(|(k, _)| k == "tls.crt")
            .and_then(|(_, certs)| certs.iter().find(|c| c.index == 0))
            .map(|c| c.serial.as_str())
    }
}

/// A Secret's identity: namespace and name.
pub type SecretKey = (String, String);

/// What a collection sees of the secret sources.
#[derive(Debug, Clone, Default)]
pub struct SecretsSnapshot {
    pub secrets: Vec<Arc<SecretCerts>>,
    /// Gateway mode: the listeners that reference each Secret.
    pub listeners: BTreeMap<SecretKey, Vec<String>>,
    /// Every reader read its last round without error.
    pub up: bool,
    /// How long the last full read (a directory poll, an initial list) took.
    pub duration: Duration,
}

#[derive(Default)]
struct State {
    /// Per reader (a mount, a watch), the Secrets it read.
    by_reader: BTreeMap<String, BTreeMap<SecretKey, Arc<SecretCerts>>>,
    listeners: BTreeMap<SecretKey, Vec<String>>,
    /// Per reader, the reason of its last failure, if it is failing.
    failing: BTreeMap<String, &'static str>,
    /// Per reader, how long its last full read took.
    durations: BTreeMap<String, Duration>,
    /// Readers started that have neither read nor failed yet.
    pending: BTreeSet<String>,
}

/// Shared between the background readers (writers) and collections (readers).
#[derive(Clone)]
pub struct SecretStore {
    state: Arc<RwLock<State>>,
    errors: IntCounterVec,
}

impl SecretStore {
    /// `errors` is `source_errors_total`; its `secrets` series start at 0 here.
    pub fn new(errors: IntCounterVec) -> SecretStore {
        for reason in SECRET_ERROR_REASONS {
            errors.with_label_values(&["secrets", reason]);
        }
        SecretStore {
            state: Arc::default(),
            errors,
        }
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    pub fn snapshot(&self) -> SecretsSnapshot {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        let mut secrets: BTreeMap<&SecretKey, &Arc<SecretCerts>> = BTreeMap::new();
        for read in state.by_reader.values() {
            secrets.extend(read.iter());
        }
        SecretsSnapshot {
            secrets: secrets.into_values().cloned().collect(),
            listeners: state.listeners.clone(),
            // A reader that has not read yet has nothing to vouch for: not up.
            up: state.failing.is_empty() && state.pending.is_empty(),
            duration: state.durations.values().max().copied().unwrap_or_default(),
        }
    }

    /// Registers a reader that is starting, so the first round can be awaited.
    pub fn begin(&self, reader: &str) {
        self.write().pending.insert(reader.to_string());
    }

    /// Every reader started has read or failed at least once.
    pub fn first_round_done(&self) -> bool {
        self.state
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .pending
            .is_empty()
    }

    /// Replaces everything `reader` knows with `secrets` (a full read) and records how the read
    /// went, in one step so that no collection sees the one without the other.
    pub fn replace(
        &self,
        reader: &str,
        secrets: Vec<SecretCerts>,
        took: Duration,
        failure: Option<&'static str>,
    ) {
        let map = secrets
            .into_iter()
            .map(|s| ((s.namespace.clone(), s.name.clone()), Arc::new(s)))
            .collect();
        if let Some(reason) = failure {
            self.errors.with_label_values(&["secrets", reason]).inc();
        }
        let mut state = self.write();
        state.by_reader.insert(reader.to_string(), map);
        match failure {
            Some(reason) => state.failing.insert(reader.to_string(), reason),
            None => state.failing.remove(reader),
        };
        state.pending.remove(reader);
        state.durations.insert(reader.to_string(), took);
    }

    /// One Secret added or changed.
    pub fn upsert(&self, reader: &str, secret: SecretCerts) {
        let mut state = self.write();
        let key = (secret.namespace.clone(), secret.name.clone());
        state
            .by_reader
            .entry(reader.to_string())
            .or_default()
            .insert(key, Arc::new(secret));
        state.failing.remove(reader);
    }

    /// One Secret deleted.
    pub fn remove(&self, reader: &str, key: &SecretKey) {
        let mut state = self.write();
        if let Some(read) = state.by_reader.get_mut(reader) {
            read.remove(key);
        }
    }

    /// Forgets a reader that is no longer wanted (a Secret the Gateway stopped referencing).
    pub fn forget(&self, reader: &str) {
        let mut state = self.write();
        state.by_reader.remove(reader);
        state.failing.remove(reader);
        state.pending.remove(reader);
        state.durations.remove(reader);
    }

    pub fn set_listeners(&self, listeners: BTreeMap<SecretKey, Vec<String>>) {
        self.write().listeners = listeners;
    }

    /// Records a failed read: `up` goes to 0 until the reader succeeds again, and the reason is
    /// counted. What the reader read before stays (a stale certificate beats none); `up` says
    /// it may be stale.
    pub fn fail(&self, reader: &str, reason: &'static str) {
        self.errors.with_label_values(&["secrets", reason]).inc();
        let mut state = self.write();
        state.failing.insert(reader.to_string(), reason);
        state.pending.remove(reader);
    }

    /// Whether `reader` is currently failing (to log transitions once).
    pub fn is_failing(&self, reader: &str) -> bool {
        self.state
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .failing
            .contains_key(reader)
    }
}

/// Logs a Secret's validity when it is first seen invalid or changes, not on every read.
pub(crate) fn log_problems(previous: Option<&[String]>, current: &SecretCerts) {
    let changed = previous.is_none_or(|p| p != current.problems.as_slice());
    if changed && !current.problems.is_empty() {
        let level_valid = current.valid();
        let what = current.problems.join("; ");
        if level_valid {
            tracing::warn!(namespace = %current.namespace, name = %current.name, "Secret partly unreadable: {what}");
        } else {
            tracing::warn!(namespace = %current.namespace, name = %current.name, "Secret has no usable certificate: {what}");
        }
    }
}
