#!/usr/bin/env bash
# Checks the alerting rules, their PrometheusRule twin, unit tests, runbooks and Grafana dashboards.
#
#   bash scripts/check-alerts.sh
#
# Needs promtool (Debian package `prometheus`; PROMTOOL=/path overrides) and Python 3 with PyYAML
# (installed into the repo venv .venv when missing). Without promtool the promtool checks are
# skipped locally and fail under CI=true. Ends with one line "N passed, M failed" (", K skipped"
# when promtool is missing) and exits non-zero if anything failed.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# shellcheck source=scripts/lib/checks.sh
source scripts/lib/checks.sh

# --- tools -------------------------------------------------------------------------------------
PROMTOOL="${PROMTOOL:-$(command -v promtool || true)}"
if [[ -n "$PROMTOOL" && ! -x "$PROMTOOL" ]]; then
  PROMTOOL=""
fi

# Python with PyYAML: the repo venv (created and filled on demand), else any python3 that has it.
PY=""
venv_py=".venv/bin/python"
if [[ ! -x "$venv_py" ]]; then
  python3 -m venv .venv >/dev/null 2>&1 || true
fi
if [[ -x "$venv_py" ]]; then
  if ! "$venv_py" -c 'import yaml' >/dev/null 2>&1; then
    "$venv_py" -m pip install --quiet --disable-pip-version-check 'PyYAML>=6,<7' >/dev/null 2>&1 || true
  fi
  if "$venv_py" -c 'import yaml' >/dev/null 2>&1; then
    PY="$venv_py"
  fi
fi
if [[ -z "$PY" ]] && python3 -c 'import yaml' >/dev/null 2>&1; then
  PY="python3"
fi
if [[ -z "$PY" ]]; then
  echo "check-alerts: no Python with PyYAML (could not install it into .venv)" >&2
  fail "python3 with PyYAML available"
  echo "$passed passed, $failed failed"
  exit 1
fi

# --- rules: source of truth and generated PrometheusRule -----------------------------------------
check "alerts/prometheusrule.yaml is exactly what scripts/render-prometheusrule.py renders from alerts/rules.yaml" \
  python3 scripts/render-prometheusrule.py --check

promtool_check() {
  local name="$1"
  shift
  if [[ -n "$PROMTOOL" ]]; then
    check "$name" "$PROMTOOL" "$@"
  else
    skip "$name (promtool: apt-get install prometheus, or set PROMTOOL)"
  fi
}

promtool_check "promtool check rules alerts/rules.yaml" check rules alerts/rules.yaml
promtool_check "promtool test rules alerts/tests/*.yaml" test rules alerts/tests/*.yaml

# --- everything that needs parsing: alerts, tests, runbooks, dashboards -------------------------
# Prints "ok - ..." / "FAIL - ..." lines and, for the queries check, writes a rule file for promtool.
set +e
"$PY" - "$tmp" >"$tmp/py.out" 2>&1 <<'PYTHON'
import glob
import json
import os
import re
import sys

import yaml

sys.path.insert(0, "scripts")
import dashboard_queries as dq  # noqa: E402

tmp = sys.argv[1]


def check(name, problems):
    """Print one result line at once (so a crash later loses nothing)."""
    problems = [p for p in problems if p]
    if problems:
        print(f"FAIL - {name}")
        for p in problems[:20]:
            print(f"       {p}")
        if len(problems) > 20:
            print(f"       ... and {len(problems) - 20} more")
    else:
        print(f"ok   - {name}")
    sys.stdout.flush()


RUNBOOK_BASE = "https://github.com/envoy-gateway-exporter/envoy-gateway-exporter/blob/main/docs/runbooks/"
SEVERITIES = {"critical", "warning", "info"}
SECTIONS = ["Meaning", "Impact", "Diagnosis", "Mitigation"]

rules_text = open("alerts/rules.yaml", encoding="utf-8").read()
rules_doc = yaml.safe_load(rules_text)
alerts = [r for g in rules_doc["groups"] for r in g["rules"] if "alert" in r]
names = [a["alert"] for a in alerts]

# PrometheusRule twin: same content, right envelope.
pr = yaml.safe_load(open("alerts/prometheusrule.yaml", encoding="utf-8"))
problems = []
if pr.get("apiVersion") != "monitoring.coreos.com/v1" or pr.get("kind") != "PrometheusRule":
    problems.append(f"apiVersion/kind are {pr.get('apiVersion')}/{pr.get('kind')}")
meta = pr.get("metadata") or {}
if meta.get("name") != "envoy-gateway-exporter":
    problems.append(f"metadata.name is {meta.get('name')!r}")
if (meta.get("labels") or {}).get("app.kubernetes.io/name") != "envoy-gateway-exporter":
    problems.append("label app.kubernetes.io/name: envoy-gateway-exporter missing")
if pr.get("spec") != rules_doc:
    problems.append("spec differs from alerts/rules.yaml")
check("alerts/prometheusrule.yaml is a PrometheusRule whose spec equals alerts/rules.yaml", problems)

check("alert names are unique", [f"duplicate {n}" for n in sorted(set(names)) if names.count(n) > 1])

# Every alert: labels, annotations with values, runbook.
for alert in alerts:
    name = alert["alert"]
    labels = alert.get("labels") or {}
    ann = alert.get("annotations") or {}
    problems = []
    if labels.get("severity") not in SEVERITIES:
        problems.append(f"severity {labels.get('severity')!r} not in {sorted(SEVERITIES)}")
    for key in ("summary", "description", "runbook_url"):
        if not str(ann.get(key, "")).strip():
            problems.append(f"annotation {key} missing")
    if "$value" not in str(ann.get("description", "")):
        problems.append("description does not show {{ $value }}")
    if ann.get("runbook_url") != RUNBOOK_BASE + name + ".md":
        problems.append(f"runbook_url {ann.get('runbook_url')!r} != {RUNBOOK_BASE + name + '.md'}")
    check(f"alert {name}: severity, summary, description with $value, runbook_url", problems)

    path = f"docs/runbooks/{name}.md"
    problems = []
    if not os.path.isfile(path):
        problems.append(f"{path} does not exist")
    else:
        text = open(path, encoding="utf-8").read()
        if not text.startswith(f"# {name}\n"):
            problems.append(f"{path} does not start with '# {name}'")
        headings = re.findall(r"^## (.+?)\s*$", text, re.M)
        missing = [s for s in SECTIONS if s not in headings]
        if missing:
            problems.append(f"{path} lacks sections {missing}")
        elif [h for h in headings if h in SECTIONS] != SECTIONS:
            problems.append(f"{path}: sections not in the order {SECTIONS}")
        for section in SECTIONS:
            m = re.search(rf"^## {section}\s*$(.*?)(?=^## |\Z)", text, re.M | re.S)
            if m and len(m.group(1).strip()) < 40:
                problems.append(f"{path}: section {section} is (nearly) empty")
    check(f"runbook {path}: Meaning, Impact, Diagnosis, Mitigation", problems)

runbooks = {os.path.basename(p)[:-3] for p in glob.glob("docs/runbooks/*.md")} - {"README"}
check("every runbook belongs to an alert", [f"docs/runbooks/{r}.md has no alert" for r in sorted(runbooks - set(names))])
index = open("docs/runbooks/README.md", encoding="utf-8").read() if os.path.isfile("docs/runbooks/README.md") else ""
check("docs/runbooks/README.md lists every alert", [f"{n} not in the index" for n in names if f"[{n}]({n}.md)" not in index])

# Every alert is unit-tested: fires (with labels and a summary) and stays quiet.
fires, quiet = {}, {}
for path in sorted(glob.glob("alerts/tests/*.yaml")):
    doc = yaml.safe_load(open(path, encoding="utf-8"))
    for test in doc.get("tests") or []:
        for case in test.get("alert_rule_test") or []:
            exp = case.get("exp_alerts") or []
            name = case.get("alertname")
            if exp:
                if all((e.get("exp_annotations") or {}).get("summary") and e.get("exp_labels") for e in exp):
                    fires.setdefault(name, []).append(test.get("name"))
            else:
                quiet.setdefault(name, []).append(test.get("name"))
for name in names:
    problems = []
    if name not in fires:
        problems.append("no test where it fires (with exp_labels and exp_annotations.summary)")
    if name not in quiet:
        problems.append("no test where it stays quiet (exp_alerts: [])")
    check(f"alert {name}: unit tests where it fires and where it does not", problems)

# The stdlib rule parser of scripts/dashboard_queries.py agrees with PyYAML.
ours = dq.rules_stdlib(rules_text)
theirs = dq.rules_yaml(rules_text)
problems = []
if len(ours) != len(theirs):
    problems.append(f"{len(ours)} rules parsed, PyYAML finds {len(theirs)}")
for a, b in zip(ours, theirs):
    if a != b:
        problems.append(f"rule {b[0]}: stdlib parser gives {a!r}")
check("scripts/dashboard_queries.py parses alerts/rules.yaml like PyYAML", problems)

# Dashboards.
EXPECTED_UIDS = {"overview": "egx-overview", "backends": "egx-backends", "certificates": "egx-certificates"}
ALLOWED_PANELS = {"timeseries", "stat", "table", "gauge", "row"}
FILTERS = {
    "cluster": re.compile(r'\bcluster\s*=~\s*"\$cluster"'),
    "namespace": re.compile(r'\bnamespace\s*=~\s*"\$namespace"'),
    "gateway": re.compile(r'\bgateway\s*=~\s*"\$gateway"'),
}
DS_REF = {"type": "prometheus", "uid": "${datasource}"}
uids = {}
for key, uid in EXPECTED_UIDS.items():
    path = f"dashboards/{key}.json"
    try:
        board = json.load(open(path, encoding="utf-8"))
    except (OSError, ValueError) as err:
        check(f"{path}: valid JSON", [str(err)])
        continue
    uids[path] = board.get("uid")

    problems = []
    if board.get("uid") != uid:
        problems.append(f"uid {board.get('uid')!r} != {uid!r}")
    if not isinstance(board.get("schemaVersion"), int) or board["schemaVersion"] < 36:
        problems.append(f"schemaVersion {board.get('schemaVersion')!r} < 36")
    inputs = board.get("__inputs") or []
    if not any(i.get("name") == "DS_PROMETHEUS" and i.get("pluginId") == "prometheus" and i.get("type") == "datasource" for i in inputs):
        problems.append("__inputs has no DS_PROMETHEUS prometheus datasource")
    if board.get("id") is not None:
        problems.append("id must be null for import")
    if not board.get("title"):
        problems.append("no title")
    check(f"{path}: valid JSON, uid {uid}, current schema, __inputs DS_PROMETHEUS", problems)

    panels = list(dq.iter_panels(board.get("panels")))
    problems = []
    ids = [p.get("id") for p in panels]
    for p in panels:
        if p.get("type") not in ALLOWED_PANELS:
            problems.append(f"panel {p.get('title')!r} has type {p.get('type')!r}")
        if p.get("type") != "row" and not p.get("targets"):
            problems.append(f"panel {p.get('title')!r} has no query")
        if p.get("type") != "row" and not p.get("title"):
            problems.append(f"panel id {p.get('id')} has no title")
        gp = p.get("gridPos") or {}
        if not all(isinstance(gp.get(k), int) for k in ("h", "w", "x", "y")) or gp.get("x", 0) + gp.get("w", 0) > 24:
            problems.append(f"panel {p.get('title')!r} has a bad gridPos {gp}")
    problems += [f"panel id {i} used twice" for i in sorted(set(i for i in ids if ids.count(i) > 1), key=str)]
    if not any(p.get("type") != "row" for p in panels):
        problems.append("no panels")
    check(f"{path}: only timeseries/stat/table/gauge panels (no graph), unique ids, grid layout", problems)

    problems = []
    for p in panels:
        if p.get("type") == "row":
            continue
        if p.get("datasource") != DS_REF:
            problems.append(f"panel {p.get('title')!r} datasource {p.get('datasource')!r}")
        for t in p.get("targets") or []:
            if t.get("datasource") != DS_REF:
                problems.append(f"panel {p.get('title')!r} target {t.get('refId')} datasource {t.get('datasource')!r}")
    if "${DS_PROMETHEUS}" in json.dumps(board.get("panels")):
        problems.append("panels reference ${DS_PROMETHEUS} instead of ${datasource}")
    check(f"{path}: every panel and query uses the ${{datasource}} variable", problems)

    problems = []
    variables = {v.get("name"): v for v in (board.get("templating") or {}).get("list") or []}
    ds = variables.get("datasource")
    if not ds or ds.get("type") != "datasource" or ds.get("query") != "prometheus":
        problems.append("variable datasource (type datasource, query prometheus) missing")
    for name in ("namespace", "gateway"):
        v = variables.get(name)
        if not v or v.get("type") != "query" or v.get("datasource") != DS_REF:
            problems.append(f"query variable {name} using ${{datasource}} missing")
        elif not (v.get("includeAll") and v.get("allValue") == ".*"):
            problems.append(f"variable {name} needs includeAll with allValue .*")
    cl = variables.get("cluster")
    if cl is not None and not (cl.get("type") == "query" and cl.get("includeAll") and cl.get("allValue") == ".*"):
        problems.append("optional variable cluster must be a query variable with includeAll and allValue .*")
    order = [n for n in variables if n in ("datasource", "cluster", "namespace", "gateway")]
    expected_order = [n for n in ("datasource", "cluster", "namespace", "gateway") if n in variables]
    if order != expected_order:
        problems.append(f"variables in order {order}, expected {expected_order}")
    check(f"{path}: variables datasource, (cluster,) namespace, gateway", problems)

    problems = []
    has_cluster = "cluster" in variables
    required_before = []
    for name, v in variables.items():
        if v.get("type") != "query":
            continue
        for metric, matchers in dq.selectors(dq.variable_expr(v)):
            for f in required_before:
                if not FILTERS[f].search(matchers or ""):
                    problems.append(f"variable {name}: {metric} lacks {f}=~\"${f}\"")
        if name in FILTERS and (name != "cluster" or has_cluster):
            required_before.append(name)
    needed = [f for f in FILTERS if f != "cluster" or has_cluster]
    for p in panels:
        for t in p.get("targets") or []:
            expr = t.get("expr") or ""
            sels = dq.selectors(expr)
            if not sels:
                problems.append(f"panel {p.get('title')!r} {t.get('refId')}: no selector in {expr!r}")
            for metric, matchers in sels:
                for f in needed:
                    if not FILTERS[f].search(matchers or ""):
                        problems.append(f"panel {p.get('title')!r} {t.get('refId')}: {metric} lacks {f}=~\"${f}\"")
            try:
                dq.substitute(expr, dq.default_values())
            except KeyError as err:
                problems.append(f"panel {p.get('title')!r} {t.get('refId')}: unknown variable ${err.args[0]}")
    check(f"{path}: every query filters cluster, namespace and gateway", problems)

dups = sorted({u for u in uids.values() if list(uids.values()).count(u) > 1})
check("dashboard uids are unique", [f"uid {u} used twice" for u in dups])

# Every query (dashboards with variables substituted, and rules) goes to promtool as a recording
# rule, so PromQL syntax is checked by Prometheus' own parser.
items = dq.collect(dq.Path("."), dq.default_values())
with open(os.path.join(tmp, "queries.rules.yaml"), "w", encoding="utf-8") as fh:
    fh.write("groups:\n  - name: dashboard-and-rule-queries\n    rules:\n")
    for n, item in enumerate(items):
        fh.write(f"      - record: egx:query_{n}\n        expr: {json.dumps(item['expr'])}\n")
with open(os.path.join(tmp, "queries.count"), "w") as fh:
    fh.write(str(len(items)))

# Metric names: Envoy's must exist in Envoy 1.40's /stats/prometheus (measured list), the
# exporter's must be in SPEC §4.
SPEC_METRICS = {
    "envoy_gateway_exporter_" + m for m in (
        "build_info up source_duration_seconds source_errors_total cluster_hosts cluster_healthy_ratio "
        "host_healthy host_failure circuit_breaker_open circuit_breaker_threshold "
        "circuit_breaker_utilization_ratio envoy_cert_not_after_timestamp_seconds envoy_cert_days_remaining "
        "secret_cert_not_after_timestamp_seconds secret_cert_not_before_timestamp_seconds "
        "secret_cert_days_remaining secret_cert_served secret_valid"
    ).split()
}
envoy_known = {l.strip() for l in open("alerts/tests/envoy-1.40-native-metrics.txt") if l.strip() and not l.startswith("#")}
used = set()
for item in items:
    used |= dq.metric_names(item["expr"])
check("every envoy_* metric used by rules and dashboards exists in Envoy 1.40's /stats/prometheus",
      [f"{m} not in alerts/tests/envoy-1.40-native-metrics.txt" for m in sorted(used) if dq.origin(m) == "envoy" and m not in envoy_known])
check("every envoy_gateway_exporter_* metric used is in SPEC section 4",
      [f"{m} is not a SPEC metric" for m in sorted(used) if dq.origin(m) == "exporter" and m not in SPEC_METRICS])
check("rules and dashboards use no metric of unknown origin",
      [f"{m}" for m in sorted(used) if dq.origin(m) == "other"])

PYTHON
py_rc=$?
set -e

while IFS= read -r line; do
  case "$line" in
    "ok   - "*) passed=$((passed + 1)); echo "$line" ;;
    "FAIL - "*) failed=$((failed + 1)); echo "$line" ;;
    *) echo "$line" ;;
  esac
done <"$tmp/py.out"
if [[ $py_rc -ne 0 ]]; then
  fail "python checks ran to completion (exit $py_rc)"
fi

if [[ -f "$tmp/queries.rules.yaml" ]]; then
  promtool_check "all $(cat "$tmp/queries.count") dashboard and rule queries are valid PromQL (promtool)" \
    check rules "$tmp/queries.rules.yaml"
else
  fail "dashboard and rule queries extracted"
fi

finish
