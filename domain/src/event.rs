//! The facts we store: eight past-tense event types, their data, and the
//! envelope (id, country, session, times) that wraps them in `UPR_EVENTS`.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;
use uuid::Uuid;

use super::bounds::{MAX_COUNT, MAX_SPEAKERS, MAX_TOPICS, document_symbol_pattern, max_chars};
use super::country::Country;
use super::json::parse_strict;
use super::party::PartyName;
use super::time::Timestamp;

/// The envelope schema version this code writes (contract v3: with
/// `recorded_by`). It reads
/// this one and every earlier one ([`SCHEMAS_READ`]); a stored event with any
/// other version is reported as malformed rather than guessed at.
pub const SCHEMA: u32 = 3;

/// The first schema version whose envelopes carry `recorded_by`.
pub const SCHEMA_RECORDED_BY: u32 = 3;

/// The schema versions consumers read: version 1 events stay valid.
pub const SCHEMAS_READ: std::ops::RangeInclusive<u32> = 1..=SCHEMA;

/// What happened. The wire name (`review_scheduled`, ...) appears in intake
/// subjects, event subjects, envelopes and read-model histories.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    /// A review was put on a session's calendar.
    ReviewScheduled,
    /// A scheduled review moved to another date.
    ReviewRescheduled,
    /// A scheduled review was called off.
    ReviewCancelled,
    /// The Working Group held the review.
    ReviewHeld,
    /// A delegation held a side event around the review.
    SideEventHeld,
    /// The outcome report of a held review was published.
    ReportPublished,
    /// The Human Rights Council adopted the review's outcome in plenary.
    OutcomeAdopted,
    /// A correction: an earlier event of the review is taken back.
    EventRetracted,
}

impl EventType {
    /// Every type, in lifecycle order; for listing valid types in errors.
    pub const ALL: [EventType; 8] = [
        Self::ReviewScheduled,
        Self::ReviewRescheduled,
        Self::ReviewCancelled,
        Self::ReviewHeld,
        Self::SideEventHeld,
        Self::ReportPublished,
        Self::OutcomeAdopted,
        Self::EventRetracted,
    ];

    /// The wire name, e.g. `"review_scheduled"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::ReviewScheduled => "review_scheduled",
            Self::ReviewRescheduled => "review_rescheduled",
            Self::ReviewCancelled => "review_cancelled",
            Self::ReviewHeld => "review_held",
            Self::SideEventHeld => "side_event_held",
            Self::ReportPublished => "report_published",
            Self::OutcomeAdopted => "outcome_adopted",
            Self::EventRetracted => "event_retracted",
        }
    }

    /// The type with this exact wire name (case-sensitive, as subjects are).
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == name)
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A UPR Working Group session number, 1..=999.
///
/// Serialized as a JSON number; `Display` gives the plain decimal used in
/// subjects and KV keys (`48`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Session(u16);

/// Why a number or text is not a [`Session`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("must be an integer from 1 to 999, got {0}")]
pub struct SessionError(pub String);

impl Session {
    /// The largest session number accepted.
    pub const MAX: u16 = 999;

    /// # Errors
    /// [`SessionError`] outside 1..=999.
    pub fn new(n: u64) -> Result<Self, SessionError> {
        match u16::try_from(n) {
            Ok(s @ 1..=Self::MAX) => Ok(Self(s)),
            _ => Err(SessionError(n.to_string())),
        }
    }

    /// Parses the canonical decimal form used in subjects and keys (`48`,
    /// not `048` or `+48`), so one session has exactly one key.
    ///
    /// # Errors
    /// [`SessionError`] for anything else.
    pub fn parse(text: &str) -> Result<Self, SessionError> {
        let canonical =
            !text.is_empty() && !text.starts_with('0') && text.bytes().all(|b| b.is_ascii_digit());
        text.parse::<u64>()
            .ok()
            .filter(|_| canonical)
            .ok_or_else(|| SessionError(format!("{text:?}")))
            .and_then(Self::new)
    }

    /// The number.
    pub fn get(&self) -> u16 {
        self.0
    }

    /// The UPR cycle the session belongs to (contract v2): sessions 1-12
    /// form the first cycle; from session 13 on each cycle has 14 sessions
    /// (13-26 the second, 27-40 the third, 41-54 the fourth, ...).
    pub fn cycle(&self) -> u16 {
        match self.0 {
            1..=12 => 1,
            n => (n - 13) / 14 + 2,
        }
    }
}

impl fmt::Display for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl Serialize for Session {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u16(self.0)
    }
}

impl<'de> Deserialize<'de> for Session {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::new(u64::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// Identifies a review: one country at one session.
///
/// Orders by country, then session; `Display` is the KV key, `KZ.48`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ReviewKey {
    /// The state under review.
    pub country: Country,
    /// The Working Group session.
    pub session: Session,
}

impl ReviewKey {
    /// Parses the `KZ.48` form (as found in KV keys and subjects).
    pub fn parse(text: &str) -> Option<Self> {
        let (c, s) = text.split_once('.')?;
        Some(Self {
            country: Country::parse(c).ok()?,
            session: Session::parse(s).ok()?,
        })
    }
}

impl fmt::Display for ReviewKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.country, self.session)
    }
}

/// `review_scheduled` data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReviewScheduled {
    /// When the review starts.
    pub scheduled_for: Timestamp,
    /// Where; `"Geneva"` unless given, as nearly all reviews are there.
    #[serde(default = "default_location")]
    #[schemars(length(min = 1, max = max_chars::LOCATION))]
    pub location: String,
    /// The three member states facilitating the review (contract v2), if
    /// known. Left out of the JSON when absent, so version 1 events keep
    /// their exact bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 3, max = 3), extend("uniqueItems" = true))]
    pub troika: Option<Vec<Country>>,
}

/// The location used when `review_scheduled` names none.
pub const DEFAULT_LOCATION: &str = "Geneva";

fn default_location() -> String {
    DEFAULT_LOCATION.to_owned()
}

/// `review_rescheduled` data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReviewRescheduled {
    /// The new start time.
    pub scheduled_for: Timestamp,
    /// Why it moved, if known.
    #[serde(default)]
    #[schemars(length(min = 1, max = max_chars::REASON))]
    pub reason: Option<String>,
}

/// `review_cancelled` data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReviewCancelled {
    /// Why it was cancelled, if known.
    #[serde(default)]
    #[schemars(length(min = 1, max = max_chars::REASON))]
    pub reason: Option<String>,
}

/// `review_held` data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReviewHeld {
    /// When it was held, if reported.
    #[serde(default)]
    pub held_on: Option<Timestamp>,
    /// How many recommendations the state received, if reported.
    #[serde(default)]
    #[schemars(range(max = MAX_COUNT))]
    pub recommendations_received: Option<u32>,
}

/// One speaker at a side event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Speaker {
    /// The speaker's name.
    #[schemars(length(min = 1, max = max_chars::SPEAKER))]
    pub name: String,
    /// Their role or affiliation, if given.
    #[serde(default)]
    #[schemars(length(min = 1, max = max_chars::SPEAKER))]
    pub role: Option<String>,
}

/// `side_event_held` data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SideEventHeld {
    /// The event's title.
    #[schemars(length(min = 1, max = max_chars::TITLE))]
    pub title: String,
    /// When it was held.
    pub held_on: Timestamp,
    /// Who spoke; empty when not reported.
    #[serde(default)]
    #[schemars(length(max = MAX_SPEAKERS))]
    pub speakers: Vec<Speaker>,
    /// How many states took part, if reported.
    #[serde(default)]
    #[schemars(range(max = MAX_COUNT))]
    pub participating_states: Option<u32>,
    /// Subjects covered; empty when not reported.
    #[serde(default)]
    #[schemars(length(max = MAX_TOPICS), inner(length(min = 1, max = max_chars::TOPIC)))]
    pub topics: Vec<String>,
}

/// Recommendation counts of an outcome report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Recommendations {
    /// All recommendations made.
    #[schemars(range(max = MAX_COUNT))]
    pub total: u32,
    /// Those the state supported.
    #[schemars(range(max = MAX_COUNT))]
    pub supported: u32,
    /// Those the state noted; `supported + noted <= total`.
    #[schemars(range(max = MAX_COUNT))]
    pub noted: u32,
}

/// `report_published` data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReportPublished {
    /// When it was published.
    pub published_on: Timestamp,
    /// The UN document symbol, e.g. `A/HRC/59/10`, if known.
    #[serde(default)]
    #[schemars(
        length(min = 1, max = max_chars::DOCUMENT_SYMBOL),
        pattern(document_symbol_pattern())
    )]
    pub document_symbol: Option<String>,
    /// The recommendation counts, if known.
    #[serde(default)]
    pub recommendations: Option<Recommendations>,
}

/// `outcome_adopted` data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OutcomeAdopted {
    /// When the Council adopted the outcome.
    pub adopted_on: Timestamp,
    /// The Human Rights Council session that adopted it, 1..=999.
    #[schemars(range(min = 1, max = 999))]
    pub hrc_session: u16,
    /// The state's final positions on the recommendations, if known.
    #[serde(default)]
    pub recommendations: Option<Recommendations>,
}

/// `event_retracted` data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EventRetracted {
    /// The id of the event of this review that is taken back.
    pub retracts: Uuid,
    /// Why.
    #[schemars(length(min = 1, max = max_chars::REASON))]
    pub reason: String,
}

/// The data of one event; the variant is the event's type.
///
/// Serialized as just the variant's fields (the type sits in the envelope).
/// Absent optional scalars and objects are written as `null` and absent
/// lists as `[]`, so every stored event of a type has the same keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventData {
    /// See [`ReviewScheduled`].
    ReviewScheduled(ReviewScheduled),
    /// See [`ReviewRescheduled`].
    ReviewRescheduled(ReviewRescheduled),
    /// See [`ReviewCancelled`].
    ReviewCancelled(ReviewCancelled),
    /// See [`ReviewHeld`].
    ReviewHeld(ReviewHeld),
    /// See [`SideEventHeld`].
    SideEventHeld(SideEventHeld),
    /// See [`ReportPublished`].
    ReportPublished(ReportPublished),
    /// See [`OutcomeAdopted`].
    OutcomeAdopted(OutcomeAdopted),
    /// See [`EventRetracted`].
    EventRetracted(EventRetracted),
}

impl EventData {
    /// The type this data belongs to.
    pub fn event_type(&self) -> EventType {
        match self {
            Self::ReviewScheduled(_) => EventType::ReviewScheduled,
            Self::ReviewRescheduled(_) => EventType::ReviewRescheduled,
            Self::ReviewCancelled(_) => EventType::ReviewCancelled,
            Self::ReviewHeld(_) => EventType::ReviewHeld,
            Self::SideEventHeld(_) => EventType::SideEventHeld,
            Self::ReportPublished(_) => EventType::ReportPublished,
            Self::OutcomeAdopted(_) => EventType::OutcomeAdopted,
            Self::EventRetracted(_) => EventType::EventRetracted,
        }
    }

    /// Decodes `data` for a known type (strict: unknown keys are errors).
    ///
    /// # Errors
    /// The `serde_json` error when the value does not fit the type.
    pub fn from_value(ty: EventType, data: Value) -> Result<Self, serde_json::Error> {
        use serde_json::from_value as v;
        Ok(match ty {
            EventType::ReviewScheduled => Self::ReviewScheduled(v(data)?),
            EventType::ReviewRescheduled => Self::ReviewRescheduled(v(data)?),
            EventType::ReviewCancelled => Self::ReviewCancelled(v(data)?),
            EventType::ReviewHeld => Self::ReviewHeld(v(data)?),
            EventType::SideEventHeld => Self::SideEventHeld(v(data)?),
            EventType::ReportPublished => Self::ReportPublished(v(data)?),
            EventType::OutcomeAdopted => Self::OutcomeAdopted(v(data)?),
            EventType::EventRetracted => Self::EventRetracted(v(data)?),
        })
    }
}

impl Serialize for EventData {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::ReviewScheduled(d) => d.serialize(s),
            Self::ReviewRescheduled(d) => d.serialize(s),
            Self::ReviewCancelled(d) => d.serialize(s),
            Self::ReviewHeld(d) => d.serialize(s),
            Self::SideEventHeld(d) => d.serialize(s),
            Self::ReportPublished(d) => d.serialize(s),
            Self::OutcomeAdopted(d) => d.serialize(s),
            Self::EventRetracted(d) => d.serialize(s),
        }
    }
}

/// One stored event: what `UPR_EVENTS` holds, as JSON
/// `{"id","type","schema","country","session","occurred_at","recorded_at","recorded_by","source","data"}`
/// (`recorded_by` from schema 3 on; earlier envelopes have no such key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The event id; also the `Nats-Msg-Id`, which makes retries idempotent.
    pub id: Uuid,
    /// The type-specific facts; its variant is the event type.
    pub data: EventData,
    /// The envelope version; always [`SCHEMA`] for envelopes this code builds.
    pub schema: u32,
    /// The state under review.
    pub country: Country,
    /// The Working Group session.
    pub session: Session,
    /// When it happened in the world.
    pub occurred_at: Timestamp,
    /// When the ingest service stored it.
    pub recorded_at: Timestamp,
    /// The party whose connection carried it, as the server authenticated
    /// it (schema 3); `None` without users, and for schema 1 and 2.
    pub recorded_by: Option<PartyName>,
    /// Who reported it, if given.
    pub source: Option<String>,
}

/// A message in the event stream that is not a valid envelope; consumers log,
/// count and skip it.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    /// Not strict JSON, or not the envelope's shape and values.
    #[error("malformed event envelope: {0}")]
    Json(#[from] serde_json::Error),
    /// A valid envelope stored on another subject than its own.
    #[error("malformed event envelope: the envelope belongs on {expected}, not {subject}")]
    WrongSubject {
        /// The subject the envelope says it belongs on.
        expected: String,
        /// The subject it was found on.
        subject: String,
    },
}

/// Borrowed mirror of the wire shape: field order here is key order there.
#[derive(Serialize)]
struct WireOut<'a> {
    id: &'a Uuid,
    #[serde(rename = "type")]
    ty: EventType,
    schema: u32,
    country: Country,
    session: Session,
    occurred_at: Timestamp,
    recorded_at: Timestamp,
    /// Absent before schema 3, so an old envelope writes back as it was read.
    #[serde(skip_serializing_if = "Option::is_none")]
    recorded_by: Option<&'a Option<PartyName>>,
    source: &'a Option<String>,
    data: &'a EventData,
}

impl Envelope {
    /// The event type (from the data variant, so the two cannot disagree).
    pub fn event_type(&self) -> EventType {
        self.data.event_type()
    }

    /// The review this event belongs to.
    pub fn review_key(&self) -> ReviewKey {
        ReviewKey {
            country: self.country,
            session: self.session,
        }
    }

    /// The stored JSON bytes, keys in contract order.
    ///
    /// # Panics
    /// Never: an envelope holds only strings, integers and structs, which serialize.
    pub fn to_json(&self) -> Vec<u8> {
        // Keys are strings and there are no floats or maps with non-string
        // keys.
        serde_json::to_vec(self).expect("an envelope serializes into a Vec")
    }

    /// Decodes anything found in the stream; never panics.
    ///
    /// Strict: duplicated or unknown keys, an unknown `type`, a `schema`
    /// outside [`SCHEMAS_READ`], an invalid country, session or time are all
    /// errors, so a consumer never folds a half-understood event.
    ///
    /// # Errors
    /// [`EnvelopeError`] describing the first problem.
    pub fn from_json(bytes: &[u8]) -> Result<Self, EnvelopeError> {
        let value = parse_strict(bytes)?;
        Ok(serde_json::from_value(value)?)
    }
}

impl Serialize for Envelope {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        WireOut {
            id: &self.id,
            ty: self.event_type(),
            schema: self.schema,
            country: self.country,
            session: self.session,
            occurred_at: self.occurred_at,
            recorded_at: self.recorded_at,
            recorded_by: (self.schema >= SCHEMA_RECORDED_BY).then_some(&self.recorded_by),
            source: &self.source,
            data: &self.data,
        }
        .serialize(s)
    }
}

/// The envelope's keys; any other key is refused (as `deny_unknown_fields`).
#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "snake_case")]
enum Field {
    Id,
    #[serde(rename = "type")]
    Type,
    Schema,
    Country,
    Session,
    OccurredAt,
    RecordedAt,
    RecordedBy,
    Source,
    Data,
}

/// Decodes `data` straight into the type's struct once `type` is known.
struct DataOf(EventType);

impl<'de> serde::de::DeserializeSeed<'de> for DataOf {
    type Value = EventData;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<EventData, D::Error> {
        Ok(match self.0 {
            EventType::ReviewScheduled => EventData::ReviewScheduled(Deserialize::deserialize(d)?),
            EventType::ReviewRescheduled => {
                EventData::ReviewRescheduled(Deserialize::deserialize(d)?)
            }
            EventType::ReviewCancelled => EventData::ReviewCancelled(Deserialize::deserialize(d)?),
            EventType::ReviewHeld => EventData::ReviewHeld(Deserialize::deserialize(d)?),
            EventType::SideEventHeld => EventData::SideEventHeld(Deserialize::deserialize(d)?),
            EventType::ReportPublished => EventData::ReportPublished(Deserialize::deserialize(d)?),
            EventType::OutcomeAdopted => EventData::OutcomeAdopted(Deserialize::deserialize(d)?),
            EventType::EventRetracted => EventData::EventRetracted(Deserialize::deserialize(d)?),
        })
    }
}

/// One strict pass over an envelope: every key at most once (also inside
/// `data`, whose structs refuse duplicated and unknown keys), no unknown
/// key, `data` decoded into its type's struct as it is read. Stored
/// envelopes put `type` before `data` (`Envelope::to_json`); one that does
/// not has its `data` read as a strict JSON tree first and decoded after.
struct EnvelopeVisitor;

impl<'de> serde::de::Visitor<'de> for EnvelopeVisitor {
    type Value = Envelope;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an event envelope")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Envelope, A::Error> {
        use serde::de::Error;
        fn once<T, E: Error>(slot: &mut Option<T>, name: &'static str, value: T) -> Result<(), E> {
            if slot.replace(value).is_some() {
                return Err(E::duplicate_field(name));
            }
            Ok(())
        }
        fn data_error<E: Error>(ty: EventType, e: impl fmt::Display) -> E {
            E::custom(format_args!("data of {ty}: {e}"))
        }
        let (mut id, mut ty, mut schema, mut country, mut session) = (None, None, None, None, None);
        let (mut occurred_at, mut recorded_at, mut source) = (None, None, None);
        let mut recorded_by = None;
        let (mut data, mut early_data) = (None, None);
        while let Some(key) = map.next_key::<Field>()? {
            match key {
                Field::Id => once(&mut id, "id", map.next_value()?)?,
                Field::Type => {
                    let name: std::borrow::Cow<'de, str> = map.next_value()?;
                    let parsed = EventType::parse(&name).ok_or_else(|| {
                        A::Error::custom(format_args!("unknown event type {name:?}"))
                    })?;
                    once(&mut ty, "type", parsed)?;
                }
                Field::Schema => once(&mut schema, "schema", map.next_value()?)?,
                Field::Country => once(&mut country, "country", map.next_value()?)?,
                Field::Session => once(&mut session, "session", map.next_value()?)?,
                Field::OccurredAt => once(&mut occurred_at, "occurred_at", map.next_value()?)?,
                Field::RecordedAt => once(&mut recorded_at, "recorded_at", map.next_value()?)?,
                Field::RecordedBy => {
                    once::<Option<PartyName>, _>(
                        &mut recorded_by,
                        "recorded_by",
                        map.next_value()?,
                    )?;
                }
                Field::Source => {
                    once::<Option<String>, _>(&mut source, "source", map.next_value()?)?;
                }
                Field::Data => {
                    if data.is_some() || early_data.is_some() {
                        return Err(A::Error::duplicate_field("data"));
                    }
                    match ty {
                        Some(t) => {
                            data = Some(
                                map.next_value_seed(DataOf(t))
                                    .map_err(|e| data_error(t, e))?,
                            );
                        }
                        None => early_data = Some(map.next_value_seed(super::json::strict())?),
                    }
                }
            }
        }
        let ty = ty.ok_or_else(|| A::Error::missing_field("type"))?;
        let schema = schema.ok_or_else(|| A::Error::missing_field("schema"))?;
        if !SCHEMAS_READ.contains(&schema) {
            return Err(A::Error::custom(format_args!(
                "unsupported schema {schema}, expected 1 to {SCHEMA}"
            )));
        }
        // Schema 3 says who recorded it (null included); earlier schemas
        // cannot, and read as null.
        let recorded_by = match (schema >= SCHEMA_RECORDED_BY, recorded_by) {
            (true, Some(who)) => who,
            (true, None) => return Err(A::Error::missing_field("recorded_by")),
            (false, None) => None,
            (false, Some(_)) => {
                return Err(A::Error::custom(format_args!(
                    "recorded_by is not a field of schema {schema}"
                )));
            }
        };
        let data = match (data, early_data) {
            (Some(d), _) => d,
            (None, Some(value)) => {
                EventData::from_value(ty, value).map_err(|e| data_error(ty, e))?
            }
            (None, None) => return Err(A::Error::missing_field("data")),
        };
        Ok(Envelope {
            id: id.ok_or_else(|| A::Error::missing_field("id"))?,
            data,
            schema,
            country: country.ok_or_else(|| A::Error::missing_field("country"))?,
            session: session.ok_or_else(|| A::Error::missing_field("session"))?,
            occurred_at: occurred_at.ok_or_else(|| A::Error::missing_field("occurred_at"))?,
            recorded_at: recorded_at.ok_or_else(|| A::Error::missing_field("recorded_at"))?,
            recorded_by,
            source: source.flatten(),
        })
    }
}

impl<'de> Deserialize<'de> for Envelope {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        const FIELDS: &[&str] = &[
            "id",
            "type",
            "schema",
            "country",
            "session",
            "occurred_at",
            "recorded_at",
            "recorded_by",
            "source",
            "data",
        ];
        d.deserialize_struct("Envelope", FIELDS, EnvelopeVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONTRACT_EXAMPLE: &str = r#"{"id": "0190f3a2-7b1c-7d4e-9a2b-3c4d5e6f7a8b", "type": "review_scheduled", "schema": 1,
 "country": "KZ", "session": 48,
 "occurred_at": "2024-11-06T10:00:00Z", "recorded_at": "2024-11-06T10:00:00.123Z",
 "source": null,
 "data": {"scheduled_for": "2025-01-23T08:30:00Z", "location": "Geneva"}}"#;

    fn minified(s: &str) -> String {
        serde_json::to_string(&serde_json::from_str::<Value>(s).unwrap()).unwrap()
    }

    #[test]
    fn cycles_follow_the_contract_table() {
        let cycle = |n| Session::new(n).unwrap().cycle();
        let table = [
            (1, 1),
            (12, 1),
            (13, 2),
            (26, 2),
            (27, 3),
            (40, 3),
            (41, 4),
            (48, 4),
        ];
        for (session, expected) in table {
            assert_eq!(cycle(session), expected, "session {session}");
        }
        assert_eq!((cycle(54), cycle(55), cycle(68), cycle(69)), (4, 5, 5, 6));
        assert_eq!(cycle(999), (999 - 13) / 14 + 2);
    }

    #[test]
    fn the_contract_example_round_trips_byte_for_byte_in_key_order() {
        let env = Envelope::from_json(CONTRACT_EXAMPLE.as_bytes()).unwrap();
        assert_eq!(env.event_type(), EventType::ReviewScheduled);
        assert_eq!(env.review_key().to_string(), "KZ.48");
        assert_eq!(
            String::from_utf8(env.to_json()).unwrap(),
            minified(CONTRACT_EXAMPLE)
        );
        assert_eq!(Envelope::from_json(&env.to_json()).unwrap(), env);
    }

    fn example_with(edit: impl FnOnce(&mut serde_json::Map<String, Value>)) -> Vec<u8> {
        let mut v: Value = serde_json::from_str(CONTRACT_EXAMPLE).unwrap();
        edit(v.as_object_mut().unwrap());
        serde_json::to_vec(&v).unwrap()
    }

    #[test]
    fn every_type_round_trips_with_null_for_absent_options_and_empty_lists() {
        let t = Timestamp::parse_rfc3339("2025-01-23T08:30:00Z").unwrap();
        let datas = [
            EventData::ReviewRescheduled(ReviewRescheduled {
                scheduled_for: t,
                reason: None,
            }),
            EventData::ReviewCancelled(ReviewCancelled {
                reason: Some("x".into()),
            }),
            EventData::ReviewHeld(ReviewHeld {
                held_on: None,
                recommendations_received: Some(3),
            }),
            EventData::SideEventHeld(SideEventHeld {
                title: "T".into(),
                held_on: t,
                speakers: vec![Speaker {
                    name: "A".into(),
                    role: None,
                }],
                participating_states: None,
                topics: vec![],
            }),
            EventData::ReportPublished(ReportPublished {
                published_on: t,
                document_symbol: None,
                recommendations: Some(Recommendations {
                    total: 3,
                    supported: 2,
                    noted: 1,
                }),
            }),
        ];
        let expected_data = [
            r#"{"scheduled_for":"2025-01-23T08:30:00Z","reason":null}"#,
            r#"{"reason":"x"}"#,
            r#"{"held_on":null,"recommendations_received":3}"#,
            r#"{"title":"T","held_on":"2025-01-23T08:30:00Z","speakers":[{"name":"A","role":null}],"participating_states":null,"topics":[]}"#,
            r#"{"published_on":"2025-01-23T08:30:00Z","document_symbol":null,"recommendations":{"total":3,"supported":2,"noted":1}}"#,
        ];
        let mut env = Envelope::from_json(CONTRACT_EXAMPLE.as_bytes()).unwrap();
        for (data, expected) in datas.into_iter().zip(expected_data) {
            env.data = data;
            let json = String::from_utf8(env.to_json()).unwrap();
            assert!(json.ends_with(&format!(r#""data":{expected}}}"#)), "{json}");
            assert_eq!(Envelope::from_json(json.as_bytes()).unwrap(), env);
        }
    }

    #[test]
    fn malformed_envelopes_are_errors_not_panics() {
        let cases: Vec<Vec<u8>> = vec![
            b"".to_vec(),
            b"[]".to_vec(),
            b"\xff".to_vec(),
            example_with(|m| {
                m.insert("schema".into(), 4.into());
            }),
            example_with(|m| {
                m.insert("recorded_by".into(), "publisher".into());
            }),
            example_with(|m| {
                m.insert("schema".into(), 3.into());
            }),
            example_with(|m| {
                m.insert("schema".into(), 3.into());
                m.insert("recorded_by".into(), "Not A Name".into());
            }),
            example_with(|m| {
                m.insert("type".into(), "review_postponed".into());
            }),
            example_with(|m| {
                m.insert("extra".into(), 1.into());
            }),
            example_with(|m| {
                m.insert("country".into(), "XK".into());
            }),
            example_with(|m| {
                m.insert("session".into(), 0.into());
            }),
            example_with(|m| {
                m.remove("id");
            }),
            example_with(|m| {
                m["data"]["bogus"] = 1.into();
            }),
            example_with(|m| {
                m["data"] = Value::Null;
            }),
            CONTRACT_EXAMPLE
                .replace(r#""schema": 1,"#, r#""schema": 1, "schema": 1,"#)
                .into_bytes(),
        ];
        for bytes in cases {
            assert!(
                Envelope::from_json(&bytes).is_err(),
                "{}",
                String::from_utf8_lossy(&bytes)
            );
        }
    }

    #[test]
    fn event_types_parse_their_wire_names_only() {
        for t in EventType::ALL {
            assert_eq!(EventType::parse(t.as_str()), Some(t));
            assert_eq!(serde_json::to_string(&t).unwrap(), format!("\"{t}\""));
        }
        assert_eq!(EventType::parse("Review_Scheduled"), None);
    }

    #[test]
    fn sessions_are_1_to_999_in_canonical_form() {
        assert!(Session::new(0).is_err());
        assert!(Session::new(1000).is_err());
        assert_eq!(Session::new(999).unwrap().get(), 999);
        assert_eq!(Session::parse("48").unwrap().to_string(), "48");
        for bad in ["048", "+48", "", "4 8", "0"] {
            assert!(Session::parse(bad).is_err(), "{bad:?}");
        }
        assert!(serde_json::from_str::<Session>("48.0").is_err());
        assert_eq!(ReviewKey::parse("kz.48").unwrap().to_string(), "KZ.48");
        assert_eq!(ReviewKey::parse("KZ.048"), None);
    }
}
