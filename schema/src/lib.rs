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
//! - intake is parsed by hand ([`upr_domain::intake`]), so its schemas are
//!   built here from the same field table the parser reads: each field's
//!   kind ([`upr_domain::field`]) owns both its parsing and its fragment,
//!   which states the parser's rules (trimmed lengths, country codes in any
//!   case, the UUID spellings it takes).
//!
//! `cargo run -p upr-schema --example schemas -- docs/schemas` writes them;
//! a test fails when the checked-in files differ from [`documents`].

use std::path::Path;

use schemars::{JsonSchema, generate::SchemaSettings};
use serde_json::{Map, Value, json};

use upr_domain::{
    CountryView, Envelope, EventType, NoticeKind, ReviewView, SessionView,
    field::{IntakeField, object_schema},
    intake::{COMMON, type_fields},
    json_schema::{any_assigned_code, nullable, strict_object},
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

/// The flat intake object of one event type: the common fields, then the
/// type's own, in the parser's table order; nothing else. Each field's
/// kind gives its fragment ([`upr_domain::field`]), so a field the parser
/// takes always has one.
fn intake(ty: EventType) -> Value {
    let mut defs = Map::new();
    let fields: Vec<&dyn IntakeField> = COMMON.iter().chain(type_fields(ty)).copied().collect();
    let body = object_schema(&fields, &mut defs);
    let mut schema = json!({
        "$schema": DRAFT,
        "title": format!("upr.ingest.{ty}"),
        "description": format!("The payload of an intake message on upr.ingest.{ty}. A required field may not be null; an optional one may be null or left out (the same)."),
    });
    if let (Value::Object(head), Value::Object(body)) = (&mut schema, body) {
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

/// Shapes that the services build with `json!` rather than from a type:
/// described here so they have a schema, and checked against the real
/// services' output by the end-to-end tests.
pub mod wire {
    use schemars::JsonSchema;
    use uuid::Uuid;

    use upr_domain::{CountryView, RejectError, ReviewView, SessionView, Timestamp, Upcoming};

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
        /// Bytes `UPR_EVENTS` holds.
        pub stream_bytes: u64,
        /// `UPR_EVENTS`'s own size limit; `null`: none (the account's holds).
        pub stream_max_bytes: Option<u64>,
        /// Bytes the service account stores, every stream and bucket together.
        pub storage_bytes: u64,
        /// The service account's storage limit; `null`: none.
        pub storage_max_bytes: Option<u64>,
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
            "docs/schemas is out of date: {stale:?}\nregenerate with: cargo run -p upr-schema --example schemas -- docs/schemas"
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
}
