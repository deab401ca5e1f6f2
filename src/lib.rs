//! envoy-gateway-exporter: reads an Envoy proxy's admin API and publishes what Envoy's own
//! metrics do not say: backend health and its reasons, circuit-breaker headroom, certificate
//! expiry.
//!
//! Data flows one way: sources ([`envoy`]) -> typed [`collect::Snapshot`] -> [`metrics`] ->
//! [`server`].

pub mod collect;
pub mod config;
pub mod envoy;
pub mod metrics;
pub mod secrets;
pub mod server;
pub mod telemetry;

use std::sync::Arc;

use collect::Collector;
use config::{Config, SecretSource};
use envoy::AdminClient;
use metrics::{DeriveOptions, ExporterMetrics};
use secrets::SecretStore;
use server::App;

/// Version and the git revision it was built from (`unknown` outside a checkout).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub const REVISION: &str = env!("EXPORTER_REVISION");

/// Builds the application state from validated settings. Secret watchers are started with
/// [`spawn_secret_watchers`].
pub fn build_app(config: &Config) -> Result<Arc<App>, String> {
    let metrics = ExporterMetrics::new(VERSION, REVISION);
    let admin = config
        .envoy_admin_url
        .as_deref()
        .map(|url| AdminClient::new(url, config.admin_timeout, config.max_response_bytes))
        .transpose()?;
    let watches_secrets =
        !config.secret_dirs.is_empty() || config.secret_source != SecretSource::Off;
    let store = watches_secrets.then(|| SecretStore::new(metrics.source_errors.clone()));
    let collector = Collector::new(
        admin,
        store,
        config.collect_cache,
        metrics.source_errors.clone(),
    );
    let options = DeriveOptions {
        host_metrics: config.host_metrics,
    };
    Ok(Arc::new(App::new(collector, metrics, options)))
}

/// Starts the background readers of Secrets (mounts and the Kubernetes API) that `config` asks
/// for. Must run inside a tokio runtime.
pub fn spawn_secret_watchers(config: &Config, app: &App) {
    let Some(store) = app.collector.secret_store() else {
        return;
    };
    // Readers are registered before they run, so `--once` can wait for their first round.
    if !config.secret_dirs.is_empty() {
        store.begin(secrets::files::READER);
        tokio::spawn(secrets::files::watch(
            config.secret_dirs.clone(),
            store.clone(),
        ));
    }
    if config.secret_source != SecretSource::Off {
        store.begin(secrets::kube::CLIENT_READER);
        tokio::spawn(run_kube_source(config.secret_source.clone(), store.clone()));
    }
}

async fn run_kube_source(source: SecretSource, store: SecretStore) {
    let client = loop {
        match kube::Client::try_default().await {
            Ok(client) => break client,
            Err(e) => {
                if !store.is_failing(secrets::kube::CLIENT_READER) {
                    tracing::warn!(
                        "cannot build a Kubernetes client (in-cluster config or KUBECONFIG): {e}"
                    );
                }
                store.fail(secrets::kube::CLIENT_READER, "connect");
                tokio::time::sleep(secrets::kube::CLIENT_RETRY).await;
            }
        }
    };
    match source {
        SecretSource::Gateway { name, namespace } => {
            secrets::kube::watch_gateway(client, name, namespace, store).await
        }
        SecretSource::Selector {
            namespaces,
            label_selector,
        } => secrets::kube::watch_selected(client, namespaces, label_selector, store).await,
        SecretSource::Off => {}
    }
}
