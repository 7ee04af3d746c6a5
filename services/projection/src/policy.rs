//! When the projector writes what it folded: pure rules, unit-tested here,
//! applied by the loop in `projector`.
//!
//! Review values are written once they go cold, session and country values
//! and the ack at checkpoints. A value changed by many events is then
//! written once for all of them: while catching up (a rebuild) the events
//! of one review are spread over thousands of others, and writing its value
//! after every batch that touched it wrote each review about once per
//! event.

use std::time::Duration;

/// While catching up, write session and country values and ack at least
/// this often, or, when a checkpoint takes long (large aggregates), so that
/// at most a tenth of the time is spent checkpointing...
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);
/// ...and at the latest after this many messages (kept below the
/// consumer's `max_ack_pending`).
pub const CHECKPOINT_EVENTS: u64 = 200_000;
/// How long the loop waits for more messages with a checkpoint due before
/// writing it anyway.
pub const IDLE_CHECKPOINT: Duration = Duration::from_millis(50);
/// A changed review value stays unwritten while one of the last this many
/// batches touched it (more events of it are likely to follow)...
pub const HOT_BATCHES: u64 = 2;
/// ...unless this many review values wait to be written: then all are, so
/// the values held only in memory stay bounded.
pub const MAX_UNWRITTEN_REVIEWS: usize = 4096;

/// Where the loop stands after folding a batch.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    /// The consumer has nothing more pending.
    pub caught_up: bool,
    /// The batch stopped at a gap in the sequence.
    pub gap: bool,
    /// Events folded since the last checkpoint.
    pub unwritten_events: u64,
    /// Time since the last checkpoint.
    pub since_checkpoint: Duration,
    /// How long the last checkpoint took.
    pub checkpoint_cost: Duration,
}

/// Whether to write every changed value and ack now. Always once caught up
/// (a live event is visible at once) and before a gap is repaired (what
/// came before it is acked); while catching up, at the latest after
/// [`CHECKPOINT_EVENTS`] events (below the consumer's `max_ack_pending`),
/// and otherwise every [`CHECKPOINT_INTERVAL`], or less often when
/// checkpoints are slow (large aggregates), so that at most a tenth of the
/// time goes to them.
pub fn checkpoint_due(p: &Progress) -> bool {
    p.caught_up
        || p.gap
        || p.unwritten_events >= CHECKPOINT_EVENTS
        || p.since_checkpoint >= CHECKPOINT_INTERVAL.max(p.checkpoint_cost * 9)
}

/// Which changed review values to write after batch `stamp` when it is not
/// a checkpoint: those last touched before the returned batch, i.e. by
/// none of the last [`HOT_BATCHES`], or all of them (`u64::MAX`) when
/// [`MAX_UNWRITTEN_REVIEWS`] wait.
pub fn reviews_touched_before(stamp: u64, unwritten: usize) -> u64 {
    if unwritten >= MAX_UNWRITTEN_REVIEWS {
        u64::MAX
    } else {
        stamp.saturating_sub(HOT_BATCHES - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Catching up, a moment after a quick checkpoint.
    fn busy() -> Progress {
        Progress {
            caught_up: false,
            gap: false,
            unwritten_events: 10_000,
            since_checkpoint: Duration::from_millis(300),
            checkpoint_cost: Duration::from_millis(20),
        }
    }

    #[test]
    fn a_live_event_or_a_gap_is_checkpointed_at_once() {
        assert!(!checkpoint_due(&busy()));
        assert!(checkpoint_due(&Progress {
            caught_up: true,
            ..busy()
        }));
        assert!(checkpoint_due(&Progress {
            gap: true,
            ..busy()
        }));
    }

    #[test]
    fn catching_up_checkpoints_every_interval_or_after_enough_events() {
        assert!(checkpoint_due(&Progress {
            since_checkpoint: CHECKPOINT_INTERVAL,
            ..busy()
        }));
        assert!(checkpoint_due(&Progress {
            unwritten_events: CHECKPOINT_EVENTS,
            ..busy()
        }));
        assert!(!checkpoint_due(&Progress {
            unwritten_events: CHECKPOINT_EVENTS - 1,
            ..busy()
        }));
    }

    #[test]
    fn slow_checkpoints_take_at_most_a_tenth_of_the_time() {
        let slow = Progress {
            checkpoint_cost: Duration::from_millis(500),
            ..busy()
        };
        assert!(!checkpoint_due(&Progress {
            since_checkpoint: Duration::from_millis(4_400),
            ..slow
        }));
        assert!(checkpoint_due(&Progress {
            since_checkpoint: Duration::from_millis(4_500),
            ..slow
        }));
    }

    #[test]
    fn a_review_is_written_once_the_last_two_batches_left_it_alone() {
        // Batch 10 folded: values last touched in batches 9 or 10 wait.
        assert_eq!(reviews_touched_before(10, 100), 9);
        assert_eq!(reviews_touched_before(1, 100), 0, "nothing is that old yet");
    }

    #[test]
    fn too_many_unwritten_reviews_are_all_written() {
        assert_eq!(reviews_touched_before(10, MAX_UNWRITTEN_REVIEWS - 1), 9);
        assert_eq!(reviews_touched_before(10, MAX_UNWRITTEN_REVIEWS), u64::MAX);
    }
}
