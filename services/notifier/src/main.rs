//! The `upr-notifier` binary: command line, configuration, telemetry and the
//! shutdown signal; everything else lives in the library.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use upr_nats::{config, contract::services, service};

/// The notifier of UPR Tracker: plans reminders from the event log and sends
/// them when due. Without a command it runs the service.
#[derive(Debug, Parser)]
#[command(name = services::NOTIFIER, version, after_help = config::settings_help(services::NOTIFIER))]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Exit 0 when this instance answers a NATS micro PING.
    Healthcheck,
}

fn main() -> ExitCode {
    match Cli::parse().command {
        None => service::main(services::NOTIFIER, || async {
            let app = upr_notifier::App::build(upr_notifier::Config::from_env()?).await?;
            app.run(service::shutdown_signal()).await
        }),
        Some(Command::Healthcheck) => service::main_healthcheck(services::NOTIFIER),
    }
}
