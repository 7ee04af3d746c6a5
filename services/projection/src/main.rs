//! The `upr-projection` binary: configuration, telemetry and the shutdown signal;
//! everything else lives in the library.

use std::process::ExitCode;

use upr_shared::{contract::services, service};

fn main() -> ExitCode {
    service::main(services::PROJECTION, |_args| async {
        let app = upr_projection::App::build(upr_projection::Config::from_env()?).await?;
        app.run(service::shutdown_signal()).await
    })
}
