//! The event log as ingest uses it: read one review's history, append one
//! event under an expected last sequence. JetStream details stay here.

use std::time::Duration;

use async_nats::{
    Client,
    jetstream::{
        self, context::PublishErrorKind, message::PublishMessage, publish::PublishAck,
        stream::DirectGetErrorKind,
    },
};
use bytes::Bytes;
use tokio::time::{Instant, timeout_at};
use upr_domain::{Envelope, Review, ReviewKey};
use upr_nats::{
    contract::{self, subjects},
    history::{self, BatchReader, HistoryError, Inbox},
    service::BoxError,
};
use uuid::Uuid;

/// Why an operation on the log did not complete. Every variant but
/// `Conflict` means the log could not be used now: for an append, "not
/// confirmed", and the event id makes a retry safe.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another writer appended to the review since it was read.
    #[error("the review changed since it was read")]
    Conflict,
    /// JetStream did not answer (in time, or with a status that says it
    /// cannot serve the request), or the client failed: the same two ways a
    /// read of a review's history fails, so the same type.
    #[error(transparent)]
    Log(#[from] HistoryError),
    /// JetStream refused the append for another reason than a conflict.
    #[error(transparent)]
    Publish(jetstream::context::PublishError),
}

/// Reads and appends to `UPR_EVENTS`.
#[derive(Debug, Clone)]
pub struct EventLog {
    client: Client,
    js: jetstream::Context,
    history: BatchReader,
    leader_get: String,
}

/// Where one reader's history batches arrive ([`history::Inbox`]).
#[derive(Debug)]
pub struct HistoryInbox(Inbox);

impl HistoryInbox {
    /// An inbox on `log`'s connection, subscribed on first use.
    pub fn new(log: &EventLog) -> Self {
        Self(Inbox::new(&log.client))
    }
}

impl EventLog {
    /// An adapter over `js`, whose timeout bounds every publish acknowledgement.
    pub fn new(client: Client, js: jetstream::Context) -> Self {
        Self {
            history: BatchReader::new(client.clone(), contract::EVENTS_STREAM),
            client,
            js,
            leader_get: contract::ingest::leader_get(contract::EVENTS_STREAM),
        }
    }

    fn connected(&self) -> Result<(), StoreError> {
        Ok(history::connected(&self.client).map_err(HistoryError::Unavailable)?)
    }

    /// Reads the review's whole history (`upr.events.<C>.<S>.>`) with batched
    /// direct gets, which need no consumer and answer 404 at once for a review
    /// that has no events yet.
    ///
    /// # Errors
    /// [`HistoryError::Unavailable`] when JetStream does not answer by `deadline`.
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
    /// [`HistoryError::Unavailable`] when the leader does not answer by `deadline`.
    pub async fn is_current(
        &self,
        key: ReviewKey,
        last_seq: u64,
        deadline: Instant,
    ) -> Result<bool, StoreError> {
        self.connected()?;
        let unavailable =
            |what: &str| HistoryError::Unavailable(format!("confirming review {key}: {what}"));
        let filter = subjects::review_events(key);
        let request = serde_json::json!({"seq": last_seq + 1, "next_by_subj": filter});
        let answer = timeout_at(
            deadline,
            self.client
                .request(self.leader_get.clone(), Bytes::from(request.to_string())),
        )
        .await
        .map_err(|_| unavailable("no answer in time"))?
        .map_err(|e| HistoryError::Client {
            doing: format!("confirming review {key}"),
            source: e.into(),
        })?;
        let answer: serde_json::Value =
            serde_json::from_slice(&answer.payload).map_err(|e| HistoryError::Client {
                doing: format!("confirming review {key}: unreadable answer"),
                source: e.into(),
            })?;
        if answer.get("message").is_some() {
            return Ok(false);
        }
        match answer["error"]["code"].as_u64() {
            Some(404) => Ok(true),
            _ => Err(unavailable(&answer["error"].to_string()).into()),
        }
    }

    /// Folds into `log` what the review's history holds after its last
    /// sequence: a stale cached state costs one read of what it missed
    /// (usually one event another replica appended), not the whole history.
    ///
    /// # Errors
    /// [`HistoryError::Unavailable`] when JetStream does not answer by
    /// `deadline`; `log` may then have taken part of what it missed, which
    /// is still a true prefix of the history.
    pub async fn catch_up(
        &self,
        inbox: &mut HistoryInbox,
        key: ReviewKey,
        log: &mut Review,
        deadline: Instant,
    ) -> Result<(), StoreError> {
        let from = log.last_seq() + 1;
        self.history
            .read(&mut inbox.0, key, from, deadline, |m| {
                log.apply(m.seq, m.id, m.event.as_ref());
            })
            .await?;
        Ok(())
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
    /// [`HistoryError::Unavailable`] when JetStream refused or did not answer by `deadline`.
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
            || HistoryError::Unavailable("the event stream did not acknowledge in time".into());
        let ack = timeout_at(deadline, self.js.send_publish(subject.to_owned(), message))
            .await
            .map_err(|_| timed_out())?
            .map_err(publish_error)?;
        timeout_at(deadline, ack)
            .await
            .map_err(|_| timed_out())?
            .map_err(publish_error)
    }

    /// The event stored at `seq` (what a duplicate acknowledgement names),
    /// `None` when that message is not a valid event (written around
    /// ingest) or is gone.
    ///
    /// # Errors
    /// [`HistoryError::Unavailable`] when JetStream does not answer by `deadline`.
    pub async fn get(&self, seq: u64, deadline: Instant) -> Result<Option<Envelope>, StoreError> {
        self.connected()?;
        let client_error = |e: BoxError| HistoryError::Client {
            doing: format!("reading event {seq}"),
            source: e,
        };
        let stream = self
            .js
            .get_stream_no_info(contract::EVENTS_STREAM)
            .await
            .map_err(|e| client_error(e.into()))?;
        match timeout_at(deadline, stream.direct_get(seq)).await {
            Err(_) => Err(HistoryError::Unavailable(format!(
                "reading event {seq}: no answer in time"
            ))
            .into()),
            Ok(Ok(m)) => Ok(subjects::decode_stored(m.subject.as_str(), &m.payload).ok()),
            Ok(Err(e)) if e.kind() == DirectGetErrorKind::NotFound => Ok(None),
            Ok(Err(e)) => Err(client_error(e.into()).into()),
        }
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
            HistoryError::Unavailable("no responders for the event stream".into()).into()
        }
        PublishErrorKind::TimedOut => {
            HistoryError::Unavailable("the event stream did not acknowledge in time".into()).into()
        }
        _ => StoreError::Publish(e),
    }
}

/// How long a JetStream publish may wait for its acknowledgement.
pub const ACK_TIMEOUT: Duration = Duration::from_millis(2500);
