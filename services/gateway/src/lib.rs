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
//! - [`events`]: `GET /events`, the notifications as Server-Sent Events.
//! - [`webhooks`]: each notification sent to subscribers in a signed `POST`.
//!
//! [`App::build`] connects and binds; [`App::run`] serves until the shutdown
//! future resolves, lets requests in progress finish, then drains NATS.

pub mod api;
pub mod calendar;
pub mod events;
pub mod health;
pub mod http;
pub mod metrics;
pub mod ops;
pub mod pages;
pub mod query;
pub mod server;
pub mod webhooks;

use std::{future::Future, net::SocketAddr, time::Duration};

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
    /// Live notifications and webhooks.
    pub notifications: NotificationsConfig,
}

/// Settings of `GET /events` and the webhooks.
#[derive(Debug, Clone)]
pub struct NotificationsConfig {
    /// `UPR_SSE_MAX_CLIENTS` (default 1000): event streams open at once.
    /// They are not counted in `max_requests` (a stream lasts for hours
    /// and would use up the request limit), so they have their own cap.
    pub sse_max_clients: usize,
    /// `UPR_WEBHOOKS`: the subscriptions, read and checked at start-up.
    pub webhooks: Vec<webhooks::Subscription>,
    /// `UPR_WEBHOOK_RETRY_MAX` (default 5m): the longest pause between two
    /// attempts at a failing receiver.
    pub webhook_retry_max: Duration,
}

impl NotificationsConfig {
    /// Reads the settings through `lookup`, the subscription file included.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the variable; for `UPR_WEBHOOKS`, the
    /// message names the entry and the field at fault.
    pub fn from_lookup(lookup: Lookup<'_>) -> Result<Self, ConfigError> {
        let text = lookup(env::UPR_SSE_MAX_CLIENTS)
            .unwrap_or_else(|| names::DEFAULT_SSE_MAX_CLIENTS.to_string());
        let Ok(sse_max_clients @ 1..=100_000) = text.trim().parse::<usize>() else {
            return Err(config::err(
                env::UPR_SSE_MAX_CLIENTS,
                &format!("must be a whole number from 1 to 100000, got {text:?}"),
            ));
        };
        // Empty is unset: compose passes `${UPR_WEBHOOKS:-}` on as it is.
        let webhooks = match lookup(env::UPR_WEBHOOKS).filter(|p| !p.trim().is_empty()) {
            None => Vec::new(),
            Some(path) => webhooks::config::load(std::path::Path::new(path.trim()))
                .map_err(|e| config::err(env::UPR_WEBHOOKS, &e))?,
        };
        let text = lookup(env::UPR_WEBHOOK_RETRY_MAX)
            .unwrap_or_else(|| names::DEFAULT_WEBHOOK_RETRY_MAX.to_string());
        let webhook_retry_max = config::parse_duration(env::UPR_WEBHOOK_RETRY_MAX, &text)?;
        Ok(Self {
            sse_max_clients,
            webhooks,
            webhook_retry_max,
        })
    }
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
        let notifications = NotificationsConfig::from_lookup(lookup)?;
        Ok(Self {
            common,
            http_addr,
            max_requests,
            notifications,
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
    /// Connections served at once: see [`server::max_connections`].
    max_connections: usize,
    live: Live,
}

/// `GET /events` and the webhooks: their tasks and the signal that stops
/// them, which [`App::run`] gives when shutdown begins (an event stream
/// would otherwise hold its connection open through the whole grace
/// period).
struct Live {
    hub: events::Hub,
    feed: tokio::task::JoinHandle<()>,
    webhooks: webhooks::Webhooks,
    /// Fired (or dropped) when shutdown begins.
    stop: upr_nats::stop::Stopper,
}

impl App {
    /// Binds the HTTP address, then connects to NATS (retrying until it
    /// answers). Nothing is created on NATS: the gateway only asks, and
    /// writes its webhook positions in the bucket the notifier made.
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
        let mut state = http::AppState::new(client.clone());
        let max_connections =
            server::max_connections(config.max_requests, config.notifications.sse_max_clients);
        let live = Live::start(&state, config.notifications)?;
        state.webhooks = live.webhooks.metrics();
        state.events = Some(live.hub.clone());
        Ok(Self {
            client,
            listener,
            state,
            max_requests: config.max_requests,
            max_connections,
            live,
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
        // `/events` is merged after the router's request limit, so its
        // long-lived streams are not counted in it (events.rs has its cap).
        let router = http::router(self.state, self.max_requests)
            .merge(events::routes(self.live.hub.clone()));
        let Live {
            feed,
            webhooks,
            stop,
            ..
        } = self.live;
        // Should serving end without the shutdown, dropping `stop` with
        // this future stops them too.
        let shutdown = async move {
            shutdown.await;
            stop.stop();
        };
        server::serve(self.listener, router, self.max_connections, shutdown).await;
        Live::stopped(feed, webhooks).await;
        self.client.drain().await?;
        Ok(())
    }

    /// The webhook counters, for `/metrics`.
    pub fn webhook_metrics(&self) -> webhooks::Metrics {
        self.live.webhooks.metrics()
    }

    /// The `/events` hub (its open streams, for `/metrics`).
    pub fn events_hub(&self) -> events::Hub {
        self.live.hub.clone()
    }
}

impl Live {
    fn start(state: &http::AppState, config: NotificationsConfig) -> Result<Self, BoxError> {
        let (stop, stopped) = upr_nats::stop::channel();
        let (hub, feed) =
            events::Hub::start(state.js.clone(), config.sse_max_clients, stopped.clone());
        let webhooks = webhooks::Webhooks::start(
            &state.js,
            config.webhooks,
            config.webhook_retry_max,
            &hub.newest(),
            &stopped,
        )?;
        Ok(Self {
            hub,
            feed,
            webhooks,
            stop,
        })
    }

    /// Waits for the feed and the deliveries, once told to stop (a delivery
    /// in progress hands its notification back), at most a few seconds.
    async fn stopped(feed: tokio::task::JoinHandle<()>, webhooks: webhooks::Webhooks) {
        let all = async {
            let _ = feed.await;
            webhooks.join().await;
        };
        if tokio::time::timeout(Duration::from_secs(5), all)
            .await
            .is_err()
        {
            tracing::warn!("live notifications did not stop within 5 s; stopping anyway");
        }
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
        assert_eq!(c.notifications.sse_max_clients, 1000);
        assert!(c.notifications.webhooks.is_empty());
        assert_eq!(c.notifications.webhook_retry_max, Duration::from_secs(300));
        // Compose passes an unset UPR_WEBHOOKS on as empty: no webhooks.
        let c = Config::from_lookup(&lookup(&[("UPR_WEBHOOKS", " ")])).unwrap();
        assert!(c.notifications.webhooks.is_empty());
    }

    #[test]
    fn bad_values_name_their_variable() {
        for (var, bad) in [
            ("UPR_HTTP_ADDR", "localhost"),
            ("UPR_HTTP_ADDR", "127.0.0.1"),
            ("UPR_HTTP_ADDR", "127.0.0.1:99999"),
            ("UPR_HTTP_MAX_REQUESTS", "0"),
            ("UPR_HTTP_MAX_REQUESTS", "many"),
            ("UPR_SSE_MAX_CLIENTS", "0"),
            ("UPR_WEBHOOKS", "/no/such/webhooks.json"),
            ("UPR_WEBHOOK_RETRY_MAX", "forever"),
        ] {
            let e = Config::from_lookup(&lookup(&[(var, bad)]))
                .err()
                .unwrap_or_else(|| panic!("{var}={bad:?} was accepted"));
            assert_eq!(e.var, var, "{bad}");
        }
    }
}
