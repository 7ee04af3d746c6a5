//! The review aggregate: everything the write side knows about one review,
//! folded from its history in the log, and the decision for a new event
//! against it. In the shape of an event-sourcing aggregate: [`Review::decide`]
//! holds every write rule and changes nothing; [`Review::apply`] only folds
//! a stored message in, with no rules.
//!
//! The rules, in the order they are checked:
//! 1. duplicate: an event id the review already holds is answered with its
//!    original sequence, even when the lifecycle has moved on or the review
//!    is full, so a retry always gets its first answer;
//! 2. the per-review limits ([`crate::limits`]);
//! 3. the lifecycle ([`crate::lifecycle`]; for a retraction, what it names).
//!
//! The aggregate is only a cache of the log. Every append carries the
//! review's last sequence as its expected value, so a stale aggregate can
//! never store a wrong event: the log refuses it, the caller reads what it
//! missed and decides again.

use std::collections::HashMap;

use uuid::Uuid;

use super::error::RejectError;
use super::event::{Envelope, EventData, EventType};
use super::lifecycle::{LifecycleError, ReviewState, ReviewStatus};
use super::limits::{LimitError, ReviewSize};
use super::side_event::side_event_bytes;

/// One review's lifecycle, last sequence over its subjects and every event
/// id it holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Review {
    /// The lifecycle events in force (the domain's one fold of them).
    state: ReviewState,
    /// How much of the per-review limits its valid events use.
    size: ReviewSize,
    last_seq: u64,
    /// Event id -> what is known of it. Keeps duplicates detectable for the
    /// review's whole life, unlike the log's de-duplication window, and
    /// tells what a retraction may name.
    events: HashMap<Uuid, Known>,
}

/// One stored message of the review, by id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Known {
    seq: u64,
    /// `None` for a message that is not a valid event of this review.
    event: Option<EventType>,
    retracted: bool,
    /// Bytes it takes in the review value (side events).
    side_bytes: usize,
}

/// What to do with an event the rules allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// The event id is already stored at this sequence: answer, store nothing.
    Duplicate(u64),
    /// Append, expecting this last sequence over the review's subjects.
    Append {
        /// `Nats-Expected-Last-Subject-Sequence` (0: the review has no events).
        expected_last_seq: u64,
    },
}

/// Why an event is refused: the domain's typed error, which becomes the
/// reply's `limit_exceeded` or `conflict` only at the edge
/// (`RejectError::from`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The review holds as much of this kind of event as it may.
    #[error(transparent)]
    Limit(#[from] LimitError),
    /// The lifecycle does not allow the event now.
    #[error(transparent)]
    Lifecycle(#[from] LifecycleError),
}

impl From<Refusal> for RejectError {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::Limit(e) => e.into(),
            Refusal::Lifecycle(e) => e.into(),
        }
    }
}

impl Review {
    /// Decides whether `event` (a command made an envelope: its id is the
    /// client's `event_id` or a fresh one) may be stored in this review:
    /// duplicate first, then the per-review limits, then the lifecycle.
    ///
    /// # Errors
    /// The [`Refusal`] of the first rule `event` breaks.
    pub fn decide(&self, event: &Envelope) -> Result<Decision, Refusal> {
        if let Some(known) = self.events.get(&event.id) {
            return Ok(Decision::Duplicate(known.seq));
        }
        self.size.check(event)?;
        let key = event.review_key();
        match &event.data {
            EventData::EventRetracted(r) => {
                let target = self
                    .events
                    .get(&r.retracts)
                    .and_then(|k| Some((k.event?, k.retracted)));
                self.state.decide_retraction(r.retracts, target, key)
            }
            _ => self.state.decide(event.event_type(), key),
        }?;
        Ok(Decision::Append {
            expected_last_seq: self.last_seq,
        })
    }

    /// Folds one stored message of the review, at stream sequence `seq`,
    /// with the `Nats-Msg-Id` it carries (if any). `event` is `None` for a
    /// message that is not a valid event of this review (written around
    /// ingest): it moves the sequence and may carry an id, but does not
    /// change the lifecycle, as consumers skip it too.
    pub fn apply(&mut self, seq: u64, id: Option<Uuid>, event: Option<&Envelope>) {
        self.last_seq = self.last_seq.max(seq);
        if let Some(id) = id {
            let side_bytes = match event.map(|e| &e.data) {
                Some(EventData::SideEventHeld(d)) => side_event_bytes(id, d),
                _ => 0,
            };
            self.events.entry(id).or_insert(Known {
                seq,
                event: event.map(Envelope::event_type),
                retracted: false,
                side_bytes,
            });
        }
        let Some(event) = event else { return };
        self.size.add(event);
        let taken_back = self.state.apply(event);
        // A retraction takes back a side event, or the lifecycle event the
        // state just dropped; one naming anything else changes nothing (as
        // in every fold of the log).
        if let EventData::EventRetracted(r) = &event.data
            && let Some(target) = self.events.get_mut(&r.retracts)
            && !target.retracted
            && (target.event == Some(EventType::SideEventHeld) || taken_back.is_some())
        {
            target.retracted = true;
            self.size.side_event_retracted(target.side_bytes);
        }
    }

    /// The last sequence over the review's subjects (0: none).
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// The review's status, `None` before its first lifecycle event.
    pub fn status(&self) -> Option<ReviewStatus> {
        self.state.status()
    }
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation, reason = "test sequences are small")]
mod tests {
    use super::*;

    use EventType::*;

    use crate::error::ErrorCode;
    use crate::event::Speaker;

    fn id(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    /// Event `n` of review KZ.48, of type `ty`.
    fn event(n: u128, ty: EventType) -> Envelope {
        let mut data = match ty {
            ReviewScheduled | ReviewRescheduled => {
                serde_json::json!({"scheduled_for": "2025-01-23T08:30:00Z", "location": "Geneva"})
            }
            SideEventHeld => serde_json::json!({"title": "t", "held_on": "2025-01-22T00:00:00Z"}),
            ReportPublished => serde_json::json!({"published_on": "2025-03-01T00:00:00Z"}),
            OutcomeAdopted => {
                serde_json::json!({"adopted_on": "2025-06-20T00:00:00Z", "hrc_session": 59})
            }
            // By default a retraction names event 1; see `retract`.
            EventRetracted => serde_json::json!({"retracts": id(1), "reason": "mistake"}),
            ReviewCancelled | ReviewHeld => serde_json::json!({}),
        };
        if ty == ReviewRescheduled {
            data.as_object_mut().unwrap().remove("location");
        }
        let json = serde_json::json!({"id": id(n), "type": ty, "schema": 1, "country": "KZ",
            "session": 48, "occurred_at": "2024-11-06T10:00:00Z",
            "recorded_at": "2024-11-06T10:00:00Z", "source": null, "data": data});
        Envelope::from_json(json.to_string().as_bytes()).unwrap()
    }

    fn retract(n: u128, target: u128) -> Envelope {
        let mut e = event(n, EventRetracted);
        e.data = EventData::EventRetracted(crate::event::EventRetracted {
            retracts: id(target),
            reason: "mistake".into(),
        });
        e
    }

    /// A review whose history is `(seq, id, type)`.
    fn given(history: &[(u64, u128, EventType)]) -> Review {
        let mut review = Review::default();
        for (seq, n, ty) in history {
            review.apply(*seq, Some(id(*n)), Some(&event(*n, *ty)));
        }
        review
    }

    /// The review after `event` was appended at `seq`.
    fn appended(review: &mut Review, event: &Envelope, seq: u64) {
        review.apply(seq, Some(event.id), Some(event));
    }

    /// `review.when(&event)` is the decision; `.then_appends(seq)`,
    /// `.then_duplicate(seq)`, `.then_conflict()` or `.then_limit()` checks it.
    struct Then(Result<Decision, Refusal>);

    impl Review {
        fn when(&self, event: &Envelope) -> Then {
            Then(self.decide(event))
        }
    }

    impl Then {
        #[track_caller]
        fn then_appends(self, expected_last_seq: u64) {
            assert_eq!(self.0, Ok(Decision::Append { expected_last_seq }));
        }

        #[track_caller]
        fn then_duplicate(self, seq: u64) {
            assert_eq!(self.0, Ok(Decision::Duplicate(seq)));
        }

        #[track_caller]
        fn then_allowed(self) {
            assert!(
                matches!(self.0, Ok(Decision::Append { .. })),
                "expected an append, got {:?}",
                self.0
            );
        }

        /// The refusal, checked to be a `conflict` on the wire.
        #[track_caller]
        fn then_conflict(self) -> LifecycleError {
            match self.0 {
                Err(Refusal::Lifecycle(e)) => {
                    assert_eq!(RejectError::from(e.clone()).code, ErrorCode::Conflict);
                    e
                }
                other => panic!("expected a lifecycle conflict, got {other:?}"),
            }
        }

        /// The refusal, checked to be `limit_exceeded` on the wire.
        #[track_caller]
        fn then_limit(self) -> LimitError {
            match self.0 {
                Err(Refusal::Limit(e)) => {
                    assert_eq!(RejectError::from(e.clone()).code, ErrorCode::LimitExceeded);
                    e
                }
                other => panic!("expected a limit, got {other:?}"),
            }
        }
    }

    #[test]
    fn a_full_review_refuses_with_limit_exceeded_but_still_answers_retries() {
        let mut history = vec![(1, 1, ReviewScheduled)];
        for n in 0..200u64 {
            history.push((n + 2, u128::from(n) + 2, SideEventHeld));
        }
        let review = given(&history);
        let e = review.when(&event(999, SideEventHeld)).then_limit();
        assert!(matches!(e, LimitError::SideEvents { .. }), "{e:?}");
        // A retry of a stored side event is still a duplicate.
        review.when(&event(2, SideEventHeld)).then_duplicate(2);
        // Lifecycle events have their own limit.
        review.when(&event(1000, ReviewHeld)).then_allowed();
    }

    #[test]
    fn a_new_review_appends_expecting_sequence_zero() {
        given(&[]).when(&event(1, ReviewScheduled)).then_appends(0);
    }

    #[test]
    fn appends_expect_the_last_sequence_of_the_whole_review() {
        let review = given(&[(3, 1, ReviewScheduled), (17, 2, SideEventHeld)]);
        review.when(&event(3, ReviewHeld)).then_appends(17);
        review.when(&event(3, SideEventHeld)).then_appends(17);
    }

    #[test]
    fn a_known_event_id_is_a_duplicate_even_when_the_lifecycle_would_refuse_it() {
        let review = given(&[(3, 1, ReviewScheduled), (9, 2, ReviewHeld)]);
        review.when(&event(1, ReviewScheduled)).then_duplicate(3);
        review.when(&event(2, ReviewHeld)).then_duplicate(9);
    }

    #[test]
    fn lifecycle_conflicts_are_refused() {
        let review = given(&[(3, 1, ReviewScheduled)]);
        let e = review.when(&event(5, ReviewScheduled)).then_conflict();
        assert!(matches!(e, LifecycleError::NotAllowed { .. }), "{e:?}");
        given(&[]).when(&event(5, ReportPublished)).then_conflict();
    }

    #[test]
    fn malformed_messages_move_the_sequence_but_not_the_status() {
        let mut review = given(&[(3, 1, ReviewScheduled)]);
        review.apply(8, None, None);
        assert_eq!(review.status(), Some(ReviewStatus::Scheduled));
        review.when(&event(4, ReviewHeld)).then_appends(8);
    }

    #[test]
    fn appended_events_update_status_sequence_and_ids() {
        let mut review = given(&[(3, 1, ReviewScheduled)]);
        appended(&mut review, &event(2, ReviewCancelled), 12);
        assert_eq!(
            (review.status(), review.last_seq()),
            (Some(ReviewStatus::Cancelled), 12)
        );
        review.when(&event(2, ReviewCancelled)).then_duplicate(12);
        review.when(&event(3, ReviewScheduled)).then_appends(12);
    }

    #[test]
    fn a_retraction_is_decided_on_what_the_review_holds() {
        let mut review = given(&[
            (1, 1, ReviewScheduled),
            (2, 2, SideEventHeld),
            (3, 3, ReviewHeld),
        ]);
        // Only the latest lifecycle event in force, or a side event.
        let e = review.when(&retract(10, 1)).then_conflict();
        assert!(matches!(e, LifecycleError::NotLatest { .. }), "{e:?}");
        let e = review.when(&retract(10, 77)).then_conflict();
        assert!(matches!(e, LifecycleError::UnknownTarget { .. }), "{e:?}");
        review.when(&retract(10, 2)).then_allowed();
        review.when(&retract(10, 3)).then_allowed();
        // After the hold is taken back the review is scheduled again, and
        // the scheduling is the latest lifecycle event.
        appended(&mut review, &retract(10, 3), 10);
        assert_eq!(review.status(), Some(ReviewStatus::Scheduled));
        let e = review.when(&retract(11, 3)).then_conflict();
        assert!(
            matches!(e, LifecycleError::AlreadyRetracted { .. }),
            "{e:?}"
        );
        let e = review.when(&retract(11, 10)).then_conflict();
        assert!(
            matches!(e, LifecycleError::RetractsRetraction { .. }),
            "{e:?}"
        );
        review.when(&event(11, ReviewHeld)).then_allowed();
        review.when(&retract(11, 1)).then_allowed();
    }

    #[test]
    fn a_retracted_side_event_gives_its_bytes_back() {
        let big = |n: u128| {
            let mut e = event(n, SideEventHeld);
            let speakers: Vec<Speaker> = (0..100)
                .map(|_| Speaker {
                    name: "n".repeat(200),
                    role: Some("r".repeat(200)),
                })
                .collect();
            if let EventData::SideEventHeld(d) = &mut e.data {
                d.speakers = speakers;
            }
            e
        };
        let mut review = Review::default();
        let mut n = 1;
        while matches!(review.decide(&big(n)), Ok(Decision::Append { .. })) {
            appended(&mut review, &big(n), n as u64);
            n += 1;
        }
        let e = review.when(&big(n)).then_limit();
        assert!(matches!(e, LimitError::SideEventBytes { .. }), "{e:?}");
        appended(&mut review, &retract(100, 1), 100);
        review.when(&big(n)).then_allowed();
    }
}
