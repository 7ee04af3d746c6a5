//! A strict JSON reader: like `serde_json::from_slice::<Value>`, but it
//! refuses duplicated keys (which `serde_json` would silently resolve to the
//! last one, letting `{"session": 1, "session": 999}` mean something
//! surprising) and nesting deeper than [`MAX_DEPTH`].

use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// Deepest nesting of arrays and objects accepted; the contract's payloads
/// need 3, so 32 leaves room while bounding work on hostile input.
pub const MAX_DEPTH: usize = 32;

/// Parses one JSON document strictly; the error's `Display` is a short
/// human detail. Intake and query payloads both go through it, so they
/// follow one rule.
///
/// # Errors
/// Not one well-formed JSON document, a duplicated key or nesting deeper
/// than [`MAX_DEPTH`].
pub fn parse_strict(bytes: &[u8]) -> Result<Value, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = Strict { depth: 0 }.deserialize(&mut de)?;
    de.end()?;
    Ok(value)
}

/// The strict reader as a seed, for a value inside a document being read
/// (an envelope's `data` met before its `type`).
pub(crate) fn strict<'de>() -> impl DeserializeSeed<'de, Value = Value> {
    Strict { depth: 1 }
}

#[derive(Clone, Copy)]
struct Strict {
    depth: usize,
}

impl Strict {
    fn nested<E: de::Error>(self) -> Result<Self, E> {
        if self.depth >= MAX_DEPTH {
            Err(E::custom(format_args!(
                "nesting deeper than {MAX_DEPTH} levels"
            )))
        } else {
            Ok(Self {
                depth: self.depth + 1,
            })
        }
    }
}

impl<'de> DeserializeSeed<'de> for Strict {
    type Value = Value;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let inner = self.nested()?;
        let mut items = Vec::new();
        while let Some(v) = seq.next_element_seed(inner)? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let inner = self.nested()?;
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                return Err(de::Error::custom(format_args!("duplicated key {key:?}")));
            }
            let value = map.next_value_seed(inner)?;
            out.insert(key, value);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicated_keys_are_refused_at_any_depth() {
        assert!(
            parse_strict(br#"{"a":1,"a":2}"#)
                .unwrap_err()
                .to_string()
                .contains("duplicated key")
        );
        assert!(parse_strict(br#"{"a":[{"b":1,"b":1}]}"#).is_err());
        assert!(parse_strict(br#"{"a":{"b":1},"c":{"b":1}}"#).is_ok());
    }

    #[test]
    fn deep_nesting_and_trailing_garbage_are_refused() {
        let deep = "[".repeat(MAX_DEPTH + 1) + &"]".repeat(MAX_DEPTH + 1);
        assert!(
            parse_strict(deep.as_bytes())
                .unwrap_err()
                .to_string()
                .contains("nesting")
        );
        let ok = "[".repeat(MAX_DEPTH) + &"]".repeat(MAX_DEPTH);
        assert!(parse_strict(ok.as_bytes()).is_ok());
        assert!(parse_strict(b"{} {}").is_err());
        assert!(parse_strict(b"").is_err());
    }

    #[test]
    fn numbers_keep_their_integer_or_float_nature() {
        let v = parse_strict(br"[48, 48.0, -1]").unwrap();
        assert_eq!(v[0].as_u64(), Some(48));
        assert_eq!(v[1].as_u64(), None);
        assert_eq!(v[2].as_i64(), Some(-1));
    }
}
