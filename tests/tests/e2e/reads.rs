//! Bounded reads (contract V3.4) and the intake rate: what one reader or
//! publisher can make the shared server and services do for everyone else.
//! The red-team reproductions of issue 26, held closed with the shipped
//! configuration; the figures are printed so a run shows them.

use std::{
    io::Read,
    time::{Duration, Instant},
};

use async_nats::jetstream::{self, consumer::pull};
use futures::StreamExt;
use serde_json::{Value, json};
use upr_nats::contract::{self, notifier as names};
use upr_projection::query::{MAX_WAITING, MAX_WAITING_PER_PARTY};
use upr_tests::{NatsServer, RawClient, ServiceProcess, TestApp, eventually, start_services};

/// The shipped configuration and the three services as their own users.
async fn stack(extra: &[(&str, &str)]) -> (NatsServer, Vec<ServiceProcess>) {
    let nats = NatsServer::start_secured();
    let services = start_services(&nats, &nats.url(), extra).await;
    (nats, services)
}

/// The server's resident memory now, in MB.
fn rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Waiting pulls with a 1 ms idle heartbeat (no server floor on it): the
/// request of `heartbeat_amp.py` / `slow_reader_memory.py`.
fn heartbeat_pull(expires: Duration) -> Vec<u8> {
    json!({"batch": 1, "expires": expires.as_nanos(), "idle_heartbeat": 1_000_000})
        .to_string()
        .into_bytes()
}

/// Opens `conns` connections as `user`, each sending `pulls` waiting pulls
/// with a 1 ms heartbeat on `next` (the consumer's MSG.NEXT subject); returns
/// them and the bytes they sent.
fn open_pulls(
    nats: &NatsServer,
    user: &str,
    next: &str,
    (conns, pulls): (usize, usize),
    expires: Duration,
) -> (Vec<RawClient>, u64) {
    let mut sent = 0u64;
    let body = heartbeat_pull(expires);
    let raws = (0..conns)
        .map(|i| {
            let mut raw = RawClient::connect(nats.port(), Some(&nats.seed_file(user)));
            let sub = format!("SUB _INBOX.hb{i}.> 1\r\n");
            raw.send(sub.as_bytes());
            sent += sub.len() as u64;
            let mut batch = Vec::new();
            for j in 0..pulls {
                let head = format!("PUB {next} _INBOX.hb{i}.{j} {}\r\n", body.len());
                batch.extend_from_slice(head.as_bytes());
                batch.extend_from_slice(&body);
                batch.extend_from_slice(b"\r\n");
            }
            sent += batch.len() as u64;
            raw.send(&batch);
            raw
        })
        .collect();
    (raws, sent)
}

/// Reads every connection for `secs`, counting the messages the server sent
/// (each `MSG` / `HMSG` line: heartbeats, statuses, notifications).
fn count_messages(raws: &[RawClient], window: Duration) -> u64 {
    let deadline = Instant::now() + window;
    let threads: Vec<_> = raws
        .iter()
        .map(|raw| {
            let mut socket = raw.reader();
            std::thread::spawn(move || {
                socket
                    .set_read_timeout(Some(Duration::from_millis(200)))
                    .unwrap();
                let mut buf = vec![0u8; 1 << 20];
                let mut carry: Vec<u8> = Vec::new();
                let mut messages = 0u64;
                while Instant::now() < deadline {
                    let Ok(n) = socket.read(&mut buf) else {
                        continue;
                    };
                    if n == 0 {
                        break;
                    }
                    carry.extend_from_slice(&buf[..n]);
                    messages += carry.windows(4).filter(|w| *w == b"MSG ").count() as u64;
                    // Keep the last 3 bytes: a marker cut in two is counted once.
                    let keep = carry.len().saturating_sub(3);
                    carry.drain(..keep);
                }
                messages
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).sum()
}

/// Samples the server's RSS each half second for `window` while `raws`
/// read nothing; returns (at start, peak) in MB.
fn rss_while_unread(pid: u32, window: Duration) -> (f64, f64, Vec<f64>) {
    let start = rss_mb(pid);
    let deadline = Instant::now() + window;
    let mut samples = Vec::new();
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
        samples.push((rss_mb(pid) * 10.0).round() / 10.0);
    }
    let peak = samples.iter().copied().fold(start, f64::max);
    (start, peak, samples)
}

/// Messages the server may send per byte a reader sends (issue 26 measured
/// about 28 with the unbounded consumer: 676,000 a second for 72 KB).
const MAX_MESSAGES_PER_BYTE: f64 = 2.0;
/// Server memory pulls that are never read may take (issue 26: 20 -> 718 MB).
const MAX_RSS_GROWTH_MB: f64 = 64.0;

#[tokio::test]
async fn a_readers_waiting_pulls_cannot_make_the_server_send_much_more_than_it_asked() {
    let (nats, _services) = stack(&[]).await;
    let pid = nats.pid().expect("running");
    let admin = jetstream::new(nats.client_as("admin").await);
    let stream = admin
        .get_stream(contract::NOTIFICATIONS_STREAM)
        .await
        .unwrap();

    // The shipped reader consumer carries the bounds.
    let info = stream
        .consumer_info("reader")
        .await
        .expect("reader consumer");
    let c = &info.config;
    assert_eq!(c.max_waiting, names::READER_MAX_WAITING, "{c:?}");
    assert_eq!(c.max_batch, names::READER_MAX_BATCH, "{c:?}");
    assert_eq!(c.max_bytes, names::READER_MAX_BYTES, "{c:?}");
    assert_eq!(c.max_expires, names::READER_MAX_EXPIRES, "{c:?}");

    // The consumer as it was before the bounds, beside it (the service
    // account's own user pulls it: readers reach only `reader`), measured
    // the same way: the figure the bounds must beat.
    stream
        .create_consumer(pull::Config {
            durable_name: Some("unbounded".into()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .unwrap();

    let window = Duration::from_secs(3);
    let expires = window + Duration::from_secs(1);
    // 512 pulls (the old max_waiting), as heartbeat_amp.py sends them.
    let shape = (4, 128);
    let mut figures = Vec::new();
    // The bounded one first, on a server nothing has loaded yet.
    for (label, user, next) in [
        (
            "after (reader consumer, as the reader)",
            "reader",
            "$JS.upr.API.CONSUMER.MSG.NEXT.UPR_NOTIFICATIONS.reader",
        ),
        (
            "before (unbounded consumer)",
            "admin",
            "$JS.API.CONSUMER.MSG.NEXT.UPR_NOTIFICATIONS.unbounded",
        ),
    ] {
        // Read as fast as it comes: messages sent per byte asked.
        let (raws, sent) = open_pulls(&nats, user, next, shape, expires);
        let messages = count_messages(&raws, window);
        drop(raws);
        #[expect(clippy::cast_precision_loss, reason = "a printed ratio")]
        let per_byte = messages as f64 / sent as f64;
        // Let those pulls expire, then the same pulls never read.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (raws, _) = open_pulls(&nats, user, next, shape, Duration::from_secs(8));
        let (start, peak, samples) = rss_while_unread(pid, Duration::from_secs(6));
        drop(raws);
        eprintln!(
            "reader pulls {label}: {sent} bytes sent -> {messages} messages in {window:?} \
             ({per_byte:.2} per byte); unread for 6 s: server RSS {start:.1} -> peak {peak:.1} MB \
             (samples {samples:?})"
        );
        figures.push((label, per_byte, peak - start));
        tokio::time::sleep(Duration::from_secs(9)).await;
    }
    let (after, before) = (figures[0], figures[1]);
    assert!(
        before.1 > MAX_MESSAGES_PER_BYTE || before.2 > MAX_RSS_GROWTH_MB,
        "the unbounded consumer stayed within the bounds this run, so they prove nothing: {figures:?}"
    );
    assert!(
        after.1 < MAX_MESSAGES_PER_BYTE,
        "the reader consumer sent {:.2} messages per byte asked: {figures:?}",
        after.1
    );
    assert!(
        after.2 < MAX_RSS_GROWTH_MB,
        "unread pulls took {:.1} MB of server memory: {figures:?}",
        after.2
    );
}

#[tokio::test]
async fn an_older_reader_consumer_is_replaced_with_the_bounds_resuming_after_its_ack_floor() {
    let mut app = TestApp::builder().event_log().notifier().start().await;
    let stream = app
        .js()
        .get_stream(contract::NOTIFICATIONS_STREAM)
        .await
        .unwrap();
    // A reader consumer as the notifier created it before the bounds, two
    // of three notifications read and acknowledged.
    stream.delete_consumer("reader").await.unwrap();
    let old: jetstream::consumer::PullConsumer = stream
        .create_consumer(pull::Config {
            durable_name: Some("reader".into()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            max_ack_pending: 1000,
            ..Default::default()
        })
        .await
        .unwrap();
    for i in 0..3 {
        app.js()
            .publish(
                format!("upr.notify.reminder.K{i}"),
                format!("{{\"n\":{i}}}").into(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let mut batch = old.fetch().max_messages(2).messages().await.unwrap();
    while let Some(message) = batch.next().await {
        message.unwrap().double_ack().await.unwrap();
    }
    assert_eq!(old.cached_info().config.max_waiting, 512);

    app.notifier_mut().restart();
    app.notifier().wait_healthy().await;

    let mut consumer: jetstream::consumer::PullConsumer =
        stream.get_consumer("reader").await.unwrap();
    let info = consumer.info().await.unwrap();
    assert_eq!(info.config.max_waiting, names::READER_MAX_WAITING);
    assert_eq!(info.config.max_expires, names::READER_MAX_EXPIRES);
    assert_eq!(info.num_pending, 1, "only the unacknowledged one is left");
    let mut next = consumer.fetch().max_messages(10).messages().await.unwrap();
    let message = next.next().await.expect("the third").unwrap();
    assert_eq!(message.subject.as_str(), "upr.notify.reminder.K2");
    assert!(
        app.notifier()
            .logs()
            .contains("replacing the reader consumer"),
        "{}",
        app.notifier().logs()
    );

    // Started again with the bounds in place: updated in place, kept.
    message.double_ack().await.unwrap();
    drop(next);
    app.notifier_mut().restart();
    app.notifier().wait_healthy().await;
    let info = consumer.info().await.unwrap();
    assert_eq!(info.num_pending, 0);
    assert_eq!(info.ack_floor.stream_sequence, 3, "{info:?}");
}

#[tokio::test]
async fn a_min_seq_beyond_the_log_is_answered_at_once_naming_the_last_sequence() {
    let app = TestApp::builder().ingest().projection().start().await;
    let (_, seq) = app
        .record(
            "review_scheduled",
            json!({"country": "KZ", "session": 48, "scheduled_for": "2099-01-22T09:00:00Z"}),
        )
        .await;
    let started = Instant::now();
    let answer = app
        .request(
            "upr.query.review.KZ.48",
            json!({"min_seq": seq + 1}).to_string(),
        )
        .await;
    let took = started.elapsed();
    assert_eq!(answer["error"]["code"], "invalid_field", "{answer}");
    assert_eq!(answer["error"]["field"], "min_seq", "{answer}");
    let message = answer["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("at most {seq}, the event log's last sequence")),
        "{message}"
    );
    // Not the 5 s wait: a generous bound.
    assert!(took < Duration::from_secs(3), "answered after {took:?}");
    // The last sequence itself is a read-your-write.
    let ok = app
        .request(
            "upr.query.review.KZ.48",
            json!({"min_seq": seq}).to_string(),
        )
        .await;
    assert_eq!(ok["ok"], true, "{ok}");
    // The status tells how full the log is, for /metrics.
    let status = app.request("upr.query.status", "").await;
    assert!(status["stream_bytes"].as_u64().unwrap() > 0, "{status}");
    assert!(status["stream_max_bytes"].is_null(), "{status}");
    assert!(
        status["storage_bytes"].as_u64().unwrap() >= status["stream_bytes"].as_u64().unwrap(),
        "{status}"
    );
}

#[tokio::test]
async fn a_reader_flooding_waits_cannot_fail_another_partys_read_your_writes() {
    // query_minseq_dos.py: one reader keeps more queries waiting for a
    // min_seq that never comes than may wait at once. Another party, here
    // one inside the service account (the gateway's path: no
    // Nats-Request-Info, the local budget), reads its own writes meanwhile.
    let (nats, _services) = stack(&[]).await;
    let attacker = nats.client_as("reader").await;
    let victim = nats.client_as("admin").await;
    let total = MAX_WAITING + 200;
    let flood: Vec<_> = (0..total)
        .map(|_| {
            let attacker = attacker.clone();
            tokio::spawn(async move {
                let reply = attacker
                    .request(
                        "upr.query.status",
                        r#"{"min_seq": 1000000000000000}"#.into(),
                    )
                    .await
                    .expect("answered");
                let reply: Value = serde_json::from_slice(&reply.payload).unwrap();
                reply["error"]["code"].as_str().unwrap_or("ok").to_string()
            })
        })
        .collect();
    let mut victim_codes = std::collections::BTreeMap::<String, usize>::new();
    for i in 0..10 {
        let write = victim
            .request(
                "upr.ingest.side_event_held",
                json!({"country": "KZ", "session": 48, "title": format!("t{i}"),
                       "held_on": upr_tests::fixtures::SIDE_EVENT_DAY})
                .to_string()
                .into(),
            )
            .await
            .unwrap();
        let write: Value = serde_json::from_slice(&write.payload).unwrap();
        let seq = write["seq"].as_u64().unwrap_or_else(|| panic!("{write}"));
        let read = victim
            .request(
                "upr.query.review.KZ.48",
                json!({"min_seq": seq}).to_string().into(),
            )
            .await
            .unwrap();
        let read: Value = serde_json::from_slice(&read.payload).unwrap();
        *victim_codes
            .entry(read["error"]["code"].as_str().unwrap_or("ok").to_string())
            .or_default() += 1;
    }
    let mut codes = std::collections::BTreeMap::<String, usize>::new();
    for h in flood {
        *codes.entry(h.await.unwrap()).or_default() += 1;
    }
    // The figure the gateway's /metrics exports: how near the limit it is.
    let status = victim.request("upr.query.status", "".into()).await.unwrap();
    let status: Value = serde_json::from_slice(&status.payload).unwrap();
    assert_eq!(status["storage_max_bytes"], 20_000_000_000_u64, "{status}");
    eprintln!(
        "min_seq flood: attacker's {total} answered {codes:?}; victim's read-your-writes {victim_codes:?}"
    );
    assert_eq!(victim_codes.get("ok"), Some(&10), "{victim_codes:?}");
    assert_eq!(codes.get("invalid_field"), Some(&total), "{codes:?}");
}

#[tokio::test]
async fn a_publisher_past_its_intake_rate_is_answered_unavailable_and_others_are_not() {
    let (nats, _services) = stack(&[("UPR_INTAKE_RATE", "20")]).await;
    let publisher = nats.client_as("publisher").await;
    let admin = nats.client_as("admin").await;
    let send = |client: async_nats::Client, i: usize| async move {
        let payload = json!({"country": "KZ", "session": 48, "title": format!("t{i}"),
                             "held_on": upr_tests::fixtures::SIDE_EVENT_DAY});
        let reply = client
            .request("upr.ingest.side_event_held", payload.to_string().into())
            .await
            .unwrap();
        serde_json::from_slice::<Value>(&reply.payload).unwrap()
    };
    // 100 at once: a burst of 20 passes, the rest are refused.
    let replies = futures::future::join_all((0..100).map(|i| send(publisher.clone(), i))).await;
    let accepted = replies.iter().filter(|r| r["ok"] == true).count();
    let refused: Vec<_> = replies.iter().filter(|r| r["ok"] != true).collect();
    eprintln!(
        "intake rate 20/s: 100 sent at once, {accepted} accepted, {} refused, e.g. {}",
        refused.len(),
        refused.first().map(ToString::to_string).unwrap_or_default()
    );
    assert!((20..=30).contains(&accepted), "{accepted} accepted");
    for r in &refused {
        assert_eq!(r["error"]["code"], "unavailable", "{r}");
        let message = r["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("publisher") && message.contains("retry"),
            "{message}"
        );
    }
    // Inside the service account there is no party budget: all stored.
    let local = futures::future::join_all((100..150).map(|i| send(admin.clone(), i))).await;
    assert!(local.iter().all(|r| r["ok"] == true), "{local:?}");
    // Recorded as a refusal, not once per message of the flood.
    let js = jetstream::new(admin.clone());
    let recorded = eventually(Duration::from_secs(5), "the refusal recorded", || {
        let js = js.clone();
        async move {
            let n = js
                .get_stream(contract::REJECTED_STREAM)
                .await
                .ok()?
                .info()
                .await
                .ok()?
                .state
                .messages;
            (n >= 1).then_some(n)
        }
    })
    .await;
    assert!(recorded <= 5, "{recorded} refusals recorded for one burst");
    // A second later the party's bucket has refilled.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(send(publisher.clone(), 999).await["ok"], true);
}

#[tokio::test]
async fn the_service_accounts_storage_is_limited_and_at_the_limit_the_log_refuses_never_drops() {
    // The shipped limit, as the server applies it to the service account.
    let nats = NatsServer::start_secured();
    let admin = nats.client_as("admin").await;
    let info = admin
        .request("$JS.API.INFO", "".into())
        .await
        .expect("account info");
    let info: Value = serde_json::from_slice(&info.payload).unwrap();
    eprintln!("service account JetStream limits: {}", info["limits"]);
    assert_eq!(info["limits"]["max_storage"], 20_000_000_000_u64, "{info}");
    assert_eq!(info["limits"]["max_memory"], 256_000_000_u64, "{info}");
    drop(nats);

    // The same configuration with a limit small enough to reach, and the
    // event log as ingest creates it (discard old, no max_bytes of its own).
    let nats = NatsServer::start_secured_edited(|conf| {
        conf.replace(
            "jetstream = { max_file: 20G, max_mem: 256M }",
            "jetstream = { max_file: 8K, max_mem: 256M }",
        )
    });
    let js = jetstream::new(nats.client_as("admin").await);
    js.create_stream(contract::events_stream(1, contract::DEFAULT_DEDUP_WINDOW))
        .await
        .expect("the event log");
    let mut stored = 0u64;
    let refusal = loop {
        let ack = js
            .publish(
                format!("upr.events.KZ.48.e{stored}"),
                vec![b'x'; 500].into(),
            )
            .await
            .unwrap()
            .await;
        match ack {
            Ok(_) => stored += 1,
            Err(e) => break e.to_string(),
        }
        assert!(stored < 100, "8 KiB never filled");
    };
    let mut log = js.get_stream(contract::EVENTS_STREAM).await.unwrap();
    let state = log.info().await.unwrap().state.clone();
    eprintln!("account limit 8K: {stored} events stored, then {refusal:?}; log {state:?}");
    assert!(stored >= 5, "{stored}");
    assert!(refusal.contains("resource limits exceeded"), "{refusal}");
    assert_eq!(state.first_sequence, 1, "nothing was dropped to make room");
    assert_eq!(state.messages, stored);
}

/// Holds the projection behind the log: pauses its consumer on `UPR_EVENTS`
/// (what an operator's `nats consumer pause` does) for `for_at_most`. The
/// server then delivers it nothing, so an event appended meanwhile is in
/// the log but not applied, while the projection goes on answering
/// queries from what it has. Returns the stream to resume it with.
async fn pause_projection(
    js: &jetstream::Context,
    for_at_most: Duration,
) -> jetstream::stream::Stream {
    let events = js.get_stream(contract::EVENTS_STREAM).await.unwrap();
    let until = time::OffsetDateTime::now_utc() + for_at_most;
    let paused = events
        .pause_consumer(contract::PROJECTION_CONSUMER, until)
        .await
        .unwrap();
    assert!(paused.paused, "the consumer is paused");
    events
}

/// Contract section 4: a query whose `min_seq` is in the log but not yet
/// applied waits up to 5 s, then answers `timeout`; once the projection
/// applies it, the same query is answered.
#[tokio::test]
async fn a_min_seq_in_the_log_but_not_applied_waits_5_s_then_answers_timeout() {
    let app = TestApp::builder().ingest().projection().start().await;
    let first = app
        .record(
            "review_scheduled",
            &json!({"country": "KZ", "session": 48, "scheduled_for": "2031-01-23T08:30:00Z"}),
        )
        .await
        .1;
    app.query("upr.query.review.KZ.48", first).await;
    let events = pause_projection(app.js(), Duration::from_secs(120)).await;
    let held = app
        .record(
            "review_rescheduled",
            &json!({"country": "KZ", "session": 48, "scheduled_for": "2031-01-24T08:30:00Z"}),
        )
        .await
        .1;
    assert_eq!(held, first + 1);

    let started = Instant::now();
    let answer = app
        .request(
            "upr.query.review.KZ.48",
            json!({"min_seq": held}).to_string(),
        )
        .await;
    let waited = started.elapsed();
    assert_eq!(answer["error"]["code"], "timeout", "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains(&format!("applied: {first}"))),
        "{answer}"
    );
    assert!(
        (Duration::from_millis(4900)..Duration::from_secs(7)).contains(&waited),
        "answered after {waited:?}"
    );
    // Meanwhile a query without min_seq answers at once, from before it.
    let started = Instant::now();
    let now = app.request("upr.query.review.KZ.48", "").await;
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(
        now["review"]["scheduled_for"], "2031-01-23T08:30:00Z",
        "{now}"
    );
    let status = app.request("upr.query.status", "").await;
    assert_eq!(
        (
            status["applied_seq"].as_u64(),
            status["stream_last_seq"].as_u64()
        ),
        (Some(first), Some(held)),
        "{status}"
    );

    // Resumed, the projection applies it and the same query is answered.
    events
        .resume_consumer(contract::PROJECTION_CONSUMER)
        .await
        .unwrap();
    let answer = app
        .request(
            "upr.query.review.KZ.48",
            json!({"min_seq": held}).to_string(),
        )
        .await;
    assert_eq!(answer["ok"], true, "{answer}");
    assert_eq!(answer["review"]["scheduled_for"], "2031-01-24T08:30:00Z");
}

/// Contract V3.4: the query waits are budgeted per party. With the
/// projection held behind the log, one reader holds its share of waits
/// (256) and is refused one more at once, while another reader party's
/// query still waits and is answered once the projection applies the
/// event. Then the service account (the gateway, the benchmark), held by
/// the overall 1,024 only, takes them all, and every party is refused.
#[expect(
    clippy::too_many_lines,
    reason = "the two budgets, each filled and then refused, against one held projection"
)]
#[tokio::test]
async fn one_party_holding_its_share_of_waits_is_refused_more_while_another_partys_waits() {
    let (nats, _services) = stack(&[]).await;
    nats.keys_and_reload(&["add", "reader", "press"]);
    let publisher = nats.client_as("publisher").await;
    let admin = nats.client_as("admin").await;
    let reader = nats.client_as("reader").await;
    let press = nats.client_as("press").await;
    let admin_js = jetstream::new(admin.clone());
    let write = |title: &'static str| {
        let publisher = publisher.clone();
        async move {
            let reply = publisher
                .request(
                    "upr.ingest.side_event_held",
                    json!({"country": "KZ", "session": 48, "title": title,
                           "held_on": upr_tests::fixtures::SIDE_EVENT_DAY})
                    .to_string()
                    .into(),
                )
                .await
                .unwrap();
            let reply: Value = serde_json::from_slice(&reply.payload).unwrap();
            reply["seq"].as_u64().unwrap_or_else(|| panic!("{reply}"))
        }
    };
    let ask = |client: &async_nats::Client, seq: u64| {
        let client = client.clone();
        async move {
            let reply = client
                .request(
                    "upr.query.review.KZ.48",
                    json!({"min_seq": seq}).to_string().into(),
                )
                .await
                .expect("answered");
            serde_json::from_slice::<Value>(&reply.payload).unwrap()
        }
    };
    let code = |answer: &Value| answer["error"]["code"].as_str().unwrap_or("ok").to_string();
    let says = |answer: &Value, text: &str| {
        answer["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains(text))
    };
    let first = write("first").await;
    assert_eq!(code(&ask(&admin, first).await), "ok");

    // One party's share.
    let events = pause_projection(&admin_js, Duration::from_secs(120)).await;
    let held = write("held").await;
    let readers: Vec<_> = (0..MAX_WAITING_PER_PARTY)
        .map(|_| tokio::spawn(ask(&reader, held)))
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let over = ask(&reader, held).await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "refused at once"
    );
    assert_eq!(code(&over), "unavailable", "{over}");
    assert!(
        says(&over, &format!("{MAX_WAITING_PER_PARTY} of your queries")),
        "{over}"
    );
    let other = tokio::spawn(ask(&press, held));
    tokio::time::sleep(Duration::from_millis(300)).await;
    events
        .resume_consumer(contract::PROJECTION_CONSUMER)
        .await
        .unwrap();
    let other = other.await.unwrap();
    assert_eq!(code(&other), "ok", "another party's query waited: {other}");
    let mut codes = std::collections::BTreeMap::<String, usize>::new();
    for waited in readers {
        *codes.entry(code(&waited.await.unwrap())).or_default() += 1;
    }
    eprintln!("query waits: the reader's {MAX_WAITING_PER_PARTY} answered {codes:?}");
    assert_eq!(
        codes.get("unavailable"),
        None,
        "each of them waited: {codes:?}"
    );

    // The overall budget: the service account fills it, then every party
    // is refused (a query that got a slot after all waits; ask again).
    let events = pause_projection(&admin_js, Duration::from_secs(120)).await;
    let held = write("held again").await;
    let service: Vec<_> = (0..MAX_WAITING)
        .map(|_| tokio::spawn(ask(&admin, held)))
        .collect();
    tokio::time::sleep(Duration::from_millis(700)).await;
    let full = eventually(Duration::from_secs(3), "every party refused", || async {
        let reply = tokio::time::timeout(
            Duration::from_millis(500),
            press.request(
                "upr.query.review.KZ.48",
                json!({"min_seq": held}).to_string().into(),
            ),
        )
        .await
        .ok()?
        .ok()?;
        let answer: Value = serde_json::from_slice(&reply.payload).ok()?;
        (code(&answer) == "unavailable").then_some(answer)
    })
    .await;
    assert!(
        says(&full, &format!("{MAX_WAITING} queries already wait")),
        "{full}"
    );
    events
        .resume_consumer(contract::PROJECTION_CONSUMER)
        .await
        .unwrap();
    let mut codes = std::collections::BTreeMap::<String, usize>::new();
    for waited in service {
        *codes.entry(code(&waited.await.unwrap())).or_default() += 1;
    }
    eprintln!("query waits: the service account's {MAX_WAITING} answered {codes:?}");
    assert_eq!(
        codes.get("unavailable"),
        None,
        "each of them waited: {codes:?}"
    );
}
