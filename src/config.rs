//! Settings from `EXPORTER_*` environment variables (read with envy), validated once at start-up.
//!
//! Every variable is read as a string and validated here so that a wrong value produces one line
//! naming the variable, the value and what is accepted, whatever the type.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// Prefix of every setting.
pub const PREFIX: &str = "EXPORTER_";

/// One documented setting: the single list that `--help`, the README check and validation share.
pub struct Setting {
    pub name: &'static str,
    pub default: &'static str,
    pub meaning: &'static str,
}

pub const SETTINGS: &[Setting] = &[
    Setting {
        name: "EXPORTER_ENVOY_ADMIN_URL",
        default: "http://127.0.0.1:19000",
        meaning: "Envoy admin API base URL (http only, loopback in a sidecar); empty disables Envoy collection",
    },
    Setting {
        name: "EXPORTER_LISTEN_ADDRESS",
        default: "0.0.0.0:19100",
        meaning: "address:port where /metrics, /healthz and /readyz are served",
    },
    Setting {
        name: "EXPORTER_SECRET_DIRS",
        default: "",
        meaning: "comma-separated secret volume mounts, each `path` or `namespace/name=path`",
    },
    Setting {
        name: "EXPORTER_SECRET_SOURCE",
        default: "auto",
        meaning: "Kubernetes Secrets to watch: gateway (those the pod's Gateway references), selector (by namespace and label), off; auto = gateway when EXPORTER_GATEWAY_NAME is set, else off",
    },
    Setting {
        name: "EXPORTER_GATEWAY_NAME",
        default: "",
        meaning: "gateway mode: the pod's Gateway (downward API: label gateway.envoyproxy.io/owning-gateway-name)",
    },
    Setting {
        name: "EXPORTER_GATEWAY_NAMESPACE",
        default: "",
        meaning: "gateway mode: the Gateway's namespace (label gateway.envoyproxy.io/owning-gateway-namespace)",
    },
    Setting {
        name: "EXPORTER_SECRET_NAMESPACES",
        default: "",
        meaning: "selector mode: comma-separated namespaces to watch; empty = all namespaces",
    },
    Setting {
        name: "EXPORTER_SECRET_LABEL_SELECTOR",
        default: "",
        meaning: "selector mode: label selector of the Secrets to watch (only type kubernetes.io/tls is read)",
    },
    Setting {
        name: "EXPORTER_ADMIN_TIMEOUT",
        default: "5s",
        meaning: "timeout of one admin API request, connect to last byte (100ms..60s)",
    },
    Setting {
        name: "EXPORTER_MAX_RESPONSE_BYTES",
        default: "67108864",
        meaning: "largest admin API response read, in bytes; a larger one is abandoned (1024..4294967296)",
    },
    Setting {
        name: "EXPORTER_COLLECT_CACHE",
        default: "1s",
        meaning: "scrapes within this time after a collection ended share its result (0s..60s)",
    },
    Setting {
        name: "EXPORTER_HOST_METRICS",
        default: "true",
        meaning: "publish per-host envoy_gateway_exporter_host_healthy series (true/false); failing hosts' reasons are always published",
    },
    Setting {
        name: "EXPORTER_LOG_FORMAT",
        default: "text",
        meaning: "log format: text or json",
    },
    Setting {
        name: "EXPORTER_LOG_LEVEL",
        default: "info",
        meaning: "log filter: error, warn, info, debug, trace, or a tracing directive list",
    },
];

/// A rejected setting. The message is the whole line printed at start-up.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    #[error("invalid {name}={value:?}: expected {expected}")]
    Invalid {
        name: &'static str,
        value: String,
        expected: String,
    },
    #[error("unknown setting {name}: accepted settings are {accepted}")]
    Unknown { name: String, accepted: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// A secret volume mount to watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretDir {
    pub namespace: String,
    pub name: String,
    pub path: PathBuf,
}

/// Where Kubernetes Secrets come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    Off,
    /// The Secrets that the pod's Gateway references in its listeners.
    Gateway {
        name: String,
        namespace: String,
    },
    /// Secrets of type `kubernetes.io/tls` by namespace (empty = all) and label selector.
    Selector {
        namespaces: Vec<String>,
        label_selector: Option<String>,
    },
}

/// Validated settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// `None` when Envoy collection is disabled.
    pub envoy_admin_url: Option<String>,
    pub listen_address: SocketAddr,
    pub secret_dirs: Vec<SecretDir>,
    pub secret_source: SecretSource,
    pub admin_timeout: Duration,
    pub max_response_bytes: u64,
    pub collect_cache: Duration,
    pub host_metrics: bool,
    pub log_format: LogFormat,
    pub log_level: String,
}

/// The raw strings, as envy reads them.
#[derive(Deserialize, Default)]
struct Raw {
    envoy_admin_url: Option<String>,
    listen_address: Option<String>,
    secret_dirs: Option<String>,
    secret_source: Option<String>,
    gateway_name: Option<String>,
    gateway_namespace: Option<String>,
    secret_namespaces: Option<String>,
    secret_label_selector: Option<String>,
    admin_timeout: Option<String>,
    max_response_bytes: Option<String>,
    collect_cache: Option<String>,
    host_metrics: Option<String>,
    log_format: Option<String>,
    log_level: Option<String>,
}

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Config, ConfigError> {
        Config::from_vars(std::env::vars())
    }

    /// Reads settings from the given variables (all of them; those without the prefix are ignored).
    pub fn from_vars(
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let ours: HashMap<String, String> = vars
            .into_iter()
            .filter(|(k, _)| k.starts_with(PREFIX))
            .collect();
        // A typo'd variable silently ignored is worse than a refusal to start.
        let mut unknown: Vec<&String> = ours
            .keys()
            .filter(|k| !SETTINGS.iter().any(|s| s.name == k.as_str()))
            .collect();
        unknown.sort();
        if let Some(name) = unknown.first() {
            return Err(ConfigError::Unknown {
                name: (*name).clone(),
                accepted: SETTINGS
                    .iter()
                    .map(|s| s.name)
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        let raw: Raw = envy::prefixed(PREFIX)
            .from_iter(ours)
            .expect("every field is an optional string, so envy cannot fail");
        Config::validate(raw)
    }

    fn validate(raw: Raw) -> Result<Config, ConfigError> {
        let secret_source = parse_secret_source(&raw)?;
        let envoy_admin_url = parse_admin_url(value_or_default(
            raw.envoy_admin_url,
            "EXPORTER_ENVOY_ADMIN_URL",
        ))?;
        let listen = value_or_default(raw.listen_address, "EXPORTER_LISTEN_ADDRESS");
        let listen_address = listen.parse::<SocketAddr>().map_err(|_| {
            invalid(
                "EXPORTER_LISTEN_ADDRESS",
                &listen,
                "ip:port, e.g. 0.0.0.0:19100 or [::]:19100",
            )
        })?;
        let secret_dirs =
            parse_secret_dirs(&value_or_default(raw.secret_dirs, "EXPORTER_SECRET_DIRS"))?;
        let admin_timeout = parse_duration(
            "EXPORTER_ADMIN_TIMEOUT",
            value_or_default(raw.admin_timeout, "EXPORTER_ADMIN_TIMEOUT"),
            Duration::from_millis(100),
            Duration::from_secs(60),
        )?;
        let collect_cache = parse_duration(
            "EXPORTER_COLLECT_CACHE",
            value_or_default(raw.collect_cache, "EXPORTER_COLLECT_CACHE"),
            Duration::ZERO,
            Duration::from_secs(60),
        )?;
        let max = value_or_default(raw.max_response_bytes, "EXPORTER_MAX_RESPONSE_BYTES");
        let max_response_bytes = max
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|n| (1024..=4 << 30).contains(n))
            .ok_or_else(|| {
                invalid(
                    "EXPORTER_MAX_RESPONSE_BYTES",
                    &max,
                    "a whole number of bytes from 1024 to 4294967296",
                )
            })?;
        let host = value_or_default(raw.host_metrics, "EXPORTER_HOST_METRICS");
        let host_metrics = match host.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" => true,
            "false" | "0" | "no" => false,
            _ => return Err(invalid("EXPORTER_HOST_METRICS", &host, "true or false")),
        };
        let format = value_or_default(raw.log_format, "EXPORTER_LOG_FORMAT");
        let log_format = match format.trim().to_ascii_lowercase().as_str() {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            _ => return Err(invalid("EXPORTER_LOG_FORMAT", &format, "text or json")),
        };
        let log_level = value_or_default(raw.log_level, "EXPORTER_LOG_LEVEL");
        if tracing_subscriber::EnvFilter::builder()
            .parse(&log_level)
            .is_err()
        {
            return Err(invalid(
                "EXPORTER_LOG_LEVEL",
                &log_level,
                "a level (error, warn, info, debug, trace) or a directive list such as info,envoy_gateway_exporter=debug",
            ));
        }
        Ok(Config {
            envoy_admin_url,
            listen_address,
            secret_dirs,
            secret_source,
            admin_timeout,
            max_response_bytes,
            collect_cache,
            host_metrics,
            log_format,
            log_level,
        })
    }
}

/// The documented default of a setting.
pub fn default_of(name: &str) -> &'static str {
    SETTINGS
        .iter()
        .find(|s| s.name == name)
        .map(|s| s.default)
        .unwrap_or_else(|| panic!("{name} is not in SETTINGS"))
}

fn value_or_default(value: Option<String>, name: &str) -> String {
    value.unwrap_or_else(|| default_of(name).to_string())
}

fn invalid(name: &'static str, value: &str, expected: &str) -> ConfigError {
    ConfigError::Invalid {
        name,
        value: value.to_string(),
        expected: expected.to_string(),
    }
}

fn parse_admin_url(value: String) -> Result<Option<String>, ConfigError> {
    let trimmed = value.trim().trim_end_matches('/');
    if trimmed.is_empty() {
        return Ok(None);
    }
    let expected =
        "an http:// URL such as http://127.0.0.1:19000, or empty to disable Envoy collection";
    let rest = trimmed
        .strip_prefix("http://")
        .ok_or_else(|| invalid("EXPORTER_ENVOY_ADMIN_URL", &value, expected))?;
    // The admin API is served at the root; a path, query or credentials would be silently wrong.
    if rest.is_empty() || rest.contains(['/', '?', '#', '@', ' ']) {
        return Err(invalid("EXPORTER_ENVOY_ADMIN_URL", &value, expected));
    }
    Ok(Some(trimmed.to_string()))
}

fn parse_duration(
    name: &'static str,
    value: String,
    min: Duration,
    max: Duration,
) -> Result<Duration, ConfigError> {
    let expected = format!(
        "a duration from {} to {}, such as 5s or 500ms",
        humantime::format_duration(min),
        humantime::format_duration(max)
    );
    match humantime::parse_duration(value.trim()) {
        Ok(d) if d >= min && d <= max => Ok(d),
        _ => Err(invalid(name, &value, &expected)),
    }
}

/// A Kubernetes object name or namespace (RFC 1123 subdomain; namespaces are labels, a subset).
fn is_k8s_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
}

fn parse_secret_source(raw: &Raw) -> Result<SecretSource, ConfigError> {
    let get = |v: &Option<String>| v.as_deref().map(str::trim).unwrap_or_default().to_string();
    let given = get(&raw.secret_source);
    let lowered = given.to_ascii_lowercase();
    let name = get(&raw.gateway_name);
    let namespace = get(&raw.gateway_namespace);
    let mode = match lowered.as_str() {
        "" | "auto" if name.is_empty() => "off",
        "" | "auto" => "gateway",
        m @ ("gateway" | "selector" | "off") => m,
        _ => {
            return Err(invalid(
                "EXPORTER_SECRET_SOURCE",
                &given,
                "auto, gateway, selector or off",
            ));
        }
    };
    match mode {
        "gateway" => {
            let expected = "a Kubernetes object name (lowercase letters, digits, '-' and '.'), required in gateway mode";
            if !is_k8s_name(&name) {
                return Err(invalid("EXPORTER_GATEWAY_NAME", &name, expected));
            }
            if !is_k8s_name(&namespace) {
                return Err(invalid("EXPORTER_GATEWAY_NAMESPACE", &namespace, expected));
            }
            Ok(SecretSource::Gateway { name, namespace })
        }
        "selector" => {
            let list = get(&raw.secret_namespaces);
            let namespaces: Vec<String> = list
                .split(',')
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .map(str::to_string)
                .collect();
            if namespaces
                .iter()
                .any(|n| !is_k8s_name(n) || n.contains('.'))
            {
                return Err(invalid(
                    "EXPORTER_SECRET_NAMESPACES",
                    &list,
                    "comma-separated namespace names, or empty for all namespaces",
                ));
            }
            let selector = get(&raw.secret_label_selector);
            Ok(SecretSource::Selector {
                namespaces,
                label_selector: (!selector.is_empty()).then_some(selector),
            })
        }
        _ => Ok(SecretSource::Off),
    }
}

fn parse_secret_dirs(value: &str) -> Result<Vec<SecretDir>, ConfigError> {
    let expected = "comma-separated entries, each `path` or `namespace/name=path`";
    let mut dirs = Vec::new();
    for entry in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let dir = match entry.split_once('=') {
            Some((id, path)) => {
                let (namespace, name) = id
                    .split_once('/')
                    .filter(|(ns, n)| !ns.is_empty() && !n.is_empty() && !n.contains('/'))
                    .ok_or_else(|| invalid("EXPORTER_SECRET_DIRS", value, expected))?;
                if path.is_empty() {
                    return Err(invalid("EXPORTER_SECRET_DIRS", value, expected));
                }
                SecretDir {
                    namespace: namespace.to_string(),
                    name: name.to_string(),
                    path: PathBuf::from(path),
                }
            }
            None => {
                let path = PathBuf::from(entry);
                let name = path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .ok_or_else(|| invalid("EXPORTER_SECRET_DIRS", value, expected))?;
                SecretDir {
                    namespace: String::new(),
                    name,
                    path,
                }
            }
        };
        dirs.push(dir);
    }
    // Two mounts reported under one namespace/name would hide one another.
    for (i, dir) in dirs.iter().enumerate() {
        if dirs[..i]
            .iter()
            .any(|d| d.namespace == dir.namespace && d.name == dir.name)
        {
            return Err(invalid(
                "EXPORTER_SECRET_DIRS",
                value,
                "entries with distinct names: two bare paths ending in the same directory name need `namespace/name=path`",
            ));
        }
    }
    Ok(dirs)
}

/// The `--help` text: usage plus every setting with its default.
pub fn help_text() -> String {
    let mut out = String::from(
        "envoy-gateway-exporter: Prometheus exporter for an Envoy Gateway proxy's backends, circuit breakers and certificates\n\n\
         USAGE:\n    envoy-gateway-exporter [--once | --help | --version]\n\n\
         OPTIONS:\n    --once       collect once, print the metrics to stdout, exit 1 if a source failed\n    \
         --help       print this help\n    --version    print version and revision\n\n\
         SETTINGS (environment variables):\n",
    );
    for s in SETTINGS {
        let default = if s.default.is_empty() {
            "(empty)"
        } else {
            s.default
        };
        out.push_str(&format!(
            "    {}\n        default: {}\n        {}\n",
            s.name, default, s.meaning
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_match_the_spec() {
        let c = Config::from_vars(vars(&[("PATH", "/bin")])).unwrap();
        assert_eq!(c.envoy_admin_url.as_deref(), Some("http://127.0.0.1:19000"));
        assert_eq!(c.listen_address, "0.0.0.0:19100".parse().unwrap());
        assert!(c.secret_dirs.is_empty());
        assert_eq!(c.admin_timeout, Duration::from_secs(5));
        assert_eq!(c.max_response_bytes, 64 * 1024 * 1024);
        assert_eq!(c.collect_cache, Duration::from_secs(1));
        assert!(c.host_metrics);
        assert_eq!(c.log_format, LogFormat::Text);
    }

    #[test]
    fn empty_admin_url_disables_envoy_collection() {
        let c = Config::from_vars(vars(&[("EXPORTER_ENVOY_ADMIN_URL", "")])).unwrap();
        assert_eq!(c.envoy_admin_url, None);
    }

    #[test]
    fn a_wrong_value_names_the_variable_the_value_and_what_is_accepted() {
        let err = Config::from_vars(vars(&[("EXPORTER_ADMIN_TIMEOUT", "soon")])).unwrap_err();
        let line = err.to_string();
        assert!(
            line.starts_with("invalid EXPORTER_ADMIN_TIMEOUT=\"soon\": expected a duration"),
            "{line}"
        );
        assert!(!line.contains('\n'));
        for (name, value) in [
            ("EXPORTER_ENVOY_ADMIN_URL", "https://127.0.0.1:19000"),
            ("EXPORTER_ENVOY_ADMIN_URL", "http://127.0.0.1:19000/stats"),
            ("EXPORTER_LISTEN_ADDRESS", "19100"),
            ("EXPORTER_ADMIN_TIMEOUT", "10m"),
            ("EXPORTER_MAX_RESPONSE_BYTES", "64MiB"),
            ("EXPORTER_MAX_RESPONSE_BYTES", "10"),
            ("EXPORTER_HOST_METRICS", "maybe"),
            ("EXPORTER_LOG_FORMAT", "xml"),
            ("EXPORTER_LOG_LEVEL", "info,=["),
            ("EXPORTER_SECRET_DIRS", "ns/=/x"),
            ("EXPORTER_SECRET_DIRS", "/a/tls,/b/tls"),
        ] {
            let err = Config::from_vars(vars(&[(name, value)])).unwrap_err();
            assert!(
                matches!(&err, ConfigError::Invalid { name: n, value: v, .. } if *n == name && v == value),
                "{name}={value} gave {err}"
            );
        }
    }

    #[test]
    fn an_unknown_exporter_variable_is_refused() {
        let err = Config::from_vars(vars(&[("EXPORTER_ADMIN_TIMEOUTS", "5s")])).unwrap_err();
        assert!(
            err.to_string()
                .contains("unknown setting EXPORTER_ADMIN_TIMEOUTS")
        );
    }

    #[test]
    fn secret_dirs_accept_bare_paths_and_named_mounts() {
        let c = Config::from_vars(vars(&[(
            "EXPORTER_SECRET_DIRS",
            "/etc/certs/site-tls, gateway-ns/api-tls=/mnt/api",
        )]))
        .unwrap();
        assert_eq!(
            c.secret_dirs,
            vec![
                SecretDir {
                    namespace: String::new(),
                    name: "site-tls".into(),
                    path: "/etc/certs/site-tls".into()
                },
                SecretDir {
                    namespace: "gateway-ns".into(),
                    name: "api-tls".into(),
                    path: "/mnt/api".into()
                },
            ]
        );
    }

    #[test]
    fn secret_source_defaults_to_gateway_mode_when_the_downward_api_names_the_gateway() {
        let off = Config::from_vars(vars(&[])).unwrap();
        assert_eq!(off.secret_source, SecretSource::Off);
        let gateway = Config::from_vars(vars(&[
            ("EXPORTER_GATEWAY_NAME", "eg"),
            ("EXPORTER_GATEWAY_NAMESPACE", "default"),
        ]))
        .unwrap();
        assert_eq!(
            gateway.secret_source,
            SecretSource::Gateway {
                name: "eg".into(),
                namespace: "default".into()
            }
        );
        let err = Config::from_vars(vars(&[("EXPORTER_GATEWAY_NAME", "eg")])).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("invalid EXPORTER_GATEWAY_NAMESPACE=\"\""),
            "{err}"
        );
        let selector = Config::from_vars(vars(&[
            ("EXPORTER_SECRET_SOURCE", "selector"),
            ("EXPORTER_SECRET_NAMESPACES", "a, b"),
            ("EXPORTER_SECRET_LABEL_SELECTOR", "team=edge"),
        ]))
        .unwrap();
        assert_eq!(
            selector.secret_source,
            SecretSource::Selector {
                namespaces: vec!["a".into(), "b".into()],
                label_selector: Some("team=edge".into())
            }
        );
        assert!(Config::from_vars(vars(&[("EXPORTER_SECRET_SOURCE", "files")])).is_err());
        assert!(
            Config::from_vars(vars(&[
                ("EXPORTER_SECRET_SOURCE", "selector"),
                ("EXPORTER_SECRET_NAMESPACES", "Bad_NS")
            ]))
            .is_err()
        );
    }

    #[test]
    fn help_lists_every_setting_with_its_default() {
        let help = help_text();
        for s in SETTINGS {
            assert!(help.contains(s.name), "{}", s.name);
        }
        assert!(help.contains("default: 5s"));
    }
}
