//! The whole `/metrics` output for a fixed scenario (admin output captured from a real Envoy),
//! compared with tests/golden/metrics.txt and checked by `promtool check metrics`.
//! Regenerate after an intended change with `UPDATE_GOLDEN=1 cargo test --test golden`.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::{Exporter, Server, promtool_bin};

/// Values that change from run to run (time, process, build) are replaced by placeholders.
fn mask(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        if line.starts_with("process_")
            || line.starts_with("# HELP process_")
            || line.starts_with("# TYPE process_")
        {
            continue;
        }
        let masked = if line.starts_with("envoy_gateway_exporter_build_info{") {
            "envoy_gateway_exporter_build_info{version=\"<version>\",revision=\"<revision>\"} 1"
                .to_string()
        } else if !line.starts_with('#')
            && (line.contains("_source_duration_seconds{") || line.contains("_days_remaining{"))
        {
            let (series, _) = line.rsplit_once(' ').unwrap();
            format!("{series} <varies>")
        } else {
            line.to_string()
        };
        out.push_str(&masked);
        out.push('\n');
    }
    out
}

fn promtool_check_metrics(text: &str) {
    let mut child = Command::new(promtool_bin())
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    // SPEC.md fixes the `*_days_remaining` names, which promtool's unit lint would spell in
    // seconds (the `*_not_after_timestamp_seconds` twins are there for that). That is the one
    // finding accepted; a parse error (exit 1) or any other lint fails.
    let accepted =
        |line: &str| line.contains("_days_remaining use base unit \"seconds\" instead of \"days\"");
    let findings: Vec<&str> = report
        .lines()
        .filter(|l| !l.trim().is_empty() && !accepted(l))
        .collect();
    let exit_ok =
        output.status.success() || (output.status.code() == Some(3) && !report.is_empty());
    assert!(
        exit_ok && findings.is_empty(),
        "promtool check metrics ({}):\n{report}",
        output.status
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_metrics_output_matches_the_golden_file_and_passes_promtool() {
    let envoy = Server::admin_fixtures(0, "tests/fixtures/envoy-1.40").await;
    let mounts = common::repo_path("tests/fixtures/secret-mounts");
    let dirs = format!(
        "golden/site-tls={},{}",
        mounts.join("site-tls").display(),
        mounts.join("broken-tls").display()
    );
    let exporter = Exporter::start(
        &format!("http://{}", envoy.addr),
        &[("EXPORTER_SECRET_DIRS", &dirs)],
    )
    .await;
    let scrape = common::eventually(
        std::time::Duration::from_secs(10),
        "the mounts to be read",
        async || {
            let scrape = exporter.scrape().await;
            (scrape.all("secret_valid", &[]).len() == 2).then_some(scrape)
        },
    )
    .await;
    promtool_check_metrics(&scrape.text);

    let actual = mask(&scrape.text);
    let golden = common::repo_path("tests/golden/metrics.txt");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&golden, &actual).unwrap();
    }
    let expected = std::fs::read_to_string(&golden)
        .expect("tests/golden/metrics.txt (UPDATE_GOLDEN=1 writes it)");
    if actual != expected {
        let diff: Vec<String> = diff_lines(&expected, &actual);
        panic!(
            "/metrics differs from tests/golden/metrics.txt (UPDATE_GOLDEN=1 to accept):\n{}",
            diff.join("\n")
        );
    }
}

fn diff_lines(expected: &str, actual: &str) -> Vec<String> {
    let e: std::collections::BTreeSet<&str> = expected.lines().collect();
    let a: std::collections::BTreeSet<&str> = actual.lines().collect();
    e.difference(&a)
        .map(|l| format!("- {l}"))
        .chain(a.difference(&e).map(|l| format!("+ {l}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn label_values_with_quotes_backslashes_and_newlines_stay_valid() {
    let envoy = Server::admin_fixtures(0, "tests/fixtures/escaping").await;
    let exporter = Exporter::start(&format!("http://{}", envoy.addr), &[]).await;
    let scrape = exporter.scrape().await;
    promtool_check_metrics(&scrape.text);

    let cluster = r#"quote"and\back"#;
    assert_eq!(
        scrape.get(
            "host_failure",
            &[
                ("envoy_cluster_name", cluster),
                ("reason", "failed_outlier_check")
            ]
        ),
        Some(1.0)
    );
    assert_eq!(
        scrape.get(
            "circuit_breaker_utilization_ratio",
            &[
                ("envoy_cluster_name", cluster),
                ("priority", "default"),
                ("resource", "requests")
            ]
        ),
        Some(1.0)
    );
    let certs = scrape.all("envoy_cert_not_after_timestamp_seconds", &[]);
    assert_eq!(certs.len(), 1);
    assert_eq!(certs[0].labels["path"], "C:\\certs\\\"new\"\nline");
    assert_eq!(certs[0].labels["dns_names"], "a\"b.example.com");
}

#[test]
fn one_shot_mode_prints_one_collection_and_exits_by_source_health() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let envoy = runtime.block_on(Server::admin_fixtures(0, "tests/fixtures/envoy-1.40"));
    let run = |admin: String| {
        Command::new(common::EXPORTER)
            .arg("--once")
            .env_clear()
            .env("EXPORTER_ENVOY_ADMIN_URL", admin)
            .output()
            .unwrap()
    };
    let ok = run(format!("http://{}", envoy.addr));
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let text = String::from_utf8(ok.stdout).unwrap();
    assert!(text.contains("envoy_gateway_exporter_up{source=\"clusters\"} 1"));
    assert!(text.contains("envoy_gateway_exporter_cluster_healthy_ratio{"));

    let down = run(format!("http://127.0.0.1:{}", common::free_port()));
    assert_eq!(down.status.code(), Some(1));
    let text = String::from_utf8(down.stdout).unwrap();
    assert!(text.contains("envoy_gateway_exporter_up{source=\"stats\"} 0"));
    let log = String::from_utf8(down.stderr).unwrap();
    assert!(
        log.contains("source failed") && log.contains("cannot connect"),
        "{log}"
    );
}
