//! Snapshot in, metric families out: pure functions, plus the exporter's own long-lived metrics.

use std::collections::HashSet;
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus::proto::{Gauge, LabelPair, Metric, MetricFamily, MetricType};
use prometheus::{Encoder, IntCounterVec, Opts, Registry, TextEncoder};

use crate::collect::{EnvoySnapshot, Snapshot};
use crate::envoy::certs::CertsSnapshot;
use crate::envoy::clusters::{Cluster, ClustersSnapshot, Health, Thresholds};
use crate::envoy::stats::{ClusterGauges, StatsSnapshot};
use crate::envoy::{Priority, Resource};
use crate::secrets::SecretsSnapshot;

pub const PREFIX: &str = "envoy_gateway_exporter_";

/// `Content-Type` of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Envoy's circuit-breaker defaults, used where `/clusters` omits a threshold.
const ENVOY_DEFAULT_THRESHOLDS: Thresholds = Thresholds {
    max_connections: Some(1024),
    max_pending_requests: Some(1024),
    max_requests: Some(1024),
    max_retries: Some(3),
};

/// Choices that shape the derived series.
#[derive(Debug, Clone, Copy)]
pub struct DeriveOptions {
    /// Publish `host_healthy` for every host.
    pub host_metrics: bool,
}

/// One gauge family under construction.
struct Gauges(MetricFamily);

impl Gauges {
    fn new(name: &str, help: &str) -> Gauges {
        let mut mf = MetricFamily::default();
        mf.set_name(format!("{PREFIX}{name}"));
        mf.set_help(help.to_string());
        mf.set_field_type(MetricType::GAUGE);
        Gauges(mf)
    }

    fn add(&mut self, labels: &[(&str, &str)], value: f64) {
        let pairs = labels
            .iter()
            .map(|(name, value)| {
                let mut pair = LabelPair::default();
                pair.set_name(name.to_string());
                pair.set_value(value.to_string());
                pair
            })
            .collect();
        let mut gauge = Gauge::default();
        gauge.set_value(value);
        let mut metric = Metric::from_label(pairs);
        metric.set_gauge(gauge);
        self.0.mut_metric().push(metric);
    }

    /// Appends the family unless it is empty (the text encoder refuses empty families).
    fn finish(self, out: &mut Vec<MetricFamily>) {
        if !self.0.get_metric().is_empty() {
            out.push(self.0);
        }
    }
}

/// Every metric derived from one collection.
pub fn derive(snapshot: &Snapshot, options: DeriveOptions) -> Vec<MetricFamily> {
    let mut out = Vec::new();
    source_health(snapshot.envoy.as_ref(), snapshot.secrets.as_ref(), &mut out);
    if let Some(envoy) = &snapshot.envoy {
        if let Some(clusters) = envoy.clusters.ok() {
            backends(clusters, options, &mut out);
        }
        breakers(envoy.clusters.ok(), envoy.stats.ok(), &mut out);
        if let Some(certs) = envoy.certs.ok() {
            envoy_certs(certs, snapshot.now, &mut out);
        }
    }
    if let Some(secrets) = &snapshot.secrets {
        let served = snapshot.envoy.as_ref().and_then(|e| e.certs.ok());
        secret_certs(secrets, served, snapshot.now, &mut out);
    }
    out
}

fn source_health(
    envoy: Option<&EnvoySnapshot>,
    secrets: Option<&SecretsSnapshot>,
    out: &mut Vec<MetricFamily>,
) {
    let mut up = Gauges::new(
        "up",
        "1 if the last collection from the source succeeded, else 0.",
    );
    let mut duration = Gauges::new(
        "source_duration_seconds",
        "Time the last collection from the source took (Envoy: fetch and parse; secrets: the last full read).",
    );
    let envoy_sources = envoy.map(|e| e.sources().map(|(s, ok, took)| (s.label(), ok, took)));
    let secret_source = secrets.map(|s| ("secrets", s.up, s.duration));
    for (source, ok, took) in envoy_sources.into_iter().flatten().chain(secret_source) {
        up.add(&[("source", source)], if ok { 1.0 } else { 0.0 });
        duration.add(&[("source", source)], took.as_secs_f64());
    }
    up.finish(out);
    duration.finish(out);
}

fn secret_certs(
    secrets: &SecretsSnapshot,
    envoy_certs: Option<&CertsSnapshot>,
    now: SystemTime,
    out: &mut Vec<MetricFamily>,
) {
    let mut not_after = Gauges::new(
        "secret_cert_not_after_timestamp_seconds",
        "Expiry (not after) of a certificate in a watched Secret, in seconds since the Unix epoch.",
    );
    let mut not_before = Gauges::new(
        "secret_cert_not_before_timestamp_seconds",
        "Start of validity (not before) of a certificate in a watched Secret, in seconds since the Unix epoch.",
    );
    let mut days = Gauges::new(
        "secret_cert_days_remaining",
        "Days until a certificate in a watched Secret expires; negative once expired.",
    );
    let mut valid = Gauges::new(
        "secret_valid",
        "1 if the Secret holds at least one parseable certificate, else 0.",
    );
    let mut served = Gauges::new(
        "secret_cert_served",
        "1 if the Secret's leaf certificate is among those Envoy serves, 0 if not (a rotation that did not reach Envoy); absent when Envoy's /certs was not read.",
    );
    let mut listener_info = Gauges::new(
        "secret_listener_info",
        "1 for each Gateway listener that references the Secret (gateway mode).",
    );
    let served_serials: Option<HashSet<&str>> = envoy_certs.map(|c| c.served_serials().collect());
    let now = unix_seconds(now);
    for secret in &secrets.secrets {
        let id = [
            ("secret_namespace", secret.namespace.as_str()),
            ("secret_name", secret.name.as_str()),
        ];
        valid.add(&id, if secret.valid() { 1.0 } else { 0.0 });
        if let (Some(serials), Some(leaf)) = (&served_serials, secret.leaf_serial()) {
            served.add(&id, if serials.contains(leaf) { 1.0 } else { 0.0 });
        }
        for (key, certs) in &secret.keys {
            for cert in certs {
                let index = cert.index.to_string();
                let labels = [
                    id[0],
                    id[1],
                    ("key", key.as_str()),
                    ("index", index.as_str()),
                    ("serial", cert.serial.as_str()),
                    ("subject_cn", cert.subject_cn.as_str()),
                    ("issuer_cn", cert.issuer_cn.as_str()),
                    ("dns_names", cert.dns_names.as_str()),
                ];
                not_after.add(&labels, cert.not_after as f64);
                not_before.add(&labels, cert.not_before as f64);
                days.add(&labels, (cert.not_after as f64 - now) / 86_400.0);
            }
        }
    }
    for ((namespace, name), listeners) in &secrets.listeners {
        for listener in listeners {
            listener_info.add(
                &[
                    ("secret_namespace", namespace),
                    ("secret_name", name),
                    ("listener", listener),
                ],
                1.0,
            );
        }
    }
    not_after.finish(out);
    not_before.finish(out);
    days.finish(out);
    valid.finish(out);
    served.finish(out);
    listener_info.finish(out);
}

fn backends(clusters: &ClustersSnapshot, options: DeriveOptions, out: &mut Vec<MetricFamily>) {
    let mut hosts = Gauges::new(
        "cluster_hosts",
        "Hosts of the Envoy cluster by health, classified as Envoy classifies them.",
    );
    let mut ratio = Gauges::new(
        "cluster_healthy_ratio",
        "Healthy hosts / all hosts of the Envoy cluster; absent when it has no hosts.",
    );
    let mut host_healthy = Gauges::new(
        "host_healthy",
        "1 if the host is healthy, 0 if it is degraded or unhealthy.",
    );
    let mut failure = Gauges::new(
        "host_failure",
        "1 for each health flag set on the host; reason is the flag's name in Envoy's /clusters JSON, or eds_<status>.",
    );
    for cluster in &clusters.clusters {
        let name = cluster.stats_name();
        let mut counts = [0u64; 3];
        for host in &cluster.hosts {
            let health = host.flags.health();
            counts[health as usize] += 1;
            if options.host_metrics {
                let value = if health == Health::Healthy { 1.0 } else { 0.0 };
                host_healthy.add(
                    &[("envoy_cluster_name", name), ("address", &host.address)],
                    value,
                );
            }
            let reasons = host
                .flags
                .iter()
                .map(|f| f.reason())
                .chain(host.unknown_flags.iter().map(String::as_str));
            for reason in reasons {
                failure.add(
                    &[
                        ("envoy_cluster_name", name),
                        ("address", &host.address),
                        ("reason", reason),
                    ],
                    1.0,
                );
            }
        }
        for health in Health::ALL {
            hosts.add(
                &[("envoy_cluster_name", name), ("health", health.label())],
                counts[health as usize] as f64,
            );
        }
        if !cluster.hosts.is_empty() {
            let healthy = counts[Health::Healthy as usize] as f64;
            ratio.add(
                &[("envoy_cluster_name", name)],
                healthy / cluster.hosts.len() as f64,
            );
        }
    }
    hosts.finish(out);
    ratio.finish(out);
    host_healthy.finish(out);
    failure.finish(out);
}

/// The configured maximum of a resource, with Envoy's defaults where `/clusters` omits it;
/// `None` for connection pools (unlimited by default and never printed by `/clusters`).
fn threshold(t: &Thresholds, resource: Resource) -> Option<u64> {
    let pick = |t: &Thresholds| match resource {
        Resource::Connections => t.max_connections,
        Resource::PendingRequests => t.max_pending_requests,
        Resource::Requests => t.max_requests,
        Resource::Retries => t.max_retries,
        Resource::ConnectionPools => None,
    };
    pick(t).or_else(|| pick(&ENVOY_DEFAULT_THRESHOLDS))
}

/// The active count that a default-priority breaker compares with its threshold.
fn active(gauges: &ClusterGauges, resource: Resource) -> Option<u64> {
    match resource {
        Resource::Connections => Some(gauges.upstream_cx_active),
        Resource::PendingRequests => Some(gauges.upstream_rq_pending_active),
        Resource::Requests => Some(gauges.upstream_rq_active),
        Resource::Retries | Resource::ConnectionPools => None,
    }
}

fn utilization(
    threshold: Option<u64>,
    gauges: Option<&ClusterGauges>,
    priority: Priority,
    resource: Resource,
) -> Option<f64> {
    let max = threshold.filter(|t| *t > 0)?;
    let gauges = gauges?;
    let in_use = match gauges.breakers[priority as usize].remaining[resource as usize] {
        Some(remaining) => max.saturating_sub(remaining),
        None if priority == Priority::Default => active(gauges, resource)?,
        None => return None,
    };
    Some(in_use as f64 / max as f64)
}

fn breakers(
    clusters: Option<&ClustersSnapshot>,
    stats: Option<&StatsSnapshot>,
    out: &mut Vec<MetricFamily>,
) {
    let mut open = Gauges::new(
        "circuit_breaker_open",
        "1 while the circuit breaker of the resource is open (the limit is reached), else 0.",
    );
    let mut max = Gauges::new(
        "circuit_breaker_threshold",
        "The configured maximum of the resource (Envoy's default where none is configured).",
    );
    let mut used = Gauges::new(
        "circuit_breaker_utilization_ratio",
        "How much of the threshold is in use, 0..1 (from remaining_* when tracked, else from active gauges).",
    );
    let empty_gauges = ClusterGauges::default();
    // The cluster list comes from /clusters; without it, the stats alone still give open flags.
    let names: Vec<(&str, Option<&Cluster>)> = match (clusters, stats) {
        (Some(c), _) => c
            .clusters
            .iter()
            .map(|c| (c.stats_name(), Some(c)))
            .collect(),
        (None, Some(s)) => {
            let mut names: Vec<(&str, Option<&Cluster>)> =
                s.clusters.keys().map(|n| (n.as_str(), None)).collect();
            names.sort_unstable_by_key(|(n, _)| *n);
            names
        }
        (None, None) => Vec::new(),
    };
    for (name, cluster) in names {
        let gauges = stats.map(|s| s.clusters.get(name).unwrap_or(&empty_gauges));
        for priority in Priority::ALL {
            if priority == Priority::High && !high_priority_wanted(cluster, gauges) {
                continue;
            }
            for resource in Resource::ALL {
                let labels = [
                    ("envoy_cluster_name", name),
                    ("priority", priority.label()),
                    ("resource", resource.label()),
                ];
                if let Some(g) = gauges {
                    let is_open = g.breakers[priority as usize].open[resource as usize];
                    open.add(&labels, if is_open { 1.0 } else { 0.0 });
                }
                let Some(cluster) = cluster else { continue };
                let limit = threshold(&cluster.thresholds[priority as usize], resource);
                if let Some(limit) = limit {
                    max.add(&labels, limit as f64);
                }
                if let Some(ratio) = utilization(limit, gauges, priority, resource) {
                    used.add(&labels, ratio);
                }
            }
        }
    }
    open.finish(out);
    max.finish(out);
    used.finish(out);
}

/// High-priority series are published where that priority is configured (thresholds other than
/// Envoy's defaults) or reported (an open flag or a tracked `remaining_*` gauge), to keep the
/// series count down for the common cluster that never uses it.
fn high_priority_wanted(cluster: Option<&Cluster>, gauges: Option<&ClusterGauges>) -> bool {
    let configured = cluster.is_some_and(|c| {
        let t = &c.thresholds[Priority::High as usize];
        Resource::ALL
            .iter()
            .any(|r| threshold(t, *r) != threshold(&ENVOY_DEFAULT_THRESHOLDS, *r))
    });
    let reported = gauges.is_some_and(|g| {
        let b = &g.breakers[Priority::High as usize];
        b.open.iter().any(|o| *o) || b.remaining.iter().any(Option::is_some)
    });
    configured || reported
}

fn envoy_certs(certs: &CertsSnapshot, now: SystemTime, out: &mut Vec<MetricFamily>) {
    let mut not_after = Gauges::new(
        "envoy_cert_not_after_timestamp_seconds",
        "Expiry (not after) of a certificate Envoy has loaded, in seconds since the Unix epoch.",
    );
    let mut days = Gauges::new(
        "envoy_cert_days_remaining",
        "Days until a certificate Envoy has loaded expires; negative once expired.",
    );
    let now = unix_seconds(now);
    for cert in &certs.certs {
        let labels = [
            ("kind", cert.kind.label()),
            ("path", cert.path.as_str()),
            ("serial", cert.serial.as_str()),
            ("dns_names", cert.dns_names.as_str()),
        ];
        not_after.add(&labels, cert.not_after as f64);
        days.add(&labels, (cert.not_after as f64 - now) / 86_400.0);
    }
    not_after.finish(out);
    days.finish(out);
}

fn unix_seconds(t: SystemTime) -> f64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
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

    /// The whole `/metrics` body: derived families, then the exporter's own.
    pub fn render(&self, derived: &[MetricFamily]) -> String {
        let mut out = String::with_capacity(64 * 1024);
        let encoder = TextEncoder::new();
        encoder
            .encode_utf8(derived, &mut out)
            .expect("derived families are never empty");
        encoder
            .encode_utf8(&self.registry.gather(), &mut out)
            .expect("registry families are never empty");
        out
    }
}

/// Encodes families alone (for tests and benchmarks).
pub fn encode(families: &[MetricFamily]) -> String {
    let mut buf = Vec::new();
    TextEncoder::new()
        .encode(families, &mut buf)
        .expect("families are never empty");
    String::from_utf8(buf).expect("the text format is UTF-8")
}
