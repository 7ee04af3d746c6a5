//! The per-review limits of contract v2, in one place: intake refuses an
//! event past them (`limit_exceeded`, naming the limit) and the read-model
//! fold skips one, so a review's value stays bounded whatever reached the log.
//!
//! Why these numbers: a review value lists every event of the review in its
//! history and every side event in full, and it must stay under
//! [`MAX_VALUE_BYTES`]. A count alone cannot promise that, because one side
//! event may take up to 64 KiB (the intake limit): 200 of them would be
//! 12.8 MiB. So side events are bounded by count *and* by the bytes they
//! take in the value; the worst case of every other field is small and
//! fixed (see the size tests in `read_models`).

use super::event::{Envelope, EventData, ReviewKey};
use super::side_event::side_event_bytes;

/// Most side events one review may hold.
pub const MAX_SIDE_EVENTS: usize = 200;

/// Most bytes a review's side events may take in its `upr_reviews` value.
pub const MAX_SIDE_EVENT_BYTES: usize = 128 * 1024;

/// Most lifecycle events (every type but `side_event_held` and
/// `event_retracted`) one review may hold: its history lists them all.
pub const MAX_LIFECYCLE_EVENTS: usize = 100;

/// Most retractions one review may hold (its history lists them, and marks
/// each retracted entry with a reason).
pub const MAX_RETRACTIONS: usize = 100;

/// What every read-model value stays under, whatever was sent.
pub const MAX_VALUE_BYTES: usize = 256 * 1024;

/// How much of the limits a review has used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReviewSize {
    /// `side_event_held` events.
    pub side_events: usize,
    /// Bytes those side events take in the review value.
    pub side_event_bytes: usize,
    /// Lifecycle events (retracted ones included: the history keeps them).
    pub lifecycle: usize,
    /// `event_retracted` events.
    pub retractions: usize,
}

impl ReviewSize {
    /// Counts one more stored event of the review. (A retracted side event
    /// gives its bytes back: [`ReviewSize::side_event_retracted`].)
    pub fn add(&mut self, event: &Envelope) {
        match &event.data {
            EventData::SideEventHeld(d) => {
                self.side_events += 1;
                self.side_event_bytes += side_event_bytes(event.id, event.recorded_by.as_ref(), d);
            }
            EventData::EventRetracted(_) => self.retractions += 1,
            _ => self.lifecycle += 1,
        }
    }

    /// A side event of `bytes` ([`side_event_bytes`]) was retracted: it
    /// leaves the review value, so its bytes are free again. It still counts
    /// towards [`MAX_SIDE_EVENTS`], as the history keeps its entry.
    pub fn side_event_retracted(&mut self, bytes: usize) {
        self.side_event_bytes = self.side_event_bytes.saturating_sub(bytes);
    }

    /// Whether the review may take `event` as well.
    ///
    /// # Errors
    /// The [`LimitError`] of the limit that `event` would pass.
    pub fn check(&self, event: &Envelope) -> Result<(), LimitError> {
        let review = event.review_key();
        match &event.data {
            EventData::SideEventHeld(_) if self.side_events >= MAX_SIDE_EVENTS => {
                Err(LimitError::SideEvents {
                    review,
                    held: self.side_events,
                    max: MAX_SIDE_EVENTS,
                })
            }
            EventData::SideEventHeld(d) => {
                let adding = side_event_bytes(event.id, event.recorded_by.as_ref(), d);
                if self.side_event_bytes + adding <= MAX_SIDE_EVENT_BYTES {
                    return Ok(());
                }
                Err(LimitError::SideEventBytes {
                    review,
                    held: self.side_event_bytes,
                    adding,
                    max: MAX_SIDE_EVENT_BYTES,
                })
            }
            EventData::EventRetracted(_) if self.retractions >= MAX_RETRACTIONS => {
                Err(LimitError::Retractions {
                    review,
                    held: self.retractions,
                    max: MAX_RETRACTIONS,
                })
            }
            EventData::EventRetracted(_) => Ok(()),
            _ if self.lifecycle >= MAX_LIFECYCLE_EVENTS => Err(LimitError::LifecycleEvents {
                review,
                held: self.lifecycle,
                max: MAX_LIFECYCLE_EVENTS,
            }),
            _ => Ok(()),
        }
    }
}

/// A per-review limit an event would pass, with how much the review holds
/// (`held`) and the limit (`max`). `Display` is the sentence a refused
/// client reads; at the edge it becomes a `limit_exceeded`
/// [`RejectError`](super::error::RejectError) (`From`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    /// [`MAX_SIDE_EVENTS`].
    #[error(
        "review {} {} already holds {held} side events; the limit is {max} side events per review",
        .review.country,
        .review.session
    )]
    SideEvents {
        /// The review.
        review: ReviewKey,
        /// Side events it holds.
        held: usize,
        /// The limit.
        max: usize,
    },
    /// [`MAX_SIDE_EVENT_BYTES`].
    #[error(
        "review {} {}: its side events take {held} bytes and this one would add {adding}; \
         the limit is {max} bytes of side events per review \
         (shorten the speakers or topics)",
        .review.country,
        .review.session
    )]
    SideEventBytes {
        /// The review.
        review: ReviewKey,
        /// Bytes its side events take in the review value.
        held: usize,
        /// Bytes the refused side event would add.
        adding: usize,
        /// The limit.
        max: usize,
    },
    /// [`MAX_LIFECYCLE_EVENTS`].
    #[error(
        "review {} {} already holds {held} lifecycle events; the limit is {max} lifecycle events per review",
        .review.country,
        .review.session
    )]
    LifecycleEvents {
        /// The review.
        review: ReviewKey,
        /// Lifecycle events it holds.
        held: usize,
        /// The limit.
        max: usize,
    },
    /// [`MAX_RETRACTIONS`].
    #[error(
        "review {} {} already holds {held} retractions; the limit is {max} retractions per review",
        .review.country,
        .review.session
    )]
    Retractions {
        /// The review.
        review: ReviewKey,
        /// Retractions it holds.
        held: usize,
        /// The limit.
        max: usize,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::EventType;
    use crate::error::{ErrorCode, RejectError};
    use crate::party::{MAX_PARTY_NAME, PartyName};
    use crate::read_models::tests::envelope;
    use serde_json::json;

    fn side(n: u64, speakers: usize) -> Envelope {
        let speakers: Vec<_> = (0..speakers)
            .map(|i| json!({"name": format!("{i:0>200}"), "role": "x".repeat(200)}))
            .collect();
        let data = json!({"title": "t", "held_on": "2025-01-22T00:00:00Z", "speakers": speakers});
        envelope(n, "KZ.48", data, EventType::SideEventHeld)
    }

    fn cancelled(n: u64) -> Envelope {
        envelope(
            n,
            "KZ.48",
            json!({"reason": null}),
            EventType::ReviewCancelled,
        )
    }

    #[track_caller]
    fn then_limit(r: Result<(), LimitError>) -> LimitError {
        r.expect_err("expected a limit")
    }

    #[test]
    fn a_review_takes_at_most_200_small_side_events_and_100_lifecycle_events() {
        let mut size = ReviewSize::default();
        for n in 0..MAX_SIDE_EVENTS as u64 {
            size.check(&side(n, 0)).unwrap();
            size.add(&side(n, 0));
        }
        let e = then_limit(size.check(&side(999, 0)));
        assert!(
            matches!(
                e,
                LimitError::SideEvents {
                    held: 200,
                    max: 200,
                    ..
                }
            ),
            "{e:?}"
        );
        // Side events do not use up the lifecycle limit, nor the other way round.
        size.check(&cancelled(1000)).unwrap();
        for n in 0..MAX_LIFECYCLE_EVENTS as u64 {
            size.add(&cancelled(n));
        }
        let e = then_limit(size.check(&cancelled(1000)));
        assert!(
            matches!(
                e,
                LimitError::LifecycleEvents {
                    held: 100,
                    max: 100,
                    ..
                }
            ),
            "{e:?}"
        );
    }

    #[test]
    fn large_side_events_are_bounded_by_their_bytes_before_their_count() {
        let mut size = ReviewSize::default();
        let mut taken = 0;
        // 100 speakers of 400 characters: about 42 KB each.
        while size.check(&side(taken, 100)).is_ok() {
            size.add(&side(taken, 100));
            taken += 1;
        }
        assert_eq!(taken, 3, "three fit in {MAX_SIDE_EVENT_BYTES} bytes");
        assert!(size.side_event_bytes <= MAX_SIDE_EVENT_BYTES);
        let e = then_limit(size.check(&side(99, 100)));
        assert!(
            matches!(e, LimitError::SideEventBytes { held, adding, max: 131_072, .. }
                if held == size.side_event_bytes && held + adding > MAX_SIDE_EVENT_BYTES),
            "{e:?}"
        );
        // A small one still fits in what is left.
        size.check(&side(100, 0)).unwrap();
    }

    /// The side events' byte limit counts the recorder's name as the review
    /// value holds it, so a long name can never carry a value past its
    /// bound: a side event that fits when nobody is named is refused when a
    /// party of the longest name records it and the room is short by that
    /// name.
    #[test]
    fn the_byte_limit_counts_the_name_of_the_recorder() {
        let anonymous = side(1, 0);
        let mut named = anonymous.clone();
        named.recorded_by = Some(PartyName::parse(&"n".repeat(MAX_PARTY_NAME)).unwrap());
        let bytes = |e: &Envelope| match &e.data {
            EventData::SideEventHeld(d) => side_event_bytes(e.id, e.recorded_by.as_ref(), d),
            _ => unreachable!(),
        };
        // `null` becomes the name in quotes.
        assert_eq!(bytes(&named), bytes(&anonymous) + MAX_PARTY_NAME + 2 - 4);
        let size = ReviewSize {
            side_event_bytes: MAX_SIDE_EVENT_BYTES - bytes(&anonymous),
            ..ReviewSize::default()
        };
        size.check(&anonymous).unwrap();
        let e = then_limit(size.check(&named));
        assert!(
            matches!(e, LimitError::SideEventBytes { adding, .. } if adding == bytes(&named)),
            "{e:?}"
        );
        let mut filled = ReviewSize::default();
        filled.add(&named);
        assert_eq!(filled.side_event_bytes, bytes(&named));
    }

    /// The wire text of every limit, as clients and the documentation read
    /// it: a `limit_exceeded` with no field.
    #[test]
    fn limits_say_what_the_review_holds_and_the_limit() {
        #[track_caller]
        fn says(e: LimitError, text: &str) {
            assert_eq!(e.to_string(), text);
            let wire = RejectError::from(e);
            assert_eq!(
                (wire.code, wire.message.as_str(), wire.field.as_deref()),
                (ErrorCode::LimitExceeded, text, None)
            );
        }
        let review = ReviewKey::parse("KZ.48").unwrap();
        says(
            LimitError::SideEvents {
                review,
                held: 200,
                max: 200,
            },
            "review KZ 48 already holds 200 side events; the limit is 200 side events per review",
        );
        says(
            LimitError::SideEventBytes {
                review,
                held: 127_000,
                adding: 4_200,
                max: 131_072,
            },
            "review KZ 48: its side events take 127000 bytes and this one would add 4200; \
             the limit is 131072 bytes of side events per review (shorten the speakers or topics)",
        );
        says(
            LimitError::LifecycleEvents {
                review,
                held: 100,
                max: 100,
            },
            "review KZ 48 already holds 100 lifecycle events; \
             the limit is 100 lifecycle events per review",
        );
        says(
            LimitError::Retractions {
                review,
                held: 100,
                max: 100,
            },
            "review KZ 48 already holds 100 retractions; the limit is 100 retractions per review",
        );
    }

    #[test]
    fn a_review_takes_at_most_100_retractions() {
        let mut size = ReviewSize::default();
        let retraction = |n| {
            envelope(
                n,
                "KZ.48",
                json!({"retracts": uuid::Uuid::from_u128(1), "reason": "mistake"}),
                EventType::EventRetracted,
            )
        };
        for n in 0..MAX_RETRACTIONS as u64 {
            size.check(&retraction(n)).unwrap();
            size.add(&retraction(n));
        }
        let e = then_limit(size.check(&retraction(999)));
        assert!(
            matches!(
                e,
                LimitError::Retractions {
                    held: 100,
                    max: 100,
                    ..
                }
            ),
            "{e:?}"
        );
    }
}
