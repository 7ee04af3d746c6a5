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
use upr_shared::domain::{Country, Reminder, ReviewState, ReviewStatus, Session, Timestamp};

/// One review as the notifier stores it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredReview {
    /// `None` until the first lifecycle event.
    pub status: Option<ReviewStatus>,
    /// The latest date (kept after cancel/hold for the change notices).
    pub scheduled_for: Option<Timestamp>,
    /// Where the latest scheduling put it.
    pub location: Option<String>,
    /// Stream sequence of the last event applied.
    pub last_seq: u64,
}

impl StoredReview {
    /// The lifecycle fold state, so the domain's `apply` does the folding.
    pub fn lifecycle(&self) -> ReviewState {
        ReviewState {
            status: self.status,
            scheduled_for: self.scheduled_for,
            location: self.location.clone(),
        }
    }

    /// Stores a folded state as applied up to `last_seq`.
    pub fn from_lifecycle(state: ReviewState, last_seq: u64) -> Self {
        Self {
            status: state.status,
            scheduled_for: state.scheduled_for,
            location: state.location,
            last_seq,
        }
    }

    /// Whether `reminder` still belongs to this review as it stands now: the
    /// review is scheduled and still for the reminder's date.
    pub fn still_wants(&self, reminder: &Reminder) -> bool {
        self.status == Some(ReviewStatus::Scheduled)
            && self.scheduled_for == Some(reminder.scheduled_for)
    }

    /// The JSON value.
    pub fn to_bytes(&self) -> Bytes {
        serde_json::to_vec(self).unwrap_or_default().into()
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
    use upr_shared::domain::{parse_leads, plan};

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
        let mut review = StoredReview {
            status: Some(ReviewStatus::Scheduled),
            scheduled_for: Some(ts("2025-01-23T08:30:00Z")),
            location: Some("Geneva".into()),
            last_seq: 1,
        };
        assert!(review.still_wants(&r));
        review.scheduled_for = Some(ts("2025-01-30T08:30:00Z"));
        assert!(!review.still_wants(&r));
        review.scheduled_for = Some(ts("2025-01-23T08:30:00Z"));
        review.status = Some(ReviewStatus::Cancelled);
        assert!(!review.still_wants(&r));
        assert_eq!(
            sent_key(&r),
            format!("sent.KZ.48.7d.{}", ts("2025-01-23T08:30:00Z").unix_millis())
        );
        assert_eq!(review_key(kz, s48), "review.KZ.48");
    }
}
