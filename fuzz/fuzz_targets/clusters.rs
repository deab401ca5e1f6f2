//! Text `/clusters` parser: any bytes, no panic; the same bytes give the same result whether
//! parsed whole or fed in chunks (as HTTP delivers them); every parsed host is classified once.
#![no_main]

use envoy_gateway_exporter_parsers::clusters::{ClustersParser, parse_clusters};
use envoy_gateway_exporter_parsers::incremental::feed_in_chunks;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let whole = parse_clusters(data);
    // The chunk size comes from the input so the fuzzer explores boundaries too.
    let size = data.last().map_or(1, |b| usize::from(*b) % 97 + 1);
    let chunked = feed_in_chunks(ClustersParser::default(), data, size);
    assert_eq!(whole, chunked, "chunks of {size} bytes");
    if let Ok(snapshot) = whole {
        let lines = data.split(|b| *b == b'\n').count();
        let hosts: usize = snapshot.clusters.iter().map(|c| c.hosts.len()).sum();
        assert!(snapshot.clusters.len() <= lines && hosts <= lines);
        for cluster in &snapshot.clusters {
            assert!(!cluster.name.is_empty());
            let _ = cluster.stats_name();
            let mut counts = [0usize; 3];
            for host in &cluster.hosts {
                counts[host.flags.health() as usize] += 1;
                let _ = host.flags.iter().map(|f| f.reason()).count();
            }
            assert_eq!(counts.iter().sum::<usize>(), cluster.hosts.len());
        }
    }
});
