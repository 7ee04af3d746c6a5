//! How large each field of an event may be: the bottom of the domain's
//! module graph. The intake parser enforces these bounds and the JSON
//! Schemas of intake and of stored events state them, so they are named
//! once, here, where both the event types and the intake field kinds can
//! read them without reading each other.

/// Upper bound for every count field (participating states, recommendations):
/// far above any real value, low enough to catch unit mistakes.
pub const MAX_COUNT: u64 = 10_000;

/// Longest value of each free-text field, in characters once trimmed.
pub mod max_chars {
    /// `source`: who reported it.
    pub const SOURCE: usize = 200;
    /// `location` of a review.
    pub const LOCATION: usize = 200;
    /// `reason` of a reschedule, a cancellation or a retraction.
    pub const REASON: usize = 1000;
    /// `title` of a side event.
    pub const TITLE: usize = 300;
    /// A speaker's `name` and `role`.
    pub const SPEAKER: usize = 200;
    /// One of a side event's `topics`.
    pub const TOPIC: usize = 100;
    /// `document_symbol` of a report; see [`super::DOCUMENT_SYMBOL_CHARS`].
    pub const DOCUMENT_SYMBOL: usize = 50;
}

/// Most speakers one side event lists.
pub const MAX_SPEAKERS: usize = 100;

/// Most topics one side event lists.
pub const MAX_TOPICS: usize = 50;

/// The characters a document symbol may hold besides ASCII letters and digits.
pub const DOCUMENT_SYMBOL_CHARS: &str = " /.-()*";

/// The characters of a document symbol other than its ends, as the body of
/// a regex class.
pub fn document_symbol_class(with_space: bool) -> String {
    let mut class = String::from("A-Za-z0-9");
    for c in DOCUMENT_SYMBOL_CHARS.chars() {
        match c {
            ' ' if with_space => class.push(' '),
            ' ' => {}
            c => {
                class.push('\\');
                class.push(c);
            }
        }
    }
    class
}

/// The stored form of a document symbol (trimmed, so no space at either end),
/// for the `#[schemars(pattern(...))]` of the stored field.
pub fn document_symbol_pattern() -> String {
    let (end, inner) = (document_symbol_class(false), document_symbol_class(true));
    format!("^[{end}](?:[{inner}]*[{end}])?$")
}
