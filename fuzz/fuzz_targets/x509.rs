//! PEM/DER certificate chain decoding (a Secret's `tls.crt`): any bytes, no panic, and every
//! input yields at least one certificate or one problem.
#![no_main]

use envoy_gateway_exporter_parsers::x509::parse_chain;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let chain = parse_chain(data);
    assert!(!chain.certs.is_empty() || !chain.problems.is_empty());
    for cert in &chain.certs {
        assert!(
            cert.serial
                .chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
    }
});
