//! The tracing subscriber every binary installs.
//!
//! One place decides the log format, so the three services' logs can be read
//! (and parsed, with `UPR_LOG_FORMAT=json`) the same way.

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

use crate::contract::env::{RUST_LOG, UPR_LOG_FORMAT};

/// The log filter when `RUST_LOG` is unset or unusable.
pub const DEFAULT_FILTER: &str = "info";

/// Installs the global subscriber: filter from `RUST_LOG` (default `info`),
/// JSON lines when `UPR_LOG_FORMAT=json`, human-readable text otherwise.
/// Logs go to stderr so stdout stays free for command output (`healthcheck`).
pub fn init() {
    let filter =
        EnvFilter::try_from_env(RUST_LOG).unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let json = std::env::var(UPR_LOG_FORMAT).is_ok_and(|v| v.eq_ignore_ascii_case("json"));
    let registry = tracing_subscriber::registry().with(filter);
    // try_init: a second call (tests linking several services) is harmless.
    if json {
        let _ = registry
            .with(
                fmt::layer()
                    .json()
                    .with_current_span(true)
                    .with_writer(std::io::stderr),
            )
            .try_init();
    } else {
        let _ = registry
            .with(fmt::layer().with_writer(std::io::stderr))
            .try_init();
    }
}
