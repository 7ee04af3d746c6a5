//! The `upr-notifier` binary: configuration, telemetry and the shutdown signal;
//! everything else lives in the library.

use std::process::ExitCode;

use upr_shared::{contract::services, service};

fn main() -> ExitCode {
    service::main(services::NOTIFIER, |_args| async {
        let app = upr_notifier::App::build(upr_notifier::Config::from_env()?).await?;
        app.run(service::shutdown_signal()).await
    })
}
