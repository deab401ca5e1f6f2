//! Admin API client. Envoy renders admin output on its main thread, so every request asks for as
//! little as possible, has a timeout, and stops reading past a size limit.

use std::time::Duration;

use reqwest::{StatusCode, Url};

use super::ParseError;
use super::incremental::Incremental;
use super::stats::STATS_FILTER;

/// Why one admin request failed. [`FetchError::reason`] is the closed set used in
/// `envoy_gateway_exporter_source_errors_total{reason}`.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("cannot connect to {url}: {detail}")]
    Connect { url: String, detail: String },
    #[error("{url} did not answer within {timeout:?}")]
    Timeout { url: String, timeout: Duration },
    #[error("{url} answered HTTP {status}")]
    HttpStatus { url: String, status: u16 },
    #[error(
        "{url} sent more than {limit} bytes; raise EXPORTER_MAX_RESPONSE_BYTES if this Envoy is that large"
    )]
    TooLarge { url: String, limit: u64 },
    #[error("{url} sent output that is not Envoy's format: {source}")]
    Parse { url: String, source: ParseError },
    #[error("reading {url} failed: {detail}")]
    Io { url: String, detail: String },
}

impl FetchError {
    pub fn reason(&self) -> &'static str {
        match self {
            FetchError::Connect { .. } => "connect",
            FetchError::Timeout { .. } => "timeout",
            FetchError::HttpStatus { .. } => "http_status",
            FetchError::TooLarge { .. } => "too_large",
            FetchError::Parse { .. } => "parse",
            FetchError::Io { .. } => "io",
        }
    }
}

/// Every reason an admin fetch can fail with, so counters can start at zero.
pub const FETCH_ERROR_REASONS: [&str; 6] = [
    "connect",
    "timeout",
    "http_status",
    "too_large",
    "parse",
    "io",
];

/// The admin endpoints the exporter reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Stats,
    Clusters,
    Certs,
}

#[derive(Debug, Clone)]
pub struct AdminClient {
    http: reqwest::Client,
    /// Indexed by [`Endpoint`].
    urls: [Url; 3],
    timeout: Duration,
    max_bytes: u64,
}

impl AdminClient {
    /// `base` is an `http://host:port` URL (validated by the config layer).
    pub fn new(base: &str, timeout: Duration, max_bytes: u64) -> Result<AdminClient, String> {
        let base = Url::parse(base).map_err(|e| format!("admin URL {base:?}: {e}"))?;
        let mut stats_url = base.join("/stats").map_err(|e| e.to_string())?;
        // usedonly: gauges never written are left out (absent means 0), a quarter of the bytes.
        stats_url
            .query_pairs_mut()
            .append_pair("usedonly", "")
            .append_pair("type", "Gauges")
            .append_pair("filter", STATS_FILTER);
        let clusters_url = base.join("/clusters").map_err(|e| e.to_string())?;
        let certs_url = base.join("/certs").map_err(|e| e.to_string())?;
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(timeout)
            .connect_timeout(timeout)
            .pool_max_idle_per_host(3)
            .user_agent(concat!(
                "envoy-gateway-exporter/",
                env!("CARGO_PKG_VERSION")
            ))
            .build()
            .map_err(|e| e.to_string())?;
        Ok(AdminClient {
            http,
            urls: [stats_url, clusters_url, certs_url],
            timeout,
            max_bytes,
        })
    }

    pub fn url(&self, endpoint: Endpoint) -> &Url {
        &self.urls[endpoint as usize]
    }

    /// Fetches one endpoint, parsing the body as it arrives: the body is never held whole
    /// (text `/clusters` is ~40 MB at 5,000 clusters), and garbage stops the read at its first
    /// line. The size limit counts every byte received.
    pub async fn fetch<P: Incremental>(
        &self,
        endpoint: Endpoint,
        mut parser: P,
    ) -> Result<P::Output, FetchError> {
        let url = self.url(endpoint);
        let shown = || url.as_str().to_string();
        let map_err = |e: reqwest::Error| {
            if e.is_timeout() {
                FetchError::Timeout {
                    url: shown(),
                    timeout: self.timeout,
                }
            } else if e.is_connect() {
                FetchError::Connect {
                    url: shown(),
                    detail: innermost(&e),
                }
            } else {
                FetchError::Io {
                    url: shown(),
                    detail: innermost(&e),
                }
            }
        };
        let parse_error = |source: ParseError| FetchError::Parse {
            url: shown(),
            source,
        };
        let mut response = self.http.get(url.clone()).send().await.map_err(map_err)?;
        if response.status() != StatusCode::OK {
            return Err(FetchError::HttpStatus {
                url: shown(),
                status: response.status().as_u16(),
            });
        }
        let too_large = || FetchError::TooLarge {
            url: shown(),
            limit: self.max_bytes,
        };
        if response
            .content_length()
            .is_some_and(|n| n > self.max_bytes)
        {
            return Err(too_large());
        }
        let mut received: u64 = 0;
        while let Some(chunk) = response.chunk().await.map_err(map_err)? {
            received += chunk.len() as u64;
            if received > self.max_bytes {
                return Err(too_large());
            }
            parser.feed(&chunk).map_err(parse_error)?;
        }
        parser.finish().map_err(parse_error)
    }
}

/// The root cause's message (reqwest wraps hyper wraps io), which is what an operator can act on.
fn innermost(e: &(dyn std::error::Error + 'static)) -> String {
    let mut current = e;
    while let Some(next) = current.source() {
        current = next;
    }
    current.to_string()
}
