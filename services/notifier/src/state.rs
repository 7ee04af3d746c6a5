//! The notifier's own state in the KV bucket `upr_notifier`.
//!
//! - `review.<C>.<S>`: what the notifier knows of one review (status, date,
//!   location) and the last event sequence applied to it, which makes applying
//!   an event twice (redelivery after a crash) a no-op.
//! - `sent.<C>.<S>.<lead>.<date in ms>`: the durable sent-mark of one reminder.
//!   The `UPR_NOTIFICATIONS` de-duplication window catches a re-publish for a
//!   week; the sent-mark catches it forever. (KV keys cannot hold the `:` of a
//!   reminder id, hence the date in milliseconds.)

use async_nats::jetstream::kv;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use upr_domain::{
    Country, EventType, LifecycleEntry, Reminder, ReviewState, ReviewStatus, Session, Timestamp,
};
use uuid::Uuid;

/// One review as the notifier stores it: the lifecycle events in force
/// (the domain's one fold, which a retraction can take back) and the last
/// event sequence applied.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "StoredWire")]
pub struct StoredReview {
    /// The lifecycle events in force.
    #[serde(flatten)]
    pub state: ReviewState,
    /// Stream sequence of the last event applied.
    pub last_seq: u64,
}

/// What older notifiers stored (status, date, location) next to what this
/// one stores, so state written before retractions existed still reads.
#[derive(Deserialize)]
struct StoredWire {
    #[serde(default)]
    lifecycle: Option<Vec<LifecycleEntry>>,
    #[serde(default)]
    status: Option<ReviewStatus>,
    #[serde(default)]
    scheduled_for: Option<Timestamp>,
    #[serde(default)]
    location: Option<String>,
    #[serde(default)]
    last_seq: u64,
}

impl From<StoredWire> for StoredReview {
    fn from(w: StoredWire) -> Self {
        let lifecycle = w.lifecycle.unwrap_or_else(|| {
            // An older value: one entry per step that gives the same status,
            // date and location (the events' ids were not kept).
            let entry = |event| LifecycleEntry {
                id: Uuid::nil(),
                event,
                scheduled_for: None,
                location: None,
                recorded_at: None,
            };
            let steps: &[EventType] = match w.status {
                None | Some(ReviewStatus::Scheduled) => &[],
                Some(ReviewStatus::Cancelled) => &[EventType::ReviewCancelled],
                Some(ReviewStatus::Held) => &[EventType::ReviewHeld],
                Some(ReviewStatus::Reported) => {
                    &[EventType::ReviewHeld, EventType::ReportPublished]
                }
                Some(ReviewStatus::Adopted) => &[EventType::ReviewHeld, EventType::OutcomeAdopted],
            };
            let scheduling = w.status.map(|_| LifecycleEntry {
                scheduled_for: w.scheduled_for,
                location: w.location,
                ..entry(EventType::ReviewScheduled)
            });
            scheduling
                .into_iter()
                .chain(steps.iter().map(|e| entry(*e)))
                .collect()
        });
        Self {
            state: ReviewState { lifecycle },
            last_seq: w.last_seq,
        }
    }
}

impl StoredReview {
    /// Whether `reminder` still belongs to this review as it stands now: the
    /// review is scheduled and still for the reminder's date.
    pub fn still_wants(&self, reminder: &Reminder) -> bool {
        self.state.status() == Some(ReviewStatus::Scheduled)
            && self.state.scheduled_for() == Some(reminder.scheduled_for)
    }

    /// The JSON value.
    ///
    /// # Panics
    /// Never: the state holds only strings, integers and structs, which serialize.
    pub fn to_bytes(&self) -> Bytes {
        serde_json::to_vec(self)
            .expect("the notifier's state holds only strings, integers and structs")
            .into()
    }
}

/// The sent-mark value: when and how it went out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SentMark {
    /// When it was published.
    pub sent_at: Timestamp,
    /// Whether it was late.
    pub late: bool,
}

/// `review.<C>.<S>`.
pub fn review_key(country: Country, session: Session) -> String {
    format!("review.{country}.{session}")
}

/// `sent.<C>.<S>.<lead>.<scheduled_for in unix ms>`: one key per reminder id.
pub fn sent_key(reminder: &Reminder) -> String {
    format!(
        "sent.{}.{}.{}.{}",
        reminder.country,
        reminder.session,
        reminder.lead,
        reminder.scheduled_for.unix_millis()
    )
}

/// Reads a review with its revision (`None`, 0 when absent). A value that
/// does not decode is reported and treated as absent: the next event
/// overwrites it rather than stalling on it.
///
/// # Errors
/// When the bucket cannot be read.
pub async fn load_review(
    kv: &kv::Store,
    country: Country,
    session: Session,
) -> Result<(Option<StoredReview>, u64), kv::EntryError> {
    let key = review_key(country, session);
    let Some(entry) = kv.entry(key.as_str()).await? else {
        return Ok((None, 0));
    };
    if entry.operation != kv::Operation::Put {
        return Ok((None, entry.revision));
    }
    match serde_json::from_slice(&entry.value) {
        Ok(review) => Ok((Some(review), entry.revision)),
        Err(e) => {
            tracing::warn!(key, error = %e, "unreadable notifier state; starting this review afresh");
            Ok((None, entry.revision))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use upr_domain::{parse_leads, plan};

    #[test]
    fn a_reminder_is_wanted_only_while_its_review_is_scheduled_for_its_date() {
        let ts = |s| Timestamp::parse_rfc3339(s).unwrap();
        let (kz, s48) = (Country::parse("KZ").unwrap(), Session::new(48).unwrap());
        let leads = parse_leads("7d").unwrap();
        let r = plan(
            kz,
            s48,
            ts("2025-01-23T08:30:00Z"),
            "Geneva",
            &leads,
            ts("2024-11-06T10:00:00Z"),
        )
        .remove(0);
        let stored =
            |json: serde_json::Value| -> StoredReview { serde_json::from_value(json).unwrap() };
        // As older notifiers stored it, and as this one does.
        let legacy = stored(serde_json::json!({"status": "scheduled",
            "scheduled_for": "2025-01-23T08:30:00Z", "location": "Geneva", "last_seq": 1}));
        assert!(legacy.still_wants(&r));
        let current: StoredReview = serde_json::from_slice(&legacy.to_bytes()).unwrap();
        assert_eq!(current, legacy);
        let moved = stored(serde_json::json!({"status": "scheduled",
            "scheduled_for": "2025-01-30T08:30:00Z", "location": "Geneva", "last_seq": 2}));
        assert!(!moved.still_wants(&r));
        let cancelled = stored(serde_json::json!({"status": "cancelled",
            "scheduled_for": "2025-01-23T08:30:00Z", "location": "Geneva", "last_seq": 3}));
        assert!(!cancelled.still_wants(&r));
        assert_eq!(
            cancelled.state.status(),
            Some(ReviewStatus::Cancelled),
            "legacy status kept"
        );
        assert_eq!(
            sent_key(&r),
            format!("sent.KZ.48.7d.{}", ts("2025-01-23T08:30:00Z").unix_millis())
        );
        assert_eq!(review_key(kz, s48), "review.KZ.48");
    }
}
