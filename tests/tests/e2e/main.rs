//! End-to-end tests: the built binaries against a real nats-server, one
//! server per test. All of them link into this one binary (one module per
//! feature), so they build once.

#![allow(
    clippy::unwrap_used,
    reason = "tests: a helper's unwrap is an assertion, and a failure should panic where it happened"
)]

mod bounds;
mod corpus;
mod corrections;
mod deployment;
mod events;
mod foundation;
mod gateway;
mod ingest;
mod notifier;
mod projection;
mod readme;
mod reads;
mod replicas;
mod schemas;
mod security;
mod webhooks;
