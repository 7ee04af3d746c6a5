//! Webhooks: every notification matching a subscription (`UPR_WEBHOOKS`,
//! [`config`]) sent to its URL in a `POST`, signed per Standard Webhooks 1.0
//! ([`sign`]).
//!
//! The guarantees, and what gives each:
//! - At least once, across gateway restarts and receiver outages: each
//!   subscription reads `UPR_NOTIFICATIONS` in sequence order with direct
//!   gets, and its position (the last sequence handled) is written to the
//!   gateway's bucket (`upr_gateway`, key `webhook.<name>`) only after the
//!   receiver answered 2xx, so a restarted gateway goes on where the last
//!   one stopped.
//! - In order: one notification at a time per subscription. While a
//!   receiver fails, the gateway retries that one notification with
//!   back-off; the next waits behind it.
//! - Isolation: each subscription is its own task with its own position,
//!   so a slow or dead receiver delays no other.
//! - A notification the stream no longer keeps (aged out, purged by an
//!   operator) is given up after a failed attempt, so one lost
//!   notification cannot stop a subscription for ever.
//! - The same `webhook-id` (the notification's `id`) on every attempt, so
//!   a receiver can drop a second copy of one it already took.
//!
//! Why no consumer: the gateway's NATS user may create none (a consumer's
//! creator chooses its configuration, a push consumer's deliver subject
//! included; docs/security.md), and a durable consumer made by another
//! service would have to be configured from this file in two places. A
//! position in a bucket the notifier creates is all the state a
//! subscription needs; the live feed ([`crate::events::Hub::newest`])
//! says when there is something new to read.
//!
//! Run one gateway with a given subscription file: two would each deliver
//! every notification (a receiver that drops repeated `webhook-id`s sees
//! each once).
//!
//! A subscription seen for the first time starts with the notifications
//! published from then on, not the whole history; one that an earlier
//! version delivered through a durable consumer
//! (`upr-gateway-webhook-<name>`) resumes after that consumer's ack floor.

pub mod config;
pub mod sign;

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use async_nats::jetstream::{self, kv, message::StreamMessage, stream::DirectGetErrorKind};
use tokio::{sync::watch, task::JoinHandle};
use tracing::{debug, info, warn};
use upr_nats::{
    contract::{
        NOTIFICATIONS_STREAM,
        gateway::{STATE_BUCKET, webhook_position_key},
        subjects,
    },
    stop::Stop,
};

use crate::events::Reader;

pub use config::Subscription;

/// How long one attempt may take, connection to answer.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// Pause before a subscription tries NATS again (no stream or bucket yet,
/// connection lost).
const NATS_RETRY: Duration = Duration::from_secs(2);

/// How long a subscription that has read everything waits for the live
/// feed's word before it looks at the stream itself.
const POLL_IDLE: Duration = Duration::from_secs(5);

/// The counters of one subscription, for `/metrics`.
#[derive(Debug, Default)]
pub struct Counters {
    /// The subscription's name.
    pub name: String,
    delivered: AtomicU64,
    failed_attempts: AtomicU64,
}

impl Counters {
    /// Notifications the receiver accepted (2xx) and that were acked.
    pub fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }

    /// Attempts that failed: a non-2xx answer, a timeout, no connection.
    pub fn failed_attempts(&self) -> u64 {
        self.failed_attempts.load(Ordering::Relaxed)
    }
}

/// Every subscription's counters, in the file's order. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Metrics(Arc<Vec<Arc<Counters>>>);

impl Metrics {
    /// One entry per subscription.
    pub fn subscriptions(&self) -> &[Arc<Counters>] {
        &self.0
    }
}

/// The running deliveries.
pub struct Webhooks {
    metrics: Metrics,
    tasks: Vec<JoinHandle<()>>,
}

impl Webhooks {
    /// Starts one task per subscription; they end when `stop` fires.
    ///
    /// # Errors
    /// When the HTTP client cannot be built (no TLS roots, say).
    pub fn start(
        js: &jetstream::Context,
        subscriptions: Vec<Subscription>,
        retry_max: Duration,
        newest: &watch::Receiver<u64>,
        stop: &Stop,
    ) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(ATTEMPT_TIMEOUT)
            .connect_timeout(ATTEMPT_TIMEOUT / 2)
            // A redirect would turn the POST into a GET or send the body
            // somewhere the operator did not name.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("upr-gateway/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let mut all = Vec::new();
        let mut tasks = Vec::new();
        for subscription in subscriptions {
            let counters = Arc::new(Counters {
                name: subscription.name.clone(),
                ..Counters::default()
            });
            all.push(counters.clone());
            let delivery = Delivery {
                js: js.clone(),
                http: http.clone(),
                subscription,
                counters,
                retry_max,
                newest: newest.clone(),
                stop: stop.clone(),
            };
            tasks.push(tokio::spawn(delivery.run()));
        }
        Ok(Self {
            metrics: Metrics(Arc::new(all)),
            tasks,
        })
    }

    /// The counters, for `/metrics`.
    pub fn metrics(&self) -> Metrics {
        self.metrics.clone()
    }

    /// Waits for every task to end (after `stop` turned true).
    pub async fn join(self) {
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// One subscription's task.
struct Delivery {
    js: jetstream::Context,
    http: reqwest::Client,
    subscription: Subscription,
    counters: Arc<Counters>,
    retry_max: Duration,
    /// The newest sequence the live feed has seen.
    newest: watch::Receiver<u64>,
    stop: Stop,
}

/// Where a subscription is: its bucket and the last sequence handled.
struct Position {
    kv: kv::Store,
    at: u64,
    /// The value last written to the bucket.
    stored: u64,
}

impl Delivery {
    async fn run(mut self) {
        let name = self.subscription.name.clone();
        let mut told = false;
        let mut position = loop {
            let started = tokio::select! {
                p = self.position() => p,
                () = self.stop.stopped() => return,
            };
            match started {
                Ok(p) => break p,
                Err(why) => {
                    // Said once where an operator sees it (a notifier older
                    // than the bucket, say), then only in debug.
                    if told {
                        debug!(webhook = %name, error = %why, "cannot read the webhook's position yet; trying again");
                    } else {
                        warn!(webhook = %name, error = %why, "cannot read the webhook's position yet; trying again");
                        told = true;
                    }
                    if self.stop.pause(NATS_RETRY).await {
                        return;
                    }
                }
            }
        };
        info!(webhook = %name, url = %self.subscription.url, after = position.at, "webhook delivering");
        let filters = self.subscription.filter_subjects();
        // One filter is asked of the server; several are checked here.
        let filter = match filters.as_slice() {
            [one] => one.clone(),
            _ => subjects::NOTIFY_ALL.to_owned(),
        };
        let mut reader = Reader::with_filter(&self.js, filter);
        loop {
            // What the feed has seen so far is looked at by this read: only
            // something newer is news afterwards (with a filter, the feed's
            // newest may be one this subscription never matches).
            self.newest.borrow_and_update();
            let next = tokio::select! {
                n = reader.next_from(position.at + 1) => n,
                () = self.stop.stopped() => return,
            };
            match next {
                Ok(Some(message)) => {
                    let wanted = self.subscription.matches(&message.subject);
                    if wanted && !self.deliver(&message).await {
                        return;
                    }
                    position.at = message.sequence;
                    // A delivery is recorded at once; what was passed over
                    // (several filters, checked here) once caught up.
                    if wanted {
                        self.store(&mut position).await;
                    }
                }
                Ok(None) => {
                    if position.at > position.stored {
                        self.store(&mut position).await;
                    }
                    if self.wait_for_news().await {
                        return;
                    }
                }
                Err(e) => {
                    debug!(webhook = %name, error = %e.into_text(), "cannot read the notifications; trying again");
                    if self.stop.pause(NATS_RETRY).await {
                        return;
                    }
                }
            }
        }
    }

    /// The subscription's position from the bucket; the first time, the
    /// stream's end (or an earlier version's consumer's ack floor), written
    /// at once so that what is published while this gateway is down later
    /// is not skipped.
    async fn position(&self) -> Result<Position, String> {
        let kv = self
            .js
            .get_key_value(STATE_BUCKET)
            .await
            .map_err(|e| format!("the bucket {STATE_BUCKET} (the notifier creates it): {e}"))?;
        let key = webhook_position_key(&self.subscription.name);
        if let Some(value) = kv.get(&key).await.map_err(|e| e.to_string())? {
            let at = std::str::from_utf8(&value)
                .ok()
                .and_then(|t| t.trim().parse::<u64>().ok())
                .ok_or_else(|| format!("{STATE_BUCKET} {key} holds {value:?}, not a sequence"))?;
            return Ok(Position { kv, at, stored: at });
        }
        let mut stream = self
            .js
            .get_stream(NOTIFICATIONS_STREAM)
            .await
            .map_err(|e| format!("{NOTIFICATIONS_STREAM} (the notifier creates it): {e}"))?;
        let at = match stream
            .consumer_info(self.subscription.consumer_name())
            .await
        {
            Ok(earlier) => {
                info!(
                    webhook = %self.subscription.name,
                    consumer = %earlier.name,
                    "resuming where the earlier durable consumer got to; an operator may delete it"
                );
                earlier.ack_floor.stream_sequence
            }
            Err(_) => {
                stream
                    .info()
                    .await
                    .map_err(|e| e.to_string())?
                    .state
                    .last_sequence
            }
        };
        kv.put(&key, at.to_string().into())
            .await
            .map_err(|e| e.to_string())?;
        Ok(Position { kv, at, stored: at })
    }

    /// Writes the position; a failure is logged and the write tried again
    /// with the next one (until then a restart would deliver again, which
    /// at least once allows).
    async fn store(&self, position: &mut Position) {
        let key = webhook_position_key(&self.subscription.name);
        match position.kv.put(&key, position.at.to_string().into()).await {
            Ok(_) => position.stored = position.at,
            Err(e) => {
                warn!(webhook = %self.subscription.name, error = %e, "cannot write the webhook's position; trying again with the next");
            }
        }
    }

    /// Waits until the live feed has read something it had not when this
    /// subscription last looked, or [`POLL_IDLE`] (a lagging replica may
    /// have answered the last look); true when the gateway is stopping.
    async fn wait_for_news(&mut self) -> bool {
        let feed_gone = tokio::select! {
            changed = self.newest.changed() => changed.is_err(),
            () = tokio::time::sleep(POLL_IDLE) => false,
            () = self.stop.stopped() => return true,
        };
        // Without the feed (it ends only when the gateway stops), poll.
        feed_gone && self.stop.pause(POLL_IDLE).await
    }

    /// Whether the stream still keeps the message at `seq` (an error to
    /// ask counts as kept: only a clear "not found" gives up on it).
    async fn still_kept(&self, seq: u64) -> bool {
        let Ok(stream) = self.js.get_stream(NOTIFICATIONS_STREAM).await else {
            return true;
        };
        !matches!(
            stream.direct_get(seq).await,
            Err(e) if e.kind() == DirectGetErrorKind::NotFound
        )
    }

    /// Delivers `message` until the receiver takes it (or the stream no
    /// longer keeps it); false when the gateway is stopping, which leaves
    /// it to the next gateway.
    async fn deliver(&self, message: &StreamMessage) -> bool {
        let name = self.subscription.name.clone();
        let id = notification_id(message);
        let mut failures = 0u32;
        loop {
            let attempt = tokio::select! {
                a = self.attempt(&id, &message.payload) => a,
                () = self.stop.stopped() => return false,
            };
            match attempt {
                Ok(()) => {
                    self.counters.delivered.fetch_add(1, Ordering::Relaxed);
                    debug!(webhook = %name, %id, "delivered");
                    return true;
                }
                Err(why) => {
                    self.counters
                        .failed_attempts
                        .fetch_add(1, Ordering::Relaxed);
                    failures = failures.saturating_add(1);
                    let wait = sign::backoff(failures, self.retry_max);
                    warn!(webhook = %name, %id, error = %why, retry_in = ?wait, "webhook attempt failed");
                    if !self.still_kept(message.sequence).await {
                        warn!(webhook = %name, %id, "no longer kept by UPR_NOTIFICATIONS; giving up on it");
                        return true;
                    }
                    if self.stop.pause(wait).await {
                        return false;
                    }
                }
            }
        }
    }

    /// One POST; `Ok` on a 2xx answer.
    async fn attempt(&self, id: &str, body: &bytes::Bytes) -> Result<(), String> {
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let signature = sign::signature(&self.subscription.key, id, timestamp, body);
        let response = self
            .http
            .post(self.subscription.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("webhook-id", id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body.clone())
            .send()
            .await
            .map_err(|e| error_chain(&e))?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("the receiver answered {status}"))
        }
    }
}

/// The notification's `id` (also its `Nats-Msg-Id`); for a message
/// without one, its place in the stream, which is just as stable.
fn notification_id(message: &StreamMessage) -> String {
    #[derive(serde::Deserialize)]
    struct Head {
        id: String,
    }
    if let Ok(head) = serde_json::from_slice::<Head>(&message.payload) {
        return head.id;
    }
    if let Some(id) = message.headers.get(async_nats::header::NATS_MESSAGE_ID) {
        return id.to_string();
    }
    format!("{NOTIFICATIONS_STREAM}.{}", message.sequence)
}

/// An error with its causes ("connection refused" is a cause of
/// reqwest's "error sending request").
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_subscription_matches_the_subjects_of_its_kinds_and_countries() {
        let text = r#"[{"name": "a", "url": "http://h/", "secret_file": "s"},
                       {"name": "b", "url": "http://h/", "secret_file": "s", "countries": ["KZ", "CH"]},
                       {"name": "c", "url": "http://h/", "secret_file": "s", "kinds": ["reminder"], "countries": ["KZ"]}]"#;
        let subs = config::parse(text, std::path::Path::new("."), &|_| {
            Ok("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into())
        })
        .unwrap();
        for (sub, subject, wanted) in [
            (0, "upr.notify.reminder.KZ", true),
            (0, "upr.notify.cancelled.FR", true),
            (1, "upr.notify.cancelled.CH", true),
            (1, "upr.notify.cancelled.FR", false),
            (2, "upr.notify.reminder.KZ", true),
            (2, "upr.notify.rescheduled.KZ", false),
            (2, "upr.notify.reminder.CH", false),
            (0, "upr.notify.reminder", false),
            (0, "upr.events.KZ.48.review_held", false),
        ] {
            assert_eq!(
                subs[sub].matches(subject),
                wanted,
                "{} {subject}",
                subs[sub].name
            );
        }
    }
}
