//! Certificates of a Secret's PEM (or DER) data, summarised for expiry and served-serial checks.
//!
//! Only `CERTIFICATE` blocks are decoded; any other block (a private key pasted into `tls.crt` by
//! mistake) is skipped without being decoded, kept or reported.

use std::net::IpAddr;

use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::pem::Pem;

/// What the exporter keeps of one certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertSummary {
    /// Position among the `CERTIFICATE` blocks of the data; 0 is the leaf.
    pub index: usize,
    /// Lowercase hex without leading zero bytes: the form Envoy's `/certs` prints (BoringSSL's
    /// `BN_bn2hex` of the serial, lowercased).
    pub serial: String,
    pub subject_cn: String,
    pub issuer_cn: String,
    /// DNS and IP SANs in certificate order, comma-separated (as for Envoy's certificates).
    pub dns_names: String,
    /// Seconds since the Unix epoch.
    pub not_before: i64,
    pub not_after: i64,
}

/// The certificates found in one key of a Secret, and what could not be read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Chain {
    pub certs: Vec<CertSummary>,
    /// One line per unreadable block; never contains the block's bytes.
    pub problems: Vec<String>,
}

/// Reads every certificate of PEM data (junk between blocks is skipped), or of one DER
/// certificate.
pub fn parse_chain(data: &[u8]) -> Chain {
    let mut chain = Chain::default();
    const BEGIN: &[u8] = b"-----BEGIN CERTIFICATE-----";
    let looks_like_pem = find(data, b"-----BEGIN ").is_some();
    if !looks_like_pem {
        if data.first() == Some(&0x30) {
            match summarise(0, data) {
                Ok(cert) => chain.certs.push(cert),
                Err(problem) => chain.problems.push(problem),
            }
        } else if data.iter().all(u8::is_ascii_whitespace) {
            chain.problems.push("empty".to_string());
        } else {
            chain.problems.push("neither PEM nor DER".to_string());
        }
        return chain;
    }
    let mut index = 0;
    let mut rest = data;
    // Pem::iter_from_buffer stops at the first malformed block; resuming after it by hand keeps
    // one bad block from hiding the rest of the chain.
    while let Some(start) = find(rest, BEGIN) {
        rest = &rest[start..];
        let (block, consumed) = match Pem::read(std::io::Cursor::new(rest)) {
            Ok((pem, consumed)) => (Some(pem), consumed.max(1)),
            Err(_) => (None, next_line(rest)),
        };
        rest = &rest[consumed.min(rest.len())..];
        let Some(pem) = block else {
            chain
                .problems
                .push(format!("certificate {index}: malformed PEM"));
            index += 1;
            continue;
        };
        match summarise(index, &pem.contents) {
            Ok(cert) => chain.certs.push(cert),
            Err(problem) => chain.problems.push(problem),
        }
        index += 1;
    }
    if chain.certs.is_empty() && chain.problems.is_empty() {
        chain.problems.push("no CERTIFICATE block".to_string());
    }
    chain
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn next_line(data: &[u8]) -> usize {
    data.iter()
        .position(|b| *b == b'\n')
        .map_or(data.len(), |i| i + 1)
}

fn summarise(index: usize, der: &[u8]) -> Result<CertSummary, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("certificate {index}: not a valid X.509 certificate ({e})"))?;
    Ok(CertSummary {
        index,
        serial: envoy_serial(cert.raw_serial()),
        subject_cn: common_name(&cert, true),
        issuer_cn: common_name(&cert, false),
        dns_names: san_names(&cert),
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
    })
}

/// The serial as Envoy prints it: big-endian hex, lowercase, leading zero bytes dropped.
pub fn envoy_serial(raw: &[u8]) -> String {
    let significant: Vec<u8> = raw.iter().copied().skip_while(|b| *b == 0).collect();
    if significant.is_empty() {
        return "0".to_string();
    }
    significant.iter().map(|b| format!("{b:02x}")).collect()
}

fn common_name(cert: &X509Certificate<'_>, subject: bool) -> String {
    let name = if subject {
        cert.subject()
    } else {
        cert.issuer()
    };
    name.iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .unwrap_or_default()
        .to_string()
}

fn san_names(cert: &X509Certificate<'_>) -> String {
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return String::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::DNSName(dns) => Some(dns.to_string()),
            GeneralName::IPAddress(bytes) => ip(bytes).map(|ip| ip.to_string()),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn ip(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => Some(IpAddr::from(<[u8; 4]>::try_from(bytes).ok()?)),
        16 => Some(IpAddr::from(<[u8; 16]>::try_from(bytes).ok()?)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_drop_leading_zero_bytes_like_boringssl() {
        assert_eq!(envoy_serial(&[0x00, 0x8f, 0x01]), "8f01");
        assert_eq!(envoy_serial(&[0x0a, 0x00]), "0a00");
        assert_eq!(envoy_serial(&[0x00]), "0");
    }

    #[test]
    fn empty_and_garbage_data_have_no_certificates_and_say_why() {
        assert_eq!(parse_chain(b"").problems, vec!["empty".to_string()]);
        assert_eq!(
            parse_chain(b"hello").problems,
            vec!["neither PEM nor DER".to_string()]
        );
        let broken =
            b"-----BEGIN CERTIFICATE-----\nnot base64 at all!\n-----END CERTIFICATE-----\n";
        let chain = parse_chain(broken);
        assert!(chain.certs.is_empty());
        assert_eq!(chain.problems.len(), 1, "{chain:?}");
    }

    #[test]
    fn other_pem_blocks_are_skipped_without_echoing_them() {
        let key = b"-----BEGIN PRIVATE KEY-----\nTUlJQ2VBSUJBREFOQmdrcWhraUc5dzBCQVFFRkFBU0NBbUl3Z2dKZUFnRUFBb0dCQUxT\n-----END PRIVATE KEY-----\n";
        let chain = parse_chain(key);
        assert!(chain.certs.is_empty());
        assert_eq!(chain.problems, vec!["no CERTIFICATE block".to_string()]);
        assert!(!format!("{chain:?}").contains("TUlJ"));
    }
}
