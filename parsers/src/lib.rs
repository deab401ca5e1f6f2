//! Pure parsers: bytes in, typed values out. No I/O, no clock, no logging, so each is tested on
//! fixtures captured from a real Envoy and fuzzed on its own.

pub mod certs;
pub mod clusters;
pub mod incremental;
pub mod stats;
pub mod x509;

/// Circuit-breaker priority. The discriminant indexes per-priority arrays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Priority {
    Default = 0,
    High = 1,
}

impl Priority {
    pub const ALL: [Priority; 2] = [Priority::Default, Priority::High];

    pub fn label(self) -> &'static str {
        match self {
            Priority::Default => "default",
            Priority::High => "high",
        }
    }
}

/// Circuit-breaker resource. The discriminant indexes per-resource arrays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Resource {
    Connections = 0,
    PendingRequests = 1,
    Requests = 2,
    Retries = 3,
    ConnectionPools = 4,
}

impl Resource {
    pub const ALL: [Resource; 5] = [
        Resource::Connections,
        Resource::PendingRequests,
        Resource::Requests,
        Resource::Retries,
        Resource::ConnectionPools,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Resource::Connections => "connections",
            Resource::PendingRequests => "pending_requests",
            Resource::Requests => "requests",
            Resource::Retries => "retries",
            Resource::ConnectionPools => "connection_pools",
        }
    }
}

/// Output of an admin endpoint that is not in the expected format.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct ParseError {
    /// 1-based; 0 when the error is not about one line.
    pub line: usize,
    pub message: String,
}

impl ParseError {
    pub fn new(line: usize, message: impl Into<String>) -> ParseError {
        ParseError {
            line,
            message: message.into(),
        }
    }
}
