//! The kinds of value an intake field holds, one type each: a kind owns its
//! parsing (with its limit) and the JSON Schema fragment that states the
//! same rule, so the intake parser ([`crate::intake`]) and the generated
//! intake schemas cannot disagree. A field is a name with a kind, required
//! ([`Required`]) or not ([`Optional`]); the intake table lists the fields
//! of each event type once, and both the parser and the schema generator
//! read it.
//!
//! Strings are taken trimmed; a string that is empty after trimming is
//! invalid even where the field is optional (send `null` or omit it
//! instead), so a blank value is never mistaken for information.

use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::bounds::{
    DOCUMENT_SYMBOL_CHARS, MAX_COUNT, MAX_SPEAKERS, MAX_TOPICS, document_symbol_class, max_chars,
};
use super::country::Country;
use super::error::RejectError;
use super::event::{Recommendations, Session, Speaker};
use super::json_schema::{
    codes_pattern, def, nullable, session_number, strict_object, white_space_class,
};
use super::member_states::MEMBER_STATES;
use super::time::Timestamp;

/// `$defs` of the schema being built: fragments used more than once are
/// written there once and referenced.
pub type Defs = Map<String, Value>;

/// A kind of intake value, as the JSON Schema of intake describes it.
pub trait FieldKind {
    /// The schema of a value of this kind (never `null`), adding what it
    /// references to `defs`.
    fn schema(&self, defs: &mut Defs) -> Value;
}

/// A kind whose value is parsed on its own, without other fields.
pub trait Parse: FieldKind {
    /// What a valid value becomes.
    type Value;

    /// Parses the value of the field at path `at` (for error messages:
    /// `speakers[1].name`).
    ///
    /// # Errors
    /// An `invalid_field` [`RejectError`] naming `at`.
    fn parse(&self, value: &Value, at: &str) -> Result<Self::Value, RejectError>;
}

/// A field that must be present and not `null`.
#[derive(Debug, Clone, Copy)]
pub struct Required<K>(pub &'static str, pub K);

/// A field that may be left out; `null` is the same as left out.
#[derive(Debug, Clone, Copy)]
pub struct Optional<K>(pub &'static str, pub K);

/// A field of an intake object, whatever its kind: what the presence checks
/// and the schema generator need.
pub trait IntakeField {
    /// Its name in the JSON object.
    fn name(&self) -> &'static str;
    /// Whether it must be present and not `null`.
    fn required(&self) -> bool;
    /// The schema of its value when present (not `null`).
    fn schema(&self, defs: &mut Defs) -> Value;
}

impl<K: FieldKind> IntakeField for Required<K> {
    fn name(&self) -> &'static str {
        self.0
    }
    fn required(&self) -> bool {
        true
    }
    fn schema(&self, defs: &mut Defs) -> Value {
        self.1.schema(defs)
    }
}

impl<K: FieldKind> IntakeField for Optional<K> {
    fn name(&self) -> &'static str {
        self.0
    }
    fn required(&self) -> bool {
        false
    }
    fn schema(&self, defs: &mut Defs) -> Value {
        self.1.schema(defs)
    }
}

/// The schema of an object of exactly `fields` (nothing else): required
/// ones may not be `null`, optional ones may be `null` or left out.
pub fn object_schema(fields: &[&dyn IntakeField], defs: &mut Defs) -> Value {
    let mut properties = Map::new();
    let mut required = Vec::new();
    for field in fields {
        let value = field.schema(defs);
        if field.required() {
            required.push(field.name());
            properties.insert(field.name().to_owned(), value);
        } else {
            properties.insert(field.name().to_owned(), nullable(&value));
        }
    }
    strict_object(&properties, &required)
}

/// A JSON object whose key set has been checked against a field table;
/// `prefix` makes nested field paths (`speakers[1].`, `recommendations.`).
pub(crate) struct Obj<'a> {
    map: &'a Map<String, Value>,
    prefix: String,
}

impl<'a> Obj<'a> {
    /// Checks that `map` has only the fields of `fields` (the first
    /// unknown one in document order is reported, with the allowed names)
    /// and every required one (the first missing one in table order).
    pub(crate) fn check(
        map: &'a Map<String, Value>,
        prefix: &str,
        fields: &[&dyn IntakeField],
    ) -> Result<Self, RejectError> {
        let allowed: Vec<&str> = fields.iter().map(|f| f.name()).collect();
        if let Some(unknown) = map.keys().find(|k| !allowed.contains(&k.as_str())) {
            return Err(RejectError::unknown_field(
                format!("{prefix}{unknown}"),
                &allowed,
            ));
        }
        if let Some(missing) = fields
            .iter()
            .filter(|f| f.required())
            .find(|f| map.get(f.name()).is_none_or(Value::is_null))
        {
            return Err(RejectError::missing(format!("{prefix}{}", missing.name())));
        }
        Ok(Self {
            map,
            prefix: prefix.to_owned(),
        })
    }

    fn path(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// A required field (known to be present and non-null once checked).
    pub(crate) fn req<K: Parse>(&self, field: &Required<K>) -> Result<K::Value, RejectError> {
        let Required(name, kind) = field;
        match self.map.get(*name) {
            Some(v) if !v.is_null() => kind.parse(v, &self.path(name)),
            _ => Err(RejectError::missing(self.path(name))),
        }
    }

    /// An optional field; `null` means absent.
    pub(crate) fn opt<K: Parse>(
        &self,
        field: &Optional<K>,
    ) -> Result<Option<K::Value>, RejectError> {
        self.opt_with(field, Parse::parse)
    }

    /// An optional field whose kind needs more than its own value to parse.
    pub(crate) fn opt_with<K, T>(
        &self,
        Optional(name, kind): &Optional<K>,
        parse: impl FnOnce(&K, &Value, &str) -> Result<T, RejectError>,
    ) -> Result<Option<T>, RejectError> {
        match self.map.get(*name) {
            Some(v) if !v.is_null() => parse(kind, v, &self.path(name)).map(Some),
            _ => Ok(None),
        }
    }
}

// ---- the kinds --------------------------------------------------------------

/// A non-blank string of at most this many characters (not bytes), stored
/// trimmed.
#[derive(Debug, Clone, Copy)]
pub struct Text(pub usize);

impl FieldKind for Text {
    /// At most `max` characters once surrounding white space is trimmed, and
    /// not blank. A plain `maxLength` would refuse a padded value that
    /// intake accepts (and stores trimmed), hence the pattern.
    fn schema(&self, defs: &mut Defs) -> Value {
        let max = self.0;
        def(defs, &format!("Text{max}"), || {
            let ws = white_space_class();
            json!({
                "type": "string",
                "description": format!("1 to {max} characters once surrounding white space is trimmed (it is stored trimmed)."),
                "pattern": format!("^[{ws}]*[^{ws}](?:[\\s\\S]{{0,{}}}[^{ws}])?[{ws}]*$", max - 2),
            })
        })
    }
}

impl Parse for Text {
    type Value = String;

    fn parse(&self, v: &Value, f: &str) -> Result<String, RejectError> {
        let max = self.0;
        let s = v
            .as_str()
            .ok_or_else(|| RejectError::invalid(f, "must be a string"))?
            .trim();
        let len = s.chars().count();
        if len == 0 {
            Err(RejectError::invalid(f, "must not be empty or blank"))
        } else if len > max {
            Err(RejectError::invalid(
                f,
                format_args!("must be at most {max} characters, got {len}"),
            ))
        } else {
            Ok(s.to_owned())
        }
    }
}

/// A UN document symbol such as `A/HRC/59/10` or `A/HRC/WG.6/48/KAZ/1`: at
/// most [`max_chars::DOCUMENT_SYMBOL`] characters of letters, digits,
/// spaces and `/ . - ( ) *`. The character set keeps each symbol at most 50
/// bytes in JSON, which the size bound of the country value counts on.
#[derive(Debug, Clone, Copy)]
pub struct DocumentSymbol;

impl FieldKind for DocumentSymbol {
    /// The stored form's characters, with white space around it that the
    /// parser trims.
    fn schema(&self, _: &mut Defs) -> Value {
        let ws = white_space_class();
        let (end, inner) = (document_symbol_class(false), document_symbol_class(true));
        let max = max_chars::DOCUMENT_SYMBOL;
        json!({
            "type": "string",
            "description": format!("A UN document symbol such as \"A/HRC/59/10\": 1 to {max} letters, digits, spaces and / . - ( ) * once trimmed."),
            "pattern": format!("^[{ws}]*[{end}](?:[{inner}]{{0,{}}}[{end}])?[{ws}]*$", max - 2),
        })
    }
}

impl Parse for DocumentSymbol {
    type Value = String;

    fn parse(&self, v: &Value, f: &str) -> Result<String, RejectError> {
        let s = Text(max_chars::DOCUMENT_SYMBOL).parse(v, f)?;
        match s
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || DOCUMENT_SYMBOL_CHARS.contains(*c)))
        {
            None => Ok(s),
            Some(c) => Err(RejectError::invalid(
                f,
                format_args!(
                    "must be a UN document symbol like \"A/HRC/59/10\" (letters, digits, spaces and / . - ( ) *), found {c:?}"
                ),
            )),
        }
    }
}

/// A whole number from 0 to [`MAX_COUNT`].
#[derive(Debug, Clone, Copy)]
pub struct Count;

impl FieldKind for Count {
    fn schema(&self, defs: &mut Defs) -> Value {
        def(
            defs,
            "Count",
            || json!({"type": "integer", "minimum": 0, "maximum": MAX_COUNT}),
        )
    }
}

impl Parse for Count {
    type Value = u32;

    fn parse(&self, v: &Value, f: &str) -> Result<u32, RejectError> {
        v.as_u64()
            .filter(|n| *n <= MAX_COUNT)
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| {
                RejectError::invalid(
                    f,
                    format_args!("must be an integer from 0 to {MAX_COUNT}, got {v}"),
                )
            })
    }
}

/// A UN member state (ISO 3166-1 alpha-2 code in any case): the state
/// under review.
#[derive(Debug, Clone, Copy)]
pub struct MemberState;

impl FieldKind for MemberState {
    fn schema(&self, defs: &mut Defs) -> Value {
        def(defs, "MemberState", || {
            json!({
                "type": "string",
                "description": "ISO 3166-1 alpha-2 code of one of the 193 UN member states, in any case (stored upper case).",
                "pattern": codes_pattern(MEMBER_STATES.iter().map(|(c, _)| *c), true),
            })
        })
    }
}

impl Parse for MemberState {
    type Value = Country;

    fn parse(&self, v: &Value, f: &str) -> Result<Country, RejectError> {
        let s = v
            .as_str()
            .ok_or_else(|| RejectError::invalid(f, "must be a string"))?;
        let country = Country::parse(s).map_err(|e| RejectError::invalid(f, e))?;
        if !country.is_member_state() {
            return Err(RejectError::invalid(
                f,
                format_args!(
                    "must be a UN member state: {country} ({}) is not one, and the UPR reviews the 193 member states",
                    country.name()
                ),
            ));
        }
        Ok(country)
    }
}

/// A UPR Working Group session number, 1 to 999.
#[derive(Debug, Clone, Copy)]
pub struct SessionNumber;

impl FieldKind for SessionNumber {
    fn schema(&self, _: &mut Defs) -> Value {
        session_number()
    }
}

impl Parse for SessionNumber {
    type Value = Session;

    fn parse(&self, v: &Value, f: &str) -> Result<Session, RejectError> {
        let n = v.as_u64().ok_or_else(|| {
            RejectError::invalid(f, format_args!("must be an integer from 1 to 999, got {v}"))
        })?;
        Session::new(n).map_err(|e| RejectError::invalid(f, e))
    }
}

/// A Human Rights Council session number, 1 to 999.
#[derive(Debug, Clone, Copy)]
pub struct HrcSession;

impl FieldKind for HrcSession {
    fn schema(&self, _: &mut Defs) -> Value {
        json!({"type": "integer", "minimum": 1, "maximum": 999})
    }
}

impl Parse for HrcSession {
    type Value = u16;

    fn parse(&self, v: &Value, f: &str) -> Result<u16, RejectError> {
        v.as_u64()
            .and_then(|n| u16::try_from(n).ok())
            .filter(|n| (1..=999).contains(n))
            .ok_or_else(|| {
                RejectError::invalid(f, format_args!("must be an integer from 1 to 999, got {v}"))
            })
    }
}

/// A UUID other than the nil UUID, in the spellings `Uuid::try_parse`
/// takes (hyphenated, simple, braced, URN; hex in any case).
#[derive(Debug, Clone, Copy)]
pub struct EventUuid;

impl FieldKind for EventUuid {
    fn schema(&self, defs: &mut Defs) -> Value {
        def(defs, "Uuid", || {
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
        })
    }
}

impl Parse for EventUuid {
    type Value = Uuid;

    fn parse(&self, v: &Value, f: &str) -> Result<Uuid, RejectError> {
        let s = v
            .as_str()
            .ok_or_else(|| RejectError::invalid(f, "must be a UUID string"))?;
        match Uuid::try_parse(s) {
            Ok(id) if !id.is_nil() => Ok(id),
            _ => Err(RejectError::invalid(
                f,
                format_args!("must be a non-nil UUID, got {s:?}"),
            )),
        }
    }
}

/// An RFC 3339 time with an offset (`scheduled_for`, `occurred_at`).
#[derive(Debug, Clone, Copy)]
pub struct Time;

impl FieldKind for Time {
    fn schema(&self, defs: &mut Defs) -> Value {
        def(defs, "Time", || {
            json!({
                "type": "string",
                "description": "An RFC 3339 time with an offset, e.g. 2025-01-23T08:30:00Z; stored in UTC.",
                "format": "date-time",
            })
        })
    }
}

impl Parse for Time {
    type Value = Timestamp;

    fn parse(&self, v: &Value, f: &str) -> Result<Timestamp, RejectError> {
        let s = v
            .as_str()
            .ok_or_else(|| RejectError::invalid(f, "must be an RFC 3339 time string"))?;
        Timestamp::parse_rfc3339(s).map_err(|e| RejectError::invalid(f, e))
    }
}

/// A date (00:00 UTC) or an RFC 3339 time: the `*_on` fields.
#[derive(Debug, Clone, Copy)]
pub struct DateOrTime;

impl FieldKind for DateOrTime {
    fn schema(&self, defs: &mut Defs) -> Value {
        def(defs, "DateOrTime", || {
            json!({
                "type": "string",
                "description": "A date (2025-01-23, meaning 00:00 UTC) or an RFC 3339 time with an offset.",
                "anyOf": [{"format": "date"}, {"format": "date-time"}],
            })
        })
    }
}

impl Parse for DateOrTime {
    type Value = Timestamp;

    fn parse(&self, v: &Value, f: &str) -> Result<Timestamp, RejectError> {
        let s = v
            .as_str()
            .ok_or_else(|| RejectError::invalid(f, "must be a date or RFC 3339 time string"))?;
        Timestamp::parse_on(s).map_err(|e| RejectError::invalid(f, e))
    }
}

/// Three distinct UN member states, none of them the state under review:
/// parsed against that state ([`Troika::parse`]), so not a [`Parse`] kind.
#[derive(Debug, Clone, Copy)]
pub struct Troika;

impl FieldKind for Troika {
    fn schema(&self, defs: &mut Defs) -> Value {
        json!({
            "type": "array",
            "description": "Three distinct member states, none of them the state under review.",
            "items": MemberState.schema(defs),
            "minItems": 3,
            "maxItems": 3,
            "uniqueItems": true,
        })
    }
}

impl Troika {
    /// Parses the troika of a review of `under_review`.
    ///
    /// # Errors
    /// An `invalid_field` [`RejectError`] naming `at` or the member at fault.
    pub fn parse(
        self,
        v: &Value,
        f: &str,
        under_review: Country,
    ) -> Result<Vec<Country>, RejectError> {
        let items = v.as_array().filter(|a| a.len() == 3).ok_or_else(|| {
            RejectError::invalid(f, "must be a list of exactly three member states")
        })?;
        let mut states = Vec::with_capacity(3);
        for (i, item) in items.iter().enumerate() {
            let at = format!("{f}[{i}]");
            let state = item
                .as_str()
                .ok_or_else(|| RejectError::invalid(&at, "must be a country code string"))
                .and_then(|s| Country::parse(s).map_err(|e| RejectError::invalid(&at, e)))?;
            if !state.is_member_state() {
                return Err(RejectError::invalid(
                    &at,
                    format_args!(
                        "must be a UN member state: {state} ({}) is not one",
                        state.name()
                    ),
                ));
            }
            if state == under_review {
                return Err(RejectError::invalid(
                    &at,
                    format_args!(
                        "{state} is the state under review; a troika is three other states"
                    ),
                ));
            }
            if states.contains(&state) {
                return Err(RejectError::invalid(
                    &at,
                    format_args!("{state} is named twice; a troika is three distinct states"),
                ));
            }
            states.push(state);
        }
        Ok(states)
    }
}

/// An array of at most `max` items.
fn array<'v>(v: &'v Value, f: &str, max: usize) -> Result<&'v [Value], RejectError> {
    let items = v
        .as_array()
        .ok_or_else(|| RejectError::invalid(f, "must be an array"))?;
    if items.len() > max {
        return Err(RejectError::invalid(
            f,
            format_args!("must have at most {max} items, got {}", items.len()),
        ));
    }
    Ok(items)
}

/// A speaker's `name`.
pub const SPEAKER_NAME: Required<Text> = Required("name", Text(max_chars::SPEAKER));
/// A speaker's `role`.
pub const SPEAKER_ROLE: Optional<Text> = Optional("role", Text(max_chars::SPEAKER));
/// The fields of one speaker.
pub const SPEAKER_FIELDS: [&dyn IntakeField; 2] = [&SPEAKER_NAME, &SPEAKER_ROLE];

/// A side event's speakers: at most [`MAX_SPEAKERS`] objects
/// `{name, role?}`.
#[derive(Debug, Clone, Copy)]
pub struct Speakers;

impl FieldKind for Speakers {
    fn schema(&self, defs: &mut Defs) -> Value {
        json!({
            "type": "array",
            "items": object_schema(&SPEAKER_FIELDS, defs),
            "maxItems": MAX_SPEAKERS,
        })
    }
}

impl Parse for Speakers {
    type Value = Vec<Speaker>;

    fn parse(&self, v: &Value, f: &str) -> Result<Vec<Speaker>, RejectError> {
        array(v, f, MAX_SPEAKERS)?
            .iter()
            .enumerate()
            .map(|(i, item)| {
                let at = format!("{f}[{i}]");
                let map = item.as_object().ok_or_else(|| {
                    RejectError::invalid(
                        &at,
                        "must be an object like {\"name\": ..., \"role\": ...}",
                    )
                })?;
                let obj = Obj::check(map, &format!("{at}."), &SPEAKER_FIELDS)?;
                Ok(Speaker {
                    name: obj.req(&SPEAKER_NAME)?,
                    role: obj.opt(&SPEAKER_ROLE)?,
                })
            })
            .collect()
    }
}

/// A side event's topics: at most [`MAX_TOPICS`] texts of
/// [`max_chars::TOPIC`] characters.
#[derive(Debug, Clone, Copy)]
pub struct Topics;

/// One topic.
const TOPIC: Text = Text(max_chars::TOPIC);

impl FieldKind for Topics {
    fn schema(&self, defs: &mut Defs) -> Value {
        json!({
            "type": "array",
            "items": TOPIC.schema(defs),
            "maxItems": MAX_TOPICS,
        })
    }
}

impl Parse for Topics {
    type Value = Vec<String>;

    fn parse(&self, v: &Value, f: &str) -> Result<Vec<String>, RejectError> {
        array(v, f, MAX_TOPICS)?
            .iter()
            .enumerate()
            .map(|(i, item)| TOPIC.parse(item, &format!("{f}[{i}]")))
            .collect()
    }
}

/// `recommendations.total`.
pub const TOTAL: Required<Count> = Required("total", Count);
/// `recommendations.supported`.
pub const SUPPORTED: Required<Count> = Required("supported", Count);
/// `recommendations.noted`.
pub const NOTED: Required<Count> = Required("noted", Count);
/// The fields of the recommendation counts.
pub const RECOMMENDATION_FIELDS: [&dyn IntakeField; 3] = [&TOTAL, &SUPPORTED, &NOTED];

/// Recommendation counts `{total, supported, noted}` with
/// `supported + noted <= total`.
#[derive(Debug, Clone, Copy)]
pub struct RecommendationCounts;

impl FieldKind for RecommendationCounts {
    fn schema(&self, defs: &mut Defs) -> Value {
        let mut schema = object_schema(&RECOMMENDATION_FIELDS, defs);
        schema["description"] = "Recommendation counts; supported + noted <= total.".into();
        schema
    }
}

impl Parse for RecommendationCounts {
    type Value = Recommendations;

    fn parse(&self, v: &Value, f: &str) -> Result<Recommendations, RejectError> {
        let map = v.as_object().ok_or_else(|| {
            RejectError::invalid(f, "must be an object {\"total\", \"supported\", \"noted\"}")
        })?;
        let obj = Obj::check(map, &format!("{f}."), &RECOMMENDATION_FIELDS)?;
        let r = Recommendations {
            total: obj.req(&TOTAL)?,
            supported: obj.req(&SUPPORTED)?,
            noted: obj.req(&NOTED)?,
        };
        if r.supported + r.noted > r.total {
            return Err(RejectError::invalid(
                f,
                format_args!(
                    "must have supported + noted <= total, got {} + {} > {}",
                    r.supported, r.noted, r.total
                ),
            ));
        }
        Ok(r)
    }
}
