//! Part 3: end-to-end latency at a steady rate, from the ingest request
//! being sent to the change being visible through `upr.query.review.*` with
//! `min_seq` (read-your-own-write).
//!
//! Open loop: a send is due every 1/rate seconds whatever happened to the
//! previous ones, and each latency is measured from when its send was due,
//! so a stall shows up in the figures instead of silently slowing the load.

use std::{collections::VecDeque, time::Duration};

use bytes::Bytes;
use futures::{StreamExt, stream::FuturesUnordered};
use serde_json::{Value, json};
use tokio::time::{Instant, MissedTickBehavior};
use upr_domain::ReviewKey;
use upr_nats::contract;
use upr_tests::ServiceProcess;

use crate::fixture::Fixture;

use crate::{
    Sizes,
    drive::{self, Prepared},
    ingest::SERVICE_ENV,
    part::{Part, say},
    stats::{Goal, Percentiles},
    system::MemWatch,
    workload::{Generator, Keys},
};

/// Reviews kept cycling, so consecutive events mostly hit different reviews.
const ACTIVE_REVIEWS: usize = 64;

struct Sample {
    ingest_ms: f64,
    total_ms: f64,
}

/// One event: request, then (with `query`) query the review with `min_seq`;
/// both measured from `due`.
async fn one(
    client: async_nats::Client,
    key: ReviewKey,
    p: Prepared,
    due: Instant,
    query: bool,
) -> Result<Sample, String> {
    let seq = drive::ingest_send(client.clone(), p).await?;
    let ingest_ms = due.elapsed().as_secs_f64() * 1e3;
    if !query {
        return Ok(Sample {
            ingest_ms,
            total_ms: ingest_ms,
        });
    }
    let query = Bytes::from(json!({"min_seq": seq}).to_string());
    let reply = client
        .request(contract::query::review(key), query)
        .await
        .map_err(|e| format!("query: {e}"))?;
    let total_ms = due.elapsed().as_secs_f64() * 1e3;
    let v: Value =
        serde_json::from_slice(&reply.payload).map_err(|e| format!("query reply: {e}"))?;
    let last = v["review"]["last_seq"].as_u64();
    if v["ok"] != json!(true) || last.is_none_or(|l| l < seq) {
        return Err(format!("query for {key} after seq {seq} answered {v}"));
    }
    Ok(Sample {
        ingest_ms,
        total_ms,
    })
}

/// One repetition: `events` events at `rate`/s, each followed by its
/// `min_seq` query when `query`.
async fn rep(
    client: &async_nats::Client,
    keys: &mut Keys,
    seed: u64,
    (events, rate): (usize, u32),
    query: bool,
) -> Result<Vec<Sample>, String> {
    let mut generator = Generator::new(seed);
    let mut idle: VecDeque<(ReviewKey, std::vec::IntoIter<Prepared>)> = VecDeque::new();
    let mut in_flight = FuturesUnordered::new();
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate)));
    ticker.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let mut samples = Vec::with_capacity(events);
    let mut sent = 0;
    let mut waited_for_review = 0usize;
    while sent < events || !in_flight.is_empty() {
        tokio::select! {
            due = ticker.tick(), if sent < events => {
                if idle.len() < ACTIVE_REVIEWS {
                    let plan = generator.review(keys.next_key(), None);
                    let prepared = drive::prepare(std::slice::from_ref(&plan), crate::now());
                    let events = prepared.into_iter().next().unwrap_or_default();
                    idle.push_back((plan.key, events.into_iter()));
                }
                let Some((key, mut rest)) = idle.pop_front() else {
                    waited_for_review += 1;
                    continue;
                };
                let Some(p) = rest.next() else { continue };
                sent += 1;
                let c = client.clone();
                in_flight.push(async move { (key, rest, one(c, key, p, due, query).await) });
            }
            Some((key, rest, result)) = in_flight.next() => {
                samples.push(result?);
                if rest.len() > 0 {
                    idle.push_back((key, rest));
                }
            }
        }
    }
    if waited_for_review > 0 {
        return Err(format!("{waited_for_review} sends found no idle review"));
    }
    Ok(samples)
}

/// Part 3.
pub async fn run(part: Part, sizes: Sizes) {
    let Some(bed) = Fixture::start(&part).await else {
        return;
    };
    let client = &bed.client;
    let ingest = ServiceProcess::start("upr-ingest", &bed.url, SERVICE_ENV);
    let projection = ServiceProcess::start("upr-projection", &bed.url, SERVICE_ENV);
    ingest.wait_healthy().await;
    projection.wait_healthy().await;
    let mem = projection.pid().map(MemWatch::start);
    say(format!(
        "upr-ingest pid {:?}, upr-projection pid {:?}",
        ingest.pid(),
        projection.pid()
    ));
    let mut keys = Keys::default();
    part.detail("rate_per_s", sizes.latency_rate.into());
    part.detail("events_per_run", sizes.latency_events.into());
    // Warm-up, not recorded.
    if let Err(e) = rep(
        client,
        &mut keys,
        7,
        (
            (sizes.latency_rate as usize / 2).min(500),
            sizes.latency_rate,
        ),
        true,
    )
    .await
    {
        return part.error(format!("latency warm-up: {e}"));
    }
    for r in 0..sizes.reps {
        let samples = match rep(
            client,
            &mut keys,
            300 + r as u64,
            (sizes.latency_events, sizes.latency_rate),
            true,
        )
        .await
        {
            Ok(s) => s,
            Err(e) => return part.error(e),
        };
        let total = Percentiles::of(&samples.iter().map(|s| s.total_ms).collect::<Vec<_>>());
        let ingest = Percentiles::of(&samples.iter().map(|s| s.ingest_ms).collect::<Vec<_>>());
        say(format!(
            "latency rep {}: end-to-end p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms (ingest reply p50 {:.2}, p99 {:.2})",
            r + 1,
            total.p50,
            total.p99,
            total.max,
            ingest.p50,
            ingest.p99
        ));
        part.push_detail("samples", total.count.into());
        part.record("latency.p50", "End-to-end p50", "ms", None, total.p50);
        part.record(
            "latency.p99",
            "End-to-end p99",
            "ms",
            Some(Goal::Below(10.0)),
            total.p99,
        );
        part.record("latency.max", "End-to-end max", "ms", None, total.max);
        part.record(
            "latency.ingest_p50",
            "Ingest reply p50",
            "ms",
            None,
            ingest.p50,
        );
        part.record(
            "latency.ingest_p99",
            "Ingest reply p99",
            "ms",
            None,
            ingest.p99,
        );
    }
    if let Err(e) = high_rate(&part, &sizes, client, &mut keys).await {
        return part.error(e);
    }
    if let Some(mem) = mem {
        let mb = mem.stop(projection.pid()).await;
        part.record(
            "memory.projection_live",
            "upr-projection peak RSS (part 3)",
            "MB",
            Some(Goal::Below(100.0)),
            mb,
        );
    }
    drop((ingest, projection));
    bed.finish(&part, 3).await;
}

/// Part 3's ingest reply at a rate ten times higher: what a publisher
/// feeding a whole session at once waits for. Without the queries: one
/// waiting query per event would measure the query service's waiting limit.
async fn high_rate(
    part: &Part,
    sizes: &Sizes,
    client: &async_nats::Client,
    keys: &mut Keys,
) -> Result<(), String> {
    for r in 0..sizes.latency_high_rate.map_or(0, |_| sizes.reps) {
        let rate = sizes.latency_high_rate.unwrap_or(sizes.latency_rate);
        let events = sizes.latency_events.max(rate as usize * 3);
        let samples = rep(client, keys, 400 + r as u64, (events, rate), false).await?;
        let ingest = Percentiles::of(&samples.iter().map(|s| s.ingest_ms).collect::<Vec<_>>());
        say(format!(
            "latency at {rate}/s rep {}: ingest reply p50 {:.2} ms, p99 {:.2} ms",
            r + 1,
            ingest.p50,
            ingest.p99,
        ));
        part.record(
            "latency.high.ingest_p50",
            &format!("Ingest reply p50 at {rate} events/s"),
            "ms",
            None,
            ingest.p50,
        );
        part.record(
            "latency.high.ingest_p99",
            &format!("Ingest reply p99 at {rate} events/s"),
            "ms",
            None,
            ingest.p99,
        );
    }
    Ok(())
}
