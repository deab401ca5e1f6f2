//! `/certs` JSON parser: any bytes, no panic; what parses is sorted and distinct.
#![no_main]

use envoy_gateway_exporter_parsers::certs::parse_certs;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(snapshot) = parse_certs(data) {
        assert!(snapshot.certs.windows(2).all(|w| w[0] < w[1]));
        let _ = snapshot.served_serials().count();
    }
});
