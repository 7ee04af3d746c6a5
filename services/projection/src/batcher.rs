//! Pulling from `UPR_EVENTS` in batches: take what is ready, and while the
//! consumer says more is pending wait briefly for it, because bigger
//! batches coalesce more writes of the same values.
//!
//! Pulling and decoding run on a task of their own, one batch ahead of the
//! fold: decoding is independent per message and was a sixth of the
//! rebuild's CPU on the projector's one serial chain, so on a second core
//! it costs the fold nothing. Decoded messages cross over in chunks of at
//! most [`PULL_BATCH`], and each keeps only its metadata and event (its raw
//! bytes are dropped once decoded), so running ahead costs about one
//! batch's decoded events of memory, not raw and decoded copies of several.

use std::time::Duration;

use async_nats::jetstream::{
    self,
    consumer::{
        PullConsumer,
        pull::{MessagesError, Stream},
    },
};
use futures::{FutureExt, StreamExt};
use tokio::{sync::mpsc, task::JoinHandle};
use upr_domain::{Envelope, EnvelopeError};
use upr_nats::{contract::subjects, service::BoxError, stop::Stop};

/// How many messages one pull request asks for, and most per chunk.
const PULL_BATCH: usize = 1000;
/// How long a batch waits for a message the consumer says is pending.
const PENDING_WAIT: Duration = Duration::from_millis(100);

/// One delivered message, decoded on the pulling task.
pub struct Delivered {
    /// The message without its payload: kept to ack it.
    pub message: jetstream::Message,
    /// Its stream sequence and the consumer's pending count, `None` when it
    /// carries no JetStream metadata.
    pub info: Option<(u64, u64)>,
    /// The event, or why the message is not one.
    pub event: Result<Envelope, EnvelopeError>,
}

/// What one [`Batcher::next`] brought.
pub enum Pulled {
    /// Messages in delivery order (never empty), and the error that ended
    /// the batch early, if one did.
    Batch(Vec<Delivered>, Option<MessagesError>),
    /// Pulling failed before any message of the batch arrived.
    Failed(MessagesError),
    /// Nothing arrived within the idle time asked for.
    Idle,
    /// The service is stopping.
    Stopping,
    /// The pull stream ended; bind to the consumer again.
    Ended,
}

/// What the pulling task hands over.
enum Piece {
    /// Part of a batch.
    Chunk(Vec<Delivered>),
    /// The batch is complete; with the error that ended it early.
    End(Option<MessagesError>),
    /// Pulling failed before any message of a batch arrived.
    Failed(MessagesError),
}

/// One pull subscription to the projection's consumer, pulled and decoded
/// by its own task; dropping it stops the task (and so the pulls).
pub struct Batcher {
    pieces: mpsc::Receiver<Piece>,
    task: JoinHandle<()>,
}

impl Drop for Batcher {
    fn drop(&mut self) {
        self.task.abort();
    }
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
        // A batch's chunks and its end: the task runs at most one batch
        // ahead of the fold.
        let (tx, pieces) = mpsc::channel(max.div_ceil(PULL_BATCH) + 1);
        let task = tokio::spawn(pull(messages, max, tx));
        Ok(Self { pieces, task })
    }

    /// The next batch; with `idle`, [`Pulled::Idle`] when no message comes
    /// within it (the projector has work to write meanwhile).
    pub async fn next(&mut self, idle: Option<Duration>, stopping: &Stop) -> Pulled {
        let first = tokio::select! {
            p = self.pieces.recv() => p,
            () = tokio::time::sleep(idle.unwrap_or_default()), if idle.is_some() => return Pulled::Idle,
            () = stopping.stopped() => return Pulled::Stopping,
        };
        let mut batch = match first {
            Some(Piece::Chunk(c)) => c,
            Some(Piece::Failed(e)) => return Pulled::Failed(e),
            // A batch never ends before its first chunk.
            Some(Piece::End(_)) | None => return Pulled::Ended,
        };
        // The rest of a batch follows within [`PENDING_WAIT`] per message.
        loop {
            match self.pieces.recv().await {
                Some(Piece::Chunk(c)) => batch.extend(c),
                Some(Piece::End(failure)) => return Pulled::Batch(batch, failure),
                Some(Piece::Failed(e)) => return Pulled::Batch(batch, Some(e)),
                None => return Pulled::Batch(batch, None),
            }
        }
    }
}

/// The pulling task: batches of at most `max` messages, decoded and handed
/// over in chunks, until the stream ends or fails or the batcher is gone.
async fn pull(mut messages: Stream, max: usize, tx: mpsc::Sender<Piece>) {
    loop {
        let mut chunk = match messages.next().await {
            Some(Ok(m)) => vec![decode(m)],
            Some(Err(e)) => {
                let _ = tx.send(Piece::Failed(e)).await;
                return;
            }
            None => return,
        };
        let mut taken = 1;
        let mut pending = pending_after(&chunk[0]);
        let mut failure = None;
        let mut ended = false;
        while taken < max {
            let next = if pending > 0 {
                tokio::time::timeout(PENDING_WAIT, messages.next())
                    .await
                    .ok()
                    .flatten()
            } else {
                messages.next().now_or_never().flatten()
            };
            match next {
                Some(Ok(m)) => {
                    let delivered = decode(m);
                    pending = pending_after(&delivered);
                    chunk.push(delivered);
                    taken += 1;
                    if chunk.len() == PULL_BATCH {
                        let full = std::mem::replace(&mut chunk, Vec::with_capacity(PULL_BATCH));
                        if tx.send(Piece::Chunk(full)).await.is_err() {
                            return;
                        }
                    }
                }
                Some(Err(e)) => {
                    failure = Some(e);
                    ended = true;
                    break;
                }
                None => break,
            }
        }
        if !chunk.is_empty() && tx.send(Piece::Chunk(chunk)).await.is_err() {
            return;
        }
        if tx.send(Piece::End(failure)).await.is_err() || ended {
            return;
        }
    }
}

/// What the consumer said was still pending after `delivered`.
fn pending_after(delivered: &Delivered) -> u64 {
    delivered.info.map_or(0, |(_, pending)| pending)
}

/// Reads a message's metadata and event, and drops its raw bytes.
fn decode(mut message: jetstream::Message) -> Delivered {
    let info = message
        .info()
        .ok()
        .map(|i| (i.stream_sequence, i.pending));
    let event = subjects::decode_stored(message.subject.as_str(), &message.payload);
    message.message.payload = bytes::Bytes::new();
    Delivered {
        message,
        info,
        event,
    }
}
