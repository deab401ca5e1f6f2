//! Secret volume mounts, polled once a second.
//!
//! The kubelet writes a new timestamped directory and then swaps the `..data` symlink in one
//! rename, so reading through the resolved `..data` target and checking it did not move meanwhile
//! never mixes two versions. A mount without `..data` (a plain directory) is reported once its
//! content read the same on two polls in a row, so a file caught mid-write is not reported.

use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{CERT_KEYS, SecretCerts, SecretStore, log_problems};
use crate::config::SecretDir;

/// How often mounts are checked; a rotation shows within about this long.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// The reader name of the mounts in the [`SecretStore`].
pub const READER: &str = "files";

/// One read of a mount: which version it was and the certificate files' bytes. Short-lived:
/// summarised or dropped within the poll.
struct MountRead {
    /// The `..data` target, or `None` for a plain directory.
    version: Option<PathBuf>,
    files: Vec<(&'static str, Vec<u8>)>,
}

/// Reads `tls.crt` and `ca.crt` of a mount, consistently. `tls.key` is never opened.
fn read_mount(dir: &Path) -> io::Result<MountRead> {
    let metadata = std::fs::metadata(dir)?;
    if !metadata.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a directory",
        ));
    }
    for _ in 0..3 {
        let version = match std::fs::read_link(dir.join("..data")) {
            Ok(target) => Some(target),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) if e.kind() == io::ErrorKind::InvalidInput => None, // `..data` not a symlink
            Err(e) => return Err(e),
        };
        let base = match &version {
            Some(target) => dir.join(target),
            None => dir.to_path_buf(),
        };
        let mut files = Vec::new();
        for key in CERT_KEYS {
            match std::fs::read(base.join(key)) {
                Ok(bytes) => files.push((key, bytes)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        let still = std::fs::read_link(dir.join("..data")).ok();
        if version.is_none() || still == version {
            return Ok(MountRead { version, files });
        }
        // `..data` moved while we read: read the new version.
    }
    Err(io::Error::other("..data kept changing while being read"))
}

impl MountRead {
    /// What identifies this version of the mount, without keeping its bytes: a `tls.crt` may
    /// hold a private key by mistake, and nothing of it may outlive the parse.
    fn fingerprint(&self) -> Fingerprint {
        let files = self
            .files
            .iter()
            .map(|(key, bytes)| {
                let mut hasher = DefaultHasher::new();
                bytes.hash(&mut hasher);
                (*key, bytes.len(), hasher.finish())
            })
            .collect();
        Fingerprint {
            version: self.version.clone(),
            files,
        }
    }

    fn summarise(&self, dir: &SecretDir) -> SecretCerts {
        SecretCerts::from_data(
            &dir.namespace,
            &dir.name,
            self.files.iter().map(|(k, v)| (*k, v.as_slice())),
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Fingerprint {
    version: Option<PathBuf>,
    /// Per file: key, length, hash of the bytes.
    files: Vec<(&'static str, usize, u64)>,
}

/// Per mount: the version reported and, for plain directories, a newer one not yet confirmed.
#[derive(Default)]
struct MountState {
    reported: Option<Fingerprint>,
    candidate: Option<Fingerprint>,
    summary: Option<SecretCerts>,
    error: Option<String>,
}

/// Polls the mounts forever, publishing into `store` (the caller registered [`READER`]).
pub async fn watch(dirs: Vec<SecretDir>, store: SecretStore) {
    let mut states: BTreeMap<PathBuf, MountState> = BTreeMap::new();
    let mut interval = tokio::time::interval(POLL_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let dirs = dirs.clone();
        let mut taken = std::mem::take(&mut states);
        // File reads block; keep them off the runtime's worker threads.
        let outcome = tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let failed = poll_once(&dirs, &mut taken);
            (taken, failed, started.elapsed())
        })
        .await;
        let Ok((polled, failed, took)) = outcome else {
            continue;
        };
        states = polled;
        let secrets: Vec<SecretCerts> = states.values().filter_map(|s| s.summary.clone()).collect();
        store.replace(READER, secrets, took, failed.then_some("io"));
    }
}

/// One poll of every mount; returns whether any mount could not be read.
fn poll_once(dirs: &[SecretDir], states: &mut BTreeMap<PathBuf, MountState>) -> bool {
    let mut failed = false;
    for dir in dirs {
        let state = states.entry(dir.path.clone()).or_default();
        match read_mount(&dir.path) {
            Err(e) => {
                failed = true;
                let message = e.to_string();
                if state.error.as_deref() != Some(message.as_str()) {
                    tracing::warn!(path = %dir.path.display(), "cannot read secret mount: {message}");
                }
                state.error = Some(message);
            }
            Ok(read) => {
                if state.error.take().is_some() {
                    tracing::info!(path = %dir.path.display(), "secret mount readable again");
                }
                let fingerprint = read.fingerprint();
                if state.reported.as_ref() == Some(&fingerprint) {
                    state.candidate = None;
                    continue;
                }
                // The first read, and kubelet-style swaps, are reported at once; a change in a
                // plain directory waits for a second identical read.
                let confirmed = state.reported.is_none()
                    || fingerprint.version.is_some()
                    || state.candidate.as_ref() == Some(&fingerprint);
                if !confirmed {
                    state.candidate = Some(fingerprint);
                    continue;
                }
                let summary = read.summarise(dir);
                log_problems(
                    state.summary.as_ref().map(|s| s.problems.as_slice()),
                    &summary,
                );
                state.summary = Some(summary);
                state.reported = Some(fingerprint);
                state.candidate = None;
            }
        }
    }
    failed
}
