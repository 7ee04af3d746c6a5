//! Part 2 (projection rebuild against a raw pull consumer), the stream-length
//! half of part 6 (rebuild time at 100k, 300k, 1M and 3M events) and the
//! projection's memory for part 5.
//!
//! The stream is prepared straight in JetStream: valid envelopes built with
//! the domain (`parse_intake` + `into_envelope`), reviews interleaved in log
//! order, each review's events lifecycle-valid. It is grown in steps, and at
//! each length the raw consumer and `upr-projection rebuild` read the very
//! same stream, alternating. Past 1M events the stream grows with denser
//! reviews (8 to 40 side events each): the member states and sessions give
//! 192,807 review keys, which the usual plans use up near 1.8M events.

use std::{collections::VecDeque, time::Duration};

use async_nats::jetstream::{
    self,
    consumer::{AckPolicy, DeliverPolicy, pull},
    message::PublishMessage,
};
use futures::StreamExt;
use tokio::time::Instant;
use upr_domain::{Envelope, EventType};
use upr_nats::contract;
use upr_tests::ServiceProcess;

use crate::fixture::Fixture;

use crate::{
    Sizes,
    ingest::{SERVICE_ENV, stream_messages},
    part::{Part, say},
    stats::Goal,
    system::MemWatch,
    workload::{Generator, Interleaved, Keys},
};

/// Publishes pipelined, at most this many acks outstanding.
const PREP_WINDOW: usize = 4096;
/// The raw consumer's pull batch.
const RAW_BATCH: usize = 5_000;
/// The raw consumer acks (ack-all) every this many messages.
const RAW_ACK_EVERY: u64 = 5_000;

/// Appends events from `source` until the stream holds `target` messages.
async fn grow(
    js: &jetstream::Context,
    source: &mut Interleaved,
    target: u64,
) -> Result<(), String> {
    let have = stream_messages(js).await?;
    let mut acks = VecDeque::with_capacity(PREP_WINDOW);
    let recorded_at = crate::now();
    for _ in have..target {
        let Some(event) = source.next() else {
            return Err("the workload ran out of events".into());
        };
        let message = PublishMessage::build()
            .payload(event.envelope(recorded_at))
            .message_id(event.id.to_string());
        let ack = js
            .send_publish(event.event_subject(), message)
            .await
            .map_err(|e| format!("prepare: publish: {e}"))?;
        acks.push_back(ack);
        if acks.len() >= PREP_WINDOW
            && let Some(a) = acks.pop_front()
        {
            a.await.map_err(|e| format!("prepare: ack: {e}"))?;
        }
    }
    for a in acks {
        a.await.map_err(|e| format!("prepare: ack: {e}"))?;
    }
    let now = stream_messages(js).await?;
    if now != target {
        return Err(format!(
            "prepared stream holds {now} messages, wanted {target}"
        ));
    }
    Ok(())
}

/// Reads the whole stream with a pull consumer shaped like the projection's
/// (deliver all, ack-all); with `decode`, also parses every envelope.
/// Returns the elapsed time.
pub async fn raw_consume(
    js: &jetstream::Context,
    expected: u64,
    decode: bool,
    name: &str,
) -> Result<Duration, String> {
    let started = Instant::now();
    let stream = js
        .get_stream(contract::EVENTS_STREAM)
        .await
        .map_err(|e| format!("get stream: {e}"))?;
    let consumer: jetstream::consumer::PullConsumer = stream
        .create_consumer(pull::Config {
            name: Some(name.into()),
            deliver_policy: DeliverPolicy::All,
            ack_policy: AckPolicy::All,
            max_ack_pending: i64::try_from(RAW_ACK_EVERY * 4).expect("a small constant"),
            inactive_threshold: Duration::from_secs(60),
            ..Default::default()
        })
        .await
        .map_err(|e| format!("create consumer: {e}"))?;
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(RAW_BATCH)
        .messages()
        .await
        .map_err(|e| format!("consume: {e}"))?;
    let mut n = 0u64;
    let mut bad = 0u64;
    while n < expected {
        let message = tokio::time::timeout(Duration::from_secs(30), messages.next())
            .await
            .map_err(|_| format!("raw consumer stalled after {n} of {expected}"))?
            .ok_or("raw consumer ended early")?
            .map_err(|e| format!("raw consumer: {e}"))?;
        n += 1;
        if decode && Envelope::from_json(&message.payload).is_err() {
            bad += 1;
        }
        if n.is_multiple_of(RAW_ACK_EVERY) || n == expected {
            message.ack().await.map_err(|e| format!("ack: {e}"))?;
        }
    }
    let elapsed = started.elapsed();
    drop(messages);
    let _ = stream.delete_consumer(name).await;
    if bad > 0 {
        return Err(format!("{bad} prepared envelopes did not decode"));
    }
    Ok(elapsed)
}

/// Messages (= keys, history 1) in the reviews bucket.
async fn reviews_in_bucket(js: &jetstream::Context) -> Result<u64, String> {
    let mut s = js
        .get_stream(format!("KV_{}", contract::REVIEWS_BUCKET))
        .await
        .map_err(|e| format!("reviews bucket: {e}"))?;
    Ok(s.info()
        .await
        .map_err(|e| format!("reviews bucket info: {e}"))?
        .state
        .messages)
}

/// Values, average stored bytes per value and puts so far of each read-model
/// bucket (history 1), which explain how write cost grows with the stream.
async fn bucket_sizes(js: &jetstream::Context) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    for bucket in [
        contract::REVIEWS_BUCKET,
        contract::SESSIONS_BUCKET,
        contract::COUNTRIES_BUCKET,
    ] {
        if let Ok(mut s) = js.get_stream(format!("KV_{bucket}")).await
            && let Ok(info) = s.info().await
        {
            let n = info.state.messages.max(1);
            out.insert(
                bucket.into(),
                serde_json::json!({
                    "values": info.state.messages,
                    "avg_bytes": info.state.bytes / n,
                    // Puts since the bucket was created (history 1 keeps
                    // only the last of each key): the write amplification.
                    "puts": info.state.last_sequence,
                }),
            );
        }
    }
    out.into()
}

/// Runs `upr-projection rebuild` to completion; returns its wall time (spawn
/// to exit) and peak RSS in MB.
async fn rebuild(url: &str, timeout: Duration) -> Result<(Duration, f64), String> {
    let started = Instant::now();
    let mut process = ServiceProcess::start_args("upr-projection", url, SERVICE_ENV, &["rebuild"]);
    let pid = process.pid();
    say(format!("rebuild pid {pid:?}"));
    let mem = pid.map(MemWatch::start);
    let deadline = started + timeout;
    let status = loop {
        if let Some(status) = process.try_exit() {
            break status;
        }
        if Instant::now() > deadline {
            let logs = process.logs();
            process.kill9();
            return Err(format!(
                "rebuild did not finish within {timeout:?}; log tail: {}",
                tail(&logs)
            ));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let elapsed = started.elapsed();
    let mb = match mem {
        Some(m) => m.stop(None).await,
        None => 0.0,
    };
    if !status.success() {
        return Err(format!(
            "rebuild exited with {status}; log tail: {}",
            tail(&process.logs())
        ));
    }
    Ok((elapsed, mb))
}

fn tail(logs: &str) -> String {
    let lines: Vec<&str> = logs.lines().rev().take(8).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join("\n")
}

/// Part 2 and the stream-length curve of part 6.
/// Past this length the stream grows with denser reviews (8 to 40 side
/// events instead of 3 to 10): the lengths up to it keep the workload their
/// earlier figures were taken with.
const DENSE_AFTER: u64 = 1_000_000;

#[expect(
    clippy::too_many_lines,
    reason = "a benchmark part reads as its script: services, warm-up, the measured runs and the record, in order"
)]
pub async fn run(part: Part, sizes: Sizes) {
    let Some(bed) = Fixture::start_owning_event_log(&part).await else {
        return;
    };
    let (url, js) = (&bed.url, &bed.js);
    let full = *sizes
        .stream_lengths
        .iter()
        .max()
        .unwrap_or(&sizes.projection_events);
    let full = usize::try_from(full).expect("a stream length fits in memory");
    let window = (full / 8).clamp(10, 2_000);
    let mut source = Interleaved::new(Generator::new(42), Keys::default(), full, window);
    part.detail("events", (full as u64).into());

    for &length in &sizes.stream_lengths {
        if length > DENSE_AFTER {
            // The member states and sessions run out of review keys near
            // 1.8M events at the usual density.
            source.denser();
        }
        say(format!("projection: preparing a stream of {length} events"));
        let prep = Instant::now();
        if let Err(e) = grow(js, &mut source, length).await {
            part.error(e);
            return;
        }
        let reviews = source.reviews() as u64;
        say(format!(
            "projection: {length} events over {reviews} reviews ready in {:.1} s",
            prep.elapsed().as_secs_f64()
        ));
        let types: serde_json::Map<String, serde_json::Value> = EventType::ALL
            .iter()
            .zip(source.by_type)
            .map(|(t, n)| (t.as_str().to_string(), n.into()))
            .collect();
        part.push_detail(
            "streams",
            serde_json::json!({"events": length, "reviews": reviews, "by_type": types}),
        );
        let is_main = length == sizes.projection_events;
        for rep in 0..sizes.reps {
            let raw =
                match raw_consume(js, length, false, &format!("bench-raw-{length}-{rep}")).await {
                    Ok(d) => d,
                    Err(e) => return part.error(e),
                };
            let decoded = match raw_consume(
                js,
                length,
                true,
                &format!("bench-decode-{length}-{rep}"),
            )
            .await
            {
                Ok(d) => d,
                Err(e) => return part.error(e),
            };
            let (took, mb) = match rebuild(url, sizes.rebuild_timeout).await {
                Ok(r) => r,
                Err(e) => return part.error(e),
            };
            match reviews_in_bucket(js).await {
                Ok(n) if n == reviews => {}
                Ok(n) => {
                    return part.error(format!(
                        "after rebuild upr_reviews holds {n} reviews, the stream has {reviews}"
                    ));
                }
                Err(e) => return part.error(e),
            }
            if rep == 0 {
                let sizes = bucket_sizes(js).await;
                say(format!(
                    "projection {length}: read-model buckets after rebuild: {sizes}"
                ));
                part.push_detail(
                    "buckets",
                    serde_json::json!({"events": length, "buckets": sizes}),
                );
            }
            let rate = |d: Duration| length as f64 / d.as_secs_f64();
            say(format!(
                "projection {length} rep {}: raw {:.0}/s, raw+decode {:.0}/s, rebuild {:.0}/s ({:.2} s, {mb:.0} MB)",
                rep + 1,
                rate(raw),
                rate(decoded),
                rate(took),
                took.as_secs_f64()
            ));
            if sizes.stream_lengths.len() > 1 {
                part.record(
                    &format!("scaling.rebuild_s.{length}"),
                    &format!("Rebuild time, {length} events"),
                    "s",
                    None,
                    took.as_secs_f64(),
                );
                part.record(
                    &format!("scaling.raw_s.{length}"),
                    &format!("Raw consumer time, {length} events"),
                    "s",
                    None,
                    raw.as_secs_f64(),
                );
                part.record(
                    &format!("scaling.rss.{length}"),
                    &format!("Rebuild peak RSS, {length} events"),
                    "MB",
                    None,
                    mb,
                );
            }
            if is_main {
                part.record(
                    "projection.raw",
                    "Raw pull consumer",
                    "events/s",
                    None,
                    rate(raw),
                );
                part.record(
                    "projection.decode",
                    "Raw pull consumer + envelope decode",
                    "events/s",
                    None,
                    rate(decoded),
                );
                part.record(
                    "projection.rebuild",
                    "upr-projection rebuild",
                    "events/s",
                    None,
                    rate(took),
                );
                part.record(
                    "projection.ratio",
                    "Rebuild / raw",
                    "",
                    Some(Goal::AtLeast(0.5)),
                    rate(took) / rate(raw),
                );
                part.record(
                    "memory.projection",
                    "upr-projection rebuild peak RSS (part 2)",
                    "MB",
                    Some(Goal::Below(100.0)),
                    mb,
                );
            }
        }
    }
    bed.finish(&part, 2).await;
}
