//! The `upr-gateway` binary: command line, configuration, telemetry and the
//! shutdown signal; everything else lives in the library.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use upr_nats::{config, contract::services, service};

/// The HTTP gateway of UPR Tracker: the read models, the calendar and the
/// pages over HTTP, with read rights only on NATS. Without a command it runs
/// the server.
#[derive(Debug, Parser)]
#[command(name = services::GATEWAY, version, after_help = config::settings_help(services::GATEWAY))]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Exit 0 when the gateway this environment configures answers GET /healthz with 200.
    Healthcheck,
}

fn main() -> ExitCode {
    match Cli::parse().command {
        None => service::main(services::GATEWAY, || async {
            let app = upr_gateway::App::build(upr_gateway::Config::from_env()?).await?;
            app.run(service::shutdown_signal()).await
        }),
        Some(Command::Healthcheck) => upr_gateway::health::main_healthcheck(),
    }
}
