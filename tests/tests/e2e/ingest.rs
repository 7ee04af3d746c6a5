//! The ingest service end to end: intake exactly as the NATS CLI sends it
//! (plain JSON bytes, with and without a reply subject), the event log and
//! the rejection trail as users and consumers read them.

use std::{collections::HashMap, time::Duration};

use async_nats::{
    Client,
    jetstream::{self, stream},
};
use futures::{StreamExt, stream::FuturesUnordered};
use serde_json::{Value, json};
use upr_nats::contract::{self, services, subjects};
use upr_tests::fixtures::{KZ48_DATE, KZ48_NEW_DATE, SIDE_EVENT_DAY};
use upr_tests::{NatsServer, ServiceProcess, TestApp, eventually};

const WAIT: Duration = Duration::from_secs(10);

/// A server with `replicas` ingest replicas, each with `env`.
async fn ingest_with(replicas: usize, env: &[(&str, &str)]) -> TestApp {
    let mut builder = TestApp::builder();
    for (var, value) in env {
        builder = builder.env(var, value);
    }
    for _ in 0..replicas {
        builder = builder.ingest();
    }
    builder.start().await
}

async fn req(client: &Client, ty: &str, payload: impl Into<Vec<u8>>) -> Value {
    let subject = format!("{}{ty}", subjects::INGEST_PREFIX);
    let reply = tokio::time::timeout(
        Duration::from_secs(5),
        client.request(subject.clone(), payload.into().into()),
    )
    .await
    .unwrap_or_else(|_| panic!("no reply on {subject} within 5 s"))
    .unwrap_or_else(|e| panic!("request on {subject}: {e}"));
    serde_json::from_slice(&reply.payload)
        .unwrap_or_else(|e| panic!("reply is not JSON ({e}): {:?}", reply.payload))
}

async fn stream_count(js: &jetstream::Context, name: &str) -> u64 {
    js.get_stream(name)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .messages
}

fn scheduled(country: &str, session: u32) -> Value {
    json!({"country": country, "session": session, "scheduled_for": KZ48_DATE, "location": "Geneva"})
}

fn review(country: &str, session: u32) -> Value {
    json!({"country": country, "session": session})
}

fn with(mut v: Value, key: &str, value: Value) -> Value {
    v[key] = value;
    v
}

fn uuid() -> String {
    uuid::Uuid::new_v4().to_string()
}

#[track_caller]
fn assert_refused(reply: &Value, code: &str, field: Option<&str>) {
    assert_eq!(reply["ok"], false, "{reply}");
    assert_eq!(reply["error"]["code"], code, "{reply}");
    assert_eq!(
        reply["error"]["field"],
        field.map_or(Value::Null, Value::from),
        "{reply}"
    );
    assert!(
        reply["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{reply}"
    );
}

#[tokio::test]
async fn every_event_type_is_accepted_and_stored_with_its_envelope_on_its_subject() {
    let g = TestApp::builder().ingest().start().await;
    let id = uuid();
    let r = g
        .accept(
            "review_scheduled",
            json!({"event_id": id, "country": "kz", "session": 48, "scheduled_for": KZ48_DATE,
                   "location": "Geneva", "occurred_at": "2024-11-06T11:00:00+01:00", "source": "UPR Info"}),
        )
        .await;
    assert_eq!(
        (r["event_id"].as_str(), r["duplicate"].as_bool()),
        (Some(id.as_str()), Some(false))
    );
    let seq = r["seq"].as_u64().unwrap();
    let (subject, headers, env) = g.stored(seq).await;
    assert_eq!(subject, "upr.events.KZ.48.review_scheduled");
    assert_eq!(
        headers
            .get("Nats-Msg-Id")
            .map(async_nats::HeaderValue::as_str),
        Some(id.as_str())
    );
    let recorded_at = env["recorded_at"].as_str().unwrap().to_owned();
    assert_eq!(
        serde_json::to_string(&env).unwrap(),
        serde_json::to_string(&json!({"id": id, "type": "review_scheduled", "schema": 3, "country": "KZ", "session": 48,
            "occurred_at": "2024-11-06T10:00:00Z", "recorded_at": recorded_at, "recorded_by": null, "source": "UPR Info",
            "data": {"scheduled_for": KZ48_DATE, "location": "Geneva"}}))
        .unwrap(),
        "exact envelope, keys in contract order"
    );
    let t =
        time::OffsetDateTime::parse(&recorded_at, &time::format_description::well_known::Rfc3339)
            .unwrap();
    assert!(
        recorded_at.ends_with('Z') && t.nanosecond().is_multiple_of(1_000_000),
        "{recorded_at}"
    );

    let rest = [
        (
            "side_event_held",
            json!({"country": "KZ", "session": 48, "title": "Civic space in Kazakhstan", "held_on": SIDE_EVENT_DAY,
                   "speakers": [{"name": "A. Speaker", "role": "NGO"}], "participating_states": 40, "topics": ["press"]}),
            json!({"title": "Civic space in Kazakhstan", "held_on": "2025-01-22T00:00:00Z",
                   "speakers": [{"name": "A. Speaker", "role": "NGO"}], "participating_states": 40, "topics": ["press"]}),
        ),
        (
            "review_rescheduled",
            json!({"country": "KZ", "session": 48, "scheduled_for": KZ48_NEW_DATE, "reason": "Room"}),
            json!({"scheduled_for": KZ48_NEW_DATE, "reason": "Room"}),
        ),
        (
            "review_held",
            json!({"country": "KZ", "session": 48, "held_on": "2025-01-24", "recommendations_received": 250}),
            json!({"held_on": "2025-01-24T00:00:00Z", "recommendations_received": 250}),
        ),
        (
            "report_published",
            json!({"country": "KZ", "session": 48, "published_on": "2025-06-01", "document_symbol": "A/HRC/59/10",
                   "recommendations": {"total": 250, "supported": 200, "noted": 50}}),
            json!({"published_on": "2025-06-01T00:00:00Z", "document_symbol": "A/HRC/59/10",
                   "recommendations": {"total": 250, "supported": 200, "noted": 50}}),
        ),
    ];
    for (ty, payload, data) in rest {
        let r = g.accept(ty, payload).await;
        let (subject, headers, env) = g.stored(r["seq"].as_u64().unwrap()).await;
        assert_eq!(subject, format!("upr.events.KZ.48.{ty}"));
        assert_eq!(
            headers
                .get("Nats-Msg-Id")
                .map(async_nats::HeaderValue::as_str),
            r["event_id"].as_str()
        );
        assert_eq!(env["id"], r["event_id"]);
        assert_eq!(env["type"], ty);
        assert_eq!(env["data"], data, "{ty}");
        assert_eq!(
            env["occurred_at"], env["recorded_at"],
            "occurred_at defaults to the recording time"
        );
        assert_eq!(env["source"], Value::Null);
    }
    g.accept("review_scheduled", scheduled("FR", 48)).await;
    let r = g.accept("review_cancelled", review("FR", 48)).await;
    let (subject, _, env) = g.stored(r["seq"].as_u64().unwrap()).await;
    assert_eq!(
        (subject.as_str(), &env["data"]),
        (
            "upr.events.FR.48.review_cancelled",
            &json!({"reason": null})
        )
    );
    assert_eq!(g.events_count().await, 7);
    assert_eq!(g.rejected_count().await, 0);
}

#[tokio::test]
async fn a_plain_publish_is_stored_without_a_reply() {
    let g = TestApp::builder().ingest().start().await;
    let id = uuid();
    g.client()
        .publish(
            "upr.ingest.review_scheduled",
            with(scheduled("KZ", 48), "event_id", id.clone().into())
                .to_string()
                .into(),
        )
        .await
        .unwrap();
    eventually(WAIT, "the published event in the log", || async {
        (g.events_count().await == 1).then_some(())
    })
    .await;
    let (_, headers, env) = g.stored(1).await;
    assert_eq!(
        headers
            .get("Nats-Msg-Id")
            .map(async_nats::HeaderValue::as_str),
        Some(id.as_str())
    );
    assert_eq!(env["country"], "KZ");
}

#[tokio::test]
#[expect(
    clippy::too_many_lines,
    reason = "a table of every error code with its field, checked in one pass against one server"
)]
async fn every_error_code_names_its_field_and_every_refusal_is_announced_and_kept() {
    let g = TestApp::builder().ingest().start().await;
    let mut announced = g.client().subscribe(subjects::REJECTED).await.unwrap();
    g.client().flush().await.unwrap();
    g.accept("review_scheduled", scheduled("KZ", 48)).await;

    let big = format!(
        r#"{{"country":"KZ","session":48,"source":"{}"}}"#,
        "x".repeat(70 * 1024)
    );
    let cases: Vec<(&str, Vec<u8>, &str, Option<&str>)> = vec![
        (
            "review_scheduled",
            b"{\"country\": \"KZ\",".to_vec(),
            "invalid_json",
            None,
        ),
        ("review_scheduled", b"[1, 2]".to_vec(), "invalid_json", None),
        (
            "review_scheduled",
            b"\xff\xfe{\"country\":\"KZ\"}".to_vec(),
            "invalid_json",
            None,
        ),
        (
            "review_scheduled",
            vec![0, 159, 146, 150, 7, 255, 1, 2],
            "invalid_json",
            None,
        ),
        (
            "review_postponed",
            scheduled("KZ", 49).to_string().into(),
            "unknown_type",
            None,
        ),
        (
            "review_scheduled",
            review("KZ", 49).to_string().into(),
            "missing_field",
            Some("scheduled_for"),
        ),
        (
            "review_scheduled",
            json!({"session": 49}).to_string().into(),
            "missing_field",
            Some("country"),
        ),
        (
            "review_scheduled",
            with(scheduled("KZ", 49), "locaton", "Geneva".into())
                .to_string()
                .into(),
            "invalid_field",
            Some("locaton"),
        ),
        (
            "review_scheduled",
            with(
                scheduled("KZ", 49),
                "scheduled_for",
                "2025-02-30T08:30:00Z".into(),
            )
            .to_string()
            .into(),
            "invalid_field",
            Some("scheduled_for"),
        ),
        (
            "side_event_held",
            json!({"country": "KZ", "session": 48, "title": "t", "held_on": "2025-02-30"})
                .to_string()
                .into(),
            "invalid_field",
            Some("held_on"),
        ),
        (
            "review_scheduled",
            scheduled("XK", 49).to_string().into(),
            "invalid_field",
            Some("country"),
        ),
        (
            "review_scheduled",
            scheduled("KZ", 1000).to_string().into(),
            "invalid_field",
            Some("session"),
        ),
        (
            "review_scheduled",
            with(scheduled("KZ", 49), "event_id", "nope".into())
                .to_string()
                .into(),
            "invalid_field",
            Some("event_id"),
        ),
        (
            "report_published",
            json!({"country": "KZ", "session": 48, "published_on": "2025-06-01",
            "recommendations": {"total": 1, "supported": 1, "noted": 1}})
            .to_string()
            .into(),
            "invalid_field",
            Some("recommendations"),
        ),
        ("review_scheduled", big.into_bytes(), "too_large", None),
        (
            "review_scheduled",
            scheduled("KZ", 48).to_string().into(),
            "conflict",
            None,
        ),
        (
            "report_published",
            json!({"country": "KZ", "session": 48, "published_on": "2025-06-01"})
                .to_string()
                .into(),
            "conflict",
            None,
        ),
    ];
    for (ty, payload, code, field) in &cases {
        let reply = g.req(ty, payload.clone()).await;
        assert_refused(&reply, code, *field);
    }
    // Refusals of plain publishes leave the same trace.
    g.client()
        .publish("upr.ingest.review_held", "not json".into())
        .await
        .unwrap();
    g.client()
        .publish("upr.ingest.nope", "{}".into())
        .await
        .unwrap();
    let total = cases.len() + 2;

    let mut records = Vec::new();
    while records.len() < total {
        let m = tokio::time::timeout(WAIT, announced.next())
            .await
            .expect("announced on upr.rejected")
            .unwrap();
        records.push(serde_json::from_slice::<Value>(&m.payload).unwrap());
    }
    for (record, (ty, payload, code, field)) in records.iter().zip(&cases) {
        assert_eq!(record["subject"], format!("upr.ingest.{ty}"));
        assert_eq!(record["error"]["code"], *code);
        assert_eq!(
            record["error"]["field"],
            field.map_or(Value::Null, Value::from)
        );
        let text = record["payload"].as_str().unwrap();
        assert!(text.len() <= 4096, "payload cut at 4 KiB");
        let expected = String::from_utf8_lossy(payload);
        assert!(expected.starts_with(text), "lossy original: {text:?}");
        assert!(record["received_at"].as_str().unwrap().ends_with('Z'));
        assert_eq!(record.as_object().unwrap().len(), 4);
    }
    assert_eq!(records[total - 2]["subject"], "upr.ingest.review_held");
    assert_eq!(records[total - 1]["error"]["code"], "unknown_type");
    eventually(WAIT, "every refusal kept in UPR_REJECTED", || async {
        (g.rejected_count().await == total as u64).then_some(())
    })
    .await;
    assert_eq!(g.events_count().await, 1, "nothing refused was stored");

    // STATS of the intake endpoint count outcomes by code.
    let reply = g
        .client()
        .request(format!("$SRV.STATS.{}", services::INGEST), "".into())
        .await
        .unwrap();
    let stats: Value = serde_json::from_slice(&reply.payload).unwrap();
    let data = &stats["endpoints"][0]["data"];
    assert_eq!(data["accepted"], 1, "{stats}");
    assert_eq!(data["rejected"]["invalid_json"], 5, "{stats}");
    assert_eq!(data["rejected"]["conflict"], 2, "{stats}");
    assert_eq!(data["rejected"]["too_large"], 1, "{stats}");
    assert_eq!(data["rejected"]["unknown_type"], 2, "{stats}");
}

#[tokio::test]
async fn a_lowercase_country_is_stored_upper_case() {
    let g = TestApp::builder().ingest().start().await;
    let r = g.accept("review_scheduled", scheduled("kz", 48)).await;
    let (subject, _, env) = g.stored(r["seq"].as_u64().unwrap()).await;
    assert_eq!(
        (subject.as_str(), &env["country"]),
        ("upr.events.KZ.48.review_scheduled", &json!("KZ"))
    );
}

#[tokio::test]
async fn a_repeated_event_id_gets_the_original_seq_and_the_log_keeps_one_copy() {
    // A 1 s server window: later duplicates are caught by the review's history.
    let mut g = ingest_with(1, &[("UPR_DEDUP_WINDOW", "1s")]).await;
    let sched = with(scheduled("KZ", 48), "event_id", uuid().into());
    let first = g.accept("review_scheduled", sched.clone()).await;
    let again = g.accept("review_scheduled", sched.clone()).await;
    assert_eq!(
        (again["seq"].clone(), again["duplicate"].clone()),
        (first["seq"].clone(), json!(true))
    );
    assert_eq!(again["event_id"], first["event_id"]);

    // A retried lifecycle event whose re-decision would be a conflict.
    let held = with(review("KZ", 48), "event_id", uuid().into());
    let held_first = g.accept("review_held", held.clone()).await;
    let side = json!({"country": "KZ", "session": 48, "title": "Side", "held_on": SIDE_EVENT_DAY, "event_id": uuid()});
    let side_first = g.accept("side_event_held", side.clone()).await;
    let held_again = g.accept("review_held", held.clone()).await;
    assert_eq!(
        (held_again["seq"].clone(), held_again["duplicate"].clone()),
        (held_first["seq"].clone(), json!(true))
    );

    // After the server window and with a fresh ingest (empty cache).
    tokio::time::sleep(Duration::from_millis(1200)).await;
    g.ingest_mut().restart();
    g.ingest().wait_healthy().await;
    g.wait_intake_endpoints(1).await;
    for (ty, payload, original) in [
        ("review_scheduled", &sched, &first),
        ("review_held", &held, &held_first),
        ("side_event_held", &side, &side_first),
    ] {
        let r = g.accept(ty, payload.clone()).await;
        assert_eq!(
            (r["seq"].clone(), r["duplicate"].clone()),
            (original["seq"].clone(), json!(true)),
            "{ty}"
        );
    }
    assert_eq!(g.events_count().await, 3);
    // The same id in a plain publish does not add a copy either.
    g.client()
        .publish("upr.ingest.review_held", held.to_string().into())
        .await
        .unwrap();
    g.accept(
        "side_event_held",
        json!({"country": "KZ", "session": 48, "title": "Later", "held_on": SIDE_EVENT_DAY}),
    )
    .await;
    assert_eq!(g.events_count().await, 4);
}

#[tokio::test]
#[expect(
    clippy::too_many_lines,
    reason = "a table of every lifecycle rule, checked in one pass against one server"
)]
async fn every_lifecycle_rule_is_enforced() {
    let g = TestApp::builder().ingest().start().await;
    let kz = || review("KZ", 48);
    let resched = || with(kz(), "scheduled_for", KZ48_NEW_DATE.into());
    for ty in ["review_rescheduled", "review_cancelled", "review_held"] {
        let p = if ty == "review_rescheduled" {
            resched()
        } else {
            kz()
        };
        assert_refused(&g.req_json(ty, p).await, "conflict", None);
    }
    assert_refused(
        &g.req_json(
            "report_published",
            with(kz(), "published_on", "2025-06-01".into()),
        )
        .await,
        "conflict",
        None,
    );
    g.accept(
        "side_event_held",
        json!({"country": "KZ", "session": 48, "title": "Before", "held_on": "2025-01-01"}),
    )
    .await;

    g.accept("review_scheduled", scheduled("KZ", 48)).await;
    assert_refused(
        &g.req_json("review_scheduled", scheduled("KZ", 48)).await,
        "conflict",
        None,
    );
    assert_refused(
        &g.req_json(
            "report_published",
            with(kz(), "published_on", "2025-06-01".into()),
        )
        .await,
        "conflict",
        None,
    );
    g.accept("review_rescheduled", resched()).await;
    g.accept("review_cancelled", kz()).await;
    for ty in ["review_rescheduled", "review_cancelled", "review_held"] {
        let p = if ty == "review_rescheduled" {
            resched()
        } else {
            kz()
        };
        assert_refused(&g.req_json(ty, p).await, "conflict", None);
    }
    g.accept("review_scheduled", scheduled("KZ", 48)).await;
    g.accept("review_held", kz()).await;
    for ty in [
        "review_scheduled",
        "review_rescheduled",
        "review_cancelled",
        "review_held",
    ] {
        let p = match ty {
            "review_scheduled" => scheduled("KZ", 48),
            "review_rescheduled" => resched(),
            _ => kz(),
        };
        assert_refused(&g.req_json(ty, p).await, "conflict", None);
    }
    g.accept(
        "report_published",
        with(kz(), "published_on", "2025-06-01".into()),
    )
    .await;
    assert_refused(
        &g.req_json(
            "report_published",
            with(kz(), "published_on", "2025-06-01".into()),
        )
        .await,
        "conflict",
        None,
    );
    assert_refused(
        &g.req_json("review_scheduled", scheduled("KZ", 48)).await,
        "conflict",
        None,
    );
    g.accept(
        "side_event_held",
        json!({"country": "KZ", "session": 48, "title": "After", "held_on": "2025-07-01"}),
    )
    .await;
    // Other reviews are independent.
    g.accept("review_scheduled", scheduled("KZ", 49)).await;
    let types: Vec<String> = g
        .all_events()
        .await
        .into_iter()
        .map(|(_, e)| e["type"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        types,
        [
            "side_event_held",
            "review_scheduled",
            "review_rescheduled",
            "review_cancelled",
            "review_scheduled",
            "review_held",
            "report_published",
            "side_event_held",
            "review_scheduled"
        ]
    );
}

#[tokio::test]
async fn two_replicas_racing_on_the_same_reviews_let_exactly_one_command_win_each_race() {
    const REVIEWS: u32 = 40;
    let g = ingest_with(2, &[]).await;
    // Race 1: two different review_scheduled for each new review.
    let mut race = FuturesUnordered::new();
    for s in 1..=REVIEWS {
        for location in ["Geneva", "New York"] {
            let client = g.client().clone();
            let p = with(scheduled("KZ", s), "location", location.into());
            race.push(async move { (s, req(&client, "review_scheduled", p.to_string()).await) });
        }
    }
    let mut wins: HashMap<u32, usize> = HashMap::new();
    while let Some((s, reply)) = race.next().await {
        if reply["ok"] == true {
            *wins.entry(s).or_default() += 1;
        } else {
            assert_refused(&reply, "conflict", None);
        }
    }
    assert!((1..=REVIEWS).all(|s| wins.get(&s) == Some(&1)), "{wins:?}");

    // Race 2: held against cancelled, plus a side event, on each review.
    let mut race = FuturesUnordered::new();
    for s in 1..=REVIEWS {
        for ty in ["review_held", "review_cancelled", "side_event_held"] {
            let client = g.client().clone();
            let p = if ty == "side_event_held" {
                json!({"country": "KZ", "session": s, "title": "Side", "held_on": SIDE_EVENT_DAY})
            } else {
                review("KZ", s)
            };
            race.push(async move { (s, ty, req(&client, ty, p.to_string()).await) });
        }
    }
    let mut winner: HashMap<u32, &str> = HashMap::new();
    while let Some((s, ty, reply)) = race.next().await {
        if ty == "side_event_held" {
            assert_eq!(
                reply["ok"], true,
                "side events have no lifecycle condition: {reply}"
            );
        } else if reply["ok"] == true {
            assert!(winner.insert(s, ty).is_none(), "two winners on KZ {s}");
        } else {
            assert_refused(&reply, "conflict", None);
        }
    }
    assert_eq!(winner.len(), REVIEWS as usize);

    // The log agrees: per review one schedule, the winner, one side event.
    let events = g.all_events().await;
    assert_eq!(events.len(), 3 * REVIEWS as usize);
    for s in 1..=REVIEWS {
        let mine: Vec<&str> = events
            .iter()
            .filter(|(_, e)| e["session"] == s)
            .map(|(_, e)| e["type"].as_str().unwrap())
            .collect();
        assert_eq!(mine.iter().filter(|t| **t == "review_scheduled").count(), 1);
        assert_eq!(mine.iter().filter(|t| **t == "side_event_held").count(), 1);
        let lifecycle: Vec<_> = mine
            .iter()
            .filter(|t| **t == "review_held" || **t == "review_cancelled")
            .collect();
        assert_eq!(lifecycle, [&winner[&s]], "KZ {s}");
    }
}

#[tokio::test]
async fn a_burst_across_many_reviews_stores_exactly_the_accepted_events() {
    const REVIEWS: u32 = 300;
    const SIDE_EVENTS: u32 = 9;
    let g = TestApp::builder().ingest().start().await;
    // Schedules first (each review in order), then side events, all pipelined.
    let mut requests = Vec::new();
    for s in 1..=REVIEWS {
        requests.push(("review_scheduled", scheduled("FR", s)));
    }
    for i in 0..SIDE_EVENTS {
        for s in 1..=REVIEWS {
            requests.push((
                "side_event_held",
                json!({"country": "FR", "session": s, "title": format!("Side {i}"), "held_on": SIDE_EVENT_DAY,
                       "participating_states": 40}),
            ));
        }
    }
    let total = requests.len();
    let client = g.client().clone();
    let accepted = futures::stream::iter(requests)
        .map(|(ty, p)| {
            let client = client.clone();
            async move { req(&client, ty, p.to_string()).await }
        })
        .buffer_unordered(500)
        .filter(|r| std::future::ready(r["ok"] == true))
        .count()
        .await;
    assert_eq!(accepted, total, "every request accepted");
    assert_eq!(g.events_count().await, accepted as u64);
}

#[tokio::test]
async fn ingest_survives_nats_restarting_under_it_and_leaves_nothing_half_done() {
    let mut g = TestApp::builder().ingest().start().await;
    g.accept("review_scheduled", scheduled("KZ", 48)).await;

    // Requests in flight while the server goes away: each is either answered
    // or lost with the connection; retrying with the same event_id afterwards
    // must never store a second copy.
    let ids: Vec<String> = (0..200).map(|_| uuid()).collect();
    let side = |id: &str| json!({"country": "KZ", "session": 48, "title": "Side", "held_on": SIDE_EVENT_DAY, "event_id": id});
    let in_flight: Vec<_> = ids
        .iter()
        .map(|id| {
            let client = g.client().clone();
            let payload = side(id).to_string();
            tokio::spawn(async move {
                client
                    .request("upr.ingest.side_event_held", payload.into())
                    .await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(5)).await;
    g.nats_mut().stop();
    for request in in_flight {
        request.abort();
    }
    assert!(
        g.ingest_mut().try_exit().is_none(),
        "ingest keeps running without NATS"
    );
    g.nats_mut().restart();

    let client = g.nats().client().await;
    eventually(Duration::from_secs(20), "ingest answering again", || {
        let client = client.clone();
        async move {
            let r = tokio::time::timeout(
                Duration::from_secs(4),
                client.request(
                    "upr.ingest.review_held",
                    review("KZ", 48).to_string().into(),
                ),
            )
            .await
            .ok()?
            .ok()?;
            let v: Value = serde_json::from_slice(&r.payload).ok()?;
            (v["ok"] == true).then_some(())
        }
    })
    .await;
    for id in &ids {
        let r = req(&client, "side_event_held", side(id).to_string()).await;
        assert_eq!(r["ok"], true, "{r}");
    }
    let js = jetstream::new(client.clone());
    let stream = js.get_stream(contract::EVENTS_STREAM).await.unwrap();
    let n = stream_count(&js, contract::EVENTS_STREAM).await;
    let mut seen = HashMap::new();
    for seq in 1..=n {
        let m = stream.get_raw_message(seq).await.unwrap();
        let env: Value = serde_json::from_slice(&m.payload).unwrap();
        *seen
            .entry(env["id"].as_str().unwrap().to_owned())
            .or_insert(0) += 1;
    }
    assert_eq!(
        n,
        2 + ids.len() as u64,
        "schedule, held, and each side event once"
    );
    assert!(seen.values().all(|c| *c == 1), "one copy of each event");
    assert!(ids.iter().all(|id| seen.contains_key(id)));
}

#[tokio::test]
async fn ingest_refuses_an_incompatible_stream_and_names_the_difference() {
    // Not a TestApp: ingest must refuse to start.
    let nats = NatsServer::start();
    let js = jetstream::new(nats.client().await);
    js.create_stream(stream::Config {
        name: contract::EVENTS_STREAM.into(),
        subjects: vec!["upr.events.>".into()],
        storage: stream::StorageType::Memory,
        allow_direct: true,
        ..Default::default()
    })
    .await
    .unwrap();
    let mut ingest = ServiceProcess::start(services::INGEST, &nats.url(), &[]);
    let status = ingest.wait_exit(Duration::from_secs(20));
    assert!(!status.success());
    let logs = ingest.logs();
    assert!(
        logs.contains("UPR_EVENTS") && logs.contains("storage: found Memory, expected File"),
        "{logs}"
    );

    // A compatible existing stream (same settings, another window) is accepted.
    js.delete_stream(contract::EVENTS_STREAM).await.unwrap();
    js.create_stream(contract::events_stream(1, Duration::from_secs(600)))
        .await
        .unwrap();
    let ingest = ServiceProcess::start(services::INGEST, &nats.url(), &[]);
    ingest.wait_healthy().await;
    let info = js
        .get_stream(contract::EVENTS_STREAM)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .config
        .clone();
    assert_eq!(info.duplicate_window, contract::DEFAULT_DEDUP_WINDOW);
    assert!(js.get_stream(contract::REJECTED_STREAM).await.is_ok());
}

#[tokio::test]
async fn when_the_event_stream_does_not_answer_ingest_refuses_with_unavailable_and_resumes_by_itself()
 {
    let g = TestApp::builder().ingest().start().await;
    g.accept("review_scheduled", scheduled("KZ", 48)).await;
    g.js().delete_stream(contract::EVENTS_STREAM).await.unwrap();

    let id = uuid();
    let held = with(review("KZ", 48), "event_id", id.clone().into());
    let reply = g.req_json("review_held", held.clone()).await;
    assert_refused(&reply, "unavailable", None);
    let reply = g.req_json("review_scheduled", scheduled("FR", 48)).await;
    assert_refused(&reply, "unavailable", None);
    eventually(WAIT, "unavailable refusals kept", || async {
        (g.rejected_count().await == 2).then_some(())
    })
    .await;

    // The operator restores the stream; ingest needs no restart.
    g.js()
        .create_stream(contract::events_stream(1, contract::DEFAULT_DEDUP_WINDOW))
        .await
        .unwrap();
    g.accept("review_scheduled", scheduled("KZ", 48)).await;
    let first = g.accept("review_held", held.clone()).await;
    let again = g.accept("review_held", held).await;
    assert_eq!(
        (again["seq"].clone(), again["duplicate"].clone()),
        (first["seq"].clone(), json!(true))
    );
    assert_eq!(
        g.events_count().await,
        2,
        "nothing half-done from the outage"
    );
}

/// SIGTERM while requests are in flight: ingest exits 0, and every request
/// it answered `ok` is in the log (what was accepted is never lost). A
/// request still in the socket when the subscription closes gets no answer
/// and is retried by its client, as with any core NATS request.
#[tokio::test]
async fn sigterm_keeps_every_accepted_event_and_exits_0() {
    let mut g = TestApp::builder().ingest().start().await;
    let client = g.client().clone();
    let requests: FuturesUnordered<_> = (1..=200)
        .map(|s| {
            let client = client.clone();
            async move {
                let payload = scheduled("DE", s).to_string();
                let reply = tokio::time::timeout(
                    Duration::from_secs(10),
                    client.request("upr.ingest.review_scheduled", payload.into()),
                )
                .await;
                match reply {
                    Ok(Ok(m)) => Some(serde_json::from_slice::<Value>(&m.payload).unwrap()),
                    _ => None,
                }
            }
        })
        .collect();
    let replies = tokio::spawn(requests.collect::<Vec<_>>());
    // Let the first few be answered, then stop ingest in the middle of the rest.
    eventually(WAIT, "a first event stored", || async {
        (g.events_count().await > 0).then_some(())
    })
    .await;
    let status = g.ingest_mut().terminate(Duration::from_secs(10));
    assert!(status.success(), "exit status {status:?}");
    let replies = replies.await.unwrap();
    let accepted: Vec<u64> = replies
        .iter()
        .flatten()
        .filter(|r| r["ok"] == true)
        .map(|r| r["seq"].as_u64().unwrap())
        .collect();
    assert!(!accepted.is_empty());
    assert!(
        replies.iter().flatten().all(|r| r["ok"] == true),
        "no request is refused because of the shutdown: {replies:?}"
    );
    let stored = g.events_count().await;
    assert!(
        accepted.len() as u64 <= stored && accepted.iter().all(|&seq| seq <= stored),
        "every accepted event is stored: {} accepted, {stored} stored",
        accepted.len()
    );
}
