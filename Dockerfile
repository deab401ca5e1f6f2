# syntax=docker/dockerfile:1
# envoy-gateway-exporter: a static (musl) binary on distroless, running as non-root.
#   docker build --build-arg EXPORTER_REVISION="$(git rev-parse --short=12 HEAD)" \
#     -t ghcr.io/envoy-gateway-exporter/envoy-gateway-exporter:0.1.0 .
# The build command below is the Makefile's `release` recipe (scripts/check-deploy.sh checks it).

FROM rust:1.95.0-bookworm AS builder
# musl-gcc compiles the C and assembly parts of the TLS stack (ring) for the musl target.
RUN apt-get update \
    && apt-get install -y --no-install-recommends musl-tools=1.2.3-1 \
    && rm -rf /var/lib/apt/lists/* \
    && rustup target add x86_64-unknown-linux-musl
WORKDIR /src
# Only what the build reads: the workspace manifests, the lock file, build.rs and every Cargo
# target that a manifest declares (Cargo wants declared [[bench]] files even when it does not build
# them); integration tests (tests/) are not needed. The build context has no .git: see .dockerignore.
COPY Cargo.toml Cargo.lock build.rs ./
COPY src ./src
COPY benches ./benches
COPY parsers ./parsers
# build.rs takes the revision from EXPORTER_REVISION when there is no .git.
ARG EXPORTER_REVISION=""
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked --target x86_64-unknown-linux-musl \
    && install -D -m 0755 target/x86_64-unknown-linux-musl/release/envoy-gateway-exporter /out/envoy-gateway-exporter

FROM gcr.io/distroless/static-debian12:nonroot
ARG EXPORTER_REVISION=""
LABEL org.opencontainers.image.title="envoy-gateway-exporter" \
      org.opencontainers.image.description="Prometheus exporter for Envoy Gateway proxies: backend health, circuit breakers, certificate expiry" \
      org.opencontainers.image.source="https://github.com/envoy-gateway-exporter/envoy-gateway-exporter" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.revision="${EXPORTER_REVISION}"
COPY --from=builder /out/envoy-gateway-exporter /usr/local/bin/envoy-gateway-exporter
USER 65532:65532
EXPOSE 19100
ENTRYPOINT ["/usr/local/bin/envoy-gateway-exporter"]
