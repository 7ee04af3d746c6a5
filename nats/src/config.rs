//! Settings read from the environment (contract section 6).
//!
//! Everything is read once at start-up into plain structs, so a bad value stops
//! the service before it touches NATS, with a message naming the variable.

use std::fmt::Write as _;
use std::{path::PathBuf, time::Duration};

// The gateway's live notifications and webhooks.
use crate::contract::env::{UPR_SSE_MAX_CLIENTS, UPR_WEBHOOK_RETRY_MAX, UPR_WEBHOOKS};
use crate::contract::{
    env::{
        NATS_CREDS, NATS_NKEY, NATS_PASSWORD, NATS_SERVER_BIN, NATS_TLS_CA, NATS_TLS_CERT,
        NATS_TLS_KEY, NATS_URL, NATS_USER, RUST_LOG, UPR_DEDUP_WINDOW, UPR_EDITORS,
        UPR_HEALTH_FILE, UPR_HTTP_ADDR, UPR_HTTP_MAX_REQUESTS, UPR_INGEST_CACHE,
        UPR_INGEST_WORKERS, UPR_INTAKE_RATE, UPR_LOG_FORMAT, UPR_PROJECTION_BATCH,
        UPR_PROJECTION_CACHE_MB, UPR_READER_CONSUMERS, UPR_REMINDER_LEADS, UPR_REPLICAS,
    },
    services,
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
        // A file holding a private key: refused when group or others may
        // read it, as ssh refuses such a private key. Only a refusal is
        // seen: a warning scrolls by in a container's log while the key
        // stays readable.
        let secret = |var: &'static str| -> Result<Option<PathBuf>, ConfigError> {
            let path = file(var)?;
            if let Some(path) = &path {
                private_file(path).map_err(|message| err(var, &message))?;
            }
            Ok(path)
        };
        let creds = secret(NATS_CREDS)?;
        let nkey = secret(NATS_NKEY)?;
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
        let tls_client = match (file(NATS_TLS_CERT)?, secret(NATS_TLS_KEY)?) {
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

/// `Ok` when only its owner may read `path` (no group or other permission
/// bits), else what is wrong and the command that fixes it.
fn private_file(path: &std::path::Path) -> Result<(), String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?
            .permissions()
            .mode()
            & 0o777;
        if mode & 0o077 != 0 {
            return Err(format!(
                "{} is readable by others (mode {mode:o}); a key file must be private to its \
                 owner: chmod 600 {}",
                path.display(),
                path.display()
            ));
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// Builds a [`ConfigError`].
pub fn err(var: &'static str, message: &str) -> ConfigError {
    ConfigError {
        var,
        message: message.to_string(),
    }
}

/// One environment variable, as `--help` documents it.
#[derive(Debug, Clone, Copy)]
pub struct Setting {
    /// Its name, from [`crate::contract::env`].
    pub var: &'static str,
    /// What applies when it is unset, as a person would write it; empty
    /// when unset means "not used" (the NATS credentials, TLS files).
    pub default: &'static str,
    /// What it changes, in one line.
    pub meaning: &'static str,
    /// The binaries that read it.
    pub used_by: &'static [&'static str],
}

const SERVICES: &[&str] = &[
    services::INGEST,
    services::PROJECTION,
    services::NOTIFIER,
    services::GATEWAY,
];

/// The binaries that register as NATS micro services (the gateway's health
/// is its HTTP `/healthz`, so it writes no health file).
const MICRO_SERVICES: &[&str] = &[services::INGEST, services::PROJECTION, services::NOTIFIER];

/// Every variable the binaries read, in the order `--help` lists them. The
/// defaults are the ones the readers above apply (a test in each service
/// checks that setting a variable to its listed default changes nothing),
/// so the help cannot drift from the code without a test failing.
pub const SETTINGS: &[Setting] = &[
    Setting {
        var: NATS_URL,
        default: DEFAULT_NATS_URL,
        meaning: "Server URL; a comma-separated list fails over between cluster nodes",
        used_by: SERVICES,
    },
    Setting {
        var: NATS_NKEY,
        default: "",
        meaning: "A file holding the user's nkey seed (what upr-keys generates)",
        used_by: SERVICES,
    },
    Setting {
        var: NATS_USER,
        default: "",
        meaning: "User name, with NATS_PASSWORD",
        used_by: SERVICES,
    },
    Setting {
        var: NATS_PASSWORD,
        default: "",
        meaning: "Password, with NATS_USER",
        used_by: SERVICES,
    },
    Setting {
        var: NATS_CREDS,
        default: "",
        meaning: "A credentials file (JWT + nkey); only one of NATS_NKEY, NATS_USER, NATS_CREDS",
        used_by: SERVICES,
    },
    Setting {
        var: NATS_TLS_CA,
        default: "",
        meaning: "CA of the server's certificate; when set, the connection must be TLS",
        used_by: SERVICES,
    },
    Setting {
        var: NATS_TLS_CERT,
        default: "",
        meaning: "Client certificate, with NATS_TLS_KEY, for servers that verify clients",
        used_by: SERVICES,
    },
    Setting {
        var: NATS_TLS_KEY,
        default: "",
        meaning: "Key of the client certificate, with NATS_TLS_CERT",
        used_by: SERVICES,
    },
    Setting {
        var: UPR_REPLICAS,
        default: "1",
        meaning: "Replicas of the streams and buckets the service creates (1 to 5)",
        used_by: SERVICES,
    },
    Setting {
        var: RUST_LOG,
        default: crate::telemetry::DEFAULT_FILTER,
        meaning: "Log filter, e.g. debug or info,async_nats=warn",
        used_by: SERVICES,
    },
    Setting {
        var: UPR_LOG_FORMAT,
        default: "text",
        meaning: "json for one JSON object per log line, or text",
        used_by: SERVICES,
    },
    Setting {
        var: UPR_HEALTH_FILE,
        default: "<temp dir>/<binary>.health",
        meaning: "Where the running service writes its id, so healthcheck pings that instance",
        used_by: MICRO_SERVICES,
    },
    Setting {
        var: UPR_DEDUP_WINDOW,
        default: "1h",
        meaning: "JetStream de-duplication window of UPR_EVENTS (units s, m, h, d, w)",
        used_by: &[services::INGEST],
    },
    Setting {
        var: UPR_INGEST_WORKERS,
        default: "256",
        meaning: "Reviews appended to concurrently",
        used_by: &[services::INGEST],
    },
    Setting {
        var: UPR_INGEST_CACHE,
        default: "100000",
        meaning: "Reviews whose state is kept in memory",
        used_by: &[services::INGEST],
    },
    Setting {
        var: UPR_INTAKE_RATE,
        default: "200",
        meaning: "Intake messages per second each party (NATS account) may send to one replica; past it unavailable",
        used_by: &[services::INGEST],
    },
    Setting {
        var: UPR_EDITORS,
        default: "",
        meaning: "Parties that may retract any event, comma-separated names (others only their own)",
        used_by: &[services::INGEST],
    },
    Setting {
        var: UPR_PROJECTION_BATCH,
        default: "10000",
        meaning: "Most events folded per batch before the read models are written",
        used_by: &[services::PROJECTION],
    },
    Setting {
        var: UPR_PROJECTION_CACHE_MB,
        default: "20",
        meaning: "Memory for read-model values kept between batches, in MiB",
        used_by: &[services::PROJECTION],
    },
    Setting {
        var: UPR_REMINDER_LEADS,
        default: crate::contract::notifier::DEFAULT_LEADS,
        meaning: "Reminder lead times before a review (the calendar's alarms in the projection)",
        used_by: &[services::PROJECTION, services::NOTIFIER],
    },
    Setting {
        var: UPR_READER_CONSUMERS,
        default: crate::contract::notifier::DEFAULT_READER_CONSUMERS,
        meaning: "Durable consumers on UPR_NOTIFICATIONS kept for readers (comma-separated, or none)",
        used_by: &[services::NOTIFIER],
    },
    Setting {
        var: UPR_HTTP_ADDR,
        default: crate::contract::gateway::DEFAULT_HTTP_ADDR,
        meaning: "Address the HTTP server listens on (0.0.0.0:8080 in a container)",
        used_by: &[services::GATEWAY],
    },
    Setting {
        var: UPR_HTTP_MAX_REQUESTS,
        default: crate::contract::gateway::DEFAULT_MAX_REQUESTS,
        meaning: "HTTP requests in progress at once; past it the gateway answers 503 at once",
        used_by: &[services::GATEWAY],
    },
    Setting {
        var: UPR_SSE_MAX_CLIENTS,
        default: crate::contract::gateway::DEFAULT_SSE_MAX_CLIENTS,
        meaning: "GET /events streams open at once (not counted in UPR_HTTP_MAX_REQUESTS); past it 503",
        used_by: &[services::GATEWAY],
    },
    Setting {
        var: UPR_WEBHOOKS,
        default: "",
        meaning: "A JSON file listing webhook subscriptions (docs/webhooks.md); unset: none",
        used_by: &[services::GATEWAY],
    },
    Setting {
        var: UPR_WEBHOOK_RETRY_MAX,
        default: crate::contract::gateway::DEFAULT_WEBHOOK_RETRY_MAX,
        meaning: "Longest pause between two attempts at a webhook (units s, m, h, d, w)",
        used_by: &[services::GATEWAY],
    },
    Setting {
        var: NATS_SERVER_BIN,
        default: "nats-server from .tools/, then PATH",
        meaning: "The nats-server binary to start",
        used_by: &[BENCH],
    },
];

/// The benchmark binary, for [`SETTINGS`] (it is not a NATS micro service).
pub const BENCH: &str = "upr-bench";

/// The settings `binary` reads.
pub fn settings_of(binary: &str) -> impl Iterator<Item = &'static Setting> + use<'_> {
    SETTINGS.iter().filter(move |s| s.used_by.contains(&binary))
}

/// The `--help` section listing the variables `binary` reads, with their
/// defaults; the settings are environment variables so that compose files
/// and supervisors configure every binary the same way, hence no flags.
pub fn settings_help(binary: &str) -> String {
    let mut text = String::from("Environment variables:\n");
    for s in settings_of(binary) {
        let _ = write!(text, "  {}", s.var);
        if !s.default.is_empty() {
            let _ = write!(
                text,
                "  [default: {}]",
                s.default.replace("<binary>", binary)
            );
        }
        let _ = writeln!(text, "\n          {}", s.meaning);
    }
    text
}

/// Checks `binary`'s [`SETTINGS`] against its configuration reader `read`:
/// every variable it reads is listed, every listed one is read, and setting
/// one to its listed default changes nothing. For the services' tests, so a
/// new variable or a changed default cannot leave `--help` behind.
///
/// # Panics
/// On the first disagreement, naming the variable.
pub fn check_settings<T: std::fmt::Debug>(
    binary: &str,
    read: impl Fn(Lookup<'_>) -> Result<T, ConfigError>,
) {
    let asked = std::sync::Mutex::new(Vec::new());
    let unset = read(&|var: &str| {
        asked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(var.to_string());
        None
    })
    .unwrap_or_else(|e| panic!("{binary}: the defaults do not read: {e}"));
    let asked = asked
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let listed: Vec<&Setting> = settings_of(binary).collect();
    for var in &asked {
        assert!(
            listed.iter().any(|s| s.var == var),
            "{binary} reads {var} but its --help does not list it"
        );
    }
    // The health file is read when the micro service starts, not here.
    for s in listed.iter().filter(|s| s.var != UPR_HEALTH_FILE) {
        assert!(
            asked.iter().any(|var| var == s.var),
            "{binary}'s --help lists {} but it does not read it",
            s.var
        );
        if s.default.is_empty() {
            continue;
        }
        let set = read(&lookup_pairs(&[(s.var, s.default)]))
            .unwrap_or_else(|e| panic!("the listed default of {} is refused: {e}", s.var));
        assert_eq!(
            format!("{set:?}"),
            format!("{unset:?}"),
            "{}={} is not what {binary} does when it is unset",
            s.var,
            s.default
        );
    }
}

/// `UPR_REMINDER_LEADS` (default `30d,7d,1d`), longest first: the notifier
/// plans a reminder per lead, and the calendar query gives each scheduled
/// review an alarm per lead.
///
/// # Errors
/// A [`ConfigError`] naming the variable for a list like `30d,7x`.
pub fn reminder_leads(env: Lookup<'_>) -> Result<Vec<upr_domain::Lead>, ConfigError> {
    use crate::contract::notifier as names;
    let spec = env(UPR_REMINDER_LEADS).unwrap_or_else(|| names::DEFAULT_LEADS.to_string());
    upr_domain::parse_leads(&spec).map_err(|e| {
        err(
            UPR_REMINDER_LEADS,
            &format!("{e} (units s, m, h, d, w; for example 30d,7d,1d)"),
        )
    })
}

/// A count setting such as `UPR_INGEST_WORKERS`: `default` when unset,
/// else a whole number from 1 to `max`.
///
/// # Errors
/// A [`ConfigError`] naming `var` for anything else (`0`, `-3`, `lots`, or
/// more than `max`).
pub fn whole_number(
    env: Lookup<'_>,
    var: &'static str,
    default: usize,
    max: usize,
) -> Result<usize, ConfigError> {
    let Some(v) = env(var) else {
        return Ok(default);
    };
    v.trim()
        .parse::<usize>()
        .ok()
        .filter(|n| (1..=max).contains(n))
        .ok_or_else(|| {
            err(
                var,
                &format!("must be a whole number from 1 to {max}, got {v:?}"),
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
    // A leading `+` has always been taken (integer parsing allows it), so a
    // setting written that way keeps working.
    let span = text.strip_prefix('+').unwrap_or(text);
    upr_domain::parse_span(span)
        .map(|s| Duration::from_secs(s.secs))
        .map_err(|_| bad())
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
    fn a_key_file_others_can_read_is_refused_with_its_path() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("ingest.nk");
        std::fs::write(&key, "SUAKEY").unwrap();
        let path = key.to_str().unwrap();
        for (var, extra) in [
            ("NATS_NKEY", None),
            ("NATS_CREDS", None),
            ("NATS_TLS_KEY", Some(("NATS_TLS_CERT", "Cargo.toml"))),
        ] {
            for mode in [0o644, 0o640, 0o604, 0o660] {
                std::fs::set_permissions(&key, std::fs::Permissions::from_mode(mode)).unwrap();
                let mut pairs = vec![(var, path)];
                pairs.extend(extra);
                let e = CommonConfig::from_lookup(&lookup(&pairs)).unwrap_err();
                assert_eq!(e.var, var, "{mode:o}");
                assert!(
                    e.message.contains(path) && e.message.contains("chmod 600"),
                    "{e}"
                );
            }
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
            let mut pairs = vec![(var, path)];
            pairs.extend(extra);
            CommonConfig::from_lookup(&lookup(&pairs))
                .unwrap_or_else(|e| panic!("{var} at 0600 refused: {e}"));
        }
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
    #[should_panic(expected = "does not read it")]
    fn a_listed_variable_nothing_reads_is_caught() {
        check_settings(services::INGEST, CommonConfig::from_lookup);
    }

    #[test]
    fn whole_numbers_are_bounded_and_default_when_unset() {
        let var = UPR_REPLICAS;
        assert_eq!(whole_number(&lookup(&[]), var, 7, 10), Ok(7));
        assert_eq!(whole_number(&lookup(&[(var, " 10 ")]), var, 7, 10), Ok(10));
        for bad in ["0", "11", "-1", "lots", ""] {
            let e = whole_number(&lookup(&[(var, bad)]), var, 7, 10).unwrap_err();
            assert_eq!(e.var, var);
            assert_eq!(
                e.message,
                format!("must be a whole number from 1 to 10, got {bad:?}")
            );
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
        // Blanks around it and a leading `+` are taken, as they always were.
        assert_eq!(
            parse_duration("X", " +10m ").unwrap(),
            Duration::from_secs(600)
        );
        for bad in [
            "",
            "10",
            "m",
            "0s",
            "-1s",
            "1.5h",
            "10y",
            "++1s",
            "+",
            "1é",
            "é",
            "1\u{fffd}",
            "99999999999999999999w",
        ] {
            assert_eq!(parse_duration("X", bad).unwrap_err().var, "X", "{bad}");
        }
    }
}
