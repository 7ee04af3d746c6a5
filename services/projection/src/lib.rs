//! `upr-projection`: Folds the UPR event log into read models and answers queries.
//!
//! [`App::build`] connects and sets up what the service needs; [`App::run`]
//! serves until the shutdown future resolves, then drains the connection.
//! `main.rs` only wires configuration, telemetry and the signal.

use std::future::Future;

use upr_shared::{
    config::{CommonConfig, ConfigError, process_env},
    contract::services,
    service::{self, BoxError},
};

/// Settings of this service, read from the environment.
#[derive(Debug, Clone)]
pub struct Config {
    /// NATS connection and replicas.
    pub common: CommonConfig,
}

impl Config {
    /// Reads the process environment.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the variable that cannot be used.
    pub fn from_env() -> Result<Self, ConfigError> {
        Ok(Self {
            common: CommonConfig::from_lookup(&process_env)?,
        })
    }
}

/// The running service.
pub struct App {
    client: async_nats::Client,
    service: async_nats::service::Service,
}

impl App {
    /// Connects to NATS (retrying until it answers) and registers the micro service.
    ///
    /// # Errors
    /// When NATS refuses the setup.
    pub async fn build(config: Config) -> Result<Self, BoxError> {
        let client = upr_shared::nats::connect(&config.common.nats, services::PROJECTION).await?;
        let service = service::start_micro(
            &client,
            services::PROJECTION,
            "Folds the UPR event log into read models and answers queries",
            |_, _| serde_json::Value::Null,
        )
        .await
        .map_err(|e| e.to_string())?;
        Ok(Self { client, service })
    }

    /// Serves until `shutdown` resolves, then stops the micro service and drains.
    ///
    /// # Errors
    /// When draining the connection fails.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), BoxError> {
        shutdown.await;
        self.service.stop().await.map_err(|e| e.to_string())?;
        self.client.drain().await?;
        Ok(())
    }
}
