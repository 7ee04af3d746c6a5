//! `upr-ingest`: validates intake and appends events to the UPR event log.
//!
//! [`App::build`] connects, makes sure `UPR_EVENTS` and `UPR_REJECTED` exist
//! as the contract describes them, and registers the micro service with its
//! intake endpoint; [`App::run`] serves until the shutdown future resolves.
//! `main.rs` only wires configuration, telemetry and the signal.
//!
//! Modules:
//! - [`pipeline`]: intake loop, per-review workers, replies.
//! - [`cache`]: the reviews' states (the domain's `Review` aggregate) kept in memory.
//! - [`store`]: reading a review's history and appending under an expected sequence.
//! - [`route`]: which replica owns which review.
//! - [`requester`]: which party sent a message, as the server authenticated it.
//! - [`rejection`]: the `upr.rejected` record and its writer.
//! - [`stats`]: counters for the endpoint's STATS data.
//! - [`import`]: `upr-ingest import FILE`, a file of intake messages sent in order.

pub mod cache;
pub mod import;
pub mod pipeline;
pub mod rate;
pub mod rejection;
pub mod requester;
pub mod route;
pub mod stats;
pub mod store;

use std::{future::Future, sync::Arc, time::Duration};

use async_nats::{
    jetstream,
    service::{Service, endpoint::Endpoint},
};
use futures::StreamExt;
use tokio::sync::mpsc;
use tracing::{info, warn};
use upr_domain::{Editors, PartyName};
use upr_nats::{
    config::{self, CommonConfig, ConfigError, Lookup, process_env},
    contract::{self, ingest, services, subjects},
    service::{self, BoxError},
};

use crate::{
    pipeline::{Dispatcher, Intake, Responder},
    route::Peers,
    stats::Counters,
    store::EventLog,
};

/// Default number of workers (reviews appended to concurrently).
pub const DEFAULT_WORKERS: usize = 256;
/// Default number of reviews whose state is kept in memory.
pub const DEFAULT_CACHE: usize = 100_000;

/// Settings of this service, read from the environment.
#[derive(Debug, Clone)]
pub struct Config {
    /// NATS connection and replicas.
    pub common: CommonConfig,
    /// `UPR_DEDUP_WINDOW` (default 1h): how long JetStream itself recognises
    /// a repeated `event_id`, across all reviews.
    pub dedup_window: Duration,
    /// `UPR_INGEST_WORKERS` (default 256).
    pub workers: usize,
    /// `UPR_INGEST_CACHE` (default 100000 reviews).
    pub cache: usize,
    /// `UPR_INTAKE_RATE` (default 200): intake messages per second each
    /// party may send to this replica ([`rate`]).
    pub intake_rate: usize,
    /// `UPR_EDITORS` (default none): parties that may retract any event.
    pub editors: Editors,
}

/// `UPR_EDITORS`: comma-separated party names; blanks around names and
/// empty items are ignored.
///
/// # Errors
/// A [`ConfigError`] naming the variable and the name that is not one.
pub fn parse_editors(text: &str) -> Result<Editors, ConfigError> {
    let names = text
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(|n| {
            PartyName::parse(n)
                .map_err(|e| config::err(contract::env::UPR_EDITORS, &format!("{n:?}: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Editors::new(names))
}

impl Config {
    /// Workers and the reviews they cache, as the dispatcher takes them.
    pub fn sizes(&self) -> pipeline::Sizes {
        pipeline::Sizes {
            workers: self.workers,
            cache: self.cache,
        }
    }

    /// Reads the process environment.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the variable that cannot be used.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(&process_env)
    }

    /// Reads settings through `env`.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the variable that cannot be used.
    pub fn from_lookup(env: Lookup<'_>) -> Result<Self, ConfigError> {
        let dedup_window = match env(contract::env::UPR_DEDUP_WINDOW) {
            Some(v) => config::parse_duration(contract::env::UPR_DEDUP_WINDOW, &v)?,
            None => contract::DEFAULT_DEDUP_WINDOW,
        };
        Ok(Self {
            common: CommonConfig::from_lookup(env)?,
            dedup_window,
            workers: config::whole_number(
                env,
                contract::env::UPR_INGEST_WORKERS,
                DEFAULT_WORKERS,
                65_536,
            )?,
            cache: config::whole_number(
                env,
                contract::env::UPR_INGEST_CACHE,
                DEFAULT_CACHE,
                100_000_000,
            )?,
            intake_rate: config::whole_number(
                env,
                contract::env::UPR_INTAKE_RATE,
                rate::DEFAULT_RATE,
                10_000_000,
            )?,
            editors: parse_editors(&env(contract::env::UPR_EDITORS).unwrap_or_default())?,
        })
    }
}

/// The running service.
pub struct App {
    config: Config,
    client: async_nats::Client,
    /// Intake and the micro service ([`upr_nats::setup::connect_edge`]).
    edge: async_nats::Client,
    js: jetstream::Context,
    service: Service,
    endpoint: Endpoint,
    /// Commands other replicas hand to this one (`upr.internal.ingest.<id>.*`).
    handed_over: async_nats::Subscriber,
    peers: Arc<Peers>,
    counters: Arc<Counters>,
}

impl App {
    /// Connects to NATS (retrying until it answers), creates or verifies the
    /// streams, and registers the micro service with its intake endpoint.
    ///
    /// # Errors
    /// When a stream exists with an incompatible configuration (the message
    /// names each difference), or JetStream stays unreachable.
    pub async fn build(config: Config) -> Result<Self, BoxError> {
        let client = upr_nats::setup::connect(&config.common.nats, services::INGEST).await?;
        let edge = upr_nats::setup::connect_edge(
            &config.common.nats,
            services::INGEST,
            contract::PEOPLE_MAX_INTAKE_MESSAGE,
        )
        .await?;
        let js = jetstream::ContextBuilder::new()
            .timeout(store::ACK_TIMEOUT)
            .max_ack_inflight(4 * config.workers + 1024)
            .backpressure_on_inflight(true)
            .build(client.clone());
        let replicas = config.common.replicas;
        ensure_streams(
            &js,
            &[
                contract::events_stream(replicas, config.dedup_window),
                contract::rejected_stream(replicas),
            ],
        )
        .await?;
        let counters = Arc::new(Counters::default());
        let stats = counters.clone();
        let service = service::start_micro(
            &edge,
            services::INGEST,
            "Validates intake and appends events to the UPR event log",
            move |_, _| stats.snapshot(),
        )
        .await?;
        let endpoint = service
            .endpoint_builder()
            .name(ingest::ENDPOINT)
            .queue_group(subjects::INGEST_QUEUE)
            .add(subjects::INGEST_ALL)
            .await?;
        let id = service.info().await.id;
        let handed_over = edge.subscribe(ingest::route_all(&id)).await?;
        let peers = Arc::new(Peers::new(&id));
        info!(
            instance = %id,
            workers = config.workers,
            dedup_window = ?config.dedup_window,
            "listening on {} in queue group {}",
            subjects::INGEST_ALL,
            subjects::INGEST_QUEUE
        );
        Ok(Self {
            config,
            client,
            edge,
            js,
            service,
            endpoint,
            handed_over,
            peers,
            counters,
        })
    }

    /// Serves until `shutdown` resolves; then stops taking messages, finishes
    /// those already received, and drains the connection.
    ///
    /// # Errors
    /// When draining the connection fails.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), BoxError> {
        let Self {
            config,
            client,
            edge,
            js,
            service,
            mut endpoint,
            mut handed_over,
            peers,
            counters,
        } = self;
        let watch = tokio::spawn(route::watch(
            client.clone(),
            peers.clone(),
            counters.clone(),
        ));
        let log = EventLog::new(client.clone(), js);
        let (records, record_rx) = mpsc::channel(rejection::QUEUE);
        let writer = tokio::spawn(rejection::write_records(log.clone(), record_rx));
        let responder = Responder::new(counters, records);
        let parties = pipeline::Parties::of(&edge, &config.editors);
        let (dispatcher, workers) = Dispatcher::start(
            config.sizes(),
            &log,
            responder,
            (peers, edge.clone()),
            &parties,
            Arc::new(rate::IntakeRate::new(config.intake_rate)),
        );
        let dispatcher = Arc::new(dispatcher);
        // The intake loop only admits (never waits); one task parses and
        // routes in arrival order, so each review's commands keep theirs.
        let (admitted, mut to_dispatch) = mpsc::unbounded_channel::<pipeline::Admitted>();
        let routing = {
            let dispatcher = dispatcher.clone();
            tokio::spawn(async move {
                while let Some(message) = to_dispatch.recv().await {
                    dispatcher.dispatch(message).await;
                }
            })
        };
        let take = |intake: Intake| async {
            match dispatcher.admit(&intake) {
                Some(bytes) => {
                    let _ = admitted.send((intake, bytes));
                }
                None => dispatcher.busy(&intake).await,
            }
        };
        let handed = |message| Intake::HandedOver {
            message,
            client: edge.clone(),
        };

        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                request = endpoint.next() => match request {
                    Some(request) => take(Intake::Endpoint(request)).await,
                    None => break,
                },
                Some(message) = handed_over.next() => take(handed(message)).await,
            }
        }

        // Stop the subscriptions, then handle what they had already
        // delivered. Replicas still handing commands to this one find
        // nobody listening and decide them themselves.
        watch.abort();
        if let Err(e) = endpoint.stop().await {
            warn!(error = %e, "could not unsubscribe the intake endpoint");
        }
        if let Err(e) = handed_over.unsubscribe().await {
            warn!(error = %e, "could not unsubscribe the hand-over subject");
        }
        let drained = async {
            while let Some(request) = endpoint.next().await {
                take(Intake::Endpoint(request)).await;
            }
            while let Some(message) = handed_over.next().await {
                take(handed(message)).await;
            }
        };
        if tokio::time::timeout(Duration::from_secs(5), drained)
            .await
            .is_err()
        {
            warn!("intake still delivering after 5 s; stopping anyway");
        }
        drop(admitted);
        let _ = routing.await;
        drop(dispatcher);
        for worker in workers {
            let _ = worker.await;
        }
        let _ = writer.await;
        service.stop().await?;
        edge.drain().await?;
        client.drain().await?;
        Ok(())
    }
}

/// Creates or verifies each stream ([`upr_nats::setup::patiently`]: an
/// incompatible one stops the service at once, an unreachable JetStream is
/// retried for a while).
async fn ensure_streams(
    js: &jetstream::Context,
    configs: &[jetstream::stream::Config],
) -> Result<(), BoxError> {
    for want in configs {
        upr_nats::setup::patiently(|| upr_nats::setup::ensure_own_stream(js, want.clone())).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    use upr_nats::config::lookup_pairs as lookup;

    #[test]
    fn help_lists_every_setting_read_with_the_default_applied() {
        config::check_settings(services::INGEST, Config::from_lookup);
    }

    #[test]
    fn editors_are_party_names_separated_by_commas() {
        let c = Config::from_lookup(&lookup(&[("UPR_EDITORS", " desk, ngo-a ,")])).unwrap();
        let name = |n| PartyName::parse(n).unwrap();
        assert_eq!(c.editors, Editors::new([name("desk"), name("ngo-a")]));
        let e = Config::from_lookup(&lookup(&[("UPR_EDITORS", "desk,UPR")])).unwrap_err();
        assert!(e.message.contains("\"UPR\""), "{e}");
    }

    #[test]
    fn defaults() {
        let c = Config::from_lookup(&lookup(&[])).unwrap();
        assert_eq!(c.dedup_window, contract::DEFAULT_DEDUP_WINDOW);
        assert_eq!((c.workers, c.cache), (DEFAULT_WORKERS, DEFAULT_CACHE));
        assert_eq!(c.intake_rate, rate::DEFAULT_RATE);
        assert_eq!(
            c.editors,
            Editors::default(),
            "nobody may retract others' events"
        );
    }

    #[test]
    fn settings_are_read_and_bad_values_name_their_variable() {
        let c = Config::from_lookup(&lookup(&[
            ("UPR_DEDUP_WINDOW", "10m"),
            ("UPR_INGEST_WORKERS", "8"),
        ]))
        .unwrap();
        assert_eq!((c.dedup_window, c.workers), (Duration::from_secs(600), 8));
        for (var, value) in [
            ("UPR_DEDUP_WINDOW", "0s"),
            ("UPR_INGEST_WORKERS", "0"),
            ("UPR_INGEST_CACHE", "x"),
            ("UPR_INTAKE_RATE", "0"),
            ("UPR_INTAKE_RATE", "fast"),
            ("UPR_EDITORS", "desk,Bad Name"),
        ] {
            assert_eq!(
                Config::from_lookup(&lookup(&[(var, value)]))
                    .unwrap_err()
                    .var,
                var
            );
        }
    }
}
