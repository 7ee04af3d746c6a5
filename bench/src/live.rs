//! Part 8: the gateway's live notifications, from the moment a notification
//! is stored in `UPR_NOTIFICATIONS` (the stream's own timestamp of the
//! message) to the moment a client has it.
//!
//! - Fan-out: N clients (1,000 in the full run) hold `GET /events` open;
//!   notifications are stored one after another at a steady pace, and each
//!   client's receive time of each one, minus its stored time, is a
//!   sample. Also the gateway's peak resident memory while it serves them.
//! - Webhooks: one subscription (`UPR_WEBHOOKS`) to a receiver in this
//!   process on a loopback port; the time the receiver has the `POST` of a
//!   notification, minus its stored time, is a sample.
//!
//! The notifications are stored by the benchmark itself, as the notifier
//! stores them (a rescheduling notice built by the domain's code, its id
//! as `Nats-Msg-Id`), so the figure is the gateway's alone and the pace is
//! exact. Only the gateway runs, beside the server: neither path needs the
//! projection. The two measurements use different countries and the event
//! streams are closed before the webhook run, so each sees only its own.
//!
//! Receive times are taken in this process, which also runs the thousand
//! clients: on a small machine part of each figure is the clients' own
//! scheduling, so it is an upper bound of what the gateway adds.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use async_nats::{HeaderMap, header, jetstream};
use axum::{
    Router,
    extract::State,
    http::{HeaderMap as HttpHeaders, StatusCode},
    routing::post,
};
use serde_json::json;
use time::OffsetDateTime;
use tokio::{sync::Semaphore, time::Instant};
use upr_domain::{ChangeNotice, MEMBER_STATES, Timestamp, parse_intake};
use upr_nats::{
    contract::{self, notifier as names},
    setup::ensure_own_stream,
};
use upr_tests::sse::SseClient;
use uuid::Uuid;

use crate::{
    Sizes,
    fixture::Fixture,
    gateway::{start_gateway, wait_listening},
    part::{Part, say},
    stats::{Goal, Percentiles},
    system::MemWatch,
};

/// Notifications stored per second in both runs: steady, and far below
/// what the gateway can pass on, so each figure is one notification's
/// delivery and not a queue.
const NOTICE_RATE: f64 = 10.0;

/// Event streams being opened at once (the rest wait), so the gateway's
/// listen backlog is never the limit.
const CONNECTING_AT_ONCE: usize = 64;

/// Longest the deliveries of one run may take after its last notification.
const PATIENCE: Duration = Duration::from_secs(30);

/// The webhook subscription's name (and so its position's key).
const WEBHOOK: &str = "bench";

/// The country of the webhook run's notifications; the fan-out uses others.
const WEBHOOK_COUNTRY: &str = "CH";

/// A rescheduling notice for `country`'s review at `session`, as the
/// notifier builds it: (subject, id, payload).
fn notice(country: &str, session: u64) -> (String, String, bytes::Bytes) {
    let now = crate::now();
    let old = Timestamp::from_unix_millis(now.unix_millis() + 90 * 86_400_000).unwrap_or(now);
    let new = Timestamp::from_unix_millis(now.unix_millis() + 97 * 86_400_000).unwrap_or(now);
    let intake = json!({"country": country, "session": session,
                        "scheduled_for": new.to_string(), "reason": "the session's dates moved"});
    let command = parse_intake("review_rescheduled", intake.to_string().as_bytes())
        .expect("the benchmark builds a valid reschedule");
    let event = command.into_envelope(Uuid::new_v4(), now, None);
    let notice =
        ChangeNotice::for_event(&event, Some(old), now).expect("a reschedule has a change notice");
    (
        contract::subjects::notify(notice.kind(), notice.country()),
        notice.id().to_owned(),
        notice.to_json().into(),
    )
}

/// Stores `n` notices at [`NOTICE_RATE`], countries from `country(i)`;
/// returns (stream sequence, id) of each.
async fn publish(
    js: &jetstream::Context,
    n: usize,
    country: impl Fn(usize) -> String,
) -> Result<Vec<(u64, String)>, String> {
    let started = Instant::now();
    let mut stored = Vec::with_capacity(n);
    for i in 0..n {
        tokio::time::sleep_until(started + Duration::from_secs_f64(i as f64 / NOTICE_RATE)).await;
        let (subject, id, payload) = notice(&country(i), 1 + (i as u64 % 999));
        let mut headers = HeaderMap::new();
        headers.insert(header::NATS_MESSAGE_ID, id.as_str());
        let ack = js
            .publish_with_headers(subject, headers, payload)
            .await
            .map_err(|e| format!("publish: {e}"))?
            .await
            .map_err(|e| format!("stored: {e}"))?;
        stored.push((ack.sequence, id));
    }
    Ok(stored)
}

/// The stream's timestamp of each message `seqs` of `UPR_NOTIFICATIONS`.
async fn stored_at(
    js: &jetstream::Context,
    seqs: impl Iterator<Item = u64>,
) -> Result<std::collections::HashMap<u64, OffsetDateTime>, String> {
    let stream = js
        .get_stream(contract::NOTIFICATIONS_STREAM)
        .await
        .map_err(|e| format!("{}: {e}", contract::NOTIFICATIONS_STREAM))?;
    let mut out = std::collections::HashMap::new();
    for seq in seqs {
        let m = stream
            .get_raw_message(seq)
            .await
            .map_err(|e| format!("notification {seq}: {e}"))?;
        out.insert(seq, m.time);
    }
    Ok(out)
}

/// Milliseconds from `from` to `to`.
fn ms(from: OffsetDateTime, to: OffsetDateTime) -> f64 {
    (to - from).as_seconds_f64() * 1e3
}

/// One event stream's client: what it received (sequence, receive time).
type Received = Vec<(u64, OffsetDateTime)>;

/// Opens an event stream on `addr` and records every event until `stop`.
/// `?after=0`: everything stored after the stream opened is sent, also
/// what is stored while the gateway sets the client up.
async fn listen(
    addr: SocketAddr,
    connecting: Arc<Semaphore>,
    ready: Arc<AtomicUsize>,
    delivered: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
) -> Result<Received, String> {
    let permit = connecting.acquire_owned().await;
    let mut client = SseClient::connect(addr, "/events?after=0", &[])
        .await
        .map_err(|answer| format!("/events answered {}: {}", answer.status, answer.text()))?;
    drop(permit);
    ready.fetch_add(1, Ordering::Relaxed);
    let mut received = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        if let Some(event) = client.next(Duration::from_millis(200)).await {
            received.push((event.seq(), OffsetDateTime::now_utc()));
            delivered.fetch_add(1, Ordering::Relaxed);
        }
    }
    Ok(received)
}

/// Waits until `count` reaches `n`; false after `timeout`.
async fn reaches(count: &AtomicUsize, n: usize, timeout: Duration) -> bool {
    let until = Instant::now() + timeout;
    while count.load(Ordering::Relaxed) < n {
        if Instant::now() > until {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    true
}

/// What the webhook receiver got: (webhook-id, receive time).
type Log = Arc<Mutex<Vec<(String, OffsetDateTime)>>>;

async fn receive(State(log): State<Log>, headers: HttpHeaders, _body: bytes::Bytes) -> StatusCode {
    let at = OffsetDateTime::now_utc();
    let id = headers
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    log.lock().expect("receiver log").push((id, at));
    StatusCode::OK
}

/// The webhook receiver: `POST /hook` on a loopback port, answered 200
/// once the body is read, each recorded with its receive time.
async fn start_receiver() -> Result<(SocketAddr, Log, tokio::task::JoinHandle<()>), String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("receiver: {e}"))?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("receiver: {e}"))?;
    let log = Log::default();
    let app = Router::new()
        .route("/hook", post(receive))
        .with_state(log.clone());
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((addr, log, task))
}

/// The subscription file and its secret, in `dir`; returns the file's path.
fn webhook_file(dir: &std::path::Path, receiver: SocketAddr) -> Result<String, String> {
    let mut key = Uuid::new_v4().as_bytes().to_vec();
    key.extend_from_slice(Uuid::new_v4().as_bytes());
    let secret = format!("whsec_{}", data_encoding::BASE64.encode(&key));
    let write = |name: &str, text: String| {
        std::fs::write(dir.join(name), text).map_err(|e| format!("write {name}: {e}"))
    };
    write("hook.secret", secret)?;
    write(
        "webhooks.json",
        json!([{"name": WEBHOOK, "url": format!("http://{receiver}/hook"),
                "secret_file": "hook.secret", "countries": [WEBHOOK_COUNTRY]}])
        .to_string(),
    )?;
    Ok(dir.join("webhooks.json").display().to_string())
}

/// Part 8.
#[expect(
    clippy::too_many_lines,
    reason = "a benchmark part reads as its script: the gateway and its clients, the measured runs and the record, in order"
)]
pub async fn run(part: Part, sizes: Sizes) {
    if let Some((soft, hard)) = crate::system::raise_open_files_limit() {
        part.detail("open_files_limit", json!({"soft": soft, "hard": hard}));
        let needed = sizes.sse_clients as u64 + 256;
        if soft < needed {
            return part.error(format!(
                "{} event streams need about {needed} open files; the limit is {soft} (hard {hard})",
                sizes.sse_clients
            ));
        }
    }
    let Some(bed) = Fixture::start(&part).await else {
        return;
    };
    // The notifier owns the stream and the gateway's bucket; the benchmark
    // stands in for it.
    let stream = contract::notifications_stream(1, names::NOTIFICATIONS_DEDUP_WINDOW);
    if let Err(e) = ensure_own_stream(&bed.js, stream).await {
        return part.error(format!(
            "cannot create {}: {e}",
            contract::NOTIFICATIONS_STREAM
        ));
    }
    if let Err(e) =
        upr_nats::setup::ensure_bucket(&bed.js, contract::gateway::state_bucket(1)).await
    {
        return part.error(format!(
            "cannot create {}: {e}",
            contract::gateway::STATE_BUCKET
        ));
    }
    let (receiver_addr, log, receiver) = match start_receiver().await {
        Ok(r) => r,
        Err(e) => return part.error(e),
    };
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => return part.error(format!("temporary directory: {e}")),
    };
    let file = match webhook_file(dir.path(), receiver_addr) {
        Ok(f) => f,
        Err(e) => return part.error(e),
    };
    let max_clients = sizes.sse_clients.max(1000).to_string();
    let (gateway, addr) = start_gateway(
        &bed.url,
        &[
            (contract::env::UPR_WEBHOOKS, file.as_str()),
            (contract::env::UPR_SSE_MAX_CLIENTS, max_clients.as_str()),
        ],
    );
    if let Err(e) = wait_listening(addr, Duration::from_secs(20)).await {
        return part.error(format!("upr-gateway: {e}; log: {}", gateway.logs()));
    }
    let pid = gateway.pid();
    let mem = pid.map(MemWatch::start);
    say(format!("upr-gateway pid {pid:?} on http://{addr}"));
    // A webhook starts with what is stored after its position is first
    // written.
    let position_stored = async {
        let until = Instant::now() + Duration::from_secs(20);
        let key = contract::gateway::webhook_position_key(WEBHOOK);
        while Instant::now() < until {
            if let Ok(kv) = bed.js.get_key_value(contract::gateway::STATE_BUCKET).await
                && matches!(kv.get(&key).await, Ok(Some(_)))
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    };
    if !position_stored.await {
        return part.error("the gateway stored no webhook position within 20 s");
    }

    // Fan-out: every client opens its stream, then the notices come.
    let clients = sizes.sse_clients;
    part.detail("sse_clients", clients.into());
    part.detail("notices_per_run", sizes.sse_notices.into());
    part.detail("notice_rate_per_s", NOTICE_RATE.into());
    let connecting = Arc::new(Semaphore::new(CONNECTING_AT_ONCE));
    let ready = Arc::new(AtomicUsize::new(0));
    let delivered = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let opened = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            tokio::spawn(listen(
                addr,
                connecting.clone(),
                ready.clone(),
                delivered.clone(),
                stop.clone(),
            ))
        })
        .collect();
    if !reaches(&ready, clients, Duration::from_secs(60)).await {
        stop.store(true, Ordering::Relaxed);
        return part.error(format!(
            "{} of {clients} event streams opened within 60 s; gateway log: {}",
            ready.load(Ordering::Relaxed),
            gateway.logs().lines().last().unwrap_or_default()
        ));
    }
    say(format!(
        "live: {clients} event streams open in {:.1} s",
        opened.elapsed().as_secs_f64()
    ));
    // Countries other than the webhook's, in turn.
    let country = |i: usize| {
        let others: Vec<&str> = MEMBER_STATES
            .iter()
            .map(|(c, _)| *c)
            .filter(|c| *c != WEBHOOK_COUNTRY)
            .collect();
        others[i % others.len()].to_owned()
    };
    // Warm-up: one notice every client must get, not recorded.
    let mut runs: Vec<Vec<(u64, String)>> = Vec::new();
    let mut expected = 0;
    for r in 0..=sizes.reps {
        let n = if r == 0 { 1 } else { sizes.sse_notices };
        let stored = match publish(&bed.js, n, country).await {
            Ok(s) => s,
            Err(e) => {
                stop.store(true, Ordering::Relaxed);
                return part.error(e);
            }
        };
        expected += n * clients;
        if !reaches(&delivered, expected, PATIENCE).await {
            // Counted below, client by client.
            say(format!(
                "live: {} of {expected} deliveries after {PATIENCE:?}",
                delivered.load(Ordering::Relaxed)
            ));
        }
        if r > 0 {
            runs.push(stored);
        }
    }
    let rss_with_streams = mem.as_ref().map(|m| m.peak_mb(pid));
    stop.store(true, Ordering::Relaxed);
    let mut received: Vec<Received> = Vec::with_capacity(clients);
    for t in tasks {
        match t.await {
            Ok(Ok(r)) => received.push(r),
            Ok(Err(e)) => return part.error(format!("an event stream: {e}")),
            Err(e) => return part.error(format!("an event stream's client: {e}")),
        }
    }
    let stored_times = match stored_at(&bed.js, runs.iter().flatten().map(|(seq, _)| *seq)).await {
        Ok(t) => t,
        Err(e) => return part.error(e),
    };
    for (r, run) in runs.iter().enumerate() {
        let seqs: std::collections::HashSet<u64> = run.iter().map(|(s, _)| *s).collect();
        let mut samples = Vec::with_capacity(run.len() * clients);
        let mut twice = 0;
        for client in &received {
            let mut seen = std::collections::HashSet::new();
            for (seq, at) in client.iter().filter(|(s, _)| seqs.contains(s)) {
                if !seen.insert(*seq) {
                    twice += 1;
                    continue;
                }
                samples.push(ms(stored_times[seq], *at));
            }
        }
        let wanted = run.len() * clients;
        if samples.len() < wanted || twice > 0 {
            return part.error(format!(
                "run {}: {} of {wanted} deliveries to the event streams arrived, {twice} twice",
                r + 1,
                samples.len()
            ));
        }
        let p = Percentiles::of(&samples);
        say(format!(
            "live rep {}: /events to {clients} clients: delivery after storing p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            r + 1,
            p.p50,
            p.p99,
            p.max
        ));
        let label = |q: &str| format!("SSE delivery {q} to {clients} clients (stored → received)");
        part.record("live.sse_p50", &label("p50"), "ms", None, p.p50);
        part.record(
            "live.sse_p99",
            &label("p99"),
            "ms",
            Some(Goal::Below(50.0)),
            p.p99,
        );
        part.record("live.sse_max", &label("max"), "ms", None, p.max);
    }
    // The streams are closed: the gateway's memory with them open is kept.
    if let Some(mb) = rss_with_streams {
        part.record(
            "memory.gateway",
            &format!("upr-gateway peak RSS ({clients} event streams, part 8)"),
            "MB",
            Some(Goal::Below(100.0)),
            mb,
        );
    }

    // Webhooks: notices of the subscription's country only.
    part.detail("webhook_notices_per_run", sizes.webhook_notices.into());
    for r in 0..sizes.reps {
        log.lock().expect("receiver log").clear();
        let stored = match publish(&bed.js, sizes.webhook_notices, |_| {
            WEBHOOK_COUNTRY.to_owned()
        })
        .await
        {
            Ok(s) => s,
            Err(e) => return part.error(e),
        };
        let ids: std::collections::HashMap<&str, u64> =
            stored.iter().map(|(seq, id)| (id.as_str(), *seq)).collect();
        let until = Instant::now() + PATIENCE;
        while log.lock().expect("receiver log").len() < ids.len() && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let times = match stored_at(&bed.js, stored.iter().map(|(seq, _)| *seq)).await {
            Ok(t) => t,
            Err(e) => return part.error(e),
        };
        let got = log.lock().expect("receiver log").clone();
        let mut seen = std::collections::HashSet::new();
        let mut samples = Vec::with_capacity(ids.len());
        for (id, at) in &got {
            let Some(seq) = ids.get(id.as_str()) else {
                return part.error(format!("the receiver got an unknown webhook-id {id:?}"));
            };
            // At least once: a second copy is possible, the first counts.
            if seen.insert(*seq) {
                samples.push(ms(times[seq], *at));
            }
        }
        if samples.len() < ids.len() {
            return part.error(format!(
                "run {}: {} of {} webhooks arrived within {PATIENCE:?}",
                r + 1,
                samples.len(),
                ids.len()
            ));
        }
        let p = Percentiles::of(&samples);
        say(format!(
            "live rep {}: webhook delivery after storing p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} copies for {} notices)",
            r + 1,
            p.p50,
            p.p99,
            p.max,
            got.len(),
            ids.len()
        ));
        let label = |q: &str| format!("Webhook delivery {q} (stored → received)");
        part.record("live.webhook_p50", &label("p50"), "ms", None, p.p50);
        part.record("live.webhook_p99", &label("p99"), "ms", None, p.p99);
        part.record("live.webhook_max", &label("max"), "ms", None, p.max);
    }
    if let Some(m) = mem {
        // Stop sampling; the figure kept is the one with the streams open.
        let _ = m.stop(pid).await;
    }
    receiver.abort();
    drop(gateway);
    bed.finish(&part, 8).await;
}
