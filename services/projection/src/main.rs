//! The `upr-projection` binary: command line, configuration, telemetry and
//! the shutdown signal; everything else lives in the library.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use upr_nats::{config, contract::services, service};

/// The projection of UPR Tracker: folds the event log into the read models and
/// answers queries. Without a command it runs the service.
#[derive(Debug, Parser)]
#[command(name = services::PROJECTION, version, after_help = config::settings_help(services::PROJECTION))]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Empty the read models, replay the whole log, exit.
    Rebuild,
    /// Exit 0 when this instance answers a NATS micro PING.
    Healthcheck,
}

fn main() -> ExitCode {
    let command = Cli::parse().command;
    if let Some(Command::Healthcheck) = command {
        return service::main_healthcheck(services::PROJECTION);
    }
    service::main(services::PROJECTION, || async {
        let config = upr_projection::Config::from_env()?;
        if let Some(Command::Rebuild) = command {
            upr_projection::rebuild(config, service::shutdown_signal()).await
        } else {
            let app = upr_projection::App::build(config).await?;
            app.run(service::shutdown_signal()).await
        }
    })
}
