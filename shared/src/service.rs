//! What every binary does the same way: the command line (`healthcheck`), the
//! NATS micro service registration, and the shutdown signal.

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

/// Boxed error for the top of a binary: anything that stops it is reported
/// the same way (logged, printed, exit code 1).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The entry point every `main.rs` calls.
///
/// `upr-x healthcheck` pings this binary's micro service and exits 0 when it
/// answers (for compose health checks); `upr-x --version` prints the version;
/// `upr-x --help` prints `usage` and exits 0; anything else is passed to
/// `run` with the tracing subscriber installed. `run` receives the remaining
/// arguments so a binary can add subcommands (`upr-projection rebuild`), and
/// refuses any it does not know with `usage` ([`unknown_command`]).
pub fn main<F, Fut>(name: &'static str, usage: &'static str, run: F) -> ExitCode
where
    F: FnOnce(Vec<String>) -> Fut,
    Fut: Future<Output = Result<(), BoxError>>,
{
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{name}: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match args.first().map(String::as_str) {
        Some("healthcheck") => runtime.block_on(healthcheck(name)),
        Some("--version" | "-V") => {
            println!("{name} {VERSION}");
            ExitCode::SUCCESS
        }
        Some("--help" | "-h" | "help") => {
            println!("{usage}");
            ExitCode::SUCCESS
        }
        _ => {
            crate::telemetry::init();
            match runtime.block_on(run(args)) {
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
    }
}

/// The error for an argument a binary does not take: names it and shows
/// the usage, so a typo never starts the service by accident.
pub fn unknown_command(arg: &str, usage: &str) -> BoxError {
    format!("unknown command {arg:?}\n{usage}").into()
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
    process_env(UPR_HEALTH_FILE)
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join(format!("{name}.health")))
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
        tracing::warn!(error = %e, "cannot write the health file; healthcheck will ping by name");
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
    let subject = match std::fs::read_to_string(health_file(name)) {
        Ok(id) if !id.trim().is_empty() => format!("$SRV.PING.{name}.{}", id.trim()),
        _ => format!("$SRV.PING.{name}"),
    };
    let check = async {
        let client = crate::nats::connect(&config.nats, name).await?;
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
