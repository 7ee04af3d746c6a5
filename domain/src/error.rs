//! The error every reply and every rejection carries: a stable code for
//! programs, a sentence for people, and the field that was wrong.
//!
//! The domain's rules return typed errors ([`LifecycleError`],
//! [`LimitError`]) that carry what the rule looked at; they become a
//! `RejectError` only where a service answers (`From`), so the code and the
//! sentence are decided here and in their `Display`, once.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::lifecycle::LifecycleError;
use super::limits::LimitError;

/// The stable, machine-readable error codes of the contract.
///
/// Grouped by what the caller should do: fix the message (`invalid_json`,
/// `unknown_type`, `missing_field`, `invalid_field`, `too_large`), re-read
/// and decide again (`conflict`), retry with the same `event_id`
/// (`unavailable`, `timeout`), or accept the answer (`not_found`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The payload is not a single, well-formed JSON object.
    InvalidJson,
    /// The subject names an event type that does not exist.
    UnknownType,
    /// A required field is absent or `null`.
    MissingField,
    /// A field is unknown, has the wrong JSON type or is out of range.
    InvalidField,
    /// The review's lifecycle does not allow this event now, or its
    /// `event_id` already identifies another event.
    Conflict,
    /// The party may not do this (contract v3: retract an event another
    /// party recorded, unless it is an editor).
    Forbidden,
    /// The review already holds as many events of this kind as a review may
    /// (contract v2: 200 side events, 100 lifecycle events).
    LimitExceeded,
    /// The payload exceeds 64 KiB.
    TooLarge,
    /// JetStream was not reachable; nothing was stored.
    Unavailable,
    /// A query asked for a read model that does not exist.
    NotFound,
    /// A query waited too long for `min_seq`.
    Timeout,
}

impl ErrorCode {
    /// The wire name, e.g. `"invalid_field"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::InvalidJson => "invalid_json",
            Self::UnknownType => "unknown_type",
            Self::MissingField => "missing_field",
            Self::InvalidField => "invalid_field",
            Self::Conflict => "conflict",
            Self::Forbidden => "forbidden",
            Self::LimitExceeded => "limit_exceeded",
            Self::TooLarge => "too_large",
            Self::Unavailable => "unavailable",
            Self::NotFound => "not_found",
            Self::Timeout => "timeout",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refusal, serialized as `{"code", "message", "field"}` with `field`
/// `null` when the problem is not about one field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, thiserror::Error)]
#[error("{code}: {message}")]
pub struct RejectError {
    /// What kind of problem, for programs.
    pub code: ErrorCode,
    /// A sentence naming the problem, for people.
    #[schemars(length(max = MAX_MESSAGE_CHARS + 1))]
    pub message: String,
    /// The offending field as a path (`speakers[1].name`), if any.
    #[schemars(length(max = MAX_FIELD_CHARS + 1))]
    pub field: Option<String>,
}

/// Longest `message` of a refusal, in characters, before the `…` that marks
/// a cut (so a message has at most one more): a message quotes what was
/// sent (an unknown key, a bad value), and a client must not be able to make
/// the reply, or the record kept in `UPR_REJECTED`, as large as its input.
pub const MAX_MESSAGE_CHARS: usize = 500;

/// Longest `field` of a refusal, in characters (a field path names keys the
/// client chose, e.g. an unknown one).
pub const MAX_FIELD_CHARS: usize = 100;

/// `text` cut to `max` characters, with `…` marking the cut.
fn cap(mut text: String, max: usize) -> String {
    if let Some((at, _)) = text.char_indices().nth(max) {
        text.truncate(at);
        text.push('…');
    }
    text
}

impl RejectError {
    /// Any code with a message and no field.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: cap(message.into(), MAX_MESSAGE_CHARS),
            field: None,
        }
    }

    /// `missing_field`: a required field is absent or `null`.
    pub fn missing(field: impl Into<String>) -> Self {
        let field = cap(field.into(), MAX_FIELD_CHARS);
        Self {
            code: ErrorCode::MissingField,
            message: cap(format!("field \"{field}\" is required"), MAX_MESSAGE_CHARS),
            field: Some(field),
        }
    }

    /// `invalid_field`: `reason` completes the sentence `field "x" ...`, e.g.
    /// `invalid("session", "must be an integer from 1 to 999, got 1000")`.
    pub fn invalid(field: impl Into<String>, reason: impl fmt::Display) -> Self {
        let field = cap(field.into(), MAX_FIELD_CHARS);
        Self {
            code: ErrorCode::InvalidField,
            message: cap(format!("field \"{field}\" {reason}"), MAX_MESSAGE_CHARS),
            field: Some(field),
        }
    }

    /// `invalid_field` for a field the event type does not have.
    pub fn unknown_field(field: impl Into<String>, allowed: &[&str]) -> Self {
        Self::invalid(
            field,
            format_args!(
                "is not allowed here; allowed fields: {}",
                allowed.join(", ")
            ),
        )
    }

    /// `invalid_json`, with what was wrong with the document.
    pub fn invalid_json(detail: impl fmt::Display) -> Self {
        Self::new(
            ErrorCode::InvalidJson,
            format!("payload is not a valid JSON object: {detail}"),
        )
    }

    /// `too_large`, with the size that was refused.
    pub fn too_large(len: usize, max: usize) -> Self {
        Self::new(
            ErrorCode::TooLarge,
            format!("payload is {len} bytes; the limit is {max} bytes"),
        )
    }

    /// `limit_exceeded`, naming the limit.
    pub fn limit_exceeded(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::LimitExceeded, message)
    }

    /// `conflict`, with the lifecycle explanation.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Conflict, message)
    }

    /// The same refusal, about `field`.
    #[must_use]
    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(cap(field.into(), MAX_FIELD_CHARS));
        self
    }

    /// `unavailable`: nothing was stored, retrying is safe.
    pub fn unavailable(detail: impl fmt::Display) -> Self {
        Self::new(
            ErrorCode::Unavailable,
            format!(
                "the event store is unavailable ({detail}); nothing was stored, retry with the same event_id"
            ),
        )
    }

    /// `not_found`, naming what was looked up.
    pub fn not_found(what: impl fmt::Display) -> Self {
        Self::new(ErrorCode::NotFound, format!("{what} not found"))
    }

    /// `timeout`, with what was waited for.
    pub fn timeout(detail: impl Into<String>) -> Self {
        Self::new(ErrorCode::Timeout, detail)
    }
}

/// A broken lifecycle rule, at the edge: `conflict`, its sentence, no field.
impl From<LifecycleError> for RejectError {
    fn from(e: LifecycleError) -> Self {
        Self::conflict(e.to_string())
    }
}

/// A passed per-review limit, at the edge: `limit_exceeded`, its sentence,
/// no field.
impl From<LimitError> for RejectError {
    fn from(e: LimitError) -> Self {
        Self::limit_exceeded(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echoed_text_is_bounded_whatever_was_sent() {
        let key = "k".repeat(60_000);
        let e = RejectError::unknown_field(key.as_str(), &["country"]);
        let field = e.field.as_deref().unwrap();
        assert_eq!(field.chars().count(), MAX_FIELD_CHARS + 1, "{field}");
        assert!(field.ends_with('…'));
        assert!(e.message.chars().count() <= MAX_MESSAGE_CHARS + 1);
        let e = RejectError::invalid("title", format_args!("got {:?}", "é".repeat(70_000)));
        assert_eq!(e.message.chars().count(), MAX_MESSAGE_CHARS + 1);
        assert!(e.message.starts_with("field \"title\" got"));
        let e = RejectError::new(ErrorCode::UnknownType, "x".repeat(10_000));
        assert_eq!(e.message.chars().count(), MAX_MESSAGE_CHARS + 1);
        // Short texts are untouched.
        assert_eq!(
            RejectError::missing("country").message,
            "field \"country\" is required"
        );
    }

    #[test]
    fn serializes_code_message_and_null_field_in_order() {
        let e = RejectError::conflict("review KZ 48 is held");
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"code":"conflict","message":"review KZ 48 is held","field":null}"#
        );
    }

    #[test]
    fn field_errors_name_the_field_in_the_sentence() {
        let e = RejectError::invalid("session", "must be an integer from 1 to 999, got 1000");
        assert_eq!(
            e.message,
            "field \"session\" must be an integer from 1 to 999, got 1000"
        );
        assert_eq!(e.field.as_deref(), Some("session"));
        assert_eq!(
            RejectError::missing("country").code,
            ErrorCode::MissingField
        );
    }

    #[test]
    fn codes_use_their_wire_names() {
        for code in [
            ErrorCode::InvalidJson,
            ErrorCode::TooLarge,
            ErrorCode::NotFound,
            ErrorCode::Timeout,
        ] {
            assert_eq!(
                serde_json::to_string(&code).unwrap(),
                format!("\"{}\"", code.as_str())
            );
        }
    }
}
