//! Reading back what JetStream holds, and watching the notifier while the
//! run goes on: the checks compare against the stored streams and buckets,
//! never against what the services say about themselves.

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use async_nats::{Client, jetstream};
use bytes::Bytes;
use futures::StreamExt;
use serde_json::{Value, json};
use upr_nats::contract;

use crate::{client::Driver, now_ms};

/// The bulk clients pause while the notifier is this many events behind...
const GATE_CLOSE: u64 = 120;
/// ... until it is no more than this many behind.
const GATE_OPEN: u64 = 40;

pub(crate) struct StoredMsg {
    pub(crate) seq: u64,
    pub(crate) subject: String,
    pub(crate) msg_id: Option<String>,
    pub(crate) payload: Bytes,
}

/// Every message of a stream, in order, with an ordered consumer.
pub(crate) async fn read_stream(client: &Client, name: &str) -> Vec<StoredMsg> {
    let js = jetstream::new(client.clone());
    let mut stream = js.get_stream(name).await.expect("stream exists");
    let info = stream.info().await.expect("stream info");
    let (count, last) = (info.state.messages, info.state.last_sequence);
    let mut out = Vec::with_capacity(usize::try_from(count).unwrap_or_default());
    if count == 0 {
        return out;
    }
    let consumer = stream
        .create_consumer(jetstream::consumer::push::OrderedConfig {
            deliver_subject: client.new_inbox(),
            ..Default::default()
        })
        .await
        .expect("ordered consumer");
    let mut messages = consumer.messages().await.expect("messages");
    while let Some(m) = tokio::time::timeout(Duration::from_secs(30), messages.next())
        .await
        .expect("stream read stalled")
    {
        let m = m.expect("ordered message");
        let seq = m.info().expect("jetstream metadata").stream_sequence;
        let msg_id = m
            .headers
            .as_ref()
            .and_then(|h| h.get("Nats-Msg-Id"))
            .map(ToString::to_string);
        out.push(StoredMsg {
            seq,
            subject: m.subject.to_string(),
            msg_id,
            payload: m.payload.clone(),
        });
        if seq >= last {
            break;
        }
    }
    out
}

/// Every key and value of a KV bucket.
pub(crate) async fn read_bucket(client: &Client, bucket: &str) -> BTreeMap<String, Bytes> {
    let js = jetstream::new(client.clone());
    let kv = js.get_key_value(bucket).await.expect("bucket exists");
    let keys: Vec<String> = kv
        .keys()
        .await
        .expect("keys")
        .map(|k| k.expect("key"))
        .collect()
        .await;
    let mut out = BTreeMap::new();
    for key in keys {
        if let Some(v) = kv.get(&key).await.expect("kv get") {
            out.insert(key, v);
        }
    }
    out
}

async fn consumer_caught_up(client: &Client, stream: &str, consumer: &str) -> bool {
    let js = jetstream::new(client.clone());
    let Ok(s) = js.get_stream(stream).await else {
        return false;
    };
    let Ok(info) = s.consumer_info(consumer).await else {
        return false;
    };
    info.num_pending == 0 && info.num_ack_pending == 0
}

/// Whether the projection has applied the log up to `last_seq` and the
/// notifier has nothing pending on the events or its timers; polled until
/// `within`. `false` when they did not catch up in time.
pub(crate) async fn wait_caught_up(client: &Client, last_seq: u64, within: Duration) -> bool {
    let caught_up = async {
        loop {
            let status = client
                .request(contract::query::STATUS, json!({}).to_string().into())
                .await
                .ok()
                .and_then(|r| serde_json::from_slice::<Value>(&r.payload).ok());
            let projection_done = status.is_some_and(|s| s["applied_seq"] == last_seq);
            let notifier_done = consumer_caught_up(
                client,
                contract::EVENTS_STREAM,
                contract::notifier::EVENTS_CONSUMER,
            )
            .await
                && consumer_caught_up(
                    client,
                    contract::notifier::TIMERS_STREAM,
                    contract::notifier::TIMERS_CONSUMER,
                )
                .await;
            if projection_done && notifier_done {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    tokio::time::timeout(within, caught_up).await.is_ok()
}

/// Samples the notifier's ack floor on `UPR_EVENTS` every 200 ms: when the
/// notifier had applied a given event, at the latest.
///
/// It also works the gate of the bulk clients. The notifier applies events
/// one at a time across all replicas, slower than a debug-built ingest on
/// two shared cores accepts them; unthrottled, its backlog grows for the
/// whole run and every near-term reminder would be planned after its review
/// date, leaving nothing to check. So while the notifier is alive (its floor
/// moved within the last second) and more than [`GATE_CLOSE`] events behind,
/// the bulk clients pause; near-term reviews never do.
pub(crate) async fn sample_notifier_floor(
    driver: Driver,
    stop: Arc<AtomicBool>,
) -> Vec<(i64, u64)> {
    let js = jetstream::new(driver.client.clone());
    let mut samples: Vec<(i64, u64)> = Vec::new();
    let mut moved_at = now_ms();
    while !stop.load(Ordering::Relaxed) {
        let floor = async {
            let s = js.get_stream(contract::EVENTS_STREAM).await.ok()?;
            let info = s
                .consumer_info(contract::notifier::EVENTS_CONSUMER)
                .await
                .ok()?;
            Some(info.ack_floor.stream_sequence)
        };
        if let Ok(Some(floor)) = tokio::time::timeout(Duration::from_secs(1), floor).await {
            let now = now_ms();
            if samples.last().is_none_or(|(_, f)| *f != floor) {
                moved_at = now;
            }
            samples.push((now, floor));
            let backlog = driver.max_seq.load(Ordering::Relaxed).saturating_sub(floor);
            let alive = now - moved_at < 1000;
            let closed = driver.gate.load(Ordering::Relaxed);
            let close = alive && (backlog > GATE_CLOSE || (closed && backlog > GATE_OPEN));
            driver.gate.store(close, Ordering::Relaxed);
        } else {
            driver.gate.store(false, Ordering::Relaxed);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    driver.gate.store(false, Ordering::Relaxed);
    samples
}

/// The first sampled moment at which the notifier had applied `seq`
/// (`i64::MAX` when never seen): an upper bound of when it did.
pub(crate) fn applied_by(samples: &[(i64, u64)], seq: u64) -> i64 {
    samples
        .iter()
        .find(|(_, floor)| *floor >= seq)
        .map_or(i64::MAX, |(t, _)| *t)
}
