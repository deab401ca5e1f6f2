//! A down, garbage-speaking, stalling or flooding Envoy: `/metrics` still answers 200 in time,
//! reports the failure per source and reason, memory stays bounded, and the exporter recovers.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{Exporter, Scrape, Server, free_port};
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const ENVOY_SOURCES: [&str; 3] = ["stats", "clusters", "certs"];

fn assert_all_down_with(scrape: &Scrape, reason: &str) {
    for source in ENVOY_SOURCES {
        assert_eq!(
            scrape.get("up", &[("source", source)]),
            Some(0.0),
            "up{{source={source}}}"
        );
        let errors = scrape
            .get(
                "source_errors_total",
                &[("source", source), ("reason", reason)],
            )
            .unwrap_or_default();
        assert!(errors >= 1.0, "{source} has no {reason} error counted");
    }
    // The exporter's own health is still there.
    assert_eq!(scrape.all("build_info", &[]).len(), 1);
}

/// A raw TCP peer: reads the request head, then runs `respond` on the socket.
async fn raw_server<F, Fut>(respond: F) -> (u16, tokio::task::JoinHandle<()>)
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let respond = respond.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                respond(stream).await;
            });
        }
    });
    (port, task)
}

fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_down_still_answers_200_with_up_0_and_connect_errors() {
    let closed = free_port();
    let mut exporter = Exporter::start(&format!("http://127.0.0.1:{closed}"), &[]).await;
    let scrape = exporter.scrape().await;
    assert_all_down_with(&scrape, "connect");
    // Every reason starts at zero so rate() works from the first failure on.
    assert_eq!(
        scrape.get(
            "source_errors_total",
            &[("source", "certs"), ("reason", "too_large")]
        ),
        Some(0.0)
    );
    assert!(scrape.all("cluster_hosts", &[]).is_empty());
    assert!(exporter.is_running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_answering_garbage_is_a_parse_error() {
    let server = Server::start(0, |_path: String| async {
        hyper::Response::new(Full::new(Bytes::from_static(
            b"<html><body><h1>502 Bad Gateway</h1></body></html>\n",
        )))
    })
    .await;
    let mut exporter = Exporter::start(&format!("http://{}", server.addr), &[]).await;
    assert_all_down_with(&exporter.scrape().await, "parse");
    assert!(exporter.is_running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_status_is_counted_as_http_status() {
    let server = Server::start(0, |_path: String| async {
        let mut r = hyper::Response::new(Full::new(Bytes::from_static(b"overloaded\n")));
        *r.status_mut() = hyper::StatusCode::SERVICE_UNAVAILABLE;
        r
    })
    .await;
    let exporter = Exporter::start(&format!("http://{}", server.addr), &[]).await;
    assert_all_down_with(&exporter.scrape().await, "http_status");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_never_finishes_times_out_and_the_scrape_still_answers() {
    let (port, _server) = raw_server(|mut stream| async move {
        let _ = stream
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
            .await;
        // Hold the connection open without sending the rest.
        tokio::time::sleep(Duration::from_secs(60)).await;
    })
    .await;
    let mut exporter = Exporter::start(
        &format!("http://127.0.0.1:{port}"),
        &[("EXPORTER_ADMIN_TIMEOUT", "1s")],
    )
    .await;
    // Exporter::scrape allows 10 s, Prometheus's default scrape timeout.
    assert_all_down_with(&exporter.scrape().await, "timeout");
    assert!(exporter.is_running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_far_over_the_limit_is_abandoned_and_memory_stays_bounded() {
    // An endless chunked body: 64 KiB chunks until the exporter hangs up (at most 1 GiB).
    let (port, _server) = raw_server(|mut stream| async move {
        if stream
            .write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            .await
            .is_err()
        {
            return;
        }
        let chunk = vec![b'x'; 64 * 1024];
        for _ in 0..16 * 1024 {
            let mut frame = format!("{:x}\r\n", chunk.len()).into_bytes();
            frame.extend_from_slice(&chunk);
            frame.extend_from_slice(b"\r\n");
            if stream.write_all(&frame).await.is_err() {
                return;
            }
        }
    })
    .await;
    let mut exporter = Exporter::start(
        &format!("http://127.0.0.1:{port}"),
        &[("EXPORTER_MAX_RESPONSE_BYTES", "1048576")],
    )
    .await;
    for _ in 0..5 {
        assert_all_down_with(&exporter.scrape().await, "too_large");
    }
    let peak_kib = peak_rss_kib(exporter.pid());
    assert!(
        peak_kib < 48 * 1024,
        "peak RSS {peak_kib} KiB for a 1 MiB limit"
    );
    assert!(exporter.is_running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_length_over_the_limit_is_refused_before_reading() {
    let (port, _server) = raw_server(|mut stream| async move {
        let _ = stream
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 10000000000\r\n\r\n")
            .await;
        tokio::time::sleep(Duration::from_secs(60)).await;
    })
    .await;
    let exporter = Exporter::start(
        &format!("http://127.0.0.1:{port}"),
        &[("EXPORTER_ADMIN_TIMEOUT", "30s")],
    )
    .await;
    // With a 30 s timeout, only the early refusal can make this scrape answer within 10 s.
    assert_all_down_with(&exporter.scrape().await, "too_large");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_exporter_recovers_when_envoy_comes_back() {
    let port = free_port();
    let mut exporter = Exporter::start(&format!("http://127.0.0.1:{port}"), &[]).await;
    assert_all_down_with(&exporter.scrape().await, "connect");

    let _envoy = Server::admin_fixtures(port, "tests/fixtures/envoy-1.40").await;
    let scrape = exporter.scrape().await;
    for source in ENVOY_SOURCES {
        assert_eq!(
            scrape.get("up", &[("source", source)]),
            Some(1.0),
            "{source}"
        );
    }
    assert!(!scrape.all("cluster_hosts", &[]).is_empty());
    // The failures stay counted.
    assert!(
        scrape
            .get(
                "source_errors_total",
                &[("source", "stats"), ("reason", "connect")]
            )
            .unwrap()
            >= 1.0
    );
    assert!(exporter.is_running());
}

/// A scrape whose client gives up (Prometheus's scrape timeout) must not cancel the collection
/// it started: the next scrape shares it instead of asking Envoy again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrape_that_gives_up_does_not_cancel_the_collection_it_started() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    let requests = Arc::new(AtomicUsize::new(0));
    let fixtures = common::repo_path("tests/fixtures/envoy-1.40");
    let counted = requests.clone();
    let slow_envoy = Server::start(0, move |path: String| {
        let counted = counted.clone();
        let fixtures = fixtures.clone();
        async move {
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(800)).await;
            common::admin_fixture_response(&fixtures, &path)
        }
    })
    .await;
    let exporter = Exporter::start(
        &format!("http://{}", slow_envoy.addr),
        &[("EXPORTER_COLLECT_CACHE", "30s")],
    )
    .await;
    let impatient = reqwest::Client::new()
        .get(format!("{}/metrics", exporter.url))
        .timeout(Duration::from_millis(200))
        .send()
        .await;
    assert!(
        impatient.is_err(),
        "the first scrape should have timed out on the client side"
    );
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let scrape = exporter.scrape().await;
    for source in ENVOY_SOURCES {
        assert_eq!(
            scrape.get("up", &[("source", source)]),
            Some(1.0),
            "{source}"
        );
    }
    assert_eq!(
        requests.load(Ordering::SeqCst),
        3,
        "one admin request per source in all"
    );
}
