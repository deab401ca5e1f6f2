//! The exporter against a real Envoy 1.40 running the demo scenario (demo/envoy.yaml.tmpl).

mod common;

use std::time::Duration;

use common::{Envoy, Exporter, Scrape, Server, demo_certs, eventually};

const BACKEND: &str = "httproute/demo/backend/rule/0";
const SLOW: &str = "httproute/demo/slow/rule/0";
const EMPTY: &str = "httproute/demo/no-endpoints/rule/0";

struct Scenario {
    exporter: Exporter,
    envoy: Envoy,
    certs: common::Certs,
    _backend: Server,
}

async fn scenario() -> Scenario {
    let certs = demo_certs(time::Duration::days(3));
    let envoy = Envoy::start(&certs).await;
    let backend = Server::backend(envoy.ports.backend).await;
    let exporter = Exporter::start(&envoy.admin_url, &[]).await;
    Scenario {
        exporter,
        envoy,
        certs,
        _backend: backend,
    }
}

/// Waits until active health checks have classified the backend cluster's two hosts.
async fn settled(s: &Scenario) -> Scrape {
    eventually(
        Duration::from_secs(20),
        "health checks to mark one backend host down",
        async || {
            let scrape = s.exporter.scrape().await;
            (scrape.get("cluster_healthy_ratio", &[("envoy_cluster_name", BACKEND)]) == Some(0.5))
                .then_some(scrape)
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_with_one_host_down_reports_half_healthy_and_why_the_host_fails() {
    let s = scenario().await;
    let scrape = settled(&s).await;
    let cluster = ("envoy_cluster_name", BACKEND);
    assert_eq!(
        scrape.get("cluster_hosts", &[cluster, ("health", "healthy")]),
        Some(1.0)
    );
    assert_eq!(
        scrape.get("cluster_hosts", &[cluster, ("health", "unhealthy")]),
        Some(1.0)
    );
    assert_eq!(
        scrape.get("cluster_hosts", &[cluster, ("health", "degraded")]),
        Some(0.0)
    );

    let down = format!("127.0.0.1:{}", s.envoy.ports.down);
    let up = format!("127.0.0.1:{}", s.envoy.ports.backend);
    assert_eq!(
        scrape.get("host_healthy", &[cluster, ("address", &down)]),
        Some(0.0)
    );
    assert_eq!(
        scrape.get("host_healthy", &[cluster, ("address", &up)]),
        Some(1.0)
    );
    let reasons: Vec<&str> = scrape
        .all("host_failure", &[cluster, ("address", &down)])
        .iter()
        .map(|s| s.labels["reason"].as_str())
        .collect();
    assert_eq!(reasons, vec!["failed_active_health_check"]);
    assert!(
        scrape
            .all("host_failure", &[cluster, ("address", &up)])
            .is_empty()
    );

    for source in ["stats", "clusters", "certs"] {
        assert_eq!(
            scrape.get("up", &[("source", source)]),
            Some(1.0),
            "{source}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_state_counts_equal_envoys_own_membership_gauges() {
    let s = scenario().await;
    let scrape = settled(&s).await;
    let membership = s
        .envoy
        .gauges(r"^cluster\..+\.membership_(healthy|degraded|total)$")
        .await;
    let mut checked = 0;
    for (stat, value) in &membership {
        let rest = stat.strip_prefix("cluster.").unwrap();
        let (cluster, gauge) = rest.rsplit_once('.').unwrap();
        let ours: f64 = match gauge {
            "membership_healthy" => scrape.get(
                "cluster_hosts",
                &[("envoy_cluster_name", cluster), ("health", "healthy")],
            ),
            "membership_degraded" => scrape.get(
                "cluster_hosts",
                &[("envoy_cluster_name", cluster), ("health", "degraded")],
            ),
            _ => Some(
                scrape
                    .all("cluster_hosts", &[("envoy_cluster_name", cluster)])
                    .iter()
                    .map(|s| s.value)
                    .sum(),
            ),
        }
        .unwrap_or_else(|| panic!("no cluster_hosts for {cluster}"));
        assert_eq!(ours, *value as f64, "{stat}");
        checked += 1;
    }
    // Four clusters, three gauges each; the EDS mix covers every status.
    assert_eq!(checked, 12, "{membership:?}");
    assert_eq!(
        scrape.get(
            "cluster_hosts",
            &[
                ("envoy_cluster_name", "eds-status-mix"),
                ("health", "unhealthy")
            ]
        ),
        Some(3.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_with_no_hosts_has_counts_but_no_ratio() {
    let s = scenario().await;
    let scrape = settled(&s).await;
    assert_eq!(
        scrape.get("cluster_healthy_ratio", &[("envoy_cluster_name", EMPTY)]),
        None
    );
    for health in ["healthy", "degraded", "unhealthy"] {
        assert_eq!(
            scrape.get(
                "cluster_hosts",
                &[("envoy_cluster_name", EMPTY), ("health", health)]
            ),
            Some(0.0)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_thresholds_equal_the_configured_ones_with_envoy_defaults_elsewhere() {
    let s = scenario().await;
    let scrape = s.exporter.scrape().await;
    let threshold = |cluster: &str, priority: &str, resource: &str| {
        scrape.get(
            "circuit_breaker_threshold",
            &[
                ("envoy_cluster_name", cluster),
                ("priority", priority),
                ("resource", resource),
            ],
        )
    };
    assert_eq!(threshold(SLOW, "default", "connections"), Some(2.0));
    assert_eq!(threshold(SLOW, "default", "pending_requests"), Some(1.0));
    assert_eq!(threshold(SLOW, "default", "requests"), Some(3.0));
    assert_eq!(threshold(SLOW, "default", "retries"), Some(1.0));
    assert_eq!(threshold(SLOW, "high", "connections"), Some(20.0));
    assert_eq!(threshold(SLOW, "high", "requests"), Some(30.0));
    assert_eq!(threshold(SLOW, "high", "pending_requests"), Some(1024.0));
    assert_eq!(threshold(SLOW, "high", "retries"), Some(3.0));
    // Unlimited by default: no threshold, no utilization.
    assert_eq!(threshold(SLOW, "default", "connection_pools"), None);
    assert_eq!(threshold(BACKEND, "default", "requests"), Some(1024.0));
    // Nothing configured or reported at high priority for the backend cluster.
    assert!(
        scrape
            .all(
                "circuit_breaker_open",
                &[("envoy_cluster_name", BACKEND), ("priority", "high")]
            )
            .is_empty()
    );
    assert_eq!(
        scrape
            .all(
                "circuit_breaker_open",
                &[("envoy_cluster_name", BACKEND), ("priority", "default")]
            )
            .len(),
        5
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_burst_opens_the_breaker_at_full_utilization_and_pending_requests_drain_after() {
    let s = scenario().await;
    let labels = |resource: &'static str| {
        [
            ("envoy_cluster_name", SLOW),
            ("priority", "default"),
            ("resource", resource),
        ]
    };
    let before = s.exporter.scrape().await;
    assert_eq!(
        before.get("circuit_breaker_open", &labels("connections")),
        Some(0.0)
    );
    assert_eq!(
        before.get("circuit_breaker_utilization_ratio", &labels("connections")),
        Some(0.0)
    );

    // Eight concurrent requests to a backend that takes 2 s, behind max_connections 2 and
    // max_pending_requests 1: both breakers trip while the burst lasts.
    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{}/slow", s.envoy.ports.http);
    // Staggered so each connection is up before the next request needs one.
    let mut burst = Vec::new();
    for _ in 0..8 {
        let request = client.get(&url).send();
        burst.push(tokio::spawn(async move {
            request.await.map(|r| r.status().as_u16())
        }));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let during = eventually(Duration::from_secs(3), "the breakers to open", async || {
        let scrape = s.exporter.scrape().await;
        (scrape.get("circuit_breaker_open", &labels("connections")) == Some(1.0)
            && scrape.get("circuit_breaker_open", &labels("pending_requests")) == Some(1.0))
        .then_some(scrape)
    })
    .await;
    assert_eq!(
        during.get("circuit_breaker_utilization_ratio", &labels("connections")),
        Some(1.0)
    );
    assert_eq!(
        during.get("circuit_breaker_open", &labels("pending_requests")),
        Some(1.0)
    );
    assert_eq!(
        during.get(
            "circuit_breaker_utilization_ratio",
            &labels("pending_requests")
        ),
        Some(1.0)
    );

    let statuses: Vec<u16> = futures_join(burst).await;
    assert!(
        statuses.contains(&503),
        "the breaker must have rejected some requests: {statuses:?}"
    );
    assert!(statuses.contains(&200), "{statuses:?}");

    // Pending requests drain with the burst. The connections breaker stays open: Envoy counts
    // idle keep-alive connections against max_connections, and both are still pooled.
    let after = eventually(
        Duration::from_secs(10),
        "the pending breaker to close again",
        async || {
            let scrape = s.exporter.scrape().await;
            (scrape.get("circuit_breaker_open", &labels("pending_requests")) == Some(0.0))
                .then_some(scrape)
        },
    )
    .await;
    assert_eq!(
        after.get(
            "circuit_breaker_utilization_ratio",
            &labels("pending_requests")
        ),
        Some(0.0)
    );
    assert_eq!(
        after.get("circuit_breaker_utilization_ratio", &labels("requests")),
        Some(0.0)
    );
}

async fn futures_join(handles: Vec<tokio::task::JoinHandle<reqwest::Result<u16>>>) -> Vec<u16> {
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap().unwrap_or(0));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tls_listeners_certificate_shows_its_serial_and_days_remaining_once() {
    let s = scenario().await;
    let scrape = s.exporter.scrape().await;
    let served = scrape.all("envoy_cert_days_remaining", &[("kind", "cert_chain")]);
    // Two listeners serve the same SDS secret: one series.
    assert_eq!(served.len(), 1, "{served:?}");
    let cert = served[0];
    assert_eq!(cert.labels["serial"], s.certs.leaf_serial);
    assert_eq!(cert.labels["path"], "<inline>");
    assert_eq!(
        cert.labels["dns_names"],
        "demo.example.com,www.demo.example.com,127.0.0.1"
    );
    let expected_days =
        (s.certs.leaf_not_after - time::OffsetDateTime::now_utc()).as_seconds_f64() / 86_400.0;
    assert!(
        (cert.value - expected_days).abs() < 0.01,
        "{} vs {expected_days}",
        cert.value
    );
    let not_after = scrape
        .get(
            "envoy_cert_not_after_timestamp_seconds",
            &[("kind", "cert_chain"), ("serial", &s.certs.leaf_serial)],
        )
        .unwrap();
    assert_eq!(not_after, s.certs.leaf_not_after.unix_timestamp() as f64);
    // The client CA of the https listener is reported as a ca_cert.
    assert_eq!(
        scrape
            .all("envoy_cert_days_remaining", &[("kind", "ca_cert")])
            .len(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_scrapes_share_one_collection() {
    let s = scenario().await;
    // A long cache makes the sharing deterministic: every scrape below lands within it.
    let exporter = Exporter::start(&s.envoy.admin_url, &[("EXPORTER_COLLECT_CACHE", "30s")]).await;
    let admin_requests = async || {
        s.envoy
            .gauges(r"^http\.admin\.downstream_rq_total$")
            .await
            .values()
            .sum::<u64>()
    };
    let before = admin_requests().await;
    let scrapes: Vec<_> = (0..20)
        .map(|_| {
            let url = format!("{}/metrics", exporter.url);
            tokio::spawn(async move { reqwest::get(url).await.unwrap().status() })
        })
        .collect();
    for scrape in scrapes {
        assert_eq!(scrape.await.unwrap(), 200);
    }
    let after = admin_requests().await;
    // Three sources fetched once, plus our own stats request counted by the second read.
    assert_eq!(after - before, 3 + 1, "admin requests during 20 scrapes");
}
