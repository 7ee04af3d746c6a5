//! A review's lifecycle: [`decide`] holds every rule, [`evolve`] only folds.
//!
//! ```text
//! (none) ──scheduled──▶ scheduled ──held──▶ held ──report_published──▶ reported
//!   ▲                    │  ▲  │
//!   │                    │  └──┘ rescheduled
//!   └──scheduled── cancelled ◀──cancelled
//! ```

use serde::{Deserialize, Serialize};

use super::error::RejectError;
use super::event::{Envelope, EventData, EventType, ReviewKey};
use super::time::Timestamp;

/// Where a review stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReviewStatus {
    /// On the calendar; may be rescheduled, cancelled or held.
    Scheduled,
    /// Called off; may be scheduled again.
    Cancelled,
    /// Took place; awaits its report.
    Held,
    /// Its outcome report is out; final.
    Reported,
}

impl ReviewStatus {
    /// The wire name, e.g. `"scheduled"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Scheduled => "scheduled",
            Self::Cancelled => "cancelled",
            Self::Held => "held",
            Self::Reported => "reported",
        }
    }
}

/// Whether `event` may happen to a review whose status is `current`
/// (`None`: no lifecycle event yet).
///
/// # Errors
/// A `conflict` [`RejectError`] explaining the state and what was needed.
pub fn decide(
    current: Option<ReviewStatus>,
    event: EventType,
    review: ReviewKey,
) -> Result<(), RejectError> {
    use ReviewStatus::*;
    let (allowed, needs) = match event {
        EventType::ReviewScheduled => (
            matches!(current, None | Some(Cancelled)),
            "no review or a cancelled one",
        ),
        EventType::ReviewRescheduled | EventType::ReviewCancelled | EventType::ReviewHeld => {
            (current == Some(Scheduled), "a scheduled review")
        }
        EventType::ReportPublished => (current == Some(Held), "a held review"),
        EventType::SideEventHeld => (true, ""),
    };
    if allowed {
        return Ok(());
    }
    let state = current.map_or("does not exist", |s| match s {
        Scheduled => "is scheduled",
        Cancelled => "is cancelled",
        Held => "is held",
        Reported => "is reported",
    });
    Err(RejectError::conflict(format!(
        "review {} {} {state}; {event} needs {needs}",
        review.country, review.session
    )))
}

/// The status after `event`, without checking any rule: stored events are
/// facts, and folds must give the same answer for every log, even one
/// written around ingest. Side events leave the status unchanged.
pub fn evolve(current: Option<ReviewStatus>, event: EventType) -> Option<ReviewStatus> {
    match event {
        EventType::ReviewScheduled | EventType::ReviewRescheduled => Some(ReviewStatus::Scheduled),
        EventType::ReviewCancelled => Some(ReviewStatus::Cancelled),
        EventType::ReviewHeld => Some(ReviewStatus::Held),
        EventType::ReportPublished => Some(ReviewStatus::Reported),
        EventType::SideEventHeld => current,
    }
}

/// What ingest and the notifier need to know about one review, folded from
/// its events (`upr.events.<COUNTRY>.<session>.>`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReviewState {
    /// `None` until the first lifecycle event.
    pub status: Option<ReviewStatus>,
    /// The latest scheduled date (kept after cancel or hold, as the notifier
    /// needs the date that was cancelled).
    pub scheduled_for: Option<Timestamp>,
    /// Where the latest scheduling put it; reschedules keep the location.
    pub location: Option<String>,
}

impl ReviewState {
    /// Folds one event of this review.
    pub fn apply(&mut self, event: &Envelope) {
        self.status = evolve(self.status, event.event_type());
        match &event.data {
            EventData::ReviewScheduled(d) => {
                self.scheduled_for = Some(d.scheduled_for);
                self.location = Some(d.location.clone());
            }
            EventData::ReviewRescheduled(d) => self.scheduled_for = Some(d.scheduled_for),
            _ => {}
        }
    }

    /// [`decide`] against this state.
    ///
    /// # Errors
    /// As [`decide`].
    pub fn decide(&self, event: EventType, review: ReviewKey) -> Result<(), RejectError> {
        decide(self.status, event, review)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::domain::error::ErrorCode;
    use EventType::*;

    fn key() -> ReviewKey {
        ReviewKey::parse("KZ.48").unwrap()
    }

    /// `given(&[past events]).when(event).then_ok()` / `.then_conflict()`.
    struct Given(Option<ReviewStatus>);

    fn given(past: &[EventType]) -> Given {
        Given(past.iter().fold(None, |s, e| evolve(s, *e)))
    }

    impl Given {
        fn when(self, event: EventType) -> Result<(), RejectError> {
            decide(self.0, event, key())
        }
    }

    #[track_caller]
    fn then_ok(r: Result<(), RejectError>) {
        r.unwrap_or_else(|e| panic!("expected allowed, got {e:?}"));
    }

    #[track_caller]
    fn then_conflict(r: Result<(), RejectError>) -> RejectError {
        let e = r.expect_err("expected a conflict");
        assert_eq!((e.code, e.field.as_deref()), (ErrorCode::Conflict, None));
        e
    }

    /// The five states as event histories: absent, scheduled, cancelled, held, reported.
    const STATES: [&[EventType]; 5] = [
        &[],
        &[ReviewScheduled],
        &[ReviewScheduled, ReviewCancelled],
        &[ReviewScheduled, ReviewHeld],
        &[ReviewScheduled, ReviewHeld, ReportPublished],
    ];

    #[test]
    fn the_full_transition_table() {
        // Rows: event type; columns: absent, scheduled, cancelled, held, reported.
        let table = [
            (ReviewScheduled, [true, false, true, false, false]),
            (ReviewRescheduled, [false, true, false, false, false]),
            (ReviewCancelled, [false, true, false, false, false]),
            (ReviewHeld, [false, true, false, false, false]),
            (SideEventHeld, [true, true, true, true, true]),
            (ReportPublished, [false, false, false, true, false]),
        ];
        for (event, row) in table {
            for (past, allowed) in STATES.iter().zip(row) {
                let result = given(past).when(event);
                assert_eq!(
                    result.is_ok(),
                    allowed,
                    "{event} after {past:?}: {result:?}"
                );
                if !allowed {
                    then_conflict(result);
                }
            }
        }
    }

    #[test]
    fn conflicts_say_what_the_review_is_and_what_was_needed() {
        let e = then_conflict(given(&[ReviewScheduled, ReviewHeld]).when(ReviewRescheduled));
        assert_eq!(
            e.message,
            "review KZ 48 is held; review_rescheduled needs a scheduled review"
        );
        let e = then_conflict(given(&[]).when(ReportPublished));
        assert_eq!(
            e.message,
            "review KZ 48 does not exist; report_published needs a held review"
        );
        let e = then_conflict(given(&[ReviewScheduled]).when(ReviewScheduled));
        assert_eq!(
            e.message,
            "review KZ 48 is scheduled; review_scheduled needs no review or a cancelled one"
        );
    }

    #[test]
    fn a_cancelled_review_can_be_scheduled_again_and_held() {
        then_ok(given(&[ReviewScheduled, ReviewCancelled, ReviewScheduled]).when(ReviewHeld));
        then_ok(given(&[ReviewScheduled, ReviewRescheduled, ReviewRescheduled]).when(ReviewHeld));
    }

    #[test]
    fn side_events_never_change_the_status() {
        for past in STATES {
            let before = given(past).0;
            assert_eq!(evolve(before, SideEventHeld), before);
        }
        then_conflict(given(&[SideEventHeld]).when(ReviewHeld));
    }

    #[test]
    fn evolve_folds_without_rules() {
        assert_eq!(evolve(None, ReportPublished), Some(ReviewStatus::Reported));
        assert_eq!(
            evolve(Some(ReviewStatus::Reported), ReviewRescheduled),
            Some(ReviewStatus::Scheduled)
        );
    }

    #[test]
    fn review_state_tracks_date_and_location() {
        let env = |json: &str| Envelope::from_json(json.as_bytes()).unwrap();
        let head = r#""id":"0190f3a2-7b1c-7d4e-9a2b-3c4d5e6f7a8b","schema":1,"country":"KZ","session":48,"occurred_at":"2024-11-06T10:00:00Z","recorded_at":"2024-11-06T10:00:00Z","source":null"#;
        let mut s = ReviewState::default();
        s.apply(&env(&format!(
            r#"{{{head},"type":"review_scheduled","data":{{"scheduled_for":"2025-01-23T08:30:00Z","location":"Geneva"}}}}"#
        )));
        s.apply(&env(&format!(
            r#"{{{head},"type":"review_rescheduled","data":{{"scheduled_for":"2025-01-24T08:30:00Z","reason":null}}}}"#
        )));
        assert_eq!(s.status, Some(ReviewStatus::Scheduled));
        assert_eq!(s.scheduled_for.unwrap().to_string(), "2025-01-24T08:30:00Z");
        assert_eq!(s.location.as_deref(), Some("Geneva"));
        s.apply(&env(&format!(
            r#"{{{head},"type":"review_cancelled","data":{{"reason":null}}}}"#
        )));
        assert_eq!(s.status, Some(ReviewStatus::Cancelled));
        assert!(s.decide(ReviewScheduled, key()).is_ok());
        assert_eq!(s.scheduled_for.unwrap().to_string(), "2025-01-24T08:30:00Z");
    }
}
