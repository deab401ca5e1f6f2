//! One collection: every source read once into a typed [`Snapshot`], shared by concurrent scrapes.

use std::sync::Arc;
use std::sync::Mutex as StdMutex;
use std::time::{Duration, Instant, SystemTime};

use futures::future::{BoxFuture, FutureExt, Shared};
use prometheus::IntCounterVec;

use crate::envoy::certs::{CertsSnapshot, parse_certs};
use crate::envoy::client::Endpoint;
use crate::envoy::client::FETCH_ERROR_REASONS;
use crate::envoy::clusters::{ClustersParser, ClustersSnapshot};
use crate::envoy::incremental::Buffered;
use crate::envoy::stats::{StatsParser, StatsSnapshot};
use crate::envoy::{AdminClient, FetchError};
use crate::secrets::{SecretStore, SecretsSnapshot};

/// A source of the exporter: the `source` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Stats = 0,
    Clusters = 1,
    Certs = 2,
}

impl Source {
    pub const ENVOY: [Source; 3] = [Source::Stats, Source::Clusters, Source::Certs];

    pub fn label(self) -> &'static str {
        match self {
            Source::Stats => "stats",
            Source::Clusters => "clusters",
            Source::Certs => "certs",
        }
    }
}

/// The outcome of reading one source.
#[derive(Debug)]
pub struct Sourced<T> {
    pub result: Result<T, FetchError>,
    pub duration: Duration,
}

impl<T> Sourced<T> {
    pub fn ok(&self) -> Option<&T> {
        self.result.as_ref().ok()
    }
}

/// What Envoy's admin API said in one collection.
#[derive(Debug)]
pub struct EnvoySnapshot {
    pub stats: Sourced<StatsSnapshot>,
    pub clusters: Sourced<ClustersSnapshot>,
    pub certs: Sourced<CertsSnapshot>,
}

impl EnvoySnapshot {
    /// `(source, succeeded, duration)` for each Envoy source.
    pub fn sources(&self) -> [(Source, bool, Duration); 3] {
        [
            (
                Source::Stats,
                self.stats.result.is_ok(),
                self.stats.duration,
            ),
            (
                Source::Clusters,
                self.clusters.result.is_ok(),
                self.clusters.duration,
            ),
            (
                Source::Certs,
                self.certs.result.is_ok(),
                self.certs.duration,
            ),
        ]
    }

    fn errors(&self) -> [(Source, Option<&FetchError>); 3] {
        [
            (Source::Stats, self.stats.result.as_ref().err()),
            (Source::Clusters, self.clusters.result.as_ref().err()),
            (Source::Certs, self.certs.result.as_ref().err()),
        ]
    }
}

/// Everything one collection read. `now` is the time certificate lifetimes are measured from.
#[derive(Debug)]
pub struct Snapshot {
    /// `None` when Envoy collection is disabled.
    pub envoy: Option<EnvoySnapshot>,
    /// `None` when no Secrets are watched.
    pub secrets: Option<SecretsSnapshot>,
    pub now: SystemTime,
    finished: Instant,
}

impl Snapshot {
    pub fn new(
        envoy: Option<EnvoySnapshot>,
        secrets: Option<SecretsSnapshot>,
        now: SystemTime,
    ) -> Snapshot {
        Snapshot {
            envoy,
            secrets,
            now,
            finished: Instant::now(),
        }
    }

    /// Whether every source read succeeded (the one-shot mode's exit status).
    pub fn all_sources_ok(&self) -> bool {
        self.envoy
            .as_ref()
            .is_none_or(|e| e.sources().iter().all(|(_, ok, _)| *ok))
            && self.secrets.as_ref().is_none_or(|s| s.up)
    }
}

/// Reads the sources on demand and shares each collection with the scrapes that arrive while it
/// runs or within `cache` after it ended (so N Prometheus replicas cost Envoy one fetch each).
/// A collection runs as a task of its own: a scrape that gives up (its client timed out) does not
/// cancel it, and the scrapes after it still share it instead of asking Envoy again.
pub struct Collector {
    inner: Arc<Inner>,
}

struct Inner {
    admin: Option<AdminClient>,
    secrets: Option<SecretStore>,
    cache: Duration,
    flights: StdMutex<Flights>,
    errors: IntCounterVec,
    /// Last known state per source, so a failure is logged once at warn, not on every scrape.
    was_up: StdMutex<[Option<bool>; 3]>,
}

/// The collection that ran last, and the one running now.
#[derive(Default)]
struct Flights {
    last: Option<Arc<Snapshot>>,
    running: Option<Shared<BoxFuture<'static, Option<Arc<Snapshot>>>>>,
}

impl Collector {
    /// `errors` is `source_errors_total{source,reason}`; its Envoy series are set to 0 here.
    pub fn new(
        admin: Option<AdminClient>,
        secrets: Option<SecretStore>,
        cache: Duration,
        errors: IntCounterVec,
    ) -> Collector {
        if admin.is_some() {
            for source in Source::ENVOY {
                for reason in FETCH_ERROR_REASONS {
                    errors.with_label_values(&[source.label(), reason]);
                }
            }
        }
        Collector {
            inner: Arc::new(Inner {
                admin,
                secrets,
                cache,
                flights: StdMutex::default(),
                errors,
                was_up: StdMutex::new([None; 3]),
            }),
        }
    }

    /// The store the Secret readers write into, when Secrets are watched.
    pub fn secret_store(&self) -> Option<&SecretStore> {
        self.inner.secrets.as_ref()
    }

    /// The latest collection: the cached one, the one running now, or a new one.
    pub async fn snapshot(&self) -> Arc<Snapshot> {
        let running = {
            let mut flights = self.inner.flights.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(last) = &flights.last
                && last.finished.elapsed() <= self.inner.cache
            {
                return last.clone();
            }
            match &flights.running {
                Some(running) => running.clone(),
                None => {
                    let inner = self.inner.clone();
                    let task = tokio::spawn(async move {
                        let snapshot = Arc::new(inner.collect().await);
                        let mut flights = inner.flights.lock().unwrap_or_else(|e| e.into_inner());
                        flights.last = Some(snapshot.clone());
                        flights.running = None;
                        snapshot
                    });
                    let running = task.map(Result::ok).boxed().shared();
                    flights.running = Some(running.clone());
                    running
                }
            }
        };
        match running.await {
            Some(snapshot) => snapshot,
            None => {
                // The collection task panicked (a bug): forget it and collect here.
                self.inner
                    .flights
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .running = None;
                Arc::new(self.inner.collect().await)
            }
        }
    }

    /// Reads every source once, concurrently, outside the sharing (the one-shot mode).
    pub async fn collect(&self) -> Snapshot {
        self.inner.collect().await
    }
}

impl Inner {
    async fn collect(&self) -> Snapshot {
        let envoy = match &self.admin {
            None => None,
            Some(admin) => {
                let (stats, clusters, certs) = tokio::join!(
                    timed(admin.fetch(Endpoint::Stats, StatsParser::default())),
                    timed(admin.fetch(Endpoint::Clusters, ClustersParser::default())),
                    timed(admin.fetch(Endpoint::Certs, Buffered::new(parse_certs))),
                );
                Some(EnvoySnapshot {
                    stats,
                    clusters,
                    certs,
                })
            }
        };
        let secrets = self.secrets.as_ref().map(SecretStore::snapshot);
        let snapshot = Snapshot::new(envoy, secrets, SystemTime::now());
        if let Some(envoy) = &snapshot.envoy {
            self.account(envoy);
        }
        snapshot
    }

    fn account(&self, envoy: &EnvoySnapshot) {
        let mut was_up = self.was_up.lock().unwrap_or_else(|e| e.into_inner());
        for (source, error) in envoy.errors() {
            let previous = was_up[source as usize].replace(error.is_none());
            match error {
                Some(e) => {
                    self.errors
                        .with_label_values(&[source.label(), e.reason()])
                        .inc();
                    if previous != Some(false) {
                        tracing::warn!(
                            source = source.label(),
                            reason = e.reason(),
                            "source failed: {e}"
                        );
                    } else {
                        tracing::debug!(
                            source = source.label(),
                            reason = e.reason(),
                            "source still failing: {e}"
                        );
                    }
                }
                None if previous == Some(false) => {
                    tracing::info!(source = source.label(), "source recovered");
                }
                None => {}
            }
        }
    }
}

async fn timed<T>(fetch: impl Future<Output = Result<T, FetchError>>) -> Sourced<T> {
    let started = Instant::now();
    let result = fetch.await;
    Sourced {
        result,
        duration: started.elapsed(),
    }
}
