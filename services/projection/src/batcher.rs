//! Pulling from `UPR_EVENTS` in batches: take what is ready, and while the
//! consumer says more is pending wait briefly for it, because bigger
//! batches coalesce more writes of the same values.

use std::time::Duration;

use async_nats::jetstream::{
    self,
    consumer::{
        PullConsumer,
        pull::{MessagesError, Stream},
    },
};
use futures::{FutureExt, StreamExt};
use upr_nats::{service::BoxError, stop::Stop};

/// How many messages one pull request asks for.
const PULL_BATCH: usize = 1000;
/// How long a batch waits for a message the consumer says is pending.
const PENDING_WAIT: Duration = Duration::from_millis(100);

/// What one [`Batcher::next`] brought.
pub enum Pulled {
    /// Messages in delivery order (never empty), and the error that ended
    /// the batch early, if one did.
    Batch(Vec<jetstream::Message>, Option<MessagesError>),
    /// Pulling failed before any message of the batch arrived.
    Failed(MessagesError),
    /// Nothing arrived within the idle time asked for.
    Idle,
    /// The service is stopping.
    Stopping,
    /// The pull stream ended; bind to the consumer again.
    Ended,
}

/// One pull subscription to the projection's consumer.
pub struct Batcher {
    messages: Stream,
    max: usize,
}

impl Batcher {
    /// Starts pulling from `consumer`; batches hold at most `max` messages.
    ///
    /// # Errors
    /// The pull request could not be made.
    pub async fn bind(consumer: &PullConsumer, max: usize) -> Result<Self, BoxError> {
        let messages = consumer
            .stream()
            .max_messages_per_batch(PULL_BATCH)
            .expires(Duration::from_secs(30))
            .heartbeat(Duration::from_secs(5))
            .messages()
            .await?;
        Ok(Self { messages, max })
    }

    /// The next batch; with `idle`, [`Pulled::Idle`] when no message comes
    /// within it (the projector has work to write meanwhile).
    pub async fn next(&mut self, idle: Option<Duration>, stopping: &Stop) -> Pulled {
        let first = tokio::select! {
            m = self.messages.next() => m,
            () = tokio::time::sleep(idle.unwrap_or_default()), if idle.is_some() => return Pulled::Idle,
            () = stopping.stopped() => return Pulled::Stopping,
        };
        let mut batch = match first {
            Some(Ok(m)) => vec![m],
            Some(Err(e)) => return Pulled::Failed(e),
            None => return Pulled::Ended,
        };
        while batch.len() < self.max {
            let pending = batch
                .last()
                .and_then(|m| m.info().ok())
                .map_or(0, |i| i.pending);
            let next = if pending > 0 {
                tokio::time::timeout(PENDING_WAIT, self.messages.next())
                    .await
                    .ok()
                    .flatten()
            } else {
                self.messages.next().now_or_never().flatten()
            };
            match next {
                Some(Ok(m)) => batch.push(m),
                Some(Err(e)) => return Pulled::Batch(batch, Some(e)),
                None => break,
            }
        }
        Pulled::Batch(batch, None)
    }
}
