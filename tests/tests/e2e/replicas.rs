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

/// Three plain nodes on loopback; node 0 on `store` (the others on their
/// own), joined by routes, with a meta leader elected.
async fn cluster_on(store: &std::path::Path) -> Vec<NatsServer> {
    let client_ports: Vec<u16> = (0..3).map(|_| upr_tests::free_port()).collect();
    let cluster_ports: Vec<u16> = (0..3).map(|_| upr_tests::free_port()).collect();
    let routes = cluster_ports
        .iter()
        .map(|p| format!("nats://127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",");
    let nodes: Vec<NatsServer> = (0..3)
        .map(|i| {
            let mut args: Vec<String> = [
                "--server_name",
                &format!("n{i}"),
                "--cluster_name",
                "upr",
                "--cluster",
                &format!("nats://127.0.0.1:{}", cluster_ports[i]),
                "--routes",
                &routes,
            ]
            .iter()
            .map(ToString::to_string)
            .collect();
            if i == 0 {
                args.extend(["-sd".to_string(), store.display().to_string()]);
            }
            NatsServer::start_on(client_ports[i], None, args, &[])
        })
        .collect();
    let client = async_nats::connect(nodes[1].url()).await.unwrap();
    eventually(Duration::from_secs(30), "a JetStream meta leader", || {
        let client = client.clone();
        async move {
            let reply = client.request("$JS.API.INFO", "".into()).await.ok()?;
            let info: Value = serde_json::from_slice(&reply.payload).ok()?;
            info.get("error").is_none().then_some(())
        }
    })
    .await;
    nodes
}

/// Runs deploy/nats/store-check.sh (what the compose nodes run before
/// nats-server) in `mode` on `store`; its exit status and stderr.
fn store_check(mode: &str, store: &std::path::Path) -> (bool, String) {
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/nats/store-check.sh");
    let out = std::process::Command::new("sh")
        .arg(script)
        .args([mode, store.to_str().unwrap(), "--", "true"])
        .output()
        .expect("run store-check.sh");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn a_store_made_for_one_layout_is_refused_by_the_other_before_the_server_starts() {
    // What the redteam saw without the check: a cluster node on a single
    // server's store restores the old UPR_EVENTS on itself only, the
    // cluster does not know it, and ingest's setup creates a new, empty R3
    // stream beside it instead of refusing.
    let single_store = tempfile::tempdir().unwrap();
    assert!(
        store_check("single", single_store.path()).0,
        "an empty store"
    );
    assert!(
        store_check("cluster", single_store.path()).0,
        "an empty store"
    );
    let single = NatsServer::start_on(
        upr_tests::free_port(),
        None,
        vec!["-sd".into(), single_store.path().display().to_string()],
        &[],
    );
    let js = jetstream::new(async_nats::connect(single.url()).await.unwrap());
    upr_nats::setup::ensure_own_stream(
        &js,
        contract::events_stream(1, contract::DEFAULT_DEDUP_WINDOW),
    )
    .await
    .unwrap();
    js.publish("upr.events.KZ.48.review_scheduled", "x".into())
        .await
        .unwrap()
        .await
        .unwrap();
    drop(single);
    assert!(
        store_check("single", single_store.path()).0,
        "the same layout starts"
    );
    let (ok, message) = store_check("cluster", single_store.path());
    assert!(!ok, "a single server's store started as a cluster node");
    assert!(
        message.contains("made by a single server (streams: UPR_EVENTS")
            && message.contains("starts as a cluster node")
            && message.contains("nats stream backup"),
        "{message}"
    );

    // Without the check, the services do not catch it: the cluster does
    // not know the old stream, which node 0 restored on its own, so the
    // owner's setup never sees a stream with 1 replica to refuse. It creates
    // an R3 one (holding nothing, or node 0's old message when that node
    // leads it; both seen) or fails on the half-known store; never the
    // `replicas: found 1, expected 3` refusal.
    let cluster_store = tempfile::tempdir().unwrap();
    {
        let copy = std::process::Command::new("cp")
            .arg("-a")
            .arg(format!("{}/.", single_store.path().display()))
            .arg(cluster_store.path())
            .status()
            .unwrap();
        assert!(copy.success());
    }
    let nodes = cluster_on(cluster_store.path()).await;
    let js = jetstream::new(async_nats::connect(nodes[0].url()).await.unwrap());
    let result = upr_nats::setup::ensure_own_stream(
        &js,
        contract::events_stream(3, contract::DEFAULT_DEDUP_WINDOW),
    )
    .await;
    assert!(
        !matches!(
            result,
            Err(upr_nats::setup::SetupError::Incompatible { .. })
        ),
        "the services refuse it themselves: {result:?}"
    );
    assert!(
        nodes[0].log().contains("Restored 1 messages for stream"),
        "node 0 restored the single server's stream on its own:\n{}",
        nodes[0].log()
    );
    drop(nodes);
    // That store is now a cluster node's: refused as a single server.
    let (ok, message) = store_check("single", cluster_store.path());
    assert!(!ok, "a cluster node's store started as a single server");
    assert!(
        message.contains("made by a cluster node") && message.contains("starts as a single server"),
        "{message}"
    );
    assert!(
        store_check("cluster", cluster_store.path()).0,
        "the same layout starts"
    );
}
