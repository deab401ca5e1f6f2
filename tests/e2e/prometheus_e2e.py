#!/usr/bin/env python3
"""End-to-end test: a real Prometheus scrapes a real Envoy and the exporter, evaluates the shipped
alert rules and answers every dashboard query. Python 3.11 standard library only.

    python3 tests/e2e/prometheus_e2e.py [--envoy .venv/bin/envoy] \
        [--exporter target/debug/envoy-gateway-exporter] [--prometheus prometheus]

The scenario is the demo's (demo/envoy.yaml.tmpl, demo/demo.py) plus what the alerts need:
  Envoy      the demo clusters (backend with one host down, slow cluster with tiny breakers,
             no-endpoints, eds-status-mix) and the demo certificate A (3 days left) on two TLS
             listeners; added here: a cluster whose only host is down, and two TLS listeners serving
             certificates that no watched Secret holds (C: 10 days left, D: 1 day left).
  Secrets    four mounts in the kubelet layout (timestamped dir, ..data symlink, file symlinks):
             demo-tls (A, the served certificate, + ca.crt), demo-tls-renewed (B: a renewal of A that
             Envoy does not serve, 10 days left), expired-tls (E: expired two days ago, not served),
             broken-tls (garbage).
  Traffic    demo.traffic (bursts that trip the slow cluster's breakers, good requests, 503s) plus a
             steady ~20 req/s with 10% 503s (/none) so the error-rate alert passes its traffic guard.
  Prometheus 1 s scrape and evaluation intervals, alerts/rules.yaml, jobs envoy-gateway-exporter and
             envoy-gateway-proxy with the target labels the shipped PodMonitors give in a cluster.

Checks (one line each, `ok - ...` or `FAIL - ...`, then `N passed, M failed`; exit 1 on any failure):
  1. both scrape targets are up; every group and rule of alerts/rules.yaml is loaded, healthy and
     evaluated;
  2. every query of scripts/dashboard_queries.py (dashboards and rules, variables substituted) returns
     a non-NaN sample during the run, except ALLOWED_EMPTY (those must be empty at the end);
  3. EXPECTED_ALERTS are pending or firing, MUST_NOT_FIRE are not, and no other alert is active;
  4. every metric name the dashboards and rules use exists in the exporter's /metrics or in Envoy's
     /stats/prometheus (by origin; Prometheus-generated names in Prometheus itself).
A missing tool is a failure, never a skip.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from http.client import HTTPException
from http.server import ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "demo"))
sys.path.insert(0, str(ROOT / "scripts"))
import dashboard_queries  # noqa: E402
import demo  # noqa: E402

# Target labels the shipped PodMonitors give in a cluster (SPEC §4 "Labels that Prometheus adds").
TARGET_LABELS = {
    "namespace": "envoy-gateway-system",
    "pod": "envoy-default-eg-abc",
    "gateway": "eg",
    "gateway_namespace": "default",
}
RATE_INTERVAL = "15s"  # Grafana's $__rate_interval would be 4 s with 1 s scrapes; 15 s is steadier.
SECRET_NS = "envoy-gateway-system"

BACKEND = "httproute/demo/backend/rule/0"
SLOW = "httproute/demo/slow/rule/0"
NO_ENDPOINTS = "httproute/demo/no-endpoints/rule/0"
ALL_DOWN = "httproute/e2e/all-down/rule/0"
DEMO_SANS = "demo.example.com,www.demo.example.com,127.0.0.1"
SOON_SANS = "soon.e2e.example.com"
CRITICAL_SANS = "critical.e2e.example.com"

# Alerts the scenario makes true: (alertname, labels the active alert must have, why).
EXPECTED_ALERTS = [
    ("EnvoyGatewayAllBackendsUnhealthy", {"envoy_cluster_name": ALL_DOWN},
     "its only host fails active health checks: 1 host, healthy ratio 0"),
    ("EnvoyGatewayBackendsDegraded", {"envoy_cluster_name": "eds-status-mix"},
     "1 of 5 hosts healthy (ratio 0.2 < 0.5)"),
    ("EnvoyGatewayCircuitBreakerOpen", {"envoy_cluster_name": SLOW, "priority": "default"},
     "bursts of 8 slow requests against max_connections 2 / max_pending 1 / max_requests 3"),
    ("EnvoyGatewayHighErrorRate", {"gateway": "eg", "gateway_namespace": "default"},
     "/none answers 503 (no endpoints), breaker overflows answer 503; ~20 req/s passes the 0.5 req/s guard"),
    ("EnvoyGatewayCertExpiringSoon", {"dns_names": SOON_SANS, "kind": "cert_chain"},
     "certificate C, served, 10 days left, in no watched Secret"),
    ("EnvoyGatewayCertExpiringCritical", {"dns_names": CRITICAL_SANS, "kind": "cert_chain"},
     "certificate D, served, 1 day left, in no watched Secret"),
    ("EnvoyGatewaySecretCertExpiringCritical", {"secret_name": "demo-tls", "index": "0"},
     "Secret demo-tls holds the served certificate A, 3 days left"),
    ("EnvoyGatewaySecretCertExpiringSoon", {"secret_name": "demo-tls-renewed", "index": "0"},
     "Secret demo-tls-renewed holds B, 10 days left"),
    ("EnvoyGatewayCertExpired", {"secret_name": "expired-tls", "index": "0"},
     "Secret expired-tls holds E, expired two days ago"),
    ("EnvoyGatewaySecretNotServed", {"secret_name": "demo-tls-renewed"},
     "B is a renewal Envoy does not serve (secret_cert_served 0)"),
    ("EnvoyGatewaySecretNotServed", {"secret_name": "expired-tls"},
     "E is not served either"),
    ("EnvoyGatewaySecretInvalid", {"secret_name": "broken-tls"},
     "tls.crt holds no parseable certificate (secret_valid 0)"),
]

# Alerts that must not be active at the end (the run also fails on any alert not in EXPECTED_ALERTS;
# these are named to document what the rules must get right).
MUST_NOT_FIRE = [
    ("EnvoyGatewayDown", {}, "Envoy is scraped"),
    ("EnvoyGatewayExporterDown", {}, "the exporter is scraped"),
    ("EnvoyGatewayCertExpiringCritical", {"dns_names": DEMO_SANS},
     "A is in Secret demo-tls: reported once, by EnvoyGatewaySecretCertExpiringCritical"),
    ("EnvoyGatewayAllBackendsUnhealthy", {"envoy_cluster_name": NO_ENDPOINTS},
     "a cluster without hosts has no healthy ratio"),
    ("EnvoyGatewayAllBackendsUnhealthy", {"envoy_cluster_name": BACKEND}, "one of its two hosts is healthy"),
    ("EnvoyGatewayBackendsDegraded", {"envoy_cluster_name": BACKEND}, "ratio 0.5 is not below 0.5"),
    ("EnvoyGatewaySecretNotServed", {"secret_name": "demo-tls"}, "Envoy serves A"),
    ("EnvoyGatewaySecretNotServed", {"secret_name": "broken-tls"},
     "an invalid Secret is reported by EnvoyGatewaySecretInvalid only (the exporter has no served series for it)"),
]

# Queries that legitimately return nothing in this scenario, keyed by (source, name[, ref]).
# They must be empty at the end of the run (instant query).
ALLOWED_EMPTY = {
    ("alerts/rules.yaml", "EnvoyGatewayDown"): "Envoy is up",
    ("alerts/rules.yaml", "EnvoyGatewayExporterDown"): "the exporter is up",
    ("alerts/rules.yaml", "EnvoyGatewayExporterSourceDown"): "every source reads fine",
    ("alerts/rules.yaml", "EnvoyGatewayHighLatency"): "P99 is about 1.5 s (the slow backend takes 2 s; threshold 5 s)",
    ("alerts/rules.yaml", "EnvoyGatewayHighConnectionCount"): "a few connections (threshold 8000)",
    ("alerts/rules.yaml", "EnvoyGatewayCircuitBreakerNearCapacity"):
        "thresholds of 1-3 give utilizations 0, 1/3, 1/2, 2/3 or 1, and 1 means open",
}

# Metric names Prometheus itself produces.
PROMETHEUS_NAMES = {"up", "ALERTS", "ALERTS_FOR_STATE", "scrape_duration_seconds", "scrape_samples_scraped",
                    "scrape_samples_post_metric_relabeling", "scrape_series_added"}

EXTRA_LISTENERS = """\
  - name: https-unwatched-{kind}
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          common_tls_context:
            tls_certificates:
            - certificate_chain: {{inline_string: {cert}}}
              private_key: {{inline_string: {key}}}
      filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: https-unwatched-{kind}
          cluster: httproute/demo/backend/rule/0
"""

EXTRA_CLUSTER = """\
  - name: {name}
    connect_timeout: 0.25s
    type: STATIC
    health_checks:
    - timeout: 0.5s
      interval: 0.5s
      no_traffic_interval: 0.5s
      unhealthy_threshold: 1
      healthy_threshold: 1
      http_health_check: {{path: /healthz}}
    load_assignment:
      cluster_name: {name}
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}}}
"""


class Abort(Exception):
    """A step the rest of the run depends on failed (already reported)."""


class Report:
    def __init__(self):
        self.passed = 0
        self.failed = 0

    def ok(self, what: str):
        self.passed += 1
        print(f"ok - {what}", flush=True)

    def fail(self, what: str, detail: str = ""):
        self.failed += 1
        print(f"FAIL - {what}", flush=True)
        for line in detail.splitlines():
            print(f"#   {line}", flush=True)

    def check(self, cond: bool, what: str, detail: str = "") -> bool:
        if cond:
            self.ok(what)
        else:
            self.fail(what, detail)
        return cond


def note(text: str):
    print(f"# {text}", flush=True)


# ------------------------------------------------------------------------------------ set-up

def free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def utc(t: float) -> str:
    return time.strftime("%Y%m%d%H%M%SZ", time.gmtime(t))


def sign_leaf(ca_dir: Path, name: str, cn: str, sans: str, not_before: float, not_after: float):
    """A leaf signed by the demo CA (ca.crt/ca.key in ca_dir) with explicit validity dates
    (`openssl ca -startdate/-enddate`, which also allows certificates that have already expired)."""
    work = ca_dir / "signing"
    work.mkdir(exist_ok=True)
    cnf = work / "ca.cnf"
    if not cnf.exists():
        (work / "index.txt").write_text("")
        cnf.write_text("[ca]\ndefault_ca = e2e\n[e2e]\ndatabase = index.txt\nnew_certs_dir = .\n"
                       "rand_serial = yes\ndefault_md = sha256\npolicy = pol\nunique_subject = no\n"
                       "[pol]\ncommonName = supplied\n")
    key, csr, crt, ext = (work / f"{name}.{s}" for s in ("key", "csr", "crt", "ext"))
    ext.write_text(f"subjectAltName={sans}\n")
    demo.openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                 "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={cn}")
    subprocess.run(["openssl", "ca", "-batch", "-config", "ca.cnf", "-cert", str(ca_dir / "ca.crt"),
                    "-keyfile", str(ca_dir / "ca.key"), "-in", csr.name, "-out", crt.name, "-notext",
                    "-startdate", utc(not_before), "-enddate", utc(not_after), "-extfile", ext.name],
                   cwd=work, check=True, capture_output=True)
    return crt.read_text(), key.read_text()


def kubelet_mount(base: Path, name: str, files: dict[str, str]) -> Path:
    """A Secret volume as the kubelet writes it: files in a timestamped directory, `..data` pointing
    at it, and one symlink per key through `..data`."""
    mount = base / name
    stamp = mount / time.strftime("..%Y_%m_%d_%H_%M_%S.123456789", time.gmtime())
    stamp.mkdir(parents=True)
    for key, text in files.items():
        (stamp / key).write_text(text)
    (mount / "..data").symlink_to(stamp.name)
    for key in files:
        (mount / key).symlink_to(f"..data/{key}")
    return mount


def envoy_config(ports: dict, certs: dict) -> str:
    cert_a, key_a, ca = certs["A"]
    text = demo.render(ports, cert_a, key_a, ca)
    listeners = "".join(
        EXTRA_LISTENERS.format(kind=kind, port=ports[f"UNWATCHED_{kind.upper()}_PORT"],
                               cert=json.dumps(certs[label][0]), key=json.dumps(certs[label][1]))
        for kind, label in (("soon", "C"), ("critical", "D")))
    cluster = EXTRA_CLUSTER.format(name=ALL_DOWN, port=ports["DOWN_PORT"])
    for marker, extra in (("\n  listeners:\n", listeners), ("\n  clusters:\n", cluster)):
        assert text.count(marker) == 1, f"demo/envoy.yaml.tmpl: expected one {marker.strip()!r} section"
        text = text.replace(marker, marker + extra)
    return text


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def spawn(children: list, cmd: list, log: Path, env: dict | None = None) -> subprocess.Popen:
    """Starts cmd with its output in log, in its own session (Ctrl-C reaches only this script, whose
    clean-up then stops it), and records it in children for that clean-up."""
    with open(log, "w") as out:
        child = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    children.append(child)
    return child


def wait_for(what: str, probe, proc: subprocess.Popen, seconds: float):
    """Polls probe() until it is true; raises Abort when proc exits or time runs out."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise Abort(f"{what}: the process exited with status {proc.returncode}")
        try:
            if probe():
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise Abort(f"{what}: not ready after {seconds:.0f} s")


def steady_load(http: str, stop: threading.Event, per_second: float = 20.0):
    """About per_second requests a second, one in ten to /none (503: the cluster has no endpoints)."""
    i = 0
    while not stop.is_set():
        path = "/none" if i % 10 == 0 else "/"
        try:
            demo.get(http + path, 2)
        except (OSError, HTTPException):
            pass
        i += 1
        stop.wait(1.0 / per_second)


# ------------------------------------------------------------------------------------ Prometheus

class Prometheus:
    def __init__(self, base: str):
        self.base = base

    def api(self, path: str, params: dict | None = None, timeout: float = 10.0):
        data = urllib.parse.urlencode(params).encode() if params else None
        request = urllib.request.Request(self.base + path, data=data)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                body = json.load(response)
        except urllib.error.HTTPError as err:
            body = json.loads(err.read() or b"{}")
            raise RuntimeError(f"{path}: HTTP {err.code}: {body.get('error', '')}") from None
        if body.get("status") != "success":
            raise RuntimeError(f"{path}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list:
        return self.api("/api/v1/query", {"query": expr})["result"]

    def query_range(self, expr: str, start: float, end: float, step: float = 1.0) -> list:
        return self.api("/api/v1/query_range", {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}",
                                                "step": str(step)})["result"]


def prometheus_config(rules: Path, exporter: str, admin: str) -> str:
    labels = ", ".join(f"{k}: {json.dumps(v)}" for k, v in TARGET_LABELS.items())
    return f"""\
global: {{scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s}}
rule_files: [{json.dumps(str(rules))}]
scrape_configs:
  - job_name: envoy-gateway-exporter
    static_configs:
      - targets: [{json.dumps(exporter)}]
        labels: {{{labels}}}
  - job_name: envoy-gateway-proxy
    metrics_path: /stats/prometheus
    static_configs:
      - targets: [{json.dumps(admin)}]
        labels: {{{labels}}}
"""


def has_value(result: list) -> bool:
    """True when a query result (vector or matrix) holds at least one non-NaN sample."""
    for series in result:
        points = series.get("values") or ([series["value"]] if "value" in series else [])
        if any(not math.isnan(float(v)) for _, v in points):
            return True
    return False


def matches(alert_labels: dict, wanted: dict) -> bool:
    return all(alert_labels.get(k) == v for k, v in wanted.items())


def describe(alert: dict) -> str:
    labels = alert["labels"]
    keep = {k: v for k, v in sorted(labels.items())
            if k not in ("alertname", "severity", "namespace", "gateway_namespace", "gateway", "pod")}
    return f"{labels['alertname']} {json.dumps(keep)} [{alert['state']}]"


def metric_names(exposition: str) -> set[str]:
    names = set()
    for line in exposition.splitlines():
        if line and not line.startswith("#"):
            names.add(re.split(r"[{\s]", line, maxsplit=1)[0])
    return names


def tail(path: Path, lines: int = 15):
    try:
        text = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return
    note(f"--- last lines of {path.name}")
    for line in text:
        note(f"  {line}")


# ------------------------------------------------------------------------------------ the run

def run(args, report: Report, work: Path, children: list, stop: threading.Event, servers: list):
    exporter_bin = work / "envoy-gateway-exporter"
    shutil.copy2(args.exporter, exporter_bin)  # cargo may rebuild the original under us

    # Certificates: the demo CA and A (what Envoy serves), then B..E signed by the same CA.
    now = time.time()
    day = 86400
    cert_a, key_a, ca = demo.make_certs(work, 3)
    certs = {"A": (cert_a, key_a, ca)}
    certs["B"] = sign_leaf(work, "renewed", "demo.example.com",
                           "DNS:demo.example.com,DNS:www.demo.example.com,IP:127.0.0.1", now - 3600, now + 10 * day)
    certs["C"] = sign_leaf(work, "soon", SOON_SANS, f"DNS:{SOON_SANS}", now - 3600, now + 10 * day)
    certs["D"] = sign_leaf(work, "critical", CRITICAL_SANS, f"DNS:{CRITICAL_SANS}", now - 3600, now + 1 * day)
    certs["E"] = sign_leaf(work, "expired", "expired.e2e.example.com", "DNS:expired.e2e.example.com",
                           now - 30 * day, now - 2 * day)
    mounts = work / "secrets"
    secret_dirs = [
        kubelet_mount(mounts, "demo-tls", {"tls.crt": cert_a, "tls.key": key_a, "ca.crt": ca}),
        kubelet_mount(mounts, "demo-tls-renewed", {"tls.crt": certs["B"][0], "ca.crt": ca}),
        kubelet_mount(mounts, "expired-tls", {"tls.crt": certs["E"][0]}),
        kubelet_mount(mounts, "broken-tls", {"tls.crt": "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n"
                                                        "-----END CERTIFICATE-----\n"}),
    ]
    report.ok("certificates A-E and four Secret mounts in the kubelet layout created")

    # Ports: the backend binds its own; DOWN_PORT stays closed (the failing hosts).
    backend = ThreadingHTTPServer(("127.0.0.1", 0), demo.Backend)
    servers.append(backend)
    threading.Thread(target=backend.serve_forever, daemon=True).start()
    (admin_port, http_port, https_port, https_alt_port, down_port, soon_port, critical_port,
     exporter_port, prometheus_port) = free_ports(9)
    ports = dict(ADMIN_PORT=admin_port, HTTP_PORT=http_port, HTTPS_PORT=https_port,
                 HTTPS_ALT_PORT=https_alt_port, BACKEND_PORT=backend.server_address[1], DOWN_PORT=down_port,
                 UNWATCHED_SOON_PORT=soon_port, UNWATCHED_CRITICAL_PORT=critical_port)
    admin = f"http://127.0.0.1:{admin_port}"
    http = f"http://127.0.0.1:{http_port}"
    exporter_addr = f"127.0.0.1:{exporter_port}"

    # Envoy.
    config = work / "envoy.yaml"
    config.write_text(envoy_config(ports, certs))
    envoy = spawn(children, [args.envoy, "-c", str(config), "--use-dynamic-base-id", "--concurrency", "1",
                             "-l", "warning"], work / "envoy.log")
    wait_for("Envoy", lambda: demo.get(admin + "/ready", 1).strip() == b"LIVE", envoy, 30)
    report.ok(f"Envoy ready (admin {admin})")

    # The exporter.
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXPORTER_")}
    env.update(EXPORTER_ENVOY_ADMIN_URL=admin, EXPORTER_LISTEN_ADDRESS=exporter_addr,
               EXPORTER_SECRET_DIRS=",".join(f"{SECRET_NS}/{d.name}={d}" for d in secret_dirs))
    exporter = spawn(children, [str(exporter_bin)], work / "exporter.log", env)

    def exporter_ready():
        status, body = http_get(f"http://{exporter_addr}/metrics", 5)
        text = body.decode()
        return status == 200 and all(f'envoy_gateway_exporter_up{{source="{s}"}} 1' in text
                                     for s in ("stats", "clusters", "certs", "secrets"))

    wait_for("exporter", exporter_ready, exporter, 30)
    report.ok(f"exporter ready (http://{exporter_addr}/metrics, every source up)")

    # Traffic: the demo's bursts plus a steady load.
    for target in (demo.traffic, steady_load):
        threading.Thread(target=target, args=(http, stop), daemon=True).start()

    # Prometheus.
    prom_config = work / "prometheus.yml"
    prom_config.write_text(prometheus_config(ROOT / "alerts" / "rules.yaml", exporter_addr, f"127.0.0.1:{admin_port}"))
    prom = spawn(children, [args.prometheus, f"--config.file={prom_config}", f"--storage.tsdb.path={work / 'tsdb'}",
                            f"--web.listen-address=127.0.0.1:{prometheus_port}", "--log.level=warn"],
                 work / "prometheus.log")
    base = f"http://127.0.0.1:{prometheus_port}"
    wait_for("Prometheus (a rule or config error stops it: see prometheus.log)",
             lambda: http_get(base + "/-/ready", 1)[0] == 200, prom, 60)
    report.ok(f"Prometheus ready ({base}, rules from alerts/rules.yaml)")
    p = Prometheus(base)
    start = time.time()
    deadline = time.monotonic() + args.timeout

    # What to check.
    values = dashboard_queries.default_values(RATE_INTERVAL)
    values.update(cluster=".*", namespace=TARGET_LABELS["namespace"], gateway=TARGET_LABELS["gateway"], backend=".*")
    queries = dashboard_queries.collect(ROOT, values)
    rules_text = (ROOT / "alerts" / "rules.yaml").read_text()
    want_rules = [name for name, _, _ in dashboard_queries.rules_stdlib(rules_text)]
    want_groups = re.findall(r"^  - name:\s*(\S+)\s*$", rules_text, re.M)

    def allowed(item):
        return ALLOWED_EMPTY.get((item["source"], item["name"], item["ref"])) or \
            ALLOWED_EMPTY.get((item["source"], item["name"]))

    to_query = {i: q for i, q in enumerate(queries) if not allowed(q)}
    query_ok: dict[int, bool] = {}
    query_err: dict[int, str] = {}
    targets_ok = rules_ok = False
    rules_detail = ""
    seen: dict[int, str] = {}  # EXPECTED_ALERTS index -> state first seen
    transient: set[str] = set()
    loaded: dict = {}

    while time.monotonic() < deadline:
        if prom.poll() is not None:
            raise Abort(f"Prometheus exited with status {prom.returncode}")
        if not targets_ok:
            active = p.api("/api/v1/targets")["activeTargets"]
            targets_ok = len(active) == 2 and all(t["health"] == "up" for t in active)
        if not rules_ok:
            groups = p.api("/api/v1/rules")["groups"]
            loaded = {r["name"]: (g["name"], r) for g in groups for r in g["rules"]}
            evaluated = all(not r.get("lastEvaluation", "0001").startswith("0001") for _, r in loaded.values())
            rules_ok = evaluated and set(loaded) >= set(want_rules)
            rules_detail = f"{len(loaded)} rules loaded, evaluated: {evaluated}"
        end = time.time()
        for i, q in to_query.items():
            if query_ok.get(i):
                continue
            try:
                query_ok[i] = has_value(p.query_range(q["expr"], start - 1, end))
            except RuntimeError as err:
                query_ok[i] = False
                query_err[i] = str(err)
        alerts = p.api("/api/v1/alerts")["alerts"]
        for alert in alerts:
            hit = False
            for j, (name, labels, _) in enumerate(EXPECTED_ALERTS):
                if alert["labels"]["alertname"] == name and matches(alert["labels"], labels):
                    seen.setdefault(j, alert["state"])
                    hit = True
            if not hit:
                transient.add(describe(alert))
        if targets_ok and rules_ok and all(query_ok.get(i) for i in to_query) and len(seen) == len(EXPECTED_ALERTS):
            break
        time.sleep(1)
    note(f"polled Prometheus for {time.time() - start:.0f} s")

    # 1. Targets and rules.
    if not report.check(targets_ok, "both scrape targets (envoy-gateway-exporter, envoy-gateway-proxy) are up"):
        for t in p.api("/api/v1/targets")["activeTargets"]:
            note(f"  {t['labels'].get('job')} {t['scrapeUrl']}: {t['health']} {t.get('lastError', '')}")
    groups = p.api("/api/v1/rules")["groups"]
    report.check(sorted(g["name"] for g in groups) == sorted(want_groups),
                 f"rule groups loaded: {', '.join(sorted(g['name'] for g in groups))}",
                 f"alerts/rules.yaml has {want_groups}")
    loaded = {r["name"]: (g["name"], r) for g in groups for r in g["rules"]}
    for name in want_rules:
        if name not in loaded:
            report.fail(f"rule {name} is loaded", rules_detail)
            continue
        group, rule = loaded[name]
        ok = rule.get("health") == "ok" and not rule.get("lastError") and not rule["lastEvaluation"].startswith("0001")
        report.check(ok, f"rule {group}/{name}: health {rule.get('health')}, evaluated, no error",
                     f"lastError: {rule.get('lastError')!r}, lastEvaluation {rule.get('lastEvaluation')}")
    extra = set(loaded) - set(want_rules)
    count = sum(len(g["rules"]) for g in groups)
    report.check(not extra and count == len(want_rules),
                 f"Prometheus loaded exactly the {len(want_rules)} rules of alerts/rules.yaml",
                 f"{count} loaded; not in the file: {sorted(extra)}")

    # 2. Queries.
    for i, q in enumerate(queries):
        label = f"{q['source']} {q['kind']} {q['name']!r}" + (f" {q['ref']}" if q["ref"] else "")
        reason = allowed(q)
        if reason:
            try:
                result = p.query(q["expr"])
                report.check(not result, f"{label} is empty at the end (allowed: {reason})",
                             f"got {json.dumps(result)[:500]}")
            except RuntimeError as err:
                report.fail(f"{label} runs", str(err))
            continue
        report.check(bool(query_ok.get(i)), f"{label} returns data",
                     query_err.get(i, "no non-NaN sample during the run") + f"\nquery: {q['expr']}")

    # 3. Alerts: take the end state from two snapshots 2 s apart, so a single failed scrape
    # (one evaluation's blip) cannot make an alert look unexpectedly active.
    first = {describe(a): a for a in p.api("/api/v1/alerts")["alerts"]}
    time.sleep(2)
    second = {describe(a).rsplit(" [", 1)[0]: a for a in p.api("/api/v1/alerts")["alerts"]}
    final = [a for d, a in first.items() if d.rsplit(" [", 1)[0] in second]
    for a in sorted(final, key=describe):
        note(f"active at the end: {describe(a)}")
    for j, (name, labels, why) in enumerate(EXPECTED_ALERTS):
        active = [a for a in final if a["labels"]["alertname"] == name and matches(a["labels"], labels)]
        state = ", ".join(sorted({a["state"] for a in active})) or "inactive"
        report.check(bool(active), f"alert {name} {json.dumps(labels)} is {state} ({why})",
                     f"first seen: {seen.get(j, 'never')}")
    for name, labels, why in MUST_NOT_FIRE:
        active = [describe(a) for a in final if a["labels"]["alertname"] == name and matches(a["labels"], labels)]
        report.check(not active, f"alert {name} {json.dumps(labels)} is not active ({why})", "\n".join(active))
    unexpected = [describe(a) for a in final
                  if not any(a["labels"]["alertname"] == n and matches(a["labels"], l) for n, l, _ in EXPECTED_ALERTS)]
    report.check(not unexpected, f"no alert outside the expected list is active ({len(final)} active)",
                 "\n".join(unexpected))
    for d in sorted(transient - {describe(a) for a in final}):
        note(f"transiently active during the run (not a failure): {d}")

    # 4. Metric names.
    exporter_names = metric_names(demo.get(f"http://{exporter_addr}/metrics").decode())
    envoy_names = metric_names(demo.get(admin + "/stats/prometheus").decode())
    prometheus_names = set(p.api("/api/v1/label/__name__/values"))
    used: dict[str, set[str]] = {}
    for q in queries:
        for name in dashboard_queries.metric_names(q["expr"]):
            used.setdefault(name, set()).add(q["source"])
    for name in sorted(used):
        origin = dashboard_queries.origin(name)
        if name in PROMETHEUS_NAMES:
            where, found = "Prometheus (generated)", name in prometheus_names
        elif origin == "exporter":
            where, found = "the exporter's /metrics", name in exporter_names
        elif origin == "envoy":
            where, found = "Envoy's /stats/prometheus", name in envoy_names
        else:
            where, found = "the exporter's /metrics or Envoy's /stats/prometheus", name in exporter_names | envoy_names
        report.check(found, f"metric {name} exists in {where} (used in {', '.join(sorted(used[name]))})",
                     "" if name in prometheus_names else "and Prometheus has not ingested it either")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--envoy", default=str(ROOT / ".venv/bin/envoy"))
    parser.add_argument("--exporter", default=str(ROOT / "target/debug/envoy-gateway-exporter"))
    parser.add_argument("--prometheus", default="prometheus")
    parser.add_argument("--timeout", type=float, default=75, help="seconds to wait for data and alerts (default 75)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, TSDB)")
    args = parser.parse_args()

    report = Report()
    started = time.monotonic()

    # Tools: missing is a failure, never a skip.
    prometheus = shutil.which(args.prometheus)
    tools = [("envoy", args.envoy, os.access(args.envoy, os.X_OK),
              "run `make tools` (installs Envoy into .venv) or pass --envoy"),
             ("exporter", args.exporter, os.access(args.exporter, os.X_OK),
              "run `cargo build` or pass --exporter"),
             ("prometheus", prometheus or args.prometheus, bool(prometheus),
              "install the Debian package `prometheus` or pass --prometheus"),
             ("openssl", shutil.which("openssl") or "openssl", bool(shutil.which("openssl")), "install openssl")]
    for name, path, present, hint in tools:
        report.check(present, f"{name} found: {path}", f"{name} missing: {hint}")
    if report.failed:
        print(f"{report.passed} passed, {report.failed} failed")
        return 1
    args.prometheus = prometheus

    work = Path(tempfile.mkdtemp(prefix="egx-e2e-"))
    children: list[subprocess.Popen] = []
    servers: list[ThreadingHTTPServer] = []
    stop = threading.Event()

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    default_hook = threading.excepthook
    # Requests in flight when Envoy stops (demo.traffic's burst threads) may fail with any error.
    threading.excepthook = lambda hook_args: None if stop.is_set() else default_hook(hook_args)
    try:
        run(args, report, work, children, stop, servers)
    except Abort as err:
        report.fail(str(err))
    except KeyboardInterrupt:
        report.fail("interrupted")
    except Exception as err:  # noqa: BLE001 - report, clean up, exit 1
        report.fail(f"unexpected error: {type(err).__name__}: {err}")
        import traceback
        for line in traceback.format_exc().splitlines():
            note(line)
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        stop.set()
        if report.failed:
            for log in ("envoy.log", "exporter.log", "prometheus.log"):
                tail(work / log)
        for child in reversed(children):
            if child.poll() is None:
                child.terminate()
        for child in reversed(children):
            try:
                child.wait(5)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        for server in servers:
            server.shutdown()
            server.server_close()
        if args.keep:
            note(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    note(f"took {time.monotonic() - started:.0f} s")
    print(f"{report.passed} passed, {report.failed} failed")
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
