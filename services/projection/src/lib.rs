//! `upr-projection`: folds the UPR event log into read models and answers
//! queries about them.
//!
//! Where things live:
//! - [`store`]: the three buckets and the durable consumer; created, checked,
//!   emptied (replay from sequence 1) and scanned.
//! - [`projector`]: the consumer loop: batch, fold (the domain's pure
//!   `read_models`), write each changed value once, then ack.
//! - [`cache`]: the bounded working set of decoded values.
//! - [`upcoming`]: the in-memory index of scheduled reviews.
//! - [`query`]: the `upr.query.*` endpoints of the micro service.
//! - [`state`]: what the loop shares with the queries and the stats.
//! - [`lease`]: which instance is active; the others stand by.
//!
//! [`App::build`] connects and sets everything up; [`App::run`] serves until
//! the shutdown future resolves. [`rebuild`] is `upr-projection rebuild`.

pub mod batcher;
pub mod cache;
pub mod lease;
pub mod policy;
pub mod projector;
pub mod query;
pub mod state;
pub mod store;
pub mod upcoming;
pub mod writer;

use std::{future::Future, sync::Arc};

use async_nats::jetstream;
use tracing::info;
use upr_domain::Lead;
use upr_nats::{
    config::{self, CommonConfig, ConfigError, Lookup, process_env},
    contract::{self, PROJECTION_MAX_BATCH, services},
    service::{self, BoxError},
    stop::{self, Stop, Stopper},
};

use crate::{
    lease::Lease,
    projector::Projector,
    query::Queries,
    state::Shared,
    store::{OpenError, Store},
};

/// Settings of this service, read from the environment.
#[derive(Debug, Clone)]
pub struct Config {
    /// NATS connection and replicas.
    pub common: CommonConfig,
    /// `UPR_PROJECTION_BATCH` (default 10000, at most 20000): most events
    /// folded before one round of writes and one ack. Larger batches
    /// coalesce more writes when catching up.
    pub max_batch: usize,
    /// `UPR_PROJECTION_CACHE_MB` (default 20): memory for cached values
    /// between batches, counted as their JSON size plus overhead.
    pub cache_bytes: usize,
    /// `UPR_REMINDER_LEADS`, as the notifier reads it: the calendar's alarms.
    pub leads: Vec<Lead>,
}

impl Config {
    /// Reads the process environment.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the variable that cannot be used.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(&process_env)
    }

    /// Reads settings through `env` (tests pass a map).
    ///
    /// # Errors
    /// A [`ConfigError`] naming the variable that cannot be used.
    pub fn from_lookup(env: Lookup<'_>) -> Result<Self, ConfigError> {
        Ok(Self {
            common: CommonConfig::from_lookup(env)?,
            max_batch: config::whole_number(
                env,
                contract::env::UPR_PROJECTION_BATCH,
                10_000,
                PROJECTION_MAX_BATCH,
            )?,
            cache_bytes: config::whole_number(
                env,
                contract::env::UPR_PROJECTION_CACHE_MB,
                20,
                64 * 1024,
            )? * 1024
                * 1024,
            leads: config::reminder_leads(env)?,
        })
    }
}

/// Connects and makes sure the event log exists (the projection may start
/// before ingest).
async fn connect(
    config: &Config,
) -> Result<
    (
        async_nats::Client,
        jetstream::Context,
        jetstream::stream::Stream,
    ),
    BoxError,
> {
    let client = upr_nats::setup::connect(&config.common.nats, services::PROJECTION).await?;
    let js = jetstream::new(client.clone());
    let events = upr_nats::setup::await_stream(
        &js,
        contract::events_stream(config.common.replicas, contract::DEFAULT_DEDUP_WINDOW),
    )
    .await?;
    Ok((client, js, events))
}

/// What an instance needs to become the active one.
struct Standby {
    config: Config,
    js: jetstream::Context,
    events: jetstream::stream::Stream,
    leases: jetstream::kv::Store,
    holder: String,
    shared: Arc<Shared>,
}

/// The active instance's part: the loop and the lease it writes under.
struct Active {
    projector: Projector,
    lease: Arc<Lease>,
    /// Renews the lease from the moment it was taken, on its own task so a
    /// long fold or a slow start never delays a renewal; ends when another
    /// instance holds it.
    keeper: tokio::task::JoinHandle<String>,
}

impl Standby {
    /// Opens the read models (checking, creating or replaying them) and
    /// loads them: only under the lease, so a standby never touches buckets
    /// or consumer. The queries are served once the caller adds them.
    async fn activate(&self, lease: Lease, stopping: Stop) -> Result<(Active, Queries), BoxError> {
        let lease = Arc::new(lease);
        let keeper = tokio::spawn({
            let lease = lease.clone();
            async move { lease.keep().await }
        });
        // Right after a node of a cluster died, JetStream may take seconds to
        // answer (leaders being elected): keep trying for a while, except
        // for a configuration that retrying cannot fix.
        match upr_nats::setup::patiently(|| self.open(&lease, stopping.clone())).await {
            Ok((projector, queries)) => {
                let active = Active {
                    projector,
                    lease,
                    keeper,
                };
                Ok((active, queries))
            }
            Err(e) => {
                keeper.abort();
                Err(e.into())
            }
        }
    }

    async fn open(
        &self,
        lease: &Arc<Lease>,
        stopping: Stop,
    ) -> Result<(Projector, Queries), OpenError> {
        let lease = lease.clone();
        let (store, _) = Store::open(
            self.js.clone(),
            self.events.clone(),
            self.config.common.replicas,
        )
        .await?;
        let mut projector = Projector::new(
            store.clone(),
            self.shared.clone(),
            self.config.cache_bytes,
            self.config.max_batch,
            stopping,
        );
        projector.under(lease.clone());
        projector.take_over().await.map_err(OpenError::Transient)?;
        let queries = Queries::new(store, self.shared.clone(), self.config.leads.clone());
        info!(holder = %self.holder, "active: consuming the event log and answering queries");
        Ok((projector, queries))
    }
}

/// The running service.
pub struct App {
    client: async_nats::Client,
    /// Queries and the micro service ([`upr_nats::setup::connect_edge`]).
    edge: async_nats::Client,
    service: async_nats::service::Service,
    standby: Standby,
    /// `Some` when this instance took the lease at start.
    active: Option<Active>,
    stop: Stopper,
}

impl App {
    /// Connects (retrying until NATS answers) and asks for the lease. The
    /// first instance takes it and, before it registers the micro service
    /// (so a healthy single instance already answers queries), checks or
    /// creates the buckets and the consumer (replaying from 1 when any was
    /// missing), loads the upcoming index and adds the query endpoints. Any
    /// other instance registers the micro service and stands by.
    ///
    /// # Errors
    /// When NATS refuses the setup (e.g. an incompatible bucket).
    pub async fn build(config: Config) -> Result<Self, BoxError> {
        let (client, js, events) = connect(&config).await?;
        let leases = upr_nats::setup::patiently(|| {
            upr_nats::setup::ensure_bucket(
                &js,
                contract::projection_lease_bucket(config.common.replicas),
            )
        })
        .await?;
        let shared = Arc::new(Shared::default());
        let (stop, stopping) = stop::channel();
        let standby = Standby {
            config,
            js,
            events,
            leases,
            holder: uuid::Uuid::now_v7().to_string(),
            shared: shared.clone(),
        };
        let edge = upr_nats::setup::connect_edge(
            &standby.config.common.nats,
            services::PROJECTION,
            contract::PEOPLE_MAX_QUERY_MESSAGE,
        )
        .await?;
        // A lease still held by an instance killed just before this one
        // started (a restart after a crash) expires within its TTL: wait that
        // long before standing by, so a lone instance that is healthy also
        // answers queries.
        let lease = lease::take(
            &standby.js,
            standby.config.common.replicas,
            &standby.leases,
            &standby.holder,
            Some(contract::PROJECTION_LEASE_TTL + lease::RETRY_EVERY),
        )
        .await?;
        let stats = shared.clone();
        let start_service = || {
            service::start_micro(
                &edge,
                services::PROJECTION,
                "Folds the UPR event log into read models and answers queries",
                move |_, _| stats.stats_json(),
            )
        };
        let (service, active) = match lease {
            Some(lease) => {
                // Ready before it registers: the health file is written then.
                let (active, queries) = standby.activate(lease, stopping).await?;
                let service = start_service().await?;
                queries.serve(&service).await?;
                (service, Some(active))
            }
            None => (start_service().await?, None),
        };
        Ok(Self {
            client,
            edge,
            service,
            standby,
            active,
            stop,
        })
    }

    /// Stands by until this instance holds the lease (unless it already
    /// does), then consumes and serves until `shutdown` resolves; then
    /// finishes the batch in hand (written and acked), gives the lease up,
    /// stops the micro service and drains. Losing the lease stops the
    /// instance with an error: its supervisor starts it again as a standby.
    ///
    /// # Errors
    /// When the read models cannot be reset, the lease is lost, or draining
    /// fails.
    ///
    /// # Panics
    /// Never: without a time limit, asking for the lease waits until this
    /// instance holds it.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), BoxError> {
        let Self {
            client,
            edge,
            service,
            standby,
            active,
            stop,
        } = self;
        tokio::pin!(shutdown);
        let active = match active {
            Some(active) => Some(active),
            None => tokio::select! {
                () = &mut shutdown => None,
                lease = lease::take(
                    &standby.js,
                    standby.config.common.replicas,
                    &standby.leases,
                    &standby.holder,
                    None,
                ) => {
                    let lease = lease?.expect("without a time limit, take waits for the lease");
                    let (active, queries) = standby.activate(lease, stop.subscribe()).await?;
                    queries.serve(&service).await?;
                    Some(active)
                }
            },
        };
        let result = match active {
            None => Ok(()),
            Some(Active {
                mut projector,
                lease,
                mut keeper,
            }) => {
                let lost = |r: Result<String, tokio::task::JoinError>| -> BoxError {
                    r.unwrap_or_else(|e| format!("lease keeper failed: {e}"))
                        .into()
                };
                let run = projector.run(None);
                tokio::pin!(run);
                let result = tokio::select! {
                    r = &mut run => r,
                    r = &mut keeper => Err(lost(r)),
                    () = &mut shutdown => {
                        stop.stop();
                        tokio::select! {
                            r = &mut run => r,
                            r = &mut keeper => Err(lost(r)),
                        }
                    }
                };
                keeper.abort();
                if result.is_ok() {
                    lease.release().await;
                }
                result
            }
        };
        service.stop().await?;
        edge.drain().await?;
        client.drain().await?;
        result
    }
}

/// `upr-projection rebuild`: empties the read models (buckets and consumer
/// deleted and recreated), replays the log from sequence 1 and returns once
/// everything that was in the stream at the start is applied.
///
/// Run it while the service is stopped: a running instance would see its
/// consumer deleted and start its own replay.
///
/// # Errors
/// When JetStream refuses the reset, or `shutdown` resolves first.
#[allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "a positive rate for the log, rounded down"
)]
pub async fn rebuild(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), BoxError> {
    let (client, js, events) = connect(&config).await?;
    let (store, was_reset) = Store::open(js, events, config.common.replicas).await?;
    if !was_reset {
        store.reset().await?;
    }
    let target = store.stream_last_seq().await?;
    info!(target, "rebuilding the read models from sequence 1");
    let started = std::time::Instant::now();
    let shared = Arc::new(Shared::default());
    let (stop, stopping) = stop::channel();
    let mut projector = Projector::new(
        store,
        shared.clone(),
        config.cache_bytes,
        config.max_batch,
        stopping,
    );
    projector.without_index();
    projector.load().await?;
    let run = projector.run(Some(target));
    tokio::pin!(run, shutdown);
    tokio::select! {
        r = &mut run => r?,
        () = &mut shutdown => {
            stop.stop();
            run.await?;
            client.drain().await?;
            return Err("rebuild interrupted before it finished; run it again".into());
        }
    }
    let elapsed = started.elapsed();
    let stats = shared.stats_json();
    info!(
        applied_seq = shared.applied_seq(),
        events_applied = %stats["events_applied"],
        malformed_skipped = %stats["malformed_skipped"],
        seconds = elapsed.as_secs_f64(),
        events_per_second = (target as f64 / elapsed.as_secs_f64().max(1e-9)) as u64,
        "rebuild complete"
    );
    client.drain().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn help_lists_every_setting_read_with_the_default_applied() {
        config::check_settings(services::PROJECTION, Config::from_lookup);
    }
}
