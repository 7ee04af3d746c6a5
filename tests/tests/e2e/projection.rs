//! The projection service end to end: events published straight to
//! `UPR_EVENTS` (as ingest stores them), read models read back with KV gets
//! and through the `upr.query.*` API exactly as the NATS CLI would.

use std::time::Duration;

use async_nats::jetstream::message::PublishMessage;
use serde_json::{Value, json};
use upr_domain::{Envelope, Timestamp, parse_intake};
use upr_nats::contract::{
    self, COUNTRIES_BUCKET, PROJECTION_CONSUMER, REVIEWS_BUCKET, SESSIONS_BUCKET, services,
    subjects,
};
use upr_tests::fixtures::{KZ48_DATE, KZ48_NEW_DATE, REPORT_DAY, SIDE_EVENT_DAY};
use upr_tests::{READ_MODEL_BUCKETS, ServiceProcess, Snapshot, TestApp, eventually};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(15);

/// A server with the event log and the projection, and no ingest: tests
/// store events themselves. (The event log is ingest's; the projection
/// waits for it.)
async fn given_projection() -> TestApp {
    TestApp::builder().event_log().projection().start().await
}

/// Compares two snapshots key by key, naming only the differences.
#[track_caller]
fn assert_same(actual: &Snapshot, expected: &Snapshot, what: &str) {
    let mut diffs = Vec::new();
    for bucket in READ_MODEL_BUCKETS {
        let (a, e) = (&actual[bucket], &expected[bucket]);
        for key in a
            .keys()
            .chain(e.keys())
            .collect::<std::collections::BTreeSet<_>>()
        {
            if a.get(key) != e.get(key) {
                diffs.push(format!(
                    "{bucket} {key}:\n  actual:   {:?}\n  expected: {:?}",
                    a.get(key),
                    e.get(key)
                ));
            }
        }
    }
    assert!(
        diffs.is_empty(),
        "{what}: {} differences\n{}",
        diffs.len(),
        diffs.join("\n")
    );
}

/// An envelope as ingest would build it from this intake payload; the
/// event id is `n`, so expected values can name it.
#[allow(
    clippy::needless_pass_by_value,
    reason = "callers pass json! temporaries"
)]
fn event(n: u128, ty: &str, payload: Value) -> Envelope {
    let cmd = parse_intake(ty, payload.to_string().as_bytes())
        .unwrap_or_else(|e| panic!("{ty} {payload}: {e:?}"));
    let recorded = Timestamp::parse_rfc3339("2024-12-01T00:00:00.123Z").unwrap();
    cmd.into_envelope(Uuid::from_u128(n), recorded, None)
}

/// `occurred_at` of event `n` in the scenario.
fn at(n: u32) -> String {
    format!("2024-11-{n:02}T10:00:00Z")
}

/// Session 48 with four countries (scheduled, rescheduled, cancelled and
/// scheduled again, held, reported, side events) plus KZ at session 47.
/// Published in this order, the sequences are 1..=11.
fn scenario() -> Vec<Envelope> {
    vec![
        event(
            1,
            "review_scheduled",
            json!({"country": "kz", "session": 48, "scheduled_for": KZ48_DATE, "occurred_at": at(1)}),
        ),
        event(
            2,
            "review_scheduled",
            json!({"country": "CH", "session": 48, "scheduled_for": "2025-01-21T14:30:00Z", "occurred_at": at(2)}),
        ),
        event(
            3,
            "side_event_held",
            json!({"country": "FR", "session": 48, "title": "Civil society briefing", "held_on": SIDE_EVENT_DAY,
            "speakers": [{"name": "A. Dupont", "role": "NGO"}], "participating_states": 12, "topics": ["press freedom"], "occurred_at": at(3)}),
        ),
        event(
            4,
            "review_rescheduled",
            json!({"country": "KZ", "session": 48, "scheduled_for": KZ48_NEW_DATE, "reason": "room", "occurred_at": at(4)}),
        ),
        event(
            5,
            "side_event_held",
            json!({"country": "KZ", "session": 48, "title": "Kazakhstan pre-session", "held_on": "2025-01-20",
            "speakers": [{"name": "B. Nurlanov"}], "occurred_at": at(5)}),
        ),
        event(
            6,
            "review_cancelled",
            json!({"country": "CH", "session": 48, "occurred_at": at(6)}),
        ),
        event(
            7,
            "review_scheduled",
            json!({"country": "CH", "session": 48, "scheduled_for": "2025-01-27T09:00:00Z", "occurred_at": at(7)}),
        ),
        event(
            8,
            "review_held",
            json!({"country": "KZ", "session": 48, "held_on": "2025-01-24", "recommendations_received": 300, "occurred_at": at(8)}),
        ),
        event(
            9,
            "report_published",
            json!({"country": "KZ", "session": 48, "published_on": REPORT_DAY, "document_symbol": "A/HRC/59/10",
            "recommendations": {"total": 300, "supported": 250, "noted": 50}, "occurred_at": at(9)}),
        ),
        event(
            10,
            "review_scheduled",
            json!({"country": "KZ", "session": 47, "scheduled_for": "2024-11-10T08:30:00Z", "occurred_at": at(10)}),
        ),
        event(
            11,
            "review_scheduled",
            json!({"country": "AR", "session": 48, "scheduled_for": "2025-01-27T09:00:00Z", "location": "Geneva", "occurred_at": at(11)}),
        ),
    ]
}

fn history(rows: &[(&str, u32)]) -> Value {
    rows.iter()
        .map(|(t, n)| json!({"type": t, "event_id": Uuid::from_u128((*n).into()), "seq": n, "occurred_at": at(*n), "recorded_by": null, "retracted": null}))
        .collect()
}

fn report() -> Value {
    json!({"published_on": "2025-03-01T00:00:00Z", "document_symbol": "A/HRC/59/10",
           "recommendations": {"total": 300, "supported": 250, "noted": 50}})
}

#[tokio::test]
#[expect(
    clippy::too_many_lines,
    reason = "an end-to-end scenario: its steps, read in order, are the specification"
)]
async fn each_read_model_holds_the_contract_values_after_a_realistic_session() {
    let given = given_projection().await;
    for (i, e) in scenario().iter().enumerate() {
        assert_eq!(given.store_event(e).await, i as u64 + 1);
    }
    assert_eq!(given.caught_up().await, 11);

    let kz_side = json!({"event_id": Uuid::from_u128(5), "recorded_by": null, "title": "Kazakhstan pre-session", "held_on": "2025-01-20T00:00:00Z",
        "speakers": [{"name": "B. Nurlanov", "role": null}], "participating_states": null, "topics": []});
    let fr_side = json!({"event_id": Uuid::from_u128(3), "recorded_by": null, "title": "Civil society briefing", "held_on": "2025-01-22T00:00:00Z",
        "speakers": [{"name": "A. Dupont", "role": "NGO"}], "participating_states": 12, "topics": ["press freedom"]});
    let kz48 = json!({
        "country": "KZ", "country_name": "Kazakhstan", "session": 48, "cycle": 4, "status": "reported",
        "scheduled_for": KZ48_NEW_DATE, "location": "Geneva", "troika": null,
        "history": history(&[("review_scheduled", 1), ("review_rescheduled", 4), ("side_event_held", 5), ("review_held", 8), ("report_published", 9)]),
        "side_events": [kz_side], "report": report(), "outcome": null, "last_seq": 9,
    });
    let ch48 = json!({
        "country": "CH", "country_name": "Switzerland", "session": 48, "cycle": 4, "status": "scheduled",
        "scheduled_for": "2025-01-27T09:00:00Z", "location": "Geneva", "troika": null,
        "history": history(&[("review_scheduled", 2), ("review_cancelled", 6), ("review_scheduled", 7)]),
        "side_events": [], "report": null, "outcome": null, "last_seq": 7,
    });
    let fr48 = json!({
        "country": "FR", "country_name": "France", "session": 48, "cycle": 4, "status": null,
        "scheduled_for": null, "location": null, "troika": null,
        "history": history(&[("side_event_held", 3)]), "side_events": [fr_side], "report": null,
        "outcome": null, "last_seq": 3,
    });
    // Every state of the session by date then country (AR and CH tie; FR,
    // with side events only, has no date), each with its side-event count.
    let s48 = json!({
        "session": 48, "cycle": 4,
        "reviews": [
            {"country": "KZ", "country_name": "Kazakhstan", "status": "reported", "scheduled_for": KZ48_NEW_DATE, "side_events": 1},
            {"country": "AR", "country_name": "Argentina", "status": "scheduled", "scheduled_for": "2025-01-27T09:00:00Z", "side_events": 0},
            {"country": "CH", "country_name": "Switzerland", "status": "scheduled", "scheduled_for": "2025-01-27T09:00:00Z", "side_events": 0},
            {"country": "FR", "country_name": "France", "status": null, "scheduled_for": null, "side_events": 1},
        ],
        "side_events": 2,
        "last_seq": 11,
    });
    // Reviews and reports by session.
    let kz = json!({
        "country": "KZ", "country_name": "Kazakhstan",
        "reviews": [
            {"session": 47, "cycle": 4, "status": "scheduled", "scheduled_for": "2024-11-10T08:30:00Z"},
            {"session": 48, "cycle": 4, "status": "reported", "scheduled_for": KZ48_NEW_DATE},
        ],
        "side_events": 1,
        "reports": [{"session": 48, "published_on": "2025-03-01T00:00:00Z", "document_symbol": "A/HRC/59/10"}],
        "last_seq": 10,
    });
    let fr = json!({"country": "FR", "country_name": "France",
        "reviews": [{"session": 48, "cycle": 4, "status": null, "scheduled_for": null}],
        "side_events": 1, "reports": [], "last_seq": 3});
    let s47 = json!({"session": 47, "cycle": 4,
        "reviews": [{"country": "KZ", "country_name": "Kazakhstan", "status": "scheduled", "scheduled_for": "2024-11-10T08:30:00Z", "side_events": 0}],
        "side_events": 0, "last_seq": 10});

    for (bucket, key, expected, query, name) in [
        (
            REVIEWS_BUCKET,
            "KZ.48",
            &kz48,
            "upr.query.review.KZ.48",
            "review",
        ),
        (
            REVIEWS_BUCKET,
            "CH.48",
            &ch48,
            "upr.query.review.ch.48",
            "review",
        ),
        (
            REVIEWS_BUCKET,
            "FR.48",
            &fr48,
            "upr.query.review.FR.48",
            "review",
        ),
        (
            SESSIONS_BUCKET,
            "48",
            &s48,
            "upr.query.session.48",
            "session",
        ),
        (
            SESSIONS_BUCKET,
            "47",
            &s47,
            "upr.query.session.47",
            "session",
        ),
        (
            COUNTRIES_BUCKET,
            "KZ",
            &kz,
            "upr.query.country.KZ",
            "country",
        ),
        (
            COUNTRIES_BUCKET,
            "FR",
            &fr,
            "upr.query.country.fr",
            "country",
        ),
    ] {
        assert_eq!(
            given.kv_get(bucket, key).await.as_deref(),
            Some(expected.to_string().as_str()),
            "{bucket} {key}"
        );
        let reply = given
            .client()
            .request(query.to_string(), "".into())
            .await
            .unwrap();
        assert_eq!(
            String::from_utf8(reply.payload.to_vec()).unwrap(),
            json!({"ok": true, name: expected}).to_string(),
            "{query}"
        );
    }
    let snapshot = given.snapshot().await;
    assert_eq!(snapshot[REVIEWS_BUCKET].len(), 5);
    assert_same(&snapshot, &given.pure_fold().await, "live vs pure fold");
}

#[tokio::test]
#[expect(
    clippy::too_many_lines,
    reason = "every query and error code against one server, in one pass"
)]
async fn queries_answer_upcoming_status_and_every_error_code() {
    let given = given_projection().await;
    let now = time::OffsetDateTime::now_utc();
    let day = |d: i64| {
        Timestamp::from_offset_datetime(
            now.replace_nanosecond(0).unwrap() + time::Duration::days(d),
        )
        .unwrap()
        .to_string()
    };
    let sched = |n, c: &str, d| {
        event(
            n,
            "review_scheduled",
            json!({"country": c, "session": 60, "scheduled_for": day(d)}),
        )
    };
    for e in [
        sched(1, "KZ", 10),
        sched(2, "CH", 2),
        sched(3, "AR", 2),
        sched(4, "FR", -3),
        sched(5, "BR", 40),
        event(
            6,
            "review_cancelled",
            json!({"country": "BR", "session": 60}),
        ),
        event(
            7,
            "review_scheduled",
            json!({"country": "KZ", "session": 61, "scheduled_for": day(20)}),
        ),
    ] {
        given.store_event(&e).await;
    }
    given.caught_up().await;

    let up = |c: &str, s: u32, d| {
        let name = upr_domain::Country::parse(c).unwrap().un_name();
        json!({"country": c, "country_name": name, "session": s, "scheduled_for": day(d)})
    };
    // Soonest first, then country; past, cancelled excluded.
    let all = given.query_ok("upr.query.upcoming", "").await;
    assert_eq!(
        all["reviews"],
        json!([
            up("AR", 60, 2),
            up("CH", 60, 2),
            up("KZ", 60, 10),
            up("KZ", 61, 20)
        ])
    );
    let week = given
        .query_ok("upr.query.upcoming", r#"{"within_days": 7}"#)
        .await;
    assert_eq!(week["reviews"], json!([up("AR", 60, 2), up("CH", 60, 2)]));
    let kz = given
        .query_ok(
            "upr.query.upcoming",
            r#"{"country": "kz", "within_days": 15}"#,
        )
        .await;
    assert_eq!(kz["reviews"], json!([up("KZ", 60, 10)]));

    let status = given.query_ok("upr.query.status", "").await;
    assert_eq!(
        status,
        json!({"ok": true, "applied_seq": 7, "stream_last_seq": 7,
               "stream_bytes": status["stream_bytes"], "stream_max_bytes": null,
               "storage_bytes": status["storage_bytes"], "storage_max_bytes": null,
               "values_refused": 0, "beyond_limits_skipped": 0})
    );

    given
        .query_err("upr.query.review.KZ.59", "", "not_found", None)
        .await;
    given
        .query_err("upr.query.session.59", "", "not_found", None)
        .await;
    given
        .query_err("upr.query.country.TD", "", "not_found", None)
        .await;
    given
        .query_err(
            "upr.query.review.XX.48",
            "",
            "invalid_field",
            Some("country"),
        )
        .await;
    given
        .query_err(
            "upr.query.review.KZ.0",
            "",
            "invalid_field",
            Some("session"),
        )
        .await;
    given
        .query_err(
            "upr.query.session.abc",
            "",
            "invalid_field",
            Some("session"),
        )
        .await;
    given
        .query_err(
            "upr.query.country.Kazakhstan",
            "",
            "invalid_field",
            Some("country"),
        )
        .await;
    given
        .query_err("upr.query.upcoming", "{not json", "invalid_json", None)
        .await;
    given
        .query_err(
            "upr.query.upcoming",
            r#"{"within_days": -1}"#,
            "invalid_field",
            Some("within_days"),
        )
        .await;
    given
        .query_err(
            "upr.query.upcoming",
            r#"{"country": "XX"}"#,
            "invalid_field",
            Some("country"),
        )
        .await;
    given
        .query_err(
            "upr.query.upcoming",
            r#"{"days": 3}"#,
            "invalid_field",
            Some("days"),
        )
        .await;
    given
        .query_err(
            "upr.query.review.KZ.60",
            r#"{"min_seq": "7"}"#,
            "invalid_field",
            Some("min_seq"),
        )
        .await;

    // A min_seq beyond the log cannot come: answered at once (contract
    // V3.4), not after the 5 s wait.
    let started = std::time::Instant::now();
    given
        .query_err(
            "upr.query.review.KZ.60",
            r#"{"min_seq": 1000}"#,
            "invalid_field",
            Some("min_seq"),
        )
        .await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "waited {:?} for a sequence beyond the log",
        started.elapsed()
    );

    // Listed as a micro service with its query endpoints and counters.
    let info = given
        .request(&format!("$SRV.INFO.{}", services::PROJECTION), "")
        .await;
    let subjects: Vec<&str> = info["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["subject"].as_str().unwrap())
        .collect();
    for s in [
        "upr.query.review.*.*",
        "upr.query.session.*",
        "upr.query.country.*",
        "upr.query.upcoming",
        "upr.query.status",
    ] {
        assert!(subjects.contains(&s), "{s} not in {subjects:?}");
    }
    let stats = given.service_stats(services::PROJECTION).await;
    assert_eq!(
        (stats["applied_seq"].as_u64(), stats["lag"].as_u64()),
        (Some(7), Some(0)),
        "{stats}"
    );
    assert_eq!(
        (
            stats["events_applied"].as_u64(),
            stats["malformed_skipped"].as_u64()
        ),
        (Some(7), Some(0)),
        "{stats}"
    );
}

#[tokio::test]
async fn a_client_reads_its_own_write_with_min_seq() {
    let given = given_projection().await;
    for n in 1..=20u128 {
        let e = event(
            n,
            "side_event_held",
            json!({"country": "KZ", "session": 48, "title": format!("Side {n}"), "held_on": "2025-01-20"}),
        );
        let seq = given.store_event(&e).await;
        // Immediately: the answer already contains the event.
        let v = given
            .query_ok(
                "upr.query.review.KZ.48",
                &json!({"min_seq": seq}).to_string(),
            )
            .await;
        assert_eq!(v["review"]["last_seq"], seq);
        assert_eq!(
            v["review"]["side_events"].as_array().unwrap().len(),
            n as usize
        );
        let s = given
            .query_ok("upr.query.session.48", &format!(r#"{{"min_seq":{seq}}}"#))
            .await;
        assert_eq!(s["session"]["side_events"], u64::try_from(n).unwrap());
    }
}

#[tokio::test]
async fn events_past_a_reviews_limits_written_around_ingest_are_counted_and_skipped() {
    let given = given_projection().await;
    // 101 lifecycle events on one review, straight into the log.
    let limit = upr_domain::MAX_LIFECYCLE_EVENTS as u128;
    for n in 1..=limit + 1 {
        let e = event(
            n,
            "review_rescheduled",
            json!({"country": "KZ", "session": 48, "scheduled_for": format!("2025-01-{:02}T08:30:00Z", n % 28 + 1)}),
        );
        given.store_event(&e).await;
    }
    let last = given
        .store_event(&event(
            500,
            "review_scheduled",
            json!({"country": "CH", "session": 48, "scheduled_for": "2025-01-21T08:30:00Z"}),
        ))
        .await;
    assert_eq!(given.caught_up().await, last);
    let stats = given.service_stats(services::PROJECTION).await;
    assert_eq!(stats["beyond_limits_skipped"], 1, "{stats}");
    let status = given.query_ok("upr.query.status", "").await;
    assert_eq!(status["beyond_limits_skipped"], 1, "{status}");
    let kz = given.query_ok("upr.query.review.KZ.48", "").await;
    assert_eq!(kz["review"]["history"].as_array().unwrap().len(), 100);
    assert_eq!(kz["review"]["last_seq"], 100);
    // Every view agrees with the pure fold, which skips the same event.
    assert_same(
        &given.snapshot().await,
        &given.pure_fold().await,
        "live vs pure fold",
    );
}

#[tokio::test]
async fn malformed_messages_in_the_log_are_counted_and_skipped_without_a_stall() {
    let given = given_projection().await;
    let events = scenario();
    let garbage_subject = "upr.events.KZ.48.review_scheduled";
    let mut unknown_type: Value = serde_json::from_slice(&events[0].to_json()).unwrap();
    unknown_type["type"] = "review_postponed".into();
    given.store_event(&events[0]).await;
    given
        .store_raw(garbage_subject, b"{not json".to_vec(), "g1")
        .await;
    given.store_event(&events[1]).await;
    given
        .store_raw(
            garbage_subject,
            serde_json::to_vec(&unknown_type).unwrap(),
            "g2",
        )
        .await;
    // A valid envelope of CH on a KZ subject.
    given
        .store_raw(garbage_subject, events[1].to_json(), "g3")
        .await;
    given.store_raw(garbage_subject, Vec::new(), "g4").await;
    for e in &events[2..] {
        given.store_event(e).await;
    }
    let last = given.caught_up().await;
    assert_eq!(last, events.len() as u64 + 4);
    let stats = given.service_stats(services::PROJECTION).await;
    assert_eq!(stats["malformed_skipped"], 4, "{stats}");
    assert_eq!(stats["events_applied"], events.len(), "{stats}");
    assert_same(
        &given.snapshot().await,
        &given.pure_fold().await,
        "live vs pure fold",
    );
    let ch = given.query_ok("upr.query.review.CH.48", "").await;
    assert_eq!(
        ch["review"]["history"].as_array().unwrap().len(),
        3,
        "the misplaced copy is not applied"
    );
    assert!(
        given
            .projection()
            .logs()
            .contains("skipping a message that is not a valid event")
    );
}

/// A burst across many reviews, sessions and countries.
fn burst(n: u128) -> Vec<Envelope> {
    const COUNTRIES: [&str; 7] = ["KZ", "CH", "FR", "BR", "AR", "TD", "NO"];
    (0..n)
        .map(|i| {
            let country = COUNTRIES[(i % 7) as usize];
            let session = 40 + (i / 7 % 5) as u32;
            let round = i / 35;
            let id = 10_000 + i;
            match round % 4 {
                0 if round < 4 => event(id, "review_scheduled", json!({"country": country, "session": session, "scheduled_for": format!("2030-01-{:02}T08:00:00Z", i % 28 + 1)})),
                1 => event(id, "review_rescheduled", json!({"country": country, "session": session, "scheduled_for": format!("2030-02-{:02}T08:00:00Z", i % 28 + 1)})),
                _ => event(id, "side_event_held", json!({"country": country, "session": session, "title": format!("Side event {i}"),
                    "held_on": format!("2030-01-{:02}", i % 28 + 1), "speakers": [{"name": "S"}], "participating_states": i % 50})),
            }
        })
        .collect()
}

#[tokio::test]
async fn kill_9_during_a_burst_then_restart_equals_a_rebuild_and_the_pure_fold() {
    let mut given = given_projection().await;
    let events = burst(1000);
    let (first, rest) = events.split_at(400);
    let log = given.js().clone();
    let publish_all = |evs: &'_ [Envelope]| {
        let js = log.clone();
        let evs = evs.to_vec();
        async move {
            let mut acks = Vec::new();
            for e in &evs {
                let subject = subjects::event(e.country, e.session, e.event_type());
                let publish = PublishMessage::build()
                    .payload(e.to_json().into())
                    .message_id(e.id.to_string());
                acks.push(js.send_publish(subject, publish).await.unwrap());
            }
            for a in acks {
                a.await.unwrap();
            }
        }
    };
    publish_all(first).await;
    // Kill while it is busy with the burst (after it applied something).
    eventually(WAIT, "some events applied", || async {
        let v = given.request("upr.query.status", "").await;
        (v["applied_seq"].as_u64() > Some(0)).then_some(())
    })
    .await;
    given.projection_mut().kill9();
    publish_all(rest).await;
    given.projection_mut().restart();
    given.projection().wait_healthy().await;
    assert_eq!(given.caught_up().await, 1000);
    let live = given.snapshot().await;
    assert_same(
        &live,
        &given.pure_fold().await,
        "live models vs the pure fold",
    );

    let status = given.projection_mut().terminate(Duration::from_secs(10));
    assert!(status.success());
    let mut rebuild =
        ServiceProcess::start_args(services::PROJECTION, &given.url(), &[], &["rebuild"]);
    let status = rebuild.wait_exit(WAIT);
    assert!(status.success(), "rebuild failed: {}", rebuild.logs());
    assert!(
        rebuild.logs().contains("rebuild complete"),
        "{}",
        rebuild.logs()
    );
    let rebuilt = given.snapshot().await;
    assert_eq!(rebuilt[REVIEWS_BUCKET].len(), 35);
    assert_same(&rebuilt, &live, "rebuild vs live models");
}

#[tokio::test]
async fn a_deleted_consumer_or_bucket_makes_it_replay_into_complete_models() {
    let mut given = given_projection().await;
    for e in scenario() {
        given.store_event(&e).await;
    }
    given.caught_up().await;
    let expected = given.pure_fold().await;
    assert_same(&given.snapshot().await, &expected, "after replay");

    // While running: the consumer is deleted, the buckets kept.
    let stream = given
        .js()
        .get_stream(contract::EVENTS_STREAM)
        .await
        .unwrap();
    stream.delete_consumer(PROJECTION_CONSUMER).await.unwrap();
    eventually(WAIT, "a replay", || async {
        (given.service_stats(services::PROJECTION).await["replays"].as_u64() >= Some(1))
            .then_some(())
    })
    .await;
    given.caught_up().await;
    assert_same(&given.snapshot().await, &expected, "after replay");
    // Applying again changed nothing, and new events still flow.
    let extra = event(99, "review_held", json!({"country": "CH", "session": 48}));
    let seq = given.store_event(&extra).await;
    let ch = given
        .query_ok(
            "upr.query.review.CH.48",
            &json!({"min_seq": seq}).to_string(),
        )
        .await;
    assert_eq!(ch["review"]["status"], "held");
    let expected = given.pure_fold().await;

    // While stopped: an operator deletes a bucket; the restart replays.
    given.projection_mut().terminate(Duration::from_secs(10));
    given.js().delete_key_value(SESSIONS_BUCKET).await.unwrap();
    given.projection_mut().restart();
    given.projection().wait_healthy().await;
    given.caught_up().await;
    assert_same(&given.snapshot().await, &expected, "after replay");

    // While stopped: only the consumer is deleted; the restart replays too.
    given.projection_mut().terminate(Duration::from_secs(10));
    stream.delete_consumer(PROJECTION_CONSUMER).await.unwrap();
    given.projection_mut().restart();
    given.projection().wait_healthy().await;
    given.caught_up().await;
    assert_same(&given.snapshot().await, &expected, "after replay");
}

#[tokio::test]
async fn redelivering_the_whole_log_into_kept_buckets_changes_nothing() {
    let mut given = given_projection().await;
    for e in scenario() {
        given.store_event(&e).await;
    }
    given.caught_up().await;
    let before = given.snapshot().await;
    // Move the consumer back to sequence 1 while the buckets are kept: on
    // restart every event is delivered again and skipped by last_seq.
    given.projection_mut().terminate(Duration::from_secs(10));
    let stream = given
        .js()
        .get_stream(contract::EVENTS_STREAM)
        .await
        .unwrap();
    stream.delete_consumer(PROJECTION_CONSUMER).await.unwrap();
    stream
        .create_consumer(contract::projection_consumer())
        .await
        .unwrap();
    given.projection_mut().restart();
    given.projection().wait_healthy().await;
    assert_eq!(given.caught_up().await, 11);
    let stats = given.service_stats(services::PROJECTION).await;
    assert_eq!(
        (stats["events_applied"].as_u64(), stats["replays"].as_u64()),
        (Some(0), Some(0)),
        "{stats}"
    );
    assert_same(&given.snapshot().await, &before, "after redelivery");
}

/// Several instances: one holds the lease and consumes; the other stands
/// by, answers no query, and takes over when the active one is killed. The
/// read models then still equal the pure fold of the log.
#[tokio::test]
async fn a_standby_takes_over_when_the_active_instance_is_killed_and_the_models_stay_exact() {
    let mut given = given_projection().await;
    let mut standby = given.spawn(services::PROJECTION, &[]).await;
    assert!(
        standby.logs().contains("standing by"),
        "the second instance did not stand by:\n{}",
        standby.logs()
    );
    let events = scenario();
    let (first, rest) = events.split_at(events.len() / 2);
    for e in first {
        given.store_event(e).await;
    }
    given.caught_up().await;

    // A graceful stop hands the lease over at once; kill -9 after the TTL.
    given.projection_mut().kill9();
    let killed = std::time::Instant::now();
    let mut last = 0;
    for e in rest {
        last = given.store_event(e).await;
    }
    let answer = eventually(Duration::from_secs(20), "the standby answers", || async {
        let reply = given
            .client()
            .request(
                "upr.query.status",
                json!({"min_seq": last}).to_string().into(),
            )
            .await
            .ok()?;
        let v: Value = serde_json::from_slice(&reply.payload).ok()?;
        (v["ok"] == true).then_some(v)
    })
    .await;
    println!(
        "projection failover: the standby applied the next event {:?} after the active instance was killed",
        killed.elapsed()
    );
    assert!(answer["applied_seq"].as_u64() >= Some(last), "{answer}");
    assert_same(
        &given.snapshot().await,
        &given.pure_fold().await,
        "after the takeover",
    );

    // Stopped gracefully, the new active instance gives the lease up at once
    // and the old one, restarted, takes it.
    let status = standby.terminate(Duration::from_secs(10));
    assert!(status.success(), "{}", standby.logs());
    assert!(
        standby.logs().contains("lease released"),
        "{}",
        standby.logs()
    );
    given.projection_mut().restart();
    given.projection().wait_healthy().await;
    given.query_ok("upr.query.status", "").await;
}

/// An active instance frozen past its lease (a stopped container, a paused
/// VM) wakes to find a standby active: it writes nothing more and stops,
/// and the read models still equal the pure fold.
#[tokio::test]
async fn an_instance_frozen_past_its_lease_writes_nothing_when_it_wakes() {
    let mut given = given_projection().await;
    let standby = given.spawn(services::PROJECTION, &[]).await;
    let events = scenario();
    let (first, rest) = events.split_at(events.len() / 2);
    for e in first {
        given.store_event(e).await;
    }
    given.caught_up().await;
    given.projection().freeze();
    let mut last = 0;
    for e in rest {
        last = given.store_event(e).await;
    }
    // Until the server notices the frozen process, it still gets its share
    // of queries (which go unanswered): ask with a short timeout.
    eventually(
        Duration::from_secs(30),
        "the standby applies the rest",
        || async {
            let ask = json!({"min_seq": last}).to_string();
            let v = given
                .try_request("upr.query.status", ask, Duration::from_millis(500))
                .await?;
            (v["ok"] == true).then_some(())
        },
    )
    .await;
    let before = given.snapshot().await;
    given.projection().thaw();
    let status = given.projection_mut().wait_exit(Duration::from_secs(15));
    assert!(!status.success(), "{}", given.projection().logs());
    assert!(
        given
            .projection()
            .logs()
            .contains("another instance holds the projection lease"),
        "{}",
        given.projection().logs()
    );
    assert_same(
        &given.snapshot().await,
        &before,
        "after the frozen one woke",
    );
    assert_same(&before, &given.pure_fold().await, "against the pure fold");
    drop(standby);
}
