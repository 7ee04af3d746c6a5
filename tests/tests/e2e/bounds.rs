//! Nothing a client or an operator sends can stall a service, exhaust it or
//! knock it off NATS: bad configuration, oversized or hostile input.

use std::time::Duration;

use async_nats::jetstream::stream::DiscardPolicy;
use upr_nats::contract::{self, services};
use upr_projection::query::MAX_WAITING;
use upr_tests::fixtures::{SIDE_EVENT_DAY, kz48_schedule_text};
use upr_tests::{NatsServer, RawClient, ServiceProcess, TestApp, eventually};

/// Every variable a service reads, with values that must stop start-up with
/// a message naming the variable (exit 1), never a panic or a silent default.
#[tokio::test]
async fn every_bad_setting_stops_start_up_naming_its_variable() {
    // Not a TestApp: every service here must fail to start.
    let nats = NatsServer::start();
    let common = [
        ("NATS_URL", "nats://127.0.0.1:4222,nats://[::1"),
        ("NATS_NKEY", "/no/such/seed.nk"),
        ("NATS_CREDS", "/no/such.creds"),
        ("NATS_TLS_CA", "/no/such/ca.pem"),
        ("RUST_LOG", "info,[=é"),
        ("UPR_LOG_FORMAT", "yaml"),
        ("UPR_REPLICAS", "3é"),
        ("UPR_REPLICAS", "0"),
    ];
    let own: [(&str, &[(&str, &str)]); 3] = [
        (
            services::INGEST,
            &[
                ("UPR_DEDUP_WINDOW", "1é"),
                ("UPR_DEDUP_WINDOW", "0s"),
                ("UPR_INGEST_WORKERS", "-1"),
                ("UPR_INGEST_CACHE", "10000000000000000000000"),
                ("UPR_INTAKE_RATE", "0"),
            ],
        ),
        (
            services::PROJECTION,
            &[
                ("UPR_PROJECTION_BATCH", "1e4"),
                ("UPR_PROJECTION_CACHE_MB", "é"),
            ],
        ),
        (
            services::NOTIFIER,
            &[
                ("UPR_REMINDER_LEADS", "30d,7é"),
                ("UPR_READER_CONSUMERS", "a.b"),
            ],
        ),
    ];
    let mut processes = Vec::new();
    for (binary, specific) in own {
        for (var, bad) in common.iter().chain(specific.iter()) {
            let mut env = vec![(*var, *bad)];
            if *var == "NATS_URL" {
                env.clear();
            }
            let mut p = ServiceProcess::start(binary, &nats.url(), &env);
            if *var == "NATS_URL" {
                // The harness sets NATS_URL itself; start again with the bad one.
                p.terminate(Duration::from_secs(5));
                p = ServiceProcess::start(binary, bad, &[]);
            }
            processes.push((binary, *var, *bad, p));
        }
    }
    for (binary, var, bad, mut p) in processes {
        let status = p.wait_exit(Duration::from_secs(15));
        let logs = p.logs();
        assert_eq!(
            status.code(),
            Some(1),
            "{binary} with {var}={bad:?}: exit {status:?}\n{logs}"
        );
        assert!(
            logs.contains(&format!("{var}: ")),
            "{binary} with {var}={bad:?} names the variable:\n{logs}"
        );
        assert!(
            !logs.contains("panicked"),
            "{binary} with {var}={bad:?} panicked:\n{logs}"
        );
    }
}

#[tokio::test]
async fn refusals_echo_a_bounded_text_and_the_rejected_log_has_a_size_bound() {
    let app = TestApp::builder().start().await;
    let client = app.client().clone();
    let js = app.js().clone();
    // A rejected log as an older version created it: no size bound.
    let mut old = contract::rejected_stream(1);
    old.max_bytes = -1;
    js.create_stream(old).await.expect("old UPR_REJECTED");
    let _ingest = app.spawn(services::INGEST, &[]).await;

    let mut stream = js.get_stream(contract::REJECTED_STREAM).await.unwrap();
    let config = stream.info().await.unwrap().config.clone();
    assert_eq!(
        config.max_bytes,
        contract::REJECTED_MAX_BYTES,
        "its owner bounds it"
    );
    assert_eq!(
        config.discard,
        DiscardPolicy::Old,
        "the oldest refusals go first"
    );
    assert_eq!(config.max_age, contract::REJECTED_MAX_AGE);

    // A key of 60,000 characters and a title of 60,000: the reply and the
    // record quote them only in part.
    let payload = serde_json::json!({
        "country": "KZ", "session": 48, "k".repeat(60_000): 1,
    })
    .to_string();
    let reply = client
        .request("upr.ingest.side_event_held", payload.into())
        .await
        .unwrap();
    assert!(
        reply.payload.len() < 1_000,
        "reply of {} bytes",
        reply.payload.len()
    );
    let reply: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(reply["error"]["code"], "invalid_field", "{reply}");
    let title = "é".repeat(60_000);
    let payload = serde_json::json!({
        "country": "KZ", "session": 48, "title": title, "held_on": SIDE_EVENT_DAY,
    })
    .to_string();
    let reply = client
        .request("upr.ingest.side_event_held", payload.into())
        .await
        .unwrap();
    assert!(
        reply.payload.len() < 2_000,
        "reply of {} bytes",
        reply.payload.len()
    );

    let info = eventually(Duration::from_secs(10), "both refusals recorded", || {
        let js = js.clone();
        async move {
            let mut s = js.get_stream(contract::REJECTED_STREAM).await.ok()?;
            let info = s.info().await.ok()?.clone();
            (info.state.messages == 2).then_some(info)
        }
    })
    .await;
    // Each record: the capped error plus the payload cut at 4 KiB.
    assert!(
        info.state.bytes < 2 * 8 * 1024,
        "{} bytes for two refusals",
        info.state.bytes
    );
}

#[tokio::test]
async fn a_flood_of_min_seq_beyond_the_log_cannot_starve_other_queries() {
    let app = TestApp::builder().event_log().projection().start().await;
    let client = app.client().clone();

    // More requests for a sequence beyond the log than may wait at once:
    // none waits (contract V3.4), so none holds a waiting slot, and all are
    // answered at once, not after the 5 s wait. (The waiting bound itself,
    // overall and per party, is held by the projection's unit tests.)
    let total = MAX_WAITING + 200;
    let started = std::time::Instant::now();
    let flood: Vec<_> = (0..total)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move {
                let reply = client
                    .request("upr.query.status", r#"{"min_seq": 1000000}"#.into())
                    .await
                    .expect("every request is answered");
                let reply: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap();
                reply["error"]["code"].as_str().unwrap_or("ok").to_string()
            })
        })
        .collect();
    // Meanwhile a plain query is answered.
    let status = client
        .request("upr.query.status", "".into())
        .await
        .expect("status answers");
    let status: serde_json::Value = serde_json::from_slice(&status.payload).unwrap();
    assert_eq!(status["ok"], true, "{status}");

    let mut codes = std::collections::BTreeMap::<String, usize>::new();
    for h in flood {
        *codes.entry(h.await.unwrap()).or_default() += 1;
    }
    let took = started.elapsed();
    eprintln!("{total} queries for a min_seq beyond the log answered in {took:?}: {codes:?}");
    assert_eq!(codes.get("invalid_field"), Some(&total), "{codes:?}");
    assert!(took < Duration::from_secs(4), "took {took:?}: some waited");
}

/// `tests/corpus/subjects.tsv`: subjects and reply subjects that are not
/// UTF-8 (or carry other odd bytes), which only a hand-written client sends.
fn hostile_subjects() -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/subjects.tsv");
    let text = std::fs::read_to_string(&path).expect("read tests/corpus/subjects.tsv");
    let rows: Vec<_> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (subject, reply) = l.split_once('\t').expect("subject<TAB>reply");
            (unescape(subject), (reply != "-").then(|| unescape(reply)))
        })
        .collect();
    assert!(rows.len() >= 10, "the subjects corpus has its rows");
    rows
}

/// `a\xffb` to its bytes.
fn unescape(text: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i..].starts_with(b"\\x") && i + 4 <= bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 2..i + 4]).expect("hex digits");
            out.push(u8::from_str_radix(hex, 16).expect("\\xNN"));
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    out
}

#[tokio::test]
async fn subjects_that_are_not_utf8_never_stop_the_services_work() {
    let app = TestApp::builder().all().start().await;
    let client = app.client().clone();
    let mut raw = RawClient::connect(app.nats().port(), None);
    let mut seqs = Vec::new();
    for round in 0..20 {
        for (subject, reply) in hostile_subjects() {
            raw.publish(
                &subject,
                reply.as_deref(),
                br#"{"country":"KZ","session":48}"#,
            );
        }
        // Meanwhile, a well-behaved client records a side event per round.
        // With an event_id, so a retry after a lost reply stores nothing twice.
        let payload = serde_json::json!({"event_id": uuid::Uuid::new_v4(),
            "country": "KZ", "session": 48,
            "title": format!("Round {round}"), "held_on": SIDE_EVENT_DAY});
        let reply = eventually(Duration::from_secs(10), "ingest to answer", || {
            // A request in flight while an edge reconnects is lost: the
            // client retries, as clients of a request do.
            app.try_request(
                "upr.ingest.side_event_held",
                payload.to_string(),
                Duration::from_secs(1),
            )
        })
        .await;
        seqs.push(reply["seq"].as_u64().expect("accepted"));
    }
    // Every accepted event is in the log once, and the projection applied
    // them all.
    let last = *seqs.iter().max().unwrap();
    let status = eventually(
        Duration::from_secs(15),
        "the projection to apply them",
        || async {
            let q = serde_json::json!({"min_seq": last}).to_string();
            let v = app
                .try_request("upr.query.status", q, Duration::from_secs(1))
                .await?;
            (v["ok"] == true).then_some(v)
        },
    )
    .await;
    assert_eq!(status["applied_seq"], last, "{status}");
    let mut distinct = seqs.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len(), 20, "20 events: {seqs:?}");
    let mut log = async_nats::jetstream::new(client.clone())
        .get_stream(contract::EVENTS_STREAM)
        .await
        .unwrap();
    assert_eq!(
        log.info().await.unwrap().state.messages,
        20,
        "each stored once"
    );
    // The connections that do the work (appends, folding, planning) never
    // dropped; only a service's edge connection may have reconnected.
    for s in [app.ingest(), app.projection(), app.notifier()] {
        let logs = s.logs();
        assert!(
            !logs
                .lines()
                .any(|l| l.contains("connection lost") && l.contains("connection=core")),
            "a core connection dropped:\n{logs}"
        );
    }
}

#[test]
fn the_publisher_may_send_exactly_the_intake_types() {
    // A publisher party's account, as `upr-keys` writes it for the shipped
    // configuration to include.
    let dir = upr_tests::secured_config_dir();
    let conf = std::fs::read_to_string(dir.path().join("secrets/parties.conf")).unwrap();
    let block = &conf[conf
        .find("\"publisher\" = {")
        .expect("the publisher's account")..];
    let block = &block[..block.find("imports").expect("its imports")];
    let mut allowed: Vec<&str> = block
        .split('"')
        .filter(|t| t.starts_with("upr.ingest."))
        .collect();
    allowed.sort_unstable();
    let mut types: Vec<String> = upr_domain::EventType::ALL
        .iter()
        .map(|t| contract::subjects::ingest(*t))
        .collect();
    types.sort_unstable();
    assert_eq!(allowed, types);
}

#[tokio::test]
async fn a_publisher_cannot_reach_ingest_with_a_subject_that_is_not_utf8() {
    // Not a TestApp: the shipped configuration and its users.
    let nats = NatsServer::start_secured();
    let seed = nats.seed_file("ingest").display().to_string();
    let ingest = ServiceProcess::start(services::INGEST, &nats.url(), &[("NATS_NKEY", &seed)]);
    ingest.wait_healthy().await;
    let mut raw = RawClient::connect(nats.port(), Some(&nats.seed_file("publisher")));
    for _ in 0..50 {
        raw.publish(b"upr.ingest.review_scheduled\xff", None, b"{}");
        raw.publish(b"upr.ingest.\xc3\x28", Some(b"_INBOX.x"), b"{}");
    }
    // The publisher is still served, and ingest never lost a connection.
    let publisher = nats.client_as("publisher").await;
    let reply = publisher
        .request("upr.ingest.review_scheduled", kz48_schedule_text().into())
        .await
        .expect("ingest answers");
    assert!(String::from_utf8_lossy(&reply.payload).contains("\"ok\":true"));
    let logs = ingest.logs();
    assert!(!logs.contains("connection lost"), "{logs}");
    assert!(
        nats.log().contains("Publish Violation"),
        "the server refused the bytes"
    );
}

#[tokio::test]
async fn a_value_too_large_for_the_server_is_counted_and_the_log_keeps_flowing() {
    // A server with a small payload limit stands in for a session value
    // that outgrew the default 1 MiB.
    let app = TestApp::builder()
        .nats_conf("max_payload: 16384\n")
        .ingest()
        .projection()
        .start()
        .await;
    let client = app.client().clone();
    let record = |subject: &'static str, payload: serde_json::Value| {
        let client = client.clone();
        async move {
            let reply = client
                .request(subject, payload.to_string().into())
                .await
                .unwrap();
            let reply: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap();
            assert_eq!(reply["ok"], true, "{reply}");
            reply["seq"].as_u64().unwrap()
        }
    };
    // Review KZ.48's value lists every side event in full: 60 of ~400 bytes.
    for i in 0..60 {
        record(
            "upr.ingest.side_event_held",
            serde_json::json!({"country": "KZ", "session": 48, "held_on": SIDE_EVENT_DAY,
                "title": format!("{i} {}", "x".repeat(290))}),
        )
        .await;
    }
    let last = record(
        "upr.ingest.review_scheduled",
        serde_json::json!({"country": "FR", "session": 49, "scheduled_for": "2025-05-05T08:30:00Z"}),
    )
    .await;
    let status = client
        .request(
            "upr.query.status",
            serde_json::json!({"min_seq": last}).to_string().into(),
        )
        .await
        .unwrap();
    let status: serde_json::Value = serde_json::from_slice(&status.payload).unwrap();
    assert_eq!(
        status["applied_seq"], last,
        "the log kept flowing: {status}"
    );
    assert!(
        status["values_refused"].as_u64().unwrap() >= 1,
        "the refused value is counted: {status}"
    );
    let fr = client
        .request("upr.query.review.FR.49", "".into())
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&fr.payload).contains("\"ok\":true"));
    assert!(
        app.projection()
            .logs()
            .contains("larger than the server accepts; left unwritten"),
        "logged"
    );
}

#[tokio::test]
async fn a_review_holds_at_most_200_side_events_also_after_a_restart() {
    let mut app = TestApp::builder().ingest().start().await;
    let client = app.client().clone();
    let side_event = |i: usize| {
        serde_json::json!({"country": "KZ", "session": 48, "title": format!("Side event {i}"),
                           "held_on": SIDE_EVENT_DAY})
        .to_string()
    };
    let send = |payload: String| {
        let client = client.clone();
        async move {
            let reply = client
                .request("upr.ingest.side_event_held", payload.into())
                .await
                .unwrap();
            serde_json::from_slice::<serde_json::Value>(&reply.payload).unwrap()
        }
    };
    for i in 0..upr_domain::MAX_SIDE_EVENTS {
        let reply = send(side_event(i)).await;
        assert_eq!(reply["ok"], true, "side event {i}: {reply}");
    }
    // The limit is read from the log, not from memory.
    app.ingest_mut().restart();
    app.ingest().wait_healthy().await;
    let reply = eventually(Duration::from_secs(10), "ingest back", || {
        let send = &send;
        let payload = side_event(200);
        async move {
            let r = send(payload).await;
            (r["ok"] == false).then_some(r)
        }
    })
    .await;
    assert_eq!(reply["error"]["code"], "limit_exceeded", "{reply}");
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("200 side events per review"),
        "{reply}"
    );
    // Lifecycle events are counted apart.
    let scheduled = client
        .request("upr.ingest.review_scheduled", kz48_schedule_text().into())
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&scheduled.payload).contains("\"ok\":true"));
    let mut log = async_nats::jetstream::new(client.clone())
        .get_stream(contract::EVENTS_STREAM)
        .await
        .unwrap();
    assert_eq!(log.info().await.unwrap().state.messages, 201);
}

/// A party name as long as names may be (32 characters).
const LONGEST_PARTY: &str = "ngo-with-a-name-of-32-characters";

/// With the shipped configuration and a publisher of the longest name a
/// party may have, so its name is in every side event the values list: the
/// byte limit holds, and every value stays under its bound.
#[tokio::test]
async fn large_side_events_are_refused_past_the_byte_limit_and_every_value_stays_under_256_kib() {
    assert!(
        upr_domain::PartyName::parse(LONGEST_PARTY).is_ok()
            && upr_domain::PartyName::parse(&format!("{LONGEST_PARTY}x")).is_err(),
        "the longest name a party may have"
    );
    let nats = NatsServer::start_secured_with_parties(&[("publisher", LONGEST_PARTY)]);
    let start = |binary: &str, user: &str| {
        let seed = nats.seed_file(user).display().to_string();
        ServiceProcess::start(binary, &nats.url(), &[("NATS_NKEY", &seed)])
    };
    let services = [
        start(services::INGEST, "ingest"),
        start(services::PROJECTION, "projection"),
    ];
    for s in &services {
        s.wait_healthy().await;
    }
    let client = nats.client_as(LONGEST_PARTY).await;
    let reader = nats.client_as("reader").await;
    // About 48 KB each: 100 speakers with 200-character names and roles,
    // 50 topics of 100 characters.
    let large = |i: usize| {
        let speakers: Vec<_> = (0..100)
            .map(|k| serde_json::json!({"name": format!("{i} {k} {}", "n".repeat(190)), "role": "r".repeat(200)}))
            .collect();
        let topics = vec!["t".repeat(100); 50];
        serde_json::json!({"country": "KZ", "session": 48, "title": format!("Side event {i}"),
                           "held_on": SIDE_EVENT_DAY, "speakers": speakers, "topics": topics})
        .to_string()
    };
    let mut accepted = 0;
    let refusal = loop {
        let reply = client
            .request("upr.ingest.side_event_held", large(accepted).into())
            .await
            .unwrap();
        let reply: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap();
        if reply["ok"] == false {
            break reply;
        }
        accepted += 1;
        assert!(accepted < 10, "the byte limit never refused");
    };
    assert_eq!(accepted, 2, "two of ~48 KB fit in 128 KiB");
    assert_eq!(refusal["error"]["code"], "limit_exceeded", "{refusal}");
    let message = refusal["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("the limit is 131072 bytes of side events per review"),
        "{message}"
    );
    // A small one still fits; the review lists every accepted one in full.
    let small = r#"{"country":"KZ","session":48,"title":"Briefing","held_on":"2025-01-23"}"#;
    let reply = client
        .request("upr.ingest.side_event_held", small.into())
        .await
        .unwrap();
    let reply: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(reply["ok"], true, "{reply}");
    let min_seq = serde_json::json!({"min_seq": reply["seq"]}).to_string();
    for (query, max) in [
        ("upr.query.review.KZ.48", upr_domain::MAX_VALUE_BYTES),
        ("upr.query.session.48", 1024),
        ("upr.query.country.KZ", 1024),
    ] {
        let answer = reader.request(query, min_seq.clone().into()).await.unwrap();
        assert!(
            answer.payload.len() < max,
            "{query}: {} bytes",
            answer.payload.len()
        );
        let v: serde_json::Value = serde_json::from_slice(&answer.payload).unwrap();
        assert_eq!(v["ok"], true, "{v}");
        if query.contains("review") {
            let listed = v["review"]["side_events"].as_array().unwrap();
            let titles: Vec<_> = listed
                .iter()
                .map(|s| s["title"].as_str().unwrap().to_owned())
                .collect();
            assert_eq!(titles, ["Side event 0", "Side event 1", "Briefing"]);
            assert!(
                listed.iter().all(|s| s["recorded_by"] == LONGEST_PARTY),
                "{v}"
            );
        } else {
            // Session and country values carry counts, not the side events.
            let body = &v[if query.contains("session") {
                "session"
            } else {
                "country"
            }];
            assert_eq!(body["side_events"], 3, "{v}");
        }
    }
}

#[tokio::test]
async fn people_cannot_send_large_payloads_or_open_connections_without_bound() {
    // Not a TestApp: the shipped configuration and its users.
    let nats = NatsServer::start_secured();
    let seed = nats.seed_file("ingest").display().to_string();
    let ingest = ServiceProcess::start(services::INGEST, &nats.url(), &[("NATS_NKEY", &seed)]);
    ingest.wait_healthy().await;

    // Over twice the intake limit: refused by the server, before ingest.
    let mut publisher = RawClient::connect(nats.port(), Some(&nats.seed_file("publisher")));
    publisher.publish(b"upr.ingest.side_event_held", None, &vec![b' '; 200 * 1024]);
    let answer = publisher.read_line().unwrap_or_default();
    assert!(answer.contains("Maximum Payload"), "{answer:?}");
    let mut reader = RawClient::connect(nats.port(), Some(&nats.seed_file("reader")));
    reader.publish(
        b"upr.query.status",
        Some(b"_INBOX.x"),
        &vec![b' '; 16 * 1024],
    );
    let answer = reader.read_line().unwrap_or_default();
    assert!(answer.contains("Maximum Payload"), "{answer:?}");

    // Connections per person's account are counted.
    let mut open = Vec::new();
    let mut refused = 0;
    for _ in 0..300 {
        match nats
            .options_as("reader")
            .max_reconnects(Some(0))
            .connect(nats.url())
            .await
        {
            Ok(c) => open.push(c),
            Err(_) => refused += 1,
        }
    }
    assert_eq!(open.len(), 256, "{refused} refused");

    // Ingest never saw any of it, and serves the publisher as before.
    let publisher = nats.client_as("publisher").await;
    let reply = publisher
        .request("upr.ingest.review_scheduled", kz48_schedule_text().into())
        .await
        .expect("ingest answers");
    assert!(String::from_utf8_lossy(&reply.payload).contains("\"ok\":true"));
    assert!(!ingest.logs().contains("connection lost"));
}

/// Peak resident memory of a process, from `/proc/<pid>/status` (VmHWM).
fn peak_rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Subject, reply subject and payload of one raw publish.
type RawMessage = (Vec<u8>, Option<Vec<u8>>, Vec<u8>);

/// Floods from hostile connections for `secs` seconds, at full speed: the
/// largest intake the account allows (refused and recorded), the largest
/// valid side events, subjects and replies that are not UTF-8, and waits for
/// a far-off `min_seq`.
fn flood(nats: &NatsServer, secs: u64) -> Vec<std::thread::JoinHandle<u64>> {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    let kinds: Vec<(&str, Vec<RawMessage>)> = vec![
        (
            "publisher",
            vec![
                // Just under the account limit: too_large, recorded.
                (
                    b"upr.ingest.side_event_held".to_vec(),
                    None,
                    vec![b' '; 120 * 1024],
                ),
                // Valid and as large as intake takes: stored (one review,
                // so the per-review limit soon refuses them).
                (
                    b"upr.ingest.side_event_held".to_vec(),
                    None,
                    serde_json::json!({"country": "AD", "session": 1, "held_on": SIDE_EVENT_DAY,
                        "title": "x".repeat(300), "topics": vec!["t".repeat(200); 250]})
                    .to_string()
                    .into_bytes(),
                ),
                (
                    b"upr.ingest.review_scheduled\xff".to_vec(),
                    None,
                    b"{}".to_vec(),
                ),
            ],
        ),
        (
            "reader",
            vec![
                (
                    b"upr.query.review.\xff.48".to_vec(),
                    Some(b"_INBOX.x".to_vec()),
                    vec![],
                ),
                (
                    b"upr.query.status".to_vec(),
                    Some(b"_INBOX.\xfe".to_vec()),
                    vec![],
                ),
                (
                    b"upr.query.status".to_vec(),
                    Some(b"_INBOX.wait".to_vec()),
                    br#"{"min_seq": 999999999}"#.to_vec(),
                ),
            ],
        ),
    ];
    kinds
        .into_iter()
        .map(|(user, messages)| {
            let port = nats.port();
            let seed = nats.seed_file(user);
            std::thread::spawn(move || {
                let mut sent = 0u64;
                while std::time::Instant::now() < deadline {
                    // A connection the server closes (a violation) is
                    // replaced; the flood goes on.
                    let mut raw = RawClient::connect(port, Some(&seed));
                    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        while std::time::Instant::now() < deadline {
                            for (subject, reply, payload) in &messages {
                                raw.publish(subject, reply.as_deref(), payload);
                                sent += 1;
                            }
                        }
                    }));
                    if result.is_ok() {
                        break;
                    }
                }
                sent
            })
        })
        .collect()
}

/// `UPR_HOSTILE_SECS` (default 5) seconds of [`flood`] while a well-behaved
/// client records and reads; `UPR_HOSTILE_SECS=60` is the long variant.
#[tokio::test]
async fn a_hostile_client_cannot_lose_accepted_events_stop_a_service_or_exhaust_its_memory() {
    // Not a TestApp: the shipped configuration and its users.
    let secs: u64 = std::env::var("UPR_HOSTILE_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let nats = NatsServer::start_secured();
    let services = upr_tests::start_services(&nats, &nats.url(), &[("RUST_LOG", "warn")]).await;
    let publisher = nats.client_as("publisher").await;
    let reader = nats.client_as("reader").await;

    // The well-behaved client: one event at a time with its own id, retried
    // until answered, then read back with min_seq. Quiet first, then under
    // the flood.
    let well_behaved = |label: &'static str, rounds: usize| {
        let publisher = publisher.clone();
        let reader = reader.clone();
        async move {
            let mut latencies = Vec::new();
            let mut accepted = Vec::new();
            for i in 0..rounds {
                let id = uuid::Uuid::new_v4();
                let payload = serde_json::json!({"event_id": id, "country": "KZ", "session": 48,
                    "title": format!("{label} {i}"), "held_on": SIDE_EVENT_DAY})
                .to_string();
                let started = std::time::Instant::now();
                let seq = loop {
                    let reply = tokio::time::timeout(
                        Duration::from_secs(2),
                        publisher.request("upr.ingest.side_event_held", payload.clone().into()),
                    )
                    .await;
                    if let Ok(Ok(reply)) = reply {
                        let v: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap();
                        if let Some(seq) = v["seq"].as_u64() {
                            break seq;
                        }
                        assert_eq!(v["error"]["code"], "unavailable", "{v}");
                    }
                };
                let query = serde_json::json!({"min_seq": seq}).to_string();
                loop {
                    let answer = tokio::time::timeout(
                        Duration::from_secs(6),
                        reader.request("upr.query.review.KZ.48", query.clone().into()),
                    )
                    .await;
                    if let Ok(Ok(answer)) = answer
                        && String::from_utf8_lossy(&answer.payload).contains("\"ok\":true")
                    {
                        break;
                    }
                }
                latencies.push(started.elapsed());
                accepted.push(seq);
            }
            latencies.sort_unstable();
            let p99 = latencies[(latencies.len() * 99 / 100).min(latencies.len() - 1)];
            (accepted, p99)
        }
    };
    let (mut accepted, quiet_p99) = well_behaved("quiet", 30).await;
    let flooders = flood(&nats, secs);
    let (under_flood, flood_p99) = well_behaved("flood", 30).await;
    accepted.extend(under_flood);
    let sent: u64 = flooders.into_iter().map(|h| h.join().unwrap()).sum();
    // Figures, not assertions (timing is measured by benchmarks, not tests).
    eprintln!(
        "hostile: {sent} hostile messages in {secs} s; well-behaved p99 quiet {quiet_p99:?}, under flood {flood_p99:?}"
    );

    // Nothing accepted was lost or stored twice.
    let admin = async_nats::jetstream::new(nats.client_as("admin").await);
    for seq in &accepted {
        let message = admin
            .get_stream(contract::EVENTS_STREAM)
            .await
            .unwrap()
            .direct_get(*seq)
            .await
            .expect("every accepted event is in the log");
        assert!(message.subject.starts_with("upr.events.KZ.48."));
    }
    let kz: Vec<u64> = {
        let mut distinct = accepted.clone();
        distinct.sort_unstable();
        distinct.dedup();
        distinct
    };
    assert_eq!(kz.len(), 60, "60 events accepted once each");
    // Every service is up, answers its health check, and stayed in memory.
    for s in &services {
        assert!(s.healthcheck().success(), "healthy:\n{}", s.logs());
        let pid = s.pid().expect("running");
        let peak = peak_rss_mb(pid);
        eprintln!("hostile: pid {pid} peak RSS {peak:.1} MB");
        assert!(peak < 100.0, "peak RSS {peak:.1} MB:\n{}", s.logs());
    }
}
