//! What tests share about the reviews they use, written once: KZ-48
//! (Kazakhstan in the 48th session, the contract's own example), its dates,
//! and one review's commands in lifecycle order.

use serde_json::{Value, json};

/// The date KZ-48 is first scheduled for.
pub const KZ48_DATE: &str = "2025-01-23T08:30:00Z";

/// The date KZ-48 is rescheduled to.
pub const KZ48_NEW_DATE: &str = "2025-01-24T08:30:00Z";

/// The day side events of the 48th session are held.
pub const SIDE_EVENT_DAY: &str = "2025-01-22";

/// The day the 48th session's reports are published.
pub const REPORT_DAY: &str = "2025-03-01";

/// KZ-48's scheduling as a client writes it, compact, for tests that send
/// bytes rather than a JSON value.
pub fn kz48_schedule_text() -> String {
    json!({"country": "KZ", "session": 48, "scheduled_for": KZ48_DATE}).to_string()
}

/// One review's commands in lifecycle order (schedule, hold, report, a side
/// event) as intake payloads, as a client sends them one after another.
pub fn lifecycle_steps(country: &str, session: u64) -> Vec<(upr_domain::EventType, Value)> {
    use upr_domain::EventType;
    let review = json!({"country": country, "session": session});
    [
        (
            EventType::ReviewScheduled,
            json!({"scheduled_for": "2030-01-23T08:30:00Z"}),
        ),
        (EventType::ReviewHeld, json!({})),
        (
            EventType::ReportPublished,
            json!({"published_on": "2030-03-01"}),
        ),
        (
            EventType::SideEventHeld,
            json!({"title": "Civic space", "held_on": "2030-01-22"}),
        ),
    ]
    .into_iter()
    .map(|(ty, more)| {
        let mut payload = review.clone();
        for (k, v) in more.as_object().expect("an object") {
            payload[k] = v.clone();
        }
        (ty, payload)
    })
    .collect()
}
