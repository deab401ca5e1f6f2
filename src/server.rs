//! The HTTP server: `/metrics`, `/healthz`, `/readyz` and a landing page; GET and HEAD only.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{Mutex, Semaphore};

use crate::collect::Collector;
use crate::collect::Snapshot;
use crate::metrics::{CONTENT_TYPE, DeriveOptions, ExporterMetrics};

/// A client must send its request headers within this time (slowloris guard).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once; more wait in the accept queue.
const MAX_CONNECTIONS: usize = 64;
/// How long shutdown waits for in-flight scrapes.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

const LANDING_PAGE: &str = "<!doctype html>\n<html><head><title>envoy-gateway-exporter</title></head>\n<body><h1>envoy-gateway-exporter</h1>\n<p><a href=\"/metrics\">Metrics</a> &middot; <a href=\"/healthz\">healthz</a> &middot; <a href=\"/readyz\">readyz</a></p>\n</body></html>\n";

/// What the handlers share.
pub struct App {
    pub collector: Collector,
    pub metrics: ExporterMetrics,
    pub options: DeriveOptions,
    /// The body rendered from the latest collection, shared by the scrapes that share it: 50
    /// concurrent scrapes of a large Envoy hold one body, not 50.
    rendered: Mutex<Option<(Arc<Snapshot>, Bytes)>>,
}

impl App {
    pub fn new(collector: Collector, metrics: ExporterMetrics, options: DeriveOptions) -> App {
        App {
            collector,
            metrics,
            options,
            rendered: Mutex::new(None),
        }
    }

    /// One scrape: a (possibly shared) collection rendered in the text format.
    pub async fn scrape(&self) -> Bytes {
        let snapshot = self.collector.snapshot().await;
        let mut rendered = self.rendered.lock().await;
        if let Some((of, body)) = rendered.as_ref()
            && Arc::ptr_eq(of, &snapshot)
        {
            return body.clone();
        }
        let hint = rendered
            .as_ref()
            .map_or(0, |(_, body)| body.len() + body.len() / 8);
        // Drop the previous body before building the next one.
        *rendered = None;
        let body = Bytes::from(self.metrics.render(&snapshot, self.options, hint));
        *rendered = Some((snapshot, body.clone()));
        body
    }
}

/// Serves until `shutdown` completes, then lets in-flight requests finish (up to a grace period).
pub async fn serve(listener: TcpListener, app: Arc<App>, shutdown: impl Future<Output = ()>) {
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .keep_alive(true);
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            permit = slots.clone().acquire_owned() => permit.expect("semaphore never closed"),
            _ = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let app = app.clone();
        let service = service_fn(move |request| {
            let app = app.clone();
            async move { Ok::<_, Infallible>(handle(&app, request).await) }
        });
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%peer, "connection ended: {e}");
            }
            drop(permit);
        });
    }
    tracing::info!("shutting down");
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after {SHUTDOWN_GRACE:?}; closing them");
    }
}

async fn handle(app: &App, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = request.uri().path();
    if !matches!(path, "/" | "/metrics" | "/healthz" | "/readyz") {
        return plain(StatusCode::NOT_FOUND, "not found\n");
    }
    let head = match *request.method() {
        Method::GET => false,
        Method::HEAD => true,
        _ => {
            let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
            response
                .headers_mut()
                .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
            return response;
        }
    };
    match path {
        // HEAD answers without collecting: a probe must not cost Envoy anything.
        "/metrics" if head => respond(StatusCode::OK, CONTENT_TYPE, Bytes::new()),
        "/metrics" => respond(StatusCode::OK, CONTENT_TYPE, app.scrape().await),
        "/" => respond(
            StatusCode::OK,
            "text/html; charset=utf-8",
            Bytes::from_static(LANDING_PAGE.as_bytes()),
        ),
        // Readiness must not follow Envoy's health: the exporter shares the pod with Envoy, and
        // a not-ready sidecar would take the gateway out of its Service.
        _ => plain(StatusCode::OK, "ok\n"),
    }
}

fn plain(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    respond(
        status,
        "text/plain; charset=utf-8",
        Bytes::from_static(body.as_bytes()),
    )
}

fn respond(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response
}
