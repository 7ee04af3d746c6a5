//! The JSON Schemas in `docs/schemas/` and the AsyncAPI document
//! `docs/asyncapi.yaml`, checked by an independent validator (the
//! `jsonschema` crate: draft 2020-12, formats asserted) against what the code
//! accepts and what it produces. No server is needed here; the end-to-end
//! module `e2e/schemas.rs` checks the running services' own messages.
//!
//! - Every intake example of docs/intake.md validates, and intake accepts it.
//! - Every corpus message refused for a field reason is refused by its schema.
//! - Intake and its schema agree on thousands of field values; where JSON
//!   Schema cannot state a rule, the gap is named in [`known_gap`].
//! - Envelopes, read-model values, query answers, replies, rejection records
//!   and notices built by the real domain code validate.
//! - The AsyncAPI document is valid AsyncAPI 3.0.0, its payloads point at the
//!   schema files, and it names every subject of `contract.rs`.
//! - Every notification shown in README.md and docs/*.md validates against
//!   its kind's schema, or, abridged, still shows every required field.

#![allow(
    clippy::unwrap_used,
    reason = "tests: a helper's unwrap is an assertion, and a failure should panic where it happened"
)]

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use jsonschema::{Draft, Validator};
use serde_json::{Value, json};
use upr_domain::{
    ChangeNotice, Country, Envelope, EventType, ReadModels, RejectError, ReviewState, Session,
    Timestamp, parse_intake, parse_leads, plan,
};
use upr_nats::contract::subjects;
use upr_schema as schema;
use upr_tests::fixtures::{KZ48_DATE, KZ48_NEW_DATE, SIDE_EVENT_DAY};
use uuid::Uuid;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Validators of the checked-in schema files, by path under `docs/schemas/`.
struct Schemas(HashMap<String, Validator>);

impl Schemas {
    fn load() -> Self {
        let dir = repo().join("docs/schemas");
        let validators = schema::documents()
            .into_iter()
            .map(|doc| {
                let schema = read_json(&dir.join(&doc.path));
                let validator = jsonschema::options()
                    .with_draft(Draft::Draft202012)
                    .should_validate_formats(true)
                    .build(&schema)
                    .unwrap_or_else(|e| panic!("{} is not a valid schema: {e}", doc.path));
                (doc.path, validator)
            })
            .collect();
        Self(validators)
    }

    fn get(&self, path: &str) -> &Validator {
        self.0
            .get(path)
            .unwrap_or_else(|| panic!("no schema docs/schemas/{path}"))
    }

    fn errors(&self, path: &str, instance: &Value) -> Vec<String> {
        self.get(path)
            .iter_errors(instance)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect()
    }

    #[track_caller]
    fn assert_valid(&self, path: &str, instance: &Value) {
        let errors = self.errors(path, instance);
        assert!(
            errors.is_empty(),
            "{instance} does not validate against {path}: {errors:#?}"
        );
    }

    fn accepts(&self, path: &str, instance: &Value) -> bool {
        self.get(path).is_valid(instance)
    }
}

fn intake_schema(ty: &str) -> String {
    format!("intake/{ty}.json")
}

// ---- intake: docs/intake.md, corpus, and field by field ----------------------

/// Placeholders docs/intake.md writes where a real value goes, and the value
/// the tests put there.
const PLACEHOLDER_ID: &str = "0190f3a2-7b1c-7d4e-9a2b-3c4d5e6f7a99";

/// Every `nats req|pub upr.ingest.<type> '<json>'` in docs/intake.md's code
/// blocks (continuation lines joined), with `<...>` placeholders filled in.
fn readme_intake() -> Vec<(String, Value)> {
    let page = std::fs::read_to_string(repo().join("docs/intake.md")).unwrap();
    // Only the examples of each type: later sections show refusals on purpose.
    let readme = page
        .split("\n## One example per event type\n")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("docs/intake.md has a section 'One example per event type'");
    let mut lines = Vec::new();
    let mut in_block = false;
    let mut pending = String::new();
    for line in readme.lines() {
        if line.trim_start().starts_with("```") {
            in_block = !in_block;
            continue;
        }
        if !in_block {
            continue;
        }
        if let Some(head) = line.strip_suffix('\\') {
            pending.push_str(head);
            continue;
        }
        pending.push_str(line);
        // A single-quoted intake payload may span lines.
        if pending.contains("upr.ingest.") && pending.matches('\'').count() % 2 == 1 {
            pending.push('\n');
            continue;
        }
        lines.push(std::mem::take(&mut pending));
    }
    let mut out = Vec::new();
    for line in lines {
        let words: Vec<&str> = line.split_whitespace().collect();
        let Some(at) = words.iter().position(|w| w.starts_with("upr.ingest.")) else {
            continue;
        };
        if !(at > 0 && matches!(words[at - 1], "req" | "pub")) {
            continue;
        }
        let ty = words[at].trim_start_matches("upr.ingest.").to_owned();
        let rest = line[line.find(words[at]).unwrap() + words[at].len()..].trim();
        // A double-quoted payload is built by the shell (a date computed
        // with `date`): not literal JSON, so there is nothing to check.
        if rest.starts_with('"') && rest.contains("$(") {
            continue;
        }
        let literal = rest
            .strip_prefix('\'')
            .and_then(|r| r.strip_suffix('\''))
            .unwrap_or_else(|| {
                panic!("docs/intake.md intake line without a quoted payload: {line}")
            });
        let mut payload: Value = serde_json::from_str(literal)
            .unwrap_or_else(|e| panic!("docs/intake.md payload is not JSON ({e}): {line}"));
        for value in payload.as_object_mut().unwrap().values_mut() {
            if value
                .as_str()
                .is_some_and(|s| s.starts_with('<') && s.ends_with('>'))
            {
                *value = PLACEHOLDER_ID.into();
            }
        }
        out.push((ty, payload));
    }
    out
}

#[test]
fn every_readme_intake_example_is_accepted_by_intake_and_by_its_schema() {
    let schemas = Schemas::load();
    let examples = readme_intake();
    let types: std::collections::BTreeSet<_> = examples.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(
        types.len(),
        EventType::ALL.len(),
        "docs/intake.md shows every type: {types:?}"
    );
    for (ty, payload) in &examples {
        let bytes = serde_json::to_vec(payload).unwrap();
        if let Err(e) = parse_intake(ty, &bytes) {
            panic!("intake refuses the {ty} example of docs/intake.md {payload}: {e}");
        }
        schemas.assert_valid(&intake_schema(ty), payload);
    }
}

/// One row of `tests/corpus/intake/expected.tsv`.
struct CorpusCase {
    file: String,
    ty: String,
    code: String,
    payload: Vec<u8>,
}

fn corpus() -> Vec<CorpusCase> {
    let dir = repo().join("tests/corpus/intake");
    let manifest = std::fs::read_to_string(dir.join("expected.tsv")).unwrap();
    manifest
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|line| {
            let cols: Vec<&str> = line.split('\t').collect();
            CorpusCase {
                file: cols[0].to_owned(),
                ty: cols[1].to_owned(),
                code: cols[2].to_owned(),
                payload: std::fs::read(dir.join(cols[0])).unwrap(),
            }
        })
        .collect()
}

/// Corpus messages refused for a field reason that their schema accepts,
/// each with why JSON Schema cannot say it.
const CORPUS_GAPS: &[(&str, &str)] = &[
    (
        "069-session-float.review_scheduled.bin",
        "48.0 is an integer to JSON Schema (a number's value counts, not its spelling); intake wants an integer literal",
    ),
    (
        "097-supported-plus-noted-over-total.report_published.bin",
        "supported + noted <= total relates three values; JSON Schema compares a value with constants only",
    ),
    (
        "116-troika-includes-the-state-under-review.review_scheduled.bin",
        "whether a troika member is the state under review depends on another field's value",
    ),
];

#[test]
fn corpus_messages_refused_for_a_field_reason_are_refused_by_their_schema() {
    let schemas = Schemas::load();
    let mut checked = 0;
    for case in corpus() {
        // invalid_json (not JSON, or duplicate keys a parsed value no longer
        // shows), too_large and unknown_type are not about a field: no
        // schema of a payload can see them.
        if !matches!(case.code.as_str(), "invalid_field" | "missing_field") {
            continue;
        }
        let payload: Value =
            serde_json::from_slice(&case.payload).unwrap_or_else(|e| panic!("{}: {e}", case.file));
        let accepted = schemas.accepts(&intake_schema(&case.ty), &payload);
        let gap = CORPUS_GAPS.iter().find(|(f, _)| *f == case.file);
        match (accepted, gap) {
            (false, None) => checked += 1,
            (true, Some(_)) => {}
            (true, None) => panic!(
                "{}: intake refuses it ({}) but {} accepts it",
                case.file,
                case.code,
                intake_schema(&case.ty)
            ),
            (false, Some((file, _))) => {
                panic!(
                    "{file} is listed as a gap, but the schema now refuses it: drop it from CORPUS_GAPS"
                )
            }
        }
    }
    assert!(checked >= 80, "only {checked} corpus cases checked");
}

fn base_payload(ty: EventType) -> Value {
    let mut p = json!({"country": "KZ", "session": 48});
    let fields = match ty {
        EventType::ReviewScheduled => json!({"scheduled_for": KZ48_DATE}),
        EventType::ReviewRescheduled => json!({"scheduled_for": KZ48_NEW_DATE}),
        EventType::ReviewCancelled | EventType::ReviewHeld => json!({}),
        EventType::SideEventHeld => json!({"title": "Civic space", "held_on": SIDE_EVENT_DAY}),
        EventType::ReportPublished => json!({"published_on": "2025-03-14"}),
        EventType::OutcomeAdopted => json!({"adopted_on": "2025-07-03", "hrc_session": 59}),
        EventType::EventRetracted => {
            json!({"retracts": "0190f3a2-7b1c-7d4e-9a2b-3c4d5e6f7a8b", "reason": "Wrong session"})
        }
    };
    p.as_object_mut()
        .unwrap()
        .extend(fields.as_object().unwrap().clone());
    p
}

/// Values tried in every field of every type: right and wrong ones of every
/// kind the fields take, and the edges of each rule.
#[expect(
    clippy::too_many_lines,
    reason = "one list of candidate values, grouped by the kind of field they try"
)]
fn candidates() -> Vec<Value> {
    let speakers = |n: usize| Value::Array(vec![json!({"name": "A. Speaker"}); n]);
    let topics = |n: usize| Value::Array(vec![json!("topic"); n]);
    let mut values = vec![
        Value::Null,
        json!(true),
        json!({}),
        json!([]),
        // numbers
        json!(0),
        json!(1),
        json!(48),
        json!(999),
        json!(1000),
        json!(-1),
        json!(48.5),
        json!(10_000),
        json!(10_001),
        json!(u64::MAX),
        // countries
        json!("KZ"),
        json!("kz"),
        json!("cH"),
        json!("XK"),
        json!("AQ"),
        json!("va"),
        json!("KAZ"),
        json!("K"),
        // texts
        json!(""),
        json!("   "),
        json!("\u{2003}\u{3000}"),
        json!("  padded  "),
        json!(format!("\t{}\n", "x".repeat(300))),
        json!("é".repeat(300)),
        json!("a".repeat(301)),
        json!(format!(" {} ", "r".repeat(1000))),
        json!("r".repeat(1001)),
        json!("\u{feff}text"),
        json!("text\u{85}"),
        // document symbols
        json!("A/HRC/59/10"),
        json!("\tA/HRC/59/10 \n"),
        json!("A/HRC/WG.6/48/KAZ/1 (Add.1)*"),
        json!("A/HRC/59/10\""),
        json!("A\\HRC"),
        json!("A/HRC/59/10é"),
        json!("A/HRC\t59"),
        json!("d".repeat(50)),
        json!("d".repeat(51)),
        // times and dates
        json!(KZ48_DATE),
        json!("2025-01-23t08:30:00z"),
        json!("2025-01-23T08:30:00.123456789+05:30"),
        json!("2025-01-23T08:30:00-00:00"),
        json!("2025-01-23T08:30:00"),
        json!("2025-01-23T08:30Z"),
        json!("2025-01-23"),
        json!("2024-02-29"),
        json!("2025-02-29"),
        json!("2025-02-30T08:30:00Z"),
        json!("2025-13-01T08:30:00Z"),
        json!("2025-01-23T24:00:00Z"),
        json!("2025-01-23T08:30:00+24:00"),
        json!("2025-01-23T08:30:00+23:59"),
        json!("2025-1-23"),
        json!("10000-01-01T00:00:00Z"),
        json!("2025-01-23 08:30:00Z"),
        json!("2025-01-23x08:30:00Z"),
        json!("2016-12-31T23:59:60Z"),
        json!("2025-01-23T23:59:60Z"),
        json!("0000-01-01T00:30:00+01:00"),
        json!("9999-12-31T23:30:00-01:00"),
        json!("2025-01-23T08:30:00.Z"),
        json!("+2025-01-23"),
        json!("yesterday"),
        // ids
        json!("0190f3a2-7b1c-7d4e-9a2b-3c4d5e6f7a8b"),
        json!("0190F3A2-7B1C-7D4E-9A2B-3C4D5E6F7A8B"),
        json!("0190f3a27b1c7d4e9a2b3c4d5e6f7a8b"),
        json!("{0190f3a2-7b1c-7d4e-9a2b-3c4d5e6f7a8b}"),
        json!("URN:uuid:0190f3a2-7b1c-7d4e-9a2b-3c4d5e6f7a8b"),
        json!("00000000-0000-0000-0000-000000000000"),
        json!("urn:uuid:00000000-0000-0000-0000-000000000000"),
        json!("0190f3a2-7b1c-7d4e-9a2b-3c4d5e6f7a8"),
        json!("not-a-uuid"),
        // lists
        json!(["AR", "JP", "SN"]),
        json!(["ar", "jp", "Sn"]),
        json!(["AR", "JP"]),
        json!(["AR", "JP", "SN", "FR"]),
        json!(["AR", "AR", "SN"]),
        json!(["AQ", "JP", "SN"]),
        json!(["AR", "JP", 7]),
        json!([{"name": "A. Speaker", "role": "NGO"}]),
        json!([{"name": " A. Speaker ", "role": null}]),
        json!([{"name": "a"}, {"name": " "}]),
        json!([{"role": "NGO"}]),
        json!([{"name": "a", "title": "Dr"}]),
        json!([{"name": "n".repeat(201)}]),
        json!(["a"]),
        json!(["ok", ""]),
        json!([1]),
        json!([[]]),
        speakers(100),
        speakers(101),
        topics(50),
        topics(51),
        // objects
        json!({"total": 10, "supported": 6, "noted": 4}),
        json!({"total": 0, "supported": 0, "noted": 0}),
        json!({"total": 10, "supported": -1, "noted": 4}),
        json!({"total": "10", "supported": 1, "noted": 4}),
        json!({"total": 10_001, "supported": 1, "noted": 4}),
        json!({"total": 10, "supported": 6}),
        json!({"total": 10, "supported": 6, "noted": 4, "rejected": 0}),
        json!({"name": "a"}),
    ];
    values.push(json!(["KZ", "JP", "SN"]));
    values.push(json!(["ar", "AR", "SN"]));
    values.push(json!({"total": 10, "supported": 6, "noted": 5}));
    values.push(json!(48.0));
    values.push(json!(4.8e1));
    values
}

/// Why a field value on which intake and the schema disagree cannot be
/// described by JSON Schema (or, for `schema_stricter`, why the schema is
/// right to refuse what intake takes); `None` when it could be, which
/// fails the test.
fn known_gap(field: &str, value: &Value, intake_accepts: bool) -> Option<&'static str> {
    let text = value.as_str().unwrap_or("");
    if intake_accepts {
        // The schema refuses something intake takes: only two quirks of the
        // time parser intake uses, which a schema should not teach clients.
        let b = text.as_bytes();
        if text.starts_with('+') {
            return Some(
                "schema stricter: the date parser takes a signed year (+2025-01-23); the schema asks for RFC 3339's four digits",
            );
        }
        if b.len() > 13 && b[4] == b'-' && b[13] == b':' && !b[10].eq_ignore_ascii_case(&b'T') {
            return Some(
                "schema stricter: the time parser takes any character between date and time; the schema asks for RFC 3339's T",
            );
        }
        return None;
    }
    if text.contains(":60") {
        return Some(
            "a leap second is taken only on the last day of a month: a calendar rule, not a pattern",
        );
    }
    if text.starts_with("0000-") || text.starts_with("9999-") {
        return Some(
            "years 0000 to 9999 apply after conversion to UTC, so they depend on the offset",
        );
    }
    if value.is_f64() && value.as_f64().is_some_and(|f| f.fract() == 0.0) {
        return Some(
            "an integer-valued float (48.0, 4.8e1) is an integer to JSON Schema; intake wants an integer literal",
        );
    }
    if field == "troika" {
        let codes: Vec<String> = value
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str())
            .map(str::to_ascii_uppercase)
            .collect();
        if codes.iter().any(|c| c == "KZ") {
            return Some(
                "a troika member may not be the state under review: another field's value",
            );
        }
        let mut unique = codes.clone();
        unique.sort();
        unique.dedup();
        if unique.len() < codes.len() {
            return Some(
                "troika members are distinct ignoring case; uniqueItems compares strings exactly",
            );
        }
    }
    if field == "recommendations"
        && value["supported"].as_u64().unwrap_or(0) + value["noted"].as_u64().unwrap_or(0)
            > value["total"].as_u64().unwrap_or(u64::MAX)
    {
        return Some("supported + noted <= total relates three values");
    }
    None
}

#[test]
fn intake_and_its_schemas_agree_field_by_field() {
    let schemas = Schemas::load();
    let mut compared = 0;
    let mut gaps: HashMap<&str, usize> = HashMap::new();
    let mut disagreements = Vec::new();
    for ty in EventType::ALL {
        let schema_path = intake_schema(ty.as_str());
        let base = base_payload(ty);
        let bytes = serde_json::to_vec(&base).unwrap();
        assert!(parse_intake(ty.as_str(), &bytes).is_ok(), "base {ty}");
        schemas.assert_valid(&schema_path, &base);
        let doc = read_json(&repo().join("docs/schemas").join(&schema_path));
        let fields: Vec<String> = doc["properties"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        let mut variants: Vec<(String, Option<Value>)> = Vec::new();
        for field in fields.iter().chain([&"unknown".to_owned()]) {
            variants.push((field.clone(), None));
            for value in candidates() {
                variants.push((field.clone(), Some(value)));
            }
        }
        for (field, value) in variants {
            let mut payload = base.clone();
            let map = payload.as_object_mut().unwrap();
            match &value {
                None => {
                    map.remove(&field);
                }
                Some(v) => {
                    map.insert(field.clone(), v.clone());
                }
            }
            let bytes = serde_json::to_vec(&payload).unwrap();
            let intake = parse_intake(ty.as_str(), &bytes);
            let schema_accepts = schemas.accepts(&schema_path, &payload);
            compared += 1;
            if intake.is_ok() == schema_accepts {
                continue;
            }
            let shown = value.clone().unwrap_or(json!("<absent>"));
            match known_gap(&field, &shown, intake.is_ok()) {
                Some(why) => *gaps.entry(why).or_default() += 1,
                None => disagreements.push(format!(
                    "{ty}.{field} = {}: intake {}, schema {}",
                    shown.to_string().chars().take(80).collect::<String>(),
                    match &intake {
                        Ok(_) => "accepts".to_owned(),
                        Err(e) => format!("refuses ({e})"),
                    },
                    if schema_accepts { "accepts" } else { "refuses" },
                )),
            }
        }
    }
    assert!(
        disagreements.is_empty(),
        "{} of {compared} payloads judged differently:\n{}",
        disagreements.len(),
        disagreements.join("\n")
    );
    assert!(compared > 5000, "{compared}");
    eprintln!("{compared} payloads compared; known gaps: {gaps:#?}");
}

// ---- what the domain produces -------------------------------------------------

fn ts(s: &str) -> Timestamp {
    Timestamp::parse_rfc3339(s).unwrap()
}

/// The intake examples of docs/intake.md stored as events, in order, the retraction
/// naming the cancellation it follows, as ingest would store them.
fn readme_events() -> Vec<Envelope> {
    let mut events: Vec<Envelope> = Vec::new();
    for (i, (ty, mut payload)) in readme_intake().into_iter().enumerate() {
        if payload.get("retracts").is_some() {
            let cancelled = events
                .iter()
                .rev()
                .find(|e| e.event_type() == EventType::ReviewCancelled)
                .expect("docs/intake.md cancels before it retracts");
            payload["retracts"] = cancelled.id.to_string().into();
        }
        let command = parse_intake(&ty, &serde_json::to_vec(&payload).unwrap()).unwrap();
        let id = command.event_id.unwrap_or_else(|| {
            Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0000 + i as u128)
        });
        let recorded = ts("2024-11-06T10:00:00.123Z")
            .checked_add(time::Duration::hours(i64::try_from(i).unwrap()))
            .unwrap();
        events.push(command.into_envelope(id, recorded, None));
    }
    events
}

fn value_of(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap()
}

#[test]
fn stored_events_read_models_and_query_answers_validate() {
    let schemas = Schemas::load();
    let events = readme_events();
    for e in &events {
        schemas.assert_valid("envelope.json", &value_of(&e.to_json()));
    }
    // A version 1 event (the contract's own example) is still described.
    let v1 = json!({"id": "0190f3a2-7b1c-7d4e-9a2b-3c4d5e6f7a8b", "type": "review_scheduled", "schema": 1,
        "country": "KZ", "session": 48, "occurred_at": "2024-11-06T10:00:00Z",
        "recorded_at": "2024-11-06T10:00:00.123Z", "source": null,
        "data": {"scheduled_for": KZ48_DATE, "location": "Geneva"}});
    schemas.assert_valid("envelope.json", &v1);
    let mut wrong = v1.clone();
    wrong["data"]["title"] = "a side event's field".into();
    assert!(
        !schemas.accepts("envelope.json", &wrong),
        "data is checked by type"
    );

    let models = ReadModels::fold(events.iter().enumerate().map(|(i, e)| (i as u64 + 1, e)));
    assert!(models.reviews.len() >= 2);
    for review in models.reviews.values() {
        let value = value_of(&review.to_json());
        schemas.assert_valid("read-models/review.json", &value);
        schemas.assert_valid("queries/review.json", &json!({"ok": true, "review": value}));
    }
    for session in models.sessions.values() {
        let value = value_of(&session.to_json());
        schemas.assert_valid("read-models/session.json", &value);
        schemas.assert_valid(
            "queries/session.json",
            &json!({"ok": true, "session": value}),
        );
    }
    for country in models.countries.values() {
        let value = value_of(&country.to_json());
        schemas.assert_valid("read-models/country.json", &value);
        schemas.assert_valid(
            "queries/country.json",
            &json!({"ok": true, "country": value}),
        );
    }
    let upcoming = models.upcoming(ts("2024-01-01T00:00:00Z"), None, None);
    assert!(!upcoming.is_empty());
    schemas.assert_valid(
        "queries/upcoming.json",
        &json!({"ok": true, "reviews": upcoming}),
    );
}

#[test]
fn replies_and_rejection_records_built_by_the_code_validate() {
    let schemas = Schemas::load();
    schemas.assert_valid(
        "intake/reply.json",
        &json!({"ok": true, "event_id": Uuid::now_v7(), "seq": 1, "duplicate": false}),
    );
    let now = ts("2025-01-20T09:12:44.518Z");
    for case in corpus() {
        let Err(error) = parse_intake(&case.ty, &case.payload) else {
            panic!("{} is accepted", case.file);
        };
        let reply = json!({"ok": false, "error": error});
        schemas.assert_valid("intake/reply.json", &reply);
        schemas.assert_valid("queries/error.json", &reply);
        let subject = format!("upr.ingest.{}", case.ty);
        let record =
            upr_ingest::rejection::RejectionRecord::new(&subject, error, &case.payload, now);
        schemas.assert_valid("rejected.json", &value_of(&record.to_json()));
    }
    let long = RejectError::missing("f".repeat(5000));
    schemas.assert_valid("queries/error.json", &json!({"ok": false, "error": long}));
}

#[test]
fn notices_built_by_the_code_validate() {
    let schemas = Schemas::load();
    let events = readme_events();
    let leads = parse_leads("30d,7d,1d").unwrap();
    let (kz, s48) = (Country::parse("KZ").unwrap(), Session::new(48).unwrap());
    let reminders = plan(
        kz,
        s48,
        ts(KZ48_DATE),
        "Geneva",
        &leads,
        ts("2024-11-06T10:00:00Z"),
    );
    assert_eq!(reminders.len(), 3);
    for (i, r) in reminders.iter().enumerate() {
        let notice = r.notice(r.due_at, i == 0);
        schemas.assert_valid("notifications/reminder.json", &value_of(&notice.to_json()));
    }

    let mut checked = HashMap::new();
    let mut states: HashMap<(Country, Session), ReviewState> = HashMap::new();
    for e in &events {
        let state = states.entry((e.country, e.session)).or_default();
        let before = state.clone();
        let taken_back = state.apply(e);
        let sent_at = e.recorded_at;
        let notice = match &taken_back {
            Some(entry) => ChangeNotice::corrected(e, entry, &before, state, sent_at),
            None => ChangeNotice::for_event(e, before.scheduled_for(), sent_at),
        };
        if let Some(notice) = notice {
            let kind = notice.kind().as_str();
            schemas.assert_valid(
                &format!("notifications/{kind}.json"),
                &value_of(&notice.to_json()),
            );
            *checked.entry(kind).or_insert(0) += 1;
            let other = if kind == "cancelled" {
                "rescheduled"
            } else {
                "cancelled"
            };
            assert!(
                !schemas.accepts(
                    &format!("notifications/{other}.json"),
                    &value_of(&notice.to_json())
                ),
                "a {kind} notice is told apart from a {other} one"
            );
        }
    }
    assert_eq!(
        checked.len(),
        3,
        "rescheduled, cancelled and corrected: {checked:?}"
    );
}

#[test]
fn the_notifier_status_answer_validates() {
    let schemas = Schemas::load();
    let stats = upr_notifier::stats::Stats::default();
    schemas.assert_valid("notifier/status.json", &stats.status());
}

// ---- the AsyncAPI document ---------------------------------------------------

fn yaml_to_json(yaml: &yaml_rust2::Yaml) -> Value {
    use yaml_rust2::Yaml;
    match yaml {
        Yaml::Real(s) => json!(s.parse::<f64>().unwrap()),
        Yaml::Integer(i) => json!(i),
        Yaml::String(s) => json!(s),
        Yaml::Boolean(b) => json!(b),
        Yaml::Array(items) => Value::Array(items.iter().map(yaml_to_json).collect()),
        Yaml::Hash(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let key = match k {
                        Yaml::String(s) => s.clone(),
                        Yaml::Integer(i) => i.to_string(),
                        other => panic!("unsupported YAML key {other:?}"),
                    };
                    (key, yaml_to_json(v))
                })
                .collect(),
        ),
        Yaml::Null => Value::Null,
        other => panic!("unsupported YAML node {other:?}"),
    }
}

fn asyncapi() -> Value {
    let text = std::fs::read_to_string(repo().join("docs/asyncapi.yaml")).unwrap();
    let docs = yaml_rust2::YamlLoader::load_from_str(&text).expect("docs/asyncapi.yaml is YAML");
    assert_eq!(docs.len(), 1, "one YAML document");
    yaml_to_json(&docs[0])
}

#[test]
fn the_asyncapi_document_is_valid_asyncapi_3() {
    let meta = read_json(&repo().join("tests/fixtures/asyncapi-3.0.0.schema.json"));
    let validator = jsonschema::validator_for(&meta).expect("the AsyncAPI meta-schema compiles");
    let doc = asyncapi();
    let errors: Vec<String> = validator
        .iter_errors(&doc)
        .map(|e| format!("{e} at {}", e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "docs/asyncapi.yaml: {errors:#?}");
    assert_eq!(doc["asyncapi"], "3.0.0");
}

/// Every `$ref` string in `value`, with where it was found.
fn refs(value: &Value, at: &str, out: &mut Vec<(String, String)>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                if k == "$ref" {
                    if let Some(s) = v.as_str() {
                        out.push((at.to_owned(), s.to_owned()));
                    }
                } else {
                    refs(v, &format!("{at}/{k}"), out);
                }
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                refs(v, &format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

#[test]
fn every_asyncapi_payload_is_a_checked_in_schema_and_every_schema_is_used() {
    let doc = asyncapi();
    let mut found = Vec::new();
    refs(&doc, "", &mut found);
    let mut files = std::collections::BTreeSet::new();
    for (at, target) in &found {
        if let Some(pointer) = target.strip_prefix('#') {
            assert!(
                doc.pointer(pointer).is_some(),
                "{at}: {target} points at nothing"
            );
        } else {
            let path = target
                .strip_prefix("./schemas/")
                .unwrap_or_else(|| panic!("{at}: {target} is not under ./schemas/"));
            assert!(
                repo().join("docs/schemas").join(path).is_file(),
                "{at}: {target} does not exist"
            );
            files.insert(path.to_owned());
        }
    }
    for d in schema::documents() {
        assert!(
            files.contains(&d.path),
            "docs/schemas/{} is not used by docs/asyncapi.yaml",
            d.path
        );
    }
}

/// Subjects of `contract.rs` that are not for clients, and why they are
/// left out of the AsyncAPI document.
const INTERNAL: &[(&str, &str)] = &[
    (
        "upr.notifier.timer.",
        "the notifier's own JetStream message schedules (UPR_NOTIFIER_TIMERS)",
    ),
    (
        "$JS.API.",
        "the JetStream API, which ingest calls as a client",
    ),
    (
        "upr.internal.ingest.",
        "ingest replicas handing a command to the replica owning its review, inside the service account",
    ),
];

/// Whether `subject` (tokens; `*`, `>` and `{…}` placeholders allowed) is
/// covered by `address` (tokens with `{param}` placeholders): the same
/// shape, or `subject` a prefix or wildcard of it.
fn covers(address: &str, subject: &str) -> bool {
    let a: Vec<&str> = address.split('.').collect();
    let s: Vec<&str> = subject.trim_end_matches('.').split('.').collect();
    let param = |t: &str| t.starts_with('{') || t == "*";
    for (i, st) in s.iter().enumerate() {
        if *st == ">" {
            return a.len() > i;
        }
        let Some(at) = a.get(i) else {
            return false;
        };
        if !(param(at) || param(st) || at == st) {
            return false;
        }
    }
    a.len() == s.len() || subject.ends_with('.') || a.len() > s.len() && !subject.contains('{')
}

#[test]
fn every_subject_of_the_contract_is_in_the_asyncapi_document() {
    let doc = asyncapi();
    let addresses: Vec<String> = doc["channels"]
        .as_object()
        .unwrap()
        .values()
        .filter_map(|c| c["address"].as_str().map(str::to_owned))
        .collect();
    // Every string literal of contract.rs that is a subject or a template.
    let source = std::fs::read_to_string(repo().join("nats/src/contract.rs")).unwrap();
    let code = source.split("#[cfg(test)]").next().unwrap();
    let mut subjects_found: Vec<String> = Vec::new();
    for prefix in ["\"upr.", "\"$JS."] {
        for (at, _) in code.match_indices(prefix) {
            let literal = &code[at + 1..];
            let end = literal.find('"').unwrap();
            subjects_found.push(literal[..end].to_owned());
        }
    }
    // And what the builders make, with every type and kind.
    let (kz, s48) = (Country::parse("KZ").unwrap(), Session::new(48).unwrap());
    for ty in EventType::ALL {
        subjects_found.push(subjects::ingest(ty));
        subjects_found.push(subjects::event(kz, s48, ty));
    }
    for kind in [
        upr_domain::NoticeKind::Reminder,
        upr_domain::NoticeKind::Rescheduled,
        upr_domain::NoticeKind::Cancelled,
        upr_domain::NoticeKind::Corrected,
    ] {
        subjects_found.push(subjects::notify(kind, kz));
    }
    assert!(subjects_found.len() > 20, "{subjects_found:?}");
    let mut missing = Vec::new();
    for subject in &subjects_found {
        if INTERNAL.iter().any(|(p, _)| subject.starts_with(p)) {
            continue;
        }
        if !addresses.iter().any(|a| covers(a, subject)) {
            missing.push(subject.clone());
        }
    }
    assert!(
        missing.is_empty(),
        "subjects of contract.rs missing from docs/asyncapi.yaml: {missing:?}\naddresses: {addresses:?}"
    );
    // Each concrete intake, event and notice subject has its own channel.
    for ty in EventType::ALL {
        assert!(
            addresses.contains(&subjects::ingest(ty)),
            "no channel for {}",
            subjects::ingest(ty)
        );
    }
}

// ---- notification samples in the documentation ------------------------------

/// The notification kinds, each with its schema `notifications/<kind>.json`.
const NOTIFICATION_KINDS: &[&str] = &["reminder", "rescheduled", "cancelled", "corrected"];

/// Every JSON sample of README.md and docs/*.md, with where it is: each
/// ```json block (whole, or line by line when it is JSON Lines) and each
/// comment line under a command that shows an object (from its first `{`).
fn doc_samples() -> Vec<(String, String)> {
    let mut pages = vec![repo().join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(repo().join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    pages.extend(docs);
    let mut out = Vec::new();
    for page in pages {
        let name = page.file_name().unwrap().to_string_lossy().to_string();
        let text = std::fs::read_to_string(&page).unwrap();
        let mut fence: Option<(String, usize, Vec<&str>)> = None;
        for (i, line) in text.lines().enumerate() {
            let trimmed = line.trim_start();
            if let Some(lang) = trimmed.strip_prefix("```") {
                match fence.take() {
                    None => fence = Some((lang.trim().to_owned(), i + 1, Vec::new())),
                    Some((lang, start, body)) => {
                        if lang == "json" {
                            let whole = body.join("\n");
                            if serde_json::from_str::<Value>(&whole).is_ok() {
                                out.push((format!("{name}:{start}"), whole));
                            } else {
                                for (n, l) in body.iter().enumerate() {
                                    if !l.trim().is_empty() {
                                        out.push((
                                            format!("{name}:{}", start + n + 1),
                                            (*l).to_owned(),
                                        ));
                                    }
                                }
                            }
                        }
                    }
                }
                continue;
            }
            if let Some((lang, _, body)) = &mut fence {
                if lang == "json" {
                    body.push(line);
                } else if let Some(comment) = trimmed.strip_prefix('#')
                    && let Some(at) = comment.find('{')
                {
                    out.push((format!("{name}:{}", i + 1), comment[at..].trim().to_owned()));
                }
            }
        }
    }
    out
}

/// A sample's text with its string literals taken out, so what is left
/// shows whether fields were elided (a bare `…`).
fn outside_strings(text: &str) -> String {
    let mut out = String::new();
    let mut in_string = false;
    let mut escaped = false;
    for c in text.chars() {
        if in_string {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
        } else {
            out.push(c);
        }
    }
    out
}

/// Every notification the documentation shows is what the notifier sends:
/// a complete sample validates against its kind's schema, and an abridged
/// one (a value written `"…"`) still shows every field the schema requires;
/// one that says it leaves fields out (a bare `…`) is not checked.
#[test]
fn every_notification_sample_in_the_docs_matches_its_schema() {
    let schemas = Schemas::load();
    let mut checked = 0;
    let mut problems = Vec::new();
    for (at, sample) in doc_samples() {
        let kind = NOTIFICATION_KINDS.iter().find(|k| {
            let compact: String = sample.split_whitespace().collect();
            compact.contains(&format!("\"kind\":\"{k}\""))
        });
        let Some(kind) = kind else { continue };
        let path = format!("notifications/{kind}.json");
        checked += 1;
        if outside_strings(&sample).contains('…') {
            // Says it leaves fields out.
            continue;
        }
        if sample.contains('…') {
            // Abridged: every required field is still shown.
            let schema = read_json(&repo().join("docs/schemas").join(&path));
            let missing: Vec<&str> = schema["required"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(Value::as_str)
                .filter(|key| !sample.contains(&format!("\"{key}\"")))
                .collect();
            if !missing.is_empty() {
                problems.push(format!(
                    "{at}: a {kind} sample without {missing:?} (required by {path}); show them, `…` for a value that varies"
                ));
            }
            continue;
        }
        match serde_json::from_str::<Value>(&sample) {
            Ok(value) => {
                let errors = schemas.errors(&path, &value);
                if !errors.is_empty() {
                    problems.push(format!(
                        "{at}: does not validate against {path}: {errors:?}"
                    ));
                }
            }
            Err(e) => problems.push(format!("{at}: a {kind} sample that is not JSON: {e}")),
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
    assert!(
        checked >= 8,
        "only {checked} notification samples found in the docs"
    );
}
