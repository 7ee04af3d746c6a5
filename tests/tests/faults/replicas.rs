//! Several ingest replicas taking turns on the same review, without any
//! kill: the lifecycle must be decided against the log, not a replica's
//! memory.

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use futures::StreamExt;
use serde_json::Value;
use upr_nats::contract::{services, subjects};
use upr_tests::{NatsServer, ServiceProcess, lifecycle_steps};

/// The lifecycle is decided against the log, not against what one replica
/// happened to see last: with two ingest replicas taking turns at random, a
/// client sending schedule, hold, report in order to one review must never
/// be told `conflict`. (A replica that cached "scheduled" before the other
/// replica stored the hold may not refuse the report on that stale view.)
#[tokio::test]
async fn two_ingest_replicas_never_refuse_a_valid_command_from_a_stale_view() {
    let nats = NatsServer::start();
    let replicas: Vec<ServiceProcess> = (0..2)
        .map(|_| ServiceProcess::start(services::INGEST, &nats.url(), &[]))
        .collect();
    for p in &replicas {
        p.wait_healthy().await;
    }
    let client = nats.client().await;
    // Both replicas must be subscribed before the queue group spreads the work.
    let mut seen_replicas = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while seen_replicas.len() < 2 {
        assert!(
            Instant::now() < deadline,
            "two intake endpoints never showed up"
        );
        let inbox = client.new_inbox();
        let mut replies = client.subscribe(inbox.clone()).await.expect("subscribe");
        client
            .publish_with_reply(format!("$SRV.INFO.{}", services::INGEST), inbox, "".into())
            .await
            .expect("publish");
        while let Ok(Some(m)) =
            tokio::time::timeout(Duration::from_millis(300), replies.next()).await
        {
            let info: Value = serde_json::from_slice(&m.payload).expect("info");
            if info["endpoints"].as_array().is_some_and(|e| !e.is_empty()) {
                seen_replicas.insert(info["id"].to_string());
            }
        }
    }
    let mut refused = Vec::new();
    for session in 1..=40u64 {
        for (ty, p) in lifecycle_steps("KZ", session) {
            let reply = client
                .request(subjects::ingest(ty), p.to_string().into())
                .await
                .expect("reply");
            let reply: Value = serde_json::from_slice(&reply.payload).expect("json");
            if reply["ok"] != true {
                refused.push(format!("KZ.{session} {ty}: {reply}"));
                break;
            }
        }
    }
    assert!(
        refused.is_empty(),
        "{} valid commands refused (of 40 reviews):\n{}",
        refused.len(),
        refused.join("\n")
    );
}
