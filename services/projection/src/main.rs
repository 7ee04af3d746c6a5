//! The `upr-projection` binary: configuration, telemetry and the shutdown
//! signal; everything else lives in the library.
//!
//! `upr-projection` runs the service; `upr-projection rebuild` empties the
//! read models, replays the log and exits.

use std::process::ExitCode;

use upr_shared::{contract::services, service};

const USAGE: &str = "usage: upr-projection [rebuild | healthcheck | --version | --help]

  (no command)  run the projection: fold the event log into the read models and answer queries
  rebuild       empty the read models, replay the whole log, exit
  healthcheck   exit 0 when this instance answers a NATS micro PING
Settings are environment variables (NATS_URL, UPR_PROJECTION_BATCH, ...): see the README.";

fn main() -> ExitCode {
    service::main(services::PROJECTION, USAGE, |args| async move {
        let config = upr_projection::Config::from_env()?;
        match args.first().map(String::as_str) {
            None => {
                let app = upr_projection::App::build(config).await?;
                app.run(service::shutdown_signal()).await
            }
            Some("rebuild") => upr_projection::rebuild(config, service::shutdown_signal()).await,
            Some(other) => Err(service::unknown_command(other, USAGE)),
        }
    })
}
