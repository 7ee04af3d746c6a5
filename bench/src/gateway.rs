//! Part 7: reads through the HTTP gateway, against a direct KV get of the
//! same value.
//!
//! Ingest, the projection and `upr-gateway` run on the part's server; a set
//! of reviews is stored through ingest first. Then, per repetition:
//!
//! - `GET /api/v1/reviews/<CC>/<session>` and `GET /calendar.ics` each at a
//!   steady rate (1,000 requests/s) for a fixed time, open loop: a request
//!   is due every millisecond whatever happened to the previous ones, and
//!   its latency is counted from when it was due, so a stall shows up
//!   instead of slowing the load (no coordinated omission). The review
//!   requests rotate over the stored reviews.
//! - The most either side can do with the same concurrency: N clients, each
//!   sending its next request when the previous one is answered (closed
//!   loop), once through the gateway (`GET /api/v1/reviews/..`) and once as
//!   a NATS client with read rights would read the same value: a KV get of
//!   the review's key in `upr_reviews`. The ratio of the two rates is what
//!   the HTTP hop and the query service cost on top of the read itself.
//!
//! The HTTP client keeps its connections alive, as a browser or a program
//! polling the API would.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use async_nats::jetstream::kv;
use futures::{StreamExt, stream::FuturesUnordered};
use serde_json::{Value, json};
use tokio::time::{Instant, MissedTickBehavior};
use upr_domain::ReviewKey;
use upr_nats::contract::{self, services};
use upr_tests::ServiceProcess;

use crate::{
    Sizes,
    drive::{self, Mode},
    fixture::Fixture,
    ingest::SERVICE_ENV,
    part::{Part, say},
    stats::{Goal, Percentiles, fmt_num},
    workload::{Generator, Keys},
};

/// Longest one HTTP request may take before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Starts `upr-gateway` on a free loopback port with the benchmark's
/// settings and `env`; returns it with the address it listens on.
pub fn start_gateway(url: &str, env: &[(&str, &str)]) -> (ServiceProcess, SocketAddr) {
    let addr = SocketAddr::from(([127, 0, 0, 1], upr_tests::free_port()));
    let addr_text = addr.to_string();
    let all: Vec<(&str, &str)> = SERVICE_ENV
        .iter()
        .copied()
        .chain([(contract::env::UPR_HTTP_ADDR, addr_text.as_str())])
        .chain(env.iter().copied())
        .collect();
    (ServiceProcess::start(services::GATEWAY, url, &all), addr)
}

/// Waits until something accepts connections on `addr` (a gateway without
/// a projection is never healthy, but it serves `/events` and webhooks).
pub async fn wait_listening(addr: SocketAddr, timeout: Duration) -> Result<(), String> {
    let started = Instant::now();
    while started.elapsed() < timeout {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!("nothing listens on {addr} after {timeout:?}"))
}

/// The benchmark's HTTP client: connections kept alive and reused, HTTP/1
/// (what the gateway serves), never a proxy (the gateway is on loopback).
pub fn http_client() -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .http1_only()
        .no_proxy()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .map_err(|e| format!("HTTP client: {e}"))
}

/// One GET whose answer must be 200; the body, read to its end.
async fn get(http: &reqwest::Client, url: &str) -> Result<bytes::Bytes, String> {
    let response = http.get(url).send().await.map_err(|e| format!("{e}"))?;
    let status = response.status();
    let body = response.bytes().await.map_err(|e| format!("{e}"))?;
    if status != reqwest::StatusCode::OK {
        return Err(format!("{status}: {}", String::from_utf8_lossy(&body)));
    }
    Ok(body)
}

/// What a run of requests measured.
#[derive(Debug, Default)]
struct Measured {
    /// Latency of each answered request, in ms.
    latencies_ms: Vec<f64>,
    /// Requests that failed (an answer other than 200, or none in time).
    failed: usize,
    /// The first failure, to say why.
    first_failure: Option<String>,
    /// Wall time of the run.
    elapsed: Duration,
}

impl Measured {
    fn add(&mut self, result: Result<(), String>, took: Duration) {
        match result {
            Ok(()) => self.latencies_ms.push(took.as_secs_f64() * 1e3),
            Err(e) => {
                self.failed += 1;
                self.first_failure.get_or_insert(e);
            }
        }
    }

    fn merge(&mut self, other: Measured) {
        self.latencies_ms.extend(other.latencies_ms);
        self.failed += other.failed;
        if self.first_failure.is_none() {
            self.first_failure = other.first_failure;
        }
    }

    /// Answered requests per second.
    fn rate(&self) -> f64 {
        self.latencies_ms.len() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Sends `send(i)` at `rate` per second for `length`, open loop: each is
/// due at its tick whatever the previous ones are doing, and timed from
/// that tick to its answer.
async fn open_loop<F, Fut>(rate: u32, length: Duration, mut send: F) -> Measured
where
    F: FnMut(usize) -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let millis = usize::try_from(length.as_millis()).unwrap_or(usize::MAX);
    let total = (rate as usize).saturating_mul(millis) / 1000;
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate)));
    ticker.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let mut in_flight = FuturesUnordered::new();
    let mut measured = Measured::default();
    let started = Instant::now();
    let mut sent = 0;
    while sent < total || !in_flight.is_empty() {
        tokio::select! {
            due = ticker.tick(), if sent < total => {
                let request = send(sent);
                sent += 1;
                in_flight.push(async move {
                    let result = request.await;
                    (result, due.elapsed())
                });
            }
            Some((result, took)) = in_flight.next() => measured.add(result, took),
        }
    }
    measured.elapsed = started.elapsed();
    measured
}

/// `clients` tasks, each calling `op(i)` again as soon as the previous call
/// returned, for `length`: the most the other side serves at that
/// concurrency.
async fn closed_loop<F, Fut>(clients: usize, length: Duration, op: F) -> Measured
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    let op = Arc::new(op);
    let started = Instant::now();
    let end = started + length;
    let tasks: Vec<_> = (0..clients)
        .map(|client| {
            let op = op.clone();
            tokio::spawn(async move {
                let mut measured = Measured::default();
                let mut i = client;
                while Instant::now() < end {
                    let sent = Instant::now();
                    let result = op(i).await;
                    measured.add(result, sent.elapsed());
                    i += clients;
                }
                measured
            })
        })
        .collect();
    let mut all = Measured::default();
    for task in tasks {
        match task.await {
            Ok(m) => all.merge(m),
            Err(e) => all.add(Err(format!("client task: {e}")), Duration::ZERO),
        }
    }
    all.elapsed = started.elapsed();
    all
}

/// Waits until the projection has applied everything in the event log.
pub async fn projection_caught_up(
    client: &async_nats::Client,
    timeout: Duration,
) -> Result<(), String> {
    let started = Instant::now();
    let mut last = Value::Null;
    while started.elapsed() < timeout {
        if let Ok(Ok(reply)) = tokio::time::timeout(
            Duration::from_secs(2),
            client.request(contract::query::STATUS, bytes::Bytes::new()),
        )
        .await
            && let Ok(v) = serde_json::from_slice::<Value>(&reply.payload)
        {
            if v["ok"] == json!(true) && v["applied_seq"] == v["stream_last_seq"] {
                return Ok(());
            }
            last = v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!(
        "the projection did not catch up within {timeout:?}: {last}"
    ))
}

/// The review path of `key`.
fn review_url(addr: SocketAddr, key: ReviewKey) -> String {
    format!(
        "http://{addr}/api/v1/reviews/{}/{}",
        key.country, key.session
    )
}

/// Checks that the gateway serves the value the bucket holds, and returns
/// the size of the calendar it serves (for the record).
async fn check_answers(
    http: &reqwest::Client,
    addr: SocketAddr,
    bucket: &kv::Store,
    key: ReviewKey,
) -> Result<usize, String> {
    let body = get(http, &review_url(addr, key)).await?;
    let answer: Value =
        serde_json::from_slice(&body).map_err(|e| format!("review answer not JSON: {e}"))?;
    let stored = bucket
        .get(key.to_string())
        .await
        .map_err(|e| format!("KV get {key}: {e}"))?
        .ok_or_else(|| format!("no value for {key} in {}", contract::REVIEWS_BUCKET))?;
    let stored: Value =
        serde_json::from_slice(&stored).map_err(|e| format!("stored value not JSON: {e}"))?;
    if answer["review"] != stored {
        return Err(format!(
            "the gateway's answer for {key} is not the stored value: {answer}"
        ));
    }
    let calendar = get(http, &format!("http://{addr}/calendar.ics")).await?;
    if !calendar.starts_with(b"BEGIN:VCALENDAR") {
        return Err("/calendar.ics is not a calendar".into());
    }
    Ok(calendar.len())
}

/// Part 7.
#[expect(
    clippy::too_many_lines,
    reason = "a benchmark part reads as its script: services, stored reviews, the measured runs and the record, in order"
)]
pub async fn run(part: Part, sizes: Sizes) {
    let Some(bed) = Fixture::start(&part).await else {
        return;
    };
    let ingest = ServiceProcess::start(services::INGEST, &bed.url, SERVICE_ENV);
    let projection = ServiceProcess::start(services::PROJECTION, &bed.url, SERVICE_ENV);
    ingest.wait_healthy().await;
    projection.wait_healthy().await;
    let (gateway, addr) = start_gateway(&bed.url, &[]);
    gateway.wait_healthy().await;
    say(format!(
        "upr-ingest pid {:?}, upr-projection pid {:?}, upr-gateway pid {:?} on http://{addr}",
        ingest.pid(),
        projection.pid(),
        gateway.pid()
    ));

    // The reviews read: stored through ingest, as a publisher would.
    let mut keys = Keys::default();
    let mut generator = Generator::new(700);
    let plans: Vec<_> = (0..sizes.gateway_reviews)
        .map(|_| generator.review(keys.next_key(), None))
        .collect();
    let reviews: Arc<Vec<ReviewKey>> = Arc::new(plans.iter().map(|p| p.key).collect());
    let prepared = drive::prepare(&plans, crate::now());
    match drive::drive(
        &bed.url,
        prepared,
        sizes.connections,
        sizes.in_flight,
        Mode::Ingest,
    )
    .await
    {
        Ok(o) if o.failed == 0 => part.detail("events_stored", o.stored.into()),
        Ok(o) => return part.error(format!("storing the reviews: {:?}", o.errors)),
        Err(e) => return part.error(format!("storing the reviews: {e}")),
    }
    if let Err(e) = projection_caught_up(&bed.client, Duration::from_secs(60)).await {
        return part.error(e);
    }
    let bucket = match bed.js.get_key_value(contract::REVIEWS_BUCKET).await {
        Ok(b) => b,
        Err(e) => return part.error(format!("bucket {}: {e}", contract::REVIEWS_BUCKET)),
    };
    let http = match http_client() {
        Ok(h) => h,
        Err(e) => return part.error(e),
    };
    match check_answers(&http, addr, &bucket, reviews[0]).await {
        Ok(bytes) => part.detail("calendar_bytes", bytes.into()),
        Err(e) => return part.error(e),
    }
    let (rate, clients) = (sizes.gateway_rate, sizes.gateway_clients);
    part.detail("reviews", reviews.len().into());
    part.detail("rate_per_s", rate.into());
    part.detail("run_s", sizes.gateway_run.as_secs_f64().into());
    part.detail("closed_loop_clients", clients.into());
    part.detail(
        "closed_loop_run_s",
        sizes.gateway_closed_run.as_secs_f64().into(),
    );

    let paths: [(&str, &str); 2] = [
        ("review", "GET /api/v1/reviews/<CC>/<session>"),
        ("calendar", "GET /calendar.ics"),
    ];
    let send = |path: &str, i: usize| {
        let url = match path {
            "review" => review_url(addr, reviews[i % reviews.len()]),
            _ => format!("http://{addr}/calendar.ics"),
        };
        let http = http.clone();
        async move { get(&http, &url).await.map(drop) }
    };
    // Warm-up, not recorded: connections, the services' first requests.
    for (path, _) in paths {
        open_loop(rate, Duration::from_millis(500), |i| send(path, i)).await;
    }
    for r in 0..sizes.reps {
        for (path, what) in paths {
            let measured = open_loop(rate, sizes.gateway_run, |i| send(path, i)).await;
            let p = Percentiles::of(&measured.latencies_ms);
            say(format!(
                "gateway rep {}: {what} at {rate}/s: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms, {} failed",
                r + 1,
                p.p50,
                p.p99,
                p.max,
                measured.failed
            ));
            if let Some(first) = &measured.first_failure {
                part.push_detail(
                    "notes",
                    format!(
                        "run {}: {} of {} {what} requests failed at {rate}/s (first: {first})",
                        r + 1,
                        measured.failed,
                        measured.failed + p.count
                    )
                    .into(),
                );
            }
            if p.count == 0 {
                return part.error(format!("no {what} request was answered"));
            }
            let label =
                |q: &str| format!("Gateway {what} {q} at {} requests/s", fmt_num(rate.into()));
            part.record(
                &format!("gateway.{path}_p50"),
                &label("p50"),
                "ms",
                None,
                p.p50,
            );
            part.record(
                &format!("gateway.{path}_p99"),
                &label("p99"),
                "ms",
                Some(Goal::Below(5.0)),
                p.p99,
            );
            part.record(
                &format!("gateway.{path}_failed"),
                &format!(
                    "Gateway {what} requests failed at {} requests/s",
                    fmt_num(rate.into())
                ),
                "",
                None,
                measured.failed as f64,
            );
        }

        // The most each side serves with the same number of clients.
        let through_gateway = {
            let (http, reviews) = (http.clone(), reviews.clone());
            closed_loop(clients, sizes.gateway_closed_run, move |i| {
                let url = review_url(addr, reviews[i % reviews.len()]);
                let http = http.clone();
                async move { get(&http, &url).await.map(drop) }
            })
            .await
        };
        let direct = {
            let (bucket, reviews) = (bucket.clone(), reviews.clone());
            closed_loop(clients, sizes.gateway_closed_run, move |i| {
                let key = reviews[i % reviews.len()].to_string();
                let bucket = bucket.clone();
                async move {
                    match bucket.get(&key).await {
                        Ok(Some(_)) => Ok(()),
                        Ok(None) => Err(format!("no value for {key}")),
                        Err(e) => Err(format!("KV get {key}: {e}")),
                    }
                }
            })
            .await
        };
        for (side, m) in [("gateway", &through_gateway), ("direct KV get", &direct)] {
            if let Some(first) = &m.first_failure {
                part.push_detail(
                    "notes",
                    format!(
                        "run {}: {} {side} reads failed with {clients} clients (first: {first})",
                        r + 1,
                        m.failed
                    )
                    .into(),
                );
            }
        }
        if through_gateway.latencies_ms.is_empty() || direct.latencies_ms.is_empty() {
            return part.error("a closed-loop run answered nothing");
        }
        let (g, d) = (
            Percentiles::of(&through_gateway.latencies_ms),
            Percentiles::of(&direct.latencies_ms),
        );
        say(format!(
            "gateway rep {}: {clients} clients: gateway {:.0} reads/s (p50 {:.2} ms, p99 {:.2} ms), direct KV get {:.0} reads/s (p50 {:.2} ms, p99 {:.2} ms)",
            r + 1,
            through_gateway.rate(),
            g.p50,
            g.p99,
            direct.rate(),
            d.p50,
            d.p99
        ));
        part.push_detail(
            "closed_loop",
            json!({"gateway_p50_ms": g.p50, "gateway_p99_ms": g.p99, "kv_p50_ms": d.p50, "kv_p99_ms": d.p99}),
        );
        part.record(
            "gateway.kv_p50",
            &format!("Direct KV get of the same value p50 ({clients} clients, closed loop)"),
            "ms",
            None,
            d.p50,
        );
        part.record(
            "gateway.kv_p99",
            &format!("Direct KV get of the same value p99 ({clients} clients, closed loop)"),
            "ms",
            None,
            d.p99,
        );
        part.record(
            "gateway.closed_rate",
            &format!("Gateway review reads, {clients} clients, closed loop"),
            "requests/s",
            None,
            through_gateway.rate(),
        );
        part.record(
            "gateway.kv_rate",
            &format!("Direct KV gets, {clients} clients, closed loop"),
            "requests/s",
            None,
            direct.rate(),
        );
        part.record(
            "gateway.ratio",
            "Gateway rate / direct KV get rate",
            "",
            Some(Goal::AtLeast(0.5)),
            through_gateway.rate() / direct.rate(),
        );
    }
    drop((gateway, projection, ingest));
    bed.finish(&part, 7).await;
}
