//! Envoy admin output at scale, generated line for line like Envoy 1.40 prints it (modelled on
//! tests/fixtures/envoy-1.40 and on what `bench/scale.py --capture` saved from a real Envoy with
//! the same clusters): N clusters named like Envoy Gateway's, 5 hosts each, 19 lines per host in
//! text `/clusters`, thresholds on every cluster, outlier detection on a quarter of them,
//! `track_remaining` breakers on a tenth, and about one host in ten failing or degraded.
//!
//! Shared by `parsers/benches/parse.rs` and the root crate's `benches/render.rs` (`#[path]`).
#![allow(dead_code)]

use std::fmt::Write;

pub const HOSTS_PER_CLUSTER: usize = 5;

/// The cluster sizes the benches run at.
pub const SIZES: [usize; 2] = [1_000, 5_000];

/// [`SIZES`] under `cargo bench`; one small size when `cargo test --all-targets` runs the bench
/// targets once as tests (criterion's test mode, without `--bench`), so `make test` stays quick.
pub fn sizes() -> Vec<usize> {
    if std::env::args().any(|a| a == "--bench") {
        SIZES.to_vec()
    } else {
        vec![100]
    }
}

pub fn cluster_name(i: usize) -> String {
    format!("httproute/team-{:02}/route-{:05}/rule/0", i % 40, i)
}

/// `ip:port` of host `k` of cluster `i` (the same addresses bench/scale.py configures).
pub fn host_address(i: usize, k: usize) -> String {
    format!("127.{}.{}.{}:8080", 1 + (i / 250) % 250, 1 + i % 250, k + 1)
}

/// Health flags of a host as text `/clusters` prints them; 4 hosts in 40 are not healthy.
pub fn host_flags(i: usize, k: usize) -> &'static str {
    match (i * HOSTS_PER_CLUSTER + k) % 40 {
        7 => "/failed_active_hc",
        19 => "/failed_outlier_check",
        23 => "/failed_active_hc/active_hc_timeout",
        31 => "/degraded_active_hc",
        _ => "healthy",
    }
}

fn tracked(i: usize) -> bool {
    i.is_multiple_of(10)
}

/// (default, high) thresholds as `/clusters` prints them: max_connections, max_pending_requests,
/// max_requests, max_retries (Envoy prints its defaults where nothing is configured).
fn thresholds(i: usize) -> [[u64; 4]; 2] {
    let defaults = [1024, 1024, 1024, 3];
    let default = if tracked(i) {
        [2048, 512, 4096, 8]
    } else {
        defaults
    };
    let high = if i.is_multiple_of(20) {
        [4096, 1024, 8192, 3]
    } else {
        defaults
    };
    [default, high]
}

/// Text `/clusters` of N clusters.
pub fn clusters_text(n: usize) -> String {
    let mut out = String::with_capacity(n * 7_600);
    for i in 0..n {
        let c = cluster_name(i);
        writeln!(out, "{c}::observability_name::{c}").unwrap();
        if i % 4 == 1 {
            for key in [
                "success_rate_average",
                "success_rate_ejection_threshold",
                "local_origin_success_rate_average",
                "local_origin_success_rate_ejection_threshold",
            ] {
                writeln!(out, "{c}::outlier::{key}::-1").unwrap();
            }
        }
        for (priority, values) in ["default_priority", "high_priority"]
            .iter()
            .zip(thresholds(i))
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
                writeln!(out, "{c}::{priority}::{key}::{value}").unwrap();
            }
        }
        writeln!(out, "{c}::added_via_api::false").unwrap();
        for k in 0..HOSTS_PER_CLUSTER {
            let a = host_address(i, k);
            let total = (i * 7919 + k * 104_729) % 250_000;
            let errors = total % 97;
            for (key, value) in [
                ("cx_active", (total % 5).to_string()),
                ("cx_connect_fail", (errors % 3).to_string()),
                ("cx_total", (total / 40).to_string()),
                ("rq_active", (total % 3).to_string()),
                ("rq_error", errors.to_string()),
                ("rq_pending_active", "0".to_string()),
                ("rq_success", (total - errors).to_string()),
                ("rq_timeout", (errors % 5).to_string()),
                ("rq_total", total.to_string()),
                ("hostname", String::new()),
                ("health_flags", host_flags(i, k).to_string()),
                ("weight", "1".to_string()),
                ("region", String::new()),
                ("zone", String::new()),
                ("sub_zone", String::new()),
                ("canary", "false".to_string()),
                ("priority", "0".to_string()),
                ("success_rate", "-1".to_string()),
                ("local_origin_success_rate", "-1".to_string()),
            ] {
                writeln!(out, "{c}::{a}::{key}::{value}").unwrap();
            }
        }
    }
    out
}

/// `/stats?usedonly&type=Gauges&filter=<STATS_FILTER>` of N clusters that all carry traffic (so
/// every breaker and active gauge has been written), sorted by name as Envoy prints it.
pub fn stats_text(n: usize) -> String {
    let mut names: Vec<(String, usize)> = (0..n).map(|i| (cluster_name(i), i)).collect();
    names.sort();
    let mut out = String::with_capacity(n * 1_400);
    for (c, i) in names {
        let [default, _] = thresholds(i);
        let active = (i * 31) % 17;
        let mut lines: Vec<(&str, u64)> = vec![
            ("circuit_breakers.default.cx_open", 0),
            ("circuit_breakers.default.cx_pool_open", 0),
            (
                "circuit_breakers.default.rq_open",
                u64::from(i.is_multiple_of(97)),
            ),
            ("circuit_breakers.default.rq_pending_open", 0),
            ("circuit_breakers.default.rq_retry_open", 0),
            ("circuit_breakers.high.cx_pool_open", 0),
            ("upstream_cx_active", active as u64),
            ("upstream_rq_active", (active / 2) as u64),
            ("upstream_rq_pending_active", (active % 2) as u64),
        ];
        if tracked(i) {
            lines.extend([
                (
                    "circuit_breakers.default.remaining_cx",
                    default[0] - active as u64,
                ),
                ("circuit_breakers.default.remaining_cx_pools", u64::MAX),
                ("circuit_breakers.default.remaining_pending", default[1]),
                ("circuit_breakers.default.remaining_retries", default[3]),
                (
                    "circuit_breakers.default.remaining_rq",
                    default[2] - (active / 2) as u64,
                ),
            ]);
        }
        lines.sort();
        for (suffix, value) in lines {
            writeln!(out, "cluster.{c}.{suffix}: {value}").unwrap();
        }
    }
    out
}

/// Number of distinct certificates generated for a gateway of N clusters.
pub fn cert_count(n: usize) -> usize {
    n / 10
}

fn cert_entry(out: &mut String, j: usize, indent: &str) {
    let host = format!("app-{j:04}.example.com");
    let days = 30 + j % 300;
    let day = 1 + j % 28;
    write!(
        out,
        "{indent}{{\n{indent} \"path\": \"\\u003cinline\\u003e\",\n{indent} \"serial_number\": \"{:x}\",\n\
         {indent} \"subject_alt_names\": [\n{indent}  {{\n{indent}   \"dns\": \"{host}\"\n{indent}  }},\n\
         {indent}  {{\n{indent}   \"dns\": \"www.{host}\"\n{indent}  }}\n{indent} ],\n\
         {indent} \"days_until_expiration\": \"{days}\",\n\
         {indent} \"valid_from\": \"2026-11-{day:02}T15:46:49Z\",\n\
         {indent} \"expiration_time\": \"2027-{:02}-{day:02}T15:46:49Z\"\n{indent}}}",
        0x5a3c_0000_7e91_02bbu64 + j as u64 * 0x1_0001,
        1 + (j % 12),
    )
    .unwrap();
}

/// `/certs` of a gateway of N clusters: `cert_count(n)` SDS certificates, each listed by two TLS
/// contexts (as Envoy lists a certificate once per context), plus one CA context; pretty-printed
/// with one-space indentation like Envoy's admin JSON.
pub fn certs_json(n: usize) -> String {
    let m = cert_count(n);
    let mut out = String::with_capacity(m * 1_000);
    out.push_str("{\n \"certificates\": [\n");
    let mut first = true;
    for j in (0..m).chain(0..m) {
        if !first {
            out.push_str(",\n");
        }
        first = false;
        out.push_str("  {\n   \"ca_cert\": [],\n   \"cert_chain\": [\n");
        cert_entry(&mut out, j, "    ");
        out.push_str("\n   ]\n  }");
    }
    out.push_str(",\n  {\n   \"ca_cert\": [\n");
    cert_entry(&mut out, 9_999, "    ");
    out.push_str("\n   ],\n   \"cert_chain\": []\n  }\n ]\n}\n");
    out
}

/// What `bench/scale.py --capture bench/captured` saved for N clusters, if present.
pub fn captured(manifest_dir: &str, n: usize, file: &str) -> Option<Vec<u8>> {
    let path = std::path::Path::new(manifest_dir)
        .join("..")
        .join("bench/captured")
        .join(format!("n{n}"))
        .join(file);
    let root = std::path::Path::new(manifest_dir).join("bench/captured");
    std::fs::read(path)
        .ok()
        .or_else(|| std::fs::read(root.join(format!("n{n}")).join(file)).ok())
}
