//! `GET /events`: the notifications of `UPR_NOTIFICATIONS` as Server-Sent
//! Events, one per notification (`event:` its kind, `id:` its stream
//! sequence, `data:` its JSON on one line), live, and after a reconnect
//! (`Last-Event-ID` or `?after=<seq>`) first everything the client missed.
//!
//! Why this shape, for many clients at once:
//! - One live feed per gateway (the `feed` task) puts every notification,
//!   with its stream sequence, on a [`broadcast`] channel. A thousand
//!   clients cost the server one reader, not a thousand.
//! - The feed uses no consumer: it reads the stream with direct gets, in
//!   sequence order, and is woken by the notifications themselves (a core
//!   subscription to `upr.notify.>`, which carries every publish the stream
//!   stores). Creating a consumer would need `CONSUMER.CREATE`, and the
//!   server lets whoever may create one choose its whole configuration: a
//!   push consumer aimed at the event log's subjects would have the server
//!   write notifications into the log. So the gateway's user may create
//!   nothing (docs/security.md). A wake-up says only "something was
//!   published"; the stream says what and in which order. A message may be
//!   heard before the stream stores it (a cluster stores it once a majority
//!   has it), so the feed looks again shortly after each wake-up, and every
//!   few seconds anyway, which also covers wake-ups lost while the
//!   connection was down.
//! - Each client keeps its *position*: the last stream sequence it has
//!   looked at (sent or filtered out). It subscribes to the broadcast
//!   *before* it replays, so nothing published meanwhile can fall between
//!   the replay and the live part; anything at or below the position is
//!   dropped, so nothing is sent twice.
//! - Whenever the next live notification is not the one right after the
//!   position (a reconnect, a client too slow for the broadcast's buffer
//!   and told it lagged, the feed re-created after an error), the client
//!   first reads the gap from the stream with direct gets, which need no
//!   consumer on the server, then goes on live. A slow client therefore
//!   falls back to reading the stream instead of losing notifications.
//! - If the stream cannot be read, the client's response ends rather than
//!   skipping: it reconnects with `Last-Event-ID` and resumes where it was.
//! - Streams live for hours, so they are not counted in the request limit
//!   (`UPR_HTTP_MAX_REQUESTS`); they have a cap of their own,
//!   `UPR_SSE_MAX_CLIENTS`, past which `/events` answers 503.

use std::{convert::Infallible, sync::Arc, time::Duration};

use async_nats::jetstream::{
    self,
    context::GetStreamErrorKind,
    message::StreamMessage,
    stream::{DirectGetErrorKind, Stream},
};
use axum::{
    Router,
    extract::{Query, State, rejection::QueryRejection},
    http::{HeaderMap, header},
    middleware,
    response::{
        IntoResponse, Response,
        sse::{Event, KeepAlive, Sse},
    },
    routing::get,
};
use futures::{FutureExt, StreamExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast, mpsc, watch};
use tracing::{debug, info, warn};
use upr_domain::{Country, ErrorCode, RejectError};
use upr_nats::{
    contract::{NOTIFICATIONS_STREAM, subjects},
    stop::Stop,
};

use crate::http::error_response;

/// How often an idle stream gets a comment line, so proxies and clients
/// see the connection is alive and a vanished client is noticed.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Notifications the broadcast keeps for the slowest client. Past it that
/// client is told it lagged and reads the gap from the stream instead.
const BROADCAST_BUFFER: usize = 1024;

/// Events queued for one client's connection before its task waits.
const CLIENT_BUFFER: usize = 64;

/// Pause before the live feed tries again after NATS failed it.
const FEED_RETRY: Duration = Duration::from_secs(1);

/// How often the feed looks at the stream while no wake-up comes: the
/// bound on how late a notification whose wake-up was lost is passed on.
const POLL_IDLE: Duration = Duration::from_secs(5);

/// How often it looks during [`WAKE_WINDOW`] after a wake-up, for a
/// message heard before the stream had stored it.
const POLL_AWAKE: Duration = Duration::from_millis(100);

/// See [`POLL_AWAKE`].
const WAKE_WINDOW: Duration = Duration::from_secs(2);

/// Attempts at one direct get before a client's stream is ended.
const READ_ATTEMPTS: u32 = 3;

/// One notification as the broadcast carries it: what a client needs to
/// filter it and to write it, prepared once for every client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// Its sequence in `UPR_NOTIFICATIONS`: the SSE `id`.
    pub seq: u64,
    /// `reminder`, `rescheduled`, ...: the SSE `event`.
    pub kind: String,
    /// The country code of its subject, for `?country=`.
    pub country: String,
    /// Its JSON on one line: the SSE `data`.
    pub data: String,
}

impl Notice {
    /// A stored message as a notice; `None` when its subject is not
    /// `upr.notify.<kind>.<COUNTRY>` or its payload is not JSON (nothing
    /// else should be there, but a reader must survive whatever is).
    pub fn from_stored(seq: u64, subject: &str, payload: &[u8]) -> Option<Self> {
        let rest = subject.strip_prefix("upr.notify.")?;
        let (kind, country) = rest.split_once('.')?;
        if kind.is_empty() || country.contains('.') {
            return None;
        }
        let data = match std::str::from_utf8(payload) {
            // The notifier writes compact JSON: take it as it is, checked.
            Ok(text)
                if !text.contains(['\n', '\r'])
                    && serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok() =>
            {
                text.to_owned()
            }
            // Anything else that is JSON is written again on one line (an
            // SSE `data:` line ends at the first line break).
            _ => serde_json::to_string(&serde_json::from_slice::<serde_json::Value>(payload).ok()?)
                .ok()?,
        };
        Some(Self {
            seq,
            kind: kind.to_owned(),
            country: country.to_owned(),
            data,
        })
    }

    fn event(&self) -> Event {
        Event::default()
            .event(&self.kind)
            .id(self.seq.to_string())
            .data(&self.data)
    }
}

/// What `/events` shares: the live feed's channel, the cap on streams and
/// the stop signal. Cheap to clone.
#[derive(Clone)]
pub struct Hub {
    js: jetstream::Context,
    live: broadcast::Sender<Arc<Notice>>,
    newest: watch::Receiver<u64>,
    slots: Arc<Semaphore>,
    max_clients: usize,
    stop: Stop,
}

impl Hub {
    /// Starts the live feed on `js` and returns the hub with the feed's
    /// task, which ends when `stop` fires (as do all client streams).
    pub fn start(
        js: jetstream::Context,
        max_clients: usize,
        stop: Stop,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (live, _) = broadcast::channel(BROADCAST_BUFFER);
        let (newest_tx, newest) = watch::channel(0);
        let task = tokio::spawn(feed(js.clone(), live.clone(), newest_tx, stop.clone()));
        let hub = Self {
            js,
            live,
            newest,
            slots: Arc::new(Semaphore::new(max_clients)),
            max_clients,
            stop,
        };
        (hub, task)
    }

    /// Streams open right now (for the metrics).
    pub fn clients(&self) -> usize {
        self.max_clients - self.slots.available_permits()
    }

    /// The newest sequence of `UPR_NOTIFICATIONS` the feed has read: the
    /// webhooks wait on it instead of asking the stream themselves.
    pub fn newest(&self) -> watch::Receiver<u64> {
        self.newest.clone()
    }
}

/// The `/events` route, with its own state and outside the router's
/// request limit (see [`crate::App::run`]); bodies are refused as on every
/// other GET.
pub fn routes(hub: Hub) -> Router {
    Router::new()
        .route("/events", get(events))
        .layer(middleware::from_fn(crate::http::refuse_body))
        .with_state(hub)
}

/// The query parameters of `/events`, as text so a bad value is answered
/// with the gateway's own JSON error naming it.
#[derive(Debug, Default, serde::Deserialize)]
struct Params {
    country: Option<String>,
    after: Option<String>,
}

/// What a client asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// Only this state's notifications.
    pub country: Option<Country>,
    /// Resume after this sequence (replay first); `None`: live only.
    pub after: Option<u64>,
}

/// Reads `?country=`, `?after=` and `Last-Event-ID`. The header wins over
/// `?after=`: a browser's `EventSource` keeps the URL it was opened with
/// and sends the header with the newest id it saw.
///
/// # Errors
/// `invalid_field` naming `country`, `after` or `Last-Event-ID`.
pub fn parse_request(
    country: Option<&str>,
    after: Option<&str>,
    last_event_id: Option<&str>,
) -> Result<Request, RejectError> {
    let country = country
        .map(|text| match Country::parse(text) {
            Ok(c) if c.is_member_state() => Ok(c),
            _ => Err(RejectError::invalid(
                "country",
                format_args!("must be the two-letter code of a UN member state, got {text:?}"),
            )),
        })
        .transpose()?;
    let seq = |field: &str, text: &str| {
        text.trim().parse::<u64>().map_err(|_| {
            RejectError::invalid(
                field,
                format_args!("must be a stream sequence (a whole number), got {text:?}"),
            )
        })
    };
    let after = match (last_event_id, after) {
        (Some(id), _) => Some(seq("Last-Event-ID", id)?),
        (None, Some(after)) => Some(seq("after", after)?),
        (None, None) => None,
    };
    Ok(Request { country, after })
}

async fn events(
    State(hub): State<Hub>,
    params: Result<Query<Params>, QueryRejection>,
    headers: HeaderMap,
) -> Response {
    let Query(params) = match params {
        Ok(p) => p,
        Err(e) => {
            return error_response(&RejectError::invalid("query", format_args!("{e}")));
        }
    };
    let last_event_id = match headers.get("last-event-id").map(|v| v.to_str()) {
        None => None,
        Some(Ok(v)) => Some(v),
        Some(Err(_)) => {
            return error_response(&RejectError::invalid("Last-Event-ID", "must be ASCII"));
        }
    };
    let request = match parse_request(
        params.country.as_deref(),
        params.after.as_deref(),
        last_event_id,
    ) {
        Ok(r) => r,
        Err(e) => return error_response(&e),
    };
    let Ok(permit) = hub.slots.clone().try_acquire_owned() else {
        let mut response = error_response(&RejectError::new(
            ErrorCode::Unavailable,
            format!(
                "{} event streams are open, the most this gateway serves; try again later",
                hub.max_clients
            ),
        ));
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("5"));
        return response;
    };
    let (out, rx) = mpsc::channel(CLIENT_BUFFER);
    // Subscribed here, before the client's task replays anything, so no
    // notification can fall between the replay and the live part.
    let live = hub.live.subscribe();
    tokio::spawn(client(hub, request, live, out, permit));
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|e| (Ok::<_, Infallible>(e), rx))
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response()
}

/// Why a client's stream ended.
pub(crate) enum End {
    /// The client went away or the gateway is stopping.
    Gone,
    /// The stream could not be read; the client resumes on reconnect.
    Unreadable(String),
}

impl End {
    /// Why, as a log line says it.
    pub(crate) fn into_text(self) -> String {
        match self {
            Self::Gone => "stopped".into(),
            Self::Unreadable(why) => why,
        }
    }
}

/// One client: replay from its position, then live, filling every gap from
/// the stream (see the module documentation).
async fn client(
    hub: Hub,
    request: Request,
    mut live: broadcast::Receiver<Arc<Notice>>,
    out: mpsc::Sender<Event>,
    _permit: OwnedSemaphorePermit,
) {
    let stop = hub.stop.clone();
    let mut reader = Reader::new(&hub.js, request.country);
    let mut position = request.after;
    let ended = async {
        match position {
            Some(after) => {
                // An id past the stream's end (the stream was re-created
                // since) resumes from the end, or nothing would be sent
                // until the new sequences passed the old one.
                let after = after.min(reader.last_sequence().await?);
                position = Some(reader.replay(after, None, &out).await?);
            }
            // Live from now on: everything stored after this moment, also
            // what the feed has not passed on yet (or ever, when it starts
            // later than this client).
            None => position = Some(reader.last_sequence().await?),
        }
        loop {
            let notice = tokio::select! {
                received = live.recv() => match received {
                    Ok(n) => n,
                    // The next one received shows the gap, filled below.
                    Err(broadcast::error::RecvError::Lagged(skipped)) => {
                        debug!(skipped, "an event stream lagged; reading the gap from the stream");
                        continue;
                    }
                    Err(broadcast::error::RecvError::Closed) => return Err(End::Gone),
                },
                () = out.closed() => return Err(End::Gone),
                () = stop.stopped() => return Err(End::Gone),
            };
            match position {
                Some(p) if notice.seq <= p => continue,
                Some(p) if notice.seq > p + 1 => {
                    reader.replay(p, Some(notice.seq), &out).await?;
                }
                _ => {}
            }
            if reader.wants(&notice) {
                out.send(notice.event()).await.map_err(|_| End::Gone)?;
            }
            position = Some(notice.seq);
        }
    };
    let result: Result<(), End> = ended.await;
    if let Err(End::Unreadable(why)) = result {
        warn!(error = %why, ?position, "an event stream ended: the stream could not be read");
    }
}

/// Reads `UPR_NOTIFICATIONS` with direct gets (no consumer on the server),
/// filtered by subject: for one client, for the live feed and for each
/// webhook subscription.
pub(crate) struct Reader {
    js: jetstream::Context,
    stream: Option<Stream>,
    filter: String,
    country: Option<Country>,
}

impl Reader {
    fn new(js: &jetstream::Context, country: Option<Country>) -> Self {
        let filter = match country {
            Some(c) => format!("upr.notify.*.{c}"),
            None => subjects::NOTIFY_ALL.to_owned(),
        };
        Self {
            js: js.clone(),
            stream: None,
            filter,
            country,
        }
    }

    /// A reader of the subjects matching `filter` (one subject, wildcards
    /// allowed).
    pub(crate) fn with_filter(js: &jetstream::Context, filter: String) -> Self {
        Self {
            js: js.clone(),
            stream: None,
            filter,
            country: None,
        }
    }

    fn wants(&self, notice: &Notice) -> bool {
        self.country.is_none_or(|c| notice.country == c.as_str())
    }

    /// Sends every notice after `after` and before `until` (to the end of
    /// the stream when `None`); returns the new position: `until - 1`, or
    /// the last sequence sent.
    async fn replay(
        &mut self,
        after: u64,
        until: Option<u64>,
        out: &mpsc::Sender<Event>,
    ) -> Result<u64, End> {
        let mut position = after;
        loop {
            let next = position + 1;
            if until.is_some_and(|u| next >= u) {
                break;
            }
            let Some(message) = self.next_from(next).await? else {
                break;
            };
            if until.is_some_and(|u| message.sequence >= u) {
                break;
            }
            if let Some(notice) =
                Notice::from_stored(message.sequence, &message.subject, &message.payload)
            {
                out.send(notice.event()).await.map_err(|_| End::Gone)?;
            }
            position = message.sequence;
        }
        Ok(until.map_or(position, |u| u - 1))
    }

    /// The stream's last sequence (0 before it exists).
    pub(crate) async fn last_sequence(&mut self) -> Result<u64, End> {
        let mut why = String::new();
        for attempt in 0..READ_ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
            }
            match self.js.get_stream(NOTIFICATIONS_STREAM).await {
                Ok(s) => {
                    let last = s.cached_info().state.last_sequence;
                    self.stream = Some(s);
                    return Ok(last);
                }
                Err(e) if stream_missing(&e.kind()) => return Ok(0),
                Err(e) => why = e.to_string(),
            }
        }
        Err(End::Unreadable(why))
    }

    /// The first message at or after `seq` on the client's subjects;
    /// `None` past the end of the stream (or before it exists).
    pub(crate) async fn next_from(&mut self, seq: u64) -> Result<Option<StreamMessage>, End> {
        let mut why = String::new();
        for attempt in 0..READ_ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
            }
            let stream = match &self.stream {
                Some(s) => s.clone(),
                None => match self.js.get_stream(NOTIFICATIONS_STREAM).await {
                    Ok(s) => {
                        self.stream = Some(s.clone());
                        s
                    }
                    Err(e) if stream_missing(&e.kind()) => return Ok(None),
                    Err(e) => {
                        why = e.to_string();
                        continue;
                    }
                },
            };
            match stream
                .direct_get_next_for_subject(self.filter.as_str(), Some(seq))
                .await
            {
                Ok(m) => return Ok(Some(m)),
                Err(e) if e.kind() == DirectGetErrorKind::NotFound => return Ok(None),
                Err(e) => why = e.to_string(),
            }
        }
        Err(End::Unreadable(why))
    }
}

/// Whether `kind` says `UPR_NOTIFICATIONS` does not exist (yet: the
/// notifier creates it).
pub(crate) fn stream_missing(kind: &GetStreamErrorKind) -> bool {
    matches!(kind, GetStreamErrorKind::JetStream(j) if j.error_code() == async_nats::jetstream::ErrorCode::STREAM_NOT_FOUND)
}

/// The live feed: every notification stored after the gateway started,
/// read in sequence order with direct gets and put on the broadcast; woken
/// by a core subscription to the notification subjects, and looking again
/// by itself (see the module documentation). After a NATS failure it goes
/// on from the next sequence; it waits for the stream when the notifier
/// has not created it yet.
async fn feed(
    js: jetstream::Context,
    live: broadcast::Sender<Arc<Notice>>,
    newest: watch::Sender<u64>,
    stop: Stop,
) {
    let client = js.client();
    let mut reader = Reader::new(&js, None);
    let mut position: Option<u64> = None;
    loop {
        tokio::select! {
            why = follow(&client, &mut reader, &mut position, &live, &newest) => {
                debug!(error = %why, "live notifications feed interrupted; starting it again");
            }
            () = stop.stopped() => return,
        }
        if stop.pause(FEED_RETRY).await {
            return;
        }
    }
}

/// The feed's work until NATS fails it; returns why. `position` (the last
/// sequence passed on) is kept up to date, so the next call goes on from
/// there; `None` starts at the stream's end.
async fn follow(
    client: &async_nats::Client,
    reader: &mut Reader,
    position: &mut Option<u64>,
    live: &broadcast::Sender<Arc<Notice>>,
    newest: &watch::Sender<u64>,
) -> String {
    let mut wake_ups = match client.subscribe(subjects::NOTIFY_ALL).await {
        Ok(s) => s,
        Err(e) => return e.to_string(),
    };
    let mut at = match *position {
        Some(p) => p,
        None => match reader.last_sequence().await {
            Ok(p) => p,
            Err(e) => return e.into_text(),
        },
    };
    *position = Some(at);
    newest.send_replace(at);
    info!(after = at, "live notifications feed started");
    let mut awake_until = tokio::time::Instant::now();
    loop {
        loop {
            match reader.next_from(at + 1).await {
                Ok(Some(message)) => {
                    at = message.sequence;
                    if let Some(notice) =
                        Notice::from_stored(at, &message.subject, &message.payload)
                    {
                        // No receiver (no client connected) is not an error.
                        let _ = live.send(Arc::new(notice));
                    }
                    *position = Some(at);
                    newest.send_replace(at);
                }
                Ok(None) => break,
                Err(e) => return e.into_text(),
            }
        }
        let poll = if tokio::time::Instant::now() < awake_until {
            POLL_AWAKE
        } else {
            POLL_IDLE
        };
        tokio::select! {
            heard = wake_ups.next() => {
                if heard.is_none() {
                    return "the wake-up subscription ended".into();
                }
                // One look serves every wake-up already waiting.
                while let Some(Some(_)) = wake_ups.next().now_or_never() {}
                awake_until = tokio::time::Instant::now() + WAKE_WINDOW;
            }
            () = tokio::time::sleep(poll) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_notice_takes_kind_and_country_from_its_subject_and_keeps_one_line() {
        let n = Notice::from_stored(
            7,
            "upr.notify.reminder.KZ",
            br#"{"id":"x","kind":"reminder"}"#,
        )
        .unwrap();
        assert_eq!(
            (n.seq, n.kind.as_str(), n.country.as_str(), n.data.as_str()),
            (7, "reminder", "KZ", r#"{"id":"x","kind":"reminder"}"#)
        );
        let pretty =
            Notice::from_stored(8, "upr.notify.cancelled.CH", b"{\n  \"id\": \"y\"\n}").unwrap();
        assert_eq!(pretty.data, r#"{"id":"y"}"#);
        for (subject, payload) in [
            ("upr.notify.reminder", &b"{}"[..]),
            ("upr.notify.reminder.KZ.x", b"{}"),
            ("upr.events.KZ.48.review_held", b"{}"),
            ("upr.notify.reminder.KZ", b"not json"),
        ] {
            assert_eq!(Notice::from_stored(1, subject, payload), None, "{subject}");
        }
    }

    #[test]
    fn last_event_id_wins_over_after_and_bad_values_name_their_field() {
        let r = parse_request(Some("kz"), Some("3"), Some("9")).unwrap();
        assert_eq!(r.after, Some(9));
        assert_eq!(r.country.unwrap().as_str(), "KZ");
        assert_eq!(parse_request(None, Some("3"), None).unwrap().after, Some(3));
        assert_eq!(parse_request(None, None, None).unwrap().after, None);
        for (country, after, id, field) in [
            (Some("XX"), None, None, "country"),
            (Some("KZZ"), None, None, "country"),
            (None, Some("-1"), None, "after"),
            (None, Some("soon"), None, "after"),
            (None, None, Some("abc"), "Last-Event-ID"),
        ] {
            let e = parse_request(country, after, id).unwrap_err();
            assert_eq!(e.field.as_deref(), Some(field));
            assert_eq!(e.code, ErrorCode::InvalidField);
        }
    }
}
