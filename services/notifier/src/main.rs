//! The `upr-notifier` binary: configuration, telemetry and the shutdown signal;
//! everything else lives in the library.

use std::process::ExitCode;

use upr_shared::{contract::services, service};

const USAGE: &str = "usage: upr-notifier [healthcheck | --version | --help]

  (no command)  run the notifier: plan reminders from the event log and send them when due
  healthcheck   exit 0 when this instance answers a NATS micro PING
Settings are environment variables (NATS_URL, UPR_REMINDER_LEADS, ...): see the README.";

fn main() -> ExitCode {
    service::main(services::NOTIFIER, USAGE, |args| async move {
        if let Some(arg) = args.first() {
            return Err(service::unknown_command(arg, USAGE));
        }
        let app = upr_notifier::App::build(upr_notifier::Config::from_env()?).await?;
        app.run(service::shutdown_signal()).await
    })
}
