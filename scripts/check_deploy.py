#!/usr/bin/env python3
"""Structured checks of the deployment artefacts, run by scripts/check-deploy.sh after it has
rendered every kustomize directory under deploy/ (one YAML file per directory in --rendered).

What is checked here (the shell script adds: rendering, kubernetes-validate, promtool, hadolint):
  * every rendered object: apiVersion/kind/metadata.name, and a known API group;
  * custom resources, for the fields their CRDs require or constrain: EnvoyProxy (provider type,
    envoyDeployment/envoyDaemonSet patch `type`/`value`), PodMonitor, PrometheusRule;
  * every exporter container (workloads and EnvoyProxy patches): non-root, read-only root
    filesystem, no privilege escalation, capabilities dropped, seccomp RuntimeDefault, requests and
    limits, /healthz and /readyz probes, a `metrics` port equal to the listen port;
  * drift against the binary: every EXPORTER_* name in the manifests and docs/deploy.md is a
    setting the binary accepts (from `--help` of a fresh binary, else src/config.rs);
  * the dashboards' ConfigMaps hold dashboards/*.json byte for byte; the PrometheusRule is
    alerts/prometheusrule.yaml unchanged;
  * scrape configuration: the PodMonitors and deploy/prometheus/scrape-configs.yaml, applied to
    model pods (Envoy Gateway's proxy pod with the sidecar patch applied, the standalone pod), give
    exactly the jobs and labels of SPEC section 4 ("Labels that Prometheus adds");
  * Dockerfile: pinned base images, the build command equal to the Makefile `release` recipe, every
    Cargo target copied into the build, USER/EXPOSE/ENTRYPOINT/version consistent with the rest.

It also writes the native Kubernetes objects (plus a workload built around each EnvoyProxy patch)
to --native-out for kubernetes-validate, and the plain Prometheus configuration with Kubernetes
discovery replaced by static_configs to --promtool-out (Debian's promtool lacks Kubernetes SD).

Prints "ok   - ..." / "FAIL - ..." lines and writes "PASSED FAILED" to --counts.
Python 3.11+ (tomllib) and PyYAML.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
EXPORTER = "envoy-gateway-exporter"
PROXY_JOB = "envoy-gateway-proxy"
SCRAPE_LABELS = ("namespace", "pod", "gateway", "gateway_namespace")
# Build-time variables that are not runtime settings (build.rs reads EXPORTER_REVISION).
BUILD_TIME_VARIABLES = {"EXPORTER_REVISION"}

NATIVE_GROUPS = {
    "v1",
    "apps/v1",
    "batch/v1",
    "policy/v1",
    "autoscaling/v2",
    "networking.k8s.io/v1",
    "rbac.authorization.k8s.io/v1",
}
CRD_KINDS = {
    ("gateway.envoyproxy.io/v1alpha1", "EnvoyProxy"),
    ("monitoring.coreos.com/v1", "PodMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
}

# EnvoyProxy fields on the path the sidecar patch takes (Envoy Gateway's CRD,
# gateway.envoyproxy.io_envoyproxies.yaml), so that a misspelt key is caught.
EP_PROVIDER_KEYS = {"type", "kubernetes", "host"}
EP_PROVIDER_TYPES = {"Kubernetes", "Host"}
EP_KUBERNETES_KEYS = {
    "envoyDaemonSet",
    "envoyDeployment",
    "envoyHpa",
    "envoyPDB",
    "envoyService",
    "envoyServiceAccount",
    "useListenerPortAsContainerPort",
}
EP_DEPLOYMENT_KEYS = {"container", "initContainers", "name", "patch", "pod", "replicas", "strategy"}
EP_DAEMONSET_KEYS = {"container", "name", "patch", "pod", "strategy"}
EP_PATCH_KEYS = {"type", "value"}
EP_PATCH_TYPES = {"StrategicMerge", "JSONMerge"}
# Envoy Gateway's own proxy containers: the patch must add a container, not change these.
EG_CONTAINERS = {"envoy", "shutdown-manager"}

# Prometheus Operator RelabelConfig fields and actions (monitoring.coreos.com/v1).
RELABEL_KEYS = {"sourceLabels", "separator", "targetLabel", "regex", "modulus", "replacement", "action"}
RELABEL_ACTIONS = {
    "replace", "keep", "drop", "hashmod", "labelmap", "labeldrop", "labelkeep",
    "lowercase", "uppercase", "keepequal", "dropequal",
}
PODMONITOR_SPEC_KEYS = {
    "jobLabel", "podTargetLabels", "podMetricsEndpoints", "selector", "selectorMechanism",
    "namespaceSelector", "sampleLimit", "targetLimit", "labelLimit", "labelNameLengthLimit",
    "labelValueLengthLimit", "keepDroppedTargets", "attachMetadata", "scrapeClass",
    "scrapeProtocols", "fallbackScrapeProtocol", "bodySizeLimit", "scrapeClassicHistograms",
    "nativeHistogramBucketLimit", "nativeHistogramMinBucketFactor",
    "convertClassicHistogramsToNHCB", "scrapeNativeHistograms",
}
POD_METRICS_ENDPOINT_KEYS = {
    "port", "portNumber", "targetPort", "path", "scheme", "params", "interval", "scrapeTimeout",
    "honorLabels", "honorTimestamps", "trackTimestampsStaleness", "metricRelabelings",
    "relabelings", "filterRunning", "followRedirects", "enableHttp2", "proxyUrl", "noProxy",
    "proxyFromEnvironment", "proxyConnectHeader", "authorization", "basicAuth", "oauth2",
    "bearerTokenSecret", "tlsConfig",
}

# The Envoy Gateway proxy pod the scrape configuration is tried on: labels and containers as
# Envoy Gateway renders them (internal/infrastructure/kubernetes/proxy: container `envoy` with ports
# metrics=19001 and readiness=19003, `shutdown-manager` without ports), for Gateway default/eg.
EG_PROXY_POD = {
    "namespace": "envoy-gateway-system",
    "name": "envoy-default-eg-e41e7b31-6f8d9c7b5-x2k9p",
    "ip": "10.244.1.17",
    "labels": {
        "app.kubernetes.io/component": "proxy",
        "app.kubernetes.io/managed-by": "envoy-gateway",
        "app.kubernetes.io/name": "envoy",
        "gateway.envoyproxy.io/owning-gateway-name": "eg",
        "gateway.envoyproxy.io/owning-gateway-namespace": "default",
    },
    "containers": [
        {"name": "envoy", "ports": [
            {"name": "metrics", "containerPort": 19001, "protocol": "TCP"},
            {"name": "readiness", "containerPort": 19003, "protocol": "TCP"},
        ]},
        {"name": "shutdown-manager"},
    ],
}
# A pod that must never be scraped: same namespace, not an Envoy Gateway proxy, port named metrics.
OTHER_POD = {
    "namespace": "envoy-gateway-system",
    "name": "envoy-gateway-7c9d8b6f4-abcde",
    "ip": "10.244.1.9",
    "labels": {"control-plane": "envoy-gateway", "app.kubernetes.io/name": "gateway-helm"},
    "containers": [{"name": "envoy-gateway", "ports": [
        {"name": "metrics", "containerPort": 19001, "protocol": "TCP"},
    ]}],
}


class Report:
    def __init__(self) -> None:
        self.passed = 0
        self.failed = 0

    def check(self, name: str, problems: list[str]) -> None:
        if problems:
            self.failed += 1
            print(f"FAIL - {name}")
            for p in problems:
                print(f"       {p}")
        else:
            self.passed += 1
            print(f"ok   - {name}")


# --- settings the binary accepts ------------------------------------------------------------

def settings_from_help(text: str) -> dict[str, str]:
    settings: dict[str, str] = {}
    lines = text.splitlines()
    for i, line in enumerate(lines):
        m = re.fullmatch(r"\s+(EXPORTER_[A-Z0-9_]+)\s*", line)
        if not m:
            continue
        default = ""
        if i + 1 < len(lines):
            d = re.fullmatch(r"\s+default:\s*(.*?)\s*", lines[i + 1])
            if d:
                default = "" if d.group(1) == "(empty)" else d.group(1)
        settings[m.group(1)] = default
    return settings


def settings_from_source(path: Path) -> dict[str, str]:
    text = path.read_text()
    return {
        m.group(1): m.group(2)
        for m in re.finditer(r'name:\s*"(EXPORTER_[A-Z0-9_]+)",\s*default:\s*"((?:[^"\\]|\\.)*)"', text)
    }


def accepted_settings(binary: Path | None) -> tuple[dict[str, str], str]:
    source = ROOT / "src" / "config.rs"
    if binary and binary.is_file() and os.access(binary, os.X_OK):
        if binary.stat().st_mtime >= source.stat().st_mtime:
            out = subprocess.run([str(binary), "--help"], capture_output=True, text=True, timeout=30,
                                 env={"PATH": os.environ.get("PATH", "")})
            found = settings_from_help(out.stdout + out.stderr)
            if found:
                return found, f"{binary.relative_to(ROOT) if binary.is_relative_to(ROOT) else binary} --help"
        else:
            print(f"note: {binary} is older than src/config.rs; reading the settings from the source")
    return settings_from_source(source), "src/config.rs SETTINGS"


def port_of(address: str) -> int | None:
    m = re.search(r":(\d+)$", address)
    return int(m.group(1)) if m else None


# --- walking manifests -----------------------------------------------------------------------

def pod_specs(node, path="$"):
    """Yield (path, pod_spec) for every dict holding a `containers` list, at any depth."""
    if isinstance(node, dict):
        if isinstance(node.get("containers"), list):
            yield path, node
        for k, v in node.items():
            yield from pod_specs(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from pod_specs(v, f"{path}[{i}]")


def is_exporter(container: dict) -> bool:
    return container.get("name") == EXPORTER or f"/{EXPORTER}:" in str(container.get("image", ""))


def obj_id(doc: dict) -> str:
    md = doc.get("metadata") or {}
    ns = f"{md.get('namespace')}/" if md.get("namespace") else ""
    return f"{doc.get('kind')} {ns}{md.get('name')}"


def env_names(container: dict) -> list[str]:
    return [e.get("name", "") for e in container.get("env") or [] if isinstance(e, dict)]


def env_value(container: dict, name: str) -> str | None:
    for e in container.get("env") or []:
        if isinstance(e, dict) and e.get("name") == name and "value" in e:
            return str(e["value"])
    return None


# --- checks on objects ------------------------------------------------------------------------

def check_object_basics(doc: dict) -> list[str]:
    problems = []
    for field in ("apiVersion", "kind"):
        if not doc.get(field):
            problems.append(f"no {field}")
    if not (doc.get("metadata") or {}).get("name"):
        problems.append("no metadata.name")
    key = (doc.get("apiVersion"), doc.get("kind"))
    if doc.get("apiVersion") not in NATIVE_GROUPS and key not in CRD_KINDS:
        problems.append(f"unknown API {key}: add it to the native or CRD lists in scripts/check_deploy.py")
    return problems


def check_envoyproxy(doc: dict) -> list[str]:
    p: list[str] = []
    spec = doc.get("spec")
    if not isinstance(spec, dict):
        return ["no spec"]
    provider = spec.get("provider")
    if not isinstance(provider, dict):
        return ["no spec.provider"]
    p += [f"spec.provider.{k}: unknown field" for k in provider if k not in EP_PROVIDER_KEYS]
    if provider.get("type") not in EP_PROVIDER_TYPES:
        p.append(f"spec.provider.type {provider.get('type')!r} not in {sorted(EP_PROVIDER_TYPES)} (required)")
    kube = provider.get("kubernetes") or {}
    p += [f"spec.provider.kubernetes.{k}: unknown field" for k in kube if k not in EP_KUBERNETES_KEYS]
    if "envoyDeployment" in kube and "envoyDaemonSet" in kube:
        p.append("only one of envoyDeployment or envoyDaemonSet can be specified (CRD validation rule)")
    patches = 0
    for field, allowed in (("envoyDeployment", EP_DEPLOYMENT_KEYS), ("envoyDaemonSet", EP_DAEMONSET_KEYS)):
        spec_k = kube.get(field)
        if spec_k is None:
            continue
        where = f"spec.provider.kubernetes.{field}"
        if not isinstance(spec_k, dict):
            p.append(f"{where} is not an object")
            continue
        p += [f"{where}.{k}: unknown field" for k in spec_k if k not in allowed]
        patch = spec_k.get("patch")
        if patch is None:
            continue
        patches += 1
        p += [f"{where}.patch.{k}: unknown field" for k in patch if k not in EP_PATCH_KEYS]
        ptype = patch.get("type", "StrategicMerge")
        if ptype not in EP_PATCH_TYPES:
            p.append(f"{where}.patch.type {ptype!r} not in {sorted(EP_PATCH_TYPES)}")
        value = patch.get("value")
        if not isinstance(value, dict):
            p.append(f"{where}.patch.value missing (required) or not an object")
            continue
        containers = (((value.get("spec") or {}).get("template") or {}).get("spec") or {}).get("containers")
        if not isinstance(containers, list) or not containers:
            p.append(f"{where}.patch.value.spec.template.spec.containers missing")
            continue
        names = [c.get("name") for c in containers]
        if EXPORTER not in names:
            p.append(f"{where}.patch adds no container named {EXPORTER}")
        for n in names:
            if n in EG_CONTAINERS:
                p.append(f"{where}.patch changes Envoy Gateway's own container {n!r}")
    if patches == 0:
        p.append("no envoyDeployment.patch or envoyDaemonSet.patch: the sidecar is not added")
    return p


def check_relabelings(relabelings, where: str) -> list[str]:
    p = []
    for i, r in enumerate(relabelings or []):
        w = f"{where}.relabelings[{i}]"
        p += [f"{w}.{k}: unknown field" for k in r if k not in RELABEL_KEYS]
        action = str(r.get("action", "replace"))
        if action.lower() not in RELABEL_ACTIONS:
            p.append(f"{w}.action {action!r} unknown")
        try:
            re.compile(str(r.get("regex", "(.*)")))
        except re.error as e:
            p.append(f"{w}.regex does not compile: {e}")
        if action.lower() in ("replace", "hashmod", "lowercase", "uppercase") and not r.get("targetLabel"):
            p.append(f"{w}: action {action} needs targetLabel")
    return p


def check_podmonitor(doc: dict) -> list[str]:
    spec = doc.get("spec")
    if not isinstance(spec, dict):
        return ["no spec"]
    p = [f"spec.{k}: unknown field" for k in spec if k not in PODMONITOR_SPEC_KEYS]
    if not isinstance(spec.get("selector"), dict):
        p.append("spec.selector missing (required)")
    ns = spec.get("namespaceSelector") or {}
    p += [f"spec.namespaceSelector.{k}: unknown field" for k in ns if k not in ("any", "matchNames")]
    endpoints = spec.get("podMetricsEndpoints")
    if not isinstance(endpoints, list) or not endpoints:
        p.append("spec.podMetricsEndpoints missing or empty")
        endpoints = []
    for i, ep in enumerate(endpoints):
        w = f"spec.podMetricsEndpoints[{i}]"
        p += [f"{w}.{k}: unknown field" for k in ep if k not in POD_METRICS_ENDPOINT_KEYS]
        if not (ep.get("port") or ep.get("portNumber") or ep.get("targetPort")):
            p.append(f"{w}: no port, portNumber or targetPort")
        p += check_relabelings(ep.get("relabelings"), w)
    return p


def check_prometheusrule(doc: dict) -> list[str]:
    groups = (doc.get("spec") or {}).get("groups")
    if not isinstance(groups, list) or not groups:
        return ["spec.groups missing or empty"]
    p = []
    for gi, g in enumerate(groups):
        if not g.get("name"):
            p.append(f"spec.groups[{gi}].name missing")
        rules = g.get("rules")
        if not isinstance(rules, list) or not rules:
            p.append(f"spec.groups[{gi}].rules missing or empty")
            continue
        for ri, r in enumerate(rules):
            w = f"spec.groups[{gi}].rules[{ri}]"
            if not str(r.get("expr", "")).strip():
                p.append(f"{w}.expr missing")
            if ("alert" in r) == ("record" in r):
                p.append(f"{w}: needs exactly one of alert or record")
    return p


def check_exporter_container(c: dict, pod_spec: dict, settings: dict[str, str],
                             version: str) -> dict[str, list[str]]:
    """Returns check name -> problems for one exporter container."""
    out: dict[str, list[str]] = {}
    pod_sc = pod_spec.get("securityContext") or {}
    sc = c.get("securityContext") or {}

    def eff(key):
        return sc.get(key, pod_sc.get(key))

    p = []
    if eff("runAsNonRoot") is not True:
        p.append("runAsNonRoot is not true")
    if eff("runAsUser") in (None, 0):
        p.append("runAsUser not set to a non-root uid")
    if sc.get("readOnlyRootFilesystem") is not True:
        p.append("readOnlyRootFilesystem is not true")
    if sc.get("allowPrivilegeEscalation") is not False:
        p.append("allowPrivilegeEscalation is not false")
    if sc.get("privileged") is True:
        p.append("privileged")
    caps = sc.get("capabilities") or {}
    if "ALL" not in (caps.get("drop") or []):
        p.append("capabilities.drop does not contain ALL")
    if caps.get("add"):
        p.append(f"capabilities.add {caps['add']}")
    seccomp = (sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}).get("type")
    if seccomp != "RuntimeDefault":
        p.append(f"seccompProfile.type is {seccomp!r}, not RuntimeDefault")
    out["security context"] = p

    p = []
    res = c.get("resources") or {}
    for kind in ("requests", "limits"):
        for r in ("cpu", "memory"):
            if not (res.get(kind) or {}).get(r):
                p.append(f"resources.{kind}.{r} not set")
    for r in ("cpu", "memory"):
        req, lim = (res.get("requests") or {}).get(r), (res.get("limits") or {}).get(r)
        if req and lim and quantity(req) > quantity(lim):
            p.append(f"{r} request {req} exceeds limit {lim}")
    out["requests and limits"] = p

    listen = env_value(c, "EXPORTER_LISTEN_ADDRESS")
    if listen is None:
        listen = settings.get("EXPORTER_LISTEN_ADDRESS", "")
    port = port_of(listen)
    p = []
    if port is None:
        p.append(f"cannot tell the listen port from EXPORTER_LISTEN_ADDRESS {listen!r}")
    metrics = [x for x in c.get("ports") or [] if x.get("name") == "metrics"]
    if len(metrics) != 1:
        p.append(f"{len(metrics)} ports named metrics (want 1)")
    else:
        if metrics[0].get("containerPort") != port:
            p.append(f"port metrics is {metrics[0].get('containerPort')}, the exporter listens on {port}")
        if metrics[0].get("protocol", "TCP") != "TCP":
            p.append("port metrics is not TCP")
    out[f"port metrics = listen port ({port})"] = p

    p = []
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = (c.get(probe) or {}).get("httpGet")
        if not get:
            p.append(f"{probe} has no httpGet")
            continue
        if get.get("path") != path:
            p.append(f"{probe} path {get.get('path')!r}, want {path}")
        if get.get("port") not in ("metrics", port):
            p.append(f"{probe} port {get.get('port')!r}, want metrics or {port}")
    out["liveness /healthz and readiness /readyz"] = p

    p = []
    if not str(c.get("image", "")).endswith(f":{version}"):
        p.append(f"image {c.get('image')!r} is not tagged with the crate version {version}")
    volumes = {v.get("name") for v in pod_spec.get("volumes") or []}
    for m in c.get("volumeMounts") or []:
        if m.get("name") not in volumes:
            p.append(f"volumeMount {m.get('name')!r} has no volume in the same pod spec")
    out[f"image :{version}, volumes"] = p
    return out


def quantity(q) -> float:
    s = str(q)
    units = {"m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "Ki": 1024, "Mi": 1024**2, "Gi": 1024**3}
    for u in sorted(units, key=len, reverse=True):
        if s.endswith(u):
            return float(s[: -len(u)]) * units[u]
    return float(s)


# --- scrape configuration model -------------------------------------------------------------

def sanitize(name: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


def discover(pod: dict) -> list[dict]:
    """Targets of Prometheus' Kubernetes `pod` role for one pod: one per container port, one per
    container without ports (address without port)."""
    base = {
        "__meta_kubernetes_namespace": pod["namespace"],
        "__meta_kubernetes_pod_name": pod["name"],
        "__meta_kubernetes_pod_ip": pod["ip"],
        "__meta_kubernetes_pod_phase": "Running",
        "__meta_kubernetes_pod_ready": "true",
    }
    for k, v in pod["labels"].items():
        base[f"__meta_kubernetes_pod_label_{sanitize(k)}"] = v
        base[f"__meta_kubernetes_pod_labelpresent_{sanitize(k)}"] = "true"
    targets = []
    for c in pod["containers"]:
        t = dict(base, __meta_kubernetes_pod_container_name=c["name"])
        ports = c.get("ports") or []
        if not ports:
            targets.append(dict(t, __address__=pod["ip"]))
        for port in ports:
            targets.append(dict(
                t,
                __address__=f"{pod['ip']}:{port['containerPort']}",
                __meta_kubernetes_pod_container_port_name=port.get("name", ""),
                __meta_kubernetes_pod_container_port_number=str(port["containerPort"]),
                __meta_kubernetes_pod_container_port_protocol=port.get("protocol", "TCP"),
            ))
    return targets


def expand(template: str, m: re.Match) -> str:
    """Go regexp Expand, as Prometheus uses it: $1, ${1}, $name, ${name}, $$."""
    def group(name: str) -> str:
        try:
            g = m.group(int(name)) if name.isdigit() else m.group(name)
        except IndexError:
            return ""
        return g or ""

    out, i = [], 0
    while i < len(template):
        ch = template[i]
        if ch != "$":
            out.append(ch)
            i += 1
            continue
        if template.startswith("$$", i):
            out.append("$")
            i += 2
            continue
        br = re.match(r"\$\{([A-Za-z0-9_]+)\}", template[i:])
        nm = re.match(r"\$([A-Za-z0-9_]+)", template[i:])
        if br:
            out.append(group(br.group(1)))
            i += br.end()
        elif nm:
            out.append(group(nm.group(1)))
            i += nm.end()
        else:
            out.append("$")
            i += 1
    return "".join(out)


def relabel(labels: dict, configs: list[dict], camel: bool) -> dict | None:
    key = (lambda snake, cam: cam) if camel else (lambda snake, cam: snake)
    labels = dict(labels)
    for c in configs:
        action = str(c.get("action", "replace")).lower()
        src = c.get(key("source_labels", "sourceLabels")) or []
        sep = c.get("separator", ";")
        rx = re.compile(f"^(?:{c.get('regex', '(.*)')})$")
        value = sep.join(labels.get(s, "") for s in src)
        if action == "replace":
            m = rx.match(value)
            if not m:
                continue
            target = expand(str(c.get(key("target_label", "targetLabel")) or ""), m)
            result = expand(str(c.get("replacement", "$1")), m)
            if not target:
                continue
            if result == "":
                labels.pop(target, None)
            else:
                labels[target] = result
        elif action == "keep":
            if not rx.match(value):
                return None
        elif action == "drop":
            if rx.match(value):
                return None
        elif action == "labeldrop":
            labels = {k: v for k, v in labels.items() if not rx.match(k)}
        elif action == "labelkeep":
            labels = {k: v for k, v in labels.items() if rx.match(k)}
        elif action == "labelmap":
            for k, v in list(labels.items()):
                m = rx.match(k)
                if m:
                    labels[expand(str(c.get("replacement", "$1")), m)] = v
        else:
            raise ValueError(f"relabel action {action} not modelled")
    return labels


def finish(labels: dict) -> tuple[str, frozenset]:
    """Prometheus after relabeling: instance defaults to the address, __ labels and empty labels go."""
    labels = dict(labels)
    labels.setdefault("instance", labels.get("__address__", ""))
    path = labels.get("__metrics_path__", "/metrics")
    final = frozenset((k, v) for k, v in labels.items() if not k.startswith("__") and v != "")
    return path, final


def selector_matches(selector: dict, labels: dict) -> bool:
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for e in selector.get("matchExpressions") or []:
        k, op, values = e["key"], e["operator"], e.get("values") or []
        if op == "In" and labels.get(k) not in values:
            return False
        if op == "NotIn" and labels.get(k) in values:
            return False
        if op == "Exists" and k not in labels:
            return False
        if op == "DoesNotExist" and k in labels:
            return False
    return True


def podmonitor_targets(pm: dict, pods: list[dict]) -> set:
    """What Prometheus Operator generates for a PodMonitor (pkg/prometheus/promcfg.go:
    namespace and label selection, port filter, namespace/container/pod/job/endpoint labels, then
    the endpoint's relabelings), applied to the pods."""
    spec = pm["spec"]
    md = pm["metadata"]
    ns_sel = spec.get("namespaceSelector") or {}
    result = set()
    for i, ep in enumerate(spec.get("podMetricsEndpoints") or []):
        for pod in pods:
            if not ns_sel.get("any"):
                names = ns_sel.get("matchNames") or [md.get("namespace")]
                if pod["namespace"] not in names:
                    continue
            if not selector_matches(spec.get("selector") or {}, pod["labels"]):
                continue
            for t in discover(pod):
                t = dict(t, job=f"podMonitor/{md.get('namespace')}/{md['name']}/{i}",
                         __metrics_path__=ep.get("path", "/metrics"))
                if ep.get("port"):
                    if t.get("__meta_kubernetes_pod_container_port_name") != ep["port"]:
                        continue
                elif ep.get("portNumber"):
                    if t.get("__meta_kubernetes_pod_container_port_number") != str(ep["portNumber"]):
                        continue
                elif ep.get("targetPort") is not None:
                    tp = str(ep["targetPort"])
                    if tp not in (t.get("__meta_kubernetes_pod_container_port_name"),
                                  t.get("__meta_kubernetes_pod_container_port_number")):
                        continue
                t["namespace"] = t["__meta_kubernetes_namespace"]
                t["container"] = t["__meta_kubernetes_pod_container_name"]
                t["pod"] = t["__meta_kubernetes_pod_name"]
                t["job"] = f"{md.get('namespace')}/{md['name']}"
                if spec.get("jobLabel"):
                    v = t.get(f"__meta_kubernetes_pod_label_{sanitize(spec['jobLabel'])}")
                    if v:
                        t["job"] = v
                if ep.get("port"):
                    t["endpoint"] = ep["port"]
                t = relabel(t, ep.get("relabelings") or [], camel=True)
                if t is not None:
                    result.add(finish(t))
    return result


def plain_targets(config: dict, pods: list[dict]) -> tuple[set, list[str]]:
    result, problems = set(), []
    for sc in config.get("scrape_configs") or []:
        for sd in sc.get("kubernetes_sd_configs") or []:
            if sd.get("role") != "pod":
                problems.append(f"{sc['job_name']}: role {sd.get('role')} not modelled")
                continue
            names = ((sd.get("namespaces") or {}).get("names")) or None
            selectors = [s for s in sd.get("selectors") or [] if s.get("role") == "pod"]
            for pod in pods:
                if names and pod["namespace"] not in names:
                    continue
                ok = True
                for s in selectors:
                    if s.get("field"):
                        problems.append(f"{sc['job_name']}: field selectors not modelled")
                    for term in filter(None, (s.get("label") or "").split(",")):
                        k, _, v = term.partition("=")
                        if pod["labels"].get(k.strip()) != v.strip():
                            ok = False
                if not ok:
                    continue
                for t in discover(pod):
                    t = dict(t, job=sc["job_name"], __metrics_path__=sc.get("metrics_path", "/metrics"))
                    t = relabel(t, sc.get("relabel_configs") or [], camel=False)
                    if t is not None:
                        result.add(finish(t))
    return result, problems


def show(targets: set) -> list[str]:
    return sorted(f"{path} {dict(sorted(labels))}" for path, labels in targets)


# --- Dockerfile and Makefile ----------------------------------------------------------------

def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    out, buf = [], ""
    for line in text.splitlines():
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if buf and line.lstrip().startswith("#"):
            continue
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def normalize_command(cmd: str) -> str:
    return " ".join(shlex.split(cmd.replace("$(CARGO)", "cargo").replace("${CARGO}", "cargo")))


def makefile_recipe(text: str, target: str) -> list[str] | None:
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if re.match(rf"^{re.escape(target)}\s*:(?!=)", line):
            recipe = []
            for r in lines[i + 1:]:
                if r.startswith("\t"):
                    recipe.append(r.strip().lstrip("@-+").strip())
                elif r.strip() == "" or r.lstrip().startswith("#"):
                    continue
                else:
                    break
            return recipe
    return None


def check_dockerfile(settings: dict[str, str], report: Report, version: str,
                     manifest_uids: set) -> None:
    dockerfile = ROOT / "Dockerfile"
    instructions = dockerfile_instructions(dockerfile.read_text())

    p = []
    for word, rest in instructions:
        if word != "FROM":
            continue
        image = [w for w in rest.split() if not w.startswith("--")][0]
        if "@sha256:" in image:
            continue
        name, _, tag = image.rpartition(":") if ":" in image.split("/")[-1] else (image, "", "")
        # A version in the tag (rust:1.95.0-bookworm) or, for distroless, in the name
        # (static-debian12:nonroot); never `latest` or no tag.
        if not tag or tag == "latest" or not re.search(r"\d", name.split("/")[-1] + tag):
            p.append(f"FROM {image}: not pinned to a versioned tag or digest")
    report.check("Dockerfile: base images pinned (no latest)", p)

    # The build command: the `cargo build` part of a RUN in the Dockerfile == Makefile `release`.
    p = []
    builds = []
    for word, rest in instructions:
        if word == "RUN" and "cargo build" in rest:
            cmd = " ".join(w for w in rest.split(" ") if not w.startswith("--mount="))
            for part in re.split(r"&&|;", cmd):
                if part.strip().startswith("cargo build"):
                    builds.append(part.strip())
    makefile = (ROOT / "Makefile").read_text()
    recipe = makefile_recipe(makefile, "release")
    if recipe is None:
        p.append("the Makefile has no `release` target (expected: release: cargo build --release "
                 "--locked --target x86_64-unknown-linux-musl); the Dockerfile's build command cannot be compared")
    elif len(builds) != 1:
        p.append(f"{len(builds)} `cargo build` commands in the Dockerfile (want 1)")
    else:
        make_builds = [r for r in recipe if normalize_command(r).startswith("cargo build")]
        if len(make_builds) != 1:
            p.append(f"Makefile release recipe has {len(make_builds)} cargo build commands: {recipe}")
        elif normalize_command(make_builds[0]) != normalize_command(builds[0]):
            p.append(f"Dockerfile: {normalize_command(builds[0])!r}")
            p.append(f"Makefile : {normalize_command(make_builds[0])!r}")
    report.check("Dockerfile build command == Makefile `release` recipe", p)

    # Every Cargo target the build needs is copied into the builder.
    p = []
    copied = []
    for word, rest in instructions:
        if word == "COPY" and "--from" not in rest:
            args = [a for a in shlex.split(rest) if not a.startswith("--")]
            copied += [a.rstrip("/") for a in args[:-1]]
    try:
        meta = json.loads(subprocess.run(
            ["cargo", "metadata", "--no-deps", "--offline", "--format-version", "1"],
            cwd=ROOT, capture_output=True, text=True, check=True, timeout=120).stdout)
    except (OSError, subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
        p.append(f"cargo metadata failed: {e}")
        meta = {"packages": []}
    bin_names = set()
    for pkg in meta["packages"]:
        manifest = Path(pkg["manifest_path"])
        declared_tests = {t.get("name") for t in tomllib.loads(manifest.read_text()).get("test", [])}
        rel_manifest = manifest.relative_to(ROOT).as_posix()
        needed = [rel_manifest]
        for t in pkg["targets"]:
            if "bin" in t["kind"]:
                bin_names.add(t["name"])
            src = Path(t["src_path"]).relative_to(ROOT).as_posix()
            # Integration tests found by Cargo in tests/ are not needed to build (nor copied);
            # tests declared with [[test]] are, since Cargo then requires their files.
            if t["kind"] == ["test"] and t["name"] not in declared_tests:
                continue
            needed.append(src)
        for path in needed:
            if not any(path == c or path.startswith(c + "/") for c in copied):
                p.append(f"{path} (package {pkg['name']}) is not copied into the build (COPY {' '.join(copied)})")
    report.check("Dockerfile copies every workspace manifest and every Cargo target it builds", p)

    p = []
    users = [rest for word, rest in instructions if word == "USER"]
    uid = None
    if not users:
        p.append("no USER")
    else:
        m = re.fullmatch(r"(\d+)(?::(\d+))?", users[-1])
        if not m or m.group(1) == "0":
            p.append(f"USER {users[-1]!r} is not a numeric non-root uid")
        else:
            uid = int(m.group(1))
            if manifest_uids and manifest_uids != {uid}:
                p.append(f"USER {uid} but the manifests run the exporter as {sorted(manifest_uids)}")
    exposed = [int(x.split("/")[0]) for word, rest in instructions if word == "EXPOSE" for x in rest.split()]
    port = port_of(settings.get("EXPORTER_LISTEN_ADDRESS", ""))
    if exposed != [port]:
        p.append(f"EXPOSE {exposed}, the default listen port is {port}")
    entry = [rest for word, rest in instructions if word == "ENTRYPOINT"]
    try:
        entry_argv = json.loads(entry[-1]) if entry else []
    except json.JSONDecodeError:
        entry_argv = []
        p.append("ENTRYPOINT is not in exec (JSON) form")
    if not entry_argv or Path(entry_argv[0]).name not in bin_names:
        p.append(f"ENTRYPOINT {entry_argv} does not run a binary of the crate {sorted(bin_names)}")
    labels = " ".join(rest for word, rest in instructions if word == "LABEL")
    m = re.search(r'org\.opencontainers\.image\.version="?([^"\s]+)', labels)
    if not m or m.group(1) != version:
        p.append(f"LABEL org.opencontainers.image.version is {m.group(1) if m else None}, the crate is {version}")
    run_text = " ".join(rest for word, rest in instructions if word == "RUN")
    t = re.search(r"--target\s+(\S+)", " ".join(builds))
    if t and not re.search(rf"target/{re.escape(t.group(1))}/release/({'|'.join(map(re.escape, bin_names)) or 'x'})\b", run_text):
        p.append(f"the binary is not taken from target/{t.group(1)}/release/")
    report.check("Dockerfile: USER non-root = manifests' runAsUser, EXPOSE = listen port, ENTRYPOINT, version label", p)


# --- main -------------------------------------------------------------------------------------

def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rendered", type=Path, required=True, help="directory of rendered <dir>.yaml files")
    ap.add_argument("--binary", type=Path, help="the exporter binary (its --help lists the settings)")
    ap.add_argument("--native-out", type=Path, required=True)
    ap.add_argument("--promtool-out", type=Path, required=True)
    ap.add_argument("--counts", type=Path, required=True)
    ap.add_argument("--unrestricted", action="append", default=[],
                    help="a directory rendered with --load-restrictor LoadRestrictionsNone")
    args = ap.parse_args()
    report = Report()

    settings, settings_source = accepted_settings(args.binary)
    print(f"settings the binary accepts ({settings_source}): {len(settings)}")
    report.check(f"settings list read from {settings_source}",
                 [] if settings and "EXPORTER_LISTEN_ADDRESS" in settings else ["no EXPORTER_* settings found"])
    cargo = tomllib.loads((ROOT / "Cargo.toml").read_text())
    version = cargo["package"]["version"]

    rendered: dict[str, list[dict]] = {}
    for f in sorted(args.rendered.glob("*.yaml")):
        name = f.stem.replace("__", "/")
        rendered[name] = [d for d in yaml.safe_load_all(f.read_text()) if d]

    native: list[dict] = []
    exporter_uids: set = set()
    env_problems: dict[str, list[str]] = {}
    for dirname, docs in rendered.items():
        basics = []
        for doc in docs:
            basics += [f"{obj_id(doc)}: {x}" for x in check_object_basics(doc)]
            if doc.get("apiVersion") in NATIVE_GROUPS:
                native.append(doc)
        report.check(f"{dirname}: {len(docs)} objects have apiVersion, kind, metadata.name and a known API", basics)

        for doc in docs:
            kind = doc.get("kind")
            if kind == "EnvoyProxy":
                report.check(f"{dirname}: {obj_id(doc)} fields (CRD gateway.envoyproxy.io/v1alpha1)",
                             check_envoyproxy(doc))
                # A workload around each patch, for kubernetes-validate --strict.
                kube = (doc.get("spec") or {}).get("provider", {}).get("kubernetes") or {}
                for field, wkind in (("envoyDeployment", "Deployment"), ("envoyDaemonSet", "DaemonSet")):
                    value = ((kube.get(field) or {}).get("patch") or {}).get("value")
                    if isinstance(value, dict):
                        w = copy.deepcopy(value)
                        w["apiVersion"], w["kind"] = "apps/v1", wkind
                        w.setdefault("metadata", {})["name"] = f"{doc['metadata']['name']}-patch-check"
                        spec = w.setdefault("spec", {})
                        spec.setdefault("selector", {"matchLabels": {"app": "patch-check"}})
                        spec.setdefault("template", {}).setdefault("metadata", {}).setdefault(
                            "labels", {"app": "patch-check"})
                        native.append(w)
            elif kind == "PodMonitor":
                report.check(f"{dirname}: {obj_id(doc)} fields (CRD monitoring.coreos.com/v1)",
                             check_podmonitor(doc))
            elif kind == "PrometheusRule":
                report.check(f"{dirname}: {obj_id(doc)} fields (CRD monitoring.coreos.com/v1)",
                             check_prometheusrule(doc))

        for doc in docs:
            for path, pod_spec in pod_specs(doc):
                for c in (pod_spec.get("containers") or []) + (pod_spec.get("initContainers") or []):
                    where = f"{dirname}: {obj_id(doc)} container {c.get('name')}"
                    unknown = [n for n in env_names(c) if n.startswith("EXPORTER_") and n not in settings]
                    if any(n.startswith("EXPORTER_") for n in env_names(c)) or is_exporter(c):
                        env_problems[where] = [f"{n} is not a setting of the binary ({settings_source})" for n in unknown]
                    if not is_exporter(c):
                        continue
                    sc = c.get("securityContext") or {}
                    uid = sc.get("runAsUser", (pod_spec.get("securityContext") or {}).get("runAsUser"))
                    if uid is not None:
                        exporter_uids.add(uid)
                    for check_name, problems in check_exporter_container(
                            c, pod_spec, settings, version).items():
                        report.check(f"{where}: {check_name}", problems)
        # Any EXPORTER_ name anywhere in the rendered text (patches of other shapes, ConfigMaps...).
        text = (args.rendered / f"{dirname.replace('/', '__')}.yaml").read_text()
        stray = sorted({n for n in re.findall(r"\bEXPORTER_[A-Z0-9_]+\b", text)
                        if n not in settings and n not in BUILD_TIME_VARIABLES})
        report.check(f"{dirname}: every EXPORTER_* name in the rendered manifests is a setting", 
                     [f"{n} is not a setting of the binary ({settings_source})" for n in stray])

    # NetworkPolicies around exporter pods: ingress only to the metrics port, egress only to the
    # API server (443/6443) and DNS (53).
    port = port_of(settings.get("EXPORTER_LISTEN_ADDRESS", ""))
    for dirname, docs in rendered.items():
        for doc in docs:
            if doc.get("kind") != "NetworkPolicy":
                continue
            spec = doc.get("spec") or {}
            p = []
            if set(spec.get("policyTypes") or []) != {"Ingress", "Egress"}:
                p.append(f"policyTypes {spec.get('policyTypes')}, want Ingress and Egress")
            for rule in spec.get("ingress") or []:
                ports = [(x.get("protocol", "TCP"), x.get("port")) for x in rule.get("ports") or []]
                if ports not in ([("TCP", port)], [("TCP", "metrics")]):
                    p.append(f"ingress rule allows {ports or 'every port'}, want only TCP {port}")
                if not rule.get("from"):
                    p.append("ingress rule allows every source")
            for rule in spec.get("egress") or []:
                ports = {(x.get("protocol", "TCP"), x.get("port")) for x in rule.get("ports") or []}
                allowed = {("TCP", 443), ("TCP", 6443), ("UDP", 53), ("TCP", 53)}
                if not ports or not ports <= allowed:
                    p.append(f"egress rule allows {sorted(ports, key=str) or 'every port'}, want only 443/6443 and 53")
            report.check(f"{dirname}: {obj_id(doc)} ingress only to {port}, egress only to the API server and DNS", p)

    for where, problems in env_problems.items():
        report.check(f"{where}: EXPORTER_* env names accepted by the binary", problems)
    exporters = sum(1 for w in env_problems)
    report.check("exporter containers found in the sidecar and standalone manifests",
                 [] if exporters >= 3 else [f"only {exporters} exporter containers found (want the "
                                             "Deployment and DaemonSet patches and the standalone Deployment)"])

    docs_md = ROOT / "docs" / "deploy.md"
    p = []
    if not docs_md.is_file():
        p.append("docs/deploy.md missing")
    else:
        text = docs_md.read_text()
        p += [f"docs/deploy.md names {n}, which is not a setting of the binary ({settings_source})"
              for n in sorted(set(re.findall(r"\bEXPORTER_[A-Z0-9_]+\b", text)))
              if n not in settings and n not in BUILD_TIME_VARIABLES]
        for d in args.unrestricted:
            if f"--load-restrictor LoadRestrictionsNone {d}" not in text:
                p.append(f"docs/deploy.md does not show `kubectl kustomize --load-restrictor LoadRestrictionsNone {d}`")
    report.check("docs/deploy.md: every EXPORTER_* it names is a setting; render commands shown", p)

    # Dashboards: one ConfigMap per dashboards/*.json, data byte for byte.
    monitoring = rendered.get("deploy/monitoring", [])
    cms = [d for d in monitoring if d.get("kind") == "ConfigMap"]
    dashboards = sorted((ROOT / "dashboards").glob("*.json"))
    p = [] if dashboards else ["no dashboards/*.json"]
    for f in dashboards:
        holders = [cm for cm in cms if f.name in (cm.get("data") or {})]
        if len(holders) != 1:
            p.append(f"{f.name}: in {len(holders)} ConfigMaps (want 1)")
            continue
        cm = holders[0]
        if cm["data"][f.name].encode("utf-8") != f.read_bytes():
            p.append(f"{f.name}: ConfigMap {cm['metadata']['name']} differs from dashboards/{f.name}")
        if (cm["metadata"].get("labels") or {}).get("grafana_dashboard") != "1":
            p.append(f"ConfigMap {cm['metadata']['name']}: no label grafana_dashboard: \"1\"")
    for cm in cms:
        for key in cm.get("data") or {}:
            if not (ROOT / "dashboards" / key).is_file():
                p.append(f"ConfigMap {cm['metadata']['name']} holds {key}, which is not in dashboards/")
    report.check(f"deploy/monitoring: {len(dashboards)} dashboards as ConfigMaps, byte for byte", p)

    p = []
    rules = [d for d in monitoring if d.get("kind") == "PrometheusRule"]
    source = yaml.safe_load((ROOT / "alerts" / "prometheusrule.yaml").read_text())
    if len(rules) != 1:
        p.append(f"{len(rules)} PrometheusRules rendered (want 1)")
    elif rules[0].get("spec") != source.get("spec") or rules[0]["metadata"]["name"] != source["metadata"]["name"]:
        p.append("the rendered PrometheusRule differs from alerts/prometheusrule.yaml")
    report.check("deploy/monitoring: PrometheusRule is alerts/prometheusrule.yaml", p)

    # Scrape configuration, tried on model pods.
    pods = [OTHER_POD]
    for dirname in ("deploy/sidecar/deployment", "deploy/sidecar/daemonset"):
        for doc in rendered.get(dirname, []):
            if doc.get("kind") != "EnvoyProxy":
                continue
            kube = doc["spec"]["provider"].get("kubernetes") or {}
            for field in ("envoyDeployment", "envoyDaemonSet"):
                value = ((kube.get(field) or {}).get("patch") or {}).get("value") or {}
                added = (((value.get("spec") or {}).get("template") or {}).get("spec") or {}).get("containers") or []
                if added:
                    pod = copy.deepcopy(EG_PROXY_POD)
                    pod["name"] = f"{pod['name']}-{len(pods)}"
                    pod["containers"] += [{"name": c["name"], "ports": c.get("ports") or []} for c in added]
                    pods.append(pod)
    proxy_pods = [p_ for p_ in pods if p_ is not OTHER_POD]
    for doc in rendered.get("deploy/standalone", []):
        if doc.get("kind") == "Deployment":
            tpl = doc["spec"]["template"]
            pods.append({"namespace": doc["metadata"]["namespace"], "name": f"{doc['metadata']['name']}-5b7c9d-q8w2e",
                         "ip": "10.244.2.5", "labels": tpl["metadata"]["labels"],
                         "containers": [{"name": c["name"], "ports": c.get("ports") or []}
                                        for c in tpl["spec"]["containers"]]})
    standalone_pods = pods[len(proxy_pods) + 1:]

    expected = set()
    exporter_port = port_of(settings.get("EXPORTER_LISTEN_ADDRESS", ""))
    for pod in proxy_pods:
        common = {"namespace": pod["namespace"], "pod": pod["name"],
                  "gateway": pod["labels"]["gateway.envoyproxy.io/owning-gateway-name"],
                  "gateway_namespace": pod["labels"]["gateway.envoyproxy.io/owning-gateway-namespace"]}
        expected.add(("/metrics", frozenset(dict(common, job=EXPORTER, instance=f"{pod['ip']}:{exporter_port}").items())))
        expected.add(("/stats/prometheus", frozenset(dict(common, job=PROXY_JOB, instance=f"{pod['ip']}:19001").items())))
    for pod in standalone_pods:
        expected.add(("/metrics", frozenset({"namespace": pod["namespace"], "pod": pod["name"], "job": EXPORTER,
                                             "instance": f"{pod['ip']}:{exporter_port}"}.items())))
    p = []
    if not proxy_pods:
        p.append("no EnvoyProxy patch rendered to build a proxy pod from")
    if not standalone_pods:
        p.append("no standalone Deployment rendered")
    report.check(f"scrape model: {len(proxy_pods)} proxy pods (sidecar patches applied), "
                 f"{len(standalone_pods)} standalone pod, 1 unrelated pod", p)

    podmonitors = [d for d in monitoring if d.get("kind") == "PodMonitor"]
    got = set()
    p = []
    try:
        for pm in podmonitors:
            got |= podmonitor_targets(pm, pods)
    except (ValueError, KeyError, re.error) as e:
        p.append(f"cannot evaluate the PodMonitors: {e}")
    if got != expected:
        p += [f"missing:    {x}" for x in show(expected - got)] + [f"unexpected: {x}" for x in show(got - expected)]
    report.check(f"PodMonitors: jobs {EXPORTER}/{PROXY_JOB} with labels {', '.join(SCRAPE_LABELS)}, one target each", p)

    plain_path = ROOT / "deploy" / "prometheus" / "scrape-configs.yaml"
    plain = yaml.safe_load(plain_path.read_text())
    p = []
    try:
        got_plain, p = plain_targets(plain, pods)
    except (ValueError, KeyError, re.error) as e:
        got_plain = set()
        p.append(f"cannot evaluate {plain_path.name}: {e}")
    if got_plain != expected:
        p += [f"missing:    {x}" for x in show(expected - got_plain)] + [f"unexpected: {x}" for x in show(got_plain - expected)]
    report.check("deploy/prometheus/scrape-configs.yaml: the same targets, jobs and labels as the PodMonitors", p)

    # For promtool: Kubernetes discovery replaced by an empty static list.
    promtool_cfg = copy.deepcopy(plain)
    for sc in promtool_cfg.get("scrape_configs") or []:
        if sc.pop("kubernetes_sd_configs", None) is not None:
            sc["static_configs"] = [{"targets": []}]
    args.promtool_out.write_text(yaml.safe_dump(promtool_cfg, sort_keys=False))

    check_dockerfile(settings, report, version, exporter_uids)

    args.native_out.write_text(yaml.safe_dump_all(native, sort_keys=False))
    args.counts.write_text(f"{report.passed} {report.failed}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
