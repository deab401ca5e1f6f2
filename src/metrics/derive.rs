//! Snapshot in, samples out: pure functions of a collection, written to any [`Sink`]. Each family
//! is written whole (one pass per family), so a text sink never holds more than its output.

use std::collections::HashSet;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::collect::{EnvoySnapshot, Snapshot};
use crate::envoy::certs::CertsSnapshot;
use crate::envoy::clusters::{Cluster, ClustersSnapshot, Health, Host, Thresholds};
use crate::envoy::stats::{ClusterGauges, StatsSnapshot};
use crate::envoy::{Priority, Resource};
use crate::secrets::SecretsSnapshot;

use super::sink::Sink;

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

/// Writes every metric derived from one collection.
pub fn write(snapshot: &Snapshot, options: DeriveOptions, sink: &mut impl Sink) {
    source_health(snapshot.envoy.as_ref(), snapshot.secrets.as_ref(), sink);
    if let Some(envoy) = &snapshot.envoy {
        if let Some(clusters) = envoy.clusters.ok() {
            backends(clusters, options, sink);
        }
        breakers(envoy.clusters.ok(), envoy.stats.ok(), sink);
        if let Some(certs) = envoy.certs.ok() {
            envoy_certs(certs, snapshot.now, sink);
        }
    }
    if let Some(secrets) = &snapshot.secrets {
        let served = snapshot.envoy.as_ref().and_then(|e| e.certs.ok());
        secret_certs(secrets, served, snapshot.now, sink);
    }
}

fn source_health(
    envoy: Option<&EnvoySnapshot>,
    secrets: Option<&SecretsSnapshot>,
    sink: &mut impl Sink,
) {
    let envoy_sources = envoy.map(|e| e.sources().map(|(s, ok, took)| (s.label(), ok, took)));
    let secret_source = secrets.map(|s| ("secrets", s.up, s.duration));
    let sources: Vec<(&str, bool, std::time::Duration)> = envoy_sources
        .into_iter()
        .flatten()
        .chain(secret_source)
        .collect();
    sink.family(
        "up",
        "1 if the last collection from the source succeeded, else 0.",
    );
    for (source, ok, _) in &sources {
        sink.sample(&[("source", source)], if *ok { 1.0 } else { 0.0 });
    }
    sink.family(
        "source_duration_seconds",
        "Time the last collection from the source took (Envoy: fetch and parse; secrets: the last full read).",
    );
    for (source, _, took) in &sources {
        sink.sample(&[("source", source)], took.as_secs_f64());
    }
}

/// A secret certificate series' value from (not before, not after, now).
type SecretCertValue = fn(i64, i64, f64) -> f64;

fn secret_certs(
    secrets: &SecretsSnapshot,
    envoy_certs: Option<&CertsSnapshot>,
    now: SystemTime,
    sink: &mut impl Sink,
) {
    let now = unix_seconds(now);
    let families: [(&'static str, &'static str, SecretCertValue); 3] = [
        (
            "secret_cert_not_after_timestamp_seconds",
            "Expiry (not after) of a certificate in a watched Secret, in seconds since the Unix epoch.",
            |_, not_after, _| not_after as f64,
        ),
        (
            "secret_cert_not_before_timestamp_seconds",
            "Start of validity (not before) of a certificate in a watched Secret, in seconds since the Unix epoch.",
            |not_before, _, _| not_before as f64,
        ),
        (
            "secret_cert_days_remaining",
            "Days until a certificate in a watched Secret expires; negative once expired.",
            |_, not_after, now| (not_after as f64 - now) / 86_400.0,
        ),
    ];
    for (name, help, value) in families {
        sink.family(name, help);
        for secret in &secrets.secrets {
            for (key, certs) in &secret.keys {
                for cert in certs {
                    let index = cert.index.to_string();
                    let labels = [
                        ("secret_namespace", secret.namespace.as_str()),
                        ("secret_name", secret.name.as_str()),
                        ("key", key.as_str()),
                        ("index", index.as_str()),
                        ("serial", cert.serial.as_str()),
                        ("subject_cn", cert.subject_cn.as_str()),
                        ("issuer_cn", cert.issuer_cn.as_str()),
                        ("dns_names", cert.dns_names.as_str()),
                    ];
                    sink.sample(&labels, value(cert.not_before, cert.not_after, now));
                }
            }
        }
    }
    sink.family(
        "secret_valid",
        "1 if the Secret holds at least one parseable certificate, else 0.",
    );
    for secret in &secrets.secrets {
        let labels = [
            ("secret_namespace", secret.namespace.as_str()),
            ("secret_name", secret.name.as_str()),
        ];
        sink.sample(&labels, if secret.valid() { 1.0 } else { 0.0 });
    }
    sink.family(
        "secret_cert_served",
        "1 if the Secret's leaf certificate is among those Envoy serves, 0 if not (a rotation that did not reach Envoy); absent when Envoy's /certs was not read.",
    );
    if let Some(certs) = envoy_certs {
        let served: HashSet<&str> = certs.served_serials().collect();
        for secret in &secrets.secrets {
            if let Some(leaf) = secret.leaf_serial() {
                let labels = [
                    ("secret_namespace", secret.namespace.as_str()),
                    ("secret_name", secret.name.as_str()),
                ];
                sink.sample(&labels, if served.contains(leaf) { 1.0 } else { 0.0 });
            }
        }
    }
    sink.family(
        "secret_listener_info",
        "1 for each Gateway listener that references the Secret (gateway mode).",
    );
    for ((namespace, name), listeners) in &secrets.listeners {
        for listener in listeners {
            sink.sample(
                &[
                    ("secret_namespace", namespace),
                    ("secret_name", name),
                    ("listener", listener),
                ],
                1.0,
            );
        }
    }
}

fn backends(clusters: &ClustersSnapshot, options: DeriveOptions, sink: &mut impl Sink) {
    sink.family(
        "cluster_hosts",
        "Hosts of the Envoy cluster by health, classified as Envoy classifies them.",
    );
    for cluster in &clusters.clusters {
        let counts = health_counts(cluster);
        for health in Health::ALL {
            sink.sample(
                &[
                    ("envoy_cluster_name", cluster.stats_name()),
                    ("health", health.label()),
                ],
                counts[health as usize] as f64,
            );
        }
    }
    sink.family(
        "cluster_healthy_ratio",
        "Healthy hosts / all hosts of the Envoy cluster; absent when it has no hosts.",
    );
    for cluster in clusters.clusters.iter().filter(|c| !c.hosts.is_empty()) {
        let healthy = health_counts(cluster)[Health::Healthy as usize] as f64;
        sink.sample(
            &[("envoy_cluster_name", cluster.stats_name())],
            healthy / cluster.hosts.len() as f64,
        );
    }
    sink.family(
        "host_healthy",
        "1 if the host is healthy, 0 if it is degraded or unhealthy.",
    );
    if options.host_metrics {
        for cluster in &clusters.clusters {
            for host in distinct_hosts(cluster) {
                let value = if host.flags.health() == Health::Healthy {
                    1.0
                } else {
                    0.0
                };
                sink.sample(
                    &[
                        ("envoy_cluster_name", cluster.stats_name()),
                        ("address", &host.address),
                    ],
                    value,
                );
            }
        }
    }
    sink.family(
        "host_failure",
        "1 for each health flag set on the host; reason is the flag's name in Envoy's /clusters JSON, or eds_<status>.",
    );
    for cluster in &clusters.clusters {
        for host in distinct_hosts(cluster) {
            let reasons = host
                .flags
                .iter()
                .map(|f| f.reason())
                .chain(host.unknown_flags.iter().map(String::as_str));
            for reason in reasons {
                sink.sample(
                    &[
                        ("envoy_cluster_name", cluster.stats_name()),
                        ("address", &host.address),
                        ("reason", reason),
                    ],
                    1.0,
                );
            }
        }
    }
}

/// The hosts of a cluster, each address once: Envoy can list an address under two priorities,
/// and two series with the same labels would make the exposition invalid. The first listing
/// wins; the per-state counts still count every listing, as Envoy's membership gauges do.
fn distinct_hosts(cluster: &Cluster) -> impl Iterator<Item = &Host> {
    let mut seen = HashSet::with_capacity(cluster.hosts.len());
    cluster
        .hosts
        .iter()
        .filter(move |h| seen.insert(h.address.as_str()))
}

fn health_counts(cluster: &Cluster) -> [u64; 3] {
    let mut counts = [0u64; 3];
    for host in &cluster.hosts {
        counts[host.flags.health() as usize] += 1;
    }
    counts
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
    // Active counts can pass the threshold (Envoy enforces limits per worker, and connections
    // of both priorities count as active): at or over the limit is full utilization.
    Some((in_use as f64 / max as f64).min(1.0))
}

/// One breaker series: a cluster's resource at a priority, with what is known of it.
struct Breaker<'a> {
    labels: [(&'static str, &'a str); 3],
    open: Option<bool>,
    threshold: Option<u64>,
    utilization: Option<f64>,
}

fn breaker_series<'a>(
    clusters: Option<&'a ClustersSnapshot>,
    stats: Option<&'a StatsSnapshot>,
) -> Vec<Breaker<'a>> {
    static NO_GAUGES: ClusterGauges = ClusterGauges {
        breakers: [crate::envoy::stats::BreakerGauges {
            open: [false; 5],
            remaining: [None; 5],
        }; 2],
        upstream_cx_active: 0,
        upstream_rq_active: 0,
        upstream_rq_pending_active: 0,
    };
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
    let mut series = Vec::new();
    for (name, cluster) in names {
        let gauges = stats.map(|s| s.clusters.get(name).unwrap_or(&NO_GAUGES));
        for priority in Priority::ALL {
            if priority == Priority::High && !high_priority_wanted(cluster, gauges) {
                continue;
            }
            for resource in Resource::ALL {
                let threshold =
                    cluster.and_then(|c| threshold(&c.thresholds[priority as usize], resource));
                series.push(Breaker {
                    labels: [
                        ("envoy_cluster_name", name),
                        ("priority", priority.label()),
                        ("resource", resource.label()),
                    ],
                    open: gauges.map(|g| g.breakers[priority as usize].open[resource as usize]),
                    threshold,
                    utilization: utilization(threshold, gauges, priority, resource),
                });
            }
        }
    }
    series
}

fn breakers(
    clusters: Option<&ClustersSnapshot>,
    stats: Option<&StatsSnapshot>,
    sink: &mut impl Sink,
) {
    let series = breaker_series(clusters, stats);
    sink.family(
        "circuit_breaker_open",
        "1 while the circuit breaker of the resource is open (the limit is reached), else 0.",
    );
    for b in &series {
        if let Some(open) = b.open {
            sink.sample(&b.labels, if open { 1.0 } else { 0.0 });
        }
    }
    sink.family(
        "circuit_breaker_threshold",
        "The configured maximum of the resource (Envoy's default where none is configured).",
    );
    for b in &series {
        if let Some(threshold) = b.threshold {
            sink.sample(&b.labels, threshold as f64);
        }
    }
    sink.family(
        "circuit_breaker_utilization_ratio",
        "How much of the threshold is in use, 0..1 (from remaining_* when tracked, else from active gauges).",
    );
    for b in &series {
        if let Some(ratio) = b.utilization {
            sink.sample(&b.labels, ratio);
        }
    }
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

/// An Envoy certificate series' value from (not after, now).
type EnvoyCertValue = fn(i64, f64) -> f64;

fn envoy_certs(certs: &CertsSnapshot, now: SystemTime, sink: &mut impl Sink) {
    let now = unix_seconds(now);
    let families: [(&'static str, &'static str, EnvoyCertValue); 2] = [
        (
            "envoy_cert_not_after_timestamp_seconds",
            "Expiry (not after) of a certificate Envoy has loaded, in seconds since the Unix epoch.",
            |not_after, _| not_after as f64,
        ),
        (
            "envoy_cert_days_remaining",
            "Days until a certificate Envoy has loaded expires; negative once expired.",
            |not_after, now| (not_after as f64 - now) / 86_400.0,
        ),
    ];
    for (name, help, value) in families {
        sink.family(name, help);
        for cert in &certs.certs {
            let labels = [
                ("kind", cert.kind.label()),
                ("path", cert.path.as_str()),
                ("serial", cert.serial.as_str()),
                ("dns_names", cert.dns_names.as_str()),
            ];
            sink.sample(&labels, value(cert.not_after, now));
        }
    }
}

fn unix_seconds(t: SystemTime) -> f64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}
