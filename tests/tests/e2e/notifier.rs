//! The notifier end to end: a real nats-server, the built `upr-notifier`, and
//! events published straight into `UPR_EVENTS` as ingest stores them. Lead
//! times are seconds (`UPR_REMINDER_LEADS=4s,2s`) and reviews a few seconds
//! ahead, so each test takes seconds.

use std::{collections::HashMap, time::Duration};

use async_nats::jetstream;
use futures::StreamExt;
use serde_json::Value;
use upr_domain::{
    Country, Envelope, EventData, EventRetracted, ReviewCancelled, ReviewHeld, ReviewRescheduled,
    ReviewScheduled, SCHEMA, Session, Timestamp,
};
use upr_nats::contract::{self, notifier as names, services};
use upr_tests::{NatsServer, ServiceProcess, TestApp, eventually, notifications};
use uuid::Uuid;

const LEADS: &str = "4s,2s";

fn now() -> Timestamp {
    Timestamp::from_offset_datetime(time::OffsetDateTime::now_utc())
        .unwrap()
        .truncate_to_millis()
}

fn in_ms(ms: i64) -> Timestamp {
    now().checked_add(time::Duration::milliseconds(ms)).unwrap()
}

fn ms_until(t: Timestamp) -> Duration {
    Duration::from_millis(u64::try_from(t.since(now()).whole_milliseconds()).unwrap_or(0))
}

fn country(code: &str) -> Country {
    Country::parse(code).unwrap()
}

fn s(n: u64) -> Session {
    Session::new(n).unwrap()
}

/// A nats-server with the event log, a core subscription on `upr.notify.>`
/// (as `nats sub` would have), and a notifier with `leads`.
async fn bed(leads: &str) -> TestApp {
    TestApp::builder()
        .event_log()
        .listen(contract::subjects::NOTIFY_ALL)
        .service(
            services::NOTIFIER,
            &[(contract::env::UPR_REMINDER_LEADS, leads)],
        )
        .start()
        .await
}

/// A server holding only the event log, for tests that arrange the log and
/// the notifier's consumer before any notifier starts.
async fn log_without_notifier() -> (
    TestApp,
    async_nats::Client,
    jetstream::Context,
    jetstream::stream::Stream,
) {
    let app = TestApp::builder().event_log().start().await;
    let client = app.client().clone();
    let js = app.js().clone();
    let stream = js
        .get_stream(contract::EVENTS_STREAM)
        .await
        .expect("event log");
    (app, client, js, stream)
}

fn scheduled(when: Timestamp) -> EventData {
    EventData::ReviewScheduled(ReviewScheduled {
        scheduled_for: when,
        location: "Geneva".into(),
        troika: None,
    })
}

async fn start_notifier(app: &TestApp, leads: &str) -> ServiceProcess {
    app.spawn(
        services::NOTIFIER,
        &[(contract::env::UPR_REMINDER_LEADS, leads)],
    )
    .await
}

fn reminder_id(code: &str, session: u64, lead: &str, date: Timestamp) -> String {
    format!("{code}.{session}.{lead}.{date}")
}

#[tokio::test]
#[expect(
    clippy::too_many_lines,
    reason = "one reminder's whole journey: receipt times, the payload field by field, the stream, the status and the step timing"
)]
async fn reminders_arrive_on_time_with_the_contract_payload_on_core_nats_and_in_the_stream() {
    let bed = bed(LEADS).await;
    // A malformed message in the log is skipped, not a stall.
    bed.js()
        .publish("upr.events.KZ.48.review_scheduled", "{not json".into())
        .await
        .unwrap()
        .await
        .unwrap();
    // Receipt times, to check nothing arrives before its due time (timers
    // fire early; the notifier holds each reminder until due).
    let mut receipts = bed
        .client()
        .subscribe("upr.notify.reminder.KZ")
        .await
        .unwrap();
    bed.client().flush().await.unwrap();
    let date = in_ms(6_000);
    bed.store_now("KZ", 48, scheduled(date)).await;
    let ids = [
        reminder_id("KZ", 48, "4s", date),
        reminder_id("KZ", 48, "2s", date),
    ];
    for _ in &ids {
        let m = tokio::time::timeout(Duration::from_secs(10), receipts.next())
            .await
            .expect("a reminder within 10 s")
            .unwrap();
        let received = now();
        let n: Value = serde_json::from_slice(&m.payload).unwrap();
        let due = Timestamp::parse_rfc3339(n["due_at"].as_str().unwrap()).unwrap();
        assert!(
            received >= due,
            "{} received at {received}, before its due time {due}",
            n["id"]
        );
    }

    let heard = eventually(
        Duration::from_secs(10),
        "two reminders on upr.notify.>",
        || async {
            let h = bed.heard();
            (h.len() >= 2).then_some(h)
        },
    )
    .await;
    for ((subject, n), (id, lead)) in heard.iter().zip(ids.iter().zip(["4s", "2s"])) {
        assert_eq!(subject, "upr.notify.reminder.KZ");
        let due = date
            .checked_sub(time::Duration::seconds(if lead == "4s" { 4 } else { 2 }))
            .unwrap();
        let keys: Vec<&str> = n.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "id",
                "kind",
                "country",
                "country_name",
                "session",
                "cycle",
                "scheduled_for",
                "location",
                "lead",
                "due_at",
                "sent_at",
                "late"
            ]
        );
        assert_eq!(n["id"], id.as_str());
        assert_eq!(n["kind"], "reminder");
        assert_eq!(n["country"], "KZ");
        assert_eq!(n["country_name"], "Kazakhstan");
        assert_eq!(n["session"], 48);
        assert_eq!(n["cycle"], 4);
        assert_eq!(n["scheduled_for"], date.to_string());
        assert_eq!(n["location"], "Geneva");
        assert_eq!(n["lead"], lead);
        assert_eq!(n["due_at"], due.to_string());
        assert_eq!(n["late"], false);
        let sent_at = Timestamp::parse_rfc3339(n["sent_at"].as_str().unwrap()).unwrap();
        let lateness = sent_at.since(due);
        println!(
            "reminder {id}: sent {} ms after due",
            lateness.whole_milliseconds()
        );
        assert!(
            lateness >= time::Duration::ZERO && lateness < time::Duration::milliseconds(1_500),
            "{id} sent {lateness} after its due time"
        );
    }
    let stored = bed.notifications().await;
    let stored_ids: Vec<&str> = stored.iter().map(|(_, id, _)| id.as_str()).collect();
    assert_eq!(stored_ids, ids);
    for ((_, _, payload), (_, heard)) in stored.iter().zip(&heard) {
        assert_eq!(payload, heard);
    }
    let status = bed.notifier_status().await.unwrap();
    assert_eq!(status["ok"], true);
    assert_eq!(
        (status["sent"].as_u64(), status["late"].as_u64()),
        (Some(2), Some(0))
    );
    assert_eq!(status["pending"], 0);

    assert_step_timing(&bed, 2).await;
}

/// Micro STATS say where the `sent` reminders' time went, step by step;
/// each was held until due, so its checks count from the due time and stay
/// under the 1.5 s the notices themselves are held to.
async fn assert_step_timing(bed: &TestApp, sent: u64) {
    let stats = bed
        .client()
        .request(format!("$SRV.STATS.{}", services::NOTIFIER), "".into())
        .await
        .unwrap();
    let stats: Value = serde_json::from_slice(&stats.payload).unwrap();
    let timing = &stats["endpoints"][0]["data"]["reminder_timing"];
    assert_eq!(timing["reminders"], sent, "{stats}");
    for step in ["fired_late_ms", "delivered_ms", "checked_ms"] {
        let max = timing[step]["max"].as_f64();
        assert!(max.is_some_and(f64::is_finite), "{step}: {timing}");
    }
    assert!(
        timing["checked_ms"]["max"].as_f64().unwrap() < 1_500.0,
        "{timing}"
    );
}

#[tokio::test]
async fn a_reminder_already_due_when_the_review_is_scheduled_is_not_sent() {
    let bed = bed(LEADS).await;
    let date = in_ms(3_000); // the 4s reminder was due a second ago
    bed.store_now("KZ", 48, scheduled(date)).await;
    eventually(Duration::from_secs(6), "the 2s reminder", || async {
        (!bed.reminder_ids().await.is_empty()).then_some(())
    })
    .await;
    tokio::time::sleep(ms_until(date) + Duration::from_millis(300)).await;
    assert_eq!(
        bed.reminder_ids().await,
        [reminder_id("KZ", 48, "2s", date)]
    );
    let status = bed.notifier_status().await.unwrap();
    assert_eq!(
        (status["skipped"].as_u64(), status["sent"].as_u64()),
        (Some(1), Some(1))
    );
}

#[tokio::test]
async fn rescheduling_replaces_the_reminders_and_announces_old_and_new_dates() {
    let bed = bed(LEADS).await;
    let old = in_ms(7_000);
    bed.store_now("KZ", 48, scheduled(old)).await;
    let new = in_ms(9_000);
    let event = bed
        .store_now(
            "KZ",
            48,
            EventData::ReviewRescheduled(ReviewRescheduled {
                scheduled_for: new,
                reason: Some("room".into()),
            }),
        )
        .await;
    let expected = [
        reminder_id("KZ", 48, "4s", new),
        reminder_id("KZ", 48, "2s", new),
    ];
    eventually(
        Duration::from_secs(10),
        "the new date's reminders",
        || async { (bed.reminder_ids().await.len() >= 2).then_some(()) },
    )
    .await;
    assert_eq!(bed.reminder_ids().await, expected);
    let notices: Vec<_> = bed
        .notifications()
        .await
        .into_iter()
        .filter(|(subject, _, _)| subject == "upr.notify.rescheduled.KZ")
        .collect();
    assert_eq!(notices.len(), 1, "{notices:?}");
    let (_, id, n) = &notices[0];
    assert_eq!(id, &format!("KZ.48.rescheduled.{}", event.id));
    assert_eq!(n["kind"], "rescheduled");
    assert_eq!(n["old_scheduled_for"], old.to_string());
    assert_eq!(n["scheduled_for"], new.to_string());
    assert_eq!(n["reason"], "room");
    assert!(
        bed.heard()
            .iter()
            .any(|(s, v)| s == "upr.notify.rescheduled.KZ" && v == n)
    );
}

#[tokio::test]
async fn retracting_a_reschedule_brings_back_the_first_dates_reminders_and_announces_it() {
    let bed = bed(LEADS).await;
    let old = in_ms(7_000);
    bed.store_now("KZ", 48, scheduled(old)).await;
    let new = in_ms(9_000);
    let moved = bed
        .store_now(
            "KZ",
            48,
            EventData::ReviewRescheduled(ReviewRescheduled {
                scheduled_for: new,
                reason: None,
            }),
        )
        .await;
    let retraction = bed
        .store_now_by(
            "KZ",
            48,
            EventData::EventRetracted(EventRetracted {
                retracts: moved.id,
                reason: "entered twice".into(),
            }),
            Some("desk"),
        )
        .await;
    let notice = eventually(Duration::from_secs(5), "the corrected notice", || async {
        bed.notifications()
            .await
            .into_iter()
            .find(|(subject, _, _)| subject == "upr.notify.corrected.KZ")
    })
    .await;
    assert_eq!(notice.1, format!("KZ.48.corrected.{}", retraction.id));
    let n = &notice.2;
    assert_eq!(n["kind"], "corrected");
    assert_eq!(
        n["retracted"],
        serde_json::json!({"event_id": moved.id, "type": "review_rescheduled"})
    );
    assert_eq!(n["status"], "scheduled");
    assert_eq!(n["scheduled_for"], old.to_string());
    assert_eq!(n["old_scheduled_for"], new.to_string());
    assert_eq!(n["reason"], "entered twice");
    assert_eq!(n["retracted_by"], "desk", "who retracted it");
    assert_eq!(
        (n["country_name"].as_str(), n["cycle"].as_u64()),
        (Some("Kazakhstan"), Some(4))
    );
    // The first date's reminders are sent as if the reschedule had never
    // been recorded; none for the retracted date.
    tokio::time::sleep(ms_until(new)).await;
    eventually(
        Duration::from_secs(5),
        "the first date's reminders",
        || async { (bed.reminder_ids().await.len() >= 2).then_some(()) },
    )
    .await;
    assert_eq!(
        bed.reminder_ids().await,
        [
            reminder_id("KZ", 48, "4s", old),
            reminder_id("KZ", 48, "2s", old)
        ]
    );
    assert!(
        bed.heard()
            .iter()
            .any(|(s, v)| s == "upr.notify.corrected.KZ" && v == n)
    );
}

#[tokio::test]
async fn cancelling_drops_the_reminders_and_announces_it() {
    let bed = bed(LEADS).await;
    let date = in_ms(6_500);
    bed.store_now("KZ", 48, scheduled(date)).await;
    let event = bed
        .store_now(
            "KZ",
            48,
            EventData::ReviewCancelled(ReviewCancelled { reason: None }),
        )
        .await;
    let notice = eventually(Duration::from_secs(5), "the cancelled notice", || async {
        bed.notifications()
            .await
            .into_iter()
            .find(|(subject, _, _)| subject == "upr.notify.cancelled.KZ")
    })
    .await;
    assert_eq!(notice.1, format!("KZ.48.cancelled.{}", event.id));
    assert_eq!(notice.2["kind"], "cancelled");
    assert_eq!(notice.2["scheduled_for"], date.to_string());
    bed.wait_pending(0).await;
    tokio::time::sleep(ms_until(date)).await;
    assert!(bed.reminder_ids().await.is_empty());
    assert!(
        bed.heard()
            .iter()
            .all(|(s, _)| !s.starts_with("upr.notify.reminder."))
    );
}

#[tokio::test]
async fn a_held_review_gets_no_more_reminders() {
    let bed = bed(LEADS).await;
    let date = in_ms(6_500);
    bed.store_now("KZ", 48, scheduled(date)).await;
    bed.wait_pending(2).await;
    bed.store_now(
        "KZ",
        48,
        EventData::ReviewHeld(ReviewHeld {
            held_on: None,
            recommendations_received: None,
        }),
    )
    .await;
    bed.wait_pending(0).await;
    tokio::time::sleep(ms_until(date)).await;
    assert!(
        bed.notifications().await.is_empty(),
        "{:?}",
        bed.notifications().await
    );
}

#[tokio::test]
async fn a_reminder_that_came_due_during_downtime_is_sent_once_marked_late() {
    let mut bed = bed("5s,2s").await;
    bed.notifier_mut().kill9();
    // Scheduled while the notifier is down; the 5s reminder falls due at +3 s.
    let date = in_ms(8_000);
    bed.store_now("KZ", 48, scheduled(date)).await;
    tokio::time::sleep(ms_until(
        date.checked_sub(time::Duration::milliseconds(3_500))
            .unwrap(),
    ))
    .await;
    bed.notifier_mut().restart();
    let ids = eventually(Duration::from_secs(8), "both reminders", || async {
        let ids = bed.reminder_ids().await;
        (ids.len() >= 2).then_some(ids)
    })
    .await;
    assert_eq!(
        ids,
        [
            reminder_id("KZ", 48, "5s", date),
            reminder_id("KZ", 48, "2s", date)
        ]
    );
    let stored = bed.notifications().await;
    assert_eq!(stored[0].2["late"], true);
    assert_eq!(stored[1].2["late"], false);
    tokio::time::sleep(ms_until(date)).await;
    assert_eq!(bed.reminder_ids().await.len(), 2);
}

#[tokio::test]
async fn a_reminder_is_never_sent_after_the_review_date() {
    let mut bed = bed("2s").await;
    bed.notifier_mut().kill9();
    // Planned while the notifier is down, due at +1 s, review at +3 s.
    let date = in_ms(3_000);
    bed.store_now("KZ", 48, scheduled(date)).await;
    tokio::time::sleep(ms_until(date) + Duration::from_millis(200)).await;
    bed.notifier_mut().restart();
    bed.notifier().wait_healthy().await;
    eventually(
        Duration::from_secs(10),
        "the reminder to be dropped",
        || async {
            bed.notifier_status()
                .await
                .filter(|s| s["skipped"] == 1 && s["pending"] == 0)
                .map(|_| ())
        },
    )
    .await;
    assert!(bed.notifications().await.is_empty());
}

#[tokio::test]
async fn exactly_once_while_the_notifier_is_killed_every_second() {
    // Leads long enough that a reminder stuck with a killed process (the
    // consumer's 5 s ack wait) still comes before its review date.
    let mut bed = bed("12s,8s").await;
    let base = now();
    let mut expected = Vec::new();
    for i in 0..15u64 {
        let date = base
            .checked_add(time::Duration::milliseconds(
                14_000 + 250 * i64::try_from(i).unwrap(),
            ))
            .unwrap();
        bed.store_now("KZ", 1 + i, scheduled(date)).await;
        expected.push(reminder_id("KZ", 1 + i, "12s", date));
        expected.push(reminder_id("KZ", 1 + i, "8s", date));
    }
    bed.wait_pending(30).await;
    // Dues run from +2 s to +9.5 s: kill -9 and restart through all of them.
    while now().since(base) < time::Duration::seconds(10) {
        tokio::time::sleep(Duration::from_millis(900)).await;
        bed.notifier_mut().restart();
    }
    bed.notifier().wait_healthy().await;
    bed.wait_pending(0).await;
    let mut ids = bed.reminder_ids().await;
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for id in &ids {
        *counts.entry(id.as_str()).or_default() += 1;
    }
    let repeated: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(repeated.is_empty(), "stored more than once: {repeated:?}");
    ids.sort();
    expected.sort();
    assert_eq!(ids, expected);
    let late = bed
        .notifications()
        .await
        .iter()
        .filter(|(_, _, n)| n["late"] == true)
        .count();
    println!("kill storm: 30 reminders stored once each, {late} of them late");
}

#[tokio::test]
async fn two_replicas_send_each_reminder_once() {
    let bed = bed(LEADS).await;
    let _second = start_notifier(&bed, LEADS).await;
    let mut expected = Vec::new();
    for (i, code) in ["KZ", "FR", "BR", "JP", "NG"].into_iter().enumerate() {
        let date = in_ms(6_000 + 200 * i64::try_from(i).unwrap());
        bed.store_now(code, 48, scheduled(date)).await;
        expected.push(reminder_id(code, 48, "4s", date));
        expected.push(reminder_id(code, 48, "2s", date));
    }
    expected.sort();
    eventually(Duration::from_secs(12), "ten reminders", || async {
        (bed.reminder_ids().await.len() >= 10).then_some(())
    })
    .await;
    bed.wait_pending(0).await;
    let mut stored = bed.reminder_ids().await;
    stored.sort();
    assert_eq!(stored, expected);
    let mut heard: Vec<String> = bed
        .heard()
        .into_iter()
        .map(|(_, v)| v["id"].as_str().unwrap().to_string())
        .collect();
    heard.sort();
    assert_eq!(heard, expected, "each reminder heard once on core NATS");
}

#[tokio::test]
async fn a_reminder_due_while_nats_is_down_is_sent_once_after_it_restarts() {
    let mut bed = bed(LEADS).await;
    let date = in_ms(7_000);
    bed.store_now("KZ", 48, scheduled(date)).await;
    bed.wait_pending(2).await;
    bed.nats_mut().kill();
    // The 4s reminder falls due at +3 s with the server down.
    tokio::time::sleep(ms_until(
        date.checked_sub(time::Duration::milliseconds(3_500))
            .unwrap(),
    ))
    .await;
    bed.nats_mut().restart();
    let js = jetstream::new(bed.nats().client().await);
    let ids = eventually(Duration::from_secs(15), "both reminders", || async {
        let ids: Vec<String> = notifications(&js)
            .await
            .into_iter()
            .map(|(_, id, _)| id)
            .collect();
        (ids.len() >= 2).then_some(ids)
    })
    .await;
    assert_eq!(
        ids,
        [
            reminder_id("KZ", 48, "4s", date),
            reminder_id("KZ", 48, "2s", date)
        ]
    );
    tokio::time::sleep(ms_until(date)).await;
    assert_eq!(notifications(&js).await.len(), 2);
}

#[tokio::test]
async fn a_bad_reminder_lead_list_stops_start_up_naming_the_variable() {
    // Not a TestApp: the notifier must refuse to start.
    let nats = NatsServer::start();
    let mut p = ServiceProcess::start(
        services::NOTIFIER,
        &nats.url(),
        &[(contract::env::UPR_REMINDER_LEADS, "30d,7x")],
    );
    let status = p.wait_exit(Duration::from_secs(10));
    assert!(!status.success());
    let logs = p.logs();
    assert!(
        logs.contains("UPR_REMINDER_LEADS") && logs.contains("7x"),
        "{logs}"
    );
}

/// One replica plans, the other stands by: killed, the active one's work
/// moves to the standby once the server drops its pin.
#[tokio::test]
async fn a_standby_planner_takes_over_when_the_active_one_is_killed() {
    let mut bed = bed(LEADS).await;
    bed.store_now("KZ", 48, scheduled(in_ms(60_000))).await;
    // Planned: the first replica holds the pin.
    bed.wait_pending(2).await;
    let _standby = start_notifier(&bed, LEADS).await;
    bed.notifier_mut().kill9();
    let killed = std::time::Instant::now();
    let date = in_ms(60_000);
    bed.store_now("FR", 48, scheduled(date)).await;
    eventually(
        Duration::from_secs(20),
        "the standby plans the next event",
        || async {
            bed.notifier_status()
                .await
                .filter(|s| s["pending"] == 4)
                .map(|_| ())
        },
    )
    .await;
    println!(
        "planner failover: next event planned {:?} after the active replica was killed",
        killed.elapsed()
    );
}

/// An event delivered while an earlier one of the same review was never
/// applied (it went to a replica that acknowledged it and died before
/// writing its state, say): the planner reads the earlier one from the log
/// and applies it first, so the review's reminders follow the log, not the
/// order of delivery.
#[tokio::test]
async fn an_earlier_event_the_planner_never_applied_is_read_from_the_log_first() {
    let (app, client, js, stream) = log_without_notifier().await;
    let old = in_ms(60_000);
    app.store_now("KZ", 48, scheduled(old)).await;
    let new = in_ms(90_000);
    let rescheduled = EventData::ReviewRescheduled(ReviewRescheduled {
        scheduled_for: new,
        reason: None,
    });
    app.store_now("KZ", 48, rescheduled).await;
    // Another puller takes the scheduling and acknowledges it unapplied.
    let consumer: jetstream::consumer::PullConsumer = stream
        .create_consumer(names::events_consumer())
        .await
        .unwrap();
    let mut batch = consumer
        .stream()
        .group(names::PLANNER_GROUP)
        .max_messages_per_batch(1)
        .messages()
        .await
        .unwrap();
    let first = loop {
        match batch.next().await.expect("one message") {
            Ok(m) => break m,
            // The first answer may only tell the puller it is now pinned.
            Err(e) => println!("pull: {e}"),
        }
    };
    assert_eq!(first.info().unwrap().stream_sequence, 1);
    first.double_ack().await.unwrap();
    drop(batch);
    stream
        .unpin_consumer(names::EVENTS_CONSUMER, names::PLANNER_GROUP)
        .await
        .unwrap();

    let _notifier = start_notifier(&app, LEADS).await;
    let reply = eventually(Duration::from_secs(15), "two reminders planned", || async {
        let r = client.request(names::STATUS, "".into()).await.ok()?;
        let v: Value = serde_json::from_slice(&r.payload).ok()?;
        (v["pending"] == 2).then_some(v)
    })
    .await;
    let notices: Vec<_> = notifications(&js)
        .await
        .into_iter()
        .filter(|(subject, _, _)| subject == "upr.notify.rescheduled.KZ")
        .collect();
    assert_eq!(notices.len(), 1, "{notices:?} {reply}");
    assert_eq!(notices[0].2["old_scheduled_for"], old.to_string());
    assert_eq!(notices[0].2["scheduled_for"], new.to_string());
}

/// A deployment upgraded from a version whose planner consumer had no
/// priority group: the notifier still plans.
#[tokio::test]
async fn a_planner_consumer_left_by_an_older_version_is_taken_over() {
    let (app, client, _, stream) = log_without_notifier().await;
    let older = jetstream::consumer::pull::Config {
        durable_name: Some(names::EVENTS_CONSUMER.into()),
        ack_policy: jetstream::consumer::AckPolicy::Explicit,
        ack_wait: Duration::from_secs(5),
        max_ack_pending: 1,
        ..Default::default()
    };
    stream.create_consumer(older).await.unwrap();
    app.store_now("KZ", 48, scheduled(in_ms(60_000))).await;
    let _notifier = start_notifier(&app, LEADS).await;
    eventually(Duration::from_secs(15), "two reminders planned", || async {
        let r = client.request(names::STATUS, "".into()).await.ok()?;
        let v: Value = serde_json::from_slice(&r.payload).ok()?;
        (v["pending"] == 2).then_some(())
    })
    .await;
}

/// After downtime the planner has the log to catch up on while timers set
/// before it have fired: a reminder is not sent for a review whose
/// cancellation is in the log but not yet applied. (Thousands of other
/// events ahead of the cancellation keep the planner busy for a while.)
#[tokio::test]
async fn no_reminder_goes_out_for_a_cancellation_the_planner_has_not_applied_yet() {
    let mut bed = bed(LEADS).await;
    let date = in_ms(6_000);
    bed.store_now("KZ", 48, scheduled(date)).await;
    bed.wait_pending(2).await;
    bed.notifier_mut().kill9();

    let far = in_ms(86_400_000);
    let mut acks = Vec::new();
    for i in 0..3_000u64 {
        let envelope = Envelope {
            id: Uuid::new_v4(),
            data: scheduled(far),
            schema: SCHEMA,
            country: country(["FR", "BR", "JP", "NG", "MX"][(i % 5) as usize]),
            session: s(1 + i / 5),
            occurred_at: now(),
            recorded_at: now(),
            recorded_by: None,
            source: None,
        };
        let subject =
            contract::subjects::event(envelope.country, envelope.session, envelope.event_type());
        acks.push(
            bed.js()
                .publish(subject, envelope.to_json().into())
                .await
                .unwrap(),
        );
    }
    for ack in acks {
        ack.await.unwrap();
    }
    bed.store_now(
        "KZ",
        48,
        EventData::ReviewCancelled(ReviewCancelled { reason: None }),
    )
    .await;
    // Both timers fire while the notifier is down (the 2s one at +4 s).
    tokio::time::sleep(ms_until(
        date.checked_sub(time::Duration::milliseconds(1_500))
            .unwrap(),
    ))
    .await;
    bed.notifier_mut().restart();
    eventually(
        Duration::from_secs(30),
        "the cancellation applied",
        || async {
            bed.notifications()
                .await
                .iter()
                .any(|(subject, _, _)| subject == "upr.notify.cancelled.KZ")
                .then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let sent: Vec<_> = bed
        .reminder_ids()
        .await
        .into_iter()
        .filter(|id| id.starts_with("KZ.48."))
        .collect();
    assert!(sent.is_empty(), "reminders of a cancelled review: {sent:?}");
}
