//! A review's lifecycle: [`decide`] holds every rule, [`evolve`] only folds,
//! and [`ReviewState`] is the one fold of a review's lifecycle that also
//! knows how to take a retracted event back.
//!
//! ```text
//! (none) ──scheduled──▶ scheduled ──held──▶ held ──report_published──▶ reported
//!   ▲                    │  ▲  │              │                          │
//!   │                    │  └──┘ rescheduled  └──outcome_adopted──▶ adopted ◀──┘
//!   └──scheduled── cancelled ◀──cancelled
//! ```
//!
//! `event_retracted` takes back the latest lifecycle event not yet retracted
//! (or any side event): the state is then what it would be had that event
//! never been recorded.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::event::{Envelope, EventData, EventType, ReviewKey};
use super::time::Timestamp;
use uuid::Uuid;

/// Where a review stands.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum ReviewStatus {
    /// On the calendar; may be rescheduled, cancelled or held.
    Scheduled,
    /// Called off; may be scheduled again.
    Cancelled,
    /// Took place; awaits its report.
    Held,
    /// Its outcome report is out; may be adopted.
    Reported,
    /// The Human Rights Council adopted the outcome; final.
    Adopted,
}

impl ReviewStatus {
    /// The wire name, e.g. `"scheduled"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Scheduled => "scheduled",
            Self::Cancelled => "cancelled",
            Self::Held => "held",
            Self::Reported => "reported",
            Self::Adopted => "adopted",
        }
    }
}

/// What a lifecycle event needs of the review's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Needs {
    /// No lifecycle event yet, or a cancelled review (`review_scheduled`).
    NoneOrCancelled,
    /// A scheduled review (`review_rescheduled`, `review_cancelled`,
    /// `review_held`).
    Scheduled,
    /// A held review (`report_published`).
    Held,
    /// A held or reported review (`outcome_adopted`).
    HeldOrReported,
}

impl Needs {
    /// What `event` needs; `None` for side events and retractions, whose
    /// rules look at the events, not the status (see
    /// [`ReviewState::decide_retraction`]).
    pub fn of(event: EventType) -> Option<Self> {
        match event {
            EventType::ReviewScheduled => Some(Self::NoneOrCancelled),
            EventType::ReviewRescheduled | EventType::ReviewCancelled | EventType::ReviewHeld => {
                Some(Self::Scheduled)
            }
            EventType::ReportPublished => Some(Self::Held),
            EventType::OutcomeAdopted => Some(Self::HeldOrReported),
            EventType::SideEventHeld | EventType::EventRetracted => None,
        }
    }

    /// Whether a review whose status is `current` has what is needed.
    pub fn admits(self, current: Option<ReviewStatus>) -> bool {
        use ReviewStatus::{Cancelled, Held, Reported, Scheduled};
        match self {
            Self::NoneOrCancelled => matches!(current, None | Some(Cancelled)),
            Self::Scheduled => current == Some(Scheduled),
            Self::Held => current == Some(Held),
            Self::HeldOrReported => matches!(current, Some(Held | Reported)),
        }
    }
}

impl fmt::Display for Needs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::NoneOrCancelled => "no review or a cancelled one",
            Self::Scheduled => "a scheduled review",
            Self::Held => "a held review",
            Self::HeldOrReported => "a held or reported review",
        })
    }
}

/// A lifecycle rule an event would break, with what the rule looked at.
/// `Display` is the sentence a refused client reads; at the edge it becomes
/// a `conflict` [`RejectError`](super::error::RejectError) (`From`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LifecycleError {
    /// The review's status does not allow `event`.
    #[error(
        "review {} {} {}; {event} needs {needs}",
        .review.country,
        .review.session,
        standing(*.current)
    )]
    NotAllowed {
        /// The review.
        review: ReviewKey,
        /// Its status (`None`: no lifecycle event yet).
        current: Option<ReviewStatus>,
        /// The refused event's type.
        event: EventType,
        /// What `event` needs of the status.
        needs: Needs,
    },
    /// A retraction names an id that is no event of this review.
    #[error(
        "review {} {} holds no event {retracts}; only an event of this review can be retracted",
        .review.country,
        .review.session
    )]
    UnknownTarget {
        /// The review.
        review: ReviewKey,
        /// The id the retraction names.
        retracts: Uuid,
    },
    /// A retraction names an event already retracted.
    #[error(
        "event {retracts} of review {} {} is already retracted",
        .review.country,
        .review.session
    )]
    AlreadyRetracted {
        /// The review.
        review: ReviewKey,
        /// The id the retraction names.
        retracts: Uuid,
    },
    /// A retraction names another retraction.
    #[error("event {retracts} is itself a retraction; a retraction cannot be retracted")]
    RetractsRetraction {
        /// The review.
        review: ReviewKey,
        /// The id the retraction names.
        retracts: Uuid,
    },
    /// A retraction names a lifecycle event that is not the latest one in
    /// force (only that one may be taken back).
    #[error(
        "event {retracts} ({event}) is not the latest lifecycle event of review {} {} \
         in force{}; only that one may be retracted",
        .review.country,
        .review.session,
        latest_in_force(*.latest)
    )]
    NotLatest {
        /// The review.
        review: ReviewKey,
        /// The id the retraction names.
        retracts: Uuid,
        /// The type of the event it names.
        event: EventType,
        /// The latest lifecycle event in force (type and id), if any.
        latest: Option<(EventType, Uuid)>,
    },
}

/// `is scheduled` ... or `does not exist`, as [`LifecycleError::NotAllowed`] says it.
fn standing(current: Option<ReviewStatus>) -> &'static str {
    use ReviewStatus::{Adopted, Cancelled, Held, Reported, Scheduled};
    current.map_or("does not exist", |s| match s {
        Scheduled => "is scheduled",
        Cancelled => "is cancelled",
        Held => "is held",
        Reported => "is reported",
        Adopted => "is adopted",
    })
}

/// ` (that is <type> <id>)`, or nothing when no lifecycle event is in force.
fn latest_in_force(latest: Option<(EventType, Uuid)>) -> String {
    latest.map_or(String::new(), |(event, id)| {
        format!(" (that is {event} {id})")
    })
}

/// Whether `event` may happen to a review whose status is `current`
/// (`None`: no lifecycle event yet).
///
/// # Errors
/// [`LifecycleError::NotAllowed`], with the state and what was needed.
pub fn decide(
    current: Option<ReviewStatus>,
    event: EventType,
    review: ReviewKey,
) -> Result<(), LifecycleError> {
    match Needs::of(event) {
        Some(needs) if !needs.admits(current) => Err(LifecycleError::NotAllowed {
            review,
            current,
            event,
            needs,
        }),
        _ => Ok(()),
    }
}

/// The status after `event`, without checking any rule: stored events are
/// facts, and folds must give the same answer for every log, even one
/// written around ingest. Side events leave the status unchanged; so does a
/// retraction here, whose effect needs the events ([`ReviewState`]).
pub fn evolve(current: Option<ReviewStatus>, event: EventType) -> Option<ReviewStatus> {
    match event {
        EventType::ReviewScheduled | EventType::ReviewRescheduled => Some(ReviewStatus::Scheduled),
        EventType::ReviewCancelled => Some(ReviewStatus::Cancelled),
        EventType::ReviewHeld => Some(ReviewStatus::Held),
        EventType::ReportPublished => Some(ReviewStatus::Reported),
        EventType::OutcomeAdopted => Some(ReviewStatus::Adopted),
        EventType::SideEventHeld | EventType::EventRetracted => current,
    }
}

/// One lifecycle event still in force, with what it set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LifecycleEntry {
    /// The stored event's id (what a retraction names).
    pub id: Uuid,
    /// Its type (never a side event or a retraction).
    #[serde(rename = "type")]
    pub event: EventType,
    /// The date it set (scheduled, rescheduled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled_for: Option<Timestamp>,
    /// The location it set (scheduled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// When the system learnt the date it set (scheduled, rescheduled): the
    /// reminders of that date are planned from then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recorded_at: Option<Timestamp>,
}

/// A review's lifecycle as ingest, the notifier and the read models see it:
/// the lifecycle events in force, oldest first. Keeping the events (at most
/// 100 per review) rather than only the status is what lets a retraction
/// restore the state before the retracted event.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReviewState {
    /// The lifecycle events in force, oldest first.
    pub lifecycle: Vec<LifecycleEntry>,
}

impl ReviewState {
    /// `None` until the first lifecycle event.
    pub fn status(&self) -> Option<ReviewStatus> {
        self.lifecycle.iter().fold(None, |s, e| evolve(s, e.event))
    }

    /// The latest scheduled date (kept after cancel or hold, as the notifier
    /// needs the date that was cancelled).
    pub fn scheduled_for(&self) -> Option<Timestamp> {
        self.lifecycle.iter().rev().find_map(|e| e.scheduled_for)
    }

    /// When the latest date was recorded (see [`LifecycleEntry::recorded_at`]).
    pub fn scheduled_at(&self) -> Option<Timestamp> {
        self.lifecycle
            .iter()
            .rev()
            .find(|e| e.scheduled_for.is_some())
            .and_then(|e| e.recorded_at)
    }

    /// Where the latest scheduling put it; reschedules keep the location.
    pub fn location(&self) -> Option<&str> {
        self.lifecycle
            .iter()
            .rev()
            .find_map(|e| e.location.as_deref())
    }

    /// The latest lifecycle event in force: the only one a retraction may take back.
    pub fn latest(&self) -> Option<&LifecycleEntry> {
        self.lifecycle.last()
    }

    /// Folds one event of this review; `Some(entry)` when it took a
    /// lifecycle event back (a retraction of the latest one in force).
    /// A retraction that names anything else changes nothing here.
    pub fn apply(&mut self, event: &Envelope) -> Option<LifecycleEntry> {
        let (scheduled_for, location) = match &event.data {
            EventData::SideEventHeld(_) => return None,
            EventData::EventRetracted(r) => {
                return self
                    .latest()
                    .is_some_and(|e| e.id == r.retracts)
                    .then(|| self.lifecycle.pop())
                    .flatten();
            }
            EventData::ReviewScheduled(d) => (Some(d.scheduled_for), Some(d.location.clone())),
            EventData::ReviewRescheduled(d) => (Some(d.scheduled_for), None),
            _ => (None, None),
        };
        self.lifecycle.push(LifecycleEntry {
            id: event.id,
            event: event.event_type(),
            scheduled_for,
            location,
            recorded_at: scheduled_for.map(|_| event.recorded_at),
        });
        None
    }

    /// [`decide`] against this state.
    ///
    /// # Errors
    /// As [`decide`].
    pub fn decide(&self, event: EventType, review: ReviewKey) -> Result<(), LifecycleError> {
        decide(self.status(), event, review)
    }

    /// Whether a retraction of `target` is allowed, given what the review
    /// holds: `target` is `None` when no event of this review has that id,
    /// else its type and whether it is already retracted.
    ///
    /// # Errors
    /// The [`LifecycleError`] of the rule: not an event of this review,
    /// already retracted, a retraction itself, or a lifecycle event that is
    /// not the latest one in force.
    pub fn decide_retraction(
        &self,
        retracts: Uuid,
        target: Option<(EventType, bool)>,
        review: ReviewKey,
    ) -> Result<(), LifecycleError> {
        match target {
            None => Err(LifecycleError::UnknownTarget { review, retracts }),
            Some((_, true)) => Err(LifecycleError::AlreadyRetracted { review, retracts }),
            Some((EventType::EventRetracted, _)) => {
                Err(LifecycleError::RetractsRetraction { review, retracts })
            }
            Some((EventType::SideEventHeld, _)) => Ok(()),
            Some((event, _)) => match self.latest() {
                Some(latest) if latest.id == retracts => Ok(()),
                latest => Err(LifecycleError::NotLatest {
                    review,
                    retracts,
                    event,
                    latest: latest.map(|l| (l.event, l.id)),
                }),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::error::{ErrorCode, RejectError};
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
        fn when(self, event: EventType) -> Result<(), LifecycleError> {
            decide(self.0, event, key())
        }
    }

    #[track_caller]
    fn then_ok(r: Result<(), LifecycleError>) {
        r.unwrap_or_else(|e| panic!("expected allowed, got {e:?}"));
    }

    #[track_caller]
    fn then_conflict(r: Result<(), LifecycleError>) -> LifecycleError {
        r.expect_err("expected a conflict")
    }

    /// The six states as event histories: absent, scheduled, cancelled,
    /// held, reported, adopted.
    const STATES: [&[EventType]; 6] = [
        &[],
        &[ReviewScheduled],
        &[ReviewScheduled, ReviewCancelled],
        &[ReviewScheduled, ReviewHeld],
        &[ReviewScheduled, ReviewHeld, ReportPublished],
        &[ReviewScheduled, ReviewHeld, OutcomeAdopted],
    ];

    #[test]
    fn the_full_transition_table() {
        // Rows: event type; columns: absent, scheduled, cancelled, held,
        // reported, adopted. (Retractions are decided on the events.)
        let table = [
            (ReviewScheduled, [true, false, true, false, false, false]),
            (ReviewRescheduled, [false, true, false, false, false, false]),
            (ReviewCancelled, [false, true, false, false, false, false]),
            (ReviewHeld, [false, true, false, false, false, false]),
            (SideEventHeld, [true, true, true, true, true, true]),
            (ReportPublished, [false, false, false, true, false, false]),
            (OutcomeAdopted, [false, false, false, true, true, false]),
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
                    let e = then_conflict(result);
                    let current = given(past).0;
                    assert!(
                        matches!(e, LifecycleError::NotAllowed { event: ev, current: c, review, .. }
                            if ev == event && c == current && review == key()),
                        "{e:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn conflicts_name_the_state_and_what_was_needed() {
        let needs = |past: &[EventType], event| match then_conflict(given(past).when(event)) {
            LifecycleError::NotAllowed { needs, .. } => needs,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            needs(&[ReviewScheduled, ReviewHeld], ReviewRescheduled),
            Needs::Scheduled
        );
        assert_eq!(needs(&[], ReportPublished), Needs::Held);
        assert_eq!(
            needs(&[ReviewScheduled], ReviewScheduled),
            Needs::NoneOrCancelled
        );
        assert_eq!(
            needs(&[ReviewScheduled], OutcomeAdopted),
            Needs::HeldOrReported
        );
        assert_eq!(needs(STATES[5], ReportPublished), Needs::Held);
    }

    /// The wire text of every rule, as clients and the documentation read
    /// it: a `conflict` with no field.
    #[test]
    fn conflicts_say_what_the_review_is_and_what_was_needed() {
        #[track_caller]
        fn says(e: LifecycleError, text: &str) {
            assert_eq!(e.to_string(), text);
            let wire = RejectError::from(e);
            assert_eq!(
                (wire.code, wire.message.as_str(), wire.field.as_deref()),
                (ErrorCode::Conflict, text, None)
            );
        }
        says(
            then_conflict(given(&[ReviewScheduled, ReviewHeld]).when(ReviewRescheduled)),
            "review KZ 48 is held; review_rescheduled needs a scheduled review",
        );
        says(
            then_conflict(given(&[]).when(ReportPublished)),
            "review KZ 48 does not exist; report_published needs a held review",
        );
        says(
            then_conflict(given(&[ReviewScheduled]).when(ReviewScheduled)),
            "review KZ 48 is scheduled; review_scheduled needs no review or a cancelled one",
        );
        says(
            then_conflict(given(&[ReviewScheduled]).when(OutcomeAdopted)),
            "review KZ 48 is scheduled; outcome_adopted needs a held or reported review",
        );
        says(
            then_conflict(given(STATES[2]).when(ReviewHeld)),
            "review KZ 48 is cancelled; review_held needs a scheduled review",
        );
        says(
            then_conflict(given(STATES[4]).when(ReportPublished)),
            "review KZ 48 is reported; report_published needs a held review",
        );
        says(
            then_conflict(given(STATES[5]).when(ReportPublished)),
            "review KZ 48 is adopted; report_published needs a held review",
        );
        let s = state_of(&[
            scheduled(1, "2025-01-23T08:30:00Z", "Geneva"),
            rescheduled(3, "2025-01-24T08:30:00Z"),
        ]);
        let id = Uuid::from_u128;
        says(
            then_conflict(s.decide_retraction(id(1), Some((ReviewScheduled, false)), key())),
            "event 00000000-0000-0000-0000-000000000001 (review_scheduled) is not the latest \
             lifecycle event of review KZ 48 in force (that is review_rescheduled \
             00000000-0000-0000-0000-000000000003); only that one may be retracted",
        );
        says(
            then_conflict(ReviewState::default().decide_retraction(
                id(1),
                Some((ReviewScheduled, false)),
                key(),
            )),
            "event 00000000-0000-0000-0000-000000000001 (review_scheduled) is not the latest \
             lifecycle event of review KZ 48 in force; only that one may be retracted",
        );
        says(
            then_conflict(s.decide_retraction(id(9), None, key())),
            "review KZ 48 holds no event 00000000-0000-0000-0000-000000000009; \
             only an event of this review can be retracted",
        );
        says(
            then_conflict(s.decide_retraction(id(2), Some((SideEventHeld, true)), key())),
            "event 00000000-0000-0000-0000-000000000002 of review KZ 48 is already retracted",
        );
        says(
            then_conflict(s.decide_retraction(id(5), Some((EventRetracted, false)), key())),
            "event 00000000-0000-0000-0000-000000000005 is itself a retraction; \
             a retraction cannot be retracted",
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

    fn env(n: u128, ty: EventType, data: &str) -> Envelope {
        let id = Uuid::from_u128(n);
        Envelope::from_json(format!(
            r#"{{"id":"{id}","type":"{ty}","schema":2,"country":"KZ","session":48,"occurred_at":"2024-11-06T10:00:00Z","recorded_at":"2024-11-06T10:00:00Z","source":null,"data":{data}}}"#
        ).as_bytes())
        .unwrap()
    }

    fn retract(n: u128, target: u128) -> Envelope {
        let data = format!(
            r#"{{"retracts":"{}","reason":"mistake"}}"#,
            Uuid::from_u128(target)
        );
        env(n, EventRetracted, &data)
    }

    fn state_of(events: &[Envelope]) -> ReviewState {
        let mut s = ReviewState::default();
        for e in events {
            s.apply(e);
        }
        s
    }

    fn scheduled(n: u128, date: &str, location: &str) -> Envelope {
        env(
            n,
            ReviewScheduled,
            &format!(r#"{{"scheduled_for":"{date}","location":"{location}"}}"#),
        )
    }

    fn rescheduled(n: u128, date: &str) -> Envelope {
        env(
            n,
            ReviewRescheduled,
            &format!(r#"{{"scheduled_for":"{date}","reason":null}}"#),
        )
    }

    #[test]
    fn review_state_tracks_date_and_location() {
        let mut s = state_of(&[
            scheduled(1, "2025-01-23T08:30:00Z", "Geneva"),
            rescheduled(2, "2025-01-24T08:30:00Z"),
        ]);
        assert_eq!(s.status(), Some(ReviewStatus::Scheduled));
        assert_eq!(
            s.scheduled_for().unwrap().to_string(),
            "2025-01-24T08:30:00Z"
        );
        assert_eq!(s.location(), Some("Geneva"));
        s.apply(&env(3, ReviewCancelled, r#"{"reason":null}"#));
        assert_eq!(s.status(), Some(ReviewStatus::Cancelled));
        assert!(s.decide(ReviewScheduled, key()).is_ok());
        assert_eq!(
            s.scheduled_for().unwrap().to_string(),
            "2025-01-24T08:30:00Z"
        );
    }

    #[test]
    fn a_retraction_restores_the_state_before_the_latest_lifecycle_event() {
        let log = [
            scheduled(1, "2025-01-23T08:30:00Z", "Geneva"),
            env(
                2,
                SideEventHeld,
                r#"{"title":"t","held_on":"2025-01-22T00:00:00Z"}"#,
            ),
            rescheduled(3, "2025-01-24T08:30:00Z"),
            env(4, ReviewHeld, "{}"),
        ];
        // Given the log, when the hold is retracted, then the review is
        // scheduled on the 24th; when the reschedule is too, on the 23rd.
        let mut s = state_of(&log);
        assert_eq!(s.apply(&retract(5, 4)).map(|e| e.event), Some(ReviewHeld));
        assert_eq!(s, state_of(&log[..3]));
        assert_eq!(
            s.apply(&retract(6, 3)).map(|e| e.event),
            Some(ReviewRescheduled)
        );
        assert_eq!(s, state_of(&log[..2]));
        assert_eq!(
            s.scheduled_for().unwrap().to_string(),
            "2025-01-23T08:30:00Z"
        );
        // A retraction naming anything but the latest lifecycle event changes nothing.
        assert_eq!(s.apply(&retract(7, 2)), None);
        assert_eq!(s.apply(&retract(8, 99)), None);
        assert_eq!(s, state_of(&log[..1]));
        assert_eq!(
            s.apply(&retract(9, 1)).map(|e| e.event),
            Some(ReviewScheduled)
        );
        assert_eq!(s.status(), None);
    }

    #[test]
    fn which_retractions_are_allowed() {
        let s = state_of(&[
            scheduled(1, "2025-01-23T08:30:00Z", "Geneva"),
            rescheduled(3, "2025-01-24T08:30:00Z"),
        ]);
        let id = Uuid::from_u128;
        then_ok(s.decide_retraction(id(3), Some((ReviewRescheduled, false)), key()));
        then_ok(s.decide_retraction(id(2), Some((SideEventHeld, false)), key()));
        let e = then_conflict(s.decide_retraction(id(1), Some((ReviewScheduled, false)), key()));
        assert!(
            matches!(e, LifecycleError::NotLatest { retracts, event: ReviewScheduled, latest: Some((ReviewRescheduled, l)), .. }
                if retracts == id(1) && l == id(3)),
            "{e:?}"
        );
        let e = then_conflict(s.decide_retraction(id(9), None, key()));
        assert!(
            matches!(e, LifecycleError::UnknownTarget { retracts, .. } if retracts == id(9)),
            "{e:?}"
        );
        for (target, known) in [(2, (SideEventHeld, true)), (3, (ReviewRescheduled, true))] {
            let e = then_conflict(s.decide_retraction(id(target), Some(known), key()));
            assert!(
                matches!(e, LifecycleError::AlreadyRetracted { .. }),
                "{e:?}"
            );
        }
        let e = then_conflict(s.decide_retraction(id(5), Some((EventRetracted, false)), key()));
        assert!(
            matches!(e, LifecycleError::RetractsRetraction { .. }),
            "{e:?}"
        );
    }
}
