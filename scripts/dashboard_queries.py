#!/usr/bin/env python3
"""List every PromQL expression of the shipped dashboards and alert rules, or the metric names they use.

Dashboards (dashboards/*.json): every panel target's `expr` and every query variable's
`label_values(<selector>, <label>)` selector, with Grafana variables substituted ($cluster,
$namespace, $gateway, $backend default to ".*"; $__rate_interval, $__interval to 1m; $__range to 1h).
Rules (alerts/rules.yaml): every rule's `expr`. Standard library only.

Output, one JSON object per line:
  scripts/dashboard_queries.py
      {"source": "dashboards/overview.json", "kind": "panel", "name": "<panel title>", "ref": "A", "expr": "..."}
      {"source": "alerts/rules.yaml", "kind": "alert", "name": "EnvoyGatewayDown", "ref": "", "expr": "..."}
  scripts/dashboard_queries.py --metrics
      {"metric": "envoy_http_downstream_rq_xx", "origin": "envoy", "used_in": ["alerts/rules.yaml", ...]}
  scripts/dashboard_queries.py --metrics --names-only      (plain names, one per line)
origin is "exporter" (envoy_gateway_exporter_*: the exporter's /metrics), "envoy" (other envoy_*:
Envoy's /stats/prometheus), "prometheus" (up) or "other".

Options: --namespace/--gateway/--cluster/--backend VALUE (regex put into the =~ matchers),
--rate-interval 1m, --only dashboards|rules, --root DIR (repository root).
An unknown Grafana variable in a query is an error (exit 2): nothing leaves unsubstituted.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}
AGGREGATIONS = {
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
    "bottomk", "topk", "quantile", "limitk", "limit_ratio",
}
# Never metric names: operators, modifiers and aggregations (which may be followed by `by (...)`
# instead of `(`, so the "followed by (" rule for functions does not catch them).
KEYWORDS = GROUPING | AGGREGATIONS | {"and", "or", "unless", "bool", "offset", "inf", "nan", "atan2"}

_VAR_RE = re.compile(r"\$\{([A-Za-z0-9_]+)(?::[^}]*)?\}|\$([A-Za-z0-9_]+)|\[\[([A-Za-z0-9_]+)(?::[^\]]*)?\]\]")
_STRING_RE = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_LABEL_VALUES_RE = re.compile(r"^\s*label_values\s*\((.*),\s*([A-Za-z_][A-Za-z0-9_]*)\s*\)\s*$", re.S)
_TOKEN_RE = re.compile(
    r"(?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?[A-Za-z]*)"
    r"|(?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)"
    r"|(?P<brace>\{[^}]*\})"
    r"|(?P<bracket>\[[^\]]*\])"
    r"|(?P<other>.)",
    re.S,
)


def default_values(rate_interval: str = "1m") -> dict[str, str]:
    return {
        "cluster": ".*",
        "namespace": ".*",
        "gateway": ".*",
        "backend": ".*",
        "datasource": "prometheus",
        "__rate_interval": rate_interval,
        "__interval": rate_interval,
        "__range": "1h",
        "__range_s": "3600",
        "__range_ms": "3600000",
    }


def substitute(expr: str, values: dict[str, str]) -> str:
    """Replace Grafana variables; raise KeyError naming any variable without a value."""

    def repl(match: re.Match) -> str:
        name = match.group(1) or match.group(2) or match.group(3)
        if name not in values:
            raise KeyError(name)
        return values[name]

    return _VAR_RE.sub(repl, expr)


def grafana_variables(expr: str) -> set[str]:
    return {m.group(1) or m.group(2) or m.group(3) for m in _VAR_RE.finditer(expr)}


def selectors(expr: str) -> list[tuple[str | None, str | None]]:
    """Vector selectors in a PromQL expression as (metric name or None, matcher text or None).

    `foo{a="b"}` -> ("foo", 'a="b"'), bare `foo` -> ("foo", None), `{__name__="x"}` -> (None, ...).
    Functions, keywords, grouping label lists (by/without/on/ignoring/group_*), range and subquery
    brackets, string literals and numbers are skipped.
    """
    out: list[tuple[str | None, str | None]] = []
    tokens = [t for t in _TOKEN_RE.finditer(_mask_strings(expr)) if not t.group(0).isspace()]
    text = lambda t: expr[t.start():t.end()]  # noqa: E731 - original text, strings unmasked
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        nxt = tokens[i + 1] if i + 1 < len(tokens) else None
        if tok.lastgroup == "brace":
            out.append((None, text(tok)[1:-1]))
        elif tok.lastgroup == "ident":
            name = text(tok)
            if name in GROUPING and nxt is not None and nxt.group(0) == "(":
                depth, i = 0, i + 1
                while i < len(tokens):
                    depth += {"(": 1, ")": -1}.get(tokens[i].group(0), 0)
                    if depth == 0:
                        break
                    i += 1
            elif name in KEYWORDS or (nxt is not None and nxt.group(0) == "("):
                pass
            elif nxt is not None and nxt.lastgroup == "brace":
                out.append((name, text(nxt)[1:-1]))
                i += 1
            else:
                out.append((name, None))
        i += 1
    return out


def _mask_strings(expr: str) -> str:
    """Same length as expr, string contents replaced by 'x' (so braces/brackets inside don't count)."""
    return _STRING_RE.sub(lambda m: m.group(0)[0] + "x" * (len(m.group(0)) - 2) + m.group(0)[-1], expr)


def metric_names(expr: str) -> set[str]:
    names = set()
    for name, matchers in selectors(expr):
        if name is None and matchers:
            m = re.search(r'__name__\s*=\s*"([^"]+)"', matchers)
            if m:
                name = m.group(1)
        if name:
            names.add(name)
    return names


def origin(metric: str) -> str:
    if metric.startswith("envoy_gateway_exporter_"):
        return "exporter"
    if metric.startswith("envoy_"):
        return "envoy"
    if metric == "up":
        return "prometheus"
    return "other"


# ------------------------------------------------------------------------------------ dashboards

def iter_panels(panels):
    for panel in panels or []:
        yield panel
        yield from iter_panels(panel.get("panels"))


def variable_expr(var: dict) -> str:
    """The PromQL of a query variable: the selector of `label_values(<selector>, <label>)`."""
    query = var.get("query")
    if isinstance(query, dict):
        query = query.get("query", "")
    match = _LABEL_VALUES_RE.match(query or "")
    return match.group(1) if match else (query or "")


def dashboard_queries(path: Path, values: dict[str, str], rel: str):
    board = json.loads(path.read_text(encoding="utf-8"))
    for var in board.get("templating", {}).get("list", []):
        if var.get("type") != "query":
            continue
        expr = variable_expr(var)
        yield {"source": rel, "kind": "variable", "name": var.get("name", ""), "ref": "",
               "expr": substitute(expr, values), "raw": expr}
    for panel in iter_panels(board.get("panels")):
        for target in panel.get("targets") or []:
            expr = target.get("expr")
            if not expr:
                continue
            yield {"source": rel, "kind": "panel", "name": panel.get("title", ""), "ref": target.get("refId", ""),
                   "expr": substitute(expr, values), "raw": expr}


# ----------------------------------------------------------------------------------------- rules

def rules_stdlib(text: str):
    """Parse (name, kind, expr) from alerts/rules.yaml without a YAML library.

    Understands the file's own layout: `- alert: NAME` / `- record: NAME` items whose `expr:` is a
    block scalar (`|`, `|-`, `>`...) or a single-line plain/quoted scalar. scripts/check-alerts.sh
    compares this parser's result with PyYAML's on every run.
    """
    lines = text.splitlines()
    out = []
    current = None
    i = 0
    while i < len(lines):
        line = lines[i]
        m = re.match(r"^(\s*)-\s+(alert|record):\s*(.+?)\s*$", line)
        if m:
            current = {"kind": m.group(2), "name": _scalar(m.group(3))}
            i += 1
            continue
        m = re.match(r"^(\s*)expr:\s*(.*?)\s*$", line)
        if m and current is not None:
            indent = len(m.group(1))
            value = m.group(2)
            if value.startswith(("|", ">")):
                block = []
                i += 1
                while i < len(lines) and (not lines[i].strip() or _indent(lines[i]) > indent):
                    block.append(lines[i])
                    i += 1
                while block and not block[-1].strip():
                    block.pop()
                width = min(_indent(b) for b in block if b.strip())
                body = [b[width:] if b.strip() else "" for b in block]
                if value.startswith(">"):
                    expr = " ".join(s for s in body if s)  # folded; fine for PromQL
                else:
                    expr = "\n".join(body)
                if not value.endswith("-"):
                    expr += "\n"
            else:
                expr = _scalar(value)
                i += 1
            out.append((current["name"], current["kind"], expr))
            current = None
            continue
        i += 1
    return out


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _scalar(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == "'":
        return value[1:-1].replace("''", "'")
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return json.loads(value)
    return value


def rules_yaml(text: str):
    import yaml  # only when asked for; the stdlib parser is the default

    doc = yaml.safe_load(text)
    out = []
    for group in doc.get("groups", []):
        for rule in group.get("rules", []):
            kind = "alert" if "alert" in rule else "record"
            out.append((rule[kind], kind, rule["expr"]))
    return out


def rule_queries(path: Path, rel: str, parser: str = "stdlib"):
    text = path.read_text(encoding="utf-8")
    rules = rules_yaml(text) if parser == "yaml" else rules_stdlib(text)
    for name, kind, expr in rules:
        yield {"source": rel, "kind": kind, "name": name, "ref": "", "expr": expr.strip(), "raw": expr}


# ------------------------------------------------------------------------------------------ main

def collect(root: Path, values: dict[str, str], only: str | None = None, parser: str = "stdlib"):
    items = []
    if only in (None, "dashboards"):
        for path in sorted((root / "dashboards").glob("*.json")):
            items.extend(dashboard_queries(path, values, str(path.relative_to(root))))
    if only in (None, "rules"):
        path = root / "alerts" / "rules.yaml"
        items.extend(rule_queries(path, str(path.relative_to(root)), parser))
    return items


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=ROOT)
    parser.add_argument("--namespace", default=".*")
    parser.add_argument("--gateway", default=".*")
    parser.add_argument("--cluster", default=".*")
    parser.add_argument("--backend", default=".*")
    parser.add_argument("--rate-interval", default="1m")
    parser.add_argument("--only", choices=("dashboards", "rules"))
    parser.add_argument("--rules-parser", choices=("stdlib", "yaml"), default="stdlib")
    parser.add_argument("--metrics", action="store_true", help="list metric names instead of expressions")
    parser.add_argument("--names-only", action="store_true", help="with --metrics: plain names, one per line")
    args = parser.parse_args(argv)

    values = default_values(args.rate_interval)
    values.update(cluster=args.cluster, namespace=args.namespace, gateway=args.gateway, backend=args.backend)
    try:
        items = collect(args.root, values, args.only, args.rules_parser)
    except KeyError as err:
        print(f"dashboard_queries: unknown Grafana variable ${err.args[0]}", file=sys.stderr)
        return 2

    if not args.metrics:
        for item in items:
            item = dict(item)
            item.pop("raw", None)
            print(json.dumps(item, sort_keys=False))
        return 0

    used: dict[str, set[str]] = {}
    for item in items:
        for name in metric_names(item["expr"]):
            used.setdefault(name, set()).add(item["source"])
    for name in sorted(used):
        if args.names_only:
            print(name)
        else:
            print(json.dumps({"metric": name, "origin": origin(name), "used_in": sorted(used[name])}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
