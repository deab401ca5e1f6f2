//! Thin entry point: arguments, settings, logging, then serve (or collect once).

use std::process::ExitCode;

use anyhow::Context;
use envoy_gateway_exporter::{REVISION, VERSION, build_app, config, server, telemetry};

fn main() -> ExitCode {
    let mut once = false;
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--help" | "-h" => {
                print!("{}", config::help_text());
                return ExitCode::SUCCESS;
            }
            "--version" | "-V" => {
                println!("envoy-gateway-exporter {VERSION} (revision {REVISION})");
                return ExitCode::SUCCESS;
            }
            "--once" => once = true,
            other => {
                eprintln!("unknown argument {other:?}; see --help");
                return ExitCode::from(2);
            }
        }
    }
    let config = match config::Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    telemetry::init(config.log_format, &config.log_level);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(run(config, once)) {
        Ok(code) => code,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

/// How long `--once` waits at most for the Secret readers' first round.
const ONCE_SECRET_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

async fn run(config: config::Config, once: bool) -> anyhow::Result<ExitCode> {
    let app = build_app(&config).map_err(anyhow::Error::msg)?;
    envoy_gateway_exporter::spawn_secret_watchers(&config, &app);
    if once {
        if let Some(store) = app.collector.secret_store() {
            // Give the Secret readers their first round (a poll, an initial list).
            let deadline = tokio::time::Instant::now() + ONCE_SECRET_WAIT;
            while !store.first_round_done() && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
        let snapshot = app.collector.collect().await;
        print!("{}", app.metrics.render(&snapshot, app.options, 0));
        return Ok(if snapshot.all_sources_ok() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        });
    }
    let listener = tokio::net::TcpListener::bind(config.listen_address)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} (EXPORTER_LISTEN_ADDRESS)",
                config.listen_address
            )
        })?;
    tracing::info!(
        version = VERSION,
        revision = REVISION,
        "serving http://{}/metrics, Envoy admin {}",
        listener.local_addr()?,
        config.envoy_admin_url.as_deref().unwrap_or("(disabled)")
    );
    server::serve(listener, app, shutdown_signal()).await;
    Ok(ExitCode::SUCCESS)
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
