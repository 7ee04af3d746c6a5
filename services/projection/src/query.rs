//! The query API, served as endpoints of the `upr-projection` NATS micro
//! service under `upr.query`.
//!
//! Each request is answered in its own task, reading KV or the in-memory
//! upcoming index, so a slow query or a `min_seq` wait never holds up the
//! consumer loop. Values are returned as stored, byte for byte, wrapped in
//! `{"ok":true,"review":…}`.
//!
//! Waiting is bounded apart from reading: at most [`MAX_IN_FLIGHT`]
//! requests read at once, at most [`MAX_WAITING`] wait for a `min_seq` (one
//! more is answered `unavailable` at once), and a waiting request holds no
//! read permit, so a flood of requests for a sequence far ahead cannot take
//! the permits that plain reads need. A `min_seq` beyond the event log's
//! last sequence is answered `invalid_field` at once (contract V3.4), and
//! one party (the requester's account, from the `Nats-Request-Info` header
//! the server adds on an import) may hold at most [`MAX_WAITING_PER_PARTY`]
//! of the waits, so it cannot take the others' read-your-writes. A payload is at most
//! [`MAX_QUERY_PAYLOAD`] bytes and read by the same strict JSON reader as
//! intake (no duplicate keys, bounded nesting).

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use async_nats::{
    HeaderMap,
    service::{Service, endpoint::Endpoint},
};
use bytes::Bytes;
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::{sync::Semaphore, task::JoinHandle};
use tracing::{Instrument, debug, info_span, warn};
use upr_domain::{
    Country, ErrorCode, Lead, RejectError, ReviewKey, Session, Timestamp, calendar,
    json::parse_strict,
};
use upr_nats::contract::query;

use crate::{state::Shared, store::Store};

/// Requests reading at once; more wait in the subscription's buffer.
pub const MAX_IN_FLIGHT: usize = 256;

/// How long a query waits for `min_seq` before answering `timeout`.
pub const MIN_SEQ_WAIT: Duration = Duration::from_secs(5);

/// Requests waiting for a `min_seq` at once; past it, `unavailable`. A
/// waiter costs a task and a watch receiver, so this can be generous: it is
/// what a client at 1,000 requests/s reading its own writes needs, and what
/// stops a flood from growing without bound.
pub const MAX_WAITING: usize = 1024;

/// Of [`MAX_WAITING`], what one party may hold at once: a quarter, so one
/// account flooding waits leaves the others three quarters.
pub const MAX_WAITING_PER_PARTY: usize = MAX_WAITING / 4;

/// The party of a request without a `Nats-Request-Info` header: one from
/// inside the service account (the gateway, an operator) or from a server
/// without accounts. They are held by the overall [`MAX_WAITING`] only.
pub const LOCAL_PARTY: &str = "local";

/// Largest query payload accepted, in bytes (a query's options fit in a
/// hundred); larger is `too_large`.
pub const MAX_QUERY_PAYLOAD: usize = 1024;

/// Longest `within_days` accepted (a century), so the horizon stays a date.
const MAX_WITHIN_DAYS: u64 = 36_500;

/// What a request asks for, from its subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Query {
    /// `upr.query.review.<COUNTRY>.<session>`.
    Review(ReviewKey),
    /// `upr.query.session.<session>`.
    Session(Session),
    /// `upr.query.country.<COUNTRY>`.
    Country(Country),
    /// `upr.query.upcoming`.
    Upcoming,
    /// `upr.query.status`.
    Status,
    /// `upr.query.calendar` (every state) or `upr.query.calendar.<COUNTRY>`.
    Calendar(Option<Country>),
}

impl Query {
    /// Reads the subject; a malformed country or session is `invalid_field`
    /// naming it.
    ///
    /// # Errors
    /// `invalid_field` (`country` / `session`), or `invalid_field` with no
    /// field for a subject that is not a query at all.
    pub fn parse(subject: &str) -> Result<Self, RejectError> {
        let rest = query::tail(subject).unwrap_or("");
        let parts: Vec<&str> = rest.split('.').collect();
        let country = |t: &str| Country::parse(t).map_err(|e| RejectError::invalid("country", e));
        let session = |t: &str| Session::parse(t).map_err(|e| RejectError::invalid("session", e));
        match parts.as_slice() {
            ["review", c, s] => Ok(Self::Review(ReviewKey {
                country: country(c)?,
                session: session(s)?,
            })),
            ["session", s] => Ok(Self::Session(session(s)?)),
            ["country", c] => Ok(Self::Country(country(c)?)),
            ["upcoming"] => Ok(Self::Upcoming),
            ["status"] => Ok(Self::Status),
            ["calendar"] => Ok(Self::Calendar(None)),
            ["calendar", c] => Ok(Self::Calendar(Some(country(c)?))),
            _ => Err(RejectError::new(
                ErrorCode::InvalidField,
                format!("{subject} is not a query subject"),
            )),
        }
    }
}

/// The optional payload of a query.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Options {
    /// Answer only once this stream sequence is applied.
    pub min_seq: Option<u64>,
    /// `upcoming` only: no later than this many days from now.
    pub within_days: Option<u32>,
    /// `upcoming` only: this country's reviews.
    pub country: Option<Country>,
}

impl Options {
    /// Parses the payload: empty means no options; otherwise a JSON object
    /// with `min_seq` (any query) and `within_days` / `country` (`upcoming`
    /// only). `null` counts as absent; any other key is refused.
    ///
    /// # Errors
    /// `invalid_json` when the payload is not a JSON object; `invalid_field`
    /// naming the field otherwise.
    pub fn parse(payload: &[u8], query: Query) -> Result<Self, RejectError> {
        if payload.len() > MAX_QUERY_PAYLOAD {
            return Err(RejectError::too_large(payload.len(), MAX_QUERY_PAYLOAD));
        }
        if payload.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self::default());
        }
        let value: Value = parse_strict(payload).map_err(RejectError::invalid_json)?;
        let Value::Object(map) = value else {
            return Err(RejectError::invalid_json(
                "expected an object like {\"min_seq\": 42}",
            ));
        };
        let upcoming = query == Query::Upcoming;
        let mut options = Self::default();
        for (key, value) in &map {
            if value.is_null() {
                continue;
            }
            match key.as_str() {
                "min_seq" => {
                    let n = value.as_u64().ok_or_else(|| {
                        RejectError::invalid("min_seq", "must be a whole number >= 0")
                    })?;
                    options.min_seq = Some(n);
                }
                "within_days" if upcoming => {
                    let n = value
                        .as_u64()
                        .filter(|n| *n <= MAX_WITHIN_DAYS)
                        .ok_or_else(|| {
                            RejectError::invalid(
                                "within_days",
                                format_args!("must be a whole number from 0 to {MAX_WITHIN_DAYS}"),
                            )
                        })?;
                    options.within_days = u32::try_from(n).ok();
                }
                "country" if upcoming => {
                    let text = value.as_str().ok_or_else(|| {
                        RejectError::invalid("country", "must be a string like \"KZ\"")
                    })?;
                    options.country =
                        Some(Country::parse(text).map_err(|e| RejectError::invalid("country", e))?);
                }
                other => {
                    let allowed: &[&str] = if upcoming {
                        &["min_seq", "within_days", "country"]
                    } else {
                        &["min_seq"]
                    };
                    return Err(RejectError::unknown_field(other, allowed));
                }
            }
        }
        Ok(options)
    }
}

/// An answer: JSON, or an iCalendar document (sent with its content type).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// `{"ok": …}`.
    Json(Bytes),
    /// `text/calendar`.
    Calendar(Bytes),
}

impl Answer {
    /// The payload.
    pub fn body(&self) -> &Bytes {
        match self {
            Self::Json(b) | Self::Calendar(b) => b,
        }
    }
}

/// What the handlers read.
#[derive(Clone)]
pub struct Queries {
    store: Store,
    shared: Arc<Shared>,
    /// The reminder leads, one calendar alarm each.
    leads: Arc<Vec<Lead>>,
    /// Permits to wait for a `min_seq` ([`MAX_WAITING`]).
    waiting: Arc<Semaphore>,
    /// Permits to read ([`MAX_IN_FLIGHT`]).
    reading: Arc<Semaphore>,
    /// Waits held by each party ([`MAX_WAITING_PER_PARTY`]).
    parties: Arc<PartyWaits>,
    /// The highest last sequence of the event log seen so far: a `min_seq`
    /// at or below it is in the log, so checking costs nothing.
    known_last: Arc<AtomicU64>,
    /// One look at the event log's last sequence at a time, holding the
    /// number of the last look done; the requests waiting meanwhile use it.
    looking: Arc<tokio::sync::Mutex<u64>>,
    /// Looks started so far.
    looks: Arc<AtomicU64>,
}

/// How many `min_seq` waits each party holds.
#[derive(Debug, Default)]
pub struct PartyWaits {
    held: Mutex<HashMap<String, usize>>,
}

/// One wait held by a party, given back when dropped.
#[derive(Debug)]
pub struct PartyWait {
    waits: Arc<PartyWaits>,
    party: String,
}

impl PartyWaits {
    /// Takes one of `party`'s [`MAX_WAITING_PER_PARTY`] waits, or `None`
    /// when it holds them all.
    pub fn try_take(self: &Arc<Self>, party: &str) -> Option<PartyWait> {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let n = held.entry(party.to_string()).or_default();
        // The service account (the gateway, which bounds its own clients;
        // an operator) and a server without accounts are no party: only the
        // overall MAX_WAITING holds them, as before parties existed.
        let cap = if party == LOCAL_PARTY {
            MAX_WAITING
        } else {
            MAX_WAITING_PER_PARTY
        };
        if *n >= cap {
            return None;
        }
        *n += 1;
        Some(PartyWait {
            waits: self.clone(),
            party: party.to_string(),
        })
    }

    /// Waits `party` holds now.
    pub fn held(&self, party: &str) -> usize {
        let held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        held.get(party).copied().unwrap_or(0)
    }
}

impl Drop for PartyWait {
    fn drop(&mut self) {
        let mut held = self
            .waits
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = held.get_mut(&self.party) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.party);
            }
        }
    }
}

/// The requester's account, from the `Nats-Request-Info` header
/// (`{"acc": "<account>", ...}`) that nats-server puts on a request crossing
/// a service import, replacing any header of that name the client sent; no
/// header (a request from inside the service account) is [`LOCAL_PARTY`].
pub fn party(headers: Option<&HeaderMap>) -> String {
    upr_nats::service::requester_account(headers).unwrap_or_else(|| LOCAL_PARTY.to_string())
}

fn error(e: &RejectError) -> Bytes {
    Bytes::from(json!({"ok": false, "error": e}).to_string())
}

/// `{"ok":true,"<name>":<value as stored>}` without re-encoding the value.
fn wrap(name: &str, value: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(value.len() + name.len() + 16);
    out.extend_from_slice(b"{\"ok\":true,\"");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\":");
    out.extend_from_slice(value);
    out.push(b'}');
    Bytes::from(out)
}

impl Queries {
    /// Handlers over these buckets and this shared state.
    pub fn new(store: Store, shared: Arc<Shared>, leads: Vec<Lead>) -> Self {
        Self {
            store,
            shared,
            leads: Arc::new(leads),
            waiting: Arc::new(Semaphore::new(MAX_WAITING)),
            reading: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
            parties: Arc::new(PartyWaits::default()),
            known_last: Arc::new(AtomicU64::new(0)),
            looking: Arc::new(tokio::sync::Mutex::new(0)),
            looks: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The reply to one request from inside the service account.
    pub async fn answer(&self, subject: &str, payload: &[u8]) -> Answer {
        self.answer_for(LOCAL_PARTY, subject, payload).await
    }

    /// The reply to one request from `party` (see [`party`]).
    pub async fn answer_for(&self, party: &str, subject: &str, payload: &[u8]) -> Answer {
        match self.try_answer(party, subject, payload).await {
            Ok(reply) => reply,
            Err(e) => Answer::Json(error(&e)),
        }
    }

    #[expect(
        clippy::too_many_lines,
        reason = "one match over the query kinds, each arm a few lines; split, the options would be passed around for nothing"
    )]
    async fn try_answer(
        &self,
        party: &str,
        subject: &str,
        payload: &[u8],
    ) -> Result<Answer, RejectError> {
        let query = Query::parse(subject)?;
        let options = Options::parse(payload, query)?;
        if let Some(n) = options.min_seq {
            self.wait_applied(party, n).await?;
        }
        let _reading = self.reading.acquire().await.map_err(|_| {
            RejectError::new(
                ErrorCode::Unavailable,
                "the query service is stopping; retry",
            )
        })?;
        let buckets = &self.store.buckets;
        let unavailable = |e: &dyn std::fmt::Display| {
            RejectError::new(
                ErrorCode::Unavailable,
                format!("the read models cannot be read ({e}); retry"),
            )
        };
        let get = |bucket: &async_nats::jetstream::kv::Store,
                   key: String,
                   what: String,
                   name: &'static str| {
            let bucket = bucket.clone();
            async move {
                match bucket.get(key).await {
                    Ok(Some(value)) => Ok(wrap(name, &value)),
                    Ok(None) => Err(RejectError::not_found(what)),
                    Err(e) => Err(unavailable(&e)),
                }
            }
        };
        let now = || {
            Timestamp::from_unix_millis(now_millis())
                .ok_or_else(|| unavailable(&"clock out of range"))
        };
        let json = match query {
            Query::Review(key) => {
                get(
                    &buckets.reviews,
                    key.to_string(),
                    format!("review {} {}", key.country, key.session),
                    "review",
                )
                .await
            }
            Query::Session(s) => {
                get(
                    &buckets.sessions,
                    s.to_string(),
                    format!("session {s}"),
                    "session",
                )
                .await
            }
            Query::Country(c) => {
                get(
                    &buckets.countries,
                    c.to_string(),
                    format!("country {c}"),
                    "country",
                )
                .await
            }
            Query::Upcoming => {
                let reviews = self
                    .shared
                    .upcoming
                    .read()
                    .map_err(|_| unavailable(&"index poisoned"))?
                    .query(now()?, options.within_days, options.country);
                Ok(Bytes::from(
                    json!({"ok": true, "reviews": reviews}).to_string(),
                ))
            }
            Query::Status => {
                let applied = self.shared.applied_seq();
                let (last, bytes, max_bytes) = self
                    .store
                    .stream_figures()
                    .await
                    .map_err(|e| unavailable(&e))?;
                self.known_last.fetch_max(last, Ordering::Relaxed);
                let refused = self.shared.values_refused.load(Ordering::Relaxed);
                let beyond = self.shared.beyond_limits_skipped.load(Ordering::Relaxed);
                // stream_max_bytes: null when the log has no limit of its own;
                // then the account's storage limit is what it runs into.
                let max_bytes = u64::try_from(max_bytes).ok();
                let (storage, max_storage) = self
                    .store
                    .account_storage()
                    .await
                    .map_err(|e| unavailable(&e))?;
                Ok(Bytes::from(
                    json!({"ok": true, "applied_seq": applied, "stream_last_seq": last,
                           "stream_bytes": bytes, "stream_max_bytes": max_bytes,
                           "storage_bytes": storage, "storage_max_bytes": max_storage,
                           "values_refused": refused, "beyond_limits_skipped": beyond})
                    .to_string(),
                ))
            }
            Query::Calendar(country) => {
                let entries = self
                    .shared
                    .upcoming
                    .read()
                    .map_err(|_| unavailable(&"index poisoned"))?
                    .calendar(country);
                let text = calendar(&entries, &self.leads);
                return Ok(Answer::Calendar(Bytes::from(text)));
            }
        };
        json.map(Answer::Json)
    }

    /// Waits (up to [`MIN_SEQ_WAIT`]) until sequence `n` is applied. A
    /// sequence beyond the event log's last is `invalid_field` at once; when
    /// `party` already holds [`MAX_WAITING_PER_PARTY`] waits, or
    /// [`MAX_WAITING`] requests already wait, `unavailable` at once.
    async fn wait_applied(&self, party: &str, n: u64) -> Result<(), RejectError> {
        let mut applied = self.shared.watch_applied();
        if *applied.borrow() >= n {
            return Ok(());
        }
        self.check_in_log(n).await?;
        let Some(_party_wait) = self.parties.try_take(party) else {
            return Err(RejectError::new(
                ErrorCode::Unavailable,
                format!(
                    "{MAX_WAITING_PER_PARTY} of your queries already wait for a min_seq \
                     (applied: {}); retry later",
                    self.shared.applied_seq()
                ),
            ));
        };
        let Ok(_permit) = self.waiting.try_acquire() else {
            return Err(RejectError::new(
                ErrorCode::Unavailable,
                format!(
                    "{MAX_WAITING} queries already wait for a min_seq (applied: {}); retry later",
                    self.shared.applied_seq()
                ),
            ));
        };
        match tokio::time::timeout(MIN_SEQ_WAIT, applied.wait_for(|a| *a >= n)).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(RejectError::timeout(format!(
                "stream sequence {n} was not applied within {} s (applied: {}); retry later",
                MIN_SEQ_WAIT.as_secs(),
                self.shared.applied_seq()
            ))),
        }
    }

    /// `invalid_field` (`min_seq`) naming the last sequence when `n` is
    /// beyond the event log's end: an acknowledged write is always in the
    /// log, so waiting for it cannot help. Looks at the log only when `n` is
    /// above the highest last sequence already seen, one look at a time.
    async fn check_in_log(&self, n: u64) -> Result<(), RejectError> {
        if n <= self.known_last.load(Ordering::Relaxed) {
            return Ok(());
        }
        // A look that began after this request arrived saw every write
        // acknowledged before it was sent: its answer holds for this one, so
        // a flood of such requests costs one look per look, not one each.
        let arrived = self.looks.load(Ordering::SeqCst);
        let mut looked = self.looking.lock().await;
        let last = if *looked > arrived {
            self.known_last.load(Ordering::SeqCst)
        } else {
            let this = self.looks.fetch_add(1, Ordering::SeqCst) + 1;
            let last = self.store.stream_last_seq().await.map_err(|e| {
                RejectError::new(
                    ErrorCode::Unavailable,
                    format!("the event log cannot be read ({e}); retry"),
                )
            })?;
            self.known_last.fetch_max(last, Ordering::SeqCst);
            *looked = this;
            last
        };
        drop(looked);
        if n > last {
            return Err(RejectError::invalid(
                "min_seq",
                format_args!(
                    "must be at most {last}, the event log's last sequence: \
                     no acknowledged write is beyond it (got {n})"
                ),
            ));
        }
        Ok(())
    }

    /// Adds the endpoints to the micro service and answers their requests
    /// until the service stops.
    ///
    /// # Errors
    /// When subscribing fails.
    pub async fn serve(self, service: &Service) -> Result<Vec<JoinHandle<()>>, async_nats::Error> {
        let group = service.group(query::GROUP);
        // Tasks at once: every reader and every waiter, no more.
        let limit = Arc::new(Semaphore::new(MAX_IN_FLIGHT + MAX_WAITING));
        let mut tasks = Vec::new();
        for (name, subject) in query::ENDPOINTS {
            let endpoint = group.endpoint_builder().name(name).add(subject).await?;
            tasks.push(tokio::spawn(
                self.clone().serve_endpoint(endpoint, limit.clone()),
            ));
        }
        Ok(tasks)
    }

    async fn serve_endpoint(self, mut endpoint: Endpoint, limit: Arc<Semaphore>) {
        while let Some(request) = endpoint.next().await {
            // Never wait here: this loop only takes requests in, so it keeps
            // pace with the socket and the client's small buffer never fills.
            let Ok(permit) = limit.clone().try_acquire_owned() else {
                let busy = RejectError::new(
                    ErrorCode::Unavailable,
                    "too many queries in progress; retry later",
                );
                if let Err(e) = request.respond(Ok(error(&busy))).await {
                    warn!(error = %e, "cannot send the reply");
                }
                continue;
            };
            let queries = self.clone();
            let span = info_span!("query", subject = %request.message.subject);
            tokio::spawn(
                async move {
                    let party = party(request.message.headers.as_ref());
                    let reply = queries
                        .answer_for(
                            &party,
                            request.message.subject.as_str(),
                            &request.message.payload,
                        )
                        .await;
                    debug!(bytes = reply.body().len(), "answered");
                    let sent = match reply {
                        Answer::Json(body) => request.respond(Ok(body)).await,
                        Answer::Calendar(body) => {
                            let mut headers = HeaderMap::new();
                            headers.insert("Content-Type", query::CALENDAR_CONTENT_TYPE);
                            request.respond_with_headers(Ok(body), headers).await
                        }
                    };
                    if let Err(e) = sent {
                        warn!(error = %e, "cannot send the reply");
                    }
                    drop(permit);
                }
                .instrument(span),
            );
        }
    }
}

fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_endpoint_of_the_contract_parses_to_its_query() {
        for (name, pattern) in query::ENDPOINTS {
            let sample = match name {
                "review" => pattern.replacen('*', "KZ", 1).replacen('*', "48", 1),
                "session" => pattern.replace('*', "48"),
                _ => pattern.replace('*', "KZ"),
            };
            let subject = format!("{}.{sample}", query::GROUP);
            let parsed = Query::parse(&subject).unwrap_or_else(|e| panic!("{subject}: {e:?}"));
            let kind = match parsed {
                Query::Review(_) => "review",
                Query::Session(_) => "session",
                Query::Country(_) => "country",
                Query::Upcoming => "upcoming",
                Query::Status => "status",
                Query::Calendar(None) => "calendar",
                Query::Calendar(Some(_)) => "country_calendar",
            };
            assert_eq!(kind, name, "{subject}");
        }
    }

    #[test]
    fn subjects_name_the_malformed_field() {
        assert_eq!(
            Query::parse("upr.query.review.kz.48").unwrap(),
            Query::Review(ReviewKey::parse("KZ.48").unwrap())
        );
        assert_eq!(
            Query::parse("upr.query.review.XX.48")
                .unwrap_err()
                .field
                .as_deref(),
            Some("country")
        );
        assert_eq!(
            Query::parse("upr.query.review.KZ.048")
                .unwrap_err()
                .field
                .as_deref(),
            Some("session")
        );
        assert_eq!(
            Query::parse("upr.query.session.1000")
                .unwrap_err()
                .field
                .as_deref(),
            Some("session")
        );
        assert_eq!(
            Query::parse("upr.query.country.KZZ")
                .unwrap_err()
                .field
                .as_deref(),
            Some("country")
        );
        assert_eq!(Query::parse("upr.query.status").unwrap(), Query::Status);
    }

    #[test]
    fn options_are_checked_field_by_field() {
        let up = Query::Upcoming;
        assert_eq!(Options::parse(b"", up).unwrap(), Options::default());
        assert_eq!(Options::parse(b" \n", up).unwrap(), Options::default());
        let o =
            Options::parse(br#"{"within_days": 30, "country": "kz", "min_seq": 7}"#, up).unwrap();
        assert_eq!(
            (o.within_days, o.country.unwrap().as_str(), o.min_seq),
            (Some(30), "KZ", Some(7))
        );
        let code = |p: &[u8], q| {
            let e = Options::parse(p, q).unwrap_err();
            (e.code.as_str(), e.field)
        };
        assert_eq!(code(b"{", up), ("invalid_json", None));
        assert_eq!(code(b"[]", up), ("invalid_json", None));
        assert_eq!(
            code(br#"{"within_days": -1}"#, up),
            ("invalid_field", Some("within_days".into()))
        );
        assert_eq!(
            code(br#"{"within_days": "7"}"#, up),
            ("invalid_field", Some("within_days".into()))
        );
        assert_eq!(
            code(br#"{"country": "XX"}"#, up),
            ("invalid_field", Some("country".into()))
        );
        assert_eq!(
            code(br#"{"min_seq": 1.5}"#, Query::Status),
            ("invalid_field", Some("min_seq".into()))
        );
        assert_eq!(
            code(br#"{"within_days": 3}"#, Query::Status),
            ("invalid_field", Some("within_days".into()))
        );
        assert_eq!(
            code(br#"{"bogus": 3}"#, up),
            ("invalid_field", Some("bogus".into()))
        );
        // The same strict reader as intake; and a size bound.
        assert_eq!(
            code(br#"{"min_seq": 1, "min_seq": 999999}"#, up),
            ("invalid_json", None)
        );
        let deep = format!("{{\"min_seq\":{}1{}}}", "[".repeat(40), "]".repeat(40));
        assert_eq!(code(deep.as_bytes(), up), ("invalid_json", None));
        let big = format!("{{\"min_seq\":1{}}}", " ".repeat(MAX_QUERY_PAYLOAD));
        assert_eq!(code(big.as_bytes(), up), ("too_large", None));
    }

    #[test]
    fn values_are_wrapped_as_stored() {
        assert_eq!(
            &wrap("review", br#"{"a":1}"#)[..],
            br#"{"ok":true,"review":{"a":1}}"#
        );
    }

    #[test]
    fn a_party_holds_at_most_its_share_of_the_waits() {
        let waits = Arc::new(PartyWaits::default());
        let held: Vec<_> = (0..MAX_WAITING_PER_PARTY)
            .map(|_| waits.try_take("READER").expect("within the share"))
            .collect();
        assert!(waits.try_take("READER").is_none(), "one past the share");
        // Another party, and requests from inside the service account, still wait.
        let other = waits.try_take("ACME").expect("another party's own share");
        let local = waits.try_take(LOCAL_PARTY).expect("the local share");
        assert_eq!(waits.held("READER"), MAX_WAITING_PER_PARTY);
        drop(held);
        assert_eq!(waits.held("READER"), 0);
        assert!(waits.try_take("READER").is_some(), "given back");
        drop((other, local));
        assert_eq!(waits.held("ACME"), 0);
        const { assert!(MAX_WAITING_PER_PARTY * 2 <= MAX_WAITING) };
    }

    #[test]
    fn the_party_is_the_requesters_account_from_the_request_info_header() {
        let mut h = HeaderMap::new();
        h.insert(
            "Nats-Request-Info",
            r#"{"acc":"READER","rtt":1000,"start":"2026-01-01T00:00:00Z"}"#,
        );
        assert_eq!(party(Some(&h)), "READER");
        assert_eq!(party(None), LOCAL_PARTY);
        let mut odd = HeaderMap::new();
        odd.insert("Nats-Request-Info", "not json");
        assert_eq!(party(Some(&odd)), LOCAL_PARTY);
    }
}
