//! Test harness for the end-to-end tests: real `nats-server` processes and the
//! project's real binaries, started as child processes.
//!
//! Where things live:
//! - `app`: [`TestApp`], a server and the services a test asks
//!   for, ready to answer, with a client and the verbs tests repeat; what
//!   most end-to-end tests start with.
//! - `server`: [`NatsServer`], a `nats-server -js` on a free 127.0.0.1 port
//!   with its own store directory; it can be stopped, killed with SIGKILL
//!   and restarted on the same port and store, which is how outages are
//!   tested.
//! - `cluster`: [`NatsCluster`], three routed nodes from the shipped cluster
//!   configuration.
//! - `process`: [`ServiceProcess`], one of the service binaries with a given environment, its output captured to a file
//!   that is printed when the test fails.
//! - `raw`: [`RawClient`], the protocol by hand, for bytes no client sends.
//! - [`http`]: a plain HTTP/1.1 client for the gateway.
//! - [`browser`]: headless chromium, for what the gateway's pages show.
//! - [`fixtures`]: the reviews and dates tests share (KZ-48 and friends).
//! - [`eventually`] (here): poll with a deadline instead of sleeping.
//!
//! Everything is killed and removed on `Drop`, also when a test panics.

#![allow(
    clippy::unwrap_used,
    reason = "tests: a helper's unwrap is an assertion, and a failure should panic where it happened"
)]
// Every helper here fails the calling test by panicking (a server that does
// not start, a request without an answer): a `# Panics` section on each would
// repeat that forty times.
#![allow(clippy::missing_panics_doc)]

mod app;
pub mod browser;
mod cluster;
pub mod fixtures;
pub mod http;
mod process;
mod raw;
mod server;
pub mod sse;

pub use app::{
    READ_MODEL_BUCKETS, Snapshot, TestApp, TestAppBuilder, notifications, webhook_position,
};
pub use cluster::{NatsCluster, RouteTls, cluster_config, cluster_config_with};
pub use fixtures::lifecycle_steps;
pub use process::{ServiceProcess, bin_path, start_services};
pub use raw::RawClient;
pub use server::{
    NatsServer, free_port, nats_server_bin, secured_config_dir, secured_config_dir_with_parties,
};

use std::time::{Duration, Instant};

/// Polls `check` every 20 ms until it returns `Some`, panicking with `what`
/// after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
