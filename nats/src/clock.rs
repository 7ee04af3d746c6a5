//! The one place the services read the clock. The domain never does: its
//! rules take the time as an argument, so they are tested with any time.

use time::OffsetDateTime;

use upr_domain::Timestamp;

/// The current time, UTC.
///
/// # Panics
/// Only when the system clock reads a time outside years 0000..=9999.
pub fn now() -> Timestamp {
    // The clock is inside years 0000..=9999 on any machine this runs on.
    Timestamp::from_offset_datetime(OffsetDateTime::now_utc())
        .expect("the clock is within years 0000..=9999")
}

/// The current time as events record it: UTC, whole milliseconds.
pub fn now_millis() -> Timestamp {
    now().truncate_to_millis()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_times_have_millisecond_precision_and_do_not_go_back() {
        let a = now_millis();
        let b = now();
        assert_eq!(a.as_offset_datetime().nanosecond() % 1_000_000, 0);
        assert!(a <= b);
    }
}
