//! What every service binary does the same way: the runtime and exit code,
//! `healthcheck`, the NATS micro service registration, and the shutdown signal.

use std::{future::Future, path::PathBuf, process::ExitCode, time::Duration};

use async_nats::{
    Client,
    service::{Service, ServiceExt, endpoint},
};
use tracing::{error, info};

use crate::{
    config::{CommonConfig, process_env},
    contract::env::UPR_HEALTH_FILE,
};

/// The version every service reports in its micro-service INFO.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The requester's account, from the `Nats-Request-Info` header
/// (`{"acc": "<account>", ...}`) that nats-server puts on a request crossing
/// a service import, replacing any header of that name the client sent.
/// `None` for a request from inside the service's own account (no header),
/// and for anything the server would not have written: two copies, a header
/// that is not JSON, an `acc` that is not a non-empty string. The one place
/// the header is read: ingest's `recorded_by`, its intake rate and the
/// projection's wait budget all take the account from here.
pub fn requester_account(headers: Option<&async_nats::HeaderMap>) -> Option<String> {
    let mut values = headers?.get_all(crate::contract::ingest::REQUEST_INFO);
    let (Some(info), None) = (values.next(), values.next()) else {
        return None;
    };
    let info: serde_json::Value = serde_json::from_str(info.as_str()).ok()?;
    info.get("acc")?
        .as_str()
        .filter(|acc| !acc.is_empty())
        .map(str::to_string)
}

/// Boxed error for the top of a binary: anything that stops it is reported
/// the same way (logged, printed, exit code 1).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What a service binary does once clap has parsed its command line (and
/// already answered `--help`, `--version` and bad usage): runs `run` on a
/// runtime with the tracing subscriber installed, and turns its result into
/// the exit code, so every binary logs and reports a fatal error alike.
pub fn main<F, Fut>(name: &'static str, run: F) -> ExitCode
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<(), BoxError>>,
{
    let Some(runtime) = runtime(name) else {
        return ExitCode::FAILURE;
    };
    crate::telemetry::init();
    match runtime.block_on(run()) {
        Ok(()) => {
            info!("stopped cleanly");
            ExitCode::SUCCESS
        }
        Err(e) => {
            error!(error = %e, "stopped on an error");
            eprintln!("{name}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `upr-x healthcheck` as a whole program: no tracing subscriber, so a
/// compose health check sees only the one line [`healthcheck`] prints.
pub fn main_healthcheck(name: &'static str) -> ExitCode {
    match runtime(name) {
        Some(runtime) => runtime.block_on(healthcheck(name)),
        None => ExitCode::FAILURE,
    }
}

fn runtime(name: &str) -> Option<tokio::runtime::Runtime> {
    tokio::runtime::Runtime::new()
        .inspect_err(|e| eprintln!("{name}: cannot start the async runtime: {e}"))
        .ok()
}

/// Resolves when the process receives SIGINT or SIGTERM. Run loops `select!`
/// on it, finish the message in hand, then drain.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(e) => {
                error!(error = %e, "cannot listen for SIGTERM; only Ctrl-C will stop");
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = term.recv() => info!("SIGTERM received; shutting down"),
            _ = tokio::signal::ctrl_c() => info!("SIGINT received; shutting down"),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Where a running service writes its micro-service id, so `healthcheck`
/// pings that very instance rather than any replica of the same name.
/// `UPR_HEALTH_FILE` overrides it (tests run several instances on one host).
fn health_file(name: &str) -> PathBuf {
    process_env(UPR_HEALTH_FILE).map_or_else(
        || std::env::temp_dir().join(format!("{name}.health")),
        PathBuf::from,
    )
}

/// Registers the binary as a NATS micro service, so `nats micro ls` lists it
/// and PING/INFO/STATS work, and records its id for [`healthcheck`].
/// `stats` adds the service's own counters to each endpoint's STATS.
///
/// # Errors
/// When the registration request fails (NATS unreachable).
pub async fn start_micro<S>(
    client: &Client,
    name: &str,
    description: &str,
    stats: S,
) -> Result<Service, async_nats::Error>
where
    S: FnMut(String, endpoint::Stats) -> serde_json::Value + Send + Sync + 'static,
{
    let service = client
        .service_builder()
        .description(description)
        .stats_handler(stats)
        .start(name, VERSION)
        .await?;
    let id = service.info().await.id;
    if let Err(e) = std::fs::write(health_file(name), &id) {
        tracing::warn!(error = %e, "cannot write the health file; `healthcheck` will report unhealthy (set UPR_HEALTH_FILE)");
    }
    info!(service = name, id = %id, "micro service registered");
    Ok(service)
}

/// `upr-x healthcheck`: exit 0 when this instance (or, without a health
/// file, any instance of this service) answers a micro-service PING within
/// two seconds.
pub async fn healthcheck(name: &str) -> ExitCode {
    let config = match CommonConfig::from_lookup(&process_env) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{name} healthcheck: {e}");
            return ExitCode::FAILURE;
        }
    };
    // By this instance's id only: pinging by name, any other replica would
    // answer for one that has not registered yet (a standby still waiting).
    let file = health_file(name);
    let subject = match std::fs::read_to_string(&file) {
        Ok(id) if !id.trim().is_empty() => format!("$SRV.PING.{name}.{}", id.trim()),
        _ => {
            eprintln!(
                "{name}: unhealthy: not registered yet ({} holds no instance id)",
                file.display()
            );
            return ExitCode::FAILURE;
        }
    };
    let check = async {
        let client = crate::setup::connect(&config.nats, name).await?;
        client.request(subject.clone(), "".into()).await?;
        Ok::<_, async_nats::Error>(())
    };
    match tokio::time::timeout(Duration::from_secs(2), check).await {
        Ok(Ok(())) => {
            println!("{name}: healthy");
            ExitCode::SUCCESS
        }
        Ok(Err(e)) => {
            eprintln!("{name}: unhealthy: {e}");
            ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!("{name}: unhealthy: no answer to {subject} within 2 s");
            ExitCode::FAILURE
        }
    }
}
