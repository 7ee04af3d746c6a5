//! Sends the reminders whose timer fired.
//!
//! Timers are set [`upr_domain::TIMER_EARLY`] before the due time,
//! because the server's scheduler fires only every 250 ms; a fired timer is
//! held here until its reminder is due.
//!
//! A schedule that comes due makes JetStream store its payload (the planned
//! [`Reminder`]) on `upr.notifier.timer.due.<C>.<S>.<lead>`; this module's
//! durable consumer hands each such message to one replica. Before
//! announcing, it checks the reminder against the review as it stands now
//! (still scheduled, same date), its sent-mark, and the clock
//! ([`classify`]: on time, late, or past the review date).
//!
//! Exactly once: the notice is published with `Nats-Msg-Id` = the reminder
//! id into `UPR_NOTIFICATIONS` (a week's de-duplication window), then the
//! sent-mark is written, then the timer message is deleted and acked. A crash
//! between any two steps redelivers the timer (to this or another replica,
//! after the consumer's ack wait); the sent-mark or the server's
//! de-duplication stops the second copy from being stored.

use std::sync::Arc;

use async_nats::{
    HeaderMap, header,
    jetstream::{AckKind, Message, consumer::PullConsumer, kv::CreateErrorKind},
};
use tracing::{Instrument, debug, info, info_span, warn};
use upr_domain::{Firing, NoticeKind, Reminder, Timestamp, classify};
use upr_nats::{
    contract::{self, notifier as names},
    stop::Stop,
};

use crate::{
    PULL_EXPIRES, PULL_HEARTBEAT, SEND_CONCURRENCY, Shared, now,
    state::{self, SentMark},
    stats::Stats,
    timing::Steps,
};

/// Consumes fired timers until `stop` flips, finishing the one in hand.
pub async fn run(shared: Arc<Shared>, stop: Stop) {
    let sending = tokio::sync::Semaphore::new(SEND_CONCURRENCY);
    let open = || async {
        let consumer: PullConsumer = shared
            .timers
            .create_consumer(names::timers_consumer())
            .await?;
        // Pull in batches of those handled at once; the stream pulls again
        // as they are taken, up to the timers in hand.
        Ok(consumer
            .stream()
            .max_messages_per_batch(SEND_CONCURRENCY)
            .expires(PULL_EXPIRES)
            .heartbeat(PULL_HEARTBEAT)
            .messages()
            .await?)
    };
    crate::follow("timers", stop, names::TIMERS_IN_HAND, open, |msg| {
        handle(&shared, &sending, msg)
    })
    .await;
}

/// What became of one fired timer.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// Published now, stamped `sent_at`.
    Sent { late: bool, sent_at: Timestamp },
    /// Its sent-mark exists: published before.
    AlreadySent,
    /// The review moved, was cancelled or held since the timer was set.
    Stale,
    /// The review date has come: a reminder is pointless now.
    TooLate,
    /// The log holds a change of the review the planner has not applied
    /// yet (it is catching up after downtime): asked again shortly.
    PlannerBehind,
}

/// How long a reminder waits for the planner to catch up before it is
/// checked again.
const PLANNER_WAIT: std::time::Duration = std::time::Duration::from_millis(200);

/// Handles one fired timer, publishing under one of `sending`'s permits.
async fn handle(shared: &Shared, sending: &tokio::sync::Semaphore, msg: Message) {
    let received = now();
    let (seq, stored) = match msg.info() {
        Ok(info) => (
            info.stream_sequence,
            Timestamp::from_offset_datetime(info.published).unwrap_or(received),
        ),
        Err(e) => {
            warn!(subject = %msg.subject, error = %e, "timer without JetStream metadata; skipped");
            return;
        }
    };
    let span = info_span!("timer", subject = %msg.subject, seq);
    async {
        let reminder: Reminder = match serde_json::from_slice(&msg.payload) {
            Ok(r) => r,
            Err(e) => {
                warn!(error = %e, "unreadable timer message; dropped");
                Stats::add(&shared.stats.malformed, 1);
                finish(shared, &msg, seq, AckKind::Term).await;
                return;
            }
        };
        // The timer fires a little early (TIMER_EARLY): hold it until due,
        // then check the review as it stands at that moment.
        tokio::time::sleep(reminder.wait(now())).await;
        // Never closed, so a permit always comes.
        let permit = sending.acquire().await.ok();
        let outcome = deliver(shared, &reminder).await;
        drop(permit);
        match outcome {
            Ok(Outcome::PlannerBehind) => {
                debug!(id = %reminder.id, "the planner has not applied a later change of the review; waiting");
                Stats::add(&shared.stats.held, 1);
                let _ = msg.ack_with(AckKind::Nak(Some(PLANNER_WAIT))).await;
            }
            Ok(outcome) => {
                match outcome {
                    Outcome::Sent { late, sent_at } => {
                        Stats::add(&shared.stats.sent, 1);
                        shared
                            .stats
                            .timed(Steps::of(&reminder, stored, received, sent_at));
                        if late {
                            Stats::add(&shared.stats.late, 1);
                        }
                    }
                    Outcome::Stale | Outcome::TooLate => Stats::add(&shared.stats.skipped, 1),
                    Outcome::AlreadySent | Outcome::PlannerBehind => {}
                }
                info!(id = %reminder.id, ?outcome, "reminder handled");
                finish(shared, &msg, seq, AckKind::Ack).await;
            }
            Err(e) => {
                warn!(id = %reminder.id, error = %e, "reminder not handled; retrying in 1 s");
                let _ = msg
                    .ack_with(AckKind::Nak(Some(std::time::Duration::from_secs(1))))
                    .await;
            }
        }
    }
    .instrument(span)
    .await;
}

/// Deletes the handled timer message (so the stream holds only pending
/// reminders) and acks it. A failed delete only leaves a stale message
/// behind, replaced by the next timer of the same subject.
async fn finish(shared: &Shared, msg: &Message, seq: u64, ack: AckKind) {
    if let Err(e) = shared.timers.delete_message(seq).await {
        debug!(error = %e, "timer message already gone");
    }
    if let Err(e) = msg.ack_with(ack).await {
        warn!(error = %e, "ack failed; the timer will come back and find its sent-mark");
    }
}

async fn deliver(shared: &Shared, reminder: &Reminder) -> Result<Outcome, async_nats::Error> {
    let (review, _) = state::load_review(&shared.kv, reminder.country, reminder.session).await?;
    let applied = review.as_ref().map_or(0, |r| r.last_seq);
    if !review.is_some_and(|r| r.still_wants(reminder)) {
        return Ok(Outcome::Stale);
    }
    let unapplied = crate::planner::earlier_unapplied(
        shared,
        reminder.country,
        reminder.session,
        applied,
        u64::MAX,
    )
    .await?;
    if unapplied.is_some() {
        return Ok(Outcome::PlannerBehind);
    }
    let mark_key = state::sent_key(reminder);
    if shared.kv.entry(mark_key.as_str()).await?.is_some() {
        return Ok(Outcome::AlreadySent);
    }
    // The server fires at the due time by its clock; never stamp a reminder
    // as sent before it was due should this host's clock lag a little.
    let sent_at = now().max(reminder.due_at);
    let late = match classify(reminder, sent_at) {
        Firing::Never => return Ok(Outcome::TooLate),
        Firing::OnTime => false,
        Firing::Late => true,
    };
    let notice = reminder.notice(sent_at, late);
    let mut headers = HeaderMap::new();
    headers.insert(header::NATS_MESSAGE_ID, reminder.id.as_str());
    let ack = shared
        .js
        .publish_with_headers(
            contract::subjects::notify(NoticeKind::Reminder, reminder.country),
            headers,
            notice.to_json().into(),
        )
        .await?
        .await?;
    let mark = serde_json::to_vec(&SentMark { sent_at, late })?;
    match shared.kv.create(mark_key.as_str(), mark.into()).await {
        Ok(_) => {}
        Err(e) if e.kind() == CreateErrorKind::AlreadyExists => {}
        Err(e) => return Err(e.into()),
    }
    if ack.duplicate {
        // Published before a crash that came before the sent-mark.
        return Ok(Outcome::AlreadySent);
    }
    let lateness_ms = sent_at.since(reminder.due_at).whole_milliseconds();
    debug!(lateness_ms, "reminder published");
    Ok(Outcome::Sent { late, sent_at })
}
