//! Parser benchmarks at 1,000 and 5,000 clusters x 5 hosts, on admin output generated like a real
//! Envoy 1.40's (see `support`), and on what `bench/scale.py --capture bench/captured` saved
//! from a real Envoy when that folder exists.
//!
//!     cargo bench -p envoy-gateway-exporter-parsers --bench parse

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use envoy_gateway_exporter_parsers::certs::parse_certs;
use envoy_gateway_exporter_parsers::clusters::parse_clusters;
use envoy_gateway_exporter_parsers::stats::parse_stats;

mod support;

type Parse = fn(&[u8]) -> Result<(), String>;

fn inputs(n: usize) -> [(&'static str, Vec<u8>, Parse); 3] {
    [
        ("stats", support::stats_text(n).into_bytes(), |b| {
            parse_stats(b).map(|_| ()).map_err(|e| e.to_string())
        }),
        ("clusters", support::clusters_text(n).into_bytes(), |b| {
            parse_clusters(b).map(|_| ()).map_err(|e| e.to_string())
        }),
        ("certs", support::certs_json(n).into_bytes(), |b| {
            parse_certs(b).map(|_| ()).map_err(|e| e.to_string())
        }),
    ]
}

fn captured_name(source: &str) -> &'static str {
    match source {
        "stats" => "stats.txt",
        "clusters" => "clusters.txt",
        _ => "certs.json",
    }
}

fn parsers(c: &mut Criterion) {
    for n in support::sizes() {
        for (source, body, parse) in inputs(n) {
            // The generated input must be what the parser accepts, and sized like Envoy's.
            parse(&body).unwrap_or_else(|e| panic!("generated {source} does not parse: {e}"));
            let mut group = c.benchmark_group(format!("parse_{source}"));
            group.throughput(Throughput::Bytes(body.len() as u64));
            group.bench_with_input(BenchmarkId::new("generated", n), &body, |b, body| {
                b.iter(|| parse(black_box(body)))
            });
            if let Some(real) =
                support::captured(env!("CARGO_MANIFEST_DIR"), n, captured_name(source))
            {
                group.throughput(Throughput::Bytes(real.len() as u64));
                group.bench_with_input(BenchmarkId::new("captured", n), &real, |b, body| {
                    b.iter(|| parse(black_box(body)))
                });
            }
            group.finish();
        }
    }
}

criterion_group! {
    name = benches;
    // Modest by default (the machine is shared); override on the command line as usual.
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = parsers
}
criterion_main!(benches);
