//! Follows `UPR_EVENTS` and keeps the timers in step with each review.
//!
//! For every `review_scheduled` / `review_rescheduled` it publishes one
//! JetStream message schedule per reminder ([`upr_shared::domain::plan`]
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

use std::sync::Arc;

use async_nats::{
    HeaderMap, header,
    jetstream::{AckKind, Message, consumer::PullConsumer},
};
use tokio::sync::watch;
use tracing::{Instrument, debug, info, info_span, warn};
use upr_shared::{
    contract::{self, notifier as names},
    domain::{
        ChangeNotice, DEFAULT_LOCATION, Envelope, EventType, ReviewState, ReviewStatus, plan,
    },
};

use crate::{
    PULL_EXPIRES, PULL_HEARTBEAT, Shared, now,
    state::{self, StoredReview},
    stats::Stats,
};

/// Why an event could not be applied.
#[derive(Debug, thiserror::Error)]
enum ApplyError {
    /// The message is not a valid event: logged, counted, terminated.
    #[error("malformed event: {0}")]
    Malformed(String),
    /// NATS failed or another replica got there first: retried.
    #[error("{0}")]
    Retry(String),
}

fn retry(e: impl std::fmt::Display) -> ApplyError {
    ApplyError::Retry(e.to_string())
}

/// Consumes `UPR_EVENTS` until `stop` flips, finishing the event in hand.
pub async fn run(shared: Arc<Shared>, stop: watch::Receiver<bool>) {
    let open = || async {
        let consumer: PullConsumer = shared
            .events
            .create_consumer(names::events_consumer())
            .await?;
        Ok(consumer
            .stream()
            .expires(PULL_EXPIRES)
            .heartbeat(PULL_HEARTBEAT)
            .messages()
            .await?)
    };
    crate::follow("events", stop, 1, open, |msg| handle(&shared, msg)).await;
}

async fn handle(shared: &Shared, msg: Message) {
    let seq = match msg.info() {
        Ok(info) => info.stream_sequence,
        Err(e) => {
            warn!(subject = %msg.subject, error = %e, "event without JetStream metadata; skipped");
            return;
        }
    };
    let span = info_span!("event", subject = %msg.subject, seq);
    async {
        match apply(shared, &msg, seq).await {
            Ok(()) => {
                if let Err(e) = msg.ack().await {
                    warn!(error = %e, "ack failed; the event will be applied again (harmless)");
                }
            }
            Err(ApplyError::Malformed(why)) => {
                warn!(why, "malformed event skipped");
                Stats::add(&shared.stats.malformed, 1);
                if let Err(e) = msg.ack_with(AckKind::Term).await {
                    warn!(error = %e, "term failed");
                }
            }
            Err(ApplyError::Retry(why)) => {
                warn!(why, "event not applied; retrying in 1 s");
                let _ = msg
                    .ack_with(AckKind::Nak(Some(std::time::Duration::from_secs(1))))
                    .await;
            }
        }
    }
    .instrument(span)
    .await;
}

async fn apply(shared: &Shared, msg: &Message, seq: u64) -> Result<(), ApplyError> {
    let event =
        Envelope::from_json(&msg.payload).map_err(|e| ApplyError::Malformed(e.to_string()))?;
    let from_subject = contract::subjects::parse_event(&msg.subject);
    if from_subject != Some((event.country, event.session, event.event_type())) {
        return Err(ApplyError::Malformed(format!(
            "subject {} does not match the envelope ({} {} {})",
            msg.subject,
            event.country,
            event.session,
            event.event_type()
        )));
    }
    let ty = event.event_type();
    if matches!(
        ty,
        EventType::SideEventHeld | EventType::ReportPublished | EventType::OutcomeAdopted
    ) {
        return Ok(()); // no bearing on reminders
    }
    let (country, session) = (event.country, event.session);
    let (stored, revision) = state::load_review(&shared.kv, country, session)
        .await
        .map_err(retry)?;
    let stored = stored.unwrap_or_default();
    if stored.last_seq >= seq {
        debug!("already applied");
        return Ok(());
    }
    let before = stored.state;
    let mut review = before.clone();
    let taken_back = review.apply(&event);
    if ty == EventType::EventRetracted && taken_back.is_none() {
        // A side event, or nothing valid: reminders stay as they are.
        return write_state(shared, &event, review, seq, revision).await;
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
            // A little early: the sender holds it until due (TIMER_EARLY).
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
        Some(entry) => ChangeNotice::corrected(&event, entry, &before, &review, now()),
        None => ChangeNotice::for_event(&event, before.scheduled_for(), now()),
    };
    if let Some(notice) = notice {
        publish_notice(shared, &notice).await?;
    }
    write_state(shared, &event, review, seq, revision).await
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
