//! What the running services send validates against `docs/schemas/`: the
//! ingest replies and rejection records, the stored events, every query
//! answer, the notifier's status and each kind of notification. The replies
//! are built with `json!` in the services, so only this test ties them to
//! their schemas.

use std::{collections::HashMap, path::Path, time::Duration};

use futures::StreamExt;
use jsonschema::{Draft, Validator};
use serde_json::{Value, json};
use time::OffsetDateTime;
use upr_nats::contract::{self, services};
use upr_schema as schema;
use upr_tests::fixtures::SIDE_EVENT_DAY;
use upr_tests::{NatsServer, ServiceProcess};

fn validators() -> HashMap<String, Validator> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/schemas");
    schema::documents()
        .into_iter()
        .map(|doc| {
            let text = std::fs::read_to_string(dir.join(&doc.path)).unwrap();
            let schema: Value = serde_json::from_str(&text).unwrap();
            let validator = jsonschema::options()
                .with_draft(Draft::Draft202012)
                .should_validate_formats(true)
                .build(&schema)
                .unwrap();
            (doc.path, validator)
        })
        .collect()
}

#[track_caller]
fn assert_valid(schemas: &HashMap<String, Validator>, path: &str, instance: &Value) {
    let errors: Vec<String> = schemas[path]
        .iter_errors(instance)
        .map(|e| format!("{e} at {}", e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{instance} against {path}: {errors:#?}");
}

fn rfc3339_in(secs: i64) -> String {
    let t = OffsetDateTime::now_utc() + time::Duration::seconds(secs);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

#[tokio::test]
#[expect(
    clippy::too_many_lines,
    reason = "every kind of message the services send, produced and checked against one server in one pass"
)]
async fn every_message_the_services_send_validates_against_its_schema() {
    let schemas = validators();
    // Not a TestApp: the subscriptions come before any service starts, so
    // nothing a service sends is missed.
    let nats = NatsServer::start();
    let client = nats.client().await;
    let mut notices = client.subscribe("upr.notify.>").await.unwrap();
    let mut rejected = client
        .subscribe(contract::subjects::REJECTED)
        .await
        .unwrap();
    let ingest = ServiceProcess::start(services::INGEST, &nats.url(), &[]);
    let projection = ServiceProcess::start(services::PROJECTION, &nats.url(), &[]);
    let notifier = ServiceProcess::start(
        services::NOTIFIER,
        &nats.url(),
        &[("UPR_REMINDER_LEADS", "3s")],
    );
    for s in [&ingest, &projection, &notifier] {
        s.wait_healthy().await;
    }

    let request = |subject: String, payload: Value| {
        let client = client.clone();
        async move {
            let reply = client
                .request(subject, payload.to_string().into())
                .await
                .unwrap();
            serde_json::from_slice::<Value>(&reply.payload).unwrap()
        }
    };
    let cancel_id = "0190f3a2-7b1c-7d4e-9a2b-3c4d5e6f7a02";
    let intake = [
        (
            "review_scheduled",
            json!({"country": "kz", "session": 48, "scheduled_for": rfc3339_in(8), "troika": ["AR", "JP", "SN"], "source": " UPR Info "}),
        ),
        (
            "side_event_held",
            json!({"country": "KZ", "session": 48, "title": "Civic space", "held_on": SIDE_EVENT_DAY,
                   "speakers": [{"name": "A. Speaker", "role": "NGO"}], "participating_states": 40, "topics": ["assembly"]}),
        ),
        (
            "review_scheduled",
            json!({"country": "CH", "session": 48, "scheduled_for": rfc3339_in(86_400)}),
        ),
        (
            "review_rescheduled",
            json!({"country": "CH", "session": 48, "scheduled_for": rfc3339_in(2 * 86_400), "reason": "Room"}),
        ),
        (
            "review_cancelled",
            json!({"event_id": cancel_id, "country": "CH", "session": 48}),
        ),
        (
            "event_retracted",
            json!({"country": "CH", "session": 48, "retracts": cancel_id, "reason": "Entered by mistake"}),
        ),
    ];
    let mut last_seq = 0;
    for (ty, payload) in intake {
        let reply = request(format!("upr.ingest.{ty}"), payload).await;
        assert_eq!(reply["ok"], true, "{ty}: {reply}");
        assert_valid(&schemas, "intake/reply.json", &reply);
        last_seq = reply["seq"].as_u64().unwrap();
    }
    let refused = request(
        "upr.ingest.review_held".into(),
        json!({"country": "KZ", "session": 48, "held_on": "yesterday"}),
    )
    .await;
    assert_eq!(refused["ok"], false);
    assert_valid(&schemas, "intake/reply.json", &refused);
    let record = tokio::time::timeout(Duration::from_secs(5), rejected.next())
        .await
        .unwrap()
        .unwrap();
    assert_valid(
        &schemas,
        "rejected.json",
        &serde_json::from_slice(&record.payload).unwrap(),
    );

    let js = async_nats::jetstream::new(client.clone());
    let stream = js.get_stream(contract::EVENTS_STREAM).await.unwrap();
    for seq in 1..=last_seq {
        let m = stream.get_raw_message(seq).await.unwrap();
        assert_valid(
            &schemas,
            "envelope.json",
            &serde_json::from_slice(&m.payload).unwrap(),
        );
    }

    let min_seq = json!({"min_seq": last_seq});
    for (subject, path) in [
        ("upr.query.review.KZ.48", "queries/review.json"),
        ("upr.query.review.CH.48", "queries/review.json"),
        ("upr.query.session.48", "queries/session.json"),
        ("upr.query.country.KZ", "queries/country.json"),
        ("upr.query.country.CH", "queries/country.json"),
        ("upr.query.upcoming", "queries/upcoming.json"),
        ("upr.query.status", "queries/status.json"),
        ("upr.query.review.KZ.49", "queries/error.json"),
    ] {
        let answer = request(subject.into(), min_seq.clone()).await;
        assert_valid(&schemas, path, &answer);
    }
    let status = request(upr_nats::contract::notifier::STATUS.into(), json!({})).await;
    assert_valid(&schemas, "notifier/status.json", &status);

    // rescheduled, cancelled and corrected come at once; the reminder when due.
    let mut kinds: HashMap<String, usize> = HashMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while kinds.len() < 4 {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let Ok(Some(m)) = tokio::time::timeout(left, notices.next()).await else {
            panic!("timed out waiting for every kind of notice, got {kinds:?}");
        };
        let notice: Value = serde_json::from_slice(&m.payload).unwrap();
        let kind = notice["kind"].as_str().unwrap().to_owned();
        assert_valid(&schemas, &format!("notifications/{kind}.json"), &notice);
        *kinds.entry(kind).or_insert(0) += 1;
    }
}
