//! Where a reminder's time goes between its timer and its notice, step by
//! step, for the last [`KEPT`] reminders sent.
//!
//! A reminder can leave late for three different reasons, and one lateness
//! figure cannot tell them apart: the server's scheduler fired the timer
//! late (it wakes at most every 250 ms, and holds the stream's lock while it
//! runs), the fired timer waited before this process received it (pull
//! requests, a full hand of timers), or the checks before publishing were
//! slow (three reads). Each sent reminder adds one sample of each step, and
//! micro STATS shows their percentiles, so a slow tail is seen where it
//! arises, on whatever machine it happens.

use std::collections::VecDeque;

use serde_json::{Value, json};
use upr_domain::{Reminder, Timestamp};

/// Reminders kept: a burst of ten thousand due within a minute fits whole,
/// and sorting them on a STATS request takes about a millisecond.
pub const KEPT: usize = 16_384;

/// One sent reminder's steps, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Steps {
    /// The timer message's stored time minus the time its schedule asked
    /// for ([`Reminder::timer_at`]): the server's firing delay.
    pub fired_late: f64,
    /// This process's receipt of the fired timer minus its stored time.
    pub delivered: f64,
    /// `sent_at` minus the later of `due_at` and the receipt: the checks
    /// before publishing (a timer received early is first held until due).
    pub checked: f64,
}

impl Steps {
    /// The steps of `reminder`, whose timer was stored at `stored`, received
    /// at `received` and sent at `sent_at`.
    pub fn of(
        reminder: &Reminder,
        stored: Timestamp,
        received: Timestamp,
        sent_at: Timestamp,
    ) -> Self {
        let ms = |later: Timestamp, earlier: Timestamp| later.since(earlier).as_seconds_f64() * 1e3;
        let ready = if received > reminder.due_at {
            received
        } else {
            reminder.due_at
        };
        Self {
            fired_late: ms(stored, reminder.timer_at()),
            delivered: ms(received, stored),
            checked: ms(sent_at, ready),
        }
    }
}

/// The last [`KEPT`] reminders' steps.
#[derive(Debug, Default)]
pub struct Timing {
    kept: VecDeque<Steps>,
}

impl Timing {
    /// Keeps `steps`, forgetting the oldest beyond [`KEPT`].
    pub fn add(&mut self, steps: Steps) {
        if self.kept.len() == KEPT {
            self.kept.pop_front();
        }
        self.kept.push_back(steps);
    }

    /// p50, p99 and max of each step, in milliseconds, and how many
    /// reminders they cover; `null` figures while none was sent.
    pub fn to_json(&self) -> Value {
        let summary = |step: fn(&Steps) -> f64| {
            let mut values: Vec<f64> = self.kept.iter().map(step).collect();
            values.sort_by(f64::total_cmp);
            let at = |p: usize| {
                values
                    .len()
                    .checked_sub(1)
                    .map(|last| round(values[(last * p).div_ceil(100)]))
            };
            json!({"p50": at(50), "p99": at(99), "max": at(100)})
        };
        json!({
            "reminders": self.kept.len(),
            "fired_late_ms": summary(|s| s.fired_late),
            "delivered_ms": summary(|s| s.delivered),
            "checked_ms": summary(|s| s.checked),
        })
    }
}

/// To 0.1 ms: finer is noise.
fn round(ms: f64) -> f64 {
    (ms * 10.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use upr_domain::TIMER_EARLY;

    fn at(ms: i64) -> Timestamp {
        Timestamp::from_unix_millis(1_800_000_000_000 + ms).unwrap()
    }

    fn reminder_due(due: Timestamp) -> Reminder {
        let mut r: Reminder = serde_json::from_value(json!({
            "id": "r", "country": "KZ", "session": 48, "lead": "1h",
            "due_at": "2027-01-15T00:00:00Z",
            "scheduled_for": "2027-01-15T01:00:00Z", "location": "Geneva",
        }))
        .unwrap();
        r.due_at = due;
        r
    }

    #[test]
    fn a_timer_received_early_is_charged_only_from_its_due_time() {
        let due = at(10_000);
        let early = i64::try_from(TIMER_EARLY.whole_milliseconds()).unwrap();
        let r = reminder_due(due);
        // Fired 40 ms after its timer time, received 2 ms later, still
        // before due; sent 3 ms after due.
        let s = Steps::of(
            &r,
            at(10_000 - early + 40),
            at(10_000 - early + 42),
            at(10_003),
        );
        assert_eq!((s.fired_late, s.delivered, s.checked), (40.0, 2.0, 3.0));
    }

    #[test]
    fn a_timer_received_after_due_is_charged_from_its_receipt() {
        let r = reminder_due(at(10_000));
        let s = Steps::of(&r, at(10_500), at(10_600), at(10_605));
        assert_eq!((s.delivered, s.checked), (100.0, 5.0));
    }

    #[test]
    fn percentiles_cover_the_last_kept_reminders_only() {
        let mut t = Timing::default();
        assert_eq!(t.to_json()["checked_ms"]["p99"], Value::Null);
        for i in 0..KEPT + 100 {
            let v = if i < 100 { 1e6 } else { (i - 100) as f64 };
            t.add(Steps {
                fired_late: v,
                delivered: 0.0,
                checked: 1.0,
            });
        }
        let j = t.to_json();
        assert_eq!(j["reminders"], KEPT);
        // The 100 huge samples were the oldest, and are gone.
        assert_eq!(j["fired_late_ms"]["max"], 16_383.0);
        assert_eq!(j["fired_late_ms"]["p99"], 16_220.0);
        assert_eq!(j["fired_late_ms"]["p50"], 8_192.0);
        assert_eq!(j["checked_ms"]["p50"], 1.0);
    }
}
