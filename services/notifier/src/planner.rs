//! Follows `UPR_EVENTS` and keeps the timers in step with each review.
//!
//! For every `review_scheduled` / `review_rescheduled` it publishes one
//! JetStream message schedule per reminder ([`upr_domain::plan`]
//! decides which, with the event's `recorded_at` as the moment the date became
//! known). Each review and lead has its own schedule subject, so publishing
//! again replaces the schedule; cancel, hold and reschedule purge the review's
//! schedules first. The change notices for reschedule and cancel are
//! published here too, de-duplicated by their id.
//!
//! Effects come first, then the review's state with the event's sequence, then
//! the ack: a crash anywhere repeats the event, and every effect is idempotent
//! (a schedule is replaced by itself, a notice is de-duplicated, the state
//! write is skipped once `last_seq` has reached the event).
//!
//! Concurrency: one replica plans at a time (the consumer pins its priority
//! group to one puller; the others stand by). It applies many events at
//! once, but a review's events strictly in log order: each waits for the
//! one before it on the same review ([`ReviewOrder`]), a failing one is
//! retried in place rather than sent back (which would let the next one
//! overtake it), and before applying an event the planner reads from the
//! log any earlier event of the review its state has not taken in: one
//! delivered to a replica that died before acknowledging it, say. Order
//! therefore never depends on the order of delivery.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use async_nats::{
    HeaderMap, header,
    jetstream::{AckKind, Message, consumer::PullConsumer},
};
use futures::{FutureExt, future::Shared as SharedFuture};
use tokio::sync::oneshot;
use tracing::{Instrument, debug, info, info_span, warn};
use upr_domain::{
    ChangeNotice, Country, DEFAULT_LOCATION, Envelope, EnvelopeError, EventType, ReviewKey,
    ReviewState, ReviewStatus, Session, plan,
};
use upr_nats::{
    contract::{self, notifier as names},
    history,
    service::BoxError,
    stop::Stop,
};

use crate::{
    PULL_EXPIRES, PULL_HEARTBEAT, Shared, now,
    state::{self, StoredReview},
    stats::Stats,
};

/// Why an event could not be applied.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ApplyError {
    /// The message is not a valid event: logged, counted, terminated.
    #[error("malformed event: {0}")]
    Malformed(#[from] EnvelopeError),
    /// NATS failed or another replica got there first: retried.
    #[error(transparent)]
    Retry(BoxError),
}

fn retry(e: impl Into<BoxError>) -> ApplyError {
    ApplyError::Retry(e.into())
}

/// Consumes `UPR_EVENTS` until `stop` flips, finishing the events in hand.
pub async fn run(shared: Arc<Shared>, stop: Stop) {
    let open = || async {
        let consumer: PullConsumer = shared
            .events
            .create_consumer(names::events_consumer())
            .await?;
        Ok(consumer
            .stream()
            .group(names::PLANNER_GROUP)
            .expires(PULL_EXPIRES)
            .heartbeat(PULL_HEARTBEAT)
            .messages()
            .await?)
    };
    let order = Arc::new(ReviewOrder::default());
    let stopping = stop.clone();
    crate::follow("events", stop, names::PLANNER_IN_FLIGHT, open, |msg| {
        // Taken here, in delivery order, not when the task first runs.
        let turn = order.enter(&order, &msg);
        handle(&shared, msg, turn, stopping.clone())
    })
    .await;
    // A standby takes over now rather than after the pin times out.
    if let Err(e) = shared
        .events
        .unpin_consumer(names::EVENTS_CONSUMER, names::PLANNER_GROUP)
        .await
    {
        debug!(error = %e, "planner pin not released; a standby takes it when it times out");
    }
}

/// Keeps each review's events in log order while many reviews are planned
/// at once: every event waits for the previous one of its review.
#[derive(Default)]
struct ReviewOrder {
    /// Per review, the last event taken in: its sequence, and whether it was
    /// applied once it is done. Entries go when their last event is done.
    tails: Mutex<HashMap<ReviewKey, (u64, Done)>>,
}

/// Resolves when an event is done: `true` once applied (or skipped).
type Done = SharedFuture<oneshot::Receiver<bool>>;

/// One event's place in its review's order.
struct Turn {
    order: Arc<ReviewOrder>,
    /// The review and the event's sequence; `None` for a subject that names
    /// no review (such a message is skipped as malformed anyway).
    place: Option<(ReviewKey, u64)>,
    before: Option<Done>,
    done: Option<oneshot::Sender<bool>>,
}

impl ReviewOrder {
    fn enter(&self, this: &Arc<Self>, msg: &Message) -> Turn {
        let seq = msg.info().map_or(0, |i| i.stream_sequence);
        let Some((country, session, _)) = contract::subjects::parse_event(&msg.subject) else {
            return Turn {
                order: this.clone(),
                place: None,
                before: None,
                done: None,
            };
        };
        let key = ReviewKey { country, session };
        let (done, finished) = oneshot::channel();
        let mut tails = self
            .tails
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let before = tails
            .insert(key, (seq, finished.shared()))
            .map(|(_, before)| before);
        Turn {
            order: this.clone(),
            place: Some((key, seq)),
            before,
            done: Some(done),
        }
    }
}

impl Turn {
    /// Waits for the review's previous event; `false` when it was left
    /// unapplied (shutting down), so this one must be left too.
    async fn wait(&mut self) -> bool {
        match self.before.take() {
            Some(before) => before.await.unwrap_or(false),
            None => true,
        }
    }

    /// Lets the review's next event go (`applied`) or leaves it too.
    fn finish(mut self, applied: bool) {
        if let Some(done) = self.done.take() {
            let _ = done.send(applied);
        }
        if let Some((key, seq)) = self.place {
            let mut tails = self
                .order
                .tails
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if tails.get(&key).is_some_and(|(last, _)| *last == seq) {
                tails.remove(&key);
            }
        }
    }
}

/// How long a failing event waits before it is tried again.
const RETRY_PAUSE: Duration = Duration::from_secs(1);

async fn handle(shared: &Shared, msg: Message, mut turn: Turn, stop: Stop) {
    let seq = match msg.info() {
        Ok(info) => info.stream_sequence,
        Err(e) => {
            warn!(subject = %msg.subject, error = %e, "event without JetStream metadata; skipped");
            turn.finish(true);
            return;
        }
    };
    let span = info_span!("event", subject = %msg.subject, seq);
    async {
        if !turn.wait().await {
            // The review's previous event is unapplied: this one waits for
            // its redelivery too (no ack).
            turn.finish(false);
            return;
        }
        loop {
            match apply(shared, &msg, seq).await {
                Ok(()) => {
                    if let Err(e) = msg.ack().await {
                        warn!(error = %e, "ack failed; the event will be applied again (harmless)");
                    }
                    turn.finish(true);
                    return;
                }
                Err(ApplyError::Malformed(why)) => {
                    warn!(why = %why, "malformed event skipped");
                    Stats::add(&shared.stats.malformed, 1);
                    if let Err(e) = msg.ack_with(AckKind::Term).await {
                        warn!(error = %e, "term failed");
                    }
                    turn.finish(true);
                    return;
                }
                Err(ApplyError::Retry(why)) if stop.is_stopped() => {
                    warn!(why = %why, "event not applied; left for redelivery");
                    turn.finish(false);
                    return;
                }
                Err(ApplyError::Retry(why)) => {
                    // In place: sent back, the review's next event would overtake it.
                    warn!(why = %why, "event not applied; retrying in 1 s");
                    let _ = msg.ack_with(AckKind::Progress).await;
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
            }
        }
    }
    .instrument(span)
    .await;
}

/// Events that change a review's reminders; the others are skipped.
fn bears_on_reminders(ty: EventType) -> bool {
    !matches!(
        ty,
        EventType::SideEventHeld | EventType::ReportPublished | EventType::OutcomeAdopted
    )
}

/// The envelope of a message of the log, if it is an event
/// ([`contract::subjects::decode_stored`], the one rule for every consumer).
fn decode(subject: &str, payload: &[u8]) -> Result<Envelope, ApplyError> {
    Ok(contract::subjects::decode_stored(subject, payload)?)
}

async fn apply(shared: &Shared, msg: &Message, seq: u64) -> Result<(), ApplyError> {
    let event = decode(&msg.subject, &msg.payload)?;
    if !bears_on_reminders(event.event_type()) {
        return Ok(());
    }
    let (country, session) = (event.country, event.session);
    loop {
        let (stored, revision) = state::load_review(&shared.kv, country, session)
            .await
            .map_err(retry)?;
        let stored = stored.unwrap_or_default();
        if stored.last_seq >= seq {
            debug!("already applied");
            return Ok(());
        }
        match earlier_unapplied(shared, country, session, stored.last_seq, seq).await? {
            Some((earlier_seq, earlier)) => {
                info!(
                    earlier_seq,
                    "an earlier event of the review was not applied; applying it first"
                );
                apply_event(shared, &earlier, earlier_seq, stored, revision).await?;
            }
            None => return apply_event(shared, &event, seq, stored, revision).await,
        }
    }
}

/// The first event of the review after `applied` and before `seq` that
/// bears on reminders, read from the log. Usually there is none, and the
/// first answer is the event in hand itself. The sender asks too (with
/// `seq` = `u64::MAX`) before sending a reminder, so one is never sent for
/// a review whose later change the planner has not applied yet.
pub(crate) async fn earlier_unapplied(
    shared: &Shared,
    country: Country,
    session: Session,
    applied: u64,
    seq: u64,
) -> Result<Option<(u64, Envelope)>, ApplyError> {
    let key = ReviewKey { country, session };
    let mut events = history::Events::between(&shared.events, key, applied + 1, seq);
    // Anything written around ingest is skipped, as everywhere.
    while let Some((earlier_seq, event)) = events.next().await.map_err(retry)? {
        if bears_on_reminders(event.event_type()) {
            return Ok(Some((earlier_seq, event)));
        }
    }
    Ok(None)
}

/// Applies one event to the review's `stored` state (read at `revision`):
/// timers, notices, then the state with `seq`.
async fn apply_event(
    shared: &Shared,
    event: &Envelope,
    seq: u64,
    stored: StoredReview,
    revision: u64,
) -> Result<(), ApplyError> {
    let ty = event.event_type();
    let (country, session) = (event.country, event.session);
    let before = stored.state;
    let mut review = before.clone();
    let taken_back = review.apply(event);
    if ty == EventType::EventRetracted && taken_back.is_none() {
        // A side event, or nothing valid: reminders stay as they are.
        return write_state(shared, event, review, seq, revision).await;
    }

    // Whatever the event, the review's old timers go (a fresh review has none).
    if revision != 0 {
        shared
            .timers
            .purge()
            .filter(names::review_timers(country, session))
            .await
            .map_err(retry)?;
    }
    // A scheduling, a reschedule, or a retraction that brought a date back:
    // the reminders of the date in force, planned from when it was
    // recorded, as if the retracted event had never been.
    let replan = matches!(
        ty,
        EventType::ReviewScheduled | EventType::ReviewRescheduled | EventType::EventRetracted
    );
    if let (true, Some(ReviewStatus::Scheduled), Some(date)) =
        (replan, review.status(), review.scheduled_for())
    {
        let location = review.location().unwrap_or(DEFAULT_LOCATION);
        let scheduled_at = review.scheduled_at().unwrap_or(event.recorded_at);
        let reminders = plan(
            country,
            session,
            date,
            location,
            &shared.leads,
            scheduled_at,
        );
        let skipped = shared.leads.len() - reminders.len();
        let mut acks = Vec::with_capacity(reminders.len());
        for r in &reminders {
            let mut headers = HeaderMap::new();
            // Early: the sender holds it until due (TIMER_EARLY).
            headers.insert(
                header::NATS_SCHEDULE,
                format!("@at {}", r.timer_at()).as_str(),
            );
            headers.insert(
                header::NATS_SCHEDULE_TARGET,
                names::due(country, session, &r.lead).as_str(),
            );
            let body = serde_json::to_vec(r).map_err(retry)?;
            let ack = shared
                .js
                .publish_with_headers(
                    names::schedule(country, session, &r.lead),
                    headers,
                    body.into(),
                )
                .await
                .map_err(retry)?;
            acks.push(ack);
        }
        for ack in acks {
            ack.await.map_err(retry)?;
        }
        Stats::add(&shared.stats.skipped, skipped as u64);
        info!(planned = reminders.len(), skipped, scheduled_for = %date, "reminders planned");
    }
    let notice = match &taken_back {
        Some(entry) => ChangeNotice::corrected(event, entry, &before, &review, now()),
        None => ChangeNotice::for_event(event, before.scheduled_for(), now()),
    };
    if let Some(notice) = notice {
        publish_notice(shared, &notice).await?;
    }
    write_state(shared, event, review, seq, revision).await
}

/// Stores the review's state as applied up to `seq`, if no other replica
/// wrote it since it was read at `revision`.
async fn write_state(
    shared: &Shared,
    event: &Envelope,
    state: ReviewState,
    seq: u64,
    revision: u64,
) -> Result<(), ApplyError> {
    let value = StoredReview {
        state,
        last_seq: seq,
    }
    .to_bytes();
    let key = state::review_key(event.country, event.session);
    let written = if revision == 0 {
        shared.kv.create(&key, value).await.map(drop).map_err(retry)
    } else {
        shared
            .kv
            .update(&key, value, revision)
            .await
            .map(drop)
            .map_err(retry)
    };
    // A lost compare-and-set means another replica applied something to this
    // review meanwhile (only after this one overran its ack wait): retry, and
    // `last_seq` will tell whether this event still needs applying.
    written
}

async fn publish_notice(shared: &Shared, notice: &ChangeNotice) -> Result<(), ApplyError> {
    let subject = contract::subjects::notify(notice.kind(), notice.country());
    let mut headers = HeaderMap::new();
    headers.insert(header::NATS_MESSAGE_ID, notice.id());
    let ack = shared
        .js
        .publish_with_headers(subject, headers, notice.to_json().into())
        .await
        .map_err(retry)?
        .await
        .map_err(retry)?;
    info!(
        id = notice.id(),
        duplicate = ack.duplicate,
        "change notice published"
    );
    Ok(())
}
