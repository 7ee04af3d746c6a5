//! `upr-gateway`: UPR Tracker over HTTP (contract V3.5), for people and
//! programs that do not speak NATS. It holds read rights only: every answer
//! comes from a NATS request to the projection or the notifier; it never
//! writes the event log or a read model.
//!
//! Where things live:
//! - [`api`]: the read API, `/api/v1/...`, one projection query each.
//! - [`calendar`]: `/calendar.ics` and `/calendar/<CC>.ics`, with entity tags.
//! - [`http`]: the axum [`Router`](axum::Router) and its shared
//!   [`AppState`](http::AppState); each area adds its routes there.
//! - [`ops`]: `/healthz` and `/metrics`.
//! - [`metrics`]: the request figures and the system's, for Prometheus.
//! - [`pages`]: the HTML pages, `/` and `/reviews/<CC>/<session>`.
//! - [`query`]: one NATS request with a timeout, and its answer as HTTP.
//! - [`server`]: the HTTP/1 accept loop with its bounds (request head,
//!   slow clients, connections) and graceful shutdown.
//! - [`health`]: `upr-gateway healthcheck`, a `GET /healthz` on the running
//!   gateway.
//!
//! [`App::build`] connects and binds; [`App::run`] serves until the shutdown
//! future resolves, lets requests in progress finish, then drains NATS.

pub mod api;
pub mod calendar;
pub mod health;
pub mod http;
pub mod metrics;
pub mod ops;
pub mod pages;
pub mod query;
pub mod server;

use std::{future::Future, net::SocketAddr};

use tokio::net::TcpListener;
use tracing::info;
use upr_nats::{
    config::{self, CommonConfig, ConfigError, Lookup, process_env},
    contract::{env, gateway as names, services},
    service::BoxError,
};

/// Settings of the gateway, read from the environment.
#[derive(Debug, Clone)]
pub struct Config {
    /// NATS connection (the gateway's own read-only user).
    pub common: CommonConfig,
    /// `UPR_HTTP_ADDR` (default `127.0.0.1:8080`).
    pub http_addr: SocketAddr,
    /// `UPR_HTTP_MAX_REQUESTS` (default 256): past it a request is answered
    /// 503 at once instead of queueing, so a flood cannot build a backlog
    /// that every later client waits behind.
    pub max_requests: usize,
}

impl Config {
    /// Reads the process environment.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the variable that cannot be used.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(&process_env)
    }

    /// Reads the settings through `env`, so tests need not touch the process
    /// environment.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the variable that cannot be used, e.g.
    /// `UPR_HTTP_ADDR` for `localhost` (no port).
    pub fn from_lookup(lookup: Lookup<'_>) -> Result<Self, ConfigError> {
        let common = CommonConfig::from_lookup(lookup)?;
        let http_addr = http_addr(lookup)?;
        let max_requests = match lookup(env::UPR_HTTP_MAX_REQUESTS) {
            None => parse_max_requests(names::DEFAULT_MAX_REQUESTS)?,
            Some(v) => parse_max_requests(&v)?,
        };
        Ok(Self {
            common,
            http_addr,
            max_requests,
        })
    }
}

/// `UPR_HTTP_ADDR` as a socket address (an IP and a port: the gateway binds
/// exactly what it is told, no name lookup).
///
/// # Errors
/// A [`ConfigError`] naming `UPR_HTTP_ADDR`.
pub fn http_addr(lookup: Lookup<'_>) -> Result<SocketAddr, ConfigError> {
    let text = lookup(env::UPR_HTTP_ADDR).unwrap_or_else(|| names::DEFAULT_HTTP_ADDR.to_string());
    text.trim().parse().map_err(|_| {
        config::err(
            env::UPR_HTTP_ADDR,
            &format!("expected an IP address and a port such as 127.0.0.1:8080, got {text:?}"),
        )
    })
}

fn parse_max_requests(text: &str) -> Result<usize, ConfigError> {
    match text.trim().parse::<usize>() {
        Ok(n @ 1..=100_000) => Ok(n),
        _ => Err(config::err(
            env::UPR_HTTP_MAX_REQUESTS,
            &format!("must be a whole number from 1 to 100000, got {text:?}"),
        )),
    }
}

/// The running gateway.
pub struct App {
    client: async_nats::Client,
    listener: TcpListener,
    state: http::AppState,
    max_requests: usize,
}

impl App {
    /// Binds the HTTP address, then connects to NATS (retrying until it
    /// answers). Nothing is created on NATS: the gateway only asks.
    ///
    /// # Errors
    /// When the address cannot be bound (in use, not this host's) or the
    /// NATS settings can never work.
    pub async fn build(config: Config) -> Result<Self, BoxError> {
        // The address first: a port in use is a mistake to report at once,
        // not after waiting for NATS.
        let listener = TcpListener::bind(config.http_addr).await.map_err(|e| {
            format!(
                "{}: cannot listen on {}: {e}",
                env::UPR_HTTP_ADDR,
                config.http_addr
            )
        })?;
        let client = upr_nats::setup::connect(&config.common.nats, services::GATEWAY).await?;
        info!(addr = %listener.local_addr()?, "HTTP listening");
        let state = http::AppState::new(client.clone());
        Ok(Self {
            client,
            listener,
            state,
            max_requests: config.max_requests,
        })
    }

    /// The address the server listens on (the port, when 0 was asked for).
    ///
    /// # Errors
    /// When the socket cannot tell (it always can once bound).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` resolves; then stops accepting, lets the
    /// requests in progress finish (up to [`server::GRACE`]) and drains the
    /// NATS connection.
    ///
    /// # Errors
    /// When draining the connection fails.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), BoxError> {
        let router = http::router(self.state, self.max_requests);
        server::serve(self.listener, router, shutdown).await;
        self.client.drain().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use upr_nats::config::lookup_pairs as lookup;

    #[test]
    fn help_lists_exactly_what_the_gateway_reads() {
        config::check_settings(services::GATEWAY, Config::from_lookup);
    }

    #[test]
    fn defaults_listen_on_loopback_port_8080() {
        let c = Config::from_lookup(&lookup(&[])).unwrap();
        assert_eq!(c.http_addr, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(c.max_requests, 256);
    }

    #[test]
    fn bad_values_name_their_variable() {
        for (var, bad) in [
            ("UPR_HTTP_ADDR", "localhost"),
            ("UPR_HTTP_ADDR", "127.0.0.1"),
            ("UPR_HTTP_ADDR", "127.0.0.1:99999"),
            ("UPR_HTTP_MAX_REQUESTS", "0"),
            ("UPR_HTTP_MAX_REQUESTS", "many"),
        ] {
            let e = Config::from_lookup(&lookup(&[(var, bad)]))
                .err()
                .unwrap_or_else(|| panic!("{var}={bad:?} was accepted"));
            assert_eq!(e.var, var, "{bad}");
        }
    }
}
