//! Parser for Envoy's `/certs` JSON.
//!
//! The same certificate is listed once per TLS context that uses it; the snapshot keeps each
//! distinct (kind, path, serial, SANs) once. `days_until_expiration` is a rounded-down string, so
//! the exact `expiration_time` is used instead.

use std::collections::BTreeMap;

use serde::Deserialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::ParseError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CertKind {
    CertChain,
    CaCert,
}

impl CertKind {
    pub fn label(self) -> &'static str {
        match self {
            CertKind::CertChain => "cert_chain",
            CertKind::CaCert => "ca_cert",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct EnvoyCert {
    pub kind: CertKind,
    /// A file path, or `<inline>` for certificates delivered over SDS.
    pub path: String,
    /// Lowercase hex, exactly as Envoy prints it.
    pub serial: String,
    /// DNS and IP SANs in certificate order, comma-separated.
    pub dns_names: String,
    /// Seconds since the Unix epoch.
    pub not_after: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertsSnapshot {
    /// Distinct certificates, sorted.
    pub certs: Vec<EnvoyCert>,
}

impl CertsSnapshot {
    /// Serials of the certificates Envoy serves (its `cert_chain` entries).
    pub fn served_serials(&self) -> impl Iterator<Item = &str> {
        self.certs
            .iter()
            .filter(|c| c.kind == CertKind::CertChain)
            .map(|c| c.serial.as_str())
    }
}

#[derive(Deserialize)]
struct RawCerts {
    #[serde(default)]
    certificates: Vec<RawContext>,
}

#[derive(Deserialize)]
struct RawContext {
    #[serde(default)]
    ca_cert: Vec<RawCert>,
    #[serde(default)]
    cert_chain: Vec<RawCert>,
}

#[derive(Deserialize)]
struct RawCert {
    #[serde(default)]
    path: String,
    #[serde(default)]
    serial_number: String,
    #[serde(default)]
    subject_alt_names: Vec<RawSan>,
    expiration_time: Option<String>,
}

#[derive(Deserialize)]
struct RawSan {
    dns: Option<String>,
    ip_address: Option<String>,
}

pub fn parse_certs(body: &[u8]) -> Result<CertsSnapshot, ParseError> {
    let raw: RawCerts =
        serde_json::from_slice(body).map_err(|e| ParseError::new(e.line(), e.to_string()))?;
    // Keyed by what becomes the series' labels, so two entries never make one series twice; an
    // entry repeated with another expiry keeps the earliest (the one to worry about).
    let mut distinct: BTreeMap<(CertKind, String, String, String), i64> = BTreeMap::new();
    for context in raw.certificates {
        for (kind, certs) in [
            (CertKind::CertChain, context.cert_chain),
            (CertKind::CaCert, context.ca_cert),
        ] {
            for cert in certs {
                // Envoy lists an empty entry for a context whose certificate is not loaded yet.
                let Some(expiration) = cert.expiration_time else {
                    continue;
                };
                let not_after = OffsetDateTime::parse(&expiration, &Rfc3339)
                    .map_err(|e| {
                        ParseError::new(0, format!("expiration_time {expiration:?}: {e}"))
                    })?
                    .unix_timestamp();
                let dns_names = cert
                    .subject_alt_names
                    .iter()
                    .filter_map(|san| san.dns.as_deref().or(san.ip_address.as_deref()))
                    .collect::<Vec<_>>()
                    .join(",");
                let earliest = distinct
                    .entry((kind, cert.path, cert.serial_number, dns_names))
                    .or_insert(not_after);
                *earliest = (*earliest).min(not_after);
            }
        }
    }
    let certs = distinct
        .into_iter()
        .map(|((kind, path, serial, dns_names), not_after)| EnvoyCert {
            kind,
            path,
            serial,
            dns_names,
            not_after,
        })
        .collect();
    Ok(CertsSnapshot { certs })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURE: &[u8] = include_bytes!("../../tests/fixtures/envoy-1.40/certs.json");

    #[test]
    fn a_certificate_used_by_two_listeners_is_listed_once() {
        let snap = parse_certs(FIXTURE).unwrap();
        let served: Vec<&EnvoyCert> = snap
            .certs
            .iter()
            .filter(|c| c.kind == CertKind::CertChain)
            .collect();
        assert_eq!(served.len(), 1, "{snap:?}");
        let cert = served[0];
        assert_eq!(cert.path, "<inline>");
        assert_eq!(
            cert.dns_names,
            "demo.example.com,www.demo.example.com,127.0.0.1"
        );
        assert!(
            cert.serial
                .chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
    }

    #[test]
    fn ca_certificates_are_their_own_kind() {
        let snap = parse_certs(FIXTURE).unwrap();
        assert!(snap.certs.iter().any(|c| c.kind == CertKind::CaCert));
    }

    #[test]
    fn expiration_time_becomes_a_unix_timestamp() {
        let body = br#"{"certificates":[{"ca_cert":[],"cert_chain":[{"path":"/x","serial_number":"0a","subject_alt_names":[{"ip_address":"10.0.0.1"}],"days_until_expiration":"1","valid_from":"2026-01-01T00:00:00Z","expiration_time":"2026-01-02T00:00:00Z"}]}]}"#;
        let snap = parse_certs(body).unwrap();
        assert_eq!(snap.certs[0].not_after, 1_767_312_000);
        assert_eq!(snap.certs[0].dns_names, "10.0.0.1");
    }

    #[test]
    fn garbage_or_a_bad_timestamp_is_a_parse_error() {
        assert!(parse_certs(b"not json").is_err());
        assert!(
            parse_certs(br#"{"certificates":[{"cert_chain":[{"expiration_time":"tomorrow"}]}]}"#)
                .is_err()
        );
        assert_eq!(
            parse_certs(br#"{"certificates":[]}"#).unwrap(),
            CertsSnapshot::default()
        );
    }
}
