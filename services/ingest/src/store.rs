//! The event log as ingest uses it: read one review's history, append one
//! event under an expected last sequence. JetStream details stay here.

use std::time::Duration;

use async_nats::{
    Client, HeaderMap, Subscriber,
    connection::State,
    jetstream::{self, context::PublishErrorKind, message::PublishMessage, publish::PublishAck},
};
use bytes::Bytes;
use futures::StreamExt;
use tokio::time::{Instant, timeout_at};
use upr_domain::{Envelope, Review, ReviewKey};
use upr_nats::{
    contract::{self, subjects},
    service::BoxError,
};
use uuid::Uuid;

/// How many history messages one direct-get batch asks for.
const HISTORY_BATCH: usize = 256;

/// Why an operation on the log did not complete. Every variant but
/// `Conflict` means the log could not be used now: for an append, "not
/// confirmed", and the event id makes a retry safe.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another writer appended to the review since it was read.
    #[error("the review changed since it was read")]
    Conflict,
    /// JetStream did not answer, or not in time, or answered with a status
    /// that says it cannot serve the request.
    #[error("{0}")]
    Unavailable(String),
    /// The client failed while `doing` something.
    #[error("{doing}: {source}")]
    Client {
        /// What ingest was doing, e.g. `reading review KZ.48`.
        doing: String,
        /// The client's error.
        source: BoxError,
    },
    /// JetStream refused the append for another reason than a conflict.
    #[error(transparent)]
    Publish(jetstream::context::PublishError),
}

/// Reads and appends to `UPR_EVENTS`.
#[derive(Debug, Clone)]
pub struct EventLog {
    client: Client,
    js: jetstream::Context,
    direct_get: String,
    leader_get: String,
}

/// Where one reader's history batches arrive: one subscription for its
/// life (`<inbox>.*`), each batch on its own last token, so a batch costs
/// one request instead of a subscribe, a request and an unsubscribe, and
/// late messages of an abandoned batch are told apart and skipped.
#[derive(Debug)]
pub struct HistoryInbox {
    prefix: String,
    subscription: Option<Subscriber>,
    batch: u64,
}

impl HistoryInbox {
    /// An inbox on `log`'s connection, subscribed on first use.
    pub fn new(log: &EventLog) -> Self {
        Self {
            prefix: log.client.new_inbox(),
            subscription: None,
            batch: 0,
        }
    }
}

impl EventLog {
    /// An adapter over `js`, whose timeout bounds every publish acknowledgement.
    pub fn new(client: Client, js: jetstream::Context) -> Self {
        Self {
            client,
            js,
            direct_get: contract::ingest::direct_get(contract::EVENTS_STREAM),
            leader_get: contract::ingest::leader_get(contract::EVENTS_STREAM),
        }
    }

    fn connected(&self) -> Result<(), StoreError> {
        match self.client.connection_state() {
            State::Connected => Ok(()),
            state => Err(StoreError::Unavailable(format!(
                "NATS connection is {state}"
            ))),
        }
    }

    /// Reads the review's whole history (`upr.events.<C>.<S>.>`) with batched
    /// direct gets, which need no consumer and answer 404 at once for a review
    /// that has no events yet.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when JetStream does not answer by `deadline`.
    pub async fn load(
        &self,
        inbox: &mut HistoryInbox,
        key: ReviewKey,
        deadline: Instant,
    ) -> Result<Review, StoreError> {
        let mut log = Review::default();
        self.catch_up(inbox, key, &mut log, deadline).await?;
        Ok(log)
    }

    /// Whether the review has nothing after `last_seq`, asked of the stream's
    /// leader: a refusal is final only when decided on state known to be
    /// current, and on a cluster a direct get may come from a replica that
    /// has not yet stored the latest events.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the leader does not answer by `deadline`.
    pub async fn is_current(
        &self,
        key: ReviewKey,
        last_seq: u64,
        deadline: Instant,
    ) -> Result<bool, StoreError> {
        self.connected()?;
        let unavailable =
            |what: &str| StoreError::Unavailable(format!("confirming review {key}: {what}"));
        let filter = subjects::review_events(key);
        let request = serde_json::json!({"seq": last_seq + 1, "next_by_subj": filter});
        let answer = timeout_at(
            deadline,
            self.client
                .request(self.leader_get.clone(), Bytes::from(request.to_string())),
        )
        .await
        .map_err(|_| unavailable("no answer in time"))?
        .map_err(|e| StoreError::Client {
            doing: format!("confirming review {key}"),
            source: e.into(),
        })?;
        let answer: serde_json::Value =
            serde_json::from_slice(&answer.payload).map_err(|e| StoreError::Client {
                doing: format!("confirming review {key}: unreadable answer"),
                source: e.into(),
            })?;
        if answer.get("message").is_some() {
            return Ok(false);
        }
        match answer["error"]["code"].as_u64() {
            Some(404) => Ok(true),
            _ => Err(unavailable(&answer["error"].to_string())),
        }
    }

    /// Folds into `log` what the review's history holds after its last
    /// sequence: a stale cached state costs one read of what it missed
    /// (usually one event another replica appended), not the whole history.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when JetStream does not answer by
    /// `deadline`; `log` may then have taken part of what it missed, which
    /// is still a true prefix of the history.
    pub async fn catch_up(
        &self,
        inbox: &mut HistoryInbox,
        key: ReviewKey,
        log: &mut Review,
        deadline: Instant,
    ) -> Result<(), StoreError> {
        let filter = subjects::review_events(key);
        let mut from = log.last_seq() + 1;
        loop {
            let (count, last) = self
                .load_batch(inbox, key, &filter, from, deadline, log)
                .await?;
            if count < HISTORY_BATCH {
                return Ok(());
            }
            from = last + 1;
        }
    }

    /// One batch from `from`: returns how many messages came and the last seq.
    async fn load_batch(
        &self,
        inbox: &mut HistoryInbox,
        key: ReviewKey,
        filter: &str,
        from: u64,
        deadline: Instant,
        log: &mut Review,
    ) -> Result<(usize, u64), StoreError> {
        self.connected()?;
        let unavailable =
            |what: &str| StoreError::Unavailable(format!("reading review {key}: {what}"));
        let failed = |source: BoxError| StoreError::Client {
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
        let request =
            serde_json::json!({"seq": from, "next_by_subj": filter, "batch": HISTORY_BATCH});
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
            let id = header(&headers, "Nats-Msg-Id").and_then(|s| Uuid::try_parse(s).ok());
            log.apply(
                seq,
                id,
                valid_event(key, subject, &message.payload).as_ref(),
            );
            count += 1;
            last = seq;
        }
    }

    /// Appends `envelope` on `subject` with `Nats-Msg-Id: id`, accepted by the
    /// server only if the review's last sequence is still `expected_last_seq`.
    ///
    /// Nothing is sent while the connection is down: the client would queue
    /// the publish and deliver it after reconnecting, long after the caller
    /// was told `unavailable`.
    ///
    /// # Errors
    /// [`StoreError::Conflict`] when the review moved on;
    /// [`StoreError::Unavailable`] when JetStream refused or did not answer by `deadline`.
    pub async fn append(
        &self,
        key: ReviewKey,
        subject: &str,
        id: Uuid,
        envelope: Bytes,
        expected_last_seq: u64,
        deadline: Instant,
    ) -> Result<PublishAck, StoreError> {
        self.connected()?;
        let message = PublishMessage::build()
            .payload(envelope)
            .message_id(id.to_string())
            .expected_last_subject_sequence(expected_last_seq)
            .header(
                contract::ingest::EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT,
                subjects::review_events(key).as_str(),
            );
        let timed_out =
            || StoreError::Unavailable("the event stream did not acknowledge in time".into());
        let ack = timeout_at(deadline, self.js.send_publish(subject.to_owned(), message))
            .await
            .map_err(|_| timed_out())?
            .map_err(publish_error)?;
        timeout_at(deadline, ack)
            .await
            .map_err(|_| timed_out())?
            .map_err(publish_error)
    }

    /// Publishes a rejection record on `upr.rejected` (kept by `UPR_REJECTED`)
    /// and returns the acknowledgement to await.
    ///
    /// # Errors
    /// When the publish cannot even be sent.
    pub async fn publish_rejection(
        &self,
        payload: Bytes,
    ) -> Result<jetstream::context::PublishAckFuture, jetstream::context::PublishError> {
        self.js.publish(subjects::REJECTED, payload).await
    }
}

fn publish_error(e: jetstream::context::PublishError) -> StoreError {
    match e.kind() {
        PublishErrorKind::WrongLastSequence => StoreError::Conflict,
        PublishErrorKind::StreamNotFound => {
            StoreError::Unavailable("no responders for the event stream".into())
        }
        PublishErrorKind::TimedOut => {
            StoreError::Unavailable("the event stream did not acknowledge in time".into())
        }
        _ => StoreError::Publish(e),
    }
}

fn header<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).map(async_nats::HeaderValue::as_str)
}

/// The envelope when `payload` is an event of this review
/// ([`subjects::decode_stored`], the rule every consumer applies); `None`
/// for anything written around ingest, which consumers skip and the
/// lifecycle therefore ignores.
fn valid_event(key: ReviewKey, subject: &str, payload: &[u8]) -> Option<Envelope> {
    subjects::decode_stored(subject, payload)
        .ok()
        .filter(|event| event.review_key() == key)
}

/// How long a JetStream publish may wait for its acknowledgement.
pub const ACK_TIMEOUT: Duration = Duration::from_millis(2500);
