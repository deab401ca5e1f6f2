//! Metrics: the derivation (snapshot in, samples out), the sinks that write them, and the
//! exporter's own long-lived metrics.

pub mod derive;
pub mod sink;

use prometheus::proto::MetricFamily;
use prometheus::{Encoder, IntCounterVec, Opts, Registry, TextEncoder};

use crate::collect::Snapshot;
pub use derive::DeriveOptions;
use sink::{FamiliesSink, TextSink};

pub const PREFIX: &str = "envoy_gateway_exporter_";

/// `Content-Type` of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The derived metrics of a collection in the prometheus crate's model (tests, tools).
pub fn derive(snapshot: &Snapshot, options: DeriveOptions) -> Vec<MetricFamily> {
    let mut sink = FamiliesSink::default();
    derive::write(snapshot, options, &mut sink);
    sink.finish()
}

/// Encodes families with the prometheus crate's text encoder.
pub fn encode(families: &[MetricFamily]) -> String {
    let mut buf = Vec::new();
    TextEncoder::new()
        .encode(families, &mut buf)
        .expect("families are never empty");
    String::from_utf8(buf).expect("the text format is UTF-8")
}

/// The exporter's long-lived metrics: build info, error counters, process metrics.
pub struct ExporterMetrics {
    pub registry: Registry,
    pub source_errors: IntCounterVec,
}

impl ExporterMetrics {
    pub fn new(version: &str, revision: &str) -> ExporterMetrics {
        let registry = Registry::new();
        let build_info = prometheus::IntGaugeVec::new(
            Opts::new(
                format!("{PREFIX}build_info"),
                "Version and revision of the running exporter; always 1.",
            ),
            &["version", "revision"],
        )
        .expect("valid metric");
        build_info.with_label_values(&[version, revision]).set(1);
        let source_errors = IntCounterVec::new(
            Opts::new(
                format!("{PREFIX}source_errors_total"),
                "Failed collections from the source, by reason.",
            ),
            &["source", "reason"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(build_info))
            .expect("registered once");
        registry
            .register(Box::new(source_errors.clone()))
            .expect("registered once");
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("registered once");
        ExporterMetrics {
            registry,
            source_errors,
        }
    }

    /// The whole `/metrics` body: the derived metrics of `snapshot`, then the exporter's own.
    /// `capacity` is a size hint (the previous body's length) that spares regrowing a large
    /// buffer.
    pub fn render(&self, snapshot: &Snapshot, options: DeriveOptions, capacity: usize) -> String {
        let mut out = String::with_capacity(capacity.max(16 * 1024));
        derive::write(snapshot, options, &mut TextSink::new(&mut out));
        TextEncoder::new()
            .encode_utf8(&self.registry.gather(), &mut out)
            .expect("registry families are never empty");
        out
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::collect::{EnvoySnapshot, Sourced};
    use crate::envoy::{certs, clusters, stats};
    use crate::secrets::{SecretCerts, SecretsSnapshot};

    fn sourced<T>(value: T) -> Sourced<T> {
        Sourced {
            result: Ok(value),
            duration: Duration::from_millis(3),
        }
    }

    fn snapshot(dir: &str) -> Snapshot {
        let read = |file: &str| {
            std::fs::read(format!(
                "{}/tests/fixtures/{dir}/{file}",
                env!("CARGO_MANIFEST_DIR")
            ))
            .unwrap()
        };
        let envoy = EnvoySnapshot {
            stats: sourced(stats::parse_stats(&read("stats.txt")).unwrap()),
            clusters: sourced(clusters::parse_clusters(&read("clusters.txt")).unwrap()),
            certs: sourced(certs::parse_certs(&read("certs.json")).unwrap()),
        };
        let pem = std::fs::read(format!(
            "{}/tests/fixtures/secret-mounts/site-tls/tls.crt",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap();
        let secrets = SecretsSnapshot {
            secrets: vec![
                Arc::new(SecretCerts::from_data(
                    "ns",
                    "site\"tls\\",
                    [("tls.crt", pem.as_slice())],
                )),
                Arc::new(SecretCerts::from_data(
                    "ns",
                    "broken\nname",
                    [("tls.crt", b"junk".as_slice())],
                )),
            ],
            listeners: [(
                ("ns".to_string(), "site\"tls\\".to_string()),
                vec!["https".to_string()],
            )]
            .into(),
            up: true,
            duration: Duration::from_millis(1),
        };
        Snapshot::new(
            Some(envoy),
            Some(secrets),
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_000_000),
        )
    }

    /// The scrape path writes text itself; it must be exactly what the prometheus crate's
    /// encoder writes for the same samples, escaping included.
    #[test]
    fn the_text_sink_writes_what_the_crates_encoder_writes() {
        for dir in ["envoy-1.40", "escaping"] {
            let snapshot = snapshot(dir);
            let options = DeriveOptions { host_metrics: true };
            let mut direct = String::new();
            derive::write(&snapshot, options, &mut sink::TextSink::new(&mut direct));
            let via_crate = encode(&super::derive(&snapshot, options));
            assert!(
                direct.contains("secret_name=\"site\\\"tls\\\\\""),
                "{direct}"
            );
            assert_eq!(direct, via_crate, "fixture {dir}");
        }
    }

    #[test]
    fn switching_host_metrics_off_drops_only_host_healthy() {
        let snapshot = snapshot("envoy-1.40");
        let on = encode(&super::derive(
            &snapshot,
            DeriveOptions { host_metrics: true },
        ));
        let off = encode(&super::derive(
            &snapshot,
            DeriveOptions {
                host_metrics: false,
            },
        ));
        assert!(on.contains("envoy_gateway_exporter_host_healthy{"));
        assert!(!off.contains("envoy_gateway_exporter_host_healthy"));
        let without = |text: &str| {
            text.lines()
                .filter(|l| !l.contains("envoy_gateway_exporter_host_healthy"))
                .collect::<Vec<_>>()
                .join("\n")
        };
        assert_eq!(without(&on), without(&off));
    }
}
