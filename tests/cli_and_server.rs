//! The binary's command line, its start-up validation, and the HTTP surface.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use common::{EXPORTER, Exporter, free_port};

fn exporter(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut command = Command::new(EXPORTER);
    command.args(args).env_clear();
    for (k, v) in env {
        command.env(k, v);
    }
    command.output().unwrap()
}

#[test]
fn help_lists_every_setting_and_version_names_the_revision() {
    let help = exporter(&["--help"], &[]);
    assert!(help.status.success());
    let text = String::from_utf8(help.stdout).unwrap();
    for setting in envoy_gateway_exporter::config::SETTINGS {
        assert!(text.contains(setting.name), "--help lacks {}", setting.name);
    }
    assert!(text.contains("--once"));

    let version = exporter(&["--version"], &[]);
    let text = String::from_utf8(version.stdout).unwrap();
    assert!(text.starts_with(&format!(
        "envoy-gateway-exporter {}",
        env!("CARGO_PKG_VERSION")
    )));
    assert!(text.contains("revision "));
}

#[test]
fn a_wrong_setting_stops_start_up_with_one_line_naming_it() {
    let out = exporter(&[], &[("EXPORTER_LISTEN_ADDRESS", "everywhere")]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("invalid EXPORTER_LISTEN_ADDRESS=\"everywhere\": expected ip:port"),
        "{stderr}"
    );

    let out = exporter(&[], &[("EXPORTER_HOST_METRIC", "false")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8(out.stderr)
            .unwrap()
            .contains("unknown setting EXPORTER_HOST_METRIC")
    );

    let out = exporter(&["--verbose"], &[]);
    assert_eq!(out.status.code(), Some(2));
}

/// Sends a raw request and returns the status line and headers.
fn raw(url: &str, request: &str) -> String {
    let addr = url.trim_start_matches("http://");
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_answer_and_other_paths_and_methods_are_refused() {
    let exporter = Exporter::start("", &[]).await;
    let client = reqwest::Client::new();
    let get = |path: &str| client.get(format!("{}{path}", exporter.url)).send();

    let metrics = get("/metrics").await.unwrap();
    assert_eq!(metrics.status(), 200);
    assert_eq!(
        metrics.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let body = metrics.text().await.unwrap();
    assert!(body.contains("envoy_gateway_exporter_build_info{"));
    assert!(body.contains("process_resident_memory_bytes"));
    // Envoy collection disabled: no Envoy sources at all.
    assert!(!body.contains("envoy_gateway_exporter_up{"));

    for path in ["/healthz", "/readyz"] {
        assert_eq!(get(path).await.unwrap().status(), 200, "{path}");
    }
    let landing = get("/").await.unwrap();
    assert_eq!(landing.status(), 200);
    assert!(landing.text().await.unwrap().contains("href=\"/metrics\""));
    assert_eq!(get("/stats").await.unwrap().status(), 404);

    let post = client
        .post(format!("{}/metrics", exporter.url))
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), 405);
    assert_eq!(post.headers()["allow"], "GET, HEAD");

    let head = client
        .head(format!("{}/metrics", exporter.url))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_finishes_its_headers_is_cut_off_and_others_are_served() {
    let exporter = Exporter::start("", &[]).await;
    let addr = exporter.url.trim_start_matches("http://").to_string();
    // Slowloris: half a request, then silence.
    let mut slow = TcpStream::connect(&addr).unwrap();
    slow.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    // Others are served meanwhile.
    let ok = raw(
        &exporter.url,
        "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    // The header read timeout closes the slow connection.
    slow.set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let mut buf = Vec::new();
    let read = slow.read_to_end(&mut buf);
    assert!(
        read.is_ok(),
        "the server should close the connection, got {read:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_server_cleanly() {
    let port = free_port();
    let mut child = Command::new(EXPORTER)
        .env_clear()
        .env("EXPORTER_ENVOY_ADMIN_URL", "")
        .env("EXPORTER_LISTEN_ADDRESS", format!("127.0.0.1:{port}"))
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}/healthz");
    common::eventually(
        Duration::from_secs(10),
        "the exporter to start",
        async || reqwest::get(&url).await.ok().map(|_| ()),
    )
    .await;
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = common::eventually(
        Duration::from_secs(10),
        "the exporter to exit",
        async || child.try_wait().unwrap(),
    )
    .await;
    assert!(exit.success(), "{exit:?}");
}

/// The README's settings table is the user's reference: same names, same defaults as the binary.
#[test]
fn the_readme_settings_table_matches_the_binary() {
    let readme = std::fs::read_to_string(common::repo_path("README.md")).unwrap();
    let rows: Vec<(String, String)> = readme
        .lines()
        .filter(|l| l.starts_with("| `EXPORTER_"))
        .map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            let default = cells[2].trim_matches('`');
            let default = if default == "(empty)" { "" } else { default };
            (cells[1].trim_matches('`').to_string(), default.to_string())
        })
        .collect();
    let expected: Vec<(String, String)> = envoy_gateway_exporter::config::SETTINGS
        .iter()
        .map(|s| (s.name.to_string(), s.default.to_string()))
        .collect();
    assert_eq!(rows, expected);
}

/// Every metric the exporter publishes is documented in the README's metrics table, and the table
/// names nothing the exporter does not publish.
#[test]
fn the_readme_metrics_table_matches_the_golden_output() {
    let readme = std::fs::read_to_string(common::repo_path("README.md")).unwrap();
    let documented: std::collections::BTreeSet<String> = readme
        .lines()
        .skip_while(|l| !l.starts_with("## Metrics"))
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .map(|name| format!("envoy_gateway_exporter_{name}"))
        .collect();
    let golden = std::fs::read_to_string(common::repo_path("tests/golden/metrics.txt")).unwrap();
    let mut published: std::collections::BTreeSet<String> = golden
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .map(str::to_string)
        .collect();
    // Gateway mode only; its output is checked in tests/secrets_kube.rs.
    published.insert("envoy_gateway_exporter_secret_listener_info".to_string());
    assert_eq!(documented, published);
}
