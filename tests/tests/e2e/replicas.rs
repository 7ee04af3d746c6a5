//! Several ingest replicas: each review has one owner, commands reaching
//! another replica are handed over (also under the shipped NATS config,
//! where the answer crosses accounts), and a replica that dies hands its
//! reviews to the others at once. Plus the one-replica case the owner rule
//! cannot cover: events written around ingest make its cache stale.

use std::time::Duration;

use async_nats::{Client, jetstream};
use futures::StreamExt;
use serde_json::{Value, json};
use upr_domain::{EventType, Timestamp, parse_intake};
use upr_nats::contract::{self, services, subjects};
use upr_tests::{NatsServer, ServiceProcess, TestApp, eventually, lifecycle_steps};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(15);

/// The intake endpoint's STATS data of every running ingest replica.
async fn stats(admin: &Client) -> Vec<Value> {
    let inbox = admin.new_inbox();
    let mut replies = admin.subscribe(inbox.clone()).await.expect("subscribe");
    admin
        .publish_with_reply(format!("$SRV.STATS.{}", services::INGEST), inbox, "".into())
        .await
        .expect("publish");
    let mut out = Vec::new();
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(400), replies.next()).await {
        let v: Value = serde_json::from_slice(&m.payload).expect("stats json");
        out.push(v["endpoints"][0]["data"].clone());
    }
    out
}

fn sum(stats: &[Value], field: &str) -> u64 {
    stats.iter().map(|s| s[field].as_u64().unwrap_or(0)).sum()
}

async fn request(client: &Client, ty: EventType, payload: Value) -> Value {
    let reply = client
        .request(subjects::ingest(ty), payload.to_string().into())
        .await
        .expect("an answer");
    serde_json::from_slice(&reply.payload).expect("json reply")
}

/// A review's commands in lifecycle order ([`lifecycle_steps`]).
fn steps(session: u32) -> Vec<(EventType, Value)> {
    lifecycle_steps("KZ", u64::from(session))
}

async fn events_in_log(js: &jetstream::Context) -> u64 {
    js.get_stream(contract::EVENTS_STREAM)
        .await
        .expect("stream")
        .info()
        .await
        .expect("info")
        .state
        .messages
}

#[tokio::test]
async fn replicas_share_reviews_by_owner_so_no_append_races_and_a_killed_one_hands_its_reviews_over()
 {
    // Not a TestApp: the shipped configuration, where hand-overs cross accounts.
    let nats = NatsServer::start_secured();
    let seed = nats.seed_file("ingest").display().to_string();
    let env = [("NATS_NKEY", seed.as_str())];
    let mut replicas: Vec<ServiceProcess> = (0..2)
        .map(|_| ServiceProcess::start(services::INGEST, &nats.url(), &env))
        .collect();
    for r in &replicas {
        r.wait_healthy().await;
    }
    let admin = nats.client_as("admin").await;
    let publisher = nats.client_as("publisher").await;
    let js = jetstream::new(admin.clone());
    eventually(WAIT, "both replicas count each other", || async {
        let s = stats(&admin).await;
        (s.len() == 2 && s.iter().all(|d| d["replicas"] == 2)).then_some(())
    })
    .await;

    // One client, one review after another: with the reviews shared by
    // owner, no append meets a state another replica moved on.
    for session in 1..=40 {
        for (ty, payload) in steps(session) {
            let reply = request(&publisher, ty, payload).await;
            assert_eq!(reply["ok"], true, "KZ.{session} {ty}: {reply}");
        }
    }
    let s = stats(&admin).await;
    assert_eq!(sum(&s, "accepted"), 160, "{s:?}");
    assert_eq!(sum(&s, "lost_races"), 0, "appends raced: {s:?}");
    assert!(
        sum(&s, "handed_over") > 0,
        "no command was handed to its review's owner: {s:?}"
    );
    assert!(
        s.iter().all(|d| d["accepted"].as_u64() > Some(0)),
        "one replica stored everything: {s:?}"
    );

    // A plain publish (no reply subject) handed over is stored too.
    let before = events_in_log(&js).await;
    for session in 1..=20u32 {
        let p = json!({"country": "KZ", "session": session, "title": "Published", "held_on": "2030-01-24"});
        publisher
            .publish(
                subjects::ingest(EventType::SideEventHeld),
                p.to_string().into(),
            )
            .await
            .expect("publish");
    }
    publisher.flush().await.expect("flush");
    eventually(WAIT, "20 published side events stored", || async {
        (events_in_log(&js).await == before + 20).then_some(())
    })
    .await;

    // A replica dies: its reviews move to the survivor at the next command
    // (the hand-over finds nobody listening), without a refusal.
    replicas[0].kill9();
    for session in 1..=40u32 {
        let p =
            json!({"country": "KZ", "session": session, "title": "After", "held_on": "2030-01-25"});
        let reply = request(&publisher, EventType::SideEventHeld, p).await;
        assert_eq!(
            reply["ok"], true,
            "KZ.{session} after a replica died: {reply}"
        );
    }
    for session in 41..=50 {
        for (ty, payload) in steps(session) {
            let reply = request(&publisher, ty, payload).await;
            assert_eq!(reply["ok"], true, "KZ.{session} {ty}: {reply}");
        }
    }
    eventually(WAIT, "the survivor counts itself alone", || async {
        let s = stats(&admin).await;
        (s.len() == 1 && s[0]["replicas"] == 1).then_some(())
    })
    .await;
    assert_eq!(events_in_log(&js).await, 160 + 20 + 40 + 40);
    let log = nats.log();
    assert!(
        !log.contains("Permissions Violation"),
        "the shipped config refused a hand-over:\n{log}"
    );
}

/// Written around ingest (by an operator with the admin key, or a replica
/// from before an upgrade), an event leaves ingest's cached state behind:
/// a command it would refuse on that state is decided again on the log.
#[tokio::test]
async fn a_refusal_decided_on_a_stale_cache_is_decided_again_on_the_log() {
    let app = TestApp::builder().ingest().start().await;
    let client = app.client().clone();
    let js = app.js().clone();
    let [scheduled, held, report, _] = <[_; 4]>::try_from(steps(7)).expect("four steps");
    let reply = request(&client, scheduled.0, scheduled.1.clone()).await;
    assert_eq!(reply["ok"], true, "{reply}");

    // The hold, appended straight to the log: ingest's cache still says
    // "scheduled", where a report is refused.
    let command = parse_intake(held.0.as_str(), held.1.to_string().as_bytes()).expect("valid");
    let key = command.review_key();
    let id = Uuid::now_v7();
    let envelope = command.into_envelope(
        id,
        Timestamp::from_unix_millis(1_900_000_000_000).unwrap(),
        None,
    );
    js.publish(
        subjects::event(key.country, key.session, EventType::ReviewHeld),
        envelope.to_json().into(),
    )
    .await
    .expect("publish")
    .await
    .expect("stored");

    let reply = request(&client, report.0, report.1.clone()).await;
    assert_eq!(reply["ok"], true, "refused on a stale view: {reply}");
    // A refusal the log confirms still stands.
    let reply = request(&client, scheduled.0, scheduled.1).await;
    assert_eq!(reply["ok"], false, "{reply}");
    assert_eq!(reply["error"]["code"], "conflict", "{reply}");
}
