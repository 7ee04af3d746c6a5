//! Properties of the domain core that the unit tests' proptests (in
//! `src/domain/*`) do not already cover: those check single folds, single
//! plans and arbitrary intake bytes; these check how the pieces behave across
//! crashes, round trips and whole histories, through the public API only.
//!
//! - a projection that crashes at any point, with any subset of its views
//!   written, and resumes from its last ack gives the bytes of a rebuild;
//! - the envelope JSON round-trips byte for byte, and decoding survives
//!   arbitrary and corrupted bytes;
//! - a broken field is the one the rejection names;
//! - ingest's lifecycle state and the review view agree on every log;
//! - across a review's whole history of (re)schedulings, one reminder id
//!   always means the same reminder, and none is due after its review;
//! - `classify` never goes back from late to on time, or from never.

#![allow(
    clippy::unwrap_used,
    reason = "tests: a helper's unwrap is an assertion, and a failure should panic where it happened"
)]

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use serde_json::{Value, json};
use upr_domain::{
    Command, Country, CountryView, Envelope, ErrorCode, EventType, Firing, ReadModels, ReviewKey,
    ReviewState, ReviewView, Session, SessionView, Timestamp, classify, parse_intake, parse_leads,
    plan,
};
use uuid::Uuid;

const COUNTRIES: [&str; 4] = ["KZ", "CH", "BR", "fr"];

fn ts(millis: i64) -> Timestamp {
    Timestamp::from_unix_millis(millis).expect("in range")
}

/// A date in January-February 2025 at 08:30 or 14:00 UTC.
fn date(day: u8, afternoon: bool) -> String {
    let (m, d) = (day / 28 + 1, day % 28 + 1);
    let h = if afternoon { "14:00" } else { "08:30" };
    format!("2025-{m:02}-{d:02}T{h}:00Z")
}

/// An intake payload of any type with a mix of optional fields.
#[derive(Debug, Clone)]
struct Spec {
    country: usize,
    session: u16,
    ty: usize,
    day: u8,
    bits: u8,
}

fn arb_spec() -> impl Strategy<Value = Spec> {
    (
        0..COUNTRIES.len(),
        47u16..50,
        0..8usize,
        0u8..56,
        any::<u8>(),
    )
        .prop_map(|(country, session, ty, day, bits)| Spec {
            country,
            session,
            ty,
            day,
            bits,
        })
}

impl Spec {
    fn event_type(&self) -> EventType {
        EventType::ALL[self.ty]
    }

    fn payload(&self) -> Value {
        let b = |i: u8| self.bits & (1 << i) != 0;
        let when = date(self.day, b(0));
        let mut p = json!({"country": COUNTRIES[self.country], "session": self.session});
        let extra = match self.event_type() {
            EventType::ReviewScheduled => {
                json!({"scheduled_for": when, "location": if b(1) { Value::from("New York") } else { Value::Null },
                       "troika": if b(3) { json!(["AR", "JP", "SN"]) } else { Value::Null }})
            }
            EventType::ReviewRescheduled => {
                json!({"scheduled_for": when, "reason": if b(1) { Value::from("room") } else { Value::Null }})
            }
            EventType::ReviewCancelled => json!({"reason": if b(1) { "funding" } else { "  x  " }}),
            EventType::ReviewHeld => json!({
                "held_on": if b(1) { Value::from(&when[..10]) } else { Value::Null },
                "recommendations_received": if b(2) { Value::from(u32::from(self.bits)) } else { Value::Null },
            }),
            EventType::SideEventHeld => json!({
                "title": format!("Side event {}", self.bits),
                "held_on": if b(1) { &when[..10] } else { when.as_str() },
                "speakers": if b(2) { json!([{"name": "A. B.", "role": "NGO"}, {"name": "C"}]) } else { Value::Null },
                "participating_states": if b(3) { Value::from(self.day) } else { Value::Null },
                "topics": if b(4) { json!(["civic space", "press"]) } else { json!([]) },
            }),
            EventType::ReportPublished => json!({
                "published_on": &when[..10],
                "document_symbol": if b(1) { Value::from("A/HRC/59/10") } else { Value::Null },
                "recommendations": if b(2) { json!({"total": 300, "supported": 250, "noted": 50}) } else { Value::Null },
            }),
            EventType::OutcomeAdopted => json!({
                "adopted_on": &when[..10],
                "hrc_session": 58,
                "recommendations": if b(2) { json!({"total": 300, "supported": 260, "noted": 40}) } else { Value::Null },
            }),
            // Names event 1..=56 of the log: earlier, later or absent,
            // of this review or another, so some take nothing back.
            EventType::EventRetracted => json!({
                "retracts": Uuid::from_u128(u128::from(self.day) + 1),
                "reason": "recorded by mistake",
            }),
        };
        for (k, v) in extra.as_object().expect("object") {
            p[k] = v.clone();
        }
        if b(5) {
            p["source"] = "UPR Info".into();
        }
        if b(6) {
            p["occurred_at"] = "2024-11-06T11:00:00+01:00".into();
        }
        p
    }

    fn command(&self) -> Command {
        let bytes = serde_json::to_vec(&self.payload()).expect("json");
        parse_intake(self.event_type().as_str(), &bytes)
            .unwrap_or_else(|e| panic!("generated payload refused: {e}: {}", self.payload()))
    }
}

/// The log the specs make: event `n` has id `n` and is recorded `n` seconds
/// after a fixed moment.
fn log_of(specs: &[Spec]) -> Vec<Envelope> {
    specs
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let n = i as u64 + 1;
            s.command().into_envelope(
                Uuid::from_u128(n.into()),
                ts(1_730_000_000_000 + i64::try_from(n).unwrap() * 1000),
                None,
            )
        })
        .collect()
}

/// The KV contents the models stand for: bucket and key to value bytes.
fn kv_bytes(m: &ReadModels) -> BTreeMap<(u8, String), Vec<u8>> {
    let mut out = BTreeMap::new();
    for v in m.reviews.values() {
        out.insert((0, v.kv_key()), v.to_json());
    }
    for v in m.sessions.values() {
        out.insert((1, v.kv_key()), v.to_json());
    }
    for v in m.countries.values() {
        out.insert((2, v.kv_key()), v.to_json());
    }
    out
}

/// What a restarted projection holds in memory: the views decoded from the
/// persisted KV values.
fn load(persisted: &BTreeMap<(u8, String), Vec<u8>>) -> ReadModels {
    let mut m = ReadModels::default();
    for ((bucket, key), bytes) in persisted {
        match bucket {
            0 => {
                let v: ReviewView = serde_json::from_slice(bytes).expect("review view decodes");
                assert_eq!(&v.kv_key(), key);
                m.reviews.insert(v.key(), v);
            }
            1 => {
                let v: SessionView = serde_json::from_slice(bytes).expect("session view decodes");
                m.sessions.insert(v.session, v);
            }
            _ => {
                let v: CountryView = serde_json::from_slice(bytes).expect("country view decodes");
                m.countries.insert(v.country, v);
            }
        }
    }
    m
}

/// One step of a simulated projection run.
#[derive(Debug, Clone)]
enum Step {
    /// Fold the next `n` events, write every touched view, then ack.
    Batch(usize),
    /// Fold the next `n` events, write only the touched views selected by
    /// `mask`, then crash before the ack.
    CrashMidWrite(usize, u64),
}

fn arb_step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (1usize..8).prop_map(Step::Batch),
        1 => (1usize..8, any::<u64>()).prop_map(|(n, m)| Step::CrashMidWrite(n, m)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// The projection's checkpoint is the consumer's ack floor plus each
    /// view's `last_seq`. Whatever subset of a batch's views reached the KV
    /// before a crash, resuming from the ack floor with the persisted views
    /// ends with exactly the bytes of a rebuild from sequence 1.
    #[test]
    fn resuming_after_any_crash_gives_the_bytes_of_a_rebuild(
        specs in proptest::collection::vec(arb_spec(), 0..60),
        steps in proptest::collection::vec(arb_step(), 0..40),
    ) {
        let log = log_of(&specs);
        let rebuilt = ReadModels::fold(log.iter().enumerate().map(|(i, e)| (i as u64 + 1, e)));

        let mut persisted: BTreeMap<(u8, String), Vec<u8>> = BTreeMap::new();
        let mut acked = 0usize;
        let mut steps = steps.into_iter();
        while acked < log.len() {
            let step = steps.next().unwrap_or(Step::Batch(log.len()));
            let (n, mask) = match step {
                Step::Batch(n) => (n, None),
                Step::CrashMidWrite(n, m) => (n, Some(m)),
            };
            let mut live = load(&persisted).knowing(log.iter().enumerate().map(|(i, e)| (i as u64 + 1, e)));
            let end = (acked + n).min(log.len());
            let mut touched = BTreeSet::new();
            for (i, e) in log.iter().enumerate().take(end).skip(acked) {
                let t = live.apply(i as u64 + 1, e);
                let [r, s, c] = t.kv_keys();
                touched.extend([(0u8, r), (1, s), (2, c)]);
            }
            let now = kv_bytes(&live);
            for (bit, key) in touched.into_iter().enumerate() {
                if mask.is_none_or(|m| m & (1 << (bit % 64)) != 0) {
                    persisted.insert(key.clone(), now[&key].clone());
                }
            }
            if mask.is_none() {
                acked = end;
            }
        }
        prop_assert_eq!(persisted, kv_bytes(&rebuilt));
    }

    /// What ingest decides with (`ReviewState`) and what users read
    /// (`ReviewView`) never disagree about a review's status, date or place.
    #[test]
    fn ingest_state_and_review_view_agree_on_every_log(
        specs in proptest::collection::vec(arb_spec(), 0..60),
    ) {
        let log = log_of(&specs);
        let mut states: BTreeMap<ReviewKey, ReviewState> = BTreeMap::new();
        for e in &log {
            states.entry(e.review_key()).or_default().apply(e);
        }
        let models = ReadModels::fold(log.iter().enumerate().map(|(i, e)| (i as u64 + 1, e)));
        prop_assert_eq!(states.len(), models.reviews.len());
        for (key, state) in &states {
            let view = &models.reviews[key];
            prop_assert_eq!(state.status(), view.status);
            prop_assert_eq!(state.scheduled_for(), view.scheduled_for);
            prop_assert_eq!(state.location(), view.location.as_deref());
        }
    }

    /// Stored envelopes decode to what was stored and re-encode to the same
    /// bytes, so a rebuild never sees a different event than the live fold.
    #[test]
    fn envelopes_round_trip_byte_for_byte(specs in proptest::collection::vec(arb_spec(), 1..20)) {
        for e in log_of(&specs) {
            let bytes = e.to_json();
            let back = Envelope::from_json(&bytes).expect("own envelope decodes");
            prop_assert_eq!(&back, &e);
            prop_assert_eq!(back.to_json(), bytes);
        }
    }

    /// Consumers must survive anything found in the stream: decoding never
    /// panics on arbitrary bytes or on a stored envelope with bytes changed.
    #[test]
    fn envelope_decoding_never_panics(
        junk in proptest::collection::vec(any::<u8>(), 0..256),
        spec in arb_spec(),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
    ) {
        let _ = Envelope::from_json(&junk);
        let mut bytes = log_of(std::slice::from_ref(&spec))[0].to_json();
        for (at, b) in edits {
            let i = at.index(bytes.len());
            bytes[i] = b;
        }
        let _ = Envelope::from_json(&bytes);
    }

    /// Replacing one field of a valid payload with any JSON value is either
    /// accepted or refused naming that field (or a path inside it), as
    /// `invalid_field`, or `missing_field` for a required field set to null.
    #[test]
    fn a_broken_field_is_the_field_named(spec in arb_spec(), pick in any::<prop::sample::Index>(), value in arb_json()) {
        let mut payload = spec.payload();
        let fields: Vec<String> = payload.as_object().expect("object").keys().cloned().collect();
        let field = pick.get(&fields).clone();
        payload[&field] = value.clone();
        let bytes = serde_json::to_vec(&payload).expect("json");
        if let Err(e) = parse_intake(spec.event_type().as_str(), &bytes) {
            let named = e.field.clone().unwrap_or_default();
            prop_assert!(
                named == field || named.starts_with(&format!("{field}[")) || named.starts_with(&format!("{field}.")),
                "broke {} with {}, but the error names {:?}: {}", field, value, e.field, e.message
            );
            let code_ok = match e.code {
                ErrorCode::InvalidField => true,
                ErrorCode::MissingField => value.is_null() || named != field,
                _ => false,
            };
            prop_assert!(code_ok, "broke {} with {}: {:?}", field, value, e);
        }
    }

    /// Over a review's whole history of (re)schedulings, possibly to the same
    /// date again, an id always denotes the same reminder, no reminder is due
    /// at or after its review, nor at or before the moment it was planned.
    #[test]
    fn reminder_ids_mean_one_reminder_across_a_whole_history(
        lead_spec in prop::sample::subsequence(vec!["30d", "2w", "7d", "1d", "3h", "90m", "3s", "1s"], 1..8),
        history in proptest::collection::vec((0i64..20, 0i64..40 * 86_400), 1..12),
    ) {
        let leads = parse_leads(&lead_spec.join(",")).expect("valid leads");
        let country = Country::parse("KZ").expect("KZ");
        let session = Session::new(48).expect("48");
        let base = 1_737_000_000_000i64;
        let mut seen: BTreeMap<String, (Timestamp, Timestamp, String)> = BTreeMap::new();
        let mut at = base - 60 * 86_400_000;
        for (day, offset) in history {
            at += offset * 1000;
            let scheduled_for = ts(base + day * 86_400_000);
            let planned_at = ts(at);
            for r in plan(country, session, scheduled_for, "Geneva", &leads, planned_at) {
                prop_assert!(r.due_at < r.scheduled_for && r.due_at > planned_at);
                prop_assert_eq!(r.scheduled_for, scheduled_for);
                let same = (r.scheduled_for, r.due_at, r.lead.clone());
                if let Some(before) = seen.insert(r.id.clone(), same.clone()) {
                    prop_assert_eq!(before, same, "id {} reused for another reminder", r.id);
                }
            }
        }
    }

    /// A reminder's fate only moves forward with time: on time, then late,
    /// then never.
    #[test]
    fn classify_never_goes_back(due_in in 1i64..10_000_000, t1 in 0i64..20_000_000, dt in 0i64..20_000_000) {
        let leads = parse_leads("3s,1s,7d").expect("leads");
        let country = Country::parse("CH").expect("CH");
        let session = Session::new(1).expect("1");
        let scheduled_for = ts(1_737_000_000_000 + due_in * 1000);
        let planned = plan(country, session, scheduled_for, "Geneva", &leads, ts(0));
        let rank = |f: Firing| match f {
            Firing::OnTime => 0,
            Firing::Late => 1,
            Firing::Never => 2,
        };
        for r in planned {
            let a = r.due_at.checked_add(time::Duration::milliseconds(t1)).expect("in range");
            let b = a.checked_add(time::Duration::milliseconds(dt)).expect("in range");
            prop_assert!(rank(classify(&r, a)) <= rank(classify(&r, b)));
            prop_assert_eq!(classify(&r, a) == Firing::Never, a >= r.scheduled_for);
        }
    }

    /// The lead list from the environment never panics the parser.
    #[test]
    fn lead_parsing_never_panics(spec in "\\PC{0,40}") {
        if let Ok(leads) = parse_leads(&spec) {
            prop_assert!(!leads.is_empty() && leads.windows(2).all(|w| w[0].secs() > w[1].secs()));
        }
    }
}

/// Any JSON value, a few levels deep.
fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        (-1e6f64..1e6).prop_map(Value::from),
        "\\PC{0,12}".prop_map(Value::from),
        Just(Value::from("2025-02-30")),
        Just(Value::from("XK")),
        Just(Value::from("a".repeat(301))),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            proptest::collection::btree_map("[a-z]{1,6}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}
