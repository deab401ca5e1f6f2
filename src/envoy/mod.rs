//! Envoy's admin API: a small client here; the parsers (bytes in, typed snapshot out) live in the
//! `envoy-gateway-exporter-parsers` crate and are re-exported.

pub mod client;

pub use client::{AdminClient, FetchError};
pub use envoy_gateway_exporter_parsers::{
    ParseError, Priority, Resource, certs, clusters, incremental, stats,
};
