//! The consumer loop: pull a batch from `UPR_EVENTS`, fold it into the
//! working set, write every changed review value once (puts in flight
//! together), and at each checkpoint also the changed session and country
//! values, then publish the applied sequence and ack (ack-all on the last
//! message).
//!
//! Checkpoints happen after every batch once caught up (so a live event is
//! visible at once), and every [`CHECKPOINT_INTERVAL`] or
//! [`CHECKPOINT_EVENTS`] while catching up: session and country values
//! aggregate hundreds of reviews, so writing them once per checkpoint rather
//! than once per batch is what makes a rebuild fast.
//!
//! Exactly-once effect: a value's `last_seq` is written with the value, and
//! the fold skips any sequence at or below it, so events redelivered after a
//! crash before the ack change nothing where they were already written. The
//! ack only moves the consumer past what is durable in all three buckets.

use std::{sync::Arc, sync::atomic::Ordering, time::Duration};

use async_nats::jetstream::{self, consumer::pull::MessagesErrorKind, kv};
use futures::{FutureExt, StreamExt, TryStreamExt};
use tokio::sync::watch;
use tracing::{Instrument, debug, error, info, info_span, warn};
use upr_shared::{
    contract::subjects,
    domain::{CountryView, Envelope, ReviewKey, ReviewView, SessionView},
    service::BoxError,
};

use upr_shared::retry::Backoff;

use crate::{
    cache::{Applied, Table, View, WorkingSet},
    lease::Lease,
    state::Shared,
    store::Store,
};

/// How many messages one pull request asks for.
const PULL_BATCH: usize = 1000;
/// KV reads in flight at once when a batch misses the cache.
const LOAD_CONCURRENCY: usize = 256;
/// Most values written in one round of concurrent puts.
const WRITE_CHUNK_VALUES: usize = 2048;
/// Most JSON bytes written in one round of concurrent puts, which bounds the
/// memory a write round needs however large the values are.
const WRITE_CHUNK_BYTES: usize = 4 * 1024 * 1024;
/// While catching up, write session and country values and ack at least
/// this often, or, when a checkpoint takes long (large aggregates), so that
/// at most a tenth of the time is spent checkpointing...
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);
/// ...and at the latest after this many messages (kept below the
/// consumer's `max_ack_pending`).
pub const CHECKPOINT_EVENTS: u64 = 200_000;
/// How long the loop waits for more messages with a checkpoint due before
/// writing it anyway.
const IDLE_CHECKPOINT: Duration = Duration::from_millis(50);

/// Why a batch could not be completed.
#[derive(Debug)]
enum Interrupt {
    /// The service is stopping; nothing of the batch was acked.
    Shutdown,
    /// The buckets or the consumer no longer match (deleted by an operator,
    /// or a known value is gone): empty everything and replay from 1.
    Replay(String),
    /// A delivery skipped ahead of the applied sequence; what came before
    /// the gap is written and acked, the consumer must deliver from
    /// `applied + 1` again.
    Gap {
        /// The sequence expected.
        expected: u64,
        /// The sequence delivered.
        got: u64,
    },
    /// This instance no longer surely holds the lease: another may be
    /// active, so nothing more is written or acked.
    LeaseLost,
    /// The lease was taken again after it was gone: another instance may
    /// have written meanwhile, so the working set is read again first.
    NewTerm,
}

/// Folds the event log into the read models.
pub struct Projector {
    store: Store,
    shared: Arc<Shared>,
    set: WorkingSet,
    max_batch: usize,
    /// The last sequence durable in all three buckets and acked (mirrors
    /// `shared`).
    applied: u64,
    /// The last sequence folded into the working set (>= `applied`).
    folded: u64,
    /// The last message folded but not yet acked (acked at the checkpoint).
    unacked: Option<jetstream::Message>,
    /// When the last checkpoint was written.
    checkpointed_at: std::time::Instant,
    /// How long the last checkpoint took.
    checkpoint_cost: Duration,
    /// Set right after the consumer was (re)created at a start sequence:
    /// the first delivery is then the first message that exists, so a
    /// jump there is a real hole in the stream, not a lost delivery.
    accept_gap: bool,
    stopping: watch::Receiver<bool>,
    /// The lease this instance writes under (`None`: `rebuild`, which runs
    /// with the service stopped).
    lease: Option<Arc<Lease>>,
    /// The lease term the working set was loaded under.
    term: u64,
    /// Whether written reviews are filed in the upcoming index (the queries'
    /// view); `rebuild` answers no query and exits, so it keeps none.
    index: bool,
}

impl Projector {
    /// A projector over `store`; `cache_bytes` bounds the working set,
    /// `max_batch` the events folded per write.
    pub fn new(
        store: Store,
        shared: Arc<Shared>,
        cache_bytes: usize,
        max_batch: usize,
        stopping: watch::Receiver<bool>,
    ) -> Self {
        Self {
            store,
            shared,
            set: WorkingSet::new(cache_bytes),
            max_batch,
            applied: 0,
            folded: 0,
            unacked: None,
            checkpointed_at: std::time::Instant::now(),
            checkpoint_cost: Duration::ZERO,
            accept_gap: false,
            stopping,
            lease: None,
            term: 0,
            index: true,
        }
    }

    /// Keeps no upcoming index: for `rebuild`, which answers no query, so
    /// its memory holds only the working set.
    pub fn without_index(&mut self) {
        self.index = false;
    }

    /// Writes only while `lease` is valid.
    pub fn under(&mut self, lease: Arc<Lease>) {
        self.lease = Some(lease);
    }

    /// Whether writing is still this instance's to do.
    fn fenced(&self) -> Result<(), Interrupt> {
        match &self.lease {
            Some(lease) if !lease.is_valid() => Err(Interrupt::LeaseLost),
            Some(lease) if lease.term() != self.term => Err(Interrupt::NewTerm),
            _ => Ok(()),
        }
    }

    /// Reads what the buckets already hold: the keys that exist, the
    /// upcoming index, and the consumer's ack floor as the applied sequence.
    ///
    /// # Errors
    /// JetStream unreachable.
    pub async fn load(&mut self) -> Result<(), BoxError> {
        self.term = self.lease.as_ref().map_or(0, |l| l.term());
        self.set.clear();
        let mut index = crate::upcoming::UpcomingIndex::default();
        let reviews = &mut self.set.reviews;
        let mut corrupt = 0u64;
        let bucket = upr_shared::contract::REVIEWS_BUCKET;
        self.store
            .scan(bucket, false, |key, value| {
                match serde_json::from_slice::<ReviewView>(value) {
                    Ok(view) if ReviewView::parse_key(key) == Some(view.key()) => {
                        reviews.mark_known(view.key());
                        index.update(&view);
                    }
                    _ => corrupt += 1,
                }
            })
            .await?;
        if corrupt > 0 {
            warn!(
                bucket,
                corrupt,
                "values that are not read models found; they are replaced when their review changes"
            );
        }
        let sessions = &mut self.set.sessions;
        self.store
            .scan(upr_shared::contract::SESSIONS_BUCKET, true, |key, _| {
                if let Some(k) = SessionView::parse_key(key) {
                    sessions.mark_known(k);
                }
            })
            .await?;
        let countries = &mut self.set.countries;
        self.store
            .scan(upr_shared::contract::COUNTRIES_BUCKET, true, |key, _| {
                if let Some(k) = CountryView::parse_key(key) {
                    countries.mark_known(k);
                }
            })
            .await?;
        let scheduled = index.len();
        *self
            .shared
            .upcoming
            .write()
            .map_err(|_| "upcoming index poisoned")? = index;
        let consumer = self.store.consumer().await?;
        self.applied = consumer.cached_info().ack_floor.stream_sequence;
        self.folded = self.applied;
        self.unacked = None;
        self.shared.set_applied(self.applied);
        info!(applied_seq = self.applied, scheduled, "read models loaded");
        Ok(())
    }

    /// [`Self::load`], then the consumer restarted at the first sequence
    /// not applied: what an earlier holder of the lease had been handed
    /// (and, dead or frozen, will not acknowledge) is delivered again now,
    /// not when its ack wait runs out, and its waiting pulls are dropped.
    ///
    /// # Errors
    /// JetStream unreachable.
    pub async fn take_over(&mut self) -> Result<(), BoxError> {
        self.load().await?;
        self.store.reposition(self.applied + 1).await?;
        self.accept_gap = true;
        Ok(())
    }

    /// Empties the read models and starts over from sequence 1.
    async fn replay(&mut self, reason: &str) -> Result<(), BoxError> {
        if self.fenced().is_err() {
            return Err("the projection lease lapsed; not emptying the read models".into());
        }
        warn!(
            reason,
            "emptying the read models and replaying the log from sequence 1"
        );
        // JetStream may still be recovering (right after a server restart):
        // keep trying rather than give up the service.
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        while let Err(e) = self.store.reset().await {
            if self.is_stopping() {
                return Err(e);
            }
            let delay = backoff.next_delay();
            warn!(error = %e, retry_in = ?delay, "cannot reset the read models yet");
            self.pause(delay).await;
        }
        self.set.clear();
        self.shared
            .upcoming
            .write()
            .map_err(|_| "upcoming index poisoned")?
            .clear();
        self.applied = 0;
        self.folded = 0;
        self.unacked = None;
        // The fresh consumer must start at sequence 1; anything else (an old
        // consumer recovered by a restarting server) is a gap, and the gap
        // path repositions it.
        self.accept_gap = false;
        self.shared.set_applied(0);
        self.shared.replays.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn is_stopping(&self) -> bool {
        *self.stopping.borrow()
    }

    /// After the lease lapsed or was taken again: waits until it is valid,
    /// then reads the working set and the applied sequence again, since
    /// another instance may have written meanwhile and what this one had
    /// folded but not written is redelivered.
    async fn resume_under_lease(&mut self) -> Result<(), BoxError> {
        warn!("writes paused: the lease lapsed or was taken again; reloading once it is valid");
        loop {
            if self.is_stopping() {
                return Ok(());
            }
            if self.lease.as_ref().is_none_or(|l| l.is_valid()) {
                match self.take_over().await {
                    Ok(()) => return Ok(()),
                    Err(e) => warn!(error = %e, "cannot reload the read models yet"),
                }
            }
            self.pause(Duration::from_millis(200)).await;
        }
    }

    /// Waits `delay`, or less when the service is stopping.
    async fn pause(&mut self, delay: Duration) {
        let mut stopping = self.stopping.clone();
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stopping.wait_for(|s| *s) => {}
        }
    }

    /// Consumes until the service stops or, with `until`, until every
    /// sequence up to `until` is applied.
    ///
    /// # Errors
    /// Only when the read models cannot be reset (JetStream refusing);
    /// transient failures are retried.
    pub async fn run(&mut self, until: Option<u64>) -> Result<(), BoxError> {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        'consume: loop {
            if self.is_stopping() || until.is_some_and(|t| self.applied >= t) {
                return Ok(());
            }
            let consumer = match self.store.consumer().await {
                Ok(c) => c,
                Err(e) => {
                    if matches!(self.store.consumer_exists().await, Ok(false)) {
                        self.replay("the consumer is gone").await?;
                    } else {
                        let delay = backoff.next_delay();
                        warn!(error = %e, retry_in = ?delay, "cannot bind to the consumer");
                        self.pause(delay).await;
                    }
                    continue 'consume;
                }
            };
            let messages = consumer
                .stream()
                .max_messages_per_batch(PULL_BATCH)
                .expires(Duration::from_secs(30))
                .heartbeat(Duration::from_secs(5))
                .messages()
                .await;
            let mut messages = match messages {
                Ok(m) => m,
                Err(e) => {
                    let delay = backoff.next_delay();
                    warn!(error = %e, retry_in = ?delay, "cannot pull from the consumer");
                    self.pause(delay).await;
                    continue 'consume;
                }
            };
            loop {
                let mut stopping = self.stopping.clone();
                let due = self.folded > self.applied;
                let first = tokio::select! {
                    m = messages.next() => m,
                    () = tokio::time::sleep(IDLE_CHECKPOINT), if due => {
                        if let Err(i) = self.checkpoint().await {
                            match i {
                                Interrupt::Replay(reason) => self.replay(&reason).await?,
                                Interrupt::Shutdown | Interrupt::Gap { .. } => return Ok(()),
                                Interrupt::LeaseLost | Interrupt::NewTerm => {
                                    drop(messages);
                                    self.resume_under_lease().await?;
                                }
                            }
                            continue 'consume;
                        }
                        continue;
                    }
                    _ = stopping.wait_for(|s| *s) => {
                        // Finish the work in hand: write it and ack it.
                        let _ = self.checkpoint().await;
                        return Ok(());
                    }
                };
                let mut batch = Vec::new();
                let mut failure = None;
                match first {
                    Some(Ok(m)) => batch.push(m),
                    Some(Err(e)) => failure = Some(e),
                    None => continue 'consume,
                }
                // Take what is ready, and wait briefly for more while the
                // consumer says more is pending: bigger batches coalesce
                // more writes.
                while failure.is_none() && batch.len() < self.max_batch {
                    let pending = batch
                        .last()
                        .and_then(|m| m.info().ok())
                        .map_or(0, |i| i.pending);
                    let next = if pending > 0 {
                        tokio::time::timeout(Duration::from_millis(100), messages.next())
                            .await
                            .ok()
                            .flatten()
                    } else {
                        messages.next().now_or_never().flatten()
                    };
                    match next {
                        Some(Ok(m)) => batch.push(m),
                        Some(Err(e)) => failure = Some(e),
                        None => break,
                    }
                }
                if !batch.is_empty() {
                    match self.process(batch).await {
                        Ok(()) => backoff.reset(),
                        Err(Interrupt::Shutdown) => return Ok(()),
                        Err(Interrupt::LeaseLost | Interrupt::NewTerm) => {
                            drop(messages);
                            self.resume_under_lease().await?;
                            continue 'consume;
                        }
                        Err(Interrupt::Replay(reason)) => {
                            self.replay(&reason).await?;
                            continue 'consume;
                        }
                        Err(Interrupt::Gap { expected, got }) => {
                            warn!(
                                expected,
                                got,
                                "delivery skipped ahead; redelivering from the last applied sequence"
                            );
                            drop(messages);
                            if let Err(e) = self.store.reposition(expected).await {
                                let delay = backoff.next_delay();
                                warn!(error = %e, retry_in = ?delay, "cannot reposition the consumer");
                                self.pause(delay).await;
                            } else {
                                self.accept_gap = true;
                            }
                            continue 'consume;
                        }
                    }
                    if until.is_some_and(|t| self.applied >= t) {
                        return Ok(());
                    }
                }
                if let Some(e) = failure {
                    if e.kind() == MessagesErrorKind::ConsumerDeleted
                        || matches!(self.store.consumer_exists().await, Ok(false))
                    {
                        self.replay("the consumer was deleted").await?;
                    } else {
                        let delay = backoff.next_delay();
                        warn!(error = %e, retry_in = ?delay, "pulling from the consumer failed; pulling again");
                        self.pause(delay).await;
                    }
                    continue 'consume;
                }
            }
        }
    }

    /// Folds one batch (up to a gap, if there is one), writes its review
    /// values, and checkpoints when due.
    async fn process(&mut self, batch: Vec<jetstream::Message>) -> Result<(), Interrupt> {
        let stamp = self.set.tick();
        let mut events = Vec::with_capacity(batch.len());
        let mut last_seq = self.folded;
        let mut malformed = 0u64;
        let mut lag = None;
        let mut gap = None;
        // The last message taken from the batch: acking it acks all before it.
        let mut ack = None;
        for (i, message) in batch.iter().enumerate() {
            let Ok(info) = message.info() else {
                warn!(subject = %message.subject, "message without JetStream metadata; skipped");
                continue;
            };
            let seq = info.stream_sequence;
            if seq <= self.folded {
                ack = Some(i);
                continue; // redelivered, already folded
            }
            if seq != last_seq + 1 && !self.accept_gap {
                gap = Some(Interrupt::Gap {
                    expected: last_seq + 1,
                    got: seq,
                });
                break;
            }
            self.accept_gap = false;
            ack = Some(i);
            lag = Some(info.pending);
            last_seq = seq;
            match decode(message.subject.as_str(), &message.payload) {
                Ok(event) => events.push((seq, event)),
                Err(reason) => {
                    malformed += 1;
                    warn!(seq, subject = %message.subject, %reason, "skipping a message that is not a valid event");
                }
            }
        }
        let span = info_span!(
            "batch",
            first_seq = events.first().map(|e| e.0),
            last_seq,
            events = events.len()
        );
        async {
            let started = std::time::Instant::now();
            self.load_missing(&events, stamp).await?;
            let loaded = started.elapsed();
            let (mut applied, mut beyond) = (0u64, 0u64);
            for (seq, event) in &events {
                let _e = tracing::trace_span!("event", seq, subject = %subjects::event(event.country, event.session, event.event_type())).entered();
                let mut fold = self.set.apply(*seq, event);
                if fold == Applied::NeedsHistory {
                    let history = self.history(event.review_key(), *seq).await?;
                    fold = self.set.apply_with_history(*seq, event, &history);
                }
                match fold {
                    Applied::Changed => applied += 1,
                    Applied::NeedsHistory => unreachable!("the history was given"),
                    Applied::Already => {}
                    Applied::BeyondLimits => {
                        beyond += 1;
                        warn!(seq, review = %event.review_key(), "skipping an event past its review's limits");
                    }
                }
            }
            let folded = started.elapsed();
            self.write_reviews().await?;
            let written = started.elapsed();
            self.folded = last_seq;
            if let Some(i) = ack {
                self.unacked = batch.into_iter().nth(i);
            }
            self.shared.events_applied.fetch_add(applied, Ordering::Relaxed);
            self.shared.malformed_skipped.fetch_add(malformed, Ordering::Relaxed);
            self.shared.beyond_limits_skipped.fetch_add(beyond, Ordering::Relaxed);
            let caught_up = lag.is_none_or(|l| l == 0);
            if let Some(l) = lag {
                self.shared.lag.store(l, Ordering::Relaxed);
            }
            let progress = Progress {
                caught_up,
                gap: gap.is_some(),
                unwritten_events: self.folded - self.applied,
                since_checkpoint: self.checkpointed_at.elapsed(),
                checkpoint_cost: self.checkpoint_cost,
            };
            if checkpoint_due(&progress) {
                self.checkpoint().await?;
            }
            self.set.evict();
            debug!(
                applied,
                malformed,
                lag,
                load_ms = loaded.as_millis(),
                fold_ms = (folded - loaded).as_millis(),
                write_ms = (written - folded).as_millis(),
                total_ms = started.elapsed().as_millis(),
                cache_bytes = self.set.weight(),
                "batch folded"
            );
            gap.map_or(Ok(()), Err)
        }
        .instrument(span)
        .await
    }

    /// Writes the changed session and country values, then publishes the
    /// applied sequence and acks everything folded so far.
    async fn checkpoint(&mut self) -> Result<(), Interrupt> {
        let started = std::time::Instant::now();
        let buckets = self.store.buckets.clone();
        self.write_reviews().await?;
        self.write_dirty(|s| &mut s.sessions, &buckets.sessions)
            .await?;
        self.write_dirty(|s| &mut s.countries, &buckets.countries)
            .await?;
        self.checkpointed_at = std::time::Instant::now();
        self.checkpoint_cost = started.elapsed();
        if self.folded == self.applied && self.unacked.is_none() {
            return Ok(());
        }
        self.fenced()?;
        self.applied = self.folded;
        self.shared.set_applied(self.applied);
        // Acknowledged and confirmed: the ack floor is where the next
        // holder of the lease (or this one, restarted) starts, and a plain
        // ack still in flight when the process exits (the end of a rebuild)
        // would have it start from an older floor.
        if let Some(last) = self.unacked.take()
            && let Err(e) = last.double_ack().await
        {
            // Harmless: the messages are redelivered and skipped by last_seq.
            warn!(error = %e, "ack failed; the messages will be redelivered and skipped");
        }
        debug!(
            applied_seq = self.applied,
            ms = self.checkpoint_cost.as_millis(),
            "checkpoint"
        );
        Ok(())
    }

    /// Reads from KV the values this batch needs that exist there but are
    /// not cached.
    async fn load_missing(
        &mut self,
        events: &[(u64, Envelope)],
        stamp: u64,
    ) -> Result<(), Interrupt> {
        let buckets = self.store.buckets.clone();
        let values = self
            .fetch(&buckets.reviews, missing_keys(&self.set.reviews, events))
            .await?;
        insert_loaded(&mut self.set.reviews, values, stamp)?;
        let values = self
            .fetch(&buckets.sessions, missing_keys(&self.set.sessions, events))
            .await?;
        insert_loaded(&mut self.set.sessions, values, stamp)?;
        let values = self
            .fetch(
                &buckets.countries,
                missing_keys(&self.set.countries, events),
            )
            .await?;
        insert_loaded(&mut self.set.countries, values, stamp)
    }

    /// The review's events before `seq` (for a retraction), retrying until
    /// JetStream answers.
    async fn history(
        &mut self,
        key: ReviewKey,
        seq: u64,
    ) -> Result<Vec<(u64, Envelope)>, Interrupt> {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        loop {
            match self.store.review_history(key, seq).await {
                Ok(history) => return Ok(history),
                Err(e) => {
                    let delay = backoff.next_delay();
                    warn!(error = %e, review = %key, retry_in = ?delay, "reading a review's history failed; retrying");
                    self.pause(delay).await;
                    if self.is_stopping() {
                        return Err(Interrupt::Shutdown);
                    }
                }
            }
        }
    }

    /// Gets `keys` from `bucket` concurrently, retrying until JetStream answers.
    async fn fetch<K: Copy + std::fmt::Display>(
        &mut self,
        bucket: &kv::Store,
        keys: Vec<K>,
    ) -> Result<Vec<(K, Option<bytes::Bytes>)>, Interrupt> {
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
                    self.check_buckets().await?;
                    let delay = backoff.next_delay();
                    warn!(error = %e, retry_in = ?delay, "reading the read models failed; retrying");
                    self.pause(delay).await;
                    if self.is_stopping() {
                        return Err(Interrupt::Shutdown);
                    }
                }
            }
        }
    }

    /// Writes the dirty values of one table: rounds of concurrent puts
    /// (bounded by [`WRITE_CHUNK_VALUES`] / [`WRITE_CHUNK_BYTES`]), each
    /// retried until JetStream has all of it. Returns the keys written.
    async fn write_dirty<V: View>(
        &mut self,
        table: fn(&mut WorkingSet) -> &mut Table<V>,
        bucket: &kv::Store,
    ) -> Result<Vec<V::Key>, Interrupt> {
        let keys = table(&mut self.set).take_dirty();
        let mut written = Vec::with_capacity(keys.len());
        let mut chunk: Vec<(V::Key, bytes::Bytes)> = Vec::new();
        let mut bytes = 0;
        let last = keys.len().saturating_sub(1);
        for (i, key) in keys.into_iter().enumerate() {
            if let Some(json) = table(&mut self.set).serialize(&key) {
                bytes += json.len();
                chunk.push((key, json));
            }
            if i == last || chunk.len() >= WRITE_CHUNK_VALUES || bytes >= WRITE_CHUNK_BYTES {
                self.put_all(bucket, &chunk).await?;
                let t = table(&mut self.set);
                for (key, json) in &chunk {
                    t.mark_clean(*key, json.len());
                }
                written.extend(chunk.drain(..).map(|(key, _)| key));
                bytes = 0;
            }
        }
        Ok(written)
    }

    /// Writes the dirty review values and files them in the upcoming index
    /// (only now, so the index never runs ahead of the bucket).
    async fn write_reviews(&mut self) -> Result<(), Interrupt> {
        let bucket = self.store.buckets.reviews.clone();
        let written = self.write_dirty(|s| &mut s.reviews, &bucket).await?;
        if !self.index {
            return Ok(());
        }
        if let Ok(mut index) = self.shared.upcoming.write() {
            for key in &written {
                if let Some(view) = self.set.reviews.get(key) {
                    index.update(view);
                }
            }
        }
        Ok(())
    }

    /// Puts all values concurrently, retrying until JetStream has them all.
    /// A value larger than the server accepts can never be written: it is
    /// logged, counted (`values_refused` in STATS and `upr.query.status`)
    /// and left out, so the rest of the log keeps flowing.
    async fn put_all<K: std::fmt::Display>(
        &mut self,
        bucket: &kv::Store,
        values: &[(K, bytes::Bytes)],
    ) -> Result<(), Interrupt> {
        let max = self.store.max_value_bytes();
        let (values, refused): (Vec<_>, Vec<_>) = values.iter().partition(|(_, v)| v.len() <= max);
        for (key, value) in refused {
            error!(
                bucket = %bucket.name,
                key = %key,
                bytes = value.len(),
                limit = max,
                "a read-model value is larger than the server accepts; left unwritten"
            );
            self.shared.values_refused.fetch_add(1, Ordering::Relaxed);
        }
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        loop {
            self.fenced()?;
            let puts = values
                .iter()
                .map(|(k, v)| bucket.put(k.to_string(), v.clone()));
            match futures::future::try_join_all(puts).await {
                Ok(_) => return Ok(()),
                Err(e) => {
                    self.check_buckets().await?;
                    let delay = backoff.next_delay();
                    warn!(error = %e, retry_in = ?delay, "writing the read models failed; retrying");
                    self.pause(delay).await;
                    if self.is_stopping() {
                        return Err(Interrupt::Shutdown);
                    }
                }
            }
        }
    }

    /// After a failed write or read: a missing bucket means replay.
    async fn check_buckets(&self) -> Result<(), Interrupt> {
        match self.store.buckets_exist().await {
            Ok(false) => Err(Interrupt::Replay("a read-model bucket is gone".into())),
            _ => Ok(()),
        }
    }
}

/// The keys of `table` that `events` touch, exist in KV and are not cached.
fn missing_keys<V: View>(table: &Table<V>, events: &[(u64, Envelope)]) -> Vec<V::Key> {
    let mut keys: Vec<V::Key> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (_, event) in events {
        let key = V::key_of(event);
        if table.needs_load(&key) && seen.insert(key) {
            keys.push(key);
        }
    }
    keys
}

/// Caches values read from KV. A known key without a value, or a value that
/// is not a read model, means the bucket was tampered with: replay.
fn insert_loaded<V: View>(
    table: &mut Table<V>,
    values: Vec<(V::Key, Option<bytes::Bytes>)>,
    stamp: u64,
) -> Result<(), Interrupt> {
    for (key, value) in values {
        let Some(bytes) = value else {
            return Err(Interrupt::Replay(format!(
                "value {key} was deleted from its bucket"
            )));
        };
        match serde_json::from_slice::<V>(&bytes) {
            Ok(view) => table.insert_loaded(key, view, bytes.len(), stamp),
            Err(e) => {
                return Err(Interrupt::Replay(format!(
                    "value {key} is not a read model: {e}"
                )));
            }
        }
    }
    Ok(())
}

/// Where the loop stands after folding a batch, for [`checkpoint_due`].
#[derive(Debug, Clone, Copy)]
struct Progress {
    /// The consumer has nothing more pending.
    caught_up: bool,
    /// The batch stopped at a gap in the sequence.
    gap: bool,
    /// Events folded since the last checkpoint.
    unwritten_events: u64,
    /// Time since the last checkpoint.
    since_checkpoint: Duration,
    /// How long the last checkpoint took.
    checkpoint_cost: Duration,
}

/// Whether to write the session and country values and ack now. Always
/// once caught up (a live event is visible at once) and before a gap is
/// repaired (what came before it is acked); while catching up, at the
/// latest after [`CHECKPOINT_EVENTS`] events (below the consumer's
/// `max_ack_pending`), and otherwise every [`CHECKPOINT_INTERVAL`], or less
/// often when checkpoints are slow (large aggregates), so that at most a
/// tenth of the time goes to them.
fn checkpoint_due(p: &Progress) -> bool {
    p.caught_up
        || p.gap
        || p.unwritten_events >= CHECKPOINT_EVENTS
        || p.since_checkpoint >= CHECKPOINT_INTERVAL.max(p.checkpoint_cost * 9)
}

/// A stored message as an event ([`subjects::decode_stored`], one rule for
/// every consumer of the log), with the reason as text for the log.
///
/// # Errors
/// Why it is not an event.
pub fn decode(subject: &str, payload: &[u8]) -> Result<Envelope, String> {
    subjects::decode_stored(subject, payload).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Catching up, a moment after a quick checkpoint.
    fn busy() -> Progress {
        Progress {
            caught_up: false,
            gap: false,
            unwritten_events: 10_000,
            since_checkpoint: Duration::from_millis(300),
            checkpoint_cost: Duration::from_millis(20),
        }
    }

    #[test]
    fn a_live_event_or_a_gap_is_checkpointed_at_once() {
        assert!(!checkpoint_due(&busy()));
        assert!(checkpoint_due(&Progress {
            caught_up: true,
            ..busy()
        }));
        assert!(checkpoint_due(&Progress {
            gap: true,
            ..busy()
        }));
    }

    #[test]
    fn catching_up_checkpoints_every_interval_or_after_enough_events() {
        assert!(checkpoint_due(&Progress {
            since_checkpoint: CHECKPOINT_INTERVAL,
            ..busy()
        }));
        assert!(checkpoint_due(&Progress {
            unwritten_events: CHECKPOINT_EVENTS,
            ..busy()
        }));
        assert!(!checkpoint_due(&Progress {
            unwritten_events: CHECKPOINT_EVENTS - 1,
            ..busy()
        }));
    }

    #[test]
    fn slow_checkpoints_take_at_most_a_tenth_of_the_time() {
        let slow = Progress {
            checkpoint_cost: Duration::from_millis(500),
            ..busy()
        };
        assert!(!checkpoint_due(&Progress {
            since_checkpoint: Duration::from_millis(4_400),
            ..slow
        }));
        assert!(checkpoint_due(&Progress {
            since_checkpoint: Duration::from_millis(4_500),
            ..slow
        }));
    }
}
