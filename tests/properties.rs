//! Property tests of what the exporter derives, over arbitrary admin output:
//!
//! 1. every host of every cluster is counted exactly once (`cluster_hosts` sums to the host count,
//!    `host_healthy` appears once per host and agrees with the counts, `host_failure` has one
//!    series per flag);
//! 2. every ratio (`cluster_healthy_ratio`, `circuit_breaker_utilization_ratio`) is within [0, 1]
//!    whatever the thresholds, `remaining_*` and active gauges say;
//! 3. label values (cluster names, host addresses, certificate paths, serials and SANs with quotes,
//!    backslashes, newlines, unicode) come back unchanged through an independent, strict reader of
//!    the text exposition format (written here from the format's specification; it shares no code
//!    with the `prometheus` crate's encoder and rejects anything the format does not allow,
//!    including duplicate series).
//!
//! Inputs go through the real parsers (text `/clusters`, `/stats`, `/certs` JSON) and
//! `metrics::derive` + `metrics::encode`, as in a scrape.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use std::time::{Duration, SystemTime};

use envoy_gateway_exporter::collect::{EnvoySnapshot, Snapshot, Sourced};
use envoy_gateway_exporter::envoy::certs::parse_certs;
use envoy_gateway_exporter::envoy::clusters::{HealthFlag, parse_clusters};
use envoy_gateway_exporter::envoy::stats::parse_stats;
use envoy_gateway_exporter::metrics::{DeriveOptions, derive, encode};
use proptest::prelude::*;

const P: &str = "envoy_gateway_exporter_";

// ---------------------------------------------------------------------------------------------
// A strict reader of text format 0.0.4

#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

impl Sample {
    fn label(&self, name: &str) -> &str {
        self.labels
            .get(name)
            .map(String::as_str)
            .unwrap_or_else(|| panic!("{} has no label {name}: {self:?}", self.name))
    }
}

fn is_metric_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn is_label_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn parse_value(s: &str) -> Result<f64, String> {
    match s {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ if s.is_empty() || s.contains(|c: char| !"0123456789+-.eE".contains(c)) => {
            Err(format!("bad value {s:?}"))
        }
        _ => s.parse().map_err(|_| format!("bad value {s:?}")),
    }
}

/// Reads `{name="value",...}`; returns the labels and the rest of the line after `}`.
fn parse_labels(mut rest: &str) -> Result<(BTreeMap<String, String>, &str), String> {
    let mut labels = BTreeMap::new();
    loop {
        if let Some(after) = rest.strip_prefix('}') {
            return Ok((labels, after));
        }
        let (name, after) = rest.split_once("=\"").ok_or("label without =\"")?;
        if !is_label_name(name) {
            return Err(format!("bad label name {name:?}"));
        }
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err("unterminated label value".into()),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    other => return Err(format!("bad escape \\{other:?}")),
                },
                Some((_, '\n')) => return Err("raw newline in a label value".into()),
                Some((_, c)) => value.push(c),
            }
        };
        if labels.insert(name.to_string(), value).is_some() {
            return Err(format!("label {name} twice"));
        }
        rest = &after[end + 1..];
        if let Some(after) = rest.strip_prefix(',') {
            rest = after;
        } else if !rest.starts_with('}') {
            return Err(format!("expected , or }} at {rest:?}"));
        }
    }
}

/// Every sample of an exposition, or the first thing in it that the format does not allow.
fn read_exposition(text: &str) -> Result<Vec<Sample>, String> {
    let body = text
        .strip_suffix('\n')
        .ok_or("the exposition must end with a newline")?;
    let mut samples = Vec::new();
    let mut seen = BTreeSet::new();
    let mut typed = BTreeSet::new();
    for (number, line) in body.split('\n').enumerate() {
        let context = |e: String| format!("line {}: {e}: {line:?}", number + 1);
        if let Some(comment) = line.strip_prefix('#') {
            let mut parts = comment.trim_start().splitn(3, ' ');
            match (parts.next(), parts.next(), parts.next()) {
                (Some("HELP"), Some(name), Some(help)) => {
                    if !is_metric_name(name) {
                        return Err(context("bad metric name in HELP".into()));
                    }
                    let mut chars = help.chars();
                    while let Some(c) = chars.next() {
                        if c == '\\' && !matches!(chars.next(), Some('\\' | 'n')) {
                            return Err(context("bad escape in HELP".into()));
                        }
                    }
                }
                (Some("TYPE"), Some(name), Some(kind)) => {
                    if !is_metric_name(name)
                        || !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind)
                    {
                        return Err(context("bad TYPE line".into()));
                    }
                    if !typed.insert(name.to_string()) {
                        return Err(context("TYPE twice".into()));
                    }
                }
                _ => {}
            }
            continue;
        }
        if line.is_empty() {
            continue;
        }
        let name_end = line
            .find(['{', ' '])
            .ok_or_else(|| context("no value".into()))?;
        let name = &line[..name_end];
        if !is_metric_name(name) {
            return Err(context(format!("bad metric name {name:?}")));
        }
        let (labels, rest) = match line[name_end..].strip_prefix('{') {
            Some(inner) => parse_labels(inner).map_err(context)?,
            None => (BTreeMap::new(), &line[name_end..]),
        };
        let rest = rest
            .strip_prefix(' ')
            .ok_or_else(|| context("no space before the value".into()))?;
        let mut fields = rest.split(' ');
        let value = parse_value(fields.next().unwrap_or_default()).map_err(context)?;
        if let Some(ts) = fields.next()
            && ts.parse::<i64>().is_err()
        {
            return Err(context("bad timestamp".into()));
        }
        if fields.next().is_some() {
            return Err(context("trailing fields".into()));
        }
        if !seen.insert((name.to_string(), labels.clone())) {
            return Err(context("duplicate series".into()));
        }
        samples.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    Ok(samples)
}

fn samples<'a>(all: &'a [Sample], metric: &str) -> impl Iterator<Item = &'a Sample> {
    let full = format!("{P}{metric}");
    all.iter().filter(move |s| s.name == full)
}

// ---------------------------------------------------------------------------------------------
// Building admin output and a snapshot

fn sourced<T>(value: T) -> Sourced<T> {
    Sourced {
        result: Ok(value),
        duration: Duration::from_millis(1),
    }
}

fn scrape(
    clusters_text: &str,
    stats_text: &str,
    certs_json: &str,
    host_metrics: bool,
) -> Vec<Sample> {
    let clusters = parse_clusters(clusters_text.as_bytes())
        .unwrap_or_else(|e| panic!("generated /clusters does not parse: {e}\n{clusters_text}"));
    let stats = parse_stats(stats_text.as_bytes())
        .unwrap_or_else(|e| panic!("generated /stats does not parse: {e}\n{stats_text}"));
    let certs = parse_certs(certs_json.as_bytes())
        .unwrap_or_else(|e| panic!("generated /certs does not parse: {e}\n{certs_json}"));
    let envoy = EnvoySnapshot {
        stats: sourced(stats),
        clusters: sourced(clusters),
        certs: sourced(certs),
    };
    let snapshot = Snapshot::new(Some(envoy), None, SystemTime::now());
    let text = encode(&derive(&snapshot, DeriveOptions { host_metrics }));
    read_exposition(&text).unwrap_or_else(|e| panic!("invalid exposition: {e}\n{text}"))
}

#[derive(Debug, Clone)]
struct GenHost {
    address: String,
    /// Bit i set: `HealthFlag::ALL[i]`.
    flags: u16,
    unknown: BTreeSet<String>,
}

impl GenHost {
    fn flags_text(&self) -> String {
        let mut names: Vec<&str> = HealthFlag::ALL
            .iter()
            .enumerate()
            .filter(|(i, _)| self.flags & (1 << i) != 0)
            .map(|(_, f)| f.text_name())
            .collect();
        names.extend(self.unknown.iter().map(String::as_str));
        if names.is_empty() {
            "healthy".to_string()
        } else {
            names.iter().map(|n| format!("/{n}")).collect()
        }
    }

    fn has(&self, flag: HealthFlag) -> bool {
        let i = HealthFlag::ALL.iter().position(|f| *f == flag).unwrap();
        self.flags & (1 << i) != 0
    }

    fn flag_count(&self) -> usize {
        self.flags.count_ones() as usize + self.unknown.len()
    }
}

#[derive(Debug, Clone)]
struct GenCluster {
    name: String,
    alt_name: Option<String>,
    /// (default, high) priority: max_connections, max_pending_requests, max_requests, max_retries.
    thresholds: [[u64; 4]; 2],
    hosts: Vec<GenHost>,
}

impl GenCluster {
    /// The observability name as `/clusters` prints it.
    fn stats_name(&self) -> &str {
        self.alt_name.as_deref().unwrap_or(&self.name)
    }

    /// The name in Envoy's stat names and in the `envoy_cluster_name` label: Envoy turns `:`
    /// into `_` in stat names.
    fn label(&self) -> String {
        self.stats_name().replace(':', "_")
    }
}

/// Text `/clusters` in Envoy's line format for the generated clusters.
fn clusters_text(clusters: &[GenCluster]) -> String {
    let mut out = String::new();
    for c in clusters {
        let n = &c.name;
        writeln!(out, "{n}::observability_name::{}", c.stats_name()).unwrap();
        for (scope, values) in ["default_priority", "high_priority"]
            .iter()
            .zip(c.thresholds)
        {
            for (key, value) in [
                "max_connections",
                "max_pending_requests",
                "max_requests",
                "max_retries",
            ]
            .iter()
            .zip(values)
            {
                writeln!(out, "{n}::{scope}::{key}::{value}").unwrap();
            }
        }
        writeln!(out, "{n}::added_via_api::false").unwrap();
        for h in &c.hosts {
            let a = &h.address;
            writeln!(out, "{n}::{a}::cx_active::0").unwrap();
            writeln!(out, "{n}::{a}::rq_total::12").unwrap();
            writeln!(out, "{n}::{a}::hostname::").unwrap();
            writeln!(out, "{n}::{a}::health_flags::{}", h.flags_text()).unwrap();
            writeln!(out, "{n}::{a}::weight::1").unwrap();
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Strategies

/// A string usable in text `/clusters` (no line break, no `::`, never ending in `:`), with quotes,
/// backslashes, control characters and unicode.
fn clusters_safe() -> impl Strategy<Value = String> {
    "(?:[^\n\r:]|:[^\n\r:]){1,12}"
}

fn host() -> impl Strategy<Value = (String, u16, BTreeSet<String>)> {
    (
        clusters_safe(),
        0u16..(1 << HealthFlag::ALL.len()),
        prop::collection::btree_set("x_[a-z_]{0,6}", 0..2),
    )
}

fn threshold() -> impl Strategy<Value = u64> {
    prop_oneof![0u64..5, 1u64..2048, any::<u64>()]
}

fn thresholds() -> impl Strategy<Value = [u64; 4]> {
    [threshold(), threshold(), threshold(), threshold()]
}

fn cluster() -> impl Strategy<Value = GenCluster> {
    (
        clusters_safe(),
        prop::option::of(clusters_safe()),
        [thresholds(), thresholds()],
        prop::collection::vec(host(), 0..9),
    )
        .prop_map(|(name, alt_name, thresholds, hosts)| GenCluster {
            name,
            alt_name,
            thresholds,
            hosts: hosts
                .into_iter()
                .enumerate()
                // The index makes addresses unique within the cluster.
                .map(|(k, (address, flags, unknown))| GenHost {
                    address: format!("{k}|{address}"),
                    flags,
                    unknown,
                })
                .collect(),
        })
}

fn clusters() -> impl Strategy<Value = Vec<GenCluster>> {
    prop::collection::vec(cluster(), 1..6).prop_map(|mut clusters| {
        // Unique cluster names and stats names, as Envoy's are.
        for (i, c) in clusters.iter_mut().enumerate() {
            c.name = format!("c{i}|{}", c.name);
            if let Some(alt) = &mut c.alt_name {
                *alt = format!("alt{i}|{alt}");
            }
        }
        clusters
    })
}

// ---------------------------------------------------------------------------------------------
// 1. every host counted exactly once

proptest! {
    #[test]
    fn every_host_is_counted_exactly_once(clusters in clusters(), host_metrics in any::<bool>()) {
        let all = scrape(&clusters_text(&clusters), "", r#"{"certificates":[]}"#, host_metrics);
        for c in &clusters {
            let name = c.label();
            let of_cluster = |metric: &str| -> Vec<&Sample> {
                samples(&all, metric).filter(|s| s.label("envoy_cluster_name") == name).collect()
            };
            let counts = of_cluster("cluster_hosts");
            let healths: BTreeSet<&str> = counts.iter().map(|s| s.label("health")).collect();
            prop_assert_eq!(counts.len(), 3, "{}: {:?}", name, counts);
            prop_assert_eq!(healths, BTreeSet::from(["degraded", "healthy", "unhealthy"]));
            prop_assert!(counts.iter().all(|s| s.value >= 0.0 && s.value.fract() == 0.0));
            let total: f64 = counts.iter().map(|s| s.value).sum();
            prop_assert_eq!(total, c.hosts.len() as f64, "{}", name);
            let healthy = counts.iter().find(|s| s.label("health") == "healthy").unwrap().value;

            let per_host = of_cluster("host_healthy");
            if host_metrics {
                prop_assert_eq!(per_host.len(), c.hosts.len());
                for h in &c.hosts {
                    let mine: Vec<&&Sample> =
                        per_host.iter().filter(|s| s.label("address") == h.address).collect();
                    prop_assert_eq!(mine.len(), 1, "{} {}", name, h.address);
                    let value = mine[0].value;
                    prop_assert!(value == 0.0 || value == 1.0);
                    if h.flag_count() == 0 {
                        prop_assert_eq!(value, 1.0, "a host without flags is healthy");
                    }
                    if h.has(HealthFlag::FailedActiveHc)
                        || h.has(HealthFlag::FailedOutlierCheck)
                        || h.has(HealthFlag::FailedEdsHealth)
                    {
                        prop_assert_eq!(value, 0.0, "a failing host is not healthy");
                    }
                }
                let ones = per_host.iter().filter(|s| s.value == 1.0).count();
                prop_assert_eq!(ones as f64, healthy);
            } else {
                prop_assert!(per_host.is_empty());
            }

            let failures = of_cluster("host_failure");
            for h in &c.hosts {
                let reasons: Vec<&str> = failures
                    .iter()
                    .filter(|s| s.label("address") == h.address)
                    .map(|s| s.label("reason"))
                    .collect();
                prop_assert_eq!(reasons.len(), h.flag_count(), "{} {}: {:?}", name, h.address, reasons);
                for u in &h.unknown {
                    prop_assert!(reasons.contains(&u.as_str()));
                }
            }
            prop_assert!(failures.iter().all(|s| s.value == 1.0));

            let ratio = of_cluster("cluster_healthy_ratio");
            if c.hosts.is_empty() {
                prop_assert!(ratio.is_empty());
            } else {
                prop_assert_eq!(ratio.len(), 1);
                let expected = healthy / c.hosts.len() as f64;
                prop_assert!((ratio[0].value - expected).abs() < 1e-12);
            }
        }
        // Nothing about clusters that do not exist.
        let names: BTreeSet<String> = clusters.iter().map(GenCluster::label).collect();
        for metric in ["cluster_hosts", "cluster_healthy_ratio", "host_healthy", "host_failure"] {
            for s in samples(&all, metric) {
                prop_assert!(names.contains(s.label("envoy_cluster_name")));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 2. ratios within [0, 1]

/// Gauges of one cluster in `/stats`: per priority, per resource, `(open, remaining)`; and the
/// three active counts.
type GenGauges = ([[(bool, Option<u64>); 5]; 2], [u64; 3]);

fn gauges() -> impl Strategy<Value = GenGauges> {
    let per_resource = || (any::<bool>(), prop::option::of(threshold()));
    let priority = move || {
        [
            per_resource(),
            per_resource(),
            per_resource(),
            per_resource(),
            per_resource(),
        ]
    };
    (
        [priority(), priority()],
        [threshold(), threshold(), threshold()],
    )
}

fn stats_text(clusters: &[GenCluster], gauges: &[GenGauges]) -> String {
    const OPEN: [&str; 5] = [
        "cx_open",
        "rq_pending_open",
        "rq_open",
        "rq_retry_open",
        "cx_pool_open",
    ];
    const REMAINING: [&str; 5] = [
        "remaining_cx",
        "remaining_pending",
        "remaining_rq",
        "remaining_retries",
        "remaining_cx_pools",
    ];
    let mut out = String::new();
    for (c, (breakers, active)) in clusters.iter().zip(gauges) {
        let n = c.label();
        for (priority, resources) in ["default", "high"].iter().zip(breakers) {
            for (r, (open, remaining)) in resources.iter().enumerate() {
                let prefix = format!("cluster.{n}.circuit_breakers.{priority}");
                writeln!(out, "{prefix}.{}: {}", OPEN[r], u8::from(*open)).unwrap();
                if let Some(remaining) = remaining {
                    writeln!(out, "{prefix}.{}: {remaining}", REMAINING[r]).unwrap();
                }
            }
        }
        for (gauge, value) in [
            "upstream_cx_active",
            "upstream_rq_pending_active",
            "upstream_rq_active",
        ]
        .iter()
        .zip(active)
        {
            writeln!(out, "cluster.{n}.{gauge}: {value}").unwrap();
        }
    }
    out
}

/// Stats names that survive `/stats` lines (`name: value`): no `: ` and no line break.
fn breaker_clusters() -> impl Strategy<Value = Vec<(GenCluster, GenGauges)>> {
    prop::collection::vec((cluster(), gauges()), 1..5).prop_map(|mut v| {
        for (i, (c, _)) in v.iter_mut().enumerate() {
            c.name = format!("c{i}.{}", c.name.replace(": ", ":_"));
            c.alt_name = None;
        }
        v
    })
}

proptest! {
    #[test]
    fn every_ratio_is_within_zero_and_one(generated in breaker_clusters()) {
        let (clusters, gauges): (Vec<GenCluster>, Vec<GenGauges>) = generated.into_iter().unzip();
        let all = scrape(
            &clusters_text(&clusters),
            &stats_text(&clusters, &gauges),
            r#"{"certificates":[]}"#,
            true,
        );
        let mut ratios = 0;
        for metric in ["circuit_breaker_utilization_ratio", "cluster_healthy_ratio"] {
            for s in samples(&all, metric) {
                ratios += 1;
                prop_assert!(
                    (0.0..=1.0).contains(&s.value),
                    "{} {:?} = {} is outside [0, 1]", metric, s.labels, s.value
                );
            }
        }
        // Every breaker whose threshold is known and positive has a ratio at default priority
        // (from remaining_* when tracked, else from the active gauges, except retries and pools).
        for c in &clusters {
            for (r, resource) in ["connections", "pending_requests", "requests"].iter().enumerate() {
                if c.thresholds[0][r] > 0 {
                    let found = samples(&all, "circuit_breaker_utilization_ratio").any(|s| {
                        s.label("envoy_cluster_name") == c.label()
                            && s.label("priority") == "default"
                            && s.label("resource") == *resource
                    });
                    prop_assert!(found, "no utilization for {} {}", c.stats_name(), resource);
                }
            }
        }
        for s in samples(&all, "circuit_breaker_open") {
            prop_assert!(s.value == 0.0 || s.value == 1.0);
        }
        prop_assert!(ratios > 0 || clusters.iter().all(|c| c.thresholds[0][..3].iter().all(|t| *t == 0)));
    }
}

// ---------------------------------------------------------------------------------------------
// 3. label values round-trip

#[derive(Debug, Clone)]
struct GenCert {
    ca: bool,
    path: String,
    serial: String,
    /// (is an IP SAN, value)
    sans: Vec<(bool, String)>,
    not_after: i64,
}

fn cert() -> impl Strategy<Value = GenCert> {
    (
        any::<bool>(),
        prop_oneof![Just("<inline>".to_string()), any::<String>()],
        prop_oneof!["[0-9a-f]{1,40}", any::<String>()],
        prop::collection::vec((any::<bool>(), any::<String>()), 0..4),
        0i64..4_102_444_800,
    )
        .prop_map(|(ca, path, serial, sans, not_after)| GenCert {
            ca,
            path,
            serial,
            sans,
            not_after,
        })
}

fn certs_json(certs: &[GenCert]) -> String {
    let entry = |c: &GenCert| {
        let sans: Vec<serde_json::Value> = c
            .sans
            .iter()
            .map(|(ip, v)| {
                if *ip {
                    serde_json::json!({ "ip_address": v })
                } else {
                    serde_json::json!({ "dns": v })
                }
            })
            .collect();
        let expiry = time::OffsetDateTime::from_unix_timestamp(c.not_after)
            .unwrap()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap();
        serde_json::json!({
            "path": c.path,
            "serial_number": c.serial,
            "subject_alt_names": sans,
            "days_until_expiration": "1",
            "valid_from": "2026-01-01T00:00:00Z",
            "expiration_time": expiry,
        })
    };
    let contexts: Vec<serde_json::Value> = certs
        .iter()
        .map(|c| {
            if c.ca {
                serde_json::json!({ "ca_cert": [entry(c)], "cert_chain": [] })
            } else {
                serde_json::json!({ "ca_cert": [], "cert_chain": [entry(c)] })
            }
        })
        .collect();
    serde_json::json!({ "certificates": contexts }).to_string()
}

proptest! {
    #[test]
    fn label_values_round_trip_through_a_strict_exposition_reader(
        clusters in clusters(),
        certs in prop::collection::vec(cert(), 0..6),
    ) {
        // Distinct label sets: two certificates with the same labels but different expiry would
        // be two series with one identity (a case Envoy does not produce).
        let mut certs = certs;
        for (i, c) in certs.iter_mut().enumerate() {
            c.serial = format!("{i}-{}", c.serial);
        }
        let all = scrape(&clusters_text(&clusters), "", &certs_json(&certs), true);

        let expected: BTreeSet<String> = clusters.iter().map(GenCluster::label).collect();
        let got: BTreeSet<String> =
            samples(&all, "cluster_hosts").map(|s| s.label("envoy_cluster_name").to_string()).collect();
        prop_assert_eq!(got, expected);
        for c in &clusters {
            let got: BTreeSet<&str> = samples(&all, "host_healthy")
                .filter(|s| s.label("envoy_cluster_name") == c.label())
                .map(|s| s.label("address"))
                .collect();
            let expected: BTreeSet<&str> = c.hosts.iter().map(|h| h.address.as_str()).collect();
            prop_assert_eq!(got, expected);
        }

        let expected: BTreeSet<(String, String, String, String, i64)> = certs
            .iter()
            .map(|c| {
                let dns = c.sans.iter().map(|(_, v)| v.as_str()).collect::<Vec<_>>().join(",");
                let kind = if c.ca { "ca_cert" } else { "cert_chain" };
                (kind.to_string(), c.path.clone(), c.serial.clone(), dns, c.not_after)
            })
            .collect();
        let got: BTreeSet<(String, String, String, String, i64)> =
            samples(&all, "envoy_cert_not_after_timestamp_seconds")
                .map(|s| {
                    (
                        s.label("kind").to_string(),
                        s.label("path").to_string(),
                        s.label("serial").to_string(),
                        s.label("dns_names").to_string(),
                        s.value as i64,
                    )
                })
                .collect();
        prop_assert_eq!(got, expected);
    }
}

// ---------------------------------------------------------------------------------------------
// The reader itself: it must reject what the format does not allow, or the properties prove little.

#[test]
fn the_strict_reader_rejects_malformed_expositions() {
    let ok =
        "# HELP m A \\\\ help\\n.\n# TYPE m gauge\nm{a=\"x\\\"y\\\\z\\nw\",b=\"\"} 1\nm 2.5e-3\n";
    let samples = read_exposition(ok).unwrap();
    assert_eq!(samples[0].labels["a"], "x\"y\\z\nw");
    assert_eq!(samples[1].value, 0.0025);
    for bad in [
        "m{a=\"x\\ty\"} 1\n",     // unknown escape
        "m{a=\"x\"y\"} 1\n",      // unescaped quote
        "m{a=\"x\"} 1",           // no final newline
        "m{a=\"x\",a=\"y\"} 1\n", // label twice
        "m{1a=\"x\"} 1\n",        // bad label name
        "m 1\nm 2\n",             // duplicate series
        "m{a=\"x\"}1\n",          // no space
        "m{a=\"x} 1\n",           // unterminated
        "m one\n",                // bad value
        "0m 1\n",                 // bad metric name
    ] {
        assert!(read_exposition(bad).is_err(), "accepted {bad:?}");
    }
}
