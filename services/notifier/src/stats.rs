//! The notifier's counters, shown in the micro-service STATS of every
//! endpoint and answered on `upr.notifier.status`.
//!
//! `sent`, `late`, `skipped` and `malformed` count what this process did since
//! it started (as every micro-service STATS does); `pending` is read from the
//! timers stream, so it is the same for every replica and survives restarts.

use std::sync::{
    Mutex, PoisonError,
    atomic::{AtomicU64, Ordering::Relaxed},
};

use serde_json::{Value, json};

use crate::timing::{Steps, Timing};

/// Counters shared by the loops and the stats handler.
#[derive(Debug, Default)]
pub struct Stats {
    /// Reminders waiting for their time or fired and not yet handled: the
    /// number of messages in the timers stream, refreshed every second.
    pub pending: AtomicU64,
    /// Reminders published (on time or late).
    pub sent: AtomicU64,
    /// Of those, the ones published with `late: true`.
    pub late: AtomicU64,
    /// Reminders that will never be sent: already due when their review was
    /// (re)scheduled, come due only after the review date, or fired for a
    /// date the review no longer has.
    pub skipped: AtomicU64,
    /// Events or timer messages that could not be read and were skipped.
    pub malformed: AtomicU64,
    /// Times a due reminder was held back because the log held a change of
    /// its review the planner had not applied yet (catching up after
    /// downtime).
    pub held: AtomicU64,
    /// Where the last reminders' time went, step by step.
    timing: Mutex<Timing>,
}

impl Stats {
    /// Adds `n` to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    /// Keeps one sent reminder's steps.
    pub fn timed(&self, steps: Steps) {
        self.timing
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .add(steps);
    }

    /// The counters as JSON, for STATS `data`, with the reminder timing.
    pub fn to_json(&self) -> Value {
        let timing = self
            .timing
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .to_json();
        json!({
            "reminder_timing": timing,
            "pending": self.pending.load(Relaxed),
            "sent": self.sent.load(Relaxed),
            "late": self.late.load(Relaxed),
            "skipped": self.skipped.load(Relaxed),
            "malformed": self.malformed.load(Relaxed),
            "held_for_planner": self.held.load(Relaxed),
        })
    }

    /// The `upr.notifier.status` answer.
    pub fn status(&self) -> Value {
        json!({
            "ok": true,
            "pending": self.pending.load(Relaxed),
            "sent": self.sent.load(Relaxed),
            "late": self.late.load(Relaxed),
            "skipped": self.skipped.load(Relaxed),
        })
    }
}
