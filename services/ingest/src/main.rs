//! The `upr-ingest` binary: configuration, telemetry and the shutdown signal;
//! everything else lives in the library.
//!
//! `upr-ingest` runs the service; `upr-ingest import FILE [--dry-run]` sends
//! a file of intake messages and sums up (exit 1 when any was refused).

use std::process::ExitCode;

use upr_shared::{contract::services, service};

const USAGE: &str = "usage: upr-ingest [import FILE [--dry-run] | healthcheck | --version | --help]

  (no command)              run the intake service
  import FILE [--dry-run]   send a CSV or JSON Lines file of intake messages (as the publisher);
                            --dry-run checks every row and sends nothing; exit 1 when any is refused
  healthcheck               exit 0 when this instance answers a NATS micro PING
Settings are environment variables (NATS_URL, NATS_NKEY, ...): see the README.";

fn main() -> ExitCode {
    service::main(services::INGEST, USAGE, |args| async move {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        match args.as_slice() {
            [] => {
                let app = upr_ingest::App::build(upr_ingest::Config::from_env()?).await?;
                app.run(service::shutdown_signal()).await
            }
            ["import", rest @ ..] => {
                let dry_run = rest.contains(&"--dry-run");
                let files: Vec<&&str> = rest.iter().filter(|a| **a != "--dry-run").collect();
                let [file] = files.as_slice() else {
                    return Err(format!("import takes one file; {USAGE}").into());
                };
                let summary = upr_ingest::import::import(file.as_ref(), dry_run).await?;
                print!("{file}: {summary}");
                if summary.any_refused() {
                    return Err("some rows were refused (listed above)".into());
                }
                Ok(())
            }
            [other, ..] => Err(service::unknown_command(other, USAGE)),
        }
    })
}
