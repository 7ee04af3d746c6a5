//! The review aggregate: everything the write side knows about one review,
//! folded from its history in the log, and the decision for a new event
//! against it. In the shape of an event-sourcing aggregate: [`Review::decide`]
//! holds every write rule and changes nothing; [`Review::apply`] only folds
//! a stored message in, with no rules.
//!
//! The rules, in the order they are checked:
//! 1. event ids (V3.3): an event id the review already holds is a duplicate,
//!    answered with its original sequence, when the command carries the same
//!    event (type and data; country and session are the review's), even when
//!    the lifecycle has moved on or the review is full, so a retry always
//!    gets its first answer; with other content it is a `conflict` naming
//!    what the id already identifies ([`IdInUse`]);
//! 2. the per-review limits ([`crate::limits`]);
//! 3. for a retraction, the right to retract (V3.2, [`Forbidden`]): only
//!    the party that recorded the event, or an editor, unless nobody
//!    authenticated recorded it;
//! 4. the lifecycle ([`crate::lifecycle`]; for a retraction, what it names).
//!
//! The aggregate is only a cache of the log. Every append carries the
//! review's last sequence as its expected value, so a stale aggregate can
//! never store a wrong event: the log refuses it, the caller reads what it
//! missed and decides again.

use std::collections::HashMap;

use uuid::Uuid;

use super::error::ErrorCode;
use super::error::RejectError;
use super::event::ReviewKey;
use super::event::{Envelope, EventData, EventType};
use super::lifecycle::{LifecycleError, ReviewState, ReviewStatus};
use super::limits::{LimitError, ReviewSize};
use super::party::{PartyName, describe};
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
#[derive(Debug, Clone, PartialEq, Eq)]
struct Known {
    seq: u64,
    /// `None` for a message that is not a valid event of this review.
    event: Option<EventType>,
    /// Its data, to tell a retry (same event) from a reused id (V3.3).
    data: Option<EventData>,
    /// Who recorded it: who, besides the editors, may retract it.
    recorded_by: Option<PartyName>,
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

/// An event id that already identifies another event (V3.3): `conflict`
/// on the wire, field `event_id`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "event_id {id} already identifies {} of review {review}; a retry must carry the same event, a new event needs a new event_id",
    match .event { Some(ty) => format!("a {ty}"), None => "a message that is not a valid event".to_owned() }
)]
pub struct IdInUse {
    /// The reused id.
    pub id: Uuid,
    /// The type of the event it identifies (`None`: a malformed message).
    pub event: Option<EventType>,
    /// The review that event belongs to.
    pub review: ReviewKey,
}

impl IdInUse {
    /// Whether the event stored as `stored` is `event` sent again (same
    /// id, type, country, session and data): then a duplicate, else an
    /// [`IdInUse`].
    ///
    /// # Errors
    /// The [`IdInUse`] naming `stored`, when its content differs.
    pub fn check(stored: &Envelope, event: &Envelope) -> Result<(), Self> {
        if stored.id == event.id
            && stored.review_key() == event.review_key()
            && stored.data == event.data
        {
            Ok(())
        } else {
            Err(Self {
                id: stored.id,
                event: Some(stored.event_type()),
                review: stored.review_key(),
            })
        }
    }
}

/// A retraction by a party that may not retract the event it names (V3.2):
/// `forbidden` on the wire, field `event_id`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "event {retracts} was recorded by {}; only that party or an editor (UPR_EDITORS) may retract it, not {}",
    describe(Some(.recorded_by)), describe(.by.as_ref())
)]
pub struct Forbidden {
    /// The event the retraction names.
    pub retracts: Uuid,
    /// Who recorded it.
    pub recorded_by: PartyName,
    /// Who asked to retract it.
    pub by: Option<PartyName>,
}

/// Who may retract what, besides the party that recorded it: the parties
/// named in `UPR_EDITORS`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Editors(Vec<PartyName>);

impl Editors {
    /// The editors named.
    pub fn new(names: impl IntoIterator<Item = PartyName>) -> Self {
        Self(names.into_iter().collect())
    }

    /// Whether `who` may retract an event recorded by `recorder`: anyone
    /// when nobody authenticated recorded it, else its recorder or an editor.
    ///
    /// # Errors
    /// [`Forbidden`] naming the recorder.
    pub fn may_retract(
        &self,
        retracts: Uuid,
        recorder: Option<&PartyName>,
        who: Option<&PartyName>,
    ) -> Result<(), Forbidden> {
        match recorder {
            None => Ok(()),
            Some(r) if who == Some(r) => Ok(()),
            Some(_) if who.is_some_and(|w| self.0.contains(w)) => Ok(()),
            Some(r) => Err(Forbidden {
                retracts,
                recorded_by: r.clone(),
                by: who.cloned(),
            }),
        }
    }
}

/// Why an event is refused: the domain's typed error, which becomes the
/// reply's `limit_exceeded`, `conflict` or `forbidden` only at the edge
/// (`RejectError::from`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The event id already identifies another event.
    #[error(transparent)]
    IdInUse(#[from] IdInUse),
    /// The party may not retract the event it names.
    #[error(transparent)]
    Forbidden(#[from] Forbidden),
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
            Refusal::IdInUse(e) => e.into(),
            Refusal::Forbidden(e) => e.into(),
        }
    }
}

impl From<IdInUse> for RejectError {
    fn from(e: IdInUse) -> Self {
        RejectError::new(ErrorCode::Conflict, e.to_string()).with_field("event_id")
    }
}

impl From<Forbidden> for RejectError {
    fn from(e: Forbidden) -> Self {
        RejectError::new(ErrorCode::Forbidden, e.to_string()).with_field("event_id")
    }
}

impl Review {
    /// Decides whether `event` (a command made an envelope: its id is the
    /// client's `event_id` or a fresh one) may be stored in this review:
    /// event id first, then the per-review limits, the right to retract,
    /// the lifecycle. `event.recorded_by` is who asks; `editors` may
    /// retract anything.
    ///
    /// # Errors
    /// The [`Refusal`] of the first rule `event` breaks.
    pub fn decide(&self, event: &Envelope, editors: &Editors) -> Result<Decision, Refusal> {
        let key = event.review_key();
        if let Some(known) = self.events.get(&event.id) {
            if known.data.as_ref() == Some(&event.data) {
                return Ok(Decision::Duplicate(known.seq));
            }
            return Err(IdInUse {
                id: event.id,
                event: known.event,
                review: key,
            }
            .into());
        }
        self.size.check(event)?;
        match &event.data {
            EventData::EventRetracted(r) => {
                let known = self.events.get(&r.retracts).filter(|k| k.event.is_some());
                if let Some(k) = known {
                    editors.may_retract(
                        r.retracts,
                        k.recorded_by.as_ref(),
                        event.recorded_by.as_ref(),
                    )?;
                }
                let target = known.and_then(|k| Some((k.event?, k.retracted)));
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
                Some(EventData::SideEventHeld(d)) => {
                    side_event_bytes(id, event.and_then(|e| e.recorded_by.as_ref()), d)
                }
                _ => 0,
            };
            self.events.entry(id).or_insert_with(|| Known {
                seq,
                event: event.map(Envelope::event_type),
                data: event.map(|e| e.data.clone()),
                recorded_by: event.and_then(|e| e.recorded_by.clone()),
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
            Then(self.decide(event, &Editors::default()))
        }

        fn when_with_editors(&self, event: &Envelope, editors: &[&str]) -> Then {
            let editors = Editors::new(editors.iter().map(|n| party(n)));
            Then(self.decide(event, &editors))
        }
    }

    fn party(name: &str) -> PartyName {
        PartyName::parse(name).unwrap()
    }

    /// `event` as recorded by `name` (`None`: no authenticated party).
    fn by(mut event: Envelope, name: Option<&str>) -> Envelope {
        event.schema = crate::SCHEMA;
        event.recorded_by = name.map(party);
        event
    }

    /// A review whose history is `(seq, id, type, recorded_by)`.
    fn given_by(history: &[(u64, u128, EventType, Option<&str>)]) -> Review {
        let mut review = Review::default();
        for (seq, n, ty, who) in history {
            review.apply(*seq, Some(id(*n)), Some(&by(event(*n, *ty), *who)));
        }
        review
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

        /// The refusal, checked to be `forbidden` on the wire, field `event_id`.
        #[track_caller]
        fn then_forbidden(self) -> Forbidden {
            match self.0 {
                Err(Refusal::Forbidden(e)) => {
                    let wire = RejectError::from(e.clone());
                    assert_eq!(wire.code, ErrorCode::Forbidden);
                    assert_eq!(wire.field.as_deref(), Some("event_id"));
                    e
                }
                other => panic!("expected forbidden, got {other:?}"),
            }
        }

        /// The refusal, checked to be a `conflict` on `event_id`.
        #[track_caller]
        fn then_id_in_use(self) -> IdInUse {
            match self.0 {
                Err(Refusal::IdInUse(e)) => {
                    let wire = RejectError::from(e.clone());
                    assert_eq!(wire.code, ErrorCode::Conflict);
                    assert_eq!(wire.field.as_deref(), Some("event_id"));
                    e
                }
                other => panic!("expected an event id conflict, got {other:?}"),
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
        while matches!(
            review.decide(&big(n), &Editors::default()),
            Ok(Decision::Append { .. })
        ) {
            appended(&mut review, &big(n), n as u64);
            n += 1;
        }
        let e = review.when(&big(n)).then_limit();
        assert!(matches!(e, LimitError::SideEventBytes { .. }), "{e:?}");
        appended(&mut review, &retract(100, 1), 100);
        review.when(&big(n)).then_allowed();
    }

    #[test]
    fn a_reused_event_id_with_other_content_is_a_conflict_naming_what_it_identifies() {
        let review = given(&[(3, 1, ReviewScheduled), (4, 2, SideEventHeld)]);
        // Same id, other type.
        let e = review.when(&event(1, ReviewHeld)).then_id_in_use();
        assert_eq!(
            (e.event, e.review.to_string()),
            (Some(ReviewScheduled), "KZ.48".into())
        );
        assert!(
            RejectError::from(e)
                .message
                .contains("review_scheduled of review KZ.48"),
            "the message names the type and the review"
        );
        // Same id and type, other data.
        let mut other = event(2, SideEventHeld);
        if let EventData::SideEventHeld(d) = &mut other.data {
            d.title = "another title".into();
        }
        review.when(&other).then_id_in_use();
        // Same content, other source and time: a retry.
        let mut retry = event(2, SideEventHeld);
        retry.source = Some("someone".into());
        retry.occurred_at = crate::Timestamp::parse_rfc3339("2030-01-01T00:00:00Z").unwrap();
        review.when(&retry).then_duplicate(4);
    }

    #[test]
    fn a_reused_id_of_a_message_that_is_no_event_is_a_conflict() {
        let mut review = Review::default();
        review.apply(5, Some(id(9)), None);
        let e = review.when(&event(9, ReviewScheduled)).then_id_in_use();
        assert_eq!(e.event, None);
    }

    #[test]
    fn the_event_check_compares_type_review_and_data_across_reviews() {
        let stored = event(1, ReviewScheduled);
        assert_eq!(IdInUse::check(&stored, &event(1, ReviewScheduled)), Ok(()));
        let mut elsewhere = event(1, ReviewScheduled);
        elsewhere.country = crate::Country::parse("CH").unwrap();
        let e = IdInUse::check(&stored, &elsewhere).unwrap_err();
        assert_eq!(
            e.review.to_string(),
            "KZ.48",
            "names the stored event's review"
        );
        assert!(IdInUse::check(&stored, &event(1, ReviewHeld)).is_err());
    }

    #[test]
    fn only_the_recording_party_or_an_editor_may_retract() {
        let review = given_by(&[
            (1, 1, ReviewScheduled, Some("ngo-a")),
            (2, 2, SideEventHeld, Some("ngo-a")),
            (3, 3, SideEventHeld, None),
        ]);
        // Another party: forbidden, the message names who recorded it.
        let e = review
            .when(&by(retract(10, 2), Some("ngo-b")))
            .then_forbidden();
        assert_eq!(e.recorded_by.as_str(), "ngo-a");
        let message = RejectError::from(e).message;
        assert!(
            message.contains("\"ngo-a\"") && message.contains("\"ngo-b\""),
            "{message}"
        );
        // Nobody authenticated asks: forbidden too.
        review.when(&by(retract(10, 1), None)).then_forbidden();
        // The recorder, or an editor.
        review
            .when(&by(retract(10, 2), Some("ngo-a")))
            .then_allowed();
        review
            .when(&by(retract(10, 1), Some("ngo-a")))
            .then_allowed();
        review
            .when_with_editors(&by(retract(10, 2), Some("desk")), &["desk"])
            .then_allowed();
        review
            .when_with_editors(&by(retract(10, 2), Some("ngo-b")), &["desk"])
            .then_forbidden();
        // Recorded by nobody authenticated: anyone, as in version 2.
        review
            .when(&by(retract(10, 3), Some("ngo-b")))
            .then_allowed();
        review.when(&by(retract(10, 3), None)).then_allowed();
    }

    #[test]
    fn rights_are_checked_before_the_lifecycle_and_unknown_targets_stay_conflicts() {
        let review = given_by(&[
            (1, 1, ReviewScheduled, Some("ngo-a")),
            (2, 2, ReviewHeld, Some("ngo-a")),
        ]);
        // Not the latest lifecycle event, and another party's: forbidden.
        review
            .when(&by(retract(10, 1), Some("ngo-b")))
            .then_forbidden();
        // Its recorder still meets the lifecycle rule.
        let e = review
            .when(&by(retract(10, 1), Some("ngo-a")))
            .then_conflict();
        assert!(matches!(e, LifecycleError::NotLatest { .. }), "{e:?}");
        let e = review
            .when(&by(retract(10, 77), Some("ngo-b")))
            .then_conflict();
        assert!(matches!(e, LifecycleError::UnknownTarget { .. }), "{e:?}");
    }

    #[test]
    fn events_of_schema_1_and_2_were_recorded_by_nobody_authenticated() {
        // `given` folds schema-1 events: anyone may retract them.
        let review = given(&[(1, 1, ReviewScheduled), (2, 2, SideEventHeld)]);
        review
            .when(&by(retract(10, 2), Some("ngo-b")))
            .then_allowed();
    }
}
