//! Load generator and raw-read baseline for measuring `upr-projection rebuild`.
//!
//! ```text
//! cargo run --release -p upr-projection --example rebuild_bench -- nats://127.0.0.1:4222 1000000 200000 chunked
//! /usr/bin/time -v target/release/upr-projection rebuild
//! ```
//!
//! Publishes `events` events over `reviews` reviews into `UPR_EVENTS` (only
//! when the stream is empty), five per review (scheduled, rescheduled, side
//! event, held, report published); `chunked` keeps a review's events within
//! a few thousand sequences, `spread` puts them a whole round apart (the
//! worst case for write coalescing). Then it reads the whole stream once
//! with a plain consumer and prints that read rate, the baseline the
//! rebuild rate is compared with.

#![allow(
    clippy::unwrap_used,
    reason = "a measuring tool run by hand: a failure should stop it where it happened"
)]

use std::time::Instant;

use async_nats::jetstream::{self, consumer::pull, message::PublishMessage};
use futures::StreamExt;
use serde_json::json;
use upr_domain::{Envelope, MEMBER_STATES, Timestamp, parse_intake};
use upr_nats::contract::{self, subjects};

fn envelope(n: u64, review: u64, step: u64) -> Envelope {
    let country = MEMBER_STATES[usize::try_from(review).unwrap() % MEMBER_STATES.len()].0;
    let session = review / MEMBER_STATES.len() as u64 % 999 + 1;
    let day = review % 28 + 1;
    let (ty, payload) = match step {
        0 => (
            "review_scheduled",
            json!({"scheduled_for": format!("2031-01-{day:02}T08:30:00Z")}),
        ),
        1 => (
            "review_rescheduled",
            json!({"scheduled_for": format!("2031-02-{day:02}T08:30:00Z"), "reason": "room"}),
        ),
        2 => (
            "side_event_held",
            json!({"title": format!("Side event {n}"), "held_on": format!("2031-02-{day:02}"),
            "speakers": [{"name": "A. Speaker", "role": "NGO"}], "participating_states": 12}),
        ),
        3 => (
            "review_held",
            json!({"held_on": format!("2031-02-{day:02}"), "recommendations_received": 250}),
        ),
        _ => (
            "report_published",
            json!({"published_on": "2031-06-01", "document_symbol": "A/HRC/70/1",
            "recommendations": {"total": 250, "supported": 200, "noted": 50}}),
        ),
    };
    let mut payload = payload;
    payload["country"] = country.into();
    payload["session"] = session.into();
    let cmd = parse_intake(ty, payload.to_string().as_bytes()).expect("valid intake");
    let id = uuid::Uuid::from_u128(u128::from(n) + 1);
    cmd.into_envelope(
        id,
        Timestamp::parse_rfc3339("2030-12-01T00:00:00Z").expect("time"),
        None,
    )
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let url = args
        .first()
        .cloned()
        .unwrap_or_else(|| "nats://127.0.0.1:4222".into());
    let events: u64 = args.get(1).map_or(Ok(1_000_000), |s| s.parse())?;
    let reviews: u64 = args.get(2).map_or(Ok(200_000), |s| s.parse())?;
    let spread = args.get(3).is_some_and(|s| s == "spread");
    let client = async_nats::connect(&url).await?;
    let js = jetstream::new(client);
    let mut stream = upr_nats::setup::ensure_own_stream(
        &js,
        contract::events_stream(1, contract::DEFAULT_DEDUP_WINDOW),
    )
    .await?;
    if stream.info().await?.state.messages == 0 {
        let started = Instant::now();
        let mut acks = std::collections::VecDeque::new();
        let chunk = 1000.min(reviews);
        for n in 0..events {
            let (review, step) = if spread {
                (n % reviews, n / reviews % 5)
            } else {
                let block = n / (chunk * 5);
                let within = n % (chunk * 5);
                ((block * chunk + within % chunk) % reviews, within / chunk)
            };
            let e = envelope(n, review, step);
            let subject = subjects::event(e.country, e.session, e.event_type());
            let publish = PublishMessage::build()
                .payload(e.to_json().into())
                .message_id(e.id.to_string());
            acks.push_back(js.send_publish(subject, publish).await?);
            if acks.len() >= 4096
                && let Some(ack) = acks.pop_front()
            {
                ack.await?;
            }
        }
        for ack in acks {
            ack.await?;
        }
        println!(
            "published {events} events in {:.1} s",
            started.elapsed().as_secs_f64()
        );
    }
    let total = stream.info().await?.state.messages;
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            deliver_policy: jetstream::consumer::DeliverPolicy::All,
            ..Default::default()
        })
        .await?;
    let started = Instant::now();
    let mut messages = consumer.messages().await?;
    let mut read = 0u64;
    while let Some(m) = messages.next().await {
        let m = m?;
        read += 1;
        if m.info()?.pending == 0 {
            break;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "raw read: {read} of {total} messages in {secs:.2} s = {:.0} msgs/s",
        read as f64 / secs
    );
    Ok(())
}
