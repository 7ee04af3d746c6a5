//! What ingest knows about one review, folded from its history in the log,
//! and the decision for a new command against it. Pure: no I/O, no clock.
//!
//! The state is only a cache of the log. Every append carries the review's
//! last sequence as its expected value, so a stale state can never store a
//! wrong event: the server refuses it, ingest reloads and decides again.

use std::collections::HashMap;

use upr_domain::{
    Envelope, EventData, EventType, LifecycleError, LimitError, RejectError, ReviewKey, ReviewSize,
    ReviewState, ReviewStatus, side_event_bytes,
};
use uuid::Uuid;

/// One review's lifecycle, last sequence over its subjects and every event
/// id it holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReviewLog {
    /// The lifecycle events in force (the domain's one fold of them).
    state: ReviewState,
    /// How much of the per-review limits its valid events use.
    size: ReviewSize,
    last_seq: u64,
    /// Event id -> what is known of it. Keeps duplicates detectable for the
    /// review's whole life, unlike the server's de-duplication window, and
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

/// What to do with a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The event id is already stored at this sequence: answer, store nothing.
    Duplicate(u64),
    /// Append, expecting this last sequence over the review's subjects.
    Append {
        /// `Nats-Expected-Last-Subject-Sequence` (0: the review has no events).
        expected_last_seq: u64,
    },
    /// A per-review limit or the lifecycle forbids it.
    Refuse(Refusal),
}

/// Why a command is refused: the domain's typed error, which becomes the
/// reply's `limit_exceeded` or `conflict` only when ingest answers
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

impl ReviewLog {
    /// Folds one stored message of the review while loading its history.
    /// `event` is `None` for a message that is not a valid event of this
    /// review (written around ingest): it moves the sequence and may carry an
    /// id, but does not change the lifecycle, as consumers skip it too.
    pub fn load(&mut self, seq: u64, id: Option<Uuid>, event: Option<&Envelope>) {
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

    /// Duplicate first (a retry gets its original answer even when the
    /// lifecycle has moved on, or the review is full), then the per-review
    /// limits, then the lifecycle rule (for a retraction: what it names).
    pub fn decide(&self, event: &Envelope) -> Decision {
        if let Some(known) = self.events.get(&event.id) {
            return Decision::Duplicate(known.seq);
        }
        let key = event.review_key();
        let rule = match &event.data {
            EventData::EventRetracted(r) => {
                let target = self
                    .events
                    .get(&r.retracts)
                    .and_then(|k| Some((k.event?, k.retracted)));
                self.state.decide_retraction(r.retracts, target, key)
            }
            _ => self.state.decide(event.event_type(), key),
        };
        let allowed = self
            .size
            .check(event)
            .map_err(Refusal::from)
            .and(rule.map_err(Refusal::from));
        match allowed {
            Ok(()) => Decision::Append {
                expected_last_seq: self.last_seq,
            },
            Err(e) => Decision::Refuse(e),
        }
    }

    /// Records an event ingest has just appended at `seq`.
    pub fn appended(&mut self, event: &Envelope, seq: u64) {
        self.load(seq, Some(event.id), Some(event));
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

/// A bounded map of review states. When full, an arbitrary entry is
/// evicted: a miss only costs one read of the review's history.
#[derive(Debug)]
pub struct ReviewCache {
    capacity: usize,
    reviews: HashMap<ReviewKey, ReviewLog>,
}

impl ReviewCache {
    /// A cache holding at most `capacity` reviews (at least one).
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            reviews: HashMap::new(),
        }
    }

    /// The cached state, if any.
    pub fn get_mut(&mut self, key: &ReviewKey) -> Option<&mut ReviewLog> {
        self.reviews.get_mut(key)
    }

    /// Stores a freshly loaded state, evicting another when full.
    pub fn insert(&mut self, key: ReviewKey, log: ReviewLog) -> &mut ReviewLog {
        if self.reviews.len() >= self.capacity
            && !self.reviews.contains_key(&key)
            && let Some(victim) = self.reviews.keys().next().copied()
        {
            self.reviews.remove(&victim);
        }
        self.reviews.entry(key).insert_entry(log).into_mut()
    }

    /// Forgets a review whose cached state proved stale or uncertain.
    pub fn forget(&mut self, key: &ReviewKey) {
        self.reviews.remove(key);
    }

    /// How many reviews are cached.
    pub fn len(&self) -> usize {
        self.reviews.len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.reviews.is_empty()
    }
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation, reason = "test sequences are small")]
mod tests {
    use super::*;
    use EventType::*;
    use upr_domain::ErrorCode;

    fn id(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    /// Event `n` of review KZ.48, of type `ty`.
    fn event(n: u128, ty: EventType) -> Envelope {
        let data = match ty {
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
        let mut data = data;
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
        e.data = EventData::EventRetracted(upr_domain::EventRetracted {
            retracts: id(target),
            reason: "mistake".into(),
        });
        e
    }

    /// A review whose history is `(seq, id, type)`.
    fn given(history: &[(u64, u128, EventType)]) -> ReviewLog {
        let mut log = ReviewLog::default();
        for (seq, n, ty) in history {
            log.load(*seq, Some(id(*n)), Some(&event(*n, *ty)));
        }
        log
    }

    #[test]
    fn a_full_review_refuses_with_limit_exceeded_but_still_answers_retries() {
        let mut history = vec![(1, 1, ReviewScheduled)];
        for n in 0..200u64 {
            history.push((n + 2, u128::from(n) + 2, SideEventHeld));
        }
        let log = given(&history);
        match log.decide(&event(999, SideEventHeld)) {
            Decision::Refuse(e @ Refusal::Limit(LimitError::SideEvents { .. })) => {
                assert_eq!(RejectError::from(e).code, ErrorCode::LimitExceeded);
            }
            other => panic!("{other:?}"),
        }
        // A retry of a stored side event is still a duplicate.
        assert_eq!(log.decide(&event(2, SideEventHeld)), Decision::Duplicate(2));
        // Lifecycle events have their own limit.
        assert!(matches!(
            log.decide(&event(1000, ReviewHeld)),
            Decision::Append { .. }
        ));
    }

    #[test]
    fn a_new_review_appends_expecting_sequence_zero() {
        assert_eq!(
            given(&[]).decide(&event(1, ReviewScheduled)),
            Decision::Append {
                expected_last_seq: 0
            }
        );
    }

    #[test]
    fn appends_expect_the_last_sequence_of_the_whole_review() {
        let log = given(&[(3, 1, ReviewScheduled), (17, 2, SideEventHeld)]);
        assert_eq!(
            log.decide(&event(3, ReviewHeld)),
            Decision::Append {
                expected_last_seq: 17
            }
        );
        assert_eq!(
            log.decide(&event(3, SideEventHeld)),
            Decision::Append {
                expected_last_seq: 17
            }
        );
    }

    #[test]
    fn a_known_event_id_is_a_duplicate_even_when_the_lifecycle_would_refuse_it() {
        let log = given(&[(3, 1, ReviewScheduled), (9, 2, ReviewHeld)]);
        assert_eq!(
            log.decide(&event(1, ReviewScheduled)),
            Decision::Duplicate(3)
        );
        assert_eq!(log.decide(&event(2, ReviewHeld)), Decision::Duplicate(9));
    }

    #[test]
    fn lifecycle_conflicts_are_refused() {
        let log = given(&[(3, 1, ReviewScheduled)]);
        let Decision::Refuse(e) = log.decide(&event(5, ReviewScheduled)) else {
            panic!("expected a refusal")
        };
        assert!(
            matches!(e, Refusal::Lifecycle(LifecycleError::NotAllowed { .. })),
            "{e:?}"
        );
        assert_eq!(RejectError::from(e).code, ErrorCode::Conflict);
        let Decision::Refuse(e) = given(&[]).decide(&event(5, ReportPublished)) else {
            panic!("expected a refusal")
        };
        assert_eq!(RejectError::from(e).code, ErrorCode::Conflict);
    }

    #[test]
    fn malformed_messages_move_the_sequence_but_not_the_status() {
        let mut log = given(&[(3, 1, ReviewScheduled)]);
        log.load(8, None, None);
        assert_eq!(log.status(), Some(ReviewStatus::Scheduled));
        assert_eq!(
            log.decide(&event(4, ReviewHeld)),
            Decision::Append {
                expected_last_seq: 8
            }
        );
    }

    #[test]
    fn appended_events_update_status_sequence_and_ids() {
        let mut log = given(&[(3, 1, ReviewScheduled)]);
        log.appended(&event(2, ReviewCancelled), 12);
        assert_eq!(
            (log.status(), log.last_seq()),
            (Some(ReviewStatus::Cancelled), 12)
        );
        assert_eq!(
            log.decide(&event(2, ReviewCancelled)),
            Decision::Duplicate(12)
        );
        assert_eq!(
            log.decide(&event(3, ReviewScheduled)),
            Decision::Append {
                expected_last_seq: 12
            }
        );
    }

    #[test]
    fn a_retraction_is_decided_on_what_the_review_holds() {
        let mut log = given(&[
            (1, 1, ReviewScheduled),
            (2, 2, SideEventHeld),
            (3, 3, ReviewHeld),
        ]);
        let refused = |log: &ReviewLog, e: &Envelope, rule: fn(&LifecycleError) -> bool| match log
            .decide(e)
        {
            Decision::Refuse(Refusal::Lifecycle(r)) => {
                assert!(rule(&r), "{r:?}");
                assert_eq!(RejectError::from(r).code, ErrorCode::Conflict);
            }
            other => panic!("{other:?}"),
        };
        // Only the latest lifecycle event in force, or a side event.
        refused(&log, &retract(10, 1), |r| {
            matches!(r, LifecycleError::NotLatest { .. })
        });
        refused(&log, &retract(10, 77), |r| {
            matches!(r, LifecycleError::UnknownTarget { .. })
        });
        assert!(matches!(
            log.decide(&retract(10, 2)),
            Decision::Append { .. }
        ));
        assert!(matches!(
            log.decide(&retract(10, 3)),
            Decision::Append { .. }
        ));
        // After the hold is taken back the review is scheduled again, and
        // the scheduling is the latest lifecycle event.
        log.appended(&retract(10, 3), 10);
        assert_eq!(log.status(), Some(ReviewStatus::Scheduled));
        refused(&log, &retract(11, 3), |r| {
            matches!(r, LifecycleError::AlreadyRetracted { .. })
        });
        refused(&log, &retract(11, 10), |r| {
            matches!(r, LifecycleError::RetractsRetraction { .. })
        });
        assert!(matches!(
            log.decide(&event(11, ReviewHeld)),
            Decision::Append { .. }
        ));
        assert!(matches!(
            log.decide(&retract(11, 1)),
            Decision::Append { .. }
        ));
    }

    #[test]
    fn a_retracted_side_event_gives_its_bytes_back() {
        let big = |n: u128| {
            let mut e = event(n, SideEventHeld);
            let speakers: Vec<upr_domain::Speaker> = (0..100)
                .map(|_| upr_domain::Speaker {
                    name: "n".repeat(200),
                    role: Some("r".repeat(200)),
                })
                .collect();
            if let EventData::SideEventHeld(d) = &mut e.data {
                d.speakers = speakers;
            }
            e
        };
        let mut log = ReviewLog::default();
        let mut n = 1;
        while matches!(log.decide(&big(n)), Decision::Append { .. }) {
            log.appended(&big(n), n as u64);
            n += 1;
        }
        let Decision::Refuse(e) = log.decide(&big(n)) else {
            panic!("expected the byte limit")
        };
        assert!(
            matches!(e, Refusal::Limit(LimitError::SideEventBytes { .. })),
            "{e:?}"
        );
        assert_eq!(RejectError::from(e).code, ErrorCode::LimitExceeded);
        log.appended(&retract(100, 1), 100);
        assert!(matches!(log.decide(&big(n)), Decision::Append { .. }));
    }

    #[test]
    fn the_cache_stays_within_its_capacity() {
        let mut cache = ReviewCache::new(2);
        for k in ["KZ.48", "KZ.49", "FR.48", "FR.49"] {
            cache.insert(ReviewKey::parse(k).unwrap(), ReviewLog::default());
            assert!(cache.len() <= 2);
        }
        let fr = ReviewKey::parse("FR.49").unwrap();
        assert!(cache.get_mut(&fr).is_some());
        cache.forget(&fr);
        assert!(cache.get_mut(&fr).is_none());
    }
}
