//! The consumer loop: pull a batch ([`crate::batcher`]), fold it into the
//! working set ([`crate::cache`]), write what went cold and, at each
//! checkpoint, everything changed ([`crate::writer`], when: [`crate::policy`]),
//! then publish the applied sequence and ack (ack-all on the last message).
//!
//! Checkpoints happen after every batch once caught up (so a live event is
//! visible at once), and about every second while catching up: session and
//! country values aggregate hundreds of reviews, and a review's events are
//! spread over thousands of others, so writing values when they go cold or
//! at a checkpoint rather than after every batch is what makes a rebuild
//! fast.
//!
//! Exactly-once effect: a value's `last_seq` is written with the value, and
//! the fold skips any sequence at or below it, so events redelivered after a
//! crash before the ack change nothing where they were already written. The
//! ack only moves the consumer past what is durable in all three buckets.

use std::{sync::Arc, sync::atomic::Ordering, time::Duration};

use async_nats::jetstream::{
    self,
    consumer::pull::{MessagesError, MessagesErrorKind},
};
use tracing::{Instrument, debug, info, info_span, warn};
use upr_domain::{CalendarEntry, CountryView, Envelope, ReviewKey, ReviewView, SessionView};
use upr_nats::{contract::subjects, retry::Backoff, service::BoxError, stop::Stop};

use crate::{
    batcher::{Batcher, Pulled},
    cache::{Applied, Table, View, WorkingSet},
    lease::Lease,
    policy::{self, IDLE_CHECKPOINT, Progress, checkpoint_due},
    state::Shared,
    store::Store,
    writer::{Bucket, Fence, Round, Writer},
};

/// Most values written in one round of concurrent puts.
const WRITE_CHUNK_VALUES: usize = 2048;
/// Most JSON bytes written in one round of concurrent puts, which bounds the
/// memory a write round needs however large the values are.
const WRITE_CHUNK_BYTES: usize = 4 * 1024 * 1024;

/// Why a batch could not be completed.
#[derive(Debug)]
pub enum Interrupt {
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
    /// JetStream did not answer a pull or the consumer lookup: bind again
    /// after a pause.
    Unavailable {
        /// What could not be done.
        doing: &'static str,
        /// Why.
        source: BoxError,
    },
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
    stopping: Stop,
    /// Reads and writes the buckets, fenced by the lease.
    writer: Writer,
    /// Whether acks wait for the server's confirmation (a run that ends:
    /// `rebuild`, or the last checkpoint of a clean stop).
    confirm_acks: bool,
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
        stopping: Stop,
    ) -> Self {
        Self {
            writer: Writer::new(store.clone(), shared.clone(), stopping.clone()),
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
            confirm_acks: false,
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
        self.writer.fence = Fence::under(lease);
    }

    /// Reads what the buckets already hold: the keys that exist, the
    /// upcoming index, and the consumer's ack floor as the applied sequence.
    ///
    /// # Errors
    /// JetStream unreachable.
    pub async fn load(&mut self) -> Result<(), BoxError> {
        self.writer.abandon();
        self.writer.fence.reload();
        self.set.clear();
        let mut index = crate::upcoming::UpcomingIndex::default();
        let reviews = &mut self.set.reviews;
        let mut corrupt = 0u64;
        let bucket = upr_nats::contract::REVIEWS_BUCKET;
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
            .scan(upr_nats::contract::SESSIONS_BUCKET, true, |key, _| {
                if let Some(k) = SessionView::parse_key(key) {
                    sessions.mark_known(k);
                }
            })
            .await?;
        let countries = &mut self.set.countries;
        self.store
            .scan(upr_nats::contract::COUNTRIES_BUCKET, true, |key, _| {
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
        if self.writer.fence.check().is_err() {
            return Err("the projection lease lapsed; not emptying the read models".into());
        }
        self.writer.abandon();
        warn!(
            reason,
            "emptying the read models and replaying the log from sequence 1"
        );
        // JetStream may still be recovering (right after a server restart):
        // keep trying rather than give up the service.
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        while let Err(e) = self.store.reset().await {
            if self.stopping.is_stopped() {
                return Err(e);
            }
            let delay = backoff.next_delay();
            warn!(error = %e, retry_in = ?delay, "cannot reset the read models yet");
            self.stopping.pause(delay).await;
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

    /// After the lease lapsed or was taken again: waits until it is valid,
    /// then reads the working set and the applied sequence again, since
    /// another instance may have written meanwhile and what this one had
    /// folded but not written is redelivered.
    async fn resume_under_lease(&mut self) -> Result<(), BoxError> {
        warn!("writes paused: the lease lapsed or was taken again; reloading once it is valid");
        loop {
            if self.stopping.is_stopped() {
                return Ok(());
            }
            if self.writer.fence.lease_valid() {
                match self.take_over().await {
                    Ok(()) => return Ok(()),
                    Err(e) => warn!(error = %e, "cannot reload the read models yet"),
                }
            }
            self.stopping.pause(Duration::from_millis(200)).await;
        }
    }

    /// Consumes until the service stops or, with `until`, until every
    /// sequence up to `until` is applied.
    ///
    /// # Errors
    /// Only when the read models cannot be reset (JetStream refusing);
    /// transient failures are retried.
    pub async fn run(&mut self, until: Option<u64>) -> Result<(), BoxError> {
        self.confirm_acks = until.is_some();
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        'bind: loop {
            if self.stopping.is_stopped() || until.is_some_and(|t| self.applied >= t) {
                return Ok(());
            }
            let interrupt = match self.bind().await {
                Err(i) => i,
                Ok(mut batcher) => loop {
                    let idle = (self.folded > self.applied).then_some(IDLE_CHECKPOINT);
                    match batcher.next(idle, &self.stopping).await {
                        Pulled::Batch(batch, failure) => {
                            if let Err(i) = self.process(batch).await {
                                break i;
                            }
                            backoff.reset();
                            if until.is_some_and(|t| self.applied >= t) {
                                return Ok(());
                            }
                            if let Some(e) = failure {
                                break self.pull_failed(e).await;
                            }
                        }
                        Pulled::Idle => {
                            if let Err(i) = self.checkpoint().await {
                                break i;
                            }
                        }
                        Pulled::Failed(e) => break self.pull_failed(e).await,
                        // Bound again at once: nothing failed.
                        Pulled::Ended => continue 'bind,
                        Pulled::Stopping => {
                            // Finish the work in hand: write it and ack it.
                            self.confirm_acks = true;
                            let _ = self.checkpoint().await;
                            return Ok(());
                        }
                    }
                },
            };
            // The pull subscription is gone by now: nothing more is
            // delivered to this instance while it recovers.
            if self.recover(interrupt, &mut backoff).await? {
                return Ok(());
            }
        }
    }

    /// A pull subscription to the consumer; a consumer that is gone means
    /// replay.
    async fn bind(&mut self) -> Result<Batcher, Interrupt> {
        let consumer = match self.store.consumer().await {
            Ok(c) => c,
            Err(e) => {
                return Err(match self.store.consumer_exists().await {
                    Ok(false) => Interrupt::Replay("the consumer is gone".into()),
                    _ => Interrupt::Unavailable {
                        doing: "binding to the consumer",
                        source: e,
                    },
                });
            }
        };
        Batcher::bind(&consumer, self.max_batch)
            .await
            .map_err(|e| Interrupt::Unavailable {
                doing: "pulling from the consumer",
                source: e,
            })
    }

    /// What a failed pull means.
    async fn pull_failed(&self, e: MessagesError) -> Interrupt {
        if e.kind() == MessagesErrorKind::ConsumerDeleted
            || matches!(self.store.consumer_exists().await, Ok(false))
        {
            Interrupt::Replay("the consumer was deleted".into())
        } else {
            Interrupt::Unavailable {
                doing: "pulling from the consumer",
                source: e.into(),
            }
        }
    }

    /// Handles why a batch stopped; `true` when the service should stop.
    async fn recover(
        &mut self,
        interrupt: Interrupt,
        backoff: &mut Backoff,
    ) -> Result<bool, BoxError> {
        match interrupt {
            Interrupt::Shutdown => return Ok(true),
            Interrupt::LeaseLost | Interrupt::NewTerm => self.resume_under_lease().await?,
            Interrupt::Replay(reason) => self.replay(&reason).await?,
            Interrupt::Gap { expected, got } => {
                warn!(
                    expected,
                    got, "delivery skipped ahead; redelivering from the last applied sequence"
                );
                if let Err(e) = self.store.reposition(expected).await {
                    let delay = backoff.next_delay();
                    warn!(error = %e, retry_in = ?delay, "cannot reposition the consumer");
                    self.stopping.pause(delay).await;
                } else {
                    self.accept_gap = true;
                }
            }
            Interrupt::Unavailable { doing, source } => {
                let delay = backoff.next_delay();
                warn!(doing, error = %source, retry_in = ?delay, "JetStream did not answer; pulling again after a pause");
                self.stopping.pause(delay).await;
            }
        }
        Ok(false)
    }

    /// Folds one batch (up to a gap, if there is one), writes the review
    /// values that went cold, and checkpoints when due.
    #[expect(
        clippy::too_many_lines,
        reason = "the batch fold in the order of its steps (metadata, sequence checks, fold, cold writes, checkpoint), which is the exactly-once argument"
    )]
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
            match subjects::decode_stored(message.subject.as_str(), &message.payload) {
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
            } else {
                let cold =
                    policy::reviews_touched_before(stamp, self.set.reviews.dirty_len());
                let mut round = Round::default();
                self.write_reviews(&mut round, cold).await?;
                self.send(round).await?;
            }
            self.set.evict();
            debug!(
                applied,
                malformed,
                lag,
                load_ms = loaded.as_millis(),
                fold_ms = folded.saturating_sub(loaded).as_millis(),
                write_ms = started.elapsed().saturating_sub(folded).as_millis(),
                cache_bytes = self.set.weight(),
                "batch folded"
            );
            gap.map_or(Ok(()), Err)
        }
        .instrument(span)
        .await
    }

    /// Writes every changed value, waits until JetStream has all of them,
    /// then publishes the applied sequence and acks everything folded so
    /// far.
    async fn checkpoint(&mut self) -> Result<(), Interrupt> {
        let started = std::time::Instant::now();
        let mut round = Round::default();
        self.write_reviews(&mut round, u64::MAX).await?;
        let sessions = self.set.sessions.take_dirty();
        self.write_values(
            &mut round,
            |s| &mut s.sessions,
            Bucket::Sessions,
            sessions,
            |_| None,
        )
        .await?;
        let countries = self.set.countries.take_dirty();
        self.write_values(
            &mut round,
            |s| &mut s.countries,
            Bucket::Countries,
            countries,
            |_| None,
        )
        .await?;
        self.send(round).await?;
        self.writer.settle().await?;
        self.checkpointed_at = std::time::Instant::now();
        self.checkpoint_cost = started.elapsed();
        if self.folded == self.applied && self.unacked.is_none() {
            return Ok(());
        }
        self.writer.fence.check()?;
        self.applied = self.folded;
        self.shared.set_applied(self.applied);
        // The ack floor is where the next holder of the lease (or this one,
        // restarted) starts. A plain ack lost at exit only means events
        // delivered again and skipped; but a run that ends here (`rebuild`,
        // a clean stop) confirms it, or the next start would report an
        // older applied sequence. Live, the next batch need not wait for
        // the confirmation.
        let acked = match self.unacked.take() {
            Some(last) if self.confirm_acks => last.double_ack().await,
            Some(last) => last.ack().await,
            None => Ok(()),
        };
        if let Err(e) = acked {
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
    /// not cached (after the write in flight has landed, so a value evicted
    /// while its write was on the way is read back as written).
    async fn load_missing(
        &mut self,
        events: &[(u64, Envelope)],
        stamp: u64,
    ) -> Result<(), Interrupt> {
        let reviews = missing_keys(&self.set.reviews, events);
        let sessions = missing_keys(&self.set.sessions, events);
        let countries = missing_keys(&self.set.countries, events);
        if reviews.is_empty() && sessions.is_empty() && countries.is_empty() {
            return Ok(());
        }
        self.writer.settle().await?;
        let buckets = self.store.buckets.clone();
        let values = self.writer.fetch(&buckets.reviews, reviews).await?;
        insert_loaded(&mut self.set.reviews, values, stamp)?;
        let values = self.writer.fetch(&buckets.sessions, sessions).await?;
        insert_loaded(&mut self.set.sessions, values, stamp)?;
        let values = self.writer.fetch(&buckets.countries, countries).await?;
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
                    if self.stopping.pause(delay).await {
                        return Err(Interrupt::Shutdown);
                    }
                }
            }
        }
    }

    /// Serialises the values of `keys` into `round`, sending it whenever it
    /// reaches [`WRITE_CHUNK_VALUES`] / [`WRITE_CHUNK_BYTES`] (each round
    /// goes once the one before has landed). `file` gives what the upcoming
    /// index learns of a value.
    async fn write_values<V: View>(
        &mut self,
        round: &mut Round,
        table: fn(&mut WorkingSet) -> &mut Table<V>,
        bucket: Bucket,
        keys: Vec<V::Key>,
        file: impl Fn(&V) -> Option<(ReviewKey, Option<CalendarEntry>)>,
    ) -> Result<(), Interrupt> {
        for key in keys {
            let t = table(&mut self.set);
            if let Some(json) = t.serialize(&key) {
                t.mark_clean(key, json.len());
                if let Some((key, entry)) = t.get(&key).and_then(&file) {
                    round.file(key, entry);
                }
                round.push(bucket, key.to_string(), json);
            }
            if round.reaches(WRITE_CHUNK_VALUES, WRITE_CHUNK_BYTES) {
                self.writer.send(std::mem::take(round)).await?;
            }
        }
        Ok(())
    }

    /// Serialises the changed review values last touched before batch
    /// `touched_before` (`u64::MAX`: all) into `round`; they go into the
    /// upcoming index once written.
    async fn write_reviews(
        &mut self,
        round: &mut Round,
        touched_before: u64,
    ) -> Result<(), Interrupt> {
        let keys = self.set.reviews.take_dirty_touched_before(touched_before);
        let index = self.index;
        self.write_values(
            round,
            |s| &mut s.reviews,
            Bucket::Reviews,
            keys,
            |view: &ReviewView| index.then(|| (view.key(), CalendarEntry::of(view))),
        )
        .await
    }

    /// Sends what `round` holds.
    async fn send(&mut self, round: Round) -> Result<(), Interrupt> {
        if round.is_empty() {
            return Ok(());
        }
        self.writer.send(round).await
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
