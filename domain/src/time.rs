//! UTC timestamps: parsed strictly, always emitted as RFC 3339 with `Z`.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::format_description::well_known::Rfc3339;
use time::{Date, OffsetDateTime, UtcOffset, macros::format_description};

/// A point in time, always in UTC and always within years 0000..=9999.
///
/// The range is part of the invariant because RFC 3339 cannot write other
/// years: keeping it here makes `Display` and `Serialize` infallible.
/// The domain never reads the clock; services pass the current time in, which
/// keeps every decision reproducible in tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(OffsetDateTime);

/// Why a text or number is not a [`Timestamp`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimeError {
    /// Not RFC 3339 with an explicit offset (or, for `*_on` fields, a date).
    #[error("must be an RFC 3339 time with an offset, like 2025-01-23T08:30:00Z, got {0:?}")]
    NotRfc3339(String),
    /// Not RFC 3339 and not a plain calendar date.
    #[error("must be a date like 2025-01-23 or an RFC 3339 time with an offset, got {0:?}")]
    NotDateOrRfc3339(String),
    /// A valid time whose UTC year falls outside 0000..=9999.
    #[error("is outside the years 0000 to 9999")]
    OutOfRange,
}

impl Timestamp {
    /// Parses RFC 3339; the offset is mandatory because a time without one is
    /// ambiguous by hours, which matters for reminders.
    ///
    /// # Errors
    /// [`TimeError`] for anything else, including impossible dates.
    pub fn parse_rfc3339(text: &str) -> Result<Self, TimeError> {
        let t = OffsetDateTime::parse(text, &Rfc3339)
            .map_err(|_| TimeError::NotRfc3339(text.to_owned()))?;
        Self::from_offset_datetime(t)
    }

    /// Parses a `*_on` field: RFC 3339, or a plain date meaning 00:00 UTC.
    ///
    /// # Errors
    /// [`TimeError`] for anything else, including impossible dates (2025-02-30).
    pub fn parse_on(text: &str) -> Result<Self, TimeError> {
        if let Ok(t) = Self::parse_rfc3339(text) {
            return Ok(t);
        }
        let date = Date::parse(text, format_description!("[year]-[month]-[day]"))
            .map_err(|_| TimeError::NotDateOrRfc3339(text.to_owned()))?;
        Self::from_offset_datetime(date.midnight().assume_utc())
    }

    /// Wraps any `OffsetDateTime`, converting it to UTC.
    ///
    /// # Errors
    /// [`TimeError::OutOfRange`] when the UTC year is outside 0000..=9999.
    pub fn from_offset_datetime(t: OffsetDateTime) -> Result<Self, TimeError> {
        let utc = t
            .checked_to_offset(UtcOffset::UTC)
            .ok_or(TimeError::OutOfRange)?;
        if (0..=9999).contains(&utc.year()) {
            Ok(Self(utc))
        } else {
            Err(TimeError::OutOfRange)
        }
    }

    /// Builds a timestamp from milliseconds since the Unix epoch (the unit of
    /// NATS and of most clocks); `None` outside the supported years.
    pub fn from_unix_millis(millis: i64) -> Option<Self> {
        let t = OffsetDateTime::from_unix_timestamp_nanos(i128::from(millis) * 1_000_000).ok()?;
        Self::from_offset_datetime(t).ok()
    }

    /// Milliseconds since the Unix epoch, rounded down like
    /// [`Timestamp::truncate_to_millis`], so the two agree before 1970 too.
    #[allow(
        clippy::cast_possible_truncation,
        reason = "years 0000..=9999 fit easily in i64 milliseconds"
    )]
    pub fn unix_millis(&self) -> i64 {
        self.0.unix_timestamp_nanos().div_euclid(1_000_000) as i64
    }

    /// Drops the sub-millisecond part, so recorded times read like the
    /// contract's example (`...00.123Z`) instead of carrying clock noise.
    #[must_use]
    pub fn truncate_to_millis(self) -> Self {
        let nanos = self.0.nanosecond() / 1_000_000 * 1_000_000;
        Self(self.0.replace_nanosecond(nanos).unwrap_or(self.0))
    }

    /// The wrapped UTC `OffsetDateTime`.
    pub fn as_offset_datetime(&self) -> OffsetDateTime {
        self.0
    }

    /// `self + d`, or `None` when the result leaves the supported years.
    pub fn checked_add(self, d: time::Duration) -> Option<Self> {
        Self::from_offset_datetime(self.0.checked_add(d)?).ok()
    }

    /// `self - d`, or `None` when the result leaves the supported years.
    pub fn checked_sub(self, d: time::Duration) -> Option<Self> {
        Self::from_offset_datetime(self.0.checked_sub(d)?).ok()
    }

    /// `self - earlier` as a signed duration (negative when `earlier` is later).
    pub fn since(self, earlier: Self) -> time::Duration {
        self.0 - earlier.0
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Cannot fail: the constructor keeps the year in RFC 3339's range and
        // the offset at UTC.
        let text = self.0.format(&Rfc3339).map_err(|_| fmt::Error)?;
        f.write_str(&text)
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Self::parse_rfc3339(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        Timestamp::parse_rfc3339(s).unwrap()
    }

    #[test]
    fn offsets_are_normalised_to_utc_with_z() {
        assert_eq!(
            ts("2025-01-23T09:30:00+01:00").to_string(),
            "2025-01-23T08:30:00Z"
        );
        assert_eq!(
            ts("2025-01-23T08:30:00Z").to_string(),
            "2025-01-23T08:30:00Z"
        );
    }

    #[test]
    fn fractional_seconds_appear_only_when_non_zero() {
        assert_eq!(
            ts("2024-11-06T10:00:00.123Z").to_string(),
            "2024-11-06T10:00:00.123Z"
        );
        assert_eq!(
            ts("2024-11-06T10:00:00.000Z").to_string(),
            "2024-11-06T10:00:00Z"
        );
    }

    #[test]
    fn a_time_without_offset_is_rejected() {
        assert!(Timestamp::parse_rfc3339("2025-01-23T08:30:00").is_err());
        assert!(Timestamp::parse_on("2025-01-23T08:30:00").is_err());
    }

    #[test]
    fn impossible_dates_are_rejected() {
        assert!(Timestamp::parse_rfc3339("2025-02-30T00:00:00Z").is_err());
        assert!(Timestamp::parse_on("2025-02-30").is_err());
        assert!(Timestamp::parse_on("2025-13-01").is_err());
    }

    #[test]
    fn on_fields_accept_a_plain_date_as_midnight_utc() {
        assert_eq!(
            Timestamp::parse_on("2025-01-23").unwrap(),
            ts("2025-01-23T00:00:00Z")
        );
        assert_eq!(
            Timestamp::parse_on("2025-01-23T10:00:00+02:00").unwrap(),
            ts("2025-01-23T08:00:00Z")
        );
        assert!(Timestamp::parse_rfc3339("2025-01-23").is_err());
    }

    #[test]
    fn times_whose_utc_year_leaves_0000_to_9999_are_rejected() {
        assert_eq!(
            Timestamp::parse_rfc3339("9999-12-31T23:30:00-01:00"),
            Err(TimeError::OutOfRange)
        );
        assert!(Timestamp::parse_rfc3339("0000-01-01T00:30:00+01:00").is_err());
    }

    #[test]
    fn unix_millis_round_trip_and_truncation() {
        let t = ts("2024-11-06T10:00:00.123456789Z");
        assert_eq!(
            t.truncate_to_millis().to_string(),
            "2024-11-06T10:00:00.123Z"
        );
        assert_eq!(
            Timestamp::from_unix_millis(t.unix_millis()),
            Some(t.truncate_to_millis())
        );
        assert_eq!(
            Timestamp::from_unix_millis(0).unwrap().to_string(),
            "1970-01-01T00:00:00Z"
        );
        assert_eq!(Timestamp::from_unix_millis(i64::MAX), None);
        let before_epoch = ts("1969-12-31T23:59:59.9995Z");
        assert_eq!(before_epoch.unix_millis(), -1);
        assert_eq!(before_epoch.truncate_to_millis().unix_millis(), -1);
    }

    #[test]
    fn arithmetic_is_checked_at_the_range_edges() {
        let t = ts("2025-01-23T08:30:00Z");
        assert_eq!(
            t.checked_sub(time::Duration::days(7)),
            Some(ts("2025-01-16T08:30:00Z"))
        );
        assert_eq!(
            t.checked_add(time::Duration::days(7)).unwrap().since(t),
            time::Duration::days(7)
        );
        assert_eq!(
            ts("9999-12-31T00:00:00Z").checked_add(time::Duration::days(1)),
            None
        );
    }

    #[test]
    fn serde_is_the_rfc3339_string() {
        let t: Timestamp = serde_json::from_str("\"2025-01-23T09:30:00+01:00\"").unwrap();
        assert_eq!(
            serde_json::to_string(&t).unwrap(),
            "\"2025-01-23T08:30:00Z\""
        );
        assert!(serde_json::from_str::<Timestamp>("\"2025-01-23\"").is_err());
    }
}
