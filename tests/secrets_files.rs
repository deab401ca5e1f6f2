//! Secret volume mounts (kubelet layout) read by the exporter binary, certificates made with
//! rcgen, and the served check against a real Envoy.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{Envoy, Exporter, Scrape, Server, demo_certs, eventually};
use envoy_gateway_exporter::secrets::SecretCerts;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SerialNumber};
use time::OffsetDateTime;

struct Made {
    pem: String,
    der: Vec<u8>,
    key_pem: String,
    serial: String,
}

/// A certificate valid from `from` to `to` (relative to now), signed by `issuer` or self-signed.
fn make_cert(
    cn: &str,
    serial: &[u8],
    from: time::Duration,
    to: time::Duration,
    issuer: Option<&Issuer<'_, KeyPair>>,
    ca: bool,
) -> (Made, CertificateParams, KeyPair) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec![format!("{cn}.example.com")]).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.serial_number = Some(SerialNumber::from_slice(serial));
    let now = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap();
    params.not_before = now + from;
    params.not_after = now + to;
    if ca {
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    }
    let cert = match issuer {
        Some(issuer) => params.signed_by(&key, issuer).unwrap(),
        None => params.self_signed(&key).unwrap(),
    };
    let made = Made {
        pem: cert.pem(),
        der: cert.der().to_vec(),
        key_pem: key.serialize_pem(),
        serial: serial
            .iter()
            .skip_while(|b| **b == 0)
            .map(|b| format!("{b:02x}"))
            .collect(),
    };
    (made, params, key)
}

/// Writes a mount the way the kubelet does: a timestamped directory, `..data` pointing at it, and
/// `tls.crt` etc. as symlinks through `..data`. A second call swaps `..data` atomically.
fn kubelet_write(dir: &Path, files: &[(&str, &[u8])], generation: u32) {
    std::fs::create_dir_all(dir).unwrap();
    let versioned = format!("..2026_11_29_00_00_{generation:02}.000000001");
    let target = dir.join(&versioned);
    std::fs::create_dir(&target).unwrap();
    for (name, bytes) in files {
        std::fs::write(target.join(name), bytes).unwrap();
        let link = dir.join(name);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(format!("..data/{name}"), &link).unwrap();
        }
    }
    let old = std::fs::read_link(dir.join("..data")).ok();
    let tmp = dir.join("..data_tmp");
    std::os::unix::fs::symlink(&versioned, &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    if let Some(old) = old {
        std::fs::remove_dir_all(dir.join(old)).unwrap();
    }
}

fn secret_labels(name: &str) -> [(&str, &str); 2] {
    [("secret_namespace", "gw"), ("secret_name", name)]
}

#[test]
fn a_pem_chain_reports_every_certificate_with_its_position_and_names() {
    let (root, root_params, root_key) = make_cert(
        "Root CA",
        &[0x01],
        time::Duration::days(-1),
        time::Duration::days(3650),
        None,
        true,
    );
    let root_issuer = Issuer::new(root_params, root_key);
    let (intermediate, i_params, i_key) = make_cert(
        "Intermediate CA",
        &[0x0a, 0x0b],
        time::Duration::days(-1),
        time::Duration::days(400),
        Some(&root_issuer),
        true,
    );
    let i_issuer = Issuer::new(i_params, i_key);
    let (leaf, _, _) = make_cert(
        "leaf",
        &[0x8f, 0x00, 0x01],
        time::Duration::days(-1),
        time::Duration::days(20),
        Some(&i_issuer),
        false,
    );
    // Junk between blocks, as people paste chains.
    let chain = format!(
        "subject=leaf\n{}\nsome comment\n{}\n",
        leaf.pem, intermediate.pem
    );
    let secret = SecretCerts::from_data(
        "ns",
        "site",
        [
            ("tls.crt", chain.as_bytes()),
            ("ca.crt", root.pem.as_bytes()),
        ],
    );
    assert!(secret.problems.is_empty(), "{:?}", secret.problems);
    let tls = &secret.keys[0].1;
    assert_eq!(secret.keys[0].0, "tls.crt");
    assert_eq!(tls.len(), 2);
    assert_eq!((tls[0].index, tls[0].serial.as_str()), (0, "8f0001"));
    assert_eq!(tls[0].subject_cn, "leaf");
    assert_eq!(tls[0].issuer_cn, "Intermediate CA");
    assert_eq!(tls[0].dns_names, "leaf.example.com");
    assert_eq!((tls[1].index, tls[1].serial.as_str()), (1, "0a0b"));
    assert_eq!(secret.keys[1].0, "ca.crt");
    assert_eq!(secret.leaf_serial(), Some("8f0001"));

    // DER is accepted too.
    let der = SecretCerts::from_data("ns", "der", [("tls.crt", leaf.der.as_slice())]);
    assert_eq!(der.leaf_serial(), Some("8f0001"));
}

#[test]
fn garbage_and_empty_data_make_an_invalid_secret_with_a_reason() {
    let garbage = SecretCerts::from_data(
        "ns",
        "x",
        [(
            "tls.crt",
            b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".as_slice(),
        )],
    );
    assert!(!garbage.valid());
    assert!(
        garbage.problems[0].starts_with("tls.crt: certificate 0"),
        "{:?}",
        garbage.problems
    );
    let empty = SecretCerts::from_data("ns", "x", [("tls.crt", b"".as_slice())]);
    assert!(!empty.valid());
    assert_eq!(empty.problems, vec!["tls.crt: empty".to_string()]);
    let missing = SecretCerts::from_data("ns", "x", [("ca.crt", b"".as_slice())]);
    assert!(missing.problems.contains(&"tls.crt: missing".to_string()));
}

struct Mounts {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

impl Mounts {
    fn new() -> Mounts {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        Mounts { _dir: dir, root }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    fn setting(&self, names: &[&str]) -> String {
        names
            .iter()
            .map(|n| format!("gw/{n}={}", self.path(n).display()))
            .collect::<Vec<_>>()
            .join(",")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mounted_secrets_report_days_remaining_validity_and_never_the_private_key() {
    let mounts = Mounts::new();
    let (ca, ca_params, ca_key) = make_cert(
        "Test CA",
        &[0x02],
        time::Duration::days(-10),
        time::Duration::days(100),
        None,
        true,
    );
    let issuer = Issuer::new(ca_params, ca_key);
    let (leaf, _, _) = make_cert(
        "site",
        &[0x42, 0x01],
        time::Duration::days(-1),
        time::Duration::days(10),
        Some(&issuer),
        false,
    );
    let (expired, _, _) = make_cert(
        "old",
        &[0x43],
        time::Duration::days(-30),
        time::Duration::days(-2),
        None,
        false,
    );
    let (future, _, _) = make_cert(
        "soon",
        &[0x44],
        time::Duration::days(5),
        time::Duration::days(50),
        None,
        false,
    );
    let chain = format!("{}{}", leaf.pem, ca.pem);
    kubelet_write(
        &mounts.path("site"),
        &[
            ("tls.crt", chain.as_bytes()),
            ("tls.key", leaf.key_pem.as_bytes()),
        ],
        1,
    );
    kubelet_write(
        &mounts.path("old"),
        &[("tls.crt", expired.pem.as_bytes())],
        1,
    );
    kubelet_write(
        &mounts.path("soon"),
        &[("tls.crt", future.pem.as_bytes())],
        1,
    );
    kubelet_write(
        &mounts.path("garbage"),
        &[("tls.crt", b"this is not a certificate")],
        1,
    );
    kubelet_write(&mounts.path("empty"), &[("tls.crt", b"")], 1);

    let log = tempfile::NamedTempFile::new().unwrap();
    let exporter = Exporter::start_with_log(
        "",
        &[
            (
                "EXPORTER_SECRET_DIRS",
                &mounts.setting(&["site", "old", "soon", "garbage", "empty"]),
            ),
            ("EXPORTER_LOG_LEVEL", "trace"),
        ],
        log.path(),
    )
    .await;
    let scrape = eventually(
        Duration::from_secs(10),
        "the mounts to be read",
        async || {
            let s = exporter.scrape().await;
            (s.all("secret_valid", &[]).len() == 5).then_some(s)
        },
    )
    .await;
    assert_eq!(scrape.get("up", &[("source", "secrets")]), Some(1.0));
    let days = |scrape: &Scrape, name: &str, index: &str| {
        let mut labels = secret_labels(name).to_vec();
        labels.push(("index", index));
        labels.push(("key", "tls.crt"));
        scrape.get("secret_cert_days_remaining", &labels)
    };
    assert!((days(&scrape, "site", "0").unwrap() - 10.0).abs() < 0.01);
    assert!((days(&scrape, "site", "1").unwrap() - 100.0).abs() < 0.01);
    assert!((days(&scrape, "old", "0").unwrap() + 2.0).abs() < 0.01);
    let soon = secret_labels("soon");
    let not_before = scrape
        .get("secret_cert_not_before_timestamp_seconds", &soon)
        .unwrap();
    assert!(not_before > OffsetDateTime::now_utc().unix_timestamp() as f64 + 4.0 * 86_400.0);
    let leaf_series = scrape.all(
        "secret_cert_not_after_timestamp_seconds",
        &[("secret_name", "site"), ("index", "0")],
    );
    assert_eq!(leaf_series[0].labels["serial"], leaf.serial);
    assert_eq!(leaf_series[0].labels["subject_cn"], "site");
    assert_eq!(leaf_series[0].labels["issuer_cn"], "Test CA");
    assert_eq!(leaf_series[0].labels["dns_names"], "site.example.com");
    for (name, expected) in [
        ("site", 1.0),
        ("old", 1.0),
        ("soon", 1.0),
        ("garbage", 0.0),
        ("empty", 0.0),
    ] {
        assert_eq!(
            scrape.get("secret_valid", &secret_labels(name)),
            Some(expected),
            "{name}"
        );
    }
    // Envoy collection is off: there is nothing to compare with.
    assert!(scrape.all("secret_cert_served", &[]).is_empty());

    // The private key's bytes appear nowhere: not in /metrics, not in the (trace-level) logs.
    let key_body: String = leaf
        .key_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    let key_fragment = &key_body[..40];
    assert!(!scrape.text.contains(key_fragment));
    let logged = std::fs::read_to_string(log.path()).unwrap();
    assert!(
        logged.contains("Secret has no usable certificate"),
        "{logged}"
    );
    assert!(!logged.contains(key_fragment));
    assert!(!logged.contains("PRIVATE KEY"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_mount_is_up_0_with_reason_io_and_the_others_still_report() {
    let mounts = Mounts::new();
    let (cert, _, _) = make_cert(
        "ok",
        &[0x45],
        time::Duration::days(-1),
        time::Duration::days(30),
        None,
        false,
    );
    kubelet_write(&mounts.path("ok"), &[("tls.crt", cert.pem.as_bytes())], 1);
    let exporter = Exporter::start(
        "",
        &[("EXPORTER_SECRET_DIRS", &mounts.setting(&["ok", "absent"]))],
    )
    .await;
    let scrape = eventually(Duration::from_secs(10), "the first poll", async || {
        let s = exporter.scrape().await;
        (!s.all("secret_valid", &[]).is_empty()).then_some(s)
    })
    .await;
    assert_eq!(scrape.get("up", &[("source", "secrets")]), Some(0.0));
    assert!(
        scrape
            .get(
                "source_errors_total",
                &[("source", "secrets"), ("reason", "io")]
            )
            .unwrap()
            >= 1.0
    );
    assert_eq!(scrape.get("secret_valid", &secret_labels("ok")), Some(1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kubelet_rotation_shows_the_new_serial_and_that_envoy_still_serves_the_old_one() {
    // Envoy serves the demo certificate; the mount starts with that same certificate.
    let certs = demo_certs(time::Duration::days(3));
    let envoy = Envoy::start(&certs).await;
    let _backend = Server::backend(envoy.ports.backend).await;
    let mounts = Mounts::new();
    kubelet_write(
        &mounts.path("demo-tls"),
        &[
            ("tls.crt", certs.chain_pem.as_bytes()),
            ("tls.key", certs.key_pem.as_bytes()),
        ],
        1,
    );
    let exporter = Exporter::start(
        &envoy.admin_url,
        &[("EXPORTER_SECRET_DIRS", &mounts.setting(&["demo-tls"]))],
    )
    .await;
    let id = secret_labels("demo-tls");
    let before = eventually(
        Duration::from_secs(10),
        "the mount to be read",
        async || {
            let s = exporter.scrape().await;
            s.get("secret_cert_served", &id).is_some().then_some(s)
        },
    )
    .await;
    // The Secret side formats serials exactly as Envoy's /certs does.
    assert_eq!(before.get("secret_cert_served", &id), Some(1.0));
    let secret_serial = &before.all(
        "secret_cert_not_after_timestamp_seconds",
        &[("secret_name", "demo-tls"), ("index", "0")],
    )[0]
    .labels["serial"];
    assert_eq!(secret_serial, &certs.leaf_serial);

    // cert-manager renews the Secret; the kubelet swaps the mount; Envoy is not told.
    let (renewed, _, _) = make_cert(
        "demo",
        &[0x77, 0x01],
        time::Duration::days(-1),
        time::Duration::days(90),
        None,
        false,
    );
    kubelet_write(
        &mounts.path("demo-tls"),
        &[
            ("tls.crt", renewed.pem.as_bytes()),
            ("tls.key", renewed.key_pem.as_bytes()),
        ],
        2,
    );
    let after = eventually(Duration::from_secs(5), "the rotation to show", async || {
        let s = exporter.scrape().await;
        let serials: Vec<String> = s
            .all(
                "secret_cert_not_after_timestamp_seconds",
                &[("secret_name", "demo-tls"), ("index", "0")],
            )
            .iter()
            .map(|x| x.labels["serial"].clone())
            .collect();
        (serials == vec![renewed.serial.clone()]).then_some(s)
    })
    .await;
    assert_eq!(after.get("secret_cert_served", &id), Some(0.0));
    assert_eq!(after.get("secret_valid", &id), Some(1.0));
}

#[test]
fn one_shot_mode_waits_for_the_first_read_of_the_mounts() {
    let mounts = Mounts::new();
    let (cert, _, _) = make_cert(
        "once",
        &[0x46],
        time::Duration::days(-1),
        time::Duration::days(30),
        None,
        false,
    );
    kubelet_write(&mounts.path("once"), &[("tls.crt", cert.pem.as_bytes())], 1);
    let out = Command::new(common::EXPORTER)
        .arg("--once")
        .env_clear()
        .env("EXPORTER_ENVOY_ADMIN_URL", "")
        .env("EXPORTER_SECRET_DIRS", mounts.setting(&["once"]))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains(
            "envoy_gateway_exporter_secret_valid{secret_namespace=\"gw\",secret_name=\"once\"} 1"
        ),
        "{text}"
    );
}
