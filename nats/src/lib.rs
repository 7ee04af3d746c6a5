//! The NATS adapter: everything the services do the same way against NATS,
//! above the pure domain (`upr-domain`) and below the services.
//!
//! Where things live:
//! - [`contract`]: every public name of the system — subjects, streams, buckets —
//!   and their JetStream configurations, defined once.
//! - [`config`]: settings read from the environment (contract section 6).
//! - [`telemetry`]: the tracing subscriber (`RUST_LOG`, `UPR_LOG_FORMAT=json`).
//! - [`history`]: reading one review's events back from the log (event by
//!   event, or batched for ingest).
//! - [`setup`]: connecting with retry and creating/verifying streams and buckets.
//! - [`service`]: what every binary does the same way: the NATS micro service,
//!   the `healthcheck` subcommand and the shutdown signal.
//! - [`retry`]: delays between retries.
//! - [`stop`]: telling a service's loops to stop, and pausing unless told to.
//! - [`clock`]: the one place the services read the clock.

pub mod clock;
pub mod config;
pub mod contract;
pub mod history;
pub mod retry;
pub mod service;
pub mod setup;
pub mod stop;
pub mod telemetry;
