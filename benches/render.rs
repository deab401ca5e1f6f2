//! Derivation and rendering benchmarks at 1,000 and 5,000 clusters x 5 hosts: a `Snapshot` built
//! from admin output generated like a real Envoy 1.40's (parsers/benches/support), then what
//! `App::scrape` does with it (`ExporterMetrics::render`: derive straight to text), the whole CPU
//! work of one uncached scrape (parse the three bodies + render), and, for comparison, the
//! prometheus crate's model (`metrics::derive` + `metrics::encode`). Before timing, it
//! prints where the heap goes (a counting global allocator: peak and retained bytes of each step).
//!
//!     cargo bench --bench render

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use envoy_gateway_exporter::collect::{EnvoySnapshot, Snapshot, Sourced};
use envoy_gateway_exporter::envoy::certs::parse_certs;
use envoy_gateway_exporter::envoy::clusters::parse_clusters;
use envoy_gateway_exporter::envoy::stats::parse_stats;
use envoy_gateway_exporter::metrics::{DeriveOptions, ExporterMetrics, derive, encode};

#[path = "../parsers/benches/support/mod.rs"]
mod support;

/// The system allocator, counting live heap bytes and their high-water mark.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(by: usize) {
    let now = LIVE.fetch_add(by, Ordering::Relaxed) + by;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

// SAFETY: every call is forwarded to `System` unchanged; only counters are updated.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            // Counted as alloc-then-free: a moving realloc briefly holds both blocks.
            grew(new_size);
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Runs `f`; returns its output, the heap it left allocated and its peak above the start.
fn heap<T>(f: impl FnOnce() -> T) -> (T, usize, usize) {
    let start = LIVE.load(Ordering::Relaxed);
    PEAK.store(start, Ordering::Relaxed);
    let out = f();
    let retained = LIVE.load(Ordering::Relaxed).saturating_sub(start);
    let peak = PEAK.load(Ordering::Relaxed) - start;
    (out, retained, peak)
}

fn mib(bytes: usize) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// Where the heap of one uncached scrape goes, step by step (printed, not timed).
fn heap_report(n: usize, metrics: &ExporterMetrics, options: DeriveOptions) {
    let (bodies, _, _) = heap(|| Bodies::generated(n));
    let sizes = [
        bodies.stats.len(),
        bodies.clusters.len(),
        bodies.certs.len(),
    ];
    let (stats, stats_kept, stats_peak) = heap(|| parse_stats(&bodies.stats).unwrap());
    let (clusters, clusters_kept, clusters_peak) =
        heap(|| parse_clusters(&bodies.clusters).unwrap());
    let (certs, certs_kept, _) = heap(|| parse_certs(&bodies.certs).unwrap());
    let envoy = EnvoySnapshot {
        stats: Sourced {
            result: Ok(stats),
            duration: Duration::ZERO,
        },
        clusters: Sourced {
            result: Ok(clusters),
            duration: Duration::ZERO,
        },
        certs: Sourced {
            result: Ok(certs),
            duration: Duration::ZERO,
        },
    };
    let snapshot = Snapshot::new(Some(envoy), None, SystemTime::now());
    let (text, text_kept, render_peak) = heap(|| metrics.render(&snapshot, options, 0));
    let (families, families_kept, derive_peak) = heap(|| derive(&snapshot, options));
    eprintln!(
        "heap at {n} clusters: admin bodies {} (stats {}, clusters {}, certs {}); \
         parse_stats peak {} kept {}; parse_clusters peak {} kept {}; parse_certs kept {}; \
         render (the scrape path) peak {} kept {} ({} bytes of text); \
         bodies + snapshot + text = {}; for comparison metrics::derive (prometheus crate model) \
         peak {} kept {} ({} families)",
        mib(sizes.iter().sum()),
        mib(sizes[0]),
        mib(sizes[1]),
        mib(sizes[2]),
        mib(stats_peak),
        mib(stats_kept),
        mib(clusters_peak),
        mib(clusters_kept),
        mib(certs_kept),
        mib(render_peak),
        mib(text_kept),
        text.len(),
        mib(sizes.iter().sum::<usize>() + stats_kept + clusters_kept + certs_kept + text_kept),
        mib(derive_peak),
        mib(families_kept),
        families.len(),
    );
}

struct Bodies {
    stats: Vec<u8>,
    clusters: Vec<u8>,
    certs: Vec<u8>,
}

impl Bodies {
    fn generated(n: usize) -> Bodies {
        Bodies {
            stats: support::stats_text(n).into_bytes(),
            clusters: support::clusters_text(n).into_bytes(),
            certs: support::certs_json(n).into_bytes(),
        }
    }

    fn snapshot(&self) -> Snapshot {
        let took = Duration::from_millis(1);
        let envoy = EnvoySnapshot {
            stats: Sourced {
                result: Ok(parse_stats(&self.stats).expect("stats parse")),
                duration: took,
            },
            clusters: Sourced {
                result: Ok(parse_clusters(&self.clusters).expect("clusters parse")),
                duration: took,
            },
            certs: Sourced {
                result: Ok(parse_certs(&self.certs).expect("certs parse")),
                duration: took,
            },
        };
        Snapshot::new(Some(envoy), None, SystemTime::now())
    }
}

fn render(c: &mut Criterion) {
    let options = DeriveOptions { host_metrics: true };
    let metrics = ExporterMetrics::new("bench", "bench");
    for n in support::sizes() {
        heap_report(n, &metrics, options);
        let bodies = Bodies::generated(n);
        let snapshot = bodies.snapshot();
        let text = metrics.render(&snapshot, options, 0);
        let series = text
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .count();
        eprintln!(
            "{n} clusters: {series} series, {} bytes of /metrics",
            text.len()
        );

        let mut group = c.benchmark_group("scrape");
        group.throughput(Throughput::Elements(series as u64));
        // What App::scrape does with a fresh collection: derive straight to text.
        group.bench_with_input(BenchmarkId::new("render", n), &snapshot, |b, s| {
            b.iter(|| metrics.render(black_box(s), options, text.len()))
        });
        // The whole CPU work of one uncached scrape after the bytes arrived.
        group.bench_with_input(BenchmarkId::new("parse+render", n), &bodies, |b, bodies| {
            b.iter(|| metrics.render(&black_box(bodies).snapshot(), options, text.len()))
        });
        // The prometheus crate's model (metrics::derive + encode), for comparison.
        group.bench_with_input(BenchmarkId::new("derive+encode", n), &snapshot, |b, s| {
            b.iter(|| encode(&derive(black_box(s), options)))
        });
        group.finish();
    }
}

criterion_group! {
    name = benches;
    // Modest by default (the machine is shared); override on the command line as usual.
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = render
}
criterion_main!(benches);
