//! JSON Schema fragments of the domain's values, beside the parsing they
//! describe: the types with a hand-written serde form implement
//! `JsonSchema` here, and intake's field fragments state the parser's rules
//! (trimmed lengths, codes in any case, the UUID spellings it takes). The
//! `upr-schema` crate assembles whole documents from them.

use std::borrow::Cow;
use std::fmt::Write as _;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::bounds::{MAX_COUNT, document_symbol_class, max_chars};
use crate::country::{COUNTRIES, Country};
use crate::event::{
    Envelope, EventRetracted, EventType, OutcomeAdopted, ReportPublished, ReviewCancelled,
    ReviewHeld, ReviewRescheduled, ReviewScheduled, SCHEMA, Session, SideEventHeld,
};
use crate::member_states::MEMBER_STATES;
use crate::time::Timestamp;

// ---- fragments shared by the derived and the hand-built schemas -------------

/// Every character `str::trim` removes, as the body of a regex class: the
/// parser trims before it counts, so the patterns must skip the same ones.
pub fn white_space_class() -> String {
    let mut class = String::new();
    let mut c = 0u32;
    while c <= 0xFFFF {
        if char::from_u32(c).is_some_and(char::is_whitespace) {
            let start = c;
            while char::from_u32(c + 1).is_some_and(char::is_whitespace) {
                c += 1;
            }
            let _ = write!(class, "\\u{start:04X}");
            if c > start {
                let _ = write!(class, "-\\u{c:04X}");
            }
        }
        c += 1;
    }
    class
}

/// Intake text: at most `max` characters once surrounding white space is
/// trimmed, and not blank. A plain `maxLength` would refuse a padded value
/// that intake accepts (and stores trimmed), hence the pattern.
pub fn intake_text(max: usize) -> Value {
    let ws = white_space_class();
    json!({
        "type": "string",
        "description": format!("1 to {max} characters once surrounding white space is trimmed (it is stored trimmed)."),
        "pattern": format!("^[{ws}]*[^{ws}](?:[\\s\\S]{{0,{}}}[^{ws}])?[{ws}]*$", max - 2),
    })
}

/// Intake `document_symbol`: the stored form's characters, with white space
/// around it that the parser trims.
pub fn intake_document_symbol() -> Value {
    let ws = white_space_class();
    let (end, inner) = (document_symbol_class(false), document_symbol_class(true));
    let max = max_chars::DOCUMENT_SYMBOL;
    json!({
        "type": "string",
        "description": format!("A UN document symbol such as \"A/HRC/59/10\": 1 to {max} letters, digits, spaces and / . - ( ) * once trimmed."),
        "pattern": format!("^[{ws}]*[{end}](?:[{inner}]{{0,{}}}[{end}])?[{ws}]*$", max - 2),
    })
}

/// An alternation matching exactly `codes` (two upper-case letters each),
/// grouped by first letter; `any_case` also matches them in lower or mixed case.
pub fn codes_pattern<'a>(codes: impl IntoIterator<Item = &'a str>, any_case: bool) -> String {
    let letter = |c: char| {
        if any_case {
            format!("{c}{}", c.to_ascii_lowercase())
        } else {
            c.to_string()
        }
    };
    let mut groups: Vec<(char, String)> = Vec::new();
    for code in codes {
        let mut chars = code.chars();
        let (Some(a), Some(b)) = (chars.next(), chars.next()) else {
            continue;
        };
        match groups.last_mut() {
            Some((first, seconds)) if *first == a => seconds.push_str(&letter(b)),
            _ => groups.push((a, letter(b))),
        }
    }
    let alternatives: Vec<String> = groups
        .into_iter()
        .map(|(a, seconds)| {
            let first = letter(a);
            let first = if first.len() > 1 {
                format!("[{first}]")
            } else {
                first
            };
            format!("{first}[{seconds}]")
        })
        .collect();
    format!("^(?:{})$", alternatives.join("|"))
}

/// A member state in any case, as intake takes `country` and troika members.
pub fn intake_member_state() -> Value {
    json!({
        "type": "string",
        "description": "ISO 3166-1 alpha-2 code of one of the 193 UN member states, in any case (stored upper case).",
        "pattern": codes_pattern(MEMBER_STATES.iter().map(|(c, _)| *c), true),
    })
}

/// Any assigned code in any case (a query's `country` option).
pub fn any_assigned_code() -> Value {
    json!({
        "type": "string",
        "description": "An assigned ISO 3166-1 alpha-2 code, in any case.",
        "pattern": codes_pattern(COUNTRIES.iter().map(|(c, _)| *c), true),
    })
}

/// The spellings `Uuid::try_parse` takes (hyphenated, simple, braced, URN;
/// hex in any case), never the nil UUID.
pub fn intake_uuid() -> Value {
    let h = "[0-9A-Fa-f]";
    let hyphenated = format!("{h}{{8}}-{h}{{4}}-{h}{{4}}-{h}{{4}}-{h}{{12}}");
    let nil = "0{8}-0{4}-0{4}-0{4}-0{12}";
    let urn = "[Uu][Rr][Nn]:[Uu][Uu][Ii][Dd]:";
    json!({
        "type": "string",
        "description": "A UUID other than the nil UUID: hyphenated (the usual form), 32 hex digits, braced or as a urn:uuid: URN.",
        "pattern": format!("^(?:{hyphenated}|{h}{{32}}|\\{{{hyphenated}\\}}|{urn}{hyphenated})$"),
        "not": {"pattern": format!("^(?:{nil}|0{{32}}|\\{{{nil}\\}}|{urn}{nil})$")},
    })
}

/// A session number, as intake and queries take it.
pub fn session_number() -> Value {
    json!({"type": "integer", "minimum": 1, "maximum": Session::MAX})
}

/// A non-negative count within intake's bound.
pub fn count() -> Value {
    json!({"type": "integer", "minimum": 0, "maximum": MAX_COUNT})
}

/// `scheduled_for` and `occurred_at`: RFC 3339 with an offset.
pub fn intake_time() -> Value {
    json!({
        "type": "string",
        "description": "An RFC 3339 time with an offset, e.g. 2025-01-23T08:30:00Z; stored in UTC.",
        "format": "date-time",
    })
}

/// `*_on` fields: a date (00:00 UTC) or an RFC 3339 time.
pub fn intake_date_or_time() -> Value {
    json!({
        "type": "string",
        "description": "A date (2025-01-23, meaning 00:00 UTC) or an RFC 3339 time with an offset.",
        "anyOf": [{"format": "date"}, {"format": "date-time"}],
    })
}

// ---- schemas of the types with a hand-written serde form ---------------------

impl JsonSchema for Country {
    fn schema_name() -> Cow<'static, str> {
        "Country".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "description": "An assigned ISO 3166-1 alpha-2 code, upper case. Events written since contract version 2 name UN member states only; older ones may name any assigned code.",
            "pattern": codes_pattern(COUNTRIES.iter().map(|(c, _)| *c), false),
        })
    }
}

impl JsonSchema for Session {
    fn schema_name() -> Cow<'static, str> {
        "Session".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "integer",
            "description": "A UPR Working Group session number.",
            "minimum": 1,
            "maximum": Session::MAX,
        })
    }
}

impl JsonSchema for Timestamp {
    fn schema_name() -> Cow<'static, str> {
        "Timestamp".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "description": "An RFC 3339 time in UTC, always written with Z.",
            "format": "date-time",
            "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\\.[0-9]+)?Z$",
        })
    }
}

impl JsonSchema for Envelope {
    fn schema_name() -> Cow<'static, str> {
        "Envelope".into()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let mut data_by_type = Vec::new();
        for ty in EventType::ALL {
            let data = match ty {
                EventType::ReviewScheduled => generator.subschema_for::<ReviewScheduled>(),
                EventType::ReviewRescheduled => generator.subschema_for::<ReviewRescheduled>(),
                EventType::ReviewCancelled => generator.subschema_for::<ReviewCancelled>(),
                EventType::ReviewHeld => generator.subschema_for::<ReviewHeld>(),
                EventType::SideEventHeld => generator.subschema_for::<SideEventHeld>(),
                EventType::ReportPublished => generator.subschema_for::<ReportPublished>(),
                EventType::OutcomeAdopted => generator.subschema_for::<OutcomeAdopted>(),
                EventType::EventRetracted => generator.subschema_for::<EventRetracted>(),
            };
            data_by_type.push(json!({
                "if": {"properties": {"type": {"const": ty.as_str()}}},
                "then": {"properties": {"data": data}},
            }));
        }
        let mut source = json!({"type": ["string", "null"]});
        source["minLength"] = 1.into();
        source["maxLength"] = max_chars::SOURCE.into();
        json_schema!({
            "type": "object",
            "description": "One stored event in UPR_EVENTS, on upr.events.<COUNTRY>.<session>.<type> with header Nats-Msg-Id = id. `data` holds the type's fields.",
            "properties": {
                "id": generator.subschema_for::<Uuid>(),
                "type": generator.subschema_for::<EventType>(),
                "schema": {
                    "description": "The envelope version: 1 for events written under contract version 1, 2 since.",
                    "type": "integer",
                    "minimum": 1,
                    "maximum": SCHEMA,
                },
                "country": generator.subschema_for::<Country>(),
                "session": generator.subschema_for::<Session>(),
                "occurred_at": generator.subschema_for::<Timestamp>(),
                "recorded_at": generator.subschema_for::<Timestamp>(),
                "source": source,
                "data": {"type": "object"},
            },
            "required": ["id", "type", "schema", "country", "session", "occurred_at", "recorded_at", "source", "data"],
            "additionalProperties": false,
            "allOf": data_by_type,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_white_space_class_is_what_trim_removes() {
        let class = white_space_class();
        assert!(
            class.starts_with("\\u0009-\\u000D\\u0020\\u0085\\u00A0"),
            "{class}"
        );
        assert!(
            class.contains("\\u2000-\\u200A") && class.ends_with("\\u3000"),
            "{class}"
        );
    }

    #[test]
    fn country_patterns_group_codes_by_first_letter() {
        assert_eq!(codes_pattern(["AD", "AE", "BA"], false), "^(?:A[DE]|B[A])$");
        assert_eq!(codes_pattern(["KZ"], true), "^(?:[Kk][Zz])$");
    }
}
