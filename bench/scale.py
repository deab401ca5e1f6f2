#!/usr/bin/env python3
"""Scale measurement: the exporter against a real Envoy with N clusters x 5 endpoints.

Standard library only (Python 3.11). For each N it generates a static Envoy bootstrap shaped like
Envoy Gateway's (clusters named httproute/<ns>/<name>/rule/0, circuit breakers with
track_remaining on some, outlier detection on some, optional active health checks, optional TLS
listener with many SDS secrets), starts Envoy and the exporter (release build), and measures in the
same run, interleaved round by round (the order alternates every round):

  * wall time of one exporter GET /metrics vs one Envoy GET /stats/prometheus (client side);
  * Envoy's own time per admin request and bytes sent, from an admin access log
    (%COMMON_DURATION(DS_RX_BEG:DS_TX_END:us)%, %BYTES_SENT%, %DOWNSTREAM_WIRE_BYTES_SENT%);
  * the same bytes from Envoy's admin listener counters (http.admin.downstream_cx_tx_bytes_total
    delta around each scrape, minus the cost of the counter read itself, calibrated);
  * Envoy CPU and exporter CPU per scrape (utime+stime from /proc/<pid>/stat);
  * exporter idle RSS (before any scrape) and peak RSS (VmHWM after every scrape);
  * series counts (lines not starting with #).

Then, separately: Envoy's http.admin.downstream_rq_time histogram over an exporter-only phase and a
/stats/prometheus-only phase; 50 concurrent scrapes against an exporter with the default 1 s
collection cache (Envoy's http.admin.downstream_rq_total delta must be one request per source);
and the peak RSS of one `--once` collection.

    python3 bench/scale.py --clusters 1000 5000

prints a markdown table per N and the exact command. --json FILE keeps the raw numbers;
--capture DIR saves what the admin API answered (bench inputs; bench/captured/ is gitignored).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import re
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# Must equal parsers/src/stats.rs STATS_FILTER (checked at start-up below).
STATS_FILTER = r"^cluster\..+\.(circuit_breakers\.(default|high)\.[a-z_]+|upstream_(cx|rq|rq_pending)_active)$"
HOSTS_PER_CLUSTER = 5
CLK_TCK = os.sysconf("SC_CLK_TCK")
PROBE_UA = "scale.py"
ACCESS_LOG_FORMAT = (
    "%START_TIME(%s.%6f)% %COMMON_DURATION(DS_RX_BEG:DS_TX_END:us)% %BYTES_SENT% "
    "%DOWNSTREAM_WIRE_BYTES_SENT% %RESPONSE_CODE% \"%REQ(USER-AGENT)%\" %REQ(:PATH)%\n"
)
ADMIN_COUNTERS = r"^http\.admin\.(downstream_cx_tx_bytes_total|downstream_rq_total)$"
RQ_TIME_FILTER = r"^http\.admin\.downstream_rq_time$"

CHILDREN: list[subprocess.Popen] = []


# ---------------------------------------------------------------------------------------------
# small helpers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(port: int, path: str, ua: str = PROBE_UA, timeout: float = 120.0) -> tuple[int, bytes, float]:
    """One GET on a fresh connection; returns (status, body, seconds from connect to last byte)."""
    started = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"User-Agent": ua})
        response = conn.getresponse()
        body = response.read()
        return response.status, body, time.perf_counter() - started
    finally:
        conn.close()


def cpu_seconds(pid: int) -> float:
    """utime + stime of every thread of the process, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def memory_kib(pid: int) -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
    return out


def series(body: bytes) -> int:
    return sum(1 for line in body.split(b"\n") if line and not line.startswith(b"#"))


def median(values):
    return statistics.median(values) if values else float("nan")


def p90(values):
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]


def mib(kib: float) -> str:
    return f"{kib / 1024:.1f} MiB"


def human_bytes(n: float) -> str:
    for unit, size in (("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n:.0f} B"


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def stop(process: subprocess.Popen, timeout: float = 20.0) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    if process in CHILDREN:
        CHILDREN.remove(process)


def stop_all(*_):
    for process in list(CHILDREN):
        stop(process, 5)


# ---------------------------------------------------------------------------------------------
# the Envoy bootstrap


def tls_secrets(work: Path, count: int) -> list[dict]:
    """`count` SDS secrets, each a self-signed leaf with its own serial and SAN (one shared key,
    to keep generation fast)."""
    if count == 0:
        return []
    key = work / "tls.key"
    subprocess.run(["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(key)],
                   check=True, capture_output=True)
    key_pem = key.read_text()
    secrets = []
    for j in range(count):
        crt = work / f"tls-{j}.crt"
        host = f"app-{j:04d}.example.com"
        subprocess.run(["openssl", "req", "-x509", "-new", "-key", str(key), "-subj", f"/CN={host}",
                        "-addext", f"subjectAltName=DNS:{host},DNS:www.{host}", "-days", str(30 + j % 300),
                        "-set_serial", str(0x5A3C0000 + j), "-out", str(crt)],
                       check=True, capture_output=True)
        secrets.append({"name": f"envoy-gateway-system/{host}-tls",
                        "tls_certificate": {"certificate_chain": {"inline_string": crt.read_text()},
                                            "private_key": {"inline_string": key_pem}}})
        crt.unlink()
    key.unlink()
    return secrets


def hcm(stat_prefix: str, route_config: dict) -> dict:
    return {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": stat_prefix,
            "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
            "route_config": route_config,
        },
    }


def listener(name: str, port: int, filter_chains: list[dict], **extra) -> dict:
    return {"name": name, "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            "filter_chains": filter_chains, **extra}


def cluster_name(i: int) -> str:
    return f"httproute/team-{i % 40:02d}/route-{i:05d}/rule/0"


def bootstrap(n: int, ports: dict, access_log: Path, secrets: list[dict], health_checks: bool) -> dict:
    clusters = []
    for i in range(n):
        name = cluster_name(i)
        if health_checks:
            # Hosts 0-3 are Envoy's own health-check listeners (healthy), host 4 a closed port.
            addresses = [("127.0.0.1", p) for p in ports["hc"]] + [("127.0.0.1", ports["closed"])]
        else:
            # Pod-IP-like loopback addresses; nothing listens and nothing connects to them.
            addresses = [(f"127.{1 + (i // 250) % 250}.{1 + i % 250}.{k + 1}", 8080)
                         for k in range(HOSTS_PER_CLUSTER)]
        c = {
            "name": name,
            "type": "STATIC",
            "connect_timeout": "10s",
            "lb_policy": "LEAST_REQUEST",
            "per_connection_buffer_limit_bytes": 32768,
            "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": {"socket_address": {"address": a, "port_value": p}}}}
                for a, p in addresses]}]},
        }
        if i % 10 == 0:
            thresholds = [{"priority": "DEFAULT", "max_connections": 2048, "max_pending_requests": 512,
                           "max_requests": 4096, "max_retries": 8, "track_remaining": True}]
            if i % 20 == 0:
                thresholds.append({"priority": "HIGH", "max_connections": 4096, "max_requests": 8192})
            c["circuit_breakers"] = {"thresholds": thresholds}
        if i % 4 == 1:
            c["outlier_detection"] = {"consecutive_5xx": 5, "interval": "10s", "base_ejection_time": "30s",
                                      "max_ejection_percent": 10}
        if health_checks:
            c["health_checks"] = [{"timeout": "1s", "interval": "10s", "no_traffic_interval": "60s",
                                   "interval_jitter_percent": 50, "unhealthy_threshold": 1,
                                   "healthy_threshold": 1, "tcp_health_check": {}}]
        clusters.append(c)

    routes = [{"match": {"prefix": f"/team-{i % 40:02d}/route-{i:05d}"}, "route": {"cluster": cluster_name(i)}}
              for i in range(n)]
    listeners = [listener("http-10080", ports["http"], [
        {"filters": [hcm("http-10080", {"name": "http-10080", "virtual_hosts": [
            {"name": "gateway", "domains": ["*"], "routes": routes}]})]}])]
    ok_route = {"virtual_hosts": [{"name": "ok", "domains": ["*"], "routes": [
        {"match": {"prefix": "/"}, "direct_response": {"status": 200}}]}]}
    for k, port in enumerate(ports["hc"]):
        listeners.append(listener(f"hc-{k}", port, [{"filters": [hcm(f"hc-{k}", ok_route)]}]))
    if secrets:
        chains = []
        for j, secret in enumerate(secrets):
            host = secret["name"].split("/", 1)[1].removesuffix("-tls")
            chains.append({
                "filter_chain_match": {"server_names": [host, f"www.{host}"]},
                "transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                    "common_tls_context": {"tls_certificate_sds_secret_configs": [{"name": secret["name"]}]}}},
                "filters": [hcm("https-10443", {"virtual_hosts": [{"name": host, "domains": ["*"], "routes": [
                    {"match": {"prefix": "/"}, "route": {"cluster": cluster_name(j % n)}}]}]})],
            })
        listeners.append(listener("https-10443", ports["https"], chains, listener_filters=[{
            "name": "envoy.filters.listener.tls_inspector",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"}}]))
    return {
        "node": {"id": "scale", "cluster": "scale"},
        "admin": {
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": ports["admin"]}},
            "access_log": [{"name": "envoy.access_loggers.file", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
                "path": str(access_log),
                "log_format": {"text_format_source": {"inline_string": ACCESS_LOG_FORMAT}}}}],
        },
        "static_resources": {"secrets": secrets, "listeners": listeners, "clusters": clusters},
    }


# ---------------------------------------------------------------------------------------------
# processes


def start_envoy(args, work: Path, config: Path, ports: dict) -> subprocess.Popen:
    log = open(work / "envoy.log", "w")
    base_id = 20000 + (os.getpid() % 2000) * 10 + random.randint(0, 9)
    command = [args.envoy, "-c", str(config), "--base-id", str(base_id), "--concurrency", str(args.concurrency),
               "-l", "warning"]
    envoy = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    CHILDREN.append(envoy)
    deadline = time.time() + 600
    while time.time() < deadline:
        if envoy.poll() is not None:
            sys.exit(f"envoy exited with {envoy.returncode}; see {work / 'envoy.log'}")
        try:
            if get(ports["admin"], "/ready", timeout=2)[1].strip() == b"LIVE":
                return envoy
        except OSError:
            pass
        time.sleep(0.2)
    sys.exit("envoy did not become ready")


def start_exporter(args, admin_port: int, cache: str | None) -> tuple[subprocess.Popen, int]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXPORTER_")}
    env.update(EXPORTER_ENVOY_ADMIN_URL=f"http://127.0.0.1:{admin_port}",
               EXPORTER_LISTEN_ADDRESS=f"127.0.0.1:{port}", EXPORTER_LOG_LEVEL="warn")
    if cache is not None:
        env["EXPORTER_COLLECT_CACHE"] = cache
    env.update(args.exporter_env)
    exporter = subprocess.Popen([args.exporter], env=env, stdout=subprocess.DEVNULL)
    CHILDREN.append(exporter)
    deadline = time.time() + 20
    while time.time() < deadline:
        if exporter.poll() is not None:
            sys.exit(f"exporter exited with {exporter.returncode}")
        try:
            if get(port, "/healthz", timeout=1)[0] == 200:
                return exporter, port
        except OSError:
            pass
        time.sleep(0.05)
    sys.exit("exporter did not serve /healthz")


def once_peak_rss(args, admin_port: int) -> dict:
    """Runs `--once` and samples its VmHWM every millisecond until it exits. (wait4's ru_maxrss
    would include the RSS of this Python process, which the child has between fork and exec.)"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXPORTER_")}
    env.update(EXPORTER_ENVOY_ADMIN_URL=f"http://127.0.0.1:{admin_port}", EXPORTER_LOG_LEVEL="warn")
    env.update(args.exporter_env)
    started = time.perf_counter()
    process = subprocess.Popen([args.exporter, "--once"], env=env, stdout=subprocess.DEVNULL)
    CHILDREN.append(process)
    hwm, cpu = 0, 0.0
    while process.poll() is None:
        try:
            hwm = max(hwm, memory_kib(process.pid).get("VmHWM", 0))
            cpu = cpu_seconds(process.pid)
        except (OSError, IndexError, ValueError):
            pass
        time.sleep(0.001)
    CHILDREN.remove(process)
    return {"exit": process.returncode, "max_rss_kib": hwm, "cpu_s": cpu,
            "wall_s": time.perf_counter() - started}


# ---------------------------------------------------------------------------------------------
# Envoy's view


def admin_counters(admin_port: int) -> dict[str, int]:
    body = get(admin_port, "/stats?" + urllib.parse.urlencode({"filter": ADMIN_COUNTERS}))[1]
    out = {}
    for line in body.decode().splitlines():
        name, _, value = line.partition(": ")
        out[name.removeprefix("http.admin.")] = int(value)
    return out


def rq_time_histogram(admin_port: int) -> tuple[float, int]:
    """(sum in ms, count) of http.admin.downstream_rq_time, as of Envoy's last stats flush."""
    query = urllib.parse.urlencode({"filter": RQ_TIME_FILTER})
    body = get(admin_port, "/stats/prometheus?" + query)[1].decode()
    total = count = None
    for line in body.splitlines():
        if line.startswith("envoy_http_downstream_rq_time_sum{") and 'prefix="admin"' in line:
            total = float(line.rsplit(" ", 1)[1])
        if line.startswith("envoy_http_downstream_rq_time_count{") and 'prefix="admin"' in line:
            count = int(float(line.rsplit(" ", 1)[1]))
    if total is None or count is None:
        raise RuntimeError(f"no admin rq_time histogram in {body[:300]!r}")
    return total, count


@dataclass
class LogEntry:
    start: float
    micros: int
    body_bytes: int
    wire_bytes: int
    status: int
    agent: str
    path: str


def read_access_log(path: Path) -> list[LogEntry]:
    pattern = re.compile(r'^(\S+) (\d+) (\d+) (\d+) (\d+) "([^"]*)" (.*)$')
    entries = []
    for line in path.read_text().splitlines():
        m = pattern.match(line)
        if m:
            entries.append(LogEntry(float(m[1]), int(m[2]), int(m[3]), int(m[4]), int(m[5]), m[6], m[7]))
    return entries


# ---------------------------------------------------------------------------------------------
# one N


@dataclass
class Scrape:
    kind: str  # "exporter" or "envoy"
    wall_s: float
    body_bytes: int
    window: tuple[float, float]
    exporter_cpu_s: float
    envoy_cpu_s: float
    admin_tx_bytes: int = 0
    admin_requests: int = 0
    source_durations: dict = field(default_factory=dict)
    envoy_us: int = 0
    envoy_span_us: int = 0
    envoy_body_bytes: int = 0
    envoy_wire_bytes: int = 0
    endpoints: dict = field(default_factory=dict)
    exporter_rss_kib: int = 0


SOURCE_DURATION = re.compile(rb'^envoy_gateway_exporter_source_duration_seconds\{source="(\w+)"\} (\S+)$', re.M)


def measure(args, n: int) -> dict:
    work = Path(tempfile.mkdtemp(prefix=f"egx-scale-{n}-", dir=args.workdir))
    ports = {"admin": free_port(), "http": free_port(), "https": free_port(),
             "hc": [free_port() for _ in range(4)] if args.health_checks else [],
             "closed": free_port()}
    access_log = work / "admin-access.log"
    print(f"[N={n}] generating bootstrap in {work}", file=sys.stderr)
    secrets = tls_secrets(work, args.tls_secrets)
    config = work / "envoy.json"
    config.write_text(json.dumps(bootstrap(n, ports, access_log, secrets, args.health_checks)))
    result: dict = {"clusters": n, "hosts": n * HOSTS_PER_CLUSTER, "tls_secrets": args.tls_secrets,
                    "health_checks": args.health_checks, "envoy_concurrency": args.concurrency,
                    "rounds": args.rounds, "bootstrap_bytes": config.stat().st_size,
                    "exporter_env": args.exporter_env}
    admin = ports["admin"]
    started = time.perf_counter()
    envoy = start_envoy(args, work, config, ports)
    result["envoy_start_s"] = time.perf_counter() - started
    print(f"[N={n}] envoy ready in {result['envoy_start_s']:.1f} s", file=sys.stderr)
    if args.health_checks:
        wait_for_health(admin, n)
    if args.traffic:
        result["traffic"] = warm_traffic(ports["http"], n)
    try:
        result.update(measure_with(args, n, envoy, admin, work))
    finally:
        stop(envoy)
    # Envoy flushes its access log on shutdown; attribute each admin request to a scrape.
    log = read_access_log(access_log)
    attribute(result, log)
    if not args.keep:
        for p in work.iterdir():
            p.unlink()
        work.rmdir()
    else:
        result["workdir"] = str(work)
    return result


def warm_traffic(http_port: int, n: int) -> dict:
    """One request to every cluster (its hosts refuse connections: a quick 503), so that Envoy
    writes each cluster's active and breaker gauges and `usedonly` returns them, as on a gateway
    that carries traffic."""
    started = time.perf_counter()
    statuses: dict[int, int] = {}
    lock = threading.Lock()
    todo = iter(range(n))

    def worker():
        conn = http.client.HTTPConnection("127.0.0.1", http_port, timeout=30)
        while True:
            with lock:
                i = next(todo, None)
            if i is None:
                break
            try:
                conn.request("GET", f"/team-{i % 40:02d}/route-{i:05d}/x", headers={"User-Agent": PROBE_UA})
                response = conn.getresponse()
                response.read()
                status = response.status
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", http_port, timeout=30)
                status = 0
            with lock:
                statuses[status] = statuses.get(status, 0) + 1
        conn.close()

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    took = time.perf_counter() - started
    print(f"  traffic: one request per cluster in {took:.1f} s: {statuses}", file=sys.stderr)
    return {"requests": n, "statuses": statuses, "seconds": took}


def wait_for_health(admin: int, n: int) -> None:
    expected = 4 * n
    deadline = time.time() + 300
    while time.time() < deadline:
        body = get(admin, "/stats?" + urllib.parse.urlencode({"filter": r"\.membership_healthy$"}))[1]
        healthy = sum(int(line.rsplit(b": ", 1)[1]) for line in body.splitlines() if b": " in line)
        if healthy >= expected:
            print(f"  {healthy} healthy hosts", file=sys.stderr)
            return
        time.sleep(2)
    print(f"  warning: only {healthy} of {expected} hosts healthy", file=sys.stderr)


def measure_with(args, n: int, envoy: subprocess.Popen, admin: int, work: Path) -> dict:
    out: dict = {}
    out["envoy_rss_kib_at_start"] = memory_kib(envoy.pid)["VmRSS"]
    if args.capture:
        capture(admin, args.capture / f"n{n}")

    # What the exporter asks for, fetched directly (method 3 of the bytes measurement).
    stats_path = "/stats?" + urllib.parse.urlencode({"usedonly": "", "type": "Gauges", "filter": STATS_FILTER})
    direct = {}
    for name, path in (("stats", stats_path), ("clusters", "/clusters"), ("certs", "/certs")):
        status, body, took = get(admin, path)
        direct[name] = {"bytes": len(body), "client_s": took}
    out["direct_endpoint_bytes"] = direct
    out["clusters_formats"] = clusters_formats(admin, envoy.pid)

    exporter, port = start_exporter(args, admin, "0s")
    time.sleep(1.0)
    idle = memory_kib(exporter.pid)
    out["exporter_idle_rss_kib"] = idle["VmRSS"]
    out["exporter_idle_hwm_kib"] = idle["VmHWM"]

    # Calibrate the cost of reading the admin counters themselves: two reads in a row.
    deltas = []
    for _ in range(5):
        a = admin_counters(admin)
        b = admin_counters(admin)
        deltas.append(b["downstream_cx_tx_bytes_total"] - a["downstream_cx_tx_bytes_total"])
    calibration = round(statistics.median(deltas))
    out["counter_read_tx_bytes"] = calibration

    # Warm-up (one of each, not counted; the exporter's peak RSS still includes it).
    get(port, "/metrics", ua=f"{PROBE_UA} warmup")
    get(admin, "/stats/prometheus", ua=f"{PROBE_UA} warmup")

    scrapes: list[Scrape] = []
    for i in range(args.rounds):
        order = ("exporter", "envoy") if i % 2 == 0 else ("envoy", "exporter")
        before = admin_counters(admin)
        for kind in order:
            e0, v0, t0 = cpu_seconds(exporter.pid), cpu_seconds(envoy.pid), time.time()
            if kind == "exporter":
                status, body, took = get(port, "/metrics", ua=f"{PROBE_UA} scrape")
            else:
                status, body, took = get(admin, "/stats/prometheus", ua=f"{PROBE_UA} prometheus")
            t1, e1, v1 = time.time(), cpu_seconds(exporter.pid), cpu_seconds(envoy.pid)
            if status != 200:
                sys.exit(f"{kind} answered {status}")
            after = admin_counters(admin)
            s = Scrape(kind, took, len(body), (t0, t1), e1 - e0, v1 - v0,
                       admin_tx_bytes=after["downstream_cx_tx_bytes_total"] - before["downstream_cx_tx_bytes_total"]
                       - calibration,
                       admin_requests=after["downstream_rq_total"] - before["downstream_rq_total"] - 1)
            s.exporter_rss_kib = memory_kib(exporter.pid)["VmRSS"]
            if kind == "exporter":
                s.source_durations = {m[1].decode(): float(m[2]) for m in SOURCE_DURATION.finditer(body)}
                out["exporter_series"] = series(body)
                out["exporter_body_bytes"] = len(body)
                if args.capture:
                    (args.capture / f"n{n}" / "metrics.txt").write_bytes(body)
            elif i == args.rounds - 1 or i == args.rounds - 2:
                out["envoy_series"] = series(body)
            scrapes.append(s)
            before = after
        print(f"  round {i + 1}/{args.rounds}: " + ", ".join(
            f"{s.kind} {ms(s.wall_s)}" for s in scrapes[-2:]), file=sys.stderr)
    mem = memory_kib(exporter.pid)
    out["exporter_peak_rss_kib"] = mem["VmHWM"]
    out["exporter_rss_after_kib"] = mem["VmRSS"]
    out["envoy_rss_kib_after"] = memory_kib(envoy.pid)["VmRSS"]
    out["scrapes"] = [s.__dict__ for s in scrapes]

    if args.histogram_rounds:
        out["histogram"] = histogram_phase(args, admin, port)
    stop(exporter)

    if not args.skip_concurrent:
        out["concurrent"] = concurrent_burst(args, admin, work)
    out["once"] = once_peak_rss(args, admin)
    return out


def clusters_formats(admin: int, envoy_pid: int, rounds: int = 5) -> dict:
    """Text `/clusters` (what the exporter reads) against `/clusters?format=json` (the same facts,
    see parsers/src/clusters.rs's parity test): client time, Envoy CPU and bytes, interleaved."""
    result: dict = {}
    for i in range(rounds):
        order = (("text", "/clusters"), ("json", "/clusters?format=json"))
        for kind, path in (order if i % 2 == 0 else order[::-1]):
            cpu0 = cpu_seconds(envoy_pid)
            _, body, took = get(admin, path)
            row = result.setdefault(kind, {"client_s": [], "envoy_cpu_s": [], "bytes": 0})
            row["client_s"].append(took)
            row["envoy_cpu_s"].append(cpu_seconds(envoy_pid) - cpu0)
            row["bytes"] = len(body)
    return result


def histogram_phase(args, admin: int, port: int) -> dict:
    """Envoy's own http.admin.downstream_rq_time (milliseconds, merged at each 5 s stats flush):
    its sum over an exporter-only phase and over a /stats/prometheus-only phase."""
    flush = 5.5
    k = args.histogram_rounds
    time.sleep(flush)
    s0, c0 = rq_time_histogram(admin)
    for _ in range(k):
        get(port, "/metrics", ua=f"{PROBE_UA} histogram")
    time.sleep(flush)
    s1, c1 = rq_time_histogram(admin)
    for _ in range(k):
        get(admin, "/stats/prometheus", ua=f"{PROBE_UA} histogram")
    time.sleep(flush)
    s2, c2 = rq_time_histogram(admin)
    # Each phase also contains the one histogram read that opened it (a ~1 ms request).
    return {"rounds": k,
            "exporter": {"sum_ms": s1 - s0, "requests": c1 - c0},
            "envoy": {"sum_ms": s2 - s1, "requests": c2 - c1}}


def concurrent_burst(args, admin: int, work: Path) -> dict:
    """50 scrapes at once against an exporter with the default collection cache (1 s)."""
    exporter, port = start_exporter(args, admin, None)
    time.sleep(1.0)
    idle = memory_kib(exporter.pid)["VmRSS"]
    before = admin_counters(admin)
    barrier = threading.Barrier(args.concurrent)
    results: list = [None] * args.concurrent

    def one(i):
        barrier.wait()
        try:
            status, body, took = get(port, "/metrics", ua=f"{PROBE_UA} burst")
            results[i] = (status, len(body), took)
        except OSError as e:
            results[i] = (0, 0, repr(e))

    t0 = time.time()
    threads = [threading.Thread(target=one, args=(i,)) for i in range(args.concurrent)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    t1 = time.time()
    after = admin_counters(admin)
    mem = memory_kib(exporter.pid)
    stop(exporter)
    ok = [r for r in results if r and r[0] == 200]
    return {"scrapes": args.concurrent, "ok": len(ok), "window": (t0, t1),
            "admin_requests": after["downstream_rq_total"] - before["downstream_rq_total"] - 1,
            "admin_tx_bytes": after["downstream_cx_tx_bytes_total"] - before["downstream_cx_tx_bytes_total"],
            "max_wall_s": max((r[2] for r in ok), default=float("nan")),
            "median_wall_s": median([r[2] for r in ok]),
            "idle_rss_kib": idle, "peak_rss_kib": mem["VmHWM"]}


def capture(admin: int, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    query = urllib.parse.urlencode({"usedonly": "", "type": "Gauges", "filter": STATS_FILTER})
    (out / "stats.txt").write_bytes(get(admin, f"/stats?{query}")[1])
    (out / "clusters.txt").write_bytes(get(admin, "/clusters")[1])
    (out / "certs.json").write_bytes(get(admin, "/certs")[1])
    print(f"  captured admin output into {out}", file=sys.stderr)


def endpoint_of(path: str) -> str:
    if path.startswith("/stats/prometheus"):
        return "prometheus"
    if path.startswith("/stats"):
        return "stats"
    if path.startswith("/clusters"):
        return "clusters"
    if path.startswith("/certs"):
        return "certs"
    return path


def attribute(result: dict, log: list[LogEntry]) -> None:
    """Adds Envoy's per-request time and bytes (access log) to each scrape and the burst."""
    exporter_requests = [e for e in log if e.agent.startswith("envoy-gateway-exporter/")]
    for s in result.get("scrapes", []):
        t0, t1 = s["window"]
        if s["kind"] == "exporter":
            mine = [e for e in exporter_requests if t0 - 0.001 <= e.start <= t1]
        else:
            mine = [e for e in log if e.agent == f"{PROBE_UA} prometheus" and t0 - 0.001 <= e.start <= t1]
        s["envoy_us"] = sum(e.micros for e in mine)
        s["envoy_span_us"] = round((max(e.start + e.micros / 1e6 for e in mine) - min(e.start for e in mine)) * 1e6) if mine else 0
        s["envoy_body_bytes"] = sum(e.body_bytes for e in mine)
        s["envoy_wire_bytes"] = sum(e.wire_bytes for e in mine)
        s["endpoints"] = {endpoint_of(e.path): {"us": e.micros, "bytes": e.body_bytes} for e in mine}
        s["log_requests"] = len(mine)
    burst = result.get("concurrent")
    if burst:
        t0, t1 = burst["window"]
        mine = [e for e in exporter_requests if t0 - 0.001 <= e.start <= t1 + 0.001]
        burst["log_requests"] = {}
        for e in mine:
            k = endpoint_of(e.path)
            burst["log_requests"][k] = burst["log_requests"].get(k, 0) + 1


# ---------------------------------------------------------------------------------------------
# report


def verdict(ok: bool, detail: str) -> str:
    return f"{'met' if ok else '**missed**'} ({detail})"


def report(r: dict) -> str:
    exp = [s for s in r["scrapes"] if s["kind"] == "exporter"]
    env = [s for s in r["scrapes"] if s["kind"] == "envoy"]

    def col(rows, key, scale=1.0):
        return [s[key] * scale for s in rows]

    e_wall, v_wall = col(exp, "wall_s"), col(env, "wall_s")
    wall_ratio = median(e_wall) / median(v_wall)
    e_bytes = median(col(exp, "envoy_body_bytes"))
    e_wire = median(col(exp, "envoy_wire_bytes"))
    e_counter = median(col(exp, "admin_tx_bytes"))
    v_bytes = median(col(env, "body_bytes"))
    v_counter = median(col(env, "admin_tx_bytes"))
    bytes_ratio = e_bytes / v_bytes
    e_envoy_us, v_envoy_us = col(exp, "envoy_us"), col(env, "envoy_us")
    e_span = col(exp, "envoy_span_us")
    e_cpu, v_cpu = sum(col(exp, "exporter_cpu_s")) / len(exp), sum(col(env, "envoy_cpu_s")) / len(env)
    e_envoy_cpu = sum(col(exp, "envoy_cpu_s")) / len(exp)
    idle, peak = r["exporter_idle_rss_kib"], r["exporter_peak_rss_kib"]
    burst = r.get("concurrent")
    lines = [
        f"#### N = {r['clusters']:,} clusters x {HOSTS_PER_CLUSTER} hosts ({r['hosts']:,} hosts"
        f"{', active health checks' if r['health_checks'] else ''}"
        f"{', %d TLS secrets' % r['tls_secrets'] if r['tls_secrets'] else ''}), "
        f"{len(exp)} interleaved rounds, Envoy --concurrency {r['envoy_concurrency']}"
        f"{''.join(f', exporter env {k}={v}' for k, v in r.get('exporter_env', []))}",
        "",
        "| measure | exporter `/metrics` | Envoy `/stats/prometheus` | exporter / Envoy | goal |",
        "|---|---|---|---|---|",
        f"| wall time per scrape, median (p90) | {ms(median(e_wall))} ({ms(p90(e_wall))}) | "
        f"{ms(median(v_wall))} ({ms(p90(v_wall))}) | {wall_ratio:.2f} | "
        f"<= 0.25: {verdict(wall_ratio <= 0.25, f'{wall_ratio / 0.25:.1f}x the goal' if wall_ratio > 0.25 else f'{wall_ratio:.2f}')} |",
        f"| bytes sent by the admin API per scrape (access log, body) | {human_bytes(e_bytes)} | {human_bytes(v_bytes)} | "
        f"{bytes_ratio:.1%} | <= 15%: {verdict(bytes_ratio <= 0.15, f'{bytes_ratio:.1%}')} |",
        f"| same, on the wire (access log / `http.admin.downstream_cx_tx_bytes_total` delta) | "
        f"{human_bytes(e_wire)} / {human_bytes(e_counter)} | {human_bytes(median(col(env, 'envoy_wire_bytes')))} / "
        f"{human_bytes(v_counter)} | {e_counter / v_counter:.1%} | |",
        f"| Envoy time per scrape: sum of its admin requests, first byte in to last byte out, median (p90) | "
        f"{ms(median(e_envoy_us) / 1e6)} ({ms(p90(e_envoy_us) / 1e6)}); the 3 run concurrently, span {ms(median(e_span) / 1e6)} | "
        f"{ms(median(v_envoy_us) / 1e6)} ({ms(p90(v_envoy_us) / 1e6)}) | {median(e_envoy_us) / median(v_envoy_us):.2f} | |",
        f"| Envoy CPU per scrape (utime+stime delta / rounds) | {ms(e_envoy_cpu)} | {ms(v_cpu)} | "
        f"{e_envoy_cpu / v_cpu if v_cpu else float('nan'):.2f} | |",
    ]
    h = r.get("histogram")
    if h:
        he, hv = h["exporter"], h["envoy"]
        lines.append(
            f"| Envoy `http.admin.downstream_rq_time` sum / scrape ({h['rounds']} scrapes of each alone) | "
            f"{he['sum_ms'] / h['rounds']:.1f} ms ({he['requests']} requests) | {hv['sum_ms'] / h['rounds']:.1f} ms "
            f"({hv['requests']} requests) | {(he['sum_ms'] / max(hv['sum_ms'], 1)):.2f} | |")
    lines += [
        f"| exporter CPU per scrape (utime+stime delta / rounds) | {ms(e_cpu)} | | | |",
        f"| exporter RSS idle (before any scrape) | {mib(idle)} | | | <= 16 MiB: {verdict(idle <= 16 * 1024, mib(idle))} |",
        f"| exporter peak RSS (VmHWM after all scrapes) | {mib(peak)} | | | <= 64 MiB: {verdict(peak <= 64 * 1024, mib(peak))} |",
        f"| series | {r['exporter_series']:,} | {r['envoy_series']:,} | {r['exporter_series'] / r['envoy_series']:.1%} | |",
        f"| response body | {human_bytes(r['exporter_body_bytes'])} | {human_bytes(v_bytes)} | "
        f"{r['exporter_body_bytes'] / v_bytes:.1%} | |",
        "",
    ]
    if burst:
        lines.insert(len(lines) - 1,
        f"| {burst['scrapes']} concurrent scrapes, default 1 s cache: admin requests (`downstream_rq_total` delta) | "
        f"{burst['admin_requests']} ({', '.join(f'{k} {v}' for k, v in sorted(burst.get('log_requests', {}).items()))}); "
        f"{burst['ok']}/{burst['scrapes']} answered, slowest {ms(burst['max_wall_s'])}, peak RSS {mib(burst['peak_rss_kib'])} | | | "
        f"one per source: {verdict(burst['admin_requests'] == 3, str(burst['admin_requests']))} |")
    # Where the exporter's time goes.
    per_source = {}
    for s in exp:
        for k, v in s["source_durations"].items():
            per_source.setdefault(k, []).append(v)
    endpoints = {}
    for s in exp:
        for k, v in s["endpoints"].items():
            endpoints.setdefault(k, []).append(v)
    lines.append("Per admin endpoint the exporter reads (medians): " + "; ".join(
        f"`{k}` {human_bytes(median([v['bytes'] for v in endpoints.get(k, [])]))}, Envoy "
        f"{ms(median([v['us'] for v in endpoints.get(k, [])]) / 1e6)}, exporter fetch+parse "
        f"{ms(median(per_source.get(k, [float('nan')])))}" for k in ("stats", "clusters", "certs")) + ".")
    slowest_source = [max(s["source_durations"].values()) for s in exp if s["source_durations"]]
    render = [w - src for w, src in zip(e_wall, slowest_source)]
    lines.append(f"Exporter wall time minus its slowest source (derive + render + serve, approx.): "
                 f"median {ms(median(render))}. One `--once` collection: peak RSS {mib(r['once']['max_rss_kib'])}, "
                 f"CPU {ms(r['once']['cpu_s'])}. Envoy RSS {mib(r['envoy_rss_kib_after'])}; "
                 f"Envoy start {r['envoy_start_s']:.1f} s; bootstrap {human_bytes(r['bootstrap_bytes'])}.")
    formats = r.get("clusters_formats")
    if formats:
        lines.append("`/clusters` text vs `?format=json` (5 interleaved fetches, medians): " + "; ".join(
            f"{kind} {human_bytes(f['bytes'])}, client {ms(median(f['client_s']))}, Envoy CPU "
            f"{ms(statistics.mean(f['envoy_cpu_s']))}" for kind, f in formats.items()) + ".")
    lines.append("")
    return "\n".join(lines)


def envoy_version(envoy: str) -> str:
    out = subprocess.run([envoy, "--version"], capture_output=True, text=True).stdout
    m = re.search(r"version: \S+?/(\d+\.\d+\.\d+)/", out)
    return m[1] if m else out.strip()


def exporter_version(exporter: str) -> str:
    return subprocess.run([exporter, "--version"], capture_output=True, text=True).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envoy", default=str(REPO / ".venv/bin/envoy"))
    parser.add_argument("--exporter", default=str(REPO / "target/release/envoy-gateway-exporter"))
    parser.add_argument("--clusters", type=int, nargs="+", default=[1000, 5000])
    parser.add_argument("--rounds", type=int, default=20, help="interleaved rounds per N")
    parser.add_argument("--histogram-rounds", type=int, default=10,
                        help="scrapes per phase of the rq_time histogram measurement (0 skips it)")
    parser.add_argument("--concurrent", type=int, default=50, help="scrapes in the concurrency burst")
    parser.add_argument("--concurrency", type=int, default=os.cpu_count(),
                        help="Envoy --concurrency (Envoy Gateway's default is the number of cores)")
    parser.add_argument("--tls-secrets", type=int, default=0, help="SDS secrets on a TLS listener")
    parser.add_argument("--health-checks", action="store_true",
                        help="active TCP health checks; 4 of each cluster's 5 hosts pass, 1 fails")
    parser.add_argument("--exporter-env", metavar="NAME=VALUE", action="append", default=[],
                        type=lambda kv: tuple(kv.split("=", 1)),
                        help="extra environment for the exporter (e.g. MALLOC_ARENA_MAX=1); repeatable")
    parser.add_argument("--skip-concurrent", action="store_true", help="skip the concurrent-scrapes burst")
    parser.add_argument("--no-traffic", dest="traffic", action="store_false",
                        help="skip the one request per cluster that makes Envoy write its gauges")
    parser.add_argument("--capture", type=Path, help="save the admin API's answers under DIR/n<N>/")
    parser.add_argument("--json", type=Path, help="write the raw results here")
    parser.add_argument("--workdir", help="where temporary bootstraps and logs go")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (bootstrap, logs)")
    args = parser.parse_args()

    stats_rs = (REPO / "parsers/src/stats.rs").read_text()
    if f'r"{STATS_FILTER}"' not in stats_rs:
        sys.exit("STATS_FILTER in bench/scale.py differs from parsers/src/stats.rs; update it")
    for tool in (args.envoy, args.exporter):
        if not os.access(tool, os.X_OK):
            sys.exit(f"{tool} is missing: run `make tools` and `cargo build --release --locked`")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    command = "python3 bench/scale.py " + shlex.join(sys.argv[1:])
    results = []
    try:
        for n in args.clusters:
            results.append(measure(args, n))
    finally:
        stop_all()
    if args.json:
        args.json.write_text(json.dumps({"command": command, "results": results}, indent=1))
    print(f"Command: `{command}`")
    print(f"Machine: {os.cpu_count()} cores, {Path('/proc/loadavg').read_text().split()[0]} load at the end; "
          f"Envoy {envoy_version(args.envoy)}; exporter {exporter_version(args.exporter)}\n")
    for r in results:
        print(report(r))


if __name__ == "__main__":
    main()
