//! The `upr-ingest` binary: configuration, telemetry and the shutdown signal;
//! everything else lives in the library.

use std::process::ExitCode;

use upr_shared::{contract::services, service};

fn main() -> ExitCode {
    service::main(services::INGEST, |_args| async {
        let app = upr_ingest::App::build(upr_ingest::Config::from_env()?).await?;
        app.run(service::shutdown_signal()).await
    })
}
