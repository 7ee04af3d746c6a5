//! The subscription file (`UPR_WEBHOOKS`): a JSON list of
//! `{"name", "url", "secret_file", "countries"?, "kinds"?}`, read and checked
//! whole at start-up, so a mistake stops the gateway with a message naming
//! the entry and the field instead of failing a delivery hours later.

use std::{
    collections::HashSet,
    fmt,
    path::{Path, PathBuf},
};

use serde::Deserialize;
use upr_domain::{Country, NoticeKind};
use upr_nats::contract::{gateway::webhook_consumer, subjects};

use super::sign::parse_secret;

/// One subscription, checked.
#[derive(Clone, PartialEq, Eq)]
pub struct Subscription {
    /// `[a-z][a-z0-9-]{0,31}`: also names its position in the gateway's
    /// bucket, so it must stay the same for deliveries to resume where they
    /// were.
    pub name: String,
    /// Where notifications are sent with `POST` (http or https).
    pub url: reqwest::Url,
    /// The signing key (the secret file's base64, decoded).
    pub key: Vec<u8>,
    /// Only these states' notifications; empty: every state.
    pub countries: Vec<Country>,
    /// Only these kinds; empty: every kind.
    pub kinds: Vec<NoticeKind>,
}

/// Without the key: the configuration is logged and compared as text.
impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("name", &self.name)
            .field("url", &self.url.as_str())
            .field("key", &"<redacted>")
            .field("countries", &self.countries)
            .field("kinds", &self.kinds)
            .finish()
    }
}

impl Subscription {
    /// The durable consumer on `UPR_NOTIFICATIONS` that delivered it in
    /// earlier versions.
    pub fn consumer_name(&self) -> String {
        webhook_consumer(&self.name)
    }

    /// Whether a notification stored under `subject`
    /// (`upr.notify.<kind>.<COUNTRY>`) is one this subscription wants.
    pub fn matches(&self, subject: &str) -> bool {
        let Some((kind, country)) = subject
            .strip_prefix("upr.notify.")
            .and_then(|rest| rest.split_once('.'))
        else {
            return false;
        };
        (self.kinds.is_empty() || self.kinds.iter().any(|k| k.as_str() == kind))
            && (self.countries.is_empty() || self.countries.iter().any(|c| c.as_str() == country))
    }

    /// The subjects it wants: `upr.notify.<kind>.<COUNTRY>` for every kind
    /// and country asked for, `*` standing for "any".
    pub fn filter_subjects(&self) -> Vec<String> {
        if self.kinds.is_empty() && self.countries.is_empty() {
            return vec![subjects::NOTIFY_ALL.to_owned()];
        }
        let kinds: Vec<&str> = if self.kinds.is_empty() {
            vec!["*"]
        } else {
            self.kinds.iter().map(NoticeKind::as_str).collect()
        };
        let countries: Vec<&str> = if self.countries.is_empty() {
            vec!["*"]
        } else {
            self.countries.iter().map(Country::as_str).collect()
        };
        kinds
            .iter()
            .flat_map(|k| countries.iter().map(move |c| format!("upr.notify.{k}.{c}")))
            .collect()
    }
}

/// An entry as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    name: String,
    url: String,
    secret_file: PathBuf,
    #[serde(default)]
    countries: Option<Vec<String>>,
    #[serde(default)]
    kinds: Option<Vec<String>>,
}

/// Reads and checks the file at `path`; a relative `secret_file` is taken
/// from the subscription file's own directory, so the pair can move
/// together (a mounted directory in a container).
///
/// # Errors
/// A message naming the file, and the entry and field at fault.
pub fn load(path: &Path) -> Result<Vec<Subscription>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let base = path.parent().unwrap_or(Path::new("."));
    parse(&text, base, &|p| std::fs::read_to_string(p))
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// [`load`] over the file's text, with `read` for the secret files.
///
/// # Errors
/// As [`load`], without the file name.
pub fn parse(
    text: &str,
    base: &Path,
    read: &dyn Fn(&Path) -> std::io::Result<String>,
) -> Result<Vec<Subscription>, String> {
    let entries: Vec<serde_json::Value> = serde_json::from_str(text)
        .map_err(|e| format!("expected a JSON list of subscriptions: {e}"))?;
    let mut names = HashSet::new();
    let mut out = Vec::with_capacity(entries.len());
    for (i, value) in entries.into_iter().enumerate() {
        let label = value
            .get("name")
            .and_then(serde_json::Value::as_str)
            .map_or_else(
                || format!("entry {}", i + 1),
                |n| format!("entry {} ({n:?})", i + 1),
            );
        let field = |name: &str, why: &dyn fmt::Display| format!("{label}: field \"{name}\" {why}");
        let entry = Entry::deserialize(value).map_err(|e| format!("{label}: {e}"))?;
        if !valid_name(&entry.name) {
            return Err(field(
                "name",
                &"must match [a-z][a-z0-9-]{0,31} (it names a NATS key)",
            ));
        }
        if !names.insert(entry.name.clone()) {
            return Err(field("name", &"is used by an earlier entry"));
        }
        let url = reqwest::Url::parse(&entry.url)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
            .ok_or_else(|| {
                field(
                    "url",
                    &format_args!("must be an http:// or https:// URL, got {:?}", entry.url),
                )
            })?;
        let secret_path = base.join(&entry.secret_file);
        let secret = read(&secret_path).map_err(|e| {
            field(
                "secret_file",
                &format_args!("cannot be read ({}): {e}", secret_path.display()),
            )
        })?;
        let key = parse_secret(&secret).map_err(|e| {
            field(
                "secret_file",
                &format_args!("({}) {e}", secret_path.display()),
            )
        })?;
        let countries = list(entry.countries, |c| {
            Country::parse(c)
                .ok()
                .filter(Country::is_member_state)
                .ok_or_else(|| format!("holds {c:?}, not the code of a UN member state"))
        })
        .map_err(|e| field("countries", &e))?;
        let kinds = list(entry.kinds, |k| {
            serde_json::from_value::<NoticeKind>(serde_json::Value::String(k.clone())).map_err(
                |_| {
                    format!(
                        "holds {k:?}; the kinds are reminder, rescheduled, cancelled, corrected"
                    )
                },
            )
        })
        .map_err(|e| field("kinds", &e))?;
        out.push(Subscription {
            name: entry.name,
            url,
            key,
            countries,
            kinds,
        });
    }
    Ok(out)
}

/// An optional list, each item checked and duplicates dropped; an empty
/// list is refused (it would match nothing: leave the field out for all).
fn list<T: PartialEq>(
    items: Option<Vec<String>>,
    check: impl Fn(&String) -> Result<T, String>,
) -> Result<Vec<T>, String> {
    let Some(items) = items else {
        return Ok(Vec::new());
    };
    if items.is_empty() {
        return Err("is an empty list, which matches nothing; leave it out to match all".into());
    }
    let mut out = Vec::new();
    for item in &items {
        let value = check(item)?;
        if !out.contains(&value) {
            out.push(value);
        }
    }
    Ok(out)
}

/// `[a-z][a-z0-9-]{0,31}`.
fn valid_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    (1..=32).contains(&bytes.len())
        && bytes[0].is_ascii_lowercase()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n";

    fn secrets(path: &Path) -> std::io::Result<String> {
        if path.ends_with("chat.secret") {
            Ok(SECRET.into())
        } else if path.ends_with("bad.secret") {
            Ok("hunter2\n".into())
        } else {
            Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no such file",
            ))
        }
    }

    fn parse_here(text: &str) -> Result<Vec<Subscription>, String> {
        parse(text, Path::new("/etc/upr"), &secrets)
    }

    #[test]
    fn a_full_entry_becomes_one_filter_per_kind_and_country() {
        let subs = parse_here(
            r#"[{"name": "chat", "url": "https://example.org/hook", "secret_file": "chat.secret",
                 "countries": ["kz", "CH", "KZ"], "kinds": ["reminder", "cancelled"]},
                {"name": "all", "url": "http://127.0.0.1:9000/", "secret_file": "/etc/upr/chat.secret"}]"#,
        )
        .unwrap();
        assert_eq!(subs.len(), 2);
        assert_eq!(subs[0].consumer_name(), "upr-gateway-webhook-chat");
        assert_eq!(
            subs[0].filter_subjects(),
            [
                "upr.notify.reminder.KZ",
                "upr.notify.reminder.CH",
                "upr.notify.cancelled.KZ",
                "upr.notify.cancelled.CH"
            ]
        );
        assert_eq!(subs[0].key.len(), 24);
        assert_eq!(subs[1].filter_subjects(), ["upr.notify.>"]);
        assert!(
            !format!("{subs:?}").contains("MfKQ"),
            "the key is not logged"
        );
        let only_kind = parse_here(
            r#"[{"name": "r", "url": "http://h/", "secret_file": "chat.secret", "kinds": ["reminder"]}]"#,
        )
        .unwrap();
        assert_eq!(only_kind[0].filter_subjects(), ["upr.notify.reminder.*"]);
    }

    #[test]
    fn a_bad_entry_is_refused_naming_the_entry_and_field() {
        let ok = r#""url": "http://h/", "secret_file": "chat.secret""#;
        for (text, expected) in [
            ("{}".to_string(), "JSON list"),
            (
                format!(r#"[{{"name": "Chat", {ok}}}]"#),
                r#"entry 1 ("Chat"): field "name""#,
            ),
            (
                format!(r#"[{{"name": "a", {ok}}}, {{"name": "a", {ok}}}]"#),
                r#"entry 2 ("a"): field "name" is used"#,
            ),
            (
                r#"[{"name": "a", "url": "ftp://h/", "secret_file": "chat.secret"}]"#.into(),
                r#"entry 1 ("a"): field "url""#,
            ),
            (
                r#"[{"name": "a", "url": "http://h/", "secret_file": "missing"}]"#.into(),
                r#"field "secret_file" cannot be read (/etc/upr/missing)"#,
            ),
            (
                r#"[{"name": "a", "url": "http://h/", "secret_file": "bad.secret"}]"#.into(),
                r#"field "secret_file" (/etc/upr/bad.secret) must hold whsec_"#,
            ),
            (
                format!(r#"[{{"name": "a", {ok}, "countries": ["XX"]}}]"#),
                r#"field "countries" holds "XX""#,
            ),
            (
                format!(r#"[{{"name": "a", {ok}, "countries": []}}]"#),
                r#"field "countries" is an empty list"#,
            ),
            (
                format!(r#"[{{"name": "a", {ok}, "kinds": ["party"]}}]"#),
                r#"field "kinds" holds "party""#,
            ),
            (
                r#"[{"name": "a", "secret_file": "chat.secret"}]"#.into(),
                "entry 1 (\"a\"): missing field `url`",
            ),
            (
                format!(r#"[{{"name": "a", {ok}, "colour": 1}}]"#),
                "unknown field `colour`",
            ),
            (
                format!(r"[{ok}]").replace('[', "[{").replace(']', "}]"),
                "entry 1: missing field `name`",
            ),
        ] {
            let e = parse_here(&text).unwrap_err();
            assert!(
                e.contains(expected),
                "{text}\n  gave: {e}\n  expected: {expected}"
            );
        }
    }

    #[test]
    fn names_are_short_lower_case_consumer_names() {
        for good in ["a", "chat-1", "x2345678901234567890123456789012"] {
            assert!(valid_name(good), "{good}");
        }
        for bad in [
            "",
            "1chat",
            "-a",
            "a_b",
            "a.b",
            "A",
            "x23456789012345678901234567890123",
        ] {
            assert!(!valid_name(bad), "{bad}");
        }
    }
}
