//! JSON Schema fragments of the domain's values, beside the parsing they
//! describe: the types with a hand-written serde form implement
//! `JsonSchema` here, with the helpers the intake field kinds
//! ([`crate::field`]) build their fragments from. The `upr-schema` crate
//! assembles whole documents from them.

use std::borrow::Cow;
use std::fmt::Write as _;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use crate::bounds::max_chars;
use crate::country::{COUNTRIES, Country};
use crate::event::{
    Envelope, EventRetracted, EventType, OutcomeAdopted, ReportPublished, ReviewCancelled,
    ReviewHeld, ReviewRescheduled, ReviewScheduled, SCHEMA, Session, SideEventHeld,
};
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

/// Any assigned code in any case (a query's `country` option).
pub fn any_assigned_code() -> Value {
    json!({
        "type": "string",
        "description": "An assigned ISO 3166-1 alpha-2 code, in any case.",
        "pattern": codes_pattern(COUNTRIES.iter().map(|(c, _)| *c), true),
    })
}

/// A session number, as intake and queries take it.
pub fn session_number() -> Value {
    json!({"type": "integer", "minimum": 1, "maximum": Session::MAX})
}

/// `schema` or `null`, as intake reads `null` for an optional field as absent.
pub fn nullable(schema: &Value) -> Value {
    json!({"anyOf": [schema, {"type": "null"}]})
}

/// An object of exactly `properties`, `required` among them.
pub fn strict_object(properties: &Map<String, Value>, required: &[&str]) -> Value {
    json!({
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": false,
    })
}

/// `schema` under `$defs/name` (once), referenced: intake schemas repeat
/// a few long patterns, which read better written once.
pub fn def(defs: &mut Map<String, Value>, name: &str, schema: impl FnOnce() -> Value) -> Value {
    defs.entry(name).or_insert_with(schema);
    json!({"$ref": format!("#/$defs/{name}")})
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
                    "description": "The envelope version: 1 for events written under contract version 1, 2 under version 2, 3 since (with recorded_by).",
                    "type": "integer",
                    "minimum": 1,
                    "maximum": SCHEMA,
                },
                "country": generator.subschema_for::<Country>(),
                "session": generator.subschema_for::<Session>(),
                "occurred_at": generator.subschema_for::<Timestamp>(),
                "recorded_at": generator.subschema_for::<Timestamp>(),
                "recorded_by": {
                    "description": "Schema 3: the party whose connection carried the event, as the NATS server authenticated it (its account name); null when no user was authenticated. Absent before schema 3, read as null.",
                    "type": ["string", "null"],
                    "pattern": "^[a-z][a-z0-9-]{0,31}$",
                },
                "source": source,
                "data": {"type": "object"},
            },
            "required": ["id", "type", "schema", "country", "session", "occurred_at", "recorded_at", "source", "data"],
            "additionalProperties": false,
            "allOf": data_by_type,
            "if": {"properties": {"schema": {"const": SCHEMA}}},
            "then": {"required": ["recorded_by"]},
            "else": {"not": {"required": ["recorded_by"]}},
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
