//! A side event as its review value lists it in full, and the bytes it
//! takes there: what the per-review side-event byte limit ([`crate::limits`])
//! counts and the review view ([`crate::read_models`]) holds. Both read it
//! from here, so neither reads the other.

use std::io;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::event::{SideEventHeld, Speaker};
use super::party::PartyName;
use super::time::Timestamp;

/// A side event as listed in full in its review.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SideEventView {
    /// The stored event's id (unique, and a stable tie-breaker in sorting).
    pub event_id: Uuid,
    /// Who recorded it (contract v3; `null` before, or without users).
    pub recorded_by: Option<PartyName>,
    /// The event's title.
    pub title: String,
    /// When it was held.
    pub held_on: Timestamp,
    /// Who spoke.
    pub speakers: Vec<Speaker>,
    /// How many states took part, if reported.
    pub participating_states: Option<u32>,
    /// Subjects covered.
    pub topics: Vec<String>,
}

impl SideEventView {
    /// The entry for the side event stored with `event_id` by `recorded_by`.
    pub fn of(event_id: Uuid, recorded_by: Option<&PartyName>, d: &SideEventHeld) -> Self {
        Self {
            event_id,
            recorded_by: recorded_by.cloned(),
            title: d.title.clone(),
            held_on: d.held_on,
            speakers: d.speakers.clone(),
            participating_states: d.participating_states,
            topics: d.topics.clone(),
        }
    }

    /// Bytes it takes in the review value (what the side-event byte limit counts).
    pub fn encoded_len(&self) -> usize {
        json_len(self)
    }
}

/// Bytes a side event takes in its review value.
pub fn side_event_bytes(id: Uuid, recorded_by: Option<&PartyName>, d: &SideEventHeld) -> usize {
    SideEventView::of(id, recorded_by, d).encoded_len()
}

/// The length of `value` as compact JSON, without building the text.
pub(crate) fn json_len<T: Serialize>(value: &T) -> usize {
    struct Count(usize);
    impl io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Read-model parts hold only strings, integers and structs.
    serde_json::to_writer(&mut count, value).expect("a read-model part serializes");
    count.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_len_is_the_length_of_the_compact_text() {
        let v = json!({"a": "é\u{1}\"", "b": [1, 2]});
        assert_eq!(json_len(&v), serde_json::to_vec(&v).unwrap().len());
    }
}
