//! Who recorded an event: the name of a party (a person, an organisation, a
//! program) as the server authenticated its connection (contract V3.1).
//!
//! The name enters only through [`PartyName::parse`], from what the server
//! itself tells the service (never from an intake payload), and it is the
//! name of the party's NATS account, so it is also what `upr-keys` accepts.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize};

/// Longest party name, in characters.
pub const MAX_PARTY_NAME: usize = 32;

/// A party's name: `[a-z][a-z0-9-]{0,31}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, JsonSchema)]
#[serde(transparent)]
pub struct PartyName(#[schemars(pattern(r"^[a-z][a-z0-9-]{0,31}$"))] String);

/// A text that is not a party name; says why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PartyNameError(pub String);

impl PartyName {
    /// The name, if `text` is one.
    ///
    /// # Errors
    /// [`PartyNameError`] saying which rule `text` breaks.
    pub fn parse(text: &str) -> Result<Self, PartyNameError> {
        let mut chars = text.chars();
        match chars.next() {
            None => return Err(PartyNameError("a party name is not empty".into())),
            Some(c) if !c.is_ascii_lowercase() => {
                return Err(PartyNameError(format!(
                    "a party name starts with a letter a-z, not {c:?}"
                )));
            }
            Some(_) => {}
        }
        if let Some(c) =
            chars.find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
        {
            return Err(PartyNameError(format!(
                "a party name holds only a-z, 0-9 and '-', not {c:?}"
            )));
        }
        if text.len() > MAX_PARTY_NAME {
            return Err(PartyNameError(format!(
                "a party name is at most {MAX_PARTY_NAME} characters, not {}",
                text.len()
            )));
        }
        Ok(Self(text.to_owned()))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PartyName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for PartyName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = std::borrow::Cow::<'de, str>::deserialize(d)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// `who` as a sentence part: the name, or "no authenticated party".
pub fn describe(who: Option<&PartyName>) -> String {
    who.map_or_else(
        || "no authenticated party".to_owned(),
        |p| format!("party {p:?}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_lower_case_letters_digits_and_dashes_starting_with_a_letter() {
        for good in ["publisher", "reader", "a", "ngo-1", &"a".repeat(32)] {
            assert_eq!(PartyName::parse(good).unwrap().as_str(), good);
        }
        for bad in [
            "",
            "1abc",
            "-a",
            "Abc",
            "a_b",
            "a.b",
            "a b",
            "é",
            &"a".repeat(33),
            "a>",
        ] {
            assert!(PartyName::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn json_names_are_checked_too() {
        assert!(serde_json::from_str::<PartyName>("\"ngo\"").is_ok());
        assert!(serde_json::from_str::<PartyName>("\"NGO\"").is_err());
    }
}
