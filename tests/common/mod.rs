//! Shared test harness: a real Envoy, real backends, the exporter binary, fake admin servers, and
//! a small reader for the exposition format.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

pub const EXPORTER: &str = env!("CARGO_BIN_EXE_envoy-gateway-exporter");

pub fn repo_path(relative: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// A tool the tests cannot do without. Missing means the set-up is broken: fail, never skip.
pub fn required_tool(path: PathBuf) -> PathBuf {
    assert!(
        path.exists(),
        "{} is missing: run `make tools` (scripts/install-tools.sh) first",
        path.display()
    );
    path
}

pub fn envoy_bin() -> PathBuf {
    required_tool(
        std::env::var_os("ENVOY_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo_path(".venv/bin/envoy")),
    )
}

pub fn promtool_bin() -> PathBuf {
    let found = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|dir| dir.join("promtool"))
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("/usr/bin/promtool"));
    required_tool(found)
}

pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `check` until it returns `Some` or `limit` passes.
pub async fn eventually<T>(
    limit: Duration,
    what: &str,
    mut check: impl AsyncFnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP servers on loopback

/// Serves `handler` on a loopback port until dropped.
pub struct Server {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Server {
    pub async fn start<F, Fut>(port: u16, handler: F) -> Server
    where
        F: Fn(String) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
    {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let handler = handler.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let handler = handler.clone();
                        let path = req
                            .uri()
                            .path_and_query()
                            .map(|p| p.to_string())
                            .unwrap_or_default();
                        async move { Ok::<_, Infallible>(handler(path).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Server { addr, task }
    }

    /// An upstream for Envoy: `/slow` answers after two seconds, everything else at once.
    pub async fn backend(port: u16) -> Server {
        Server::start(port, |path: String| async move {
            if path.starts_with("/slow") {
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            Response::new(Full::new(Bytes::from_static(b"ok\n")))
        })
        .await
    }

    /// Answers like Envoy's admin API with the files of a fixture directory.
    pub async fn admin_fixtures(port: u16, dir: &str) -> Server {
        let dir = repo_path(dir);
        Server::start(port, move |path: String| {
            let dir = dir.clone();
            async move { admin_fixture_response(&dir, &path) }
        })
        .await
    }
}

/// What Envoy's admin API answers for `path`, from the files of a fixture directory.
pub fn admin_fixture_response(dir: &std::path::Path, path: &str) -> Response<Full<Bytes>> {
    let file = match path.split('?').next().unwrap_or_default() {
        "/stats" => "stats.txt",
        "/clusters" => "clusters.txt",
        "/certs" => "certs.json",
        _ => {
            let mut r = Response::new(Full::new(Bytes::from_static(b"no such admin path\n")));
            *r.status_mut() = hyper::StatusCode::NOT_FOUND;
            return r;
        }
    };
    Response::new(Full::new(Bytes::from(
        std::fs::read(dir.join(file)).unwrap(),
    )))
}

// ---------------------------------------------------------------------------------------------
// A real Envoy running the demo scenario (demo/envoy.yaml.tmpl)

pub struct Certs {
    pub chain_pem: String,
    pub key_pem: String,
    pub ca_pem: String,
    /// Lowercase hex, as Envoy prints serials.
    pub leaf_serial: String,
    pub leaf_not_after: time::OffsetDateTime,
}

/// A CA and a leaf it signs with SANs demo.example.com, www.demo.example.com, 127.0.0.1.
pub fn demo_certs(leaf_valid_for: time::Duration) -> Certs {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType, SerialNumber,
    };
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Test CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);

    let leaf_key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec![
        "demo.example.com".to_string(),
        "www.demo.example.com".to_string(),
    ])
    .unwrap();
    params
        .subject_alt_names
        .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
    params
        .distinguished_name
        .push(DnType::CommonName, "demo.example.com");
    let serial = [0x5a, 0x3c, 0x00, 0x7e, 0x91, 0x02, 0xbb, 0x4d];
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    let now = time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + leaf_valid_for;
    let leaf = params.signed_by(&leaf_key, &issuer).unwrap();
    Certs {
        chain_pem: leaf.pem(),
        key_pem: leaf_key.serialize_pem(),
        ca_pem: ca.pem(),
        leaf_serial: serial.iter().map(|b| format!("{b:02x}")).collect(),
        leaf_not_after: params.not_after,
    }
}

pub struct EnvoyPorts {
    pub admin: u16,
    pub http: u16,
    pub https: u16,
    pub https_alt: u16,
    pub backend: u16,
    pub down: u16,
}

pub struct Envoy {
    child: Child,
    pub ports: EnvoyPorts,
    pub admin_url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

static BASE_ID: AtomicU32 = AtomicU32::new(0);

impl Envoy {
    /// Starts Envoy with the demo scenario; the caller runs the backend on `ports.backend`.
    pub async fn start(certs: &Certs) -> Envoy {
        let ports = EnvoyPorts {
            admin: free_port(),
            http: free_port(),
            https: free_port(),
            https_alt: free_port(),
            backend: free_port(),
            down: free_port(),
        };
        let mut config = std::fs::read_to_string(repo_path("demo/envoy.yaml.tmpl")).unwrap();
        for (name, value) in [
            ("ADMIN_PORT", ports.admin.to_string()),
            ("HTTP_PORT", ports.http.to_string()),
            ("HTTPS_PORT", ports.https.to_string()),
            ("HTTPS_ALT_PORT", ports.https_alt.to_string()),
            ("BACKEND_PORT", ports.backend.to_string()),
            ("DOWN_PORT", ports.down.to_string()),
            (
                "CERT_CHAIN",
                serde_json::to_string(&certs.chain_pem).unwrap(),
            ),
            (
                "PRIVATE_KEY",
                serde_json::to_string(&certs.key_pem).unwrap(),
            ),
            ("TRUSTED_CA", serde_json::to_string(&certs.ca_pem).unwrap()),
        ] {
            config = config.replace(&format!("{{{{{name}}}}}"), &value);
        }
        assert!(
            !config.contains("{{"),
            "unfilled placeholder in the Envoy template"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("envoy.yaml");
        std::fs::write(&path, config).unwrap();
        // Distinct base ids let several Envoys (parallel tests) share the machine.
        let base_id =
            10_000 + (std::process::id() % 1000) * 50 + BASE_ID.fetch_add(1, Ordering::SeqCst);
        let log = std::fs::File::create(dir.path().join("envoy.log")).unwrap();
        let child = Command::new(envoy_bin())
            .arg("-c")
            .arg(&path)
            .args([
                "--base-id",
                &base_id.to_string(),
                "--concurrency",
                "1",
                "-l",
                "warning",
            ])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let admin_url = format!("http://127.0.0.1:{}", ports.admin);
        let envoy = Envoy {
            child,
            ports,
            admin_url,
            _dir: dir,
        };
        let ready = format!("{}/ready", envoy.admin_url);
        eventually(
            Duration::from_secs(30),
            "Envoy to become ready",
            async || {
                let body = reqwest::get(&ready).await.ok()?.text().await.ok()?;
                (body.trim() == "LIVE").then_some(())
            },
        )
        .await;
        envoy
    }

    /// Envoy's own gauges, by full stat name, for the given filter.
    pub async fn gauges(&self, filter: &str) -> BTreeMap<String, u64> {
        let url = reqwest::Url::parse_with_params(
            &format!("{}/stats", self.admin_url),
            &[("filter", filter)],
        )
        .unwrap();
        let body = reqwest::get(url).await.unwrap().text().await.unwrap();
        body.lines()
            .filter_map(|l| l.rsplit_once(": "))
            .filter_map(|(k, v)| Some((k.to_string(), v.parse().ok()?)))
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// The exporter binary

pub struct Exporter {
    child: Child,
    pub url: String,
}

impl Drop for Exporter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Exporter {
    /// Starts the binary with the given settings on a free port and waits for `/healthz`.
    pub async fn start(admin_url: &str, extra: &[(&str, &str)]) -> Exporter {
        Exporter::spawn(admin_url, extra, Stdio::null()).await
    }

    /// Like [`Exporter::start`], with the logs (stderr) written to `log`.
    pub async fn start_with_log(
        admin_url: &str,
        extra: &[(&str, &str)],
        log: &std::path::Path,
    ) -> Exporter {
        let file = std::fs::File::create(log).unwrap();
        Exporter::spawn(admin_url, extra, Stdio::from(file)).await
    }

    async fn spawn(admin_url: &str, extra: &[(&str, &str)], stderr: Stdio) -> Exporter {
        let port = free_port();
        let mut command = Command::new(EXPORTER);
        command
            .env_clear()
            .env("EXPORTER_ENVOY_ADMIN_URL", admin_url)
            .env("EXPORTER_LISTEN_ADDRESS", format!("127.0.0.1:{port}"))
            .env("EXPORTER_COLLECT_CACHE", "0s")
            .stdout(Stdio::null())
            .stderr(stderr);
        for (k, v) in extra {
            command.env(k, v);
        }
        let child = command.spawn().unwrap();
        let exporter = Exporter {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        let health = format!("{}/healthz", exporter.url);
        eventually(
            Duration::from_secs(10),
            "the exporter to serve /healthz",
            async || {
                reqwest::get(&health)
                    .await
                    .ok()?
                    .status()
                    .is_success()
                    .then_some(())
            },
        )
        .await;
        exporter
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// GET /metrics with Prometheus's default scrape timeout.
    pub async fn scrape(&self) -> Scrape {
        let response = reqwest::Client::new()
            .get(format!("{}/metrics", self.url))
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .expect("/metrics must answer within Prometheus's 10 s scrape timeout");
        assert_eq!(response.status(), 200);
        Scrape::parse(&response.text().await.unwrap())
    }
}

// ---------------------------------------------------------------------------------------------
// Reading the exposition format back

#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

#[derive(Debug, Clone)]
pub struct Scrape {
    pub text: String,
    pub samples: Vec<Sample>,
}

impl Scrape {
    /// Parses text format 0.0.4 sample lines, unescaping label values.
    pub fn parse(text: &str) -> Scrape {
        let mut samples = Vec::new();
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let (name, rest) = match line.find('{') {
                Some(i) => (&line[..i], &line[i + 1..]),
                None => {
                    let (n, v) = line.split_once(' ').unwrap();
                    samples.push(Sample {
                        name: n.to_string(),
                        labels: BTreeMap::new(),
                        value: v.trim().parse().unwrap(),
                    });
                    continue;
                }
            };
            let mut labels = BTreeMap::new();
            let mut chars = rest.chars().peekable();
            loop {
                let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
                assert_eq!(chars.next(), Some('"'), "bad line {line}");
                let mut value = String::new();
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => match chars.next() {
                            Some('n') => value.push('\n'),
                            Some(other) => value.push(other),
                            None => panic!("bad escape in {line}"),
                        },
                        '"' => break,
                        other => value.push(other),
                    }
                }
                labels.insert(key.trim_start_matches(',').to_string(), value);
                match chars.next() {
                    Some(',') if chars.peek() == Some(&'}') => {
                        chars.next();
                        break;
                    }
                    Some(',') => continue,
                    Some('}') => break,
                    other => panic!("unexpected {other:?} in {line}"),
                }
            }
            let value: String = chars.collect();
            samples.push(Sample {
                name: name.to_string(),
                labels,
                value: value.trim().parse().unwrap(),
            });
        }
        Scrape {
            text: text.to_string(),
            samples,
        }
    }

    /// Samples of `name` whose labels include all of `labels`.
    pub fn all(&self, name: &str, labels: &[(&str, &str)]) -> Vec<&Sample> {
        let full = format!("envoy_gateway_exporter_{name}");
        self.samples
            .iter()
            .filter(|s| s.name == full || s.name == name)
            .filter(|s| {
                labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .collect()
    }

    /// The value of the one sample that matches, if there is exactly one.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let found = self.all(name, labels);
        assert!(
            found.len() <= 1,
            "{name} {labels:?} matches {} samples",
            found.len()
        );
        found.first().map(|s| s.value)
    }
}
