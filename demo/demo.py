#!/usr/bin/env python3
"""Runs the demo: a real Envoy with a failing backend, tiny circuit breakers and a certificate a
few days from expiry, plus the exporter in front of it. Standard library only.

    python3 demo/demo.py --envoy .venv/bin/envoy --exporter target/debug/envoy-gateway-exporter

With --capture DIR it only starts Envoy, waits for health checks to settle, saves what the admin
API answers (the parser fixtures in tests/fixtures/envoy-1.40) and exits.
"""

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

HERE = Path(__file__).resolve().parent
STATS_FILTER = r"^cluster\..+\.(circuit_breakers\.(default|high)\.[a-z_]+|upstream_(cx|rq|rq_pending)_active)$"


class Backend(BaseHTTPRequestHandler):
    """/healthz answers at once, /slow after two seconds, anything else at once."""

    def do_GET(self):
        if self.path.startswith("/slow"):
            time.sleep(2)
        body = b"ok\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def openssl(*args):
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_certs(work: Path, leaf_days: int):
    """A CA and a leaf it signs, valid for leaf_days, with DNS and IP SANs."""
    ca_key, ca_crt = work / "ca.key", work / "ca.crt"
    key, csr, crt = work / "tls.key", work / "tls.csr", work / "tls.crt"
    ext = work / "leaf.ext"
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", str(ca_key), "-out", str(ca_crt), "-days", "365", "-subj", "/CN=Demo CA")
    openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", str(key), "-out", str(csr), "-subj", "/CN=demo.example.com")
    ext.write_text("subjectAltName=DNS:demo.example.com,DNS:www.demo.example.com,IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", str(csr), "-CA", str(ca_crt), "-CAkey", str(ca_key),
            "-CAcreateserial", "-out", str(crt), "-days", str(leaf_days), "-extfile", str(ext))
    return crt.read_text(), key.read_text(), ca_crt.read_text()


def render(ports: dict, cert: str, key: str, ca: str) -> str:
    text = (HERE / "envoy.yaml.tmpl").read_text()
    values = {k: str(v) for k, v in ports.items()}
    values.update(CERT_CHAIN=json.dumps(cert), PRIVATE_KEY=json.dumps(key), TRUSTED_CA=json.dumps(ca))
    for name, value in values.items():
        text = text.replace("{{" + name + "}}", value)
    assert "{{" not in text, "unfilled placeholder"
    return text


def get(url: str, timeout: float = 5.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read()


def wait_ready(admin: str, proc: subprocess.Popen, seconds: float = 20):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit(f"envoy exited with {proc.returncode}; see its log")
        try:
            if get(admin + "/ready", 1).strip() == b"LIVE":
                return
        except OSError:
            pass
        time.sleep(0.1)
    sys.exit("envoy did not become ready")


def traffic(http: str, stop: threading.Event):
    """Every 10 s: a burst that overflows the slow cluster's breakers, some good requests and
    some that fail (no endpoints), so every panel has something to show."""

    def one(path):
        try:
            get(http + path, 10)
        except OSError:
            pass

    while not stop.is_set():
        burst = [threading.Thread(target=one, args=("/slow",)) for _ in range(8)]
        burst += [threading.Thread(target=one, args=(p,)) for p in ["/"] * 20 + ["/none"] * 2]
        for t in burst:
            t.start()
        stop.wait(10)


def capture(admin: str, out: Path):
    out.mkdir(parents=True, exist_ok=True)
    query = urllib.parse.urlencode({"usedonly": "", "type": "Gauges", "filter": STATS_FILTER})
    (out / "stats.txt").write_bytes(get(f"{admin}/stats?{query}"))
    (out / "clusters.txt").write_bytes(get(f"{admin}/clusters"))
    (out / "clusters.json").write_bytes(get(f"{admin}/clusters?format=json"))
    (out / "certs.json").write_bytes(get(f"{admin}/certs"))
    membership = urllib.parse.urlencode({"filter": r"membership_(healthy|degraded|total)$"})
    (out / "membership.txt").write_bytes(get(f"{admin}/stats?{membership}"))
    print(f"captured admin output into {out}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envoy", required=True)
    parser.add_argument("--exporter")
    parser.add_argument("--admin-port", type=int, default=19000)
    parser.add_argument("--listen", default="127.0.0.1:19100")
    parser.add_argument("--http-port", type=int, default=10080)
    parser.add_argument("--backend-port", type=int, default=18080)
    parser.add_argument("--cert-days", type=int, default=3)
    parser.add_argument("--capture", type=Path)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="egx-demo-"))
    ports = dict(ADMIN_PORT=args.admin_port, HTTP_PORT=args.http_port, HTTPS_PORT=args.http_port + 363,
                 HTTPS_ALT_PORT=args.http_port + 364, BACKEND_PORT=args.backend_port,
                 DOWN_PORT=args.backend_port + 1)
    cert, key, ca = make_certs(work, args.cert_days)
    config = work / "envoy.yaml"
    config.write_text(render(ports, cert, key, ca))
    # The private key only lives in the rendered config (Envoy needs it); drop the files.
    for name in ("tls.key", "ca.key", "tls.csr"):
        (work / name).unlink()

    backend = ThreadingHTTPServer(("127.0.0.1", args.backend_port), Backend)
    threading.Thread(target=backend.serve_forever, daemon=True).start()

    children = []
    stop = threading.Event()

    def cleanup(*_):
        stop.set()
        for child in children:
            child.terminate()
        for child in children:
            try:
                child.wait(5)
            except subprocess.TimeoutExpired:
                child.kill()
        shutil.rmtree(work, ignore_errors=True)

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    envoy_log = open(work / "envoy.log", "w")
    envoy = subprocess.Popen([args.envoy, "-c", str(config), "--base-id", str(random.randint(1000, 60000)),
                              "-l", "warning"], stdout=envoy_log, stderr=subprocess.STDOUT)
    children.append(envoy)
    admin = f"http://127.0.0.1:{args.admin_port}"
    try:
        wait_ready(admin, envoy)
        if args.capture:
            time.sleep(3)  # health checks run every 0.5 s; let them settle
            capture(admin, args.capture)
            return
        env = dict(os.environ, EXPORTER_ENVOY_ADMIN_URL=admin, EXPORTER_LISTEN_ADDRESS=args.listen)
        exporter = subprocess.Popen([args.exporter], env=env)
        children.append(exporter)
        threading.Thread(target=traffic, args=(f"http://127.0.0.1:{args.http_port}", stop), daemon=True).start()
        print(f"""
Demo running:
  exporter metrics   http://{args.listen}/metrics
  Envoy admin        {admin}   (/clusters, /certs, /stats)
  Envoy HTTP         http://127.0.0.1:{args.http_port}/   (/slow trips the breakers, /none fails)
  backend cluster    one of its two hosts is down (failed_active_health_check)
  certificate        {args.cert_days} days from expiry, served on two TLS listeners
Try: curl -s http://{args.listen}/metrics | grep -E 'healthy_ratio|breaker_open|days_remaining'
Ctrl-C stops everything.
""", flush=True)
        while exporter.poll() is None and envoy.poll() is None:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        cleanup()


if __name__ == "__main__":
    main()
