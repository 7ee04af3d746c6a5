//! JSON Schemas (draft 2020-12) of every payload the system takes or gives:
//! intake messages, the ingest reply and rejection record, the stored event
//! envelope, the read-model values, the query answers and the notifications.
//!
//! Programs in other languages validate against them before sending and
//! generate their types from them, so they must say what the code does. Two
//! sources keep them honest:
//! - the wire types derive `JsonSchema` (serialize contract: what is
//!   written), with `#[schemars(...)]` limits where intake holds a field to
//!   more than its Rust type;
//! - intake is parsed by hand ([`crate::domain::intake`]), so its schemas are
//!   built here from the same field table and limits the parser uses, one
//!   fragment per field, stating the parser's rules (trimmed lengths, country
//!   codes in any case, the UUID spellings it takes).
//!
//! `cargo run -p upr-shared --example schemas -- docs/schemas` writes them;
//! a test fails when the checked-in files differ from [`documents`].

use std::borrow::Cow;
use std::fmt::Write as _;
use std::path::Path;

use schemars::{JsonSchema, Schema, SchemaGenerator, generate::SchemaSettings, json_schema};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use crate::domain::{
    COUNTRIES, CountryView, Envelope, EventType, MEMBER_STATES, NoticeKind, ReviewView, SCHEMA,
    Session, SessionView, Timestamp,
    country::Country,
    event::{
        EventRetracted, OutcomeAdopted, ReportPublished, ReviewCancelled, ReviewHeld,
        ReviewRescheduled, ReviewScheduled, SideEventHeld,
    },
    intake::{
        COMMON, DOCUMENT_SYMBOL_CHARS, MAX_COUNT, MAX_SPEAKERS, MAX_TOPICS, max_chars, type_fields,
    },
    reminders::{CancelledNotice, CorrectedNotice, ReminderNotice, RescheduledNotice},
};

const DRAFT: &str = "https://json-schema.org/draft/2020-12/schema";

/// One schema file: its path under `docs/schemas/` and its content.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    /// Relative path, `/`-separated, e.g. `intake/review_scheduled.json`.
    pub path: String,
    /// The schema.
    pub schema: Value,
}

impl Document {
    /// The file's text: pretty-printed, ending in a newline (stable, so a
    /// diff of the checked-in files shows only real changes).
    ///
    /// # Panics
    /// Never: a JSON value with string keys serializes.
    pub fn text(&self) -> String {
        let mut text = serde_json::to_string_pretty(&self.schema)
            .expect("a JSON value with string keys serializes");
        text.push('\n');
        text
    }
}

/// Every schema, in a fixed order.
pub fn documents() -> Vec<Document> {
    let mut docs = Vec::new();
    for ty in EventType::ALL {
        docs.push(doc(format!("intake/{ty}.json"), intake(ty)));
    }
    docs.push(doc("intake/reply.json", root::<wire::IngestReply>()));
    docs.push(doc("rejected.json", root::<wire::Rejection>()));
    docs.push(doc("envelope.json", root::<Envelope>()));
    docs.push(doc("read-models/review.json", root::<ReviewView>()));
    docs.push(doc("read-models/session.json", root::<SessionView>()));
    docs.push(doc("read-models/country.json", root::<CountryView>()));
    docs.push(doc("queries/request.json", query_request(false)));
    docs.push(doc("queries/upcoming-request.json", query_request(true)));
    docs.push(doc("queries/review.json", root::<wire::ReviewAnswer>()));
    docs.push(doc("queries/session.json", root::<wire::SessionAnswer>()));
    docs.push(doc("queries/country.json", root::<wire::CountryAnswer>()));
    docs.push(doc("queries/upcoming.json", root::<wire::UpcomingAnswer>()));
    docs.push(doc("queries/status.json", root::<wire::StatusAnswer>()));
    docs.push(doc("queries/error.json", root::<wire::Refused>()));
    docs.push(doc("notifier/status.json", root::<wire::NotifierStatus>()));
    docs.push(doc(
        "notifications/reminder.json",
        notice::<ReminderNotice>(NoticeKind::Reminder),
    ));
    docs.push(doc(
        "notifications/rescheduled.json",
        notice::<RescheduledNotice>(NoticeKind::Rescheduled),
    ));
    docs.push(doc(
        "notifications/cancelled.json",
        notice::<CancelledNotice>(NoticeKind::Cancelled),
    ));
    docs.push(doc(
        "notifications/corrected.json",
        notice::<CorrectedNotice>(NoticeKind::Corrected),
    ));
    docs
}

/// Writes every document under `dir` (creating folders).
///
/// # Errors
/// The first I/O error.
pub fn write_all(dir: &Path) -> std::io::Result<()> {
    for d in documents() {
        let path = dir.join(&d.path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(path, d.text())?;
    }
    Ok(())
}

/// The documents whose file under `dir` is missing or differs from what the
/// code generates, and the `.json` files there that no document writes.
pub fn stale(dir: &Path) -> Vec<String> {
    let docs = documents();
    let mut out: Vec<String> = docs
        .iter()
        .filter(|d| std::fs::read_to_string(dir.join(&d.path)).ok() != Some(d.text()))
        .map(|d| d.path.clone())
        .collect();
    let mut found = Vec::new();
    json_files(dir, dir, &mut found);
    out.extend(
        found
            .into_iter()
            .filter(|f| !docs.iter().any(|d| &d.path == f))
            .map(|f| format!("{f} (written by nothing)")),
    );
    out
}

fn json_files(root: &Path, dir: &Path, out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            json_files(root, &path, out);
        } else if path.extension().is_some_and(|e| e == "json")
            && let Ok(rel) = path.strip_prefix(root)
        {
            let parts: Vec<_> = rel.iter().map(|p| p.to_string_lossy()).collect();
            out.push(parts.join("/"));
        }
    }
}

fn doc(path: impl Into<String>, schema: Value) -> Document {
    Document {
        path: path.into(),
        schema,
    }
}

/// The schema of what `T` serializes to, `$schema`, `title` and
/// `description` first so a reader sees what the file is about.
fn root<T: JsonSchema>() -> Value {
    let schema = SchemaSettings::draft2020_12()
        .for_serialize()
        .into_generator()
        .into_root_schema_for::<T>()
        .to_value();
    let Value::Object(mut body) = schema else {
        return schema;
    };
    let mut head = Map::new();
    for key in ["$schema", "title", "description"] {
        if let Some(v) = body.remove(key) {
            head.insert(key.to_owned(), v);
        }
    }
    head.extend(body);
    Value::Object(head)
}

/// A notification schema with `kind` fixed to the one its subject carries.
fn notice<T: JsonSchema>(kind: NoticeKind) -> Value {
    let mut schema = root::<T>();
    schema["properties"]["kind"] = json!({
        "description": "What the notice is about; also the subject token (`upr.notify.<kind>.<COUNTRY>`).",
        "const": kind.as_str(),
    });
    if let Some(defs) = schema["$defs"].as_object_mut() {
        defs.remove("NoticeKind");
    }
    schema
}

// ---- fragments shared by the derived and the hand-built schemas -------------

/// Every character `str::trim` removes, as the body of a regex class: the
/// parser trims before it counts, so the patterns must skip the same ones.
fn white_space_class() -> String {
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
fn intake_text(max: usize) -> Value {
    let ws = white_space_class();
    json!({
        "type": "string",
        "description": format!("1 to {max} characters once surrounding white space is trimmed (it is stored trimmed)."),
        "pattern": format!("^[{ws}]*[^{ws}](?:[\\s\\S]{{0,{}}}[^{ws}])?[{ws}]*$", max - 2),
    })
}

/// The characters of a document symbol other than its ends, as a class body.
fn document_symbol_class(with_space: bool) -> String {
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
pub(crate) fn document_symbol_pattern() -> String {
    let (end, inner) = (document_symbol_class(false), document_symbol_class(true));
    format!("^[{end}](?:[{inner}]*[{end}])?$")
}

fn intake_document_symbol() -> Value {
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
fn codes_pattern<'a>(codes: impl IntoIterator<Item = &'a str>, any_case: bool) -> String {
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
fn intake_member_state() -> Value {
    json!({
        "type": "string",
        "description": "ISO 3166-1 alpha-2 code of one of the 193 UN member states, in any case (stored upper case).",
        "pattern": codes_pattern(MEMBER_STATES.iter().map(|(c, _)| *c), true),
    })
}

/// Any assigned code in any case (a query's `country` option).
fn any_assigned_code() -> Value {
    json!({
        "type": "string",
        "description": "An assigned ISO 3166-1 alpha-2 code, in any case.",
        "pattern": codes_pattern(COUNTRIES.iter().map(|(c, _)| *c), true),
    })
}

/// The spellings `Uuid::try_parse` takes (hyphenated, simple, braced, URN;
/// hex in any case), never the nil UUID.
fn intake_uuid() -> Value {
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

fn session_number() -> Value {
    json!({"type": "integer", "minimum": 1, "maximum": Session::MAX})
}

fn count() -> Value {
    json!({"type": "integer", "minimum": 0, "maximum": MAX_COUNT})
}

/// `scheduled_for` and `occurred_at`: RFC 3339 with an offset.
fn intake_time() -> Value {
    json!({
        "type": "string",
        "description": "An RFC 3339 time with an offset, e.g. 2025-01-23T08:30:00Z; stored in UTC.",
        "format": "date-time",
    })
}

/// `*_on` fields: a date (00:00 UTC) or an RFC 3339 time.
fn intake_date_or_time() -> Value {
    json!({
        "type": "string",
        "description": "A date (2025-01-23, meaning 00:00 UTC) or an RFC 3339 time with an offset.",
        "anyOf": [{"format": "date"}, {"format": "date-time"}],
    })
}

/// `schema` or `null`, as intake reads `null` for an optional field as absent.
fn nullable(schema: &Value) -> Value {
    json!({"anyOf": [schema, {"type": "null"}]})
}

fn strict_object(properties: &Map<String, Value>, required: &[&str]) -> Value {
    json!({
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": false,
    })
}

/// `schema` under `$defs/name` (once), referenced: intake schemas repeat
/// a few long patterns, which read better written once.
fn def(defs: &mut Map<String, Value>, name: &str, schema: impl FnOnce() -> Value) -> Value {
    defs.entry(name).or_insert_with(schema);
    json!({"$ref": format!("#/$defs/{name}")})
}

fn text_def(defs: &mut Map<String, Value>, max: usize) -> Value {
    def(defs, &format!("Text{max}"), || intake_text(max))
}

/// The value schema of one intake field, by name; the names are those of
/// [`type_fields`] and [`COMMON`], so a field added to the parser without a
/// rule here fails every generation (and so the tests).
fn intake_field(name: &str, defs: &mut Map<String, Value>) -> Value {
    match name {
        "country" => def(defs, "MemberState", intake_member_state),
        "session" => session_number(),
        "event_id" | "retracts" => def(defs, "Uuid", intake_uuid),
        "occurred_at" | "scheduled_for" => def(defs, "Time", intake_time),
        "held_on" | "published_on" | "adopted_on" => def(defs, "DateOrTime", intake_date_or_time),
        "source" => text_def(defs, max_chars::SOURCE),
        "location" => text_def(defs, max_chars::LOCATION),
        "reason" => text_def(defs, max_chars::REASON),
        "title" => text_def(defs, max_chars::TITLE),
        "document_symbol" => intake_document_symbol(),
        "recommendations_received" | "participating_states" => def(defs, "Count", count),
        "hrc_session" => json!({"type": "integer", "minimum": 1, "maximum": 999}),
        "troika" => json!({
            "type": "array",
            "description": "Three distinct member states, none of them the state under review.",
            "items": def(defs, "MemberState", intake_member_state),
            "minItems": 3,
            "maxItems": 3,
            "uniqueItems": true,
        }),
        "speakers" => {
            let mut speaker = Map::new();
            speaker.insert("name".into(), text_def(defs, max_chars::SPEAKER));
            speaker.insert("role".into(), nullable(&text_def(defs, max_chars::SPEAKER)));
            json!({
                "type": "array",
                "items": strict_object(&speaker, &["name"]),
                "maxItems": MAX_SPEAKERS,
            })
        }
        "topics" => json!({
            "type": "array",
            "items": text_def(defs, max_chars::TOPIC),
            "maxItems": MAX_TOPICS,
        }),
        "recommendations" => {
            let names = ["total", "supported", "noted"];
            let counts = names
                .iter()
                .map(|n| ((*n).to_owned(), def(defs, "Count", count)))
                .collect();
            let mut schema = strict_object(&counts, &names);
            schema["description"] = "Recommendation counts; supported + noted <= total.".into();
            schema
        }
        other => panic!("intake field {other:?} has no schema fragment in crate::schema"),
    }
}

/// The flat intake object of one event type: the common fields, then the
/// type's own, in the parser's table order; nothing else.
fn intake(ty: EventType) -> Value {
    let mut properties = Map::new();
    let mut required = Vec::new();
    let mut defs = Map::new();
    let common = COMMON
        .iter()
        .map(|n| (*n, matches!(*n, "country" | "session")));
    for (name, is_required) in common.chain(type_fields(ty).iter().copied()) {
        let value = intake_field(name, &mut defs);
        if is_required {
            required.push(name);
            properties.insert(name.to_owned(), value);
        } else {
            properties.insert(name.to_owned(), nullable(&value));
        }
    }
    let mut schema = json!({
        "$schema": DRAFT,
        "title": format!("upr.ingest.{ty}"),
        "description": format!("The payload of an intake message on upr.ingest.{ty}. A required field may not be null; an optional one may be null or left out (the same)."),
    });
    if let (Value::Object(head), Value::Object(body)) =
        (&mut schema, strict_object(&properties, &required))
    {
        head.extend(body);
        head.insert("$defs".into(), Value::Object(defs));
    }
    schema
}

/// A query's optional JSON payload (an empty payload means no options).
fn query_request(upcoming: bool) -> Value {
    let mut properties = Map::new();
    properties.insert(
        "min_seq".into(),
        nullable(&json!({
            "type": "integer",
            "minimum": 0,
            "description": "Answer only once the projection has applied this stream sequence (waits up to 5 s, then `timeout`).",
        })),
    );
    if upcoming {
        properties.insert(
            "within_days".into(),
            nullable(&json!({"type": "integer", "minimum": 0, "maximum": 36_500})),
        );
        properties.insert("country".into(), nullable(&any_assigned_code()));
    }
    let (title, subjects) = if upcoming {
        ("upr.query.upcoming request", "upr.query.upcoming")
    } else {
        (
            "upr.query.* request",
            "upr.query.review, session, country, status and calendar",
        )
    };
    let mut schema = json!({
        "$schema": DRAFT,
        "title": title,
        "description": format!("The optional payload of a request on {subjects}. An empty (or all white space) payload means no options."),
    });
    if let (Value::Object(head), Value::Object(body)) =
        (&mut schema, strict_object(&properties, &[]))
    {
        head.extend(body);
    }
    schema
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

/// Shapes that the services build with `json!` rather than from a type:
/// described here so they have a schema, and checked against the real
/// services' output by the end-to-end tests.
pub mod wire {
    use schemars::JsonSchema;
    use uuid::Uuid;

    use crate::domain::{CountryView, RejectError, ReviewView, SessionView, Timestamp, Upcoming};

    /// Ingest's reply to a request on `upr.ingest.<type>`.
    #[derive(JsonSchema)]
    #[schemars(untagged)]
    pub enum IngestReply {
        /// Stored (or already stored: `duplicate`).
        Accepted(Accepted),
        /// Refused; nothing was stored.
        Refused(Refused),
    }

    /// An event was stored, now or before (`duplicate: true`, with the
    /// original `seq`).
    #[derive(JsonSchema)]
    #[schemars(deny_unknown_fields)]
    pub struct Accepted {
        /// Always `true`.
        #[schemars(extend("const" = true))]
        pub ok: bool,
        /// The event's id: the client's `event_id`, or one ingest chose.
        pub event_id: Uuid,
        /// The event's sequence in `UPR_EVENTS`; pass it as `min_seq` to read your write.
        #[schemars(range(min = 1))]
        pub seq: u64,
        /// Whether this `event_id` was already stored.
        pub duplicate: bool,
    }

    /// A refusal, of an intake message or a query.
    #[derive(JsonSchema)]
    #[schemars(deny_unknown_fields)]
    pub struct Refused {
        /// Always `false`.
        #[schemars(extend("const" = false))]
        pub ok: bool,
        /// What was wrong.
        pub error: RejectError,
    }

    /// The record of one refusal on `upr.rejected` (stream `UPR_REJECTED`).
    #[derive(JsonSchema)]
    #[schemars(deny_unknown_fields)]
    pub struct Rejection {
        /// The intake subject the message came on.
        pub subject: String,
        /// Why it was refused.
        pub error: RejectError,
        /// The original payload as text (bytes that are not UTF-8 replaced by U+FFFD), cut at 4 KiB.
        pub payload: String,
        /// When ingest received it.
        pub received_at: Timestamp,
    }

    /// `upr.query.review.<COUNTRY>.<session>`.
    #[derive(JsonSchema)]
    #[schemars(deny_unknown_fields)]
    pub struct ReviewAnswer {
        /// Always `true`.
        #[schemars(extend("const" = true))]
        pub ok: bool,
        /// The `upr_reviews` value.
        pub review: ReviewView,
    }

    /// `upr.query.session.<session>`.
    #[derive(JsonSchema)]
    #[schemars(deny_unknown_fields)]
    pub struct SessionAnswer {
        /// Always `true`.
        #[schemars(extend("const" = true))]
        pub ok: bool,
        /// The `upr_sessions` value.
        pub session: SessionView,
    }

    /// `upr.query.country.<COUNTRY>`.
    #[derive(JsonSchema)]
    #[schemars(deny_unknown_fields)]
    pub struct CountryAnswer {
        /// Always `true`.
        #[schemars(extend("const" = true))]
        pub ok: bool,
        /// The `upr_countries` value.
        pub country: CountryView,
    }

    /// `upr.query.upcoming`: scheduled reviews still ahead, soonest first.
    #[derive(JsonSchema)]
    #[schemars(deny_unknown_fields)]
    pub struct UpcomingAnswer {
        /// Always `true`.
        #[schemars(extend("const" = true))]
        pub ok: bool,
        /// By `scheduled_for`, then country, then session.
        pub reviews: Vec<Upcoming>,
    }

    /// `upr.query.status`: how far the projection has got.
    #[derive(JsonSchema)]
    #[schemars(deny_unknown_fields)]
    pub struct StatusAnswer {
        /// Always `true`.
        #[schemars(extend("const" = true))]
        pub ok: bool,
        /// The last stream sequence folded into the read models.
        pub applied_seq: u64,
        /// The last sequence in `UPR_EVENTS`.
        pub stream_last_seq: u64,
        /// Read-model values the projection refused to write (over the size bound).
        pub values_refused: u64,
        /// Events skipped because their review was past its limits.
        pub beyond_limits_skipped: u64,
    }

    /// `upr.notifier.status`: the notifier's counters since it started.
    #[derive(JsonSchema)]
    #[schemars(deny_unknown_fields)]
    pub struct NotifierStatus {
        /// Always `true`.
        #[schemars(extend("const" = true))]
        pub ok: bool,
        /// Reminders waiting for their time.
        pub pending: u64,
        /// Reminders sent.
        pub sent: u64,
        /// Of those, sent late (the notifier was down at their time).
        pub late: u64,
        /// Reminders not sent (past due when planned, or the review passed).
        pub skipped: u64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checked_in_schemas_are_what_the_code_generates() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/schemas");
        let stale = stale(&dir);
        assert!(
            stale.is_empty(),
            "docs/schemas is out of date: {stale:?}\nregenerate with: cargo run -p upr-shared --example schemas -- docs/schemas"
        );
    }

    #[test]
    fn every_intake_field_of_every_type_has_a_schema() {
        for ty in EventType::ALL {
            let schema = intake(ty);
            let fields = type_fields(ty).len() + COMMON.len();
            assert_eq!(
                schema["properties"].as_object().unwrap().len(),
                fields,
                "{ty}"
            );
        }
    }

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
