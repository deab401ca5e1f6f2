//! Parser for `/stats?filter=...&type=Gauges&usedonly` output: `name: value` lines.
//!
//! Only circuit-breaker gauges and the three active-count gauges are asked for (see
//! [`STATS_FILTER`]). With `usedonly` Envoy drops gauges never written, so an absent open flag or
//! active count is 0; `remaining_*` gauges are written at start-up when `track_remaining` is on and
//! are absent otherwise.

use std::collections::HashMap;

use crate::incremental::{LineFormat, LineParser, parse_whole};
use crate::{ParseError, Priority, Resource, clusters::truncate};

/// RE2 filter for the gauges the exporter needs. Cluster names may contain dots, so the cluster
/// part is matched loosely and the suffix strictly.
pub const STATS_FILTER: &str = r"^cluster\..+\.(circuit_breakers\.(default|high)\.[a-z_]+|upstream_(cx|rq|rq_pending)_active)$";

/// Breaker gauges of one cluster and priority.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BreakerGauges {
    /// `*_open` gauges, indexed by [`Resource`].
    pub open: [bool; 5],
    /// `remaining_*` gauges, indexed by [`Resource`]; `None` when not tracked.
    pub remaining: [Option<u64>; 5],
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClusterGauges {
    /// Indexed by [`Priority`].
    pub breakers: [BreakerGauges; 2],
    pub upstream_cx_active: u64,
    pub upstream_rq_active: u64,
    pub upstream_rq_pending_active: u64,
}

/// Gauges by the cluster's stats name (its observability name).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub clusters: HashMap<String, ClusterGauges>,
}

enum Gauge {
    Open(Priority, Resource),
    Remaining(Priority, Resource),
    CxActive,
    RqActive,
    RqPendingActive,
}

/// Splits `cluster.<name>.<suffix>` into the name and the gauge, for the gauges we use.
fn classify(stat: &str) -> Option<(&str, Gauge)> {
    let rest = stat.strip_prefix("cluster.")?;
    for (suffix, gauge) in [
        (".upstream_cx_active", Gauge::CxActive),
        (".upstream_rq_active", Gauge::RqActive),
        (".upstream_rq_pending_active", Gauge::RqPendingActive),
    ] {
        if let Some(name) = rest.strip_suffix(suffix) {
            return Some((name, gauge));
        }
    }
    let (head, gauge_name) = rest.rsplit_once('.')?;
    let (head, priority) = head.rsplit_once('.')?;
    let priority = match priority {
        "default" => Priority::Default,
        "high" => Priority::High,
        _ => return None,
    };
    let name = head.strip_suffix(".circuit_breakers")?;
    let gauge = match gauge_name {
        "cx_open" => Gauge::Open(priority, Resource::Connections),
        "rq_pending_open" => Gauge::Open(priority, Resource::PendingRequests),
        "rq_open" => Gauge::Open(priority, Resource::Requests),
        "rq_retry_open" => Gauge::Open(priority, Resource::Retries),
        "cx_pool_open" => Gauge::Open(priority, Resource::ConnectionPools),
        "remaining_cx" => Gauge::Remaining(priority, Resource::Connections),
        "remaining_pending" => Gauge::Remaining(priority, Resource::PendingRequests),
        "remaining_rq" => Gauge::Remaining(priority, Resource::Requests),
        "remaining_retries" => Gauge::Remaining(priority, Resource::Retries),
        "remaining_cx_pools" => Gauge::Remaining(priority, Resource::ConnectionPools),
        _ => return None,
    };
    Some((name, gauge))
}

/// Parses a whole `/stats` body (see [`StatsParser`]).
pub fn parse_stats(body: &[u8]) -> Result<StatsSnapshot, ParseError> {
    parse_whole::<StatsParser>(body)
}

/// Parses `name: value` lines as they arrive. A line of another shape fails the parse (the peer
/// is not speaking Envoy's stats format); well-formed lines for gauges we don't use are skipped.
pub type StatsParser = LineParser<StatsLines>;

/// The lines of `/stats`, read one by one.
#[derive(Debug, Default)]
pub struct StatsLines {
    snapshot: StatsSnapshot,
}

impl LineFormat for StatsLines {
    type Output = StatsSnapshot;

    fn done(self) -> StatsSnapshot {
        self.snapshot
    }

    fn line(&mut self, line_no: usize, bytes: &[u8]) -> Result<(), ParseError> {
        if bytes.is_empty() {
            return Ok(());
        }
        let line = std::str::from_utf8(bytes)
            .map_err(|e| ParseError::new(line_no, format!("not UTF-8: {e}")))?;
        let malformed = || {
            ParseError::new(
                line_no,
                format!("expected `name: value`, got {:?}", truncate(line)),
            )
        };
        let (name, value) = line.rsplit_once(": ").ok_or_else(malformed)?;
        let value: u64 = value.trim().parse().map_err(|_| malformed())?;
        let Some((cluster, gauge)) = classify(name) else {
            return Ok(());
        };
        let entry = match self.snapshot.clusters.get_mut(cluster) {
            Some(entry) => entry,
            None => self
                .snapshot
                .clusters
                .entry(cluster.to_string())
                .or_default(),
        };
        match gauge {
            Gauge::Open(p, r) => {
                let b = &mut entry.breakers[p as usize];
                b.open[r as usize] = value > 0;
            }
            Gauge::Remaining(p, r) => {
                let b = &mut entry.breakers[p as usize];
                b.remaining[r as usize] = Some(value);
            }
            Gauge::CxActive => entry.upstream_cx_active = value,
            Gauge::RqActive => entry.upstream_rq_active = value,
            Gauge::RqPendingActive => entry.upstream_rq_pending_active = value,
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURE: &[u8] = include_bytes!("../../tests/fixtures/envoy-1.40/stats.txt");

    #[test]
    fn reads_tracked_remaining_gauges_of_a_real_envoy() {
        let snap = parse_stats(FIXTURE).unwrap();
        // usedonly leaves out clusters whose breaker and active gauges were never written.
        assert_eq!(snap.clusters.len(), 1, "{:?}", snap.clusters.keys());
        let slow = &snap.clusters["httproute/demo/slow/rule/0"];
        let default = &slow.breakers[Priority::Default as usize];
        assert_eq!(default.remaining[Resource::Requests as usize], Some(3));
        assert_eq!(default.remaining[Resource::Connections as usize], Some(2));
        assert!(!default.open.iter().any(|o| *o));
    }

    #[test]
    fn uses_the_stats_name_which_may_contain_dots() {
        let body = b"cluster.a.b.c.circuit_breakers.high.rq_open: 1\ncluster.a.b.c.upstream_rq_active: 7\n";
        let snap = parse_stats(body).unwrap();
        let c = &snap.clusters["a.b.c"];
        assert!(c.breakers[Priority::High as usize].open[Resource::Requests as usize]);
        assert_eq!(c.upstream_rq_active, 7);
    }

    #[test]
    fn untracked_remaining_gauges_stay_unknown_and_huge_values_parse() {
        let body = b"cluster.c.circuit_breakers.default.remaining_cx_pools: 18446744073709551615\n";
        let snap = parse_stats(body).unwrap();
        let b = &snap.clusters["c"].breakers[0];
        assert_eq!(
            b.remaining[Resource::ConnectionPools as usize],
            Some(u64::MAX)
        );
        assert_eq!(b.remaining[Resource::Requests as usize], None);
    }

    #[test]
    fn feeding_the_body_in_any_chunk_size_gives_the_same_snapshot() {
        let whole = parse_stats(FIXTURE).unwrap();
        for size in [1, 3, 50, 4096] {
            let chunked =
                crate::incremental::feed_in_chunks(StatsParser::default(), FIXTURE, size).unwrap();
            assert_eq!(chunked, whole, "chunks of {size}");
        }
    }

    #[test]
    fn garbage_is_a_parse_error() {
        assert!(parse_stats(b"<html><body>502 Bad Gateway</body></html>").is_err());
        assert!(parse_stats(b"cluster.c.upstream_rq_active: many\n").is_err());
        assert_eq!(parse_stats(b"").unwrap(), StatsSnapshot::default());
    }
}
