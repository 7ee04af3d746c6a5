//! Turning an intake message (`upr.ingest.<type>` + JSON bytes) into a
//! validated [`Command`], or a [`RejectError`] that names what is wrong.
//!
//! Checks run in a fixed order and the first failure is reported:
//! size, type, JSON well-formedness, unknown fields (document order), missing
//! required fields (table order), then each field's value (table order).

use serde_json::Value;
use uuid::Uuid;

use super::country::Country;
use super::error::{ErrorCode, RejectError};
use super::event::{
    DEFAULT_LOCATION, Envelope, EventData, EventRetracted, EventType, OutcomeAdopted,
    ReportPublished, ReviewCancelled, ReviewHeld, ReviewKey, ReviewRescheduled, ReviewScheduled,
    SCHEMA, Session, SideEventHeld,
};
use super::field::{IntakeField, Obj};
use super::json::parse_strict;
use super::party::PartyName;
use super::time::Timestamp;

/// The largest intake payload accepted, in bytes (64 KiB).
pub const MAX_PAYLOAD: usize = 64 * 1024;

/// A validated intake message: everything needed to decide and to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// The client's id for idempotent retries; ingest picks one when absent.
    pub event_id: Option<Uuid>,
    /// When it happened; defaults to the recording time.
    pub occurred_at: Option<Timestamp>,
    /// Who reported it.
    pub source: Option<String>,
    /// The state under review.
    pub country: Country,
    /// The Working Group session.
    pub session: Session,
    /// The type-specific facts.
    pub data: EventData,
}

impl Command {
    /// The review whose lifecycle decides this command.
    pub fn review_key(&self) -> ReviewKey {
        ReviewKey {
            country: self.country,
            session: self.session,
        }
    }

    /// The event type.
    pub fn event_type(&self) -> EventType {
        self.data.event_type()
    }

    /// The envelope to store; `id` should be `event_id` when the client gave
    /// one (the caller decides, so the domain never generates randomness).
    /// `recorded_by` is the party the server authenticated, never a payload
    /// value.
    pub fn into_envelope(
        self,
        id: Uuid,
        recorded_at: Timestamp,
        recorded_by: Option<PartyName>,
    ) -> Envelope {
        Envelope {
            id,
            data: self.data,
            schema: SCHEMA,
            country: self.country,
            session: self.session,
            occurred_at: self.occurred_at.unwrap_or(recorded_at),
            recorded_at,
            recorded_by,
            source: self.source,
        }
    }
}

/// The intake fields, each named once with its kind and whether it is
/// required. A name appears twice only where one event type requires a
/// field that another leaves optional.
pub mod fields {
    use crate::bounds::max_chars;
    use crate::field::{
        Count, DateOrTime, DocumentSymbol, EventUuid, HrcSession, MemberState, Optional,
        RecommendationCounts, Required, SessionNumber, Speakers, Text, Time, Topics, Troika,
    };

    /// The state under review.
    pub const COUNTRY: Required<MemberState> = Required("country", MemberState);
    /// The Working Group session.
    pub const SESSION: Required<SessionNumber> = Required("session", SessionNumber);
    /// The client's id for idempotent retries.
    pub const EVENT_ID: Optional<EventUuid> = Optional("event_id", EventUuid);
    /// When it happened.
    pub const OCCURRED_AT: Optional<Time> = Optional("occurred_at", Time);
    /// Who reported it.
    pub const SOURCE: Optional<Text> = Optional("source", Text(max_chars::SOURCE));
    /// When a review starts.
    pub const SCHEDULED_FOR: Required<Time> = Required("scheduled_for", Time);
    /// Where a review is held.
    pub const LOCATION: Optional<Text> = Optional("location", Text(max_chars::LOCATION));
    /// The three states facilitating a review.
    pub const TROIKA: Optional<Troika> = Optional("troika", Troika);
    /// Why a review moved or was cancelled.
    pub const REASON: Optional<Text> = Optional("reason", Text(max_chars::REASON));
    /// When a review was held.
    pub const HELD_ON: Optional<DateOrTime> = Optional("held_on", DateOrTime);
    /// Recommendations a state received at its review.
    pub const RECOMMENDATIONS_RECEIVED: Optional<Count> =
        Optional("recommendations_received", Count);
    /// A side event's title.
    pub const TITLE: Required<Text> = Required("title", Text(max_chars::TITLE));
    /// When a side event was held.
    pub const SIDE_EVENT_HELD_ON: Required<DateOrTime> = Required("held_on", DateOrTime);
    /// Who spoke at a side event.
    pub const SPEAKERS: Optional<Speakers> = Optional("speakers", Speakers);
    /// How many states took part in a side event.
    pub const PARTICIPATING_STATES: Optional<Count> = Optional("participating_states", Count);
    /// Subjects a side event covered.
    pub const TOPICS: Optional<Topics> = Optional("topics", Topics);
    /// When an outcome report was published.
    pub const PUBLISHED_ON: Required<DateOrTime> = Required("published_on", DateOrTime);
    /// The report's UN document symbol.
    pub const DOCUMENT_SYMBOL: Optional<DocumentSymbol> =
        Optional("document_symbol", DocumentSymbol);
    /// Recommendation counts of a report or an adopted outcome.
    pub const RECOMMENDATIONS: Optional<RecommendationCounts> =
        Optional("recommendations", RecommendationCounts);
    /// When the Council adopted an outcome.
    pub const ADOPTED_ON: Required<DateOrTime> = Required("adopted_on", DateOrTime);
    /// The Council session that adopted it.
    pub const HRC_SESSION: Required<HrcSession> = Required("hrc_session", HrcSession);
    /// The event a retraction takes back.
    pub const RETRACTS: Required<EventUuid> = Required("retracts", EventUuid);
    /// Why an event is retracted.
    pub const RETRACTION_REASON: Required<Text> = Required("reason", Text(max_chars::REASON));
}

use fields::{
    ADOPTED_ON, COUNTRY, DOCUMENT_SYMBOL, EVENT_ID, HELD_ON, HRC_SESSION, LOCATION, OCCURRED_AT,
    PARTICIPATING_STATES, PUBLISHED_ON, REASON, RECOMMENDATIONS, RECOMMENDATIONS_RECEIVED,
    RETRACTION_REASON, RETRACTS, SCHEDULED_FOR, SESSION, SIDE_EVENT_HELD_ON, SOURCE, SPEAKERS,
    TITLE, TOPICS, TROIKA,
};

/// The fields every intake message may carry, in table order.
pub const COMMON: [&dyn IntakeField; 5] = [&COUNTRY, &SESSION, &EVENT_ID, &OCCURRED_AT, &SOURCE];

/// The type-specific fields in table order: with [`COMMON`], what the
/// parser accepts and requires, and what the intake schemas describe.
pub fn type_fields(ty: EventType) -> &'static [&'static dyn IntakeField] {
    match ty {
        EventType::ReviewScheduled => &[&SCHEDULED_FOR, &LOCATION, &TROIKA],
        EventType::ReviewRescheduled => &[&SCHEDULED_FOR, &REASON],
        EventType::ReviewCancelled => &[&REASON],
        EventType::ReviewHeld => &[&HELD_ON, &RECOMMENDATIONS_RECEIVED],
        EventType::SideEventHeld => &[
            &TITLE,
            &SIDE_EVENT_HELD_ON,
            &SPEAKERS,
            &PARTICIPATING_STATES,
            &TOPICS,
        ],
        EventType::ReportPublished => &[&PUBLISHED_ON, &DOCUMENT_SYMBOL, &RECOMMENDATIONS],
        EventType::OutcomeAdopted => &[&ADOPTED_ON, &HRC_SESSION, &RECOMMENDATIONS],
        EventType::EventRetracted => &[&RETRACTS, &RETRACTION_REASON],
    }
}

/// Validates one intake message.
///
/// `event_type` is the last token of the subject. Strings are stored
/// trimmed; a string that is empty after trimming is invalid even where the
/// field is optional (send `null` or omit it instead), so a blank value is
/// never mistaken for information.
///
/// # Errors
/// A [`RejectError`] for the first problem found, in the order described in
/// the module documentation.
pub fn parse_intake(event_type: &str, payload: &[u8]) -> Result<Command, RejectError> {
    if payload.len() > MAX_PAYLOAD {
        return Err(RejectError::too_large(payload.len(), MAX_PAYLOAD));
    }
    let ty = EventType::parse(event_type).ok_or_else(|| {
        let valid: Vec<_> = EventType::ALL.iter().map(EventType::as_str).collect();
        RejectError::new(
            ErrorCode::UnknownType,
            format!(
                "unknown event type {event_type:?}; valid types: {}",
                valid.join(", ")
            ),
        )
    })?;
    let text =
        std::str::from_utf8(payload).map_err(|_| RejectError::invalid_json("it is not UTF-8"))?;
    let Value::Object(map) = parse_strict(text.as_bytes()).map_err(RejectError::invalid_json)?
    else {
        return Err(RejectError::invalid_json("the top level must be an object"));
    };

    let table: Vec<&dyn IntakeField> = COMMON.iter().chain(type_fields(ty)).copied().collect();
    let obj = Obj::check(&map, "", &table)?;

    let country = obj.req(&COUNTRY)?;
    let session = obj.req(&SESSION)?;
    let event_id = obj.opt(&EVENT_ID)?;
    let occurred_at = obj.opt(&OCCURRED_AT)?;
    let source = obj.opt(&SOURCE)?;

    let data = match ty {
        EventType::ReviewScheduled => EventData::ReviewScheduled(ReviewScheduled {
            scheduled_for: obj.req(&SCHEDULED_FOR)?,
            location: obj
                .opt(&LOCATION)?
                .unwrap_or_else(|| DEFAULT_LOCATION.to_owned()),
            troika: obj.opt_with(&TROIKA, |troika, v, f| troika.parse(v, f, country))?,
        }),
        EventType::ReviewRescheduled => EventData::ReviewRescheduled(ReviewRescheduled {
            scheduled_for: obj.req(&SCHEDULED_FOR)?,
            reason: obj.opt(&REASON)?,
        }),
        EventType::ReviewCancelled => EventData::ReviewCancelled(ReviewCancelled {
            reason: obj.opt(&REASON)?,
        }),
        EventType::ReviewHeld => EventData::ReviewHeld(ReviewHeld {
            held_on: obj.opt(&HELD_ON)?,
            recommendations_received: obj.opt(&RECOMMENDATIONS_RECEIVED)?,
        }),
        EventType::SideEventHeld => EventData::SideEventHeld(SideEventHeld {
            title: obj.req(&TITLE)?,
            held_on: obj.req(&SIDE_EVENT_HELD_ON)?,
            speakers: obj.opt(&SPEAKERS)?.unwrap_or_default(),
            participating_states: obj.opt(&PARTICIPATING_STATES)?,
            topics: obj.opt(&TOPICS)?.unwrap_or_default(),
        }),
        EventType::ReportPublished => EventData::ReportPublished(ReportPublished {
            published_on: obj.req(&PUBLISHED_ON)?,
            document_symbol: obj.opt(&DOCUMENT_SYMBOL)?,
            recommendations: obj.opt(&RECOMMENDATIONS)?,
        }),
        EventType::OutcomeAdopted => EventData::OutcomeAdopted(OutcomeAdopted {
            adopted_on: obj.req(&ADOPTED_ON)?,
            hrc_session: obj.req(&HRC_SESSION)?,
            recommendations: obj.opt(&RECOMMENDATIONS)?,
        }),
        EventType::EventRetracted => EventData::EventRetracted(EventRetracted {
            retracts: obj.req(&RETRACTS)?,
            reason: obj.req(&RETRACTION_REASON)?,
        }),
    };
    Ok(Command {
        event_id,
        occurred_at,
        source,
        country,
        session,
        data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// `intake(type, payload).then_ok()` / `.then_err(code, field)`.
    struct When(Result<Command, RejectError>);

    fn intake(ty: &str, payload: impl AsRef<[u8]>) -> When {
        When(parse_intake(ty, payload.as_ref()))
    }

    #[allow(
        clippy::needless_pass_by_value,
        reason = "callers pass json! temporaries"
    )]
    fn intake_json(ty: &str, payload: Value) -> When {
        intake(ty, serde_json::to_vec(&payload).unwrap())
    }

    impl When {
        #[track_caller]
        fn then_ok(self) -> Command {
            self.0
                .unwrap_or_else(|e| panic!("expected acceptance, got {e:?}"))
        }

        #[track_caller]
        fn then_err(self, code: ErrorCode, field: Option<&str>) -> RejectError {
            let e = self.0.expect_err("expected a rejection");
            assert_eq!((e.code, e.field.as_deref()), (code, field), "{}", e.message);
            e
        }

        #[track_caller]
        fn then_invalid(self, field: &str) -> RejectError {
            self.then_err(ErrorCode::InvalidField, Some(field))
        }
    }

    fn scheduled() -> Value {
        json!({"country": "KZ", "session": 48, "scheduled_for": "2025-01-23T08:30:00Z"})
    }

    fn side_event() -> Value {
        json!({"country": "KZ", "session": 48, "title": "Civic space", "held_on": "2025-01-22"})
    }

    fn report() -> Value {
        json!({"country": "KZ", "session": 48, "published_on": "2025-03-01"})
    }

    #[test]
    fn each_type_names_each_field_once_and_requires_country_and_session() {
        for ty in EventType::ALL {
            let names: Vec<&str> = COMMON
                .iter()
                .chain(type_fields(ty))
                .map(|f| f.name())
                .collect();
            let mut unique = names.clone();
            unique.sort_unstable();
            unique.dedup();
            assert_eq!(unique.len(), names.len(), "{ty}: {names:?}");
        }
        let required: Vec<&str> = COMMON
            .iter()
            .filter(|f| f.required())
            .map(|f| f.name())
            .collect();
        assert_eq!(required, ["country", "session"]);
    }

    fn with(mut base: Value, key: &str, value: Value) -> Value {
        base[key] = value;
        base
    }

    #[test]
    fn a_troika_is_three_distinct_member_states_other_than_the_one_reviewed() {
        let cmd = intake_json(
            "review_scheduled",
            with(scheduled(), "troika", json!(["ar", "JP", "SN"])),
        )
        .then_ok();
        let EventData::ReviewScheduled(d) = cmd.data else {
            panic!("{:?}", cmd.data)
        };
        let codes: Vec<&str> = d.troika.iter().flatten().map(Country::as_str).collect();
        assert_eq!(codes, ["AR", "JP", "SN"]);
        let cases = [
            (json!(["AR", "JP"]), "troika", "exactly three"),
            (json!(["AR", "JP", "SN", "FR"]), "troika", "exactly three"),
            (json!("AR|JP|SN"), "troika", "exactly three"),
            (json!(["AR", "KZ", "SN"]), "troika[1]", "state under review"),
            (json!(["AR", "JP", "ar"]), "troika[2]", "named twice"),
            (json!(["AR", "VA", "SN"]), "troika[1]", "member state"),
            (json!(["AR", "XX", "SN"]), "troika[1]", "ISO 3166-1"),
            (json!(["AR", 7, "SN"]), "troika[1]", "string"),
        ];
        for (troika, field, says) in cases {
            let e = intake_json("review_scheduled", with(scheduled(), "troika", troika))
                .then_invalid(field);
            assert!(e.message.contains(says), "{field}: {}", e.message);
        }
        // Rescheduling takes no troika.
        intake_json(
            "review_rescheduled",
            with(scheduled(), "troika", json!(["AR", "JP", "SN"])),
        )
        .then_invalid("troika");
    }

    #[test]
    fn outcome_adopted_needs_a_date_and_a_council_session() {
        let adopted = || json!({"country": "KZ", "session": 48, "adopted_on": "2025-07-03", "hrc_session": 59});
        let cmd = intake_json("outcome_adopted", adopted()).then_ok();
        let EventData::OutcomeAdopted(d) = cmd.data else {
            panic!("{:?}", cmd.data)
        };
        assert_eq!(
            (
                d.adopted_on.to_string().as_str(),
                d.hrc_session,
                d.recommendations
            ),
            ("2025-07-03T00:00:00Z", 59, None)
        );
        for field in ["adopted_on", "hrc_session"] {
            let mut p = adopted();
            p.as_object_mut().unwrap().remove(field);
            intake_json("outcome_adopted", p).then_err(ErrorCode::MissingField, Some(field));
        }
        for bad in [json!(0), json!(1000), json!(-1), json!("59"), json!(5.5)] {
            intake_json("outcome_adopted", with(adopted(), "hrc_session", bad))
                .then_invalid("hrc_session");
        }
        intake_json(
            "outcome_adopted",
            with(
                adopted(),
                "recommendations",
                json!({"total": 10, "supported": 8, "noted": 3}),
            ),
        )
        .then_invalid("recommendations");
        intake_json(
            "outcome_adopted",
            with(adopted(), "adopted_on", json!("July")),
        )
        .then_invalid("adopted_on");
    }

    #[test]
    fn a_retraction_names_an_event_and_says_why() {
        let retract = || {
            json!({"country": "KZ", "session": 48, "retracts": "0190f3a2-7b1c-7d4e-9a2b-3c4d5e6f7a8b",
                   "reason": "entered for the wrong state"})
        };
        let cmd = intake_json("event_retracted", retract()).then_ok();
        let EventData::EventRetracted(d) = cmd.data else {
            panic!("{:?}", cmd.data)
        };
        assert_eq!(
            d.retracts.to_string(),
            "0190f3a2-7b1c-7d4e-9a2b-3c4d5e6f7a8b"
        );
        for field in ["retracts", "reason"] {
            let mut p = retract();
            p.as_object_mut().unwrap().remove(field);
            intake_json("event_retracted", p).then_err(ErrorCode::MissingField, Some(field));
        }
        for bad in [
            json!("nope"),
            json!("00000000-0000-0000-0000-000000000000"),
            json!(42),
        ] {
            intake_json("event_retracted", with(retract(), "retracts", bad))
                .then_invalid("retracts");
        }
        intake_json(
            "event_retracted",
            with(retract(), "reason", json!("r".repeat(1001))),
        )
        .then_invalid("reason");
        intake_json("event_retracted", with(retract(), "reason", json!("  ")))
            .then_invalid("reason");
        intake_json(
            "event_retracted",
            with(retract(), "reason", json!("r".repeat(1000))),
        )
        .then_ok();
    }

    #[test]
    fn a_minimal_review_scheduled_gets_defaults() {
        let cmd = intake_json("review_scheduled", scheduled()).then_ok();
        assert_eq!(cmd.review_key().to_string(), "KZ.48");
        assert_eq!(
            (cmd.event_id, cmd.occurred_at, cmd.source.as_deref()),
            (None, None, None)
        );
        let EventData::ReviewScheduled(d) = &cmd.data else {
            panic!()
        };
        assert_eq!(
            (d.scheduled_for.to_string().as_str(), d.location.as_str()),
            ("2025-01-23T08:30:00Z", "Geneva")
        );
    }

    #[test]
    fn common_optional_fields_are_parsed_and_normalised() {
        let id = "0190F3A2-7B1C-7D4E-9A2B-3C4D5E6F7A8B";
        let mut p = with(scheduled(), "event_id", id.into());
        p["occurred_at"] = "2024-11-06T11:00:00+01:00".into();
        p["source"] = "  UPR Info  ".into();
        p["country"] = "kz".into();
        let cmd = intake_json("review_scheduled", p).then_ok();
        assert_eq!(cmd.country.as_str(), "KZ");
        assert_eq!(cmd.event_id.unwrap().to_string(), id.to_lowercase());
        assert_eq!(cmd.occurred_at.unwrap().to_string(), "2024-11-06T10:00:00Z");
        assert_eq!(cmd.source.as_deref(), Some("UPR Info"));
    }

    #[test]
    fn into_envelope_defaults_occurred_at_to_recorded_at() {
        let cmd = intake_json("review_scheduled", scheduled()).then_ok();
        let now = Timestamp::parse_rfc3339("2024-11-06T10:00:00.123Z").unwrap();
        let env = cmd.into_envelope(Uuid::nil(), now, None);
        assert_eq!(
            (env.occurred_at, env.recorded_at, env.schema),
            (now, now, 3)
        );
    }

    #[test]
    fn recorded_by_is_never_taken_from_the_payload() {
        let mut payload = scheduled();
        payload["recorded_by"] = "publisher".into();
        intake_json("review_scheduled", payload)
            .then_err(ErrorCode::InvalidField, Some("recorded_by"));
    }

    #[test]
    fn envelopes_of_schema_3_say_who_recorded_them_and_read_back() {
        let cmd = intake_json("review_scheduled", scheduled()).then_ok();
        let now = Timestamp::parse_rfc3339("2024-11-06T10:00:00.123Z").unwrap();
        let who = PartyName::parse("ngo-a").unwrap();
        let env = cmd.clone().into_envelope(Uuid::nil(), now, Some(who));
        let json = String::from_utf8(env.to_json()).unwrap();
        assert!(json.contains(r#""recorded_by":"ngo-a","source""#), "{json}");
        assert_eq!(Envelope::from_json(json.as_bytes()).unwrap(), env);
        let nobody = cmd.into_envelope(Uuid::nil(), now, None);
        let json = String::from_utf8(nobody.to_json()).unwrap();
        assert!(json.contains(r#""recorded_by":null"#), "{json}");
        assert_eq!(Envelope::from_json(json.as_bytes()).unwrap(), nobody);
    }

    #[test]
    fn every_type_accepts_its_full_example() {
        let full = [
            (
                "review_scheduled",
                with(scheduled(), "location", "New York".into()),
            ),
            (
                "review_rescheduled",
                with(scheduled(), "reason", "Liquidity crisis".into()),
            ),
            (
                "review_cancelled",
                json!({"country": "KZ", "session": 48, "reason": null}),
            ),
            (
                "review_held",
                json!({"country": "KZ", "session": 48, "held_on": "2025-01-23T08:30:00Z", "recommendations_received": 0}),
            ),
            (
                "side_event_held",
                json!({"country": "KZ", "session": 48, "title": "Civic space", "held_on": "2025-01-22",
                       "speakers": [{"name": "A. B."}, {"name": "C", "role": "NGO"}],
                       "participating_states": 12, "topics": ["press", "assembly"]}),
            ),
            (
                "report_published",
                json!({"country": "KZ", "session": 48, "published_on": "2025-03-01", "document_symbol": "A/HRC/59/10",
                       "recommendations": {"total": 300, "supported": 250, "noted": 50}}),
            ),
        ];
        for (ty, payload) in full {
            let cmd = intake_json(ty, payload).then_ok();
            assert_eq!(cmd.event_type().as_str(), ty);
        }
    }

    #[test]
    fn payloads_over_64_kib_are_too_large_before_anything_else() {
        let big = vec![b' '; MAX_PAYLOAD + 1];
        intake("no_such_type", &big).then_err(ErrorCode::TooLarge, None);
        let mut padded = serde_json::to_vec(&scheduled()).unwrap();
        padded.resize(MAX_PAYLOAD, b' ');
        intake("review_scheduled", padded).then_ok();
    }

    #[test]
    fn unknown_types_list_the_valid_ones() {
        let e = intake_json("review_postponed", scheduled()).then_err(ErrorCode::UnknownType, None);
        assert!(
            e.message.contains("review_postponed") && e.message.contains("report_published"),
            "{}",
            e.message
        );
        intake("", b"{}").then_err(ErrorCode::UnknownType, None);
    }

    #[test]
    fn malformed_documents_are_invalid_json() {
        for bad in [
            &b""[..],
            b"   ",
            b"\xff\xfe{}",
            b"[]",
            b"\"KZ\"",
            b"null",
            b"{\"country\": \"KZ\",}",
            b"{} {}",
            br#"{"country":"KZ","session":48,"session":999,"scheduled_for":"2025-01-23T08:30:00Z"}"#,
            br#"{"country":"KZ","session":48,"title":"t","held_on":"2025-01-22","speakers":[{"name":"a","name":"b"}]}"#,
        ] {
            intake("side_event_held", bad).then_err(ErrorCode::InvalidJson, None);
        }
        let deep = format!("{{\"topics\": {}{}}}", "[".repeat(40), "]".repeat(40));
        intake("side_event_held", deep).then_err(ErrorCode::InvalidJson, None);
    }

    #[test]
    fn unknown_fields_are_invalid_and_named() {
        let e = intake_json(
            "review_scheduled",
            with(scheduled(), "locaton", "Geneva".into()),
        )
        .then_invalid("locaton");
        assert!(
            e.message.contains("location"),
            "the message lists allowed fields: {}",
            e.message
        );
        intake_json("review_scheduled", with(scheduled(), "type", "x".into())).then_invalid("type");
        intake_json("review_cancelled", with(scheduled(), "reason", "x".into()))
            .then_invalid("scheduled_for");
        let p = with(
            side_event(),
            "speakers",
            json!([{"name": "a"}, {"name": "b", "title": "Dr"}]),
        );
        intake_json("side_event_held", p).then_invalid("speakers[1].title");
        let p = with(
            report(),
            "recommendations",
            json!({"total": 1, "supported": 1, "noted": 0, "rejected": 0}),
        );
        intake_json("report_published", p).then_invalid("recommendations.rejected");
    }

    #[test]
    fn missing_or_null_required_fields_are_missing_and_named() {
        let missing = ErrorCode::MissingField;
        intake("review_scheduled", b"{}").then_err(missing, Some("country"));
        intake_json("review_scheduled", json!({"country": "KZ"}))
            .then_err(missing, Some("session"));
        intake_json("review_scheduled", json!({"country": "KZ", "session": 48}))
            .then_err(missing, Some("scheduled_for"));
        intake_json(
            "review_scheduled",
            with(scheduled(), "country", Value::Null),
        )
        .then_err(missing, Some("country"));
        intake_json(
            "side_event_held",
            json!({"country": "KZ", "session": 48, "held_on": "2025-01-22"}),
        )
        .then_err(missing, Some("title"));
        intake_json("report_published", json!({"country": "KZ", "session": 48}))
            .then_err(missing, Some("published_on"));
        let p = with(side_event(), "speakers", json!([{"role": "NGO"}]));
        intake_json("side_event_held", p).then_err(missing, Some("speakers[0].name"));
        let p = with(
            report(),
            "recommendations",
            json!({"total": 1, "supported": 1}),
        );
        intake_json("report_published", p).then_err(missing, Some("recommendations.noted"));
    }

    #[test]
    fn unknown_fields_are_reported_before_missing_ones_and_missing_before_invalid() {
        intake_json("review_scheduled", json!({"session": 0, "bogus": 1})).then_invalid("bogus");
        intake_json("review_scheduled", json!({"country": "XK", "session": 0}))
            .then_err(ErrorCode::MissingField, Some("scheduled_for"));
    }

    #[test]
    fn null_optional_fields_mean_absent() {
        let mut p = side_event();
        for k in [
            "speakers",
            "topics",
            "participating_states",
            "event_id",
            "occurred_at",
            "source",
        ] {
            p[k] = Value::Null;
        }
        let cmd = intake_json("side_event_held", p).then_ok();
        let EventData::SideEventHeld(d) = cmd.data else {
            panic!()
        };
        assert!(d.speakers.is_empty() && d.topics.is_empty() && d.participating_states.is_none());
        let cmd = intake_json(
            "review_scheduled",
            with(scheduled(), "location", Value::Null),
        )
        .then_ok();
        let EventData::ReviewScheduled(d) = cmd.data else {
            panic!()
        };
        assert_eq!(d.location, "Geneva");
    }

    #[test]
    fn country_must_be_an_assigned_code() {
        for bad in [json!("XK"), json!("KAZ"), json!(""), json!(7)] {
            intake_json("review_scheduled", with(scheduled(), "country", bad))
                .then_invalid("country");
        }
    }

    #[test]
    fn country_must_be_a_un_member_state() {
        for (code, name) in [
            ("AQ", "Antarctica"),
            ("va", "Holy See"),
            ("PS", "Palestine, State of"),
            ("TW", "Taiwan, Province of China"),
        ] {
            let e = intake_json(
                "side_event_held",
                with(side_event(), "country", json!(code)),
            )
            .then_invalid("country");
            assert!(
                e.message
                    .contains("is not one, and the UPR reviews the 193 member states")
                    && e.message.contains(name),
                "{}",
                e.message
            );
        }
        for code in ["KZ", "bo", "TR", "CI", "NL", "FM"] {
            assert!(
                parse_intake(
                    "side_event_held",
                    with(side_event(), "country", json!(code))
                        .to_string()
                        .as_bytes()
                )
                .is_ok(),
                "{code}"
            );
        }
    }

    #[test]
    fn session_must_be_an_integer_from_1_to_999() {
        let e = intake_json(
            "review_scheduled",
            with(scheduled(), "session", 1000.into()),
        )
        .then_invalid("session");
        assert_eq!(
            e.message,
            "field \"session\" must be an integer from 1 to 999, got 1000"
        );
        for bad in [
            json!(0),
            json!(-1),
            json!(48.0),
            json!(48.5),
            json!("48"),
            json!(1e3),
            json!(u64::MAX),
        ] {
            intake_json("review_scheduled", with(scheduled(), "session", bad))
                .then_invalid("session");
        }
        intake_json("review_scheduled", with(scheduled(), "session", 999.into())).then_ok();
        intake_json("review_scheduled", with(scheduled(), "session", 1.into())).then_ok();
    }

    #[test]
    fn times_need_an_offset_and_a_real_date() {
        let field = |v: &str| with(scheduled(), "scheduled_for", v.into());
        intake_json("review_scheduled", field("2025-01-23T08:30:00")).then_invalid("scheduled_for");
        intake_json("review_scheduled", field("2025-02-30T08:30:00Z"))
            .then_invalid("scheduled_for");
        intake_json("review_scheduled", field("2025-01-23")).then_invalid("scheduled_for");
        intake_json(
            "review_scheduled",
            with(scheduled(), "scheduled_for", 1_737_620_000.into()),
        )
        .then_invalid("scheduled_for");
        intake_json(
            "review_scheduled",
            with(scheduled(), "occurred_at", "2024-11-06".into()),
        )
        .then_invalid("occurred_at");
        intake_json(
            "side_event_held",
            with(side_event(), "held_on", "2025-02-30".into()),
        )
        .then_invalid("held_on");
        intake_json(
            "report_published",
            with(report(), "published_on", "yesterday".into()),
        )
        .then_invalid("published_on");
        let held = json!({"country": "KZ", "session": 48, "held_on": "2025-01-23T08:30:00"});
        intake_json("review_held", held).then_invalid("held_on");
    }

    #[test]
    fn event_id_must_be_a_non_nil_uuid_string() {
        for bad in [
            json!("not-a-uuid"),
            json!(42),
            json!("00000000-0000-0000-0000-000000000000"),
        ] {
            intake_json("review_scheduled", with(scheduled(), "event_id", bad))
                .then_invalid("event_id");
        }
    }

    #[test]
    fn string_lengths_count_characters_and_blank_is_empty() {
        let title = |t: String| with(side_event(), "title", t.into());
        intake_json("side_event_held", title("é".repeat(300))).then_ok();
        let e = intake_json("side_event_held", title("a".repeat(301))).then_invalid("title");
        assert!(
            e.message.contains("300") && e.message.contains("301"),
            "{}",
            e.message
        );
        intake_json("side_event_held", title("   ".into())).then_invalid("title");
        intake_json("side_event_held", with(side_event(), "title", 5.into())).then_invalid("title");
        intake_json(
            "review_scheduled",
            with(scheduled(), "source", "s".repeat(201).into()),
        )
        .then_invalid("source");
        intake_json("review_scheduled", with(scheduled(), "location", "".into()))
            .then_invalid("location");
        intake_json(
            "review_scheduled",
            with(scheduled(), "location", "l".repeat(201).into()),
        )
        .then_invalid("location");
        intake_json(
            "review_rescheduled",
            with(scheduled(), "reason", "r".repeat(1001).into()),
        )
        .then_invalid("reason");
        intake_json(
            "review_rescheduled",
            with(scheduled(), "reason", "r".repeat(1000).into()),
        )
        .then_ok();
        intake_json(
            "report_published",
            with(report(), "document_symbol", "d".repeat(51).into()),
        )
        .then_invalid("document_symbol");
        intake_json(
            "report_published",
            with(report(), "document_symbol", " ".into()),
        )
        .then_invalid("document_symbol");
        for odd in [
            "A/HRC/59/10\"",
            "A\\HRC",
            "A/HRC/59/10\u{1}",
            "A/HRC/59/10é",
        ] {
            let e = intake_json(
                "report_published",
                with(report(), "document_symbol", odd.into()),
            )
            .then_invalid("document_symbol");
            assert!(e.message.contains("UN document symbol"), "{}", e.message);
        }
        intake_json(
            "report_published",
            with(
                report(),
                "document_symbol",
                "A/HRC/WG.6/48/KAZ/1 (Add.1)*".into(),
            ),
        )
        .then_ok();
    }

    #[test]
    fn speakers_and_topics_are_checked_item_by_item() {
        let sp = |v: Value| with(side_event(), "speakers", v);
        intake_json("side_event_held", sp(json!({"name": "a"}))).then_invalid("speakers");
        intake_json("side_event_held", sp(json!(["a"]))).then_invalid("speakers[0]");
        intake_json("side_event_held", sp(json!([{"name": "a"}, {"name": " "}])))
            .then_invalid("speakers[1].name");
        intake_json(
            "side_event_held",
            sp(json!([{"name": "a", "role": "r".repeat(201)}])),
        )
        .then_invalid("speakers[0].role");
        intake_json("side_event_held", sp(json!([{"name": "n".repeat(201)}])))
            .then_invalid("speakers[0].name");
        intake_json(
            "side_event_held",
            sp(Value::Array(vec![json!({"name": "a"}); 101])),
        )
        .then_invalid("speakers");
        intake_json(
            "side_event_held",
            sp(Value::Array(vec![json!({"name": "a"}); 100])),
        )
        .then_ok();
        let tp = |v: Value| with(side_event(), "topics", v);
        intake_json("side_event_held", tp(json!(["ok", ""]))).then_invalid("topics[1]");
        intake_json("side_event_held", tp(json!(["t".repeat(101)]))).then_invalid("topics[0]");
        intake_json("side_event_held", tp(json!([1]))).then_invalid("topics[0]");
        intake_json("side_event_held", tp(Value::Array(vec![json!("t"); 51])))
            .then_invalid("topics");
        intake_json("side_event_held", tp(Value::Array(vec![json!("t"); 50]))).then_ok();
    }

    #[test]
    fn counts_are_integers_from_0_to_10000() {
        for bad in [json!(-1), json!(1.5), json!("3"), json!(10_001)] {
            intake_json(
                "side_event_held",
                with(side_event(), "participating_states", bad.clone()),
            )
            .then_invalid("participating_states");
            let held = json!({"country": "KZ", "session": 48, "recommendations_received": bad});
            intake_json("review_held", held).then_invalid("recommendations_received");
        }
        intake_json(
            "side_event_held",
            with(side_event(), "participating_states", 10_000.into()),
        )
        .then_ok();
    }

    #[test]
    fn recommendations_must_add_up() {
        let rec = |v: Value| with(report(), "recommendations", v);
        let e = intake_json(
            "report_published",
            rec(json!({"total": 10, "supported": 6, "noted": 5})),
        )
        .then_invalid("recommendations");
        assert!(e.message.contains("6 + 5 > 10"), "{}", e.message);
        intake_json(
            "report_published",
            rec(json!({"total": 10, "supported": 6, "noted": 4})),
        )
        .then_ok();
        intake_json(
            "report_published",
            rec(json!({"total": 10, "supported": -1, "noted": 4})),
        )
        .then_invalid("recommendations.supported");
        intake_json(
            "report_published",
            rec(json!({"total": "10", "supported": 1, "noted": 4})),
        )
        .then_invalid("recommendations.total");
        intake_json("report_published", rec(json!([10, 6, 4]))).then_invalid("recommendations");
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn never_panics_on_arbitrary_bytes(ty in "[a-z_]{0,20}", bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
                let _ = parse_intake(&ty, &bytes);
            }

            #[test]
            fn never_panics_on_json_shaped_text(
                ty in prop::sample::select(EventType::ALL.map(|t| t.as_str()).to_vec()),
                body in r#"\{("(country|session|title|held_on|speakers|topics|recommendations|total|name|x)": ?(-?[0-9]{1,20}(\.[0-9])?|"[A-Za-z0-9:\- ]{0,30}"|null|true|\[|\{|\]|\}),? ?){0,12}\}?"#,
            ) {
                let _ = parse_intake(ty, body.as_bytes());
            }
        }
    }
}
