//! Lengths of time written as a whole number and a unit (`90s`, `10m`, `7d`):
//! the one reader of that form, for reminder leads and for duration-valued
//! settings alike. Each caller words its own errors and adds its own bounds.

/// The units and their length in seconds, lower case only, so `m` can only
/// mean minutes.
pub const SPAN_UNITS: [(char, u64); 5] = [
    ('s', 1),
    ('m', 60),
    ('h', 3600),
    ('d', 86_400),
    ('w', 7 * 86_400),
];

/// A text read as `<count><unit>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// The number as written, without leading zeros (`07d` -> 7).
    pub count: u64,
    /// The unit, one of [`SPAN_UNITS`].
    pub unit: char,
    /// `count` times the unit's length, in seconds (always > 0).
    pub secs: u64,
}

/// Why a text is not a [`Span`], checked in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanError {
    /// Nothing at all.
    Empty,
    /// The last character is not one of [`SPAN_UNITS`].
    UnknownUnit,
    /// Before the unit: nothing, or not only ASCII digits.
    NotANumber,
    /// The number does not fit 64 bits.
    NumberTooLong,
    /// The number is 0.
    Zero,
    /// The number of seconds does not fit 64 bits.
    TooManySeconds,
}

/// Reads `text` (not trimmed) as a positive whole number followed by one of
/// [`SPAN_UNITS`].
///
/// # Errors
/// The first [`SpanError`] that applies.
pub fn parse_span(text: &str) -> Result<Span, SpanError> {
    // The unit is the last character, not the last byte: `1é` is refused,
    // not cut inside a character.
    let unit = text.chars().last().ok_or(SpanError::Empty)?;
    let digits = &text[..text.len() - unit.len_utf8()];
    let unit_secs = SPAN_UNITS
        .iter()
        .find(|(u, _)| *u == unit)
        .map(|(_, secs)| *secs)
        .ok_or(SpanError::UnknownUnit)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(SpanError::NotANumber);
    }
    let count: u64 = digits.parse().map_err(|_| SpanError::NumberTooLong)?;
    if count == 0 {
        return Err(SpanError::Zero);
    }
    let secs = count
        .checked_mul(unit_secs)
        .ok_or(SpanError::TooManySeconds)?;
    Ok(Span { count, unit, secs })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_unit_has_its_length_and_the_count_loses_leading_zeros() {
        for (text, secs) in [
            ("90s", 90),
            ("10m", 600),
            ("1h", 3600),
            ("2d", 172_800),
            ("1w", 604_800),
        ] {
            assert_eq!(parse_span(text).map(|s| s.secs), Ok(secs), "{text}");
        }
        assert_eq!(
            parse_span("07d"),
            Ok(Span {
                count: 7,
                unit: 'd',
                secs: 7 * 86_400
            })
        );
    }

    #[test]
    fn every_refusal_has_its_reason() {
        use SpanError::*;
        for (text, why) in [
            ("", Empty),
            ("10", UnknownUnit),
            ("10y", UnknownUnit),
            ("10M", UnknownUnit),
            ("1é", UnknownUnit),
            ("1\u{fffd}", UnknownUnit),
            ("1 d", NotANumber),
            ("d", NotANumber),
            ("-1s", NotANumber),
            ("+1s", NotANumber),
            ("1.5h", NotANumber),
            (" 1h", NotANumber),
            ("99999999999999999999w", NumberTooLong),
            ("0s", Zero),
            ("000d", Zero),
            ("18446744073709551615m", TooManySeconds),
        ] {
            assert_eq!(parse_span(text), Err(why), "{text:?}");
        }
    }
}
