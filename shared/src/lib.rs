//! The library the three UPR Tracker services share.
//!
//! Where things live:
//! - [`domain`]: the pure core (no I/O, no async): intake validation, events and
//!   their envelope, the review lifecycle, the read-model folds, reminder planning.
//! - [`contract`]: every public name of the system — subjects, streams, buckets —
//!   and their JetStream configurations, defined once.
//! - [`config`]: settings read from the environment (contract section 6).
//! - [`telemetry`]: the tracing subscriber (`RUST_LOG`, `UPR_LOG_FORMAT=json`).
//! - [`nats`]: connecting with retry and creating/verifying streams and buckets.
//! - [`service`]: what every binary does the same way: the NATS micro service,
//!   the `healthcheck` subcommand and the shutdown signal.
//! - [`schema`]: JSON Schemas of every payload (`docs/schemas/`), from the
//!   wire types and the intake rules.

pub mod clock;
pub mod config;
pub mod contract;
pub mod domain;
pub mod nats;
pub mod retry;
pub mod schema;
pub mod service;
pub mod telemetry;
