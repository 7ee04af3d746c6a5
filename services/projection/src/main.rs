//! The `upr-projection` binary: configuration, telemetry and the shutdown
//! signal; everything else lives in the library.
//!
//! `upr-projection` runs the service; `upr-projection rebuild` empties the
//! read models, replays the log and exits.

use std::process::ExitCode;

use upr_shared::{contract::services, service};

fn main() -> ExitCode {
    service::main(services::PROJECTION, |args| async move {
        let config = upr_projection::Config::from_env()?;
        match args.first().map(String::as_str) {
            None => {
                let app = upr_projection::App::build(config).await?;
                app.run(service::shutdown_signal()).await
            }
            Some("rebuild") => upr_projection::rebuild(config, service::shutdown_signal()).await,
            Some(other) => Err(format!(
                "unknown command {other:?}; usage: upr-projection [rebuild | healthcheck | --version]"
            )
            .into()),
        }
    })
}
