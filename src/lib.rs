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
pub mod server;
pub mod telemetry;

use std::sync::Arc;

use collect::Collector;
use config::Config;
use envoy::AdminClient;
use metrics::{DeriveOptions, ExporterMetrics};
use server::App;

/// Version and the git revision it was built from (`unknown` outside a checkout).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub const REVISION: &str = env!("EXPORTER_REVISION");

/// Builds the application state from validated settings.
pub fn build_app(config: &Config) -> Result<Arc<App>, String> {
    let metrics = ExporterMetrics::new(VERSION, REVISION);
    let admin = config
        .envoy_admin_url
        .as_deref()
        .map(|url| AdminClient::new(url, config.admin_timeout, config.max_response_bytes))
        .transpose()?;
    let collector = Collector::new(admin, config.collect_cache, metrics.source_errors.clone());
    Ok(Arc::new(App {
        collector,
        metrics,
        options: DeriveOptions {
            host_metrics: config.host_metrics,
        },
    }))
}
