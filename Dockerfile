# UPR Tracker: one image with the three services (upr-ingest, upr-projection,
# upr-notifier), the HTTP gateway (upr-gateway) and the key generator
# (upr-keys); compose builds it once (the
# ingest service) and runs it for every service, picking the binary.
#
# Two stages. The builder compiles the dependencies first, from the manifests
# and Cargo.lock alone (with empty stand-in sources), so that layer is reused
# until a manifest or the lock file changes; then it copies the real sources
# and builds only the workspace's own crates, with the `image` profile
# (Cargo.toml: release code, stripped; about 9 MB per service binary where
# the release profile's, with line tables for profiling, are about 60 MB).
# The runtime stage is Debian 12 slim (same glibc as the bookworm builder)
# with the binaries, CA certificates for tls:// NATS URLs, and a non-root
# user.
#
# Base images are pinned to exact versions (Rust 1.95.0, Debian 12.15), so a
# rebuild gets the same compiler and system release; bump them deliberately.
# Docker Hub still rebuilds these tags for security updates of their base;
# append @sha256:<digest> to a FROM to freeze the bytes as well.
#
# tests/tests/e2e/deployment.rs checks that every workspace member's
# Cargo.toml is copied below, so adding a crate without updating this file
# fails CI; scripts/test lints this file with hadolint.

ARG RUST_VERSION=1.95.0

FROM rust:${RUST_VERSION}-slim-bookworm AS builder
WORKDIR /src

# 1. Dependencies only: manifests, lock file, placeholder sources. Every
# workspace member's manifest is needed, or cargo cannot load the workspace.
COPY Cargo.toml Cargo.lock ./
COPY domain/Cargo.toml domain/Cargo.toml
COPY nats/Cargo.toml nats/Cargo.toml
COPY schema/Cargo.toml schema/Cargo.toml
COPY services/ingest/Cargo.toml services/ingest/Cargo.toml
COPY services/projection/Cargo.toml services/projection/Cargo.toml
COPY services/notifier/Cargo.toml services/notifier/Cargo.toml
COPY services/keys/Cargo.toml services/keys/Cargo.toml
COPY services/gateway/Cargo.toml services/gateway/Cargo.toml
COPY tests/Cargo.toml tests/Cargo.toml
COPY bench/Cargo.toml bench/Cargo.toml
ARG MEMBERS="domain nats schema services/ingest services/projection services/notifier services/keys services/gateway tests bench"
RUN for member in $MEMBERS; do \
        mkdir -p "$member/src" \
        && echo '//! placeholder' > "$member/src/lib.rs" \
        && echo 'fn main() {}' > "$member/src/main.rs"; \
    done \
    && cargo build --profile image --locked --bins -p upr-ingest -p upr-projection -p upr-notifier -p upr-gateway -p upr-keys \
    && for member in $MEMBERS; do rm -rf "$member/src"; done

# 2. The project itself. `touch` makes the copied sources newer than the
# placeholders' build, whatever their timestamps in the build context.
COPY domain domain
COPY nats nats
COPY schema schema
COPY services services
COPY tests tests
COPY bench bench
RUN find $MEMBERS -name '*.rs' -exec touch {} + \
    && cargo build --profile image --locked --bins -p upr-ingest -p upr-projection -p upr-notifier -p upr-gateway -p upr-keys \
    && mkdir -p /out \
    && cp target/image/upr-ingest target/image/upr-projection target/image/upr-notifier \
          target/image/upr-gateway target/image/upr-keys /out/

FROM debian:12.15-slim AS runtime
# ca-certificates is not pinned to a package version: the Debian archive drops
# superseded versions, so a pin would break the build after the next security
# update; the pinned base image fixes the release it comes from.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 upr \
    && useradd --system --uid 10001 --gid upr --no-create-home --shell /usr/sbin/nologin upr
COPY --from=builder /out/upr-ingest /out/upr-projection /out/upr-notifier /out/upr-gateway /out/upr-keys /usr/local/bin/
USER 10001:10001
ENV NATS_URL=nats://nats:4222 \
    UPR_LOG_FORMAT=json \
    RUST_LOG=info
# No default command: compose (or `docker run upr-tracker upr-ingest`) names
# the binary. Each binary has `healthcheck` for the container health check.
CMD ["upr-ingest", "--version"]
