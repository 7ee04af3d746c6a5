//! The projection's KV side: reading values the fold needs and writing the
//! values it changed, each retried until JetStream answers, every write
//! fenced by the lease.
//!
//! Writes go in rounds of concurrent puts, and a round runs as its own task
//! while the projector folds the next batch: on a small machine the fold
//! (decode, apply, serialise) and the server's work on the puts then use
//! different cores instead of taking turns. At most one round is in flight,
//! so rounds land in the order they were sent and a value is never
//! overwritten by an older copy of itself; [`Writer::settle`] waits for it,
//! and the projector settles before every ack.

use std::{sync::Arc, sync::atomic::Ordering, time::Duration};

use async_nats::jetstream::kv;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use tokio::task::JoinHandle;
use tracing::{error, warn};
use upr_domain::{CalendarEntry, ReviewKey};
use upr_nats::{retry::Backoff, stop::Stop};

use crate::{
    lease::Lease,
    projector::Interrupt,
    state::Shared,
    store::{Buckets, Store},
};

/// KV reads in flight at once when a batch misses the cache.
const LOAD_CONCURRENCY: usize = 256;

/// Whether writing is still this instance's to do: the lease it writes
/// under (none for `rebuild`, which runs with the service stopped) and the
/// term its working set was loaded in.
#[derive(Clone, Default)]
pub struct Fence {
    lease: Option<Arc<Lease>>,
    term: u64,
}

impl Fence {
    /// Writes only while `lease` is valid, in its current term.
    pub fn under(lease: Arc<Lease>) -> Self {
        let term = lease.term();
        Self {
            lease: Some(lease),
            term,
        }
    }

    /// The working set was (re)loaded now: writes belong to this term.
    pub fn reload(&mut self) {
        self.term = self.lease.as_ref().map_or(0, |l| l.term());
    }

    /// Whether the lease (if any) is valid, whatever the term.
    pub fn lease_valid(&self) -> bool {
        self.lease.as_ref().is_none_or(|l| l.is_valid())
    }

    /// `Ok` while nothing else may be writing.
    ///
    /// # Errors
    /// [`Interrupt::LeaseLost`] or [`Interrupt::NewTerm`].
    pub fn check(&self) -> Result<(), Interrupt> {
        match &self.lease {
            Some(lease) if !lease.is_valid() => Err(Interrupt::LeaseLost),
            Some(lease) if lease.term() != self.term => Err(Interrupt::NewTerm),
            _ => Ok(()),
        }
    }
}

/// Which read-model bucket a value goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bucket {
    /// `upr_reviews`.
    Reviews,
    /// `upr_sessions`.
    Sessions,
    /// `upr_countries`.
    Countries,
}

impl Buckets {
    fn of(&self, bucket: Bucket) -> &kv::Store {
        match bucket {
            Bucket::Reviews => &self.reviews,
            Bucket::Sessions => &self.sessions,
            Bucket::Countries => &self.countries,
        }
    }
}

/// Values serialised for one write round (any bucket: a checkpoint sends
/// reviews, sessions and countries together, one round trip), and what the
/// upcoming index learns once they have landed.
#[derive(Default)]
pub struct Round {
    values: Vec<(Bucket, String, Bytes)>,
    filed: Vec<(ReviewKey, Option<CalendarEntry>)>,
    bytes: usize,
}

impl Round {
    /// Adds a value.
    pub fn push(&mut self, bucket: Bucket, key: String, json: Bytes) {
        self.bytes += json.len();
        self.values.push((bucket, key, json));
    }

    /// Files a review in the upcoming index once the round has landed.
    pub fn file(&mut self, key: ReviewKey, entry: Option<CalendarEntry>) {
        self.filed.push((key, entry));
    }

    /// Holds `values` values or `bytes` bytes of JSON (or more).
    pub fn reaches(&self, values: usize, bytes: usize) -> bool {
        self.values.len() >= values || self.bytes >= bytes
    }

    /// Holds nothing.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty() && self.filed.is_empty()
    }
}

/// A write round in flight, and what the upcoming index learns once it has
/// landed (so the index never runs ahead of `upr_reviews`).
struct InFlight {
    task: JoinHandle<Result<(), Interrupt>>,
    filed: Vec<(ReviewKey, Option<CalendarEntry>)>,
}

/// Reads and writes the read-model buckets for the projector. Dropping it
/// aborts the round in flight: nothing writes for an instance that stopped.
pub struct Writer {
    store: Store,
    shared: Arc<Shared>,
    stopping: Stop,
    /// Whether writing is still this instance's to do.
    pub fence: Fence,
    in_flight: Option<InFlight>,
}

impl Writer {
    /// A writer over `store`'s buckets, writing without a lease until
    /// [`Writer::fence`] is set.
    pub fn new(store: Store, shared: Arc<Shared>, stopping: Stop) -> Self {
        Self {
            store,
            shared,
            stopping,
            fence: Fence::default(),
            in_flight: None,
        }
    }

    /// Sends `round` after the previous one has landed.
    /// A value larger than the server accepts can never be written: it is
    /// logged, counted (`values_refused` in STATS and `upr.query.status`)
    /// and left out, so the rest of the log keeps flowing.
    ///
    /// # Errors
    /// The previous round's [`Interrupt`], or the fence.
    pub async fn send(&mut self, round: Round) -> Result<(), Interrupt> {
        self.settle().await?;
        self.fence.check()?;
        let max = self.store.max_value_bytes();
        let (values, refused): (Vec<_>, Vec<_>) = round
            .values
            .into_iter()
            .partition(|(_, _, v)| v.len() <= max);
        for (bucket, key, value) in refused {
            error!(
                bucket = %self.store.buckets.of(bucket).name,
                key = %key,
                bytes = value.len(),
                limit = max,
                "a read-model value is larger than the server accepts; left unwritten"
            );
            self.shared.values_refused.fetch_add(1, Ordering::Relaxed);
        }
        let task = tokio::spawn(put_all(
            self.store.clone(),
            values,
            self.fence.clone(),
            self.stopping.clone(),
        ));
        self.in_flight = Some(InFlight {
            task,
            filed: round.filed,
        });
        Ok(())
    }

    /// Waits until the round in flight (if any) has landed, and files its
    /// reviews in the upcoming index.
    ///
    /// # Errors
    /// Why the round could not land.
    pub async fn settle(&mut self) -> Result<(), Interrupt> {
        let Some(round) = self.in_flight.take() else {
            return Ok(());
        };
        match round.task.await {
            Ok(Ok(())) => {}
            Ok(Err(interrupt)) => return Err(interrupt),
            // The task panicked or was cancelled: nothing is known to have
            // landed, so nothing may be acked; start over from the log.
            Err(e) => return Err(Interrupt::Replay(format!("a write round failed: {e}"))),
        }
        if !round.filed.is_empty()
            && let Ok(mut index) = self.shared.upcoming.write()
        {
            for (key, entry) in round.filed {
                index.file(key, entry);
            }
        }
        Ok(())
    }

    /// Forgets the round in flight (the working set is being reloaded or
    /// emptied: what it wrote no longer matters, it is not acked).
    pub fn abandon(&mut self) {
        if let Some(round) = self.in_flight.take() {
            round.task.abort();
        }
    }

    /// Gets `keys` from `bucket` concurrently, retrying until JetStream
    /// answers.
    ///
    /// # Errors
    /// [`Interrupt::Shutdown`] when stopping, [`Interrupt::Replay`] when a
    /// bucket is gone.
    pub async fn fetch<K: Copy + std::fmt::Display>(
        &self,
        bucket: &kv::Store,
        keys: Vec<K>,
    ) -> Result<Vec<(K, Option<Bytes>)>, Interrupt> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        loop {
            let gets = futures::stream::iter(keys.iter().copied())
                .map(|key| async move { bucket.get(key.to_string()).await.map(|v| (key, v)) })
                .buffer_unordered(LOAD_CONCURRENCY)
                .try_collect::<Vec<_>>()
                .await;
            match gets {
                Ok(values) => return Ok(values),
                Err(e) => {
                    check_buckets(&self.store).await?;
                    let delay = backoff.next_delay();
                    warn!(error = %e, retry_in = ?delay, "reading the read models failed; retrying");
                    if self.stopping.pause(delay).await {
                        return Err(Interrupt::Shutdown);
                    }
                }
            }
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.abandon();
    }
}

/// Puts all values concurrently, retrying until JetStream has them all.
async fn put_all(
    store: Store,
    values: Vec<(Bucket, String, Bytes)>,
    fence: Fence,
    stopping: Stop,
) -> Result<(), Interrupt> {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        fence.check()?;
        let puts = values
            .iter()
            .map(|(b, k, v)| store.buckets.of(*b).put(k, v.clone()));
        match futures::future::try_join_all(puts).await {
            Ok(_) => return Ok(()),
            Err(e) => {
                check_buckets(&store).await?;
                let delay = backoff.next_delay();
                warn!(error = %e, retry_in = ?delay, "writing the read models failed; retrying");
                if stopping.pause(delay).await {
                    return Err(Interrupt::Shutdown);
                }
            }
        }
    }
}

/// After a failed write or read: a missing bucket means replay.
async fn check_buckets(store: &Store) -> Result<(), Interrupt> {
    match store.buckets_exist().await {
        Ok(false) => Err(Interrupt::Replay("a read-model bucket is gone".into())),
        _ => Ok(()),
    }
}
