//! Webhooks: every notification matching a subscription (`UPR_WEBHOOKS`,
//! [`config`]) sent to its URL in a `POST`, signed per Standard Webhooks 1.0
//! ([`sign`]).
//!
//! The guarantees, and what gives each:
//! - At least once, across gateway restarts and receiver outages: each
//!   subscription reads `UPR_NOTIFICATIONS` through its own durable
//!   consumer (`upr-gateway-webhook-<name>`), and a notification is acked
//!   only after the receiver answered 2xx. The server keeps the position,
//!   so a restarted gateway goes on where the last one stopped.
//! - In order: the consumer holds at most one notification unacked
//!   (`max_ack_pending` 1). While a receiver fails, the gateway keeps that
//!   one notification in progress (progress acks) and retries it with
//!   back-off, for as long as it is kept; letting it be redelivered
//!   instead would add nothing but a race. On shutdown it is handed back
//!   at once (nak), so the next gateway retries it without waiting.
//! - Isolation: each subscription is its own task with its own consumer,
//!   so a slow or dead receiver delays no other.
//! - A notification the stream no longer keeps (aged out, purged by an
//!   operator) is given up after a failed attempt (`Term`), so one lost
//!   notification cannot stop a subscription for ever.
//! - The same `webhook-id` (the notification's `id`) on every attempt, so
//!   a receiver can drop a second copy of one it already took.
//!
//! A subscription created for the first time starts with the notifications
//! published from then on, not the whole history.

pub mod config;
pub mod sign;

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use async_nats::jetstream::{
    self, AckKind, Message,
    consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull},
};
use futures::StreamExt;
use tokio::{sync::watch, task::JoinHandle};
use tracing::{debug, info, warn};
use upr_nats::contract::NOTIFICATIONS_STREAM;

pub use config::Subscription;

/// How long one attempt may take, connection to answer.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the server waits for an ack before it would redeliver. Well
/// above [`ATTEMPT_TIMEOUT`] and the progress interval (5 s), so the message in
/// hand is never redelivered while the gateway holds it.
pub const ACK_WAIT: Duration = Duration::from_secs(30);

/// How often a held notification is marked in progress while it waits for
/// its next attempt.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// Pause before a subscription tries NATS again (no stream yet, consumer
/// not created, connection lost).
const NATS_RETRY: Duration = Duration::from_secs(2);

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
    /// Starts one task per subscription; they end when `stop` turns true.
    ///
    /// # Errors
    /// When the HTTP client cannot be built (no TLS roots, say).
    pub fn start(
        js: &jetstream::Context,
        subscriptions: Vec<Subscription>,
        retry_max: Duration,
        stop: &watch::Receiver<bool>,
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

/// Why a subscription cannot pull yet.
enum Unready {
    /// `UPR_NOTIFICATIONS` does not exist yet (the notifier creates it).
    NoStream,
    /// Anything else, logged.
    Failed(String),
}

/// One subscription's task.
struct Delivery {
    js: jetstream::Context,
    http: reqwest::Client,
    subscription: Subscription,
    counters: Arc<Counters>,
    retry_max: Duration,
    stop: watch::Receiver<bool>,
}

/// The consumer of `subscription`: durable, one notification at a time,
/// explicit acks, never given up on (`max_deliver` unlimited).
pub fn consumer_config(subscription: &Subscription) -> pull::Config {
    let mut filters = subscription.filter_subjects();
    let (filter_subject, filter_subjects) = if filters.len() == 1 {
        (filters.remove(0), Vec::new())
    } else {
        (String::new(), filters)
    };
    pull::Config {
        durable_name: Some(subscription.consumer_name()),
        description: Some(format!(
            "UPR Tracker gateway: webhook {} to {}",
            subscription.name,
            subscription.url.host_str().unwrap_or("?")
        )),
        deliver_policy: DeliverPolicy::New,
        ack_policy: AckPolicy::Explicit,
        ack_wait: ACK_WAIT,
        max_ack_pending: 1,
        max_deliver: -1,
        filter_subject,
        filter_subjects,
        ..Default::default()
    }
}

impl Delivery {
    async fn run(self) {
        let name = self.subscription.name.clone();
        loop {
            let consumer = tokio::select! {
                c = self.consumer() => c,
                () = stopping(&self.stop) => return,
            };
            let consumer = match consumer {
                Ok(c) => c,
                Err(Unready::NoStream) => {
                    debug!(webhook = %name, "waiting for the notifier to create UPR_NOTIFICATIONS");
                    if self.pause(NATS_RETRY).await {
                        return;
                    }
                    continue;
                }
                Err(Unready::Failed(why)) => {
                    warn!(webhook = %name, error = %why, "cannot create the webhook's consumer; trying again");
                    if self.pause(NATS_RETRY).await {
                        return;
                    }
                    continue;
                }
            };
            let mut messages = match consumer.messages().await {
                Ok(m) => m,
                Err(e) => {
                    debug!(webhook = %name, error = %e, "cannot pull; trying again");
                    if self.pause(NATS_RETRY).await {
                        return;
                    }
                    continue;
                }
            };
            info!(webhook = %name, url = %self.subscription.url, "webhook delivering");
            loop {
                let next = tokio::select! {
                    n = messages.next() => n,
                    () = stopping(&self.stop) => return,
                };
                match next {
                    Some(Ok(message)) => {
                        if !self.deliver(&message).await {
                            return;
                        }
                    }
                    Some(Err(e)) => {
                        debug!(webhook = %name, error = %e, "pull interrupted; starting it again");
                        break;
                    }
                    None => break,
                }
            }
        }
    }

    /// Creates the consumer, or updates it when the file's filters changed
    /// (its position stays).
    async fn consumer(&self) -> Result<PullConsumer, Unready> {
        let stream = self
            .js
            .get_stream(NOTIFICATIONS_STREAM)
            .await
            .map_err(|e| {
                if crate::events::stream_missing(&e.kind()) {
                    Unready::NoStream
                } else {
                    Unready::Failed(e.to_string())
                }
            })?;
        stream
            .create_consumer(consumer_config(&self.subscription))
            .await
            .map_err(|e| Unready::Failed(e.to_string()))
    }

    /// Whether the stream still keeps the message at `seq` (an error to
    /// ask counts as kept: only a clear "not found" gives up on it).
    async fn still_kept(&self, seq: u64) -> bool {
        let Ok(stream) = self.js.get_stream(NOTIFICATIONS_STREAM).await else {
            return true;
        };
        !matches!(
            stream.direct_get(seq).await,
            Err(e) if e.kind() == async_nats::jetstream::stream::DirectGetErrorKind::NotFound
        )
    }

    /// Sleeps `pause`; true when the gateway is stopping.
    async fn pause(&self, pause: Duration) -> bool {
        tokio::select! {
            () = tokio::time::sleep(pause) => false,
            () = stopping(&self.stop) => true,
        }
    }

    /// Delivers `message` until the receiver takes it; false when the
    /// gateway is stopping (the message is then handed back).
    async fn deliver(&self, message: &Message) -> bool {
        let name = self.subscription.name.clone();
        let id = notification_id(message);
        let mut failures = 0u32;
        loop {
            let _ = message.ack_with(AckKind::Progress).await;
            let attempt = tokio::select! {
                a = self.attempt(&id, &message.payload) => a,
                () = stopping(&self.stop) => {
                    let _ = message.ack_with(AckKind::Nak(None)).await;
                    return false;
                }
            };
            match attempt {
                Ok(()) => {
                    // Confirmed by the server, so the next notification is
                    // not taken before this one is recorded as done.
                    if let Err(e) = message.double_ack().await {
                        warn!(webhook = %name, %id, error = %e, "delivered but the ack was not confirmed; it may be delivered again");
                    }
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
                    let seq = message.info().map_or(0, |i| i.stream_sequence);
                    if !self.still_kept(seq).await {
                        warn!(webhook = %name, %id, "no longer kept by UPR_NOTIFICATIONS; giving up on it");
                        let _ = message.ack_with(AckKind::Term).await;
                        return true;
                    }
                    if self.hold(message, wait).await {
                        let _ = message.ack_with(AckKind::Nak(None)).await;
                        return false;
                    }
                }
            }
        }
    }

    /// Waits `wait` while keeping `message` in progress; true when the
    /// gateway is stopping.
    async fn hold(&self, message: &Message, wait: Duration) -> bool {
        let until = tokio::time::Instant::now() + wait;
        loop {
            let left = until.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return false;
            }
            if self.pause(left.min(PROGRESS_EVERY)).await {
                return true;
            }
            let _ = message.ack_with(AckKind::Progress).await;
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

/// Resolves when the gateway is stopping; borrows nothing, so it can race
/// a call on the delivery itself.
fn stopping(stop: &watch::Receiver<bool>) -> impl Future<Output = ()> + use<> {
    let mut stop = stop.clone();
    async move {
        let _ = stop.wait_for(|s| *s).await;
    }
}

/// The notification's `id` (also its `Nats-Msg-Id`); for a message
/// without one, its place in the stream, which is just as stable.
fn notification_id(message: &Message) -> String {
    #[derive(serde::Deserialize)]
    struct Head {
        id: String,
    }
    if let Ok(head) = serde_json::from_slice::<Head>(&message.payload) {
        return head.id;
    }
    if let Some(id) = message
        .headers
        .as_ref()
        .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
    {
        return id.to_string();
    }
    let seq = message.info().map_or(0, |i| i.stream_sequence);
    format!("{NOTIFICATIONS_STREAM}.{seq}")
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
    fn one_filter_goes_in_filter_subject_several_in_filter_subjects() {
        let text = r#"[{"name": "a", "url": "http://h/", "secret_file": "s"},
                       {"name": "b", "url": "http://h/", "secret_file": "s", "countries": ["KZ", "CH"]}]"#;
        let subs = config::parse(text, std::path::Path::new("."), &|_| {
            Ok("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into())
        })
        .unwrap();
        let a = consumer_config(&subs[0]);
        assert_eq!(
            (a.filter_subject.as_str(), a.filter_subjects.len()),
            ("upr.notify.>", 0)
        );
        assert_eq!(a.durable_name.as_deref(), Some("upr-gateway-webhook-a"));
        assert_eq!((a.max_ack_pending, a.max_deliver), (1, -1));
        let b = consumer_config(&subs[1]);
        assert_eq!(b.filter_subject, "");
        assert_eq!(b.filter_subjects, ["upr.notify.*.KZ", "upr.notify.*.CH"]);
    }
}
