//! `upr-notifier`: sends reminders before UPR review dates (contract section 5).
//!
//! Where things live:
//! - [`planner`]: follows `UPR_EVENTS` with a durable consumer and keeps one
//!   JetStream message schedule per pending reminder, plus the change notices.
//! - [`sender`]: consumes the messages those schedules produce when they come
//!   due and publishes each reminder exactly once.
//! - [`state`]: the notifier's KV bucket: each review's date and status, and
//!   the durable sent-marks.
//! - [`stats`]: the counters behind micro STATS and `upr.notifier.status`.
//! - [`timing`]: where a reminder's time goes, step by step (micro STATS).
//!
//! The timers live in NATS, not in this process: a notifier that is down
//! misses nothing, any number of replicas share the work, and the process
//! holds no per-review state, so its memory does not grow with the calendar.
//! docs/architecture.md (notifier part) explains the choice and its limits.
//!
//! [`App::build`] connects and sets up what the service needs; [`App::run`]
//! serves until the shutdown future resolves, then drains the connection.

pub mod planner;
pub mod sender;
pub mod state;
pub mod stats;
pub mod timing;

use std::{future::Future, sync::Arc, time::Duration};

use async_nats::jetstream::{self, kv, stream::Stream};
use futures::StreamExt;
use tracing::{info, warn};
use upr_domain::{Lead, Timestamp};
use upr_nats::{
    config::{self, CommonConfig, ConfigError, Lookup, process_env},
    contract::{self, notifier as names, services},
    service::{self, BoxError},
    setup::{SetupError, await_stream, ensure_own_stream, patiently},
    stop::{self, Stop},
};

use crate::stats::Stats;

/// Settings of this service, read from the environment.
#[derive(Debug, Clone)]
pub struct Config {
    /// NATS connection and replicas.
    pub common: CommonConfig,
    /// `UPR_REMINDER_LEADS` (default `30d,7d,1d`), longest first.
    pub leads: Vec<Lead>,
    /// `UPR_READER_CONSUMERS` (default `reader`): the durable consumers on
    /// `UPR_NOTIFICATIONS` kept for readers.
    pub reader_consumers: Vec<String>,
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
    /// `UPR_REMINDER_LEADS` for `30d,7x`.
    pub fn from_lookup(env: Lookup<'_>) -> Result<Self, ConfigError> {
        let common = CommonConfig::from_lookup(env)?;
        let leads = config::reminder_leads(env)?;
        let reader_consumers = parse_consumer_names(
            &env(contract::env::UPR_READER_CONSUMERS)
                .unwrap_or_else(|| names::DEFAULT_READER_CONSUMERS.to_string()),
        )?;
        Ok(Self {
            common,
            leads,
            reader_consumers,
        })
    }
}

/// Consumer names as JetStream takes them in an API subject: one token of
/// letters, digits, `-` and `_`.
fn parse_consumer_names(spec: &str) -> Result<Vec<String>, ConfigError> {
    let mut out: Vec<String> = Vec::new();
    if spec.trim() == "none" {
        return Ok(out);
    }
    for name in spec.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let valid = name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !valid {
            return Err(config::err(
                contract::env::UPR_READER_CONSUMERS,
                &format!("{name:?} is not a consumer name (letters, digits, - and _, at most 64)"),
            ));
        }
        if !out.iter().any(|n| n == name) {
            out.push(name.to_string());
        }
    }
    Ok(out)
}

/// What the loops share: handles and settings, no per-review data.
pub struct Shared {
    js: jetstream::Context,
    kv: kv::Store,
    events: Stream,
    timers: Stream,
    leads: Vec<Lead>,
    stats: Arc<Stats>,
}

/// The running service.
pub struct App {
    client: async_nats::Client,
    /// The status endpoint and the micro service
    /// ([`upr_nats::setup::connect_edge`]).
    edge: async_nats::Client,
    service: async_nats::service::Service,
    shared: Arc<Shared>,
}

impl App {
    /// Connects to NATS (retrying until it answers), creates or checks the
    /// streams and the bucket it needs, and registers the micro service.
    ///
    /// # Errors
    /// When NATS refuses the setup, e.g. a stream exists with an
    /// incompatible configuration.
    pub async fn build(config: Config) -> Result<Self, BoxError> {
        let replicas = config.common.replicas;
        let client = upr_nats::setup::connect(&config.common.nats, services::NOTIFIER).await?;
        let js = jetstream::new(client.clone());

        // The event log belongs to ingest: wait for it, leave its
        // de-duplication window (UPR_DEDUP_WINDOW) as ingest set it.
        let events = await_stream(
            &js,
            contract::events_stream(replicas, contract::DEFAULT_DEDUP_WINDOW),
        )
        .await?;
        // Several replicas starting together on a busy cluster may each wait
        // seconds for a stream another one is creating: keep trying.
        let notifications = patiently(|| {
            ensure_own_stream(
                &js,
                contract::notifications_stream(replicas, names::NOTIFICATIONS_DEDUP_WINDOW),
            )
        })
        .await?;
        for name in &config.reader_consumers {
            // Just created on a busy cluster, the stream may take seconds to
            // answer for its consumers too.
            patiently(|| async {
                ensure_reader_consumer(&notifications, name)
                    .await
                    .map_err(|source| SetupError::JetStream {
                        kind: "consumer",
                        name: name.clone(),
                        source,
                    })
            })
            .await?;
            info!(consumer = %name, "reader consumer on UPR_NOTIFICATIONS ready");
        }
        // The gateway's webhook positions: made here because the gateway's
        // user may create nothing (contract::gateway::STATE_BUCKET says why).
        patiently(|| {
            upr_nats::setup::ensure_bucket(&js, contract::gateway::state_bucket(replicas))
        })
        .await?;
        let timers = patiently(|| ensure_own_stream(&js, names::timers_stream(replicas))).await?;
        let kv = patiently(|| upr_nats::setup::ensure_bucket(&js, names::state_bucket(replicas)))
            .await?;
        info!(
            leads = %config.leads.iter().map(Lead::label).collect::<Vec<_>>().join(","),
            "reminder leads"
        );

        let stats = Arc::new(Stats::default());
        let for_handler = stats.clone();
        let edge = upr_nats::setup::connect_edge(
            &config.common.nats,
            services::NOTIFIER,
            contract::PEOPLE_MAX_QUERY_MESSAGE,
        )
        .await?;
        let service = service::start_micro(
            &edge,
            services::NOTIFIER,
            "Sends reminders before UPR review dates",
            move |_, _| for_handler.to_json(),
        )
        .await?;
        let shared = Arc::new(Shared {
            js,
            kv,
            events,
            timers,
            leads: config.leads,
            stats,
        });
        Ok(Self {
            client,
            edge,
            service,
            shared,
        })
    }

    /// Serves until `shutdown` resolves; then each loop finishes the message
    /// in hand and acks it, the micro service stops and the connection drains.
    ///
    /// # Errors
    /// When the status endpoint cannot be added or draining fails.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), BoxError> {
        let (stopper, stop) = stop::channel();
        let status = self
            .service
            .endpoint_builder()
            .name("status")
            .add(names::STATUS)
            .await?;
        let tasks = vec![
            tokio::spawn(planner::run(self.shared.clone(), stop.clone())),
            tokio::spawn(sender::run(self.shared.clone(), stop.clone())),
            tokio::spawn(serve_status(self.shared.clone(), status, stop.clone())),
            tokio::spawn(refresh_pending(self.shared.clone(), stop)),
        ];
        shutdown.await;
        stopper.stop();
        for task in tasks {
            if let Err(e) = task.await {
                warn!(error = %e, "a notifier task ended abnormally");
            }
        }
        self.service.stop().await?;
        self.edge.drain().await?;
        self.client.drain().await?;
        Ok(())
    }
}

/// The current time; the domain never reads the clock itself.
fn now() -> Timestamp {
    upr_nats::clock::now()
}

/// How long a loop waits before it tries NATS again.
const RETRY_EVERY: Duration = Duration::from_secs(1);

/// How long one pull request waits on the server. Short, with a short
/// heartbeat: after nats-server restarts, a pull is only known to be dead
/// when heartbeats stop, and a reminder must not wait for that longer than
/// about two heartbeats.
const PULL_EXPIRES: Duration = Duration::from_secs(5);
/// See [`PULL_EXPIRES`].
const PULL_HEARTBEAT: Duration = Duration::from_secs(1);

/// Of the timers in hand ([`names::TIMERS_IN_HAND`]), those being checked and published at once: they
/// are independent (one id each, the sent-mark settles races), and handling
/// them one by one let a queue build when many fall due together; but after
/// downtime every overdue timer fires together, and that must not become a
/// thousand reads and publishes at once.
const SEND_CONCURRENCY: usize = 128;

/// Feeds every message of a durable consumer to `handle`, with at most
/// `concurrency` of them in hand at once, until `stop` flips (the messages
/// in hand are finished first). `open` creates or binds the consumer and
/// starts pulling; it is called again whenever pulling ends or the consumer
/// was deleted, so an operator removing it, or NATS restarting, never stops
/// the loop.
async fn follow<O, OF, H, HF>(
    what: &'static str,
    stop: Stop,
    concurrency: usize,
    mut open: O,
    mut handle: H,
) where
    O: FnMut() -> OF,
    OF: std::future::Future<
            Output = Result<async_nats::jetstream::consumer::pull::Stream, async_nats::Error>,
        >,
    H: FnMut(async_nats::jetstream::Message) -> HF,
    HF: std::future::Future<Output = ()>,
{
    use async_nats::jetstream::consumer::pull::MessagesErrorKind;
    use futures::{StreamExt, stream::FuturesUnordered};
    let mut in_hand = FuturesUnordered::new();
    loop {
        let mut messages = match open().await {
            Ok(m) => m,
            Err(e) => {
                warn!(consumer = what, error = %e, "cannot pull; retrying");
                if stop.pause(RETRY_EVERY).await {
                    return;
                }
                continue;
            }
        };
        loop {
            tokio::select! {
                biased;
                () = stop.stopped() => {
                    while in_hand.next().await.is_some() {}
                    return;
                }
                Some(()) = in_hand.next(), if !in_hand.is_empty() => {}
                next = messages.next(), if in_hand.len() < concurrency => match next {
                    Some(Ok(msg)) => in_hand.push(handle(msg)),
                    Some(Err(e)) if e.kind() == MessagesErrorKind::ConsumerDeleted => {
                        warn!(consumer = what, "consumer was deleted; recreating it");
                        break;
                    }
                    // Missed heartbeats and the like: the stream recovers by itself.
                    Some(Err(e)) => tracing::debug!(consumer = what, error = %e, "consumer hiccup"),
                    None => break,
                },
            }
        }
        while in_hand.next().await.is_some() {}
    }
}

/// Reads the number of pending reminders from the timers stream.
async fn read_pending(shared: &Shared) -> Result<u64, async_nats::Error> {
    let info = shared.timers.get_info().await?;
    shared
        .stats
        .pending
        .store(info.state.messages, std::sync::atomic::Ordering::Relaxed);
    Ok(info.state.messages)
}

/// Keeps `pending` fresh for the STATS handler, which cannot wait on NATS.
async fn refresh_pending(shared: Arc<Shared>, stop: Stop) {
    loop {
        if let Err(e) = read_pending(&shared).await {
            tracing::debug!(error = %e, "cannot read the timers stream");
        }
        if stop.pause(RETRY_EVERY).await {
            return;
        }
    }
}

/// Answers `upr.notifier.status` with fresh counters.
async fn serve_status(
    shared: Arc<Shared>,
    mut endpoint: async_nats::service::endpoint::Endpoint,
    stop: Stop,
) {
    loop {
        tokio::select! {
            () = stop.stopped() => return,
            request = endpoint.next() => {
                let Some(request) = request else { return };
                let _ = read_pending(&shared).await;
                let body = serde_json::to_vec(&shared.stats.status())
                    .expect("a JSON value with string keys serializes");
                if let Err(e) = request.respond(Ok(body.into())).await {
                    warn!(error = %e, "cannot answer a status request");
                }
            }
        }
    }
}

/// Creates the reader consumer `name`, or brings an existing one to
/// [`names::reader_consumer`]'s bounds. Most fields are updated in place,
/// keeping where the reader is; `max_waiting` cannot be, so a consumer with
/// another one (from before the bounds) is replaced by one that starts after
/// the old one's ack floor: nothing acknowledged comes again, nothing
/// unacknowledged is skipped.
async fn ensure_reader_consumer(stream: &Stream, name: &str) -> Result<(), BoxError> {
    use async_nats::jetstream::consumer::{DeliverPolicy, pull};
    let wanted = names::reader_consumer(name);
    let Ok(info) = stream.consumer_info(name).await else {
        stream.create_consumer(wanted).await?;
        return Ok(());
    };
    if info.config.max_waiting == wanted.max_waiting {
        // The start is the existing one's: the server refuses to change it.
        let config = pull::Config {
            deliver_policy: info.config.deliver_policy,
            ..wanted
        };
        stream.update_consumer(config).await?;
        return Ok(());
    }
    let floor = info.ack_floor.stream_sequence;
    warn!(
        consumer = %name,
        old_max_waiting = info.config.max_waiting,
        ack_floor = floor,
        "replacing the reader consumer: its pull bounds cannot be updated in place"
    );
    stream.delete_consumer(name).await?;
    let deliver_policy = if floor == 0 {
        DeliverPolicy::All
    } else {
        DeliverPolicy::ByStartSequence {
            start_sequence: floor + 1,
        }
    };
    stream
        .create_consumer(pull::Config {
            deliver_policy,
            ..wanted
        })
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(leads: Option<&'static str>) -> impl Fn(&str) -> Option<String> {
        move |k| {
            (k == contract::env::UPR_REMINDER_LEADS)
                .then_some(leads)
                .flatten()
                .map(str::to_string)
        }
    }

    #[test]
    fn help_lists_every_setting_read_with_the_default_applied() {
        config::check_settings(services::NOTIFIER, Config::from_lookup);
    }

    #[test]
    fn leads_default_to_30d_7d_1d() {
        let c = Config::from_lookup(&lookup(None)).unwrap();
        let labels: Vec<_> = c.leads.iter().map(Lead::label).collect();
        assert_eq!(labels, ["30d", "7d", "1d"]);
    }

    #[test]
    fn a_bad_lead_list_names_the_variable() {
        let e = Config::from_lookup(&lookup(Some("30d,7x"))).unwrap_err();
        assert_eq!(e.var, contract::env::UPR_REMINDER_LEADS);
        assert!(e.to_string().starts_with("UPR_REMINDER_LEADS: "), "{e}");
    }

    #[test]
    fn reader_consumers_are_single_tokens() {
        let c = Config::from_lookup(&lookup(None)).unwrap();
        assert_eq!(c.reader_consumers, ["reader"]);
        assert_eq!(
            parse_consumer_names("reader, ngo-1,reader").unwrap(),
            ["reader", "ngo-1"]
        );
        assert!(parse_consumer_names("none").unwrap().is_empty());
        for bad in ["a.b", "a*", ">", "a b", "é"] {
            let e = parse_consumer_names(bad).unwrap_err();
            assert_eq!(e.var, contract::env::UPR_READER_CONSUMERS, "{bad}");
        }
    }

    #[test]
    fn the_server_lets_a_replica_hold_as_many_timers_as_it_takes() {
        // Fewer acks pending than timers in hand, and timers held until due
        // would stop the pulls while the hand has room.
        let consumer = names::timers_consumer();
        assert_eq!(
            usize::try_from(consumer.max_ack_pending),
            Ok(names::TIMERS_IN_HAND)
        );
        let early = std::time::Duration::try_from(upr_domain::TIMER_EARLY).unwrap();
        assert!(
            consumer.ack_wait > early * 2,
            "a held timer is not redelivered"
        );
    }
}
