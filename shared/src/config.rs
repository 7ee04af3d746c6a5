//! Settings read from the environment (contract section 6).
//!
//! Everything is read once at start-up into plain structs, so a bad value stops
//! the service before it touches NATS, with a message naming the variable.

use std::{path::PathBuf, time::Duration};

use crate::contract::env::{
    NATS_CREDS, NATS_NKEY, NATS_PASSWORD, NATS_TLS_CA, NATS_TLS_CERT, NATS_TLS_KEY, NATS_URL,
    NATS_USER, RUST_LOG, UPR_LOG_FORMAT, UPR_REMINDER_LEADS, UPR_REPLICAS,
};

/// A configuration value that could not be used; the message names the variable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{var}: {message}")]
pub struct ConfigError {
    /// The environment variable at fault.
    pub var: &'static str,
    /// What is wrong with it, for a person.
    pub message: String,
}

/// Where the services look for NATS when `NATS_URL` is unset.
pub const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";

/// How to reach NATS.
#[derive(Debug, Clone)]
pub struct NatsConfig {
    /// `NATS_URL`, default `nats://127.0.0.1:4222`; a comma-separated list is
    /// allowed so a client can fail over between cluster nodes.
    pub url: String,
    /// `url` parsed, once, at start-up: what the client connects to.
    pub servers: Vec<async_nats::ServerAddr>,
    /// `NATS_CREDS`: a credentials file (JWT + nkey).
    pub creds: Option<PathBuf>,
    /// `NATS_NKEY`: a file holding a user's nkey seed (what `upr-keys`
    /// generates and the shipped server configuration expects).
    pub nkey: Option<PathBuf>,
    /// `NATS_USER` / `NATS_PASSWORD`.
    pub user_password: Option<(String, String)>,
    /// `NATS_TLS_CA`: the CA that signed the server's certificate; when set,
    /// the connection must be TLS.
    pub tls_ca: Option<PathBuf>,
    /// `NATS_TLS_CERT` / `NATS_TLS_KEY`: a client certificate, for servers
    /// that verify their clients.
    pub tls_client: Option<(PathBuf, PathBuf)>,
}

/// Settings every service shares.
#[derive(Debug, Clone)]
pub struct CommonConfig {
    /// Connection settings.
    pub nats: NatsConfig,
    /// `UPR_REPLICAS`: replicas of the streams and buckets a service creates.
    pub replicas: usize,
}

/// Reads one variable through a lookup function, so tests can pass a map
/// instead of mutating the process environment.
pub type Lookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The process environment as a [`Lookup`]; empty values count as unset. A
/// value that is not valid Unicode is passed on with the bad bytes replaced
/// by U+FFFD, so it fails its own check naming the variable instead of
/// silently counting as unset.
pub fn process_env(name: &str) -> Option<String> {
    std::env::var_os(name)
        .map(|v| v.to_string_lossy().into_owned())
        .filter(|v| !v.trim().is_empty())
}

impl CommonConfig {
    /// Reads the shared settings.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the variable when a value cannot be used.
    pub fn from_lookup(env: Lookup<'_>) -> Result<Self, ConfigError> {
        let url = env(NATS_URL).unwrap_or_else(|| DEFAULT_NATS_URL.to_string());
        let servers = url
            .split(',')
            .map(|one| {
                one.trim()
                    .parse::<async_nats::ServerAddr>()
                    .map_err(|e| err(NATS_URL, &format!("{one:?} is not a NATS URL: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let file = |var: &'static str| -> Result<Option<PathBuf>, ConfigError> {
            let Some(path) = env(var).map(PathBuf::from) else {
                return Ok(None);
            };
            std::fs::File::open(&path)
                .map_err(|e| err(var, &format!("cannot read {}: {e}", path.display())))?;
            Ok(Some(path))
        };
        let creds = file(NATS_CREDS)?;
        let nkey = file(NATS_NKEY)?;
        let user_password = match (env(NATS_USER), env(NATS_PASSWORD)) {
            (Some(u), Some(p)) => Some((u, p)),
            (None, None) => None,
            (Some(_), None) => {
                return Err(err(NATS_PASSWORD, &format!("must be set with {NATS_USER}")));
            }
            (None, Some(_)) => {
                return Err(err(NATS_USER, &format!("must be set with {NATS_PASSWORD}")));
            }
        };
        let ways = [creds.is_some(), nkey.is_some(), user_password.is_some()];
        if ways.iter().filter(|set| **set).count() > 1 {
            let var = if creds.is_some() {
                NATS_CREDS
            } else {
                NATS_NKEY
            };
            return Err(err(
                var,
                &format!(
                    "set one of {NATS_CREDS}, {NATS_NKEY} or {NATS_USER}/{NATS_PASSWORD}, not several"
                ),
            ));
        }
        let tls_ca = file(NATS_TLS_CA)?;
        let tls_client = match (file(NATS_TLS_CERT)?, file(NATS_TLS_KEY)?) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            (Some(_), None) => {
                return Err(err(
                    NATS_TLS_KEY,
                    &format!("must be set with {NATS_TLS_CERT}"),
                ));
            }
            (None, Some(_)) => {
                return Err(err(
                    NATS_TLS_CERT,
                    &format!("must be set with {NATS_TLS_KEY}"),
                ));
            }
        };
        if let Some(filter) = env(RUST_LOG) {
            tracing_subscriber::EnvFilter::try_new(&filter)
                .map_err(|e| err(RUST_LOG, &format!("{filter:?} is not a log filter: {e}")))?;
        }
        if let Some(format) = env(UPR_LOG_FORMAT)
            && !["json", "text"].contains(&format.trim().to_ascii_lowercase().as_str())
        {
            return Err(err(
                UPR_LOG_FORMAT,
                &format!("must be json or text, got {format:?}"),
            ));
        }
        let replicas = match env(UPR_REPLICAS) {
            None => 1,
            Some(v) => match v.trim().parse::<usize>() {
                Ok(n @ 1..=5) => n,
                _ => return Err(err(UPR_REPLICAS, &format!("must be 1 to 5, got {v:?}"))),
            },
        };
        Ok(Self {
            nats: NatsConfig {
                url,
                servers,
                creds,
                nkey,
                user_password,
                tls_ca,
                tls_client,
            },
            replicas,
        })
    }
}

/// A [`Lookup`] over fixed pairs instead of the process environment, so
/// configuration parsing is tested without mutating global state.
pub fn lookup_pairs(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
    let map: std::collections::HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |k| map.get(k).cloned()
}

/// Builds a [`ConfigError`].
pub fn err(var: &'static str, message: &str) -> ConfigError {
    ConfigError {
        var,
        message: message.to_string(),
    }
}

/// `UPR_REMINDER_LEADS` (default `30d,7d,1d`), longest first: the notifier
/// plans a reminder per lead, and the calendar query gives each scheduled
/// review an alarm per lead.
///
/// # Errors
/// A [`ConfigError`] naming the variable for a list like `30d,7x`.
pub fn reminder_leads(env: Lookup<'_>) -> Result<Vec<crate::domain::Lead>, ConfigError> {
    use crate::contract::notifier as names;
    let spec = env(UPR_REMINDER_LEADS).unwrap_or_else(|| names::DEFAULT_LEADS.to_string());
    crate::domain::parse_leads(&spec).map_err(|e| {
        err(
            UPR_REMINDER_LEADS,
            &format!("{e} (units s, m, h, d, w; for example 30d,7d,1d)"),
        )
    })
}

/// Parses a duration such as `90s`, `10m`, `1h`, `2d`, `1w` (the units of
/// `UPR_REMINDER_LEADS`), for duration-valued variables.
///
/// # Errors
/// A [`ConfigError`] naming `var` when the text is not a positive whole number
/// followed by one of the units.
pub fn parse_duration(var: &'static str, text: &str) -> Result<Duration, ConfigError> {
    let text = text.trim();
    let bad = || {
        err(
            var,
            &format!(
                "expected a positive whole number and a unit s, m, h, d or w (like 10m), got {text:?}"
            ),
        )
    };
    // Split before the last character, not the last byte: `1é` must be
    // refused, not cut inside a character.
    let cut = text.char_indices().last().map_or(0, |(i, _)| i);
    let (digits, unit) = text.split_at(cut);
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let unit_secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 604_800,
        _ => return Err(bad()),
    };
    if n == 0 {
        return Err(bad());
    }
    n.checked_mul(unit_secs)
        .map(Duration::from_secs)
        .ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::lookup_pairs as lookup;

    #[test]
    fn defaults_point_at_a_local_server_with_one_replica() {
        let c = CommonConfig::from_lookup(&lookup(&[])).unwrap();
        assert_eq!(c.nats.url, "nats://127.0.0.1:4222");
        assert_eq!(c.replicas, 1);
        assert!(c.nats.creds.is_none() && c.nats.user_password.is_none());
    }

    #[test]
    fn bad_values_name_their_variable() {
        let e = CommonConfig::from_lookup(&lookup(&[("UPR_REPLICAS", "0")])).unwrap_err();
        assert_eq!(e.var, "UPR_REPLICAS");
        let e = CommonConfig::from_lookup(&lookup(&[("NATS_USER", "x")])).unwrap_err();
        assert_eq!(e.var, "NATS_PASSWORD");
        let e = CommonConfig::from_lookup(&lookup(&[
            ("NATS_USER", "x"),
            ("NATS_PASSWORD", "y"),
            ("NATS_CREDS", "/c"),
        ]))
        .unwrap_err();
        assert_eq!(e.var, "NATS_CREDS");
        let e = CommonConfig::from_lookup(&lookup(&[
            ("NATS_USER", "x"),
            ("NATS_PASSWORD", "y"),
            ("NATS_NKEY", "/k"),
        ]))
        .unwrap_err();
        assert_eq!(e.var, "NATS_NKEY");
        let e = CommonConfig::from_lookup(&lookup(&[("NATS_TLS_CERT", "Cargo.toml")])).unwrap_err();
        assert_eq!(e.var, "NATS_TLS_KEY");
        for (var, bad) in [
            ("NATS_URL", "nats://127.0.0.1:4222,nats://[::1"),
            ("NATS_URL", "é://x"),
            ("NATS_NKEY", "/no/such/seed.nk"),
            ("NATS_CREDS", "/no/such.creds"),
            ("NATS_TLS_CA", "/no/such/ca.pem"),
            ("RUST_LOG", "info,[=é"),
            ("UPR_LOG_FORMAT", "yaml"),
            ("UPR_REPLICAS", "3é"),
            ("UPR_REPLICAS", "99999999999999999999999"),
        ] {
            let e = CommonConfig::from_lookup(&lookup(&[(var, bad)]))
                .err()
                .unwrap_or_else(|| panic!("{var}={bad:?} was accepted"));
            assert_eq!(e.var, var, "{bad:?}");
        }
    }

    #[test]
    fn durations_take_the_lead_time_units() {
        assert_eq!(
            parse_duration("X", "10m").unwrap(),
            Duration::from_secs(600)
        );
        assert_eq!(
            parse_duration("X", "1w").unwrap(),
            Duration::from_secs(604_800)
        );
        for bad in [
            "",
            "10",
            "m",
            "0s",
            "-1s",
            "1.5h",
            "10y",
            "1é",
            "é",
            "1\u{fffd}",
            "99999999999999999999w",
        ] {
            assert_eq!(parse_duration("X", bad).unwrap_err().var, "X", "{bad}");
        }
    }
}
