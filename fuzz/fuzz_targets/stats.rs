//! `/stats?usedonly&type=Gauges&filter=...` parser: any bytes, no panic; the same bytes give the
//! same result whether parsed whole or fed in chunks (as HTTP delivers them).
#![no_main]

use envoy_gateway_exporter_parsers::incremental::feed_in_chunks;
use envoy_gateway_exporter_parsers::stats::{StatsParser, parse_stats};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let whole = parse_stats(data);
    // The chunk size comes from the input so the fuzzer explores boundaries too.
    let size = data.last().map_or(1, |b| usize::from(*b) % 97 + 1);
    let chunked = feed_in_chunks(StatsParser::default(), data, size);
    assert_eq!(whole, chunked, "chunks of {size} bytes");
});
