# syntax=docker/dockerfile:1
#
# UPR Tracker: one image with the three services (upr-ingest, upr-projection,
# upr-notifier) and the key generator (upr-keys); compose picks the binary
# per service.
#
# Two stages. The builder compiles the dependencies first, from the manifests
# and Cargo.lock alone (with empty stand-in sources), so that layer is reused
# until a manifest or the lock file changes; then it copies the real sources
# and builds only the workspace's own crates. The runtime stage is
# debian:bookworm-slim (same glibc as the builder) with the binaries, CA
# certificates for tls:// NATS URLs, and a non-root user.
#
# tests/tests/deployment.rs checks that every workspace member's Cargo.toml
# is copied below, so adding a crate without updating this file fails CI.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-slim-bookworm AS builder
WORKDIR /src

# 1. Dependencies only: manifests, lock file, placeholder sources. Every
# workspace member's manifest is needed, or cargo cannot load the workspace.
COPY Cargo.toml Cargo.lock ./
COPY shared/Cargo.toml shared/Cargo.toml
COPY services/ingest/Cargo.toml services/ingest/Cargo.toml
COPY services/projection/Cargo.toml services/projection/Cargo.toml
COPY services/notifier/Cargo.toml services/notifier/Cargo.toml
COPY services/keys/Cargo.toml services/keys/Cargo.toml
COPY tests/Cargo.toml tests/Cargo.toml
COPY bench/Cargo.toml bench/Cargo.toml
ARG MEMBERS="shared services/ingest services/projection services/notifier services/keys tests bench"
RUN for member in $MEMBERS; do \
        mkdir -p "$member/src" \
        && echo '//! placeholder' > "$member/src/lib.rs" \
        && echo 'fn main() {}' > "$member/src/main.rs"; \
    done \
    && cargo build --release --locked --bins -p upr-ingest -p upr-projection -p upr-notifier -p upr-keys \
    && for member in $MEMBERS; do rm -rf "$member/src"; done

# 2. The project itself. `touch` makes the copied sources newer than the
# placeholders' build, whatever their timestamps in the build context.
COPY shared shared
COPY services services
COPY tests tests
COPY bench bench
RUN find $MEMBERS -name '*.rs' -exec touch {} + \
    && cargo build --release --locked --bins -p upr-ingest -p upr-projection -p upr-notifier -p upr-keys \
    && mkdir -p /out \
    && cp target/release/upr-ingest target/release/upr-projection target/release/upr-notifier \
          target/release/upr-keys /out/

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 upr \
    && useradd --system --uid 10001 --gid upr --no-create-home --shell /usr/sbin/nologin upr
COPY --from=builder /out/upr-ingest /out/upr-projection /out/upr-notifier /out/upr-keys /usr/local/bin/
USER 10001:10001
ENV NATS_URL=nats://nats:4222 \
    UPR_LOG_FORMAT=json \
    RUST_LOG=info
# No default command: compose (or `docker run upr-tracker upr-ingest`) names
# the binary. Each binary has `healthcheck` for the container health check.
CMD ["upr-ingest", "--version"]
