//! Sending a workload with many events in flight, one per review at a time
//! (a review's next event depends on the previous one: its lifecycle, and
//! for the raw publisher its expected last sequence).
//!
//! The same driver feeds the raw JetStream publisher and the ingest clients,
//! so the two differ only in what one send does.

use std::{future::Future, sync::Arc, time::Duration};

use async_nats::{
    HeaderMap,
    jetstream::{self, message::PublishMessage},
};
use bytes::Bytes;
use futures::{StreamExt, stream::FuturesUnordered};
use serde_json::Value;
use tokio::{sync::Barrier, time::Instant};
use upr_domain::Timestamp;
use upr_nats::contract::{self, subjects};

use crate::workload::ReviewPlan;

/// One event ready to send: both forms precomputed, so the timed loop does
/// no JSON work.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// `upr.ingest.<type>`.
    pub ingest_subject: String,
    /// The intake JSON.
    pub intake: Bytes,
    /// `upr.events.<C>.<S>.<type>`.
    pub event_subject: String,
    /// The envelope ingest would store.
    pub envelope: Bytes,
    /// `Nats-Msg-Id`.
    pub id: String,
    /// `upr.events.<C>.<S>.>`: scope of the expected-sequence check.
    pub filter: String,
}

/// A review's prepared events.
pub type PreparedPlan = Vec<Prepared>;

/// Builds both forms of every event of `plans`.
pub fn prepare(plans: &[ReviewPlan], recorded_at: Timestamp) -> Vec<PreparedPlan> {
    plans
        .iter()
        .map(|p| {
            let filter = subjects::review_events(p.key);
            p.events
                .iter()
                .map(|e| Prepared {
                    ingest_subject: e.ingest_subject(),
                    intake: e.intake.clone(),
                    event_subject: e.event_subject(),
                    envelope: e.envelope(recorded_at),
                    id: e.id.to_string(),
                    filter: filter.clone(),
                })
                .collect()
        })
        .collect()
}

/// What one drive achieved.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// Events stored (acknowledged, or answered `ok`).
    pub stored: usize,
    /// Events that failed (their review's later events are not sent).
    pub failed: usize,
    /// Events not sent because an earlier one of the review failed.
    pub skipped: usize,
    /// First few error messages.
    pub errors: Vec<String>,
    /// Wall time from the common start to the last answer.
    pub elapsed: Duration,
}

impl Outcome {
    /// Stored events per second.
    pub fn rate(&self) -> f64 {
        self.stored as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn merge(&mut self, other: Outcome) {
        self.stored += other.stored;
        self.failed += other.failed;
        self.skipped += other.skipped;
        for e in other.errors {
            if self.errors.len() < 5 {
                self.errors.push(e);
            }
        }
        self.elapsed = self.elapsed.max(other.elapsed);
    }
}

/// How a send is done: the raw publisher or an ingest request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// JetStream publish with the headers ingest sets, awaiting the ack.
    Raw,
    /// Request on `upr.ingest.<type>`, awaiting ingest's reply.
    Ingest,
}

/// Sends `plans` over `connections` connections to `url`, each keeping up
/// to `window / connections` reviews in flight; returns when every event
/// was answered (or its review failed).
pub async fn drive(
    url: &str,
    plans: Vec<PreparedPlan>,
    connections: usize,
    window: usize,
    mode: Mode,
) -> Result<Outcome, String> {
    let connections = connections.max(1);
    let per_conn = (window / connections).max(1);
    let mut shares: Vec<Vec<PreparedPlan>> = (0..connections).map(|_| Vec::new()).collect();
    for (i, p) in plans.into_iter().enumerate() {
        shares[i % connections].push(p);
    }
    let barrier = Arc::new(Barrier::new(connections + 1));
    let mut tasks = Vec::new();
    for share in shares {
        let client = connect(url).await?;
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let started = Instant::now();
            let mut outcome = match mode {
                Mode::Raw => {
                    let js = jetstream::ContextBuilder::new()
                        .timeout(Duration::from_secs(10))
                        .max_ack_inflight(per_conn * 2 + 16)
                        .build(client.clone());
                    drive_one(share, per_conn, |p, last| raw_send(js.clone(), p, last)).await
                }
                Mode::Ingest => {
                    drive_one(share, per_conn, |p, _| ingest_send(client.clone(), p)).await
                }
            };
            outcome.elapsed = started.elapsed();
            let _ = client.flush().await;
            outcome
        }));
    }
    barrier.wait().await;
    let mut total = Outcome::default();
    for t in tasks {
        total.merge(t.await.map_err(|e| format!("driver task: {e}"))?);
    }
    Ok(total)
}

/// A client for the benchmark: generous request timeout, loopback only.
pub async fn connect(url: &str) -> Result<async_nats::Client, String> {
    async_nats::ConnectOptions::new()
        .request_timeout(Some(Duration::from_secs(10)))
        .connect(url)
        .await
        .map_err(|e| format!("connect {url}: {e}"))
}

async fn raw_send(js: jetstream::Context, p: Prepared, last: u64) -> Result<u64, String> {
    let message = PublishMessage::build()
        .payload(p.envelope)
        .message_id(&p.id)
        .expected_last_subject_sequence(last)
        .header(
            contract::ingest::EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT,
            p.filter.as_str(),
        );
    let ack = js
        .send_publish(p.event_subject, message)
        .await
        .map_err(|e| format!("publish: {e}"))?
        .await
        .map_err(|e| format!("ack: {e}"))?;
    Ok(ack.sequence)
}

/// An ingest request; `Ok(seq)` only for `{"ok": true, "duplicate": false}`.
pub async fn ingest_send(client: async_nats::Client, p: Prepared) -> Result<u64, String> {
    let reply = client
        .request_with_headers(p.ingest_subject, HeaderMap::new(), p.intake)
        .await
        .map_err(|e| format!("request: {e}"))?;
    ingest_reply_seq(&reply.payload)
}

/// The `seq` of an accepted, non-duplicate ingest reply.
pub fn ingest_reply_seq(payload: &[u8]) -> Result<u64, String> {
    let v: Value =
        serde_json::from_slice(payload).map_err(|e| format!("reply is not JSON: {e}"))?;
    match (
        v["ok"].as_bool(),
        v["seq"].as_u64(),
        v["duplicate"].as_bool(),
    ) {
        (Some(true), Some(seq), Some(false)) => Ok(seq),
        _ => Err(format!("ingest answered {v}")),
    }
}

/// One connection's share: keeps `window` reviews in flight; when a review's
/// event is answered, sends its next one, or starts the next review.
async fn drive_one<F, Fut>(plans: Vec<PreparedPlan>, window: usize, send: F) -> Outcome
where
    F: Fn(Prepared, u64) -> Fut,
    Fut: Future<Output = Result<u64, String>>,
{
    struct Cursor {
        events: std::vec::IntoIter<Prepared>,
        last_seq: u64,
    }
    let mut cursors: Vec<Cursor> = plans
        .into_iter()
        .map(|p| Cursor {
            events: p.into_iter(),
            last_seq: 0,
        })
        .collect();
    let mut outcome = Outcome::default();
    let mut in_flight = FuturesUnordered::new();
    let mut next_review = 0;
    let start = |i: usize, cursors: &mut Vec<Cursor>| {
        let c = &mut cursors[i];
        c.events.next().map(|p| {
            let fut = send(p, c.last_seq);
            async move { (i, fut.await) }
        })
    };
    while next_review < cursors.len() && in_flight.len() < window {
        if let Some(f) = start(next_review, &mut cursors) {
            in_flight.push(f);
        }
        next_review += 1;
    }
    while let Some((i, result)) = in_flight.next().await {
        match result {
            Ok(seq) => {
                outcome.stored += 1;
                cursors[i].last_seq = seq;
                if let Some(f) = start(i, &mut cursors) {
                    in_flight.push(f);
                    continue;
                }
            }
            Err(e) => {
                outcome.failed += 1;
                outcome.skipped += cursors[i].events.len();
                if outcome.errors.len() < 5 {
                    outcome.errors.push(e);
                }
            }
        }
        // This review is done: start the next one.
        while next_review < cursors.len() {
            let f = start(next_review, &mut cursors);
            next_review += 1;
            if let Some(f) = f {
                in_flight.push(f);
                break;
            }
        }
    }
    outcome
}
