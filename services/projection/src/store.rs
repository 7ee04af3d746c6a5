//! The JetStream side of the projection: the three read-model buckets and
//! the durable consumer, created, checked, emptied and scanned here.
//!
//! The buckets and the consumer are one unit: the consumer's position only
//! means something together with the buckets it was written into. So when any
//! of them is missing (an operator deleted it, or a crash interrupted a
//! reset) all of them are recreated and the log is replayed from sequence 1,
//! instead of resuming into empty buckets.

use async_nats::jetstream::{
    self, ErrorCode,
    consumer::{DeliverPolicy, PullConsumer, pull},
    context::{ConsumerInfoErrorKind, GetStreamErrorKind},
    kv,
    stream::{ConsumerErrorKind, Stream},
};
use futures::StreamExt;
use tracing::{info, warn};

use upr_domain::{Envelope, ReviewKey};
use upr_nats::{
    contract::{self, COUNTRIES_BUCKET, PROJECTION_CONSUMER, REVIEWS_BUCKET, SESSIONS_BUCKET},
    history,
    service::BoxError,
    setup::{SetupError, SetupFailure, ensure_bucket},
};

/// Why the read models could not be opened, by what the caller should do.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// A bucket exists with a configuration the projection cannot work
    /// with: retrying cannot fix it, so the service stops at once.
    #[error(transparent)]
    Incompatible(SetupError),
    /// JetStream unreachable, slow or refusing for now (a cluster electing
    /// leaders, a server still recovering): worth another try.
    #[error(transparent)]
    Transient(BoxError),
}

impl From<SetupError> for OpenError {
    fn from(e: SetupError) -> Self {
        if e.is_permanent() {
            Self::Incompatible(e)
        } else {
            Self::Transient(e.into())
        }
    }
}

/// Any other answer of JetStream (or none) may be different next time.
impl From<BoxError> for OpenError {
    fn from(e: BoxError) -> Self {
        Self::Transient(e)
    }
}

impl SetupFailure for OpenError {
    fn is_permanent(&self) -> bool {
        matches!(self, Self::Incompatible(_))
    }
}

/// The three read-model buckets.
#[derive(Clone)]
pub struct Buckets {
    /// `upr_reviews`, key `KZ.48`.
    pub reviews: kv::Store,
    /// `upr_sessions`, key `48`.
    pub sessions: kv::Store,
    /// `upr_countries`, key `KZ`.
    pub countries: kv::Store,
}

/// Handles to what the projection owns on the server.
#[derive(Clone)]
pub struct Store {
    js: jetstream::Context,
    events: Stream,
    replicas: usize,
    /// The buckets; the handles stay valid across a reset (same names and
    /// configuration).
    pub buckets: Buckets,
}

const ALL_BUCKETS: [&str; 3] = [REVIEWS_BUCKET, SESSIONS_BUCKET, COUNTRIES_BUCKET];

impl Store {
    /// The largest value a put can carry: the server's payload limit less
    /// room for the subject and headers of the publish.
    pub fn max_value_bytes(&self) -> usize {
        let max = self.js.client().server_info().max_payload;
        max.saturating_sub(4 * 1024)
    }

    /// The valid events of one review stored before sequence `before`: what
    /// a retraction of a lifecycle event needs to restore the state that
    /// event replaced. Retractions are rare, so one direct get per event
    /// (at most a few hundred per review) is cheap enough.
    ///
    /// # Errors
    /// When the event stream cannot be read.
    pub async fn review_history(
        &self,
        key: ReviewKey,
        before: u64,
    ) -> Result<Vec<(u64, Envelope)>, BoxError> {
        Ok(history::Events::between(&self.events, key, 1, before)
            .collect()
            .await?)
    }

    /// Makes sure the buckets and the consumer exist. Returns the store and
    /// whether it had to start over (anything was missing, so the read
    /// models were emptied and the consumer starts at sequence 1).
    ///
    /// # Errors
    /// [`OpenError::Incompatible`] for a bucket with an incompatible
    /// configuration, [`OpenError::Transient`] when JetStream is unreachable
    /// or refuses.
    pub async fn open(
        js: jetstream::Context,
        events: Stream,
        replicas: usize,
    ) -> Result<(Self, bool), OpenError> {
        let mut missing = Vec::new();
        for name in ALL_BUCKETS {
            if !stream_exists(&js, &format!("KV_{name}")).await? {
                missing.push(format!("bucket {name}"));
            }
        }
        if !consumer_exists(&events).await? {
            missing.push(format!("consumer {PROJECTION_CONSUMER}"));
        }
        // Checked first, so an incompatible bucket is refused, never deleted.
        let buckets = Buckets {
            reviews: ensure_bucket(&js, contract::read_model_bucket(REVIEWS_BUCKET, replicas))
                .await?,
            sessions: ensure_bucket(&js, contract::read_model_bucket(SESSIONS_BUCKET, replicas))
                .await?,
            countries: ensure_bucket(&js, contract::read_model_bucket(COUNTRIES_BUCKET, replicas))
                .await?,
        };
        if !missing.is_empty() {
            info!(missing = %missing.join(", "), "read models incomplete; emptying them and replaying the log from sequence 1");
            reset(&js, &events, replicas).await?;
        }
        Ok((
            Self {
                js,
                events,
                replicas,
                buckets,
            },
            !missing.is_empty(),
        ))
    }

    /// Empties the read models: deletes the consumer and the three buckets,
    /// recreates the buckets, then the consumer (last, so that a crash in
    /// between leaves the consumer missing and the next start resets again).
    ///
    /// # Errors
    /// JetStream unreachable or refusing.
    pub async fn reset(&self) -> Result<(), BoxError> {
        Ok(reset(&self.js, &self.events, self.replicas).await?)
    }

    /// Recreates the consumer so that it delivers from `start` on, with
    /// nothing outstanding. Used when a delivery skipped ahead of the applied
    /// sequence (messages handed to a previous, killed instance, or lost on a
    /// reconnect): with ack-all, acking past them would drop them silently.
    ///
    /// # Errors
    /// JetStream unreachable or refusing.
    pub async fn reposition(&self, start: u64) -> Result<(), BoxError> {
        delete_consumer(&self.events).await?;
        let config = pull::Config {
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: start,
            },
            ..contract::projection_consumer()
        };
        self.events.create_consumer(config).await?;
        info!(start, "consumer repositioned");
        Ok(())
    }

    /// The durable consumer (which must exist).
    ///
    /// # Errors
    /// When it does not exist or JetStream does not answer.
    pub async fn consumer(&self) -> Result<PullConsumer, BoxError> {
        self.events.get_consumer(PROJECTION_CONSUMER).await
    }

    /// Whether the consumer exists; `Err` when JetStream does not answer.
    ///
    /// # Errors
    /// JetStream unreachable.
    pub async fn consumer_exists(&self) -> Result<bool, BoxError> {
        consumer_exists(&self.events).await
    }

    /// Whether all three buckets exist.
    ///
    /// # Errors
    /// JetStream unreachable.
    pub async fn buckets_exist(&self) -> Result<bool, BoxError> {
        for name in ALL_BUCKETS {
            if !stream_exists(&self.js, &format!("KV_{name}")).await? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// The last sequence in `UPR_EVENTS` now.
    ///
    /// # Errors
    /// JetStream unreachable.
    pub async fn stream_last_seq(&self) -> Result<u64, BoxError> {
        Ok(self.events.get_info().await?.state.last_sequence)
    }

    /// `UPR_EVENTS` now: its last sequence, its bytes and its `max_bytes`
    /// (`-1`: no limit of its own; the account's storage limit holds).
    ///
    /// # Errors
    /// JetStream unreachable.
    pub async fn stream_figures(&self) -> Result<(u64, u64, i64), BoxError> {
        let info = self.events.get_info().await?;
        Ok((
            info.state.last_sequence,
            info.state.bytes,
            info.config.max_bytes,
        ))
    }

    /// The service account's file storage: bytes used by every stream and
    /// bucket together, and its limit (`None`: no limit).
    ///
    /// # Errors
    /// JetStream unreachable.
    pub async fn account_storage(&self) -> Result<(u64, Option<u64>), BoxError> {
        let account = self.js.query_account().await?;
        let limit = account
            .limits
            .max_storage
            .and_then(|l| u64::try_from(l).ok());
        Ok((account.storage, limit))
    }

    /// Calls `f(key, value)` for the current value of every key of `bucket`
    /// (`value` empty with `headers_only`), reading the bucket's stream with
    /// an ordered consumer: one pass, no request per key.
    ///
    /// # Errors
    /// JetStream unreachable.
    pub async fn scan(
        &self,
        bucket: &str,
        headers_only: bool,
        mut f: impl FnMut(&str, &[u8]),
    ) -> Result<u64, BoxError> {
        let stream = self.js.get_stream(format!("KV_{bucket}")).await?;
        let consumer = stream
            .create_consumer(pull::OrderedConfig {
                deliver_policy: DeliverPolicy::LastPerSubject,
                filter_subject: format!("$KV.{bucket}.>"),
                headers_only,
                ..Default::default()
            })
            .await?;
        let mut remaining = consumer.cached_info().num_pending;
        let prefix = format!("$KV.{bucket}.");
        let mut seen = 0;
        if remaining == 0 {
            return Ok(0);
        }
        let mut messages = consumer.messages().await?;
        while let Some(message) = messages.next().await {
            let message = message?;
            remaining = message.info()?.pending;
            let deleted = message
                .headers
                .as_ref()
                .and_then(|h| h.get("KV-Operation"))
                .is_some_and(|op| op.as_str() == "DEL" || op.as_str() == "PURGE");
            if let (false, Some(key)) = (deleted, message.subject.as_str().strip_prefix(&prefix)) {
                f(key, &message.payload);
                seen += 1;
            }
            if remaining == 0 {
                break;
            }
        }
        Ok(seen)
    }
}

async fn delete_consumer(events: &Stream) -> Result<(), BoxError> {
    match events.delete_consumer(PROJECTION_CONSUMER).await {
        Ok(_) => Ok(()),
        Err(e) if matches!(e.kind(), ConsumerErrorKind::JetStream(ref j) if j.error_code() == ErrorCode::CONSUMER_NOT_FOUND) => {
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// [`Store::reset`], typed for [`Store::open`], which resets when anything
/// was missing.
async fn reset(js: &jetstream::Context, events: &Stream, replicas: usize) -> Result<(), OpenError> {
    delete_consumer(events).await?;
    for name in ALL_BUCKETS {
        match js.delete_stream(format!("KV_{name}")).await {
            Ok(_) => {}
            Err(e) if is_stream_not_found(&e.kind()) => {}
            Err(e) => return Err(BoxError::from(e).into()),
        }
    }
    for name in ALL_BUCKETS {
        ensure_bucket(js, contract::read_model_bucket(name, replicas)).await?;
    }
    let mut consumer: PullConsumer = events
        .create_consumer(contract::projection_consumer())
        .await
        .map_err(BoxError::from)?;
    // A server that is still recovering can answer "not found" to the delete
    // and then bring the old consumer back; creating it again then returns
    // the old one, which would resume mid-log into empty buckets.
    let info = consumer.info().await.map_err(BoxError::from)?;
    if info.delivered.stream_sequence > 0 || info.ack_floor.stream_sequence > 0 {
        return Err(BoxError::from(format!(
            "consumer {PROJECTION_CONSUMER} came back at sequence {} instead of starting over",
            info.delivered.stream_sequence
        ))
        .into());
    }
    info!("read models emptied; consumer recreated at sequence 1");
    Ok(())
}

fn is_stream_not_found(kind: &GetStreamErrorKind) -> bool {
    matches!(kind, GetStreamErrorKind::JetStream(j) if j.error_code() == ErrorCode::STREAM_NOT_FOUND)
}

async fn stream_exists(js: &jetstream::Context, name: &str) -> Result<bool, BoxError> {
    match js.get_stream(name).await {
        Ok(_) => Ok(true),
        Err(e) if is_stream_not_found(&e.kind()) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

async fn consumer_exists(events: &Stream) -> Result<bool, BoxError> {
    match events.consumer_info(PROJECTION_CONSUMER).await {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == ConsumerInfoErrorKind::NotFound => Ok(false),
        Err(e) => {
            warn!(error = %e, "cannot read the consumer's info");
            Err(e.into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_incompatible_bucket_stops_the_opening_at_once() {
        let incompatible = OpenError::from(SetupError::Incompatible {
            kind: "bucket",
            name: REVIEWS_BUCKET.into(),
            differences: "replicas: found 1, expected 3".into(),
        });
        assert!(incompatible.is_permanent());
        assert!(
            incompatible
                .to_string()
                .starts_with("bucket upr_reviews exists with an incompatible configuration"),
            "{incompatible}"
        );
        let unreachable = OpenError::from(SetupError::JetStream {
            kind: "bucket",
            name: REVIEWS_BUCKET.into(),
            source: "timed out".into(),
        });
        assert!(!unreachable.is_permanent());
        assert_eq!(unreachable.to_string(), "bucket upr_reviews: timed out");
        assert!(!OpenError::from(BoxError::from("no responders")).is_permanent());
    }
}
