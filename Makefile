# make demo: run the exporter against a bundled real Envoy.   make test: every test.
SHELL := /bin/bash
export ENVOY_BIN := $(CURDIR)/.venv/bin/envoy
CARGO ?= cargo

.PHONY: all tools build release demo test lint unit check-alerts check-deploy e2e clean

all: build

tools:
	@scripts/install-tools.sh

build:
	$(CARGO) build --locked

# The static binary the container image ships (the Dockerfile runs the same command).
# Needs the musl target and musl-gcc (ring's C parts): installed here when missing.
release:
	@rustup target list --installed | grep -qx x86_64-unknown-linux-musl || rustup target add x86_64-unknown-linux-musl
	@command -v musl-gcc >/dev/null || (apt-get update -qq && apt-get install -y -qq --no-install-recommends musl-tools)
	$(CARGO) build --release --locked --target x86_64-unknown-linux-musl

demo: tools build
	python3 demo/demo.py --envoy $(ENVOY_BIN) --exporter target/debug/envoy-gateway-exporter

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --locked --all-targets -- -D warnings

unit: tools
	$(CARGO) test --workspace --locked --all-targets

check-alerts: tools
	bash scripts/check-alerts.sh

check-deploy: tools build
	bash scripts/check-deploy.sh

# A real Prometheus scraping a real Envoy and the exporter: dashboards, rules, alerts.
e2e: tools build
	python3 tests/e2e/prometheus_e2e.py --envoy $(ENVOY_BIN) --exporter target/debug/envoy-gateway-exporter

test: lint unit check-alerts check-deploy e2e

clean:
	$(CARGO) clean
