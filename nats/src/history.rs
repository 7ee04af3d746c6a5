//! Reading one review's history back from the event log: the messages on
//! `upr.events.<COUNTRY>.<session>.>` ([`subjects::review_events`]), in log
//! order, with direct gets (no consumer, and a review with no events yet
//! answers at once).
//!
//! Two forms, one rule for what counts as an event ([`event_of`]):
//! - [`Events`]: event by event through a [`Stream`] handle, for the
//!   projection (a retraction's history) and the notifier (an earlier event
//!   its planner has not applied yet), which read a few events rarely.
//! - [`BatchReader`]: up to [`BATCH`] messages per request on one inbox
//!   per reader, with a deadline, for ingest, which reads a review before
//!   every append it did not have cached.

use async_nats::{
    Client, HeaderMap, Subscriber,
    connection::State,
    jetstream::stream::{DirectGetError, DirectGetErrorKind, Stream},
};
use bytes::Bytes;
use futures::StreamExt;
use tokio::time::{Instant, timeout_at};
use upr_domain::{Envelope, ReviewKey};
use uuid::Uuid;

use crate::{
    contract::{self, subjects},
    service::BoxError,
};

/// The envelope when a message of the log on `subject` is an event of the
/// review `key` ([`subjects::decode_stored`], the rule every consumer of the
/// log applies); `None` for anything written around ingest, which every
/// reader skips.
pub fn event_of(key: ReviewKey, subject: &str, payload: &[u8]) -> Option<Envelope> {
    subjects::decode_stored(subject, payload)
        .ok()
        .filter(|event| event.review_key() == key)
}

/// A review's events from one sequence up to (not including) another,
/// one direct get each.
#[derive(Debug)]
pub struct Events<'s> {
    stream: &'s Stream,
    key: ReviewKey,
    filter: String,
    next: u64,
    before: u64,
}

impl<'s> Events<'s> {
    /// The events of `key` in `stream` with sequences from `from` up to
    /// `before` (exclusive).
    pub fn between(stream: &'s Stream, key: ReviewKey, from: u64, before: u64) -> Self {
        Self {
            stream,
            key,
            filter: subjects::review_events(key),
            next: from,
            before,
        }
    }

    /// The next event and its sequence, skipping messages that are not
    /// events; `None` past the range.
    ///
    /// # Errors
    /// When JetStream does not answer.
    pub async fn next(&mut self) -> Result<Option<(u64, Envelope)>, DirectGetError> {
        while self.next < self.before {
            let message = match self
                .stream
                .direct_get_next_for_subject(self.filter.as_str(), Some(self.next))
                .await
            {
                Ok(m) => m,
                Err(e) if e.kind() == DirectGetErrorKind::NotFound => break,
                Err(e) => return Err(e),
            };
            if message.sequence >= self.before {
                break;
            }
            self.next = message.sequence + 1;
            if let Some(event) = event_of(self.key, message.subject.as_str(), &message.payload) {
                return Ok(Some((message.sequence, event)));
            }
        }
        self.next = self.before;
        Ok(None)
    }

    /// Every remaining event of the range.
    ///
    /// # Errors
    /// When JetStream does not answer.
    pub async fn collect(mut self) -> Result<Vec<(u64, Envelope)>, DirectGetError> {
        let mut out = Vec::new();
        while let Some(event) = self.next().await? {
            out.push(event);
        }
        Ok(out)
    }
}

/// One message of a review's history as [`BatchReader`] reads it: even one
/// that is no event takes its place in the sequence.
#[derive(Debug)]
pub struct Stored {
    /// Its stream sequence.
    pub seq: u64,
    /// Its `Nats-Msg-Id`, when that is a UUID.
    pub id: Option<Uuid>,
    /// The event, when it is one ([`event_of`]).
    pub event: Option<Envelope>,
}

/// Why a batched read did not complete.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// JetStream did not answer, or not in time, or answered with a status
    /// that says it cannot serve the request.
    #[error("{0}")]
    Unavailable(String),
    /// The client failed while `doing` something.
    #[error("{doing}: {source}")]
    Client {
        /// What the reader was doing, e.g. `reading review KZ.48`.
        doing: String,
        /// The client's error.
        source: BoxError,
    },
}

/// Messages one batched direct get asks for.
pub const BATCH: usize = 256;

/// Where one reader's batches arrive: one subscription for its life
/// (`<inbox>.*`), each batch on its own last token, so a batch costs one
/// request instead of a subscribe, a request and an unsubscribe, and late
/// messages of an abandoned batch are told apart and skipped.
#[derive(Debug)]
pub struct Inbox {
    prefix: String,
    subscription: Option<Subscriber>,
    batch: u64,
}

impl Inbox {
    /// An inbox on `client`'s connection, subscribed on first use.
    pub fn new(client: &Client) -> Self {
        Self {
            prefix: client.new_inbox(),
            subscription: None,
            batch: 0,
        }
    }
}

/// `Ok` while `client` is connected; otherwise why not, for a caller that
/// must not let the client queue a request until it reconnects.
///
/// # Errors
/// `NATS connection is <state>`.
pub fn connected(client: &Client) -> Result<(), String> {
    match client.connection_state() {
        State::Connected => Ok(()),
        state => Err(format!("NATS connection is {state}")),
    }
}

/// Reads histories with batched direct gets on a stream's API subject.
#[derive(Debug, Clone)]
pub struct BatchReader {
    client: Client,
    direct_get: String,
}

impl BatchReader {
    /// A reader of `stream` over `client`.
    pub fn new(client: Client, stream: &str) -> Self {
        Self {
            client,
            direct_get: contract::ingest::direct_get(stream),
        }
    }

    /// Hands `sink` every message of the review's history from sequence
    /// `from` on, in order, in batches of [`BATCH`] until one comes back
    /// short.
    ///
    /// # Errors
    /// [`HistoryError::Unavailable`] when JetStream does not answer by
    /// `deadline`; `sink` may then have taken part of the history, which is
    /// still a true prefix of it.
    pub async fn read(
        &self,
        inbox: &mut Inbox,
        key: ReviewKey,
        from: u64,
        deadline: Instant,
        mut sink: impl FnMut(Stored),
    ) -> Result<(), HistoryError> {
        let filter = subjects::review_events(key);
        let mut from = from;
        loop {
            let (count, last) = self
                .batch(inbox, key, &filter, from, deadline, &mut sink)
                .await?;
            if count < BATCH {
                return Ok(());
            }
            from = last + 1;
        }
    }

    /// One batch from `from`: returns how many messages came and the last seq.
    async fn batch(
        &self,
        inbox: &mut Inbox,
        key: ReviewKey,
        filter: &str,
        from: u64,
        deadline: Instant,
        sink: &mut impl FnMut(Stored),
    ) -> Result<(usize, u64), HistoryError> {
        connected(&self.client).map_err(HistoryError::Unavailable)?;
        let unavailable =
            |what: &str| HistoryError::Unavailable(format!("reading review {key}: {what}"));
        let failed = |source: BoxError| HistoryError::Client {
            doing: format!("reading review {key}"),
            source,
        };
        let replies = match &mut inbox.subscription {
            Some(subscription) => subscription,
            empty => empty.insert(
                self.client
                    .subscribe(format!("{}.*", inbox.prefix))
                    .await
                    .map_err(|e| failed(e.into()))?,
            ),
        };
        inbox.batch += 1;
        let reply = format!("{}.{}", inbox.prefix, inbox.batch);
        let request = serde_json::json!({"seq": from, "next_by_subj": filter, "batch": BATCH});
        self.client
            .publish_with_reply(
                self.direct_get.clone(),
                reply.clone(),
                Bytes::from(request.to_string()),
            )
            .await
            .map_err(|e| failed(e.into()))?;
        let mut count = 0;
        let mut last = from.saturating_sub(1);
        loop {
            let message = match timeout_at(deadline, replies.next()).await {
                Err(_) => return Err(unavailable("no answer in time")),
                Ok(None) => {
                    inbox.subscription = None;
                    return Err(unavailable("connection closed"));
                }
                Ok(Some(m)) if m.subject.as_str() != reply => continue,
                Ok(Some(m)) => m,
            };
            match message.status.map(|s| s.as_u16()) {
                // 204: end of batch; 404: nothing (more) on these subjects.
                Some(204 | 404) => return Ok((count, last)),
                Some(503) => return Err(unavailable("no responders for the event stream")),
                Some(code) => {
                    let what = format!("status {code} {}", message.description.unwrap_or_default());
                    return Err(unavailable(&what));
                }
                None => {}
            }
            let headers = message.headers.unwrap_or_default();
            let Some(seq) = header(&headers, "Nats-Sequence").and_then(|s| s.parse().ok()) else {
                return Err(unavailable("a history message without Nats-Sequence"));
            };
            let subject = header(&headers, "Nats-Subject").unwrap_or_default();
            sink(Stored {
                seq,
                id: header(&headers, "Nats-Msg-Id").and_then(|s| Uuid::try_parse(s).ok()),
                event: event_of(key, subject, &message.payload),
            });
            count += 1;
            last = seq;
        }
    }
}

fn header<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).map(async_nats::HeaderValue::as_str)
}
