//! The `upr-ingest` binary: command line, configuration, telemetry and the
//! shutdown signal; everything else lives in the library.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use upr_nats::{config, contract::services, service};

/// The intake service of UPR Tracker: validates intake messages and appends
/// the accepted ones to the event log. Without a command it runs the service.
#[derive(Debug, Parser)]
#[command(name = services::INGEST, version, after_help = config::settings_help(services::INGEST))]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Send a CSV or JSON Lines file of intake messages (as the publisher);
    /// exit 1 when any row is refused.
    Import {
        /// The file to send.
        file: PathBuf,
        /// Check every row and send nothing (no server needed).
        #[arg(long)]
        dry_run: bool,
    },
    /// Exit 0 when this instance answers a NATS micro PING.
    Healthcheck,
}

fn main() -> ExitCode {
    match Cli::parse().command {
        None => service::main(services::INGEST, || async {
            let app = upr_ingest::App::build(upr_ingest::Config::from_env()?).await?;
            app.run(service::shutdown_signal()).await
        }),
        Some(Command::Import { file, dry_run }) => service::main(services::INGEST, || async move {
            let summary = upr_ingest::import::import(&file, dry_run).await?;
            print!("{}: {summary}", file.display());
            if summary.any_refused() {
                return Err("some rows were refused (listed above)".into());
            }
            Ok(())
        }),
        Some(Command::Healthcheck) => service::main_healthcheck(services::INGEST),
    }
}
