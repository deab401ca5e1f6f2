#!/usr/bin/env bash
# Checks the deployment artefacts: deploy/ (kustomize), Dockerfile, docs/deploy.md.
#
#   bash scripts/check-deploy.sh
#
# 1. renders every directory under deploy/ that has a kustomization.yaml with `kubectl kustomize`
#    (deploy/monitoring with --load-restrictor LoadRestrictionsNone: it includes alerts/ and
#    dashboards/ from outside its root);
# 2. scripts/check_deploy.py: custom resources' fields, exporter containers' security context,
#    resources, probes and port, EXPORTER_* names against the binary's settings (`--help` of
#    target/debug/envoy-gateway-exporter when it is not older than src/config.rs, else
#    src/config.rs), dashboards ConfigMaps byte for byte, the scrape configuration's jobs and labels,
#    Dockerfile vs Makefile `release` and Cargo;
# 3. kubernetes-validate --strict on the native objects (and on a workload built around each
#    EnvoyProxy patch), for the oldest and newest Kubernetes versions below;
# 4. promtool check config on deploy/prometheus/scrape-configs.yaml (Kubernetes discovery swapped
#    for static_configs: Debian's promtool is built without it); hadolint Dockerfile.
#
# Tools: kubectl, kubernetes-validate, hadolint in .venv (`make tools`), promtool (Debian
# `prometheus`), cargo (for `cargo metadata`), Python >= 3.11 with PyYAML (.venv). A missing tool is
# skipped locally and fails under CI=true. Ends with one line "N passed, M failed" (", K skipped"
# when a tool is missing) and exits non-zero if anything failed.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

KUBE_VERSIONS=(1.32.0 1.37.0)
UNRESTRICTED=(deploy/monitoring)
KUBECTL="${KUBECTL:-.venv/bin/kubectl}"
KUBE_VALIDATE="${KUBE_VALIDATE:-.venv/bin/kubernetes-validate}"
HADOLINT="${HADOLINT:-.venv/bin/hadolint}"
PROMTOOL="${PROMTOOL:-$(command -v promtool || true)}"
PY="${PY:-.venv/bin/python}"
BINARY="${BINARY:-target/debug/envoy-gateway-exporter}"

# shellcheck source=scripts/lib/checks.sh
source scripts/lib/checks.sh

# --- 1. render ---------------------------------------------------------------------------------
mkdir -p "$tmp/rendered"
mapfile -t dirs < <(find deploy -name kustomization.yaml -printf '%h\n' | sort)
rendered=yes
if ((${#dirs[@]} == 0)); then
  fail "kustomize directories under deploy/"
elif ! have "$KUBECTL"; then
  rendered=no
  skip "render ${#dirs[@]} kustomize directories"
else
  for dir in "${dirs[@]}"; do
    flags=()
    for u in "${UNRESTRICTED[@]}"; do
      if [[ "$dir" == "$u" ]]; then flags=(--load-restrictor LoadRestrictionsNone); fi
    done
    out="$tmp/rendered/${dir//\//__}.yaml"
    check "kubectl kustomize ${flags[*]:+${flags[*]} }$dir" "$KUBECTL" kustomize "${flags[@]}" "$dir" -o "$out"
    [[ -s "$out" ]] || rm -f "$out"
  done
fi

# --- 2. structured checks ----------------------------------------------------------------------
prepared=no
if [[ "$rendered" == no ]]; then
  skip "structured checks, kubernetes-validate, promtool (need the rendered manifests: kubectl)"
elif ! have "$PY" || ! "$PY" -c 'import sys, yaml, tomllib' >/dev/null 2>&1; then
  skip "structured checks, kubernetes-validate, promtool (scripts/check_deploy.py needs Python >= 3.11 with PyYAML in .venv)"
elif ! ls "$tmp"/rendered/*.yaml >/dev/null 2>&1; then
  fail "structured checks: nothing was rendered"
else
  unrestricted_args=()
  for u in "${UNRESTRICTED[@]}"; do unrestricted_args+=(--unrestricted "$u"); done
  if "$PY" scripts/check_deploy.py --rendered "$tmp/rendered" --binary "$BINARY" \
    --native-out "$tmp/native.yaml" --promtool-out "$tmp/promtool.yaml" --counts "$tmp/counts" \
    "${unrestricted_args[@]}"; then
    read -r p f <"$tmp/counts"
    passed=$((passed + p))
    failed=$((failed + f))
    prepared=yes
  else
    fail "scripts/check_deploy.py ran to the end"
  fi
fi

# --- 3. kubernetes-validate --------------------------------------------------------------------
if [[ "$prepared" == no ]]; then
  : # reported above
elif [[ ! -s "$tmp/native.yaml" ]]; then
  fail "kubernetes-validate: no native objects to validate"
elif ! have "$KUBE_VALIDATE"; then
  skip "kubernetes-validate --strict"
else
  objects=$(grep -c '^kind:' "$tmp/native.yaml" || true)
  for v in "${KUBE_VERSIONS[@]}"; do
    # Fails on an error, and on a warning too (a native kind without a schema is a mistake here).
    check "kubernetes-validate --strict -k $v: $objects native objects" \
      bash -c '"$1" --strict --quiet -k "$2" "$3" 2>&1 | tee /dev/stderr | { ! grep -qE "^(WARN|ERROR)"; } && test "${PIPESTATUS[0]}" -eq 0' \
      _ "$KUBE_VALIDATE" "$v" "$tmp/native.yaml"
  done
fi

# --- 4. promtool, hadolint ---------------------------------------------------------------------
if [[ "$prepared" == no ]]; then
  : # reported above
elif [[ ! -s "$tmp/promtool.yaml" ]]; then
  fail "promtool check config: the scrape configuration was not prepared"
elif ! have "$PROMTOOL"; then
  skip "promtool check config deploy/prometheus/scrape-configs.yaml"
else
  check "promtool check config deploy/prometheus/scrape-configs.yaml (discovery as static_configs)" \
    "$PROMTOOL" check config "$tmp/promtool.yaml"
fi
if ! have "$HADOLINT"; then
  skip "hadolint Dockerfile"
else
  check "hadolint Dockerfile" "$HADOLINT" Dockerfile
fi

finish
