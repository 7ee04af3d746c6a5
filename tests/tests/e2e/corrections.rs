//! Contract v2 end to end through ingest and the projection: troikas, the
//! Council's adoption of an outcome, and corrections (`event_retracted`).

use serde_json::{Value, json};
use upr_nats::contract::services;
use upr_tests::fixtures::KZ48_DATE;
use upr_tests::{NatsServer, TestApp};

/// A server with ingest and the projection, and a client that sends as
/// people do (`nats req`).
async fn stack() -> TestApp {
    TestApp::builder().ingest().projection().start().await
}

#[allow(
    clippy::needless_pass_by_value,
    reason = "callers pass json! temporaries"
)]
fn kz(extra: Value) -> Value {
    let mut p = json!({"country": "KZ", "session": 48});
    p.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    p
}

#[tokio::test]
async fn a_troika_and_the_councils_adoption_reach_the_read_models() {
    let stack = stack().await;
    let e = stack
        .refused(
            "review_scheduled",
            kz(json!({"scheduled_for": KZ48_DATE, "troika": ["AR", "KZ", "SN"]})),
        )
        .await;
    assert_eq!(
        (e["code"].as_str(), e["field"].as_str()),
        (Some("invalid_field"), Some("troika[1]"))
    );
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("state under review"),
        "{e}"
    );
    let e = stack
        .refused(
            "review_scheduled",
            kz(json!({"scheduled_for": KZ48_DATE, "troika": ["AR", "VA", "SN"]})),
        )
        .await;
    assert_eq!(
        e["field"], "troika[1]",
        "the Holy See is no member state: {e}"
    );

    stack
        .record(
            "review_scheduled",
            kz(json!({"scheduled_for": KZ48_DATE, "troika": ["ar", "JP", "SN"]})),
        )
        .await;
    let e = stack
        .refused(
            "outcome_adopted",
            kz(json!({"adopted_on": "2025-06-20", "hrc_session": 59})),
        )
        .await;
    assert_eq!(e["code"], "conflict", "{e}");
    assert_eq!(
        e["message"],
        "review KZ 48 is scheduled; outcome_adopted needs a held or reported review"
    );
    stack.record("review_held", kz(json!({}))).await;
    let e = stack
        .refused(
            "outcome_adopted",
            kz(json!({"adopted_on": "2025-06-20", "hrc_session": 1000})),
        )
        .await;
    assert_eq!(
        (e["code"].as_str(), e["field"].as_str()),
        (Some("invalid_field"), Some("hrc_session"))
    );
    let (_, seq) = stack
        .record(
            "outcome_adopted",
            kz(json!({"adopted_on": "2025-06-20", "hrc_session": 59,
                      "recommendations": {"total": 250, "supported": 200, "noted": 50}})),
        )
        .await;

    let review = &stack.query("upr.query.review.KZ.48", seq).await["review"];
    assert_eq!(review["status"], "adopted");
    assert_eq!(review["troika"], json!(["AR", "JP", "SN"]));
    assert_eq!(
        review["outcome"],
        json!({"adopted_on": "2025-06-20T00:00:00Z", "hrc_session": 59,
               "recommendations": {"total": 250, "supported": 200, "noted": 50}})
    );
    assert_eq!(
        (review["cycle"].as_u64(), review["country_name"].as_str()),
        (Some(4), Some("Kazakhstan"))
    );
    let session = &stack.query("upr.query.session.48", seq).await["session"];
    assert_eq!(session["reviews"][0]["status"], "adopted");
    let e = stack
        .refused(
            "report_published",
            kz(json!({"published_on": "2025-07-01"})),
        )
        .await;
    assert_eq!(
        e["message"],
        "review KZ 48 is adopted; report_published needs a held review"
    );
}

#[tokio::test]
#[expect(
    clippy::too_many_lines,
    reason = "an end-to-end scenario: its steps, read in order, are the specification"
)]
async fn retracting_a_reschedule_restores_the_first_date_everywhere() {
    let stack = stack().await;
    let (scheduled, _) = stack
        .record(
            "review_scheduled",
            kz(json!({"scheduled_for": KZ48_DATE, "location": "Room XX"})),
        )
        .await;
    let (side, _) = stack
        .record(
            "side_event_held",
            kz(json!({"title": "Briefing", "held_on": "2025-01-20"})),
        )
        .await;
    let (moved, _) = stack
        .record(
            "review_rescheduled",
            kz(json!({"scheduled_for": "2025-01-30T08:30:00Z"})),
        )
        .await;

    // Only the latest lifecycle event in force may be taken back.
    let e = stack
        .refused(
            "event_retracted",
            kz(json!({"retracts": scheduled, "reason": "typo"})),
        )
        .await;
    assert_eq!(e["code"], "conflict");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains(&format!("(that is review_rescheduled {moved})")),
        "{e}"
    );
    stack
        .refused_saying(
            "event_retracted",
            kz(json!({"retracts": "0190f3a2-7b1c-7d4e-9a2b-3c4d5e6f7a8b", "reason": "typo"})),
            "conflict",
            "holds no event",
        )
        .await;
    let e = stack
        .refused("event_retracted", kz(json!({"retracts": moved})))
        .await;
    assert_eq!(
        (e["code"].as_str(), e["field"].as_str()),
        (Some("missing_field"), Some("reason"))
    );

    let (retraction, _) = stack
        .record(
            "event_retracted",
            kz(json!({"retracts": moved, "reason": "entered for the wrong state"})),
        )
        .await;
    let (_, seq) = stack
        .record(
            "event_retracted",
            kz(json!({"retracts": side, "reason": "never took place"})),
        )
        .await;

    let review = &stack.query("upr.query.review.KZ.48", seq).await["review"];
    assert_eq!(review["status"], "scheduled");
    assert_eq!(review["scheduled_for"], KZ48_DATE);
    assert_eq!(review["location"], "Room XX");
    assert_eq!(review["side_events"], json!([]));
    let history = review["history"].as_array().unwrap();
    assert_eq!(
        history.len(),
        5,
        "every event stays in the history: {history:?}"
    );
    assert_eq!(history[2]["event_id"], moved.as_str());
    assert_eq!(
        history[2]["retracted"]["reason"],
        "entered for the wrong state"
    );
    assert_eq!(history[1]["retracted"]["reason"], "never took place");
    assert_eq!(history[3]["event_id"], retraction.as_str());
    assert_eq!(history[3]["retracted"], Value::Null);

    let session = &stack.query("upr.query.session.48", seq).await["session"];
    assert_eq!(session["side_events"], 0);
    assert_eq!(session["reviews"][0]["scheduled_for"], KZ48_DATE);
    assert_eq!(session["reviews"][0]["side_events"], 0);
    let country = &stack.query("upr.query.country.KZ", seq).await["country"];
    assert_eq!(country["side_events"], 0);
    assert_eq!(country["reviews"][0]["scheduled_for"], KZ48_DATE);

    // A retraction cannot be retracted, nor an event twice.
    stack
        .refused_saying(
            "event_retracted",
            kz(json!({"retracts": retraction, "reason": "x"})),
            "conflict",
            "cannot be retracted",
        )
        .await;
    stack
        .refused_saying(
            "event_retracted",
            kz(json!({"retracts": moved, "reason": "x"})),
            "conflict",
            "already retracted",
        )
        .await;
    // The scheduling is now the latest lifecycle event in force.
    let (_, seq) = stack
        .record(
            "event_retracted",
            kz(json!({"retracts": scheduled, "reason": "no such review"})),
        )
        .await;
    let review = &stack.query("upr.query.review.KZ.48", seq).await["review"];
    assert_eq!(
        (review["status"].clone(), review["scheduled_for"].clone()),
        (Value::Null, Value::Null)
    );
    let session = &stack.query("upr.query.session.48", seq).await["session"];
    assert_eq!(
        session["reviews"],
        json!([]),
        "nothing of KZ 48 is in force: {session}"
    );
}

/// The VEVENTs of an iCalendar answer, read with an independent parser, as
/// property name -> value.
fn events(text: &str) -> Vec<std::collections::BTreeMap<String, String>> {
    let mut reader = ical::IcalParser::new(std::io::BufReader::new(text.as_bytes()));
    let cal = reader.next().expect("a calendar").expect("it parses");
    cal.events
        .iter()
        .map(|e| {
            e.properties
                .iter()
                .map(|p| (p.name.clone(), p.value.clone().unwrap_or_default()))
                .collect()
        })
        .collect()
}

#[tokio::test]
async fn the_calendar_is_icalendar_and_a_reschedule_changes_the_event_instead_of_adding_one() {
    let stack = stack().await;
    stack
        .record(
            "review_scheduled",
            kz(json!({"scheduled_for": "2031-01-23T08:30:00Z", "location": "Palais des Nations, Room XX"})),
        )
        .await;
    stack
        .record(
            "review_scheduled",
            json!({"country": "BO", "session": 48, "scheduled_for": "2031-01-21T14:30:00Z"}),
        )
        .await;
    let (_, seq) = stack
        .record("review_cancelled", json!({"country": "BO", "session": 48}))
        .await;
    let calendar = |subject: &'static str, seq: u64| {
        let client = stack.client().clone();
        async move {
            let reply = client
                .request(subject, json!({"min_seq": seq}).to_string().into())
                .await
                .unwrap();
            let headers = reply.headers.clone().unwrap_or_default();
            assert_eq!(
                headers
                    .get("Content-Type")
                    .map(async_nats::HeaderValue::as_str),
                Some("text/calendar"),
                "{subject}"
            );
            String::from_utf8(reply.payload.to_vec()).unwrap()
        }
    };
    let before = events(&calendar("upr.query.calendar", seq).await);
    assert_eq!(before.len(), 2, "{before:?}");
    let (bo, kz48) = (&before[0], &before[1]);
    assert_eq!(bo["UID"], "BO-48@upr-tracker");
    assert_eq!(bo["STATUS"], "CANCELLED");
    assert_eq!(
        bo["SUMMARY"],
        "UPR review: Bolivia (Plurinational State of) (session 48)"
    );
    assert_eq!(kz48["UID"], "KZ-48@upr-tracker");
    assert_eq!(kz48["DTSTART"], "20310123T083000Z");
    assert_eq!(kz48["DTEND"], "20310123T120000Z");
    assert_eq!(kz48["LOCATION"], "Palais des Nations\\, Room XX");
    assert_eq!(kz48["STATUS"], "CONFIRMED");
    assert_eq!(kz48["SEQUENCE"], "0");

    let (_, seq) = stack
        .record(
            "review_rescheduled",
            kz(json!({"scheduled_for": "2031-01-24T08:30:00Z"})),
        )
        .await;
    let after = events(&calendar("upr.query.calendar.KZ", seq).await);
    assert_eq!(after.len(), 1, "one state's calendar: {after:?}");
    assert_eq!(after[0]["UID"], "KZ-48@upr-tracker", "the same event");
    assert_eq!(after[0]["DTSTART"], "20310124T083000Z");
    assert_eq!(after[0]["SEQUENCE"], "1", "a newer version of it");

    let wrong = stack
        .request("upr.query.calendar.XX", json!({}).to_string())
        .await;
    assert_eq!(wrong["error"]["field"], "country", "{wrong}");
}

/// `upr-ingest import` with `args`, as a publisher would run it against
/// `url`; returns the exit status and stdout.
async fn import(url: &str, args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let out = tokio::process::Command::new(upr_tests::bin_path(services::INGEST))
        .arg("import")
        .args(args)
        .env("NATS_URL", url)
        .envs(env.iter().copied())
        .output()
        .await
        .expect("upr-ingest runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.code().is_some(),
        "ended by a signal: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), stdout)
}

fn example_file() -> String {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/upr-session-99-example.csv")
        .display()
        .to_string()
}

#[tokio::test]
async fn importing_the_example_calendar_twice_stores_it_once() {
    let stack = stack().await;
    let url = stack.url();
    let file = example_file();
    let (ok, out) = import(&url, &[&file], &[]).await;
    assert!(ok, "{out}");
    assert!(
        out.ends_with(": 16 rows: 16 accepted, 0 duplicate, 0 refused\n"),
        "{out}"
    );
    let (ok, out) = import(&url, &[&file], &[]).await;
    assert!(ok, "{out}");
    assert!(
        out.ends_with(": 16 rows: 0 accepted, 16 duplicate, 0 refused\n"),
        "{out}"
    );
    let status = stack
        .request("upr.query.status", json!({}).to_string())
        .await;
    assert_eq!(
        status["stream_last_seq"], 16,
        "nothing stored twice: {status}"
    );
    let session = &stack.query("upr.query.session.99", 16).await["session"];
    assert_eq!(session["reviews"].as_array().unwrap().len(), 14);
    assert_eq!(session["side_events"], 2);

    // A file with refusals: exit 1, each refused row with its line number.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(
        &bad,
        "{\"type\":\"review_held\",\"country\":\"SN\",\"session\":99}\n\
         {\"type\":\"review_held\",\"country\":\"SN\",\"session\":99}\n\
         {\"type\":\"review_scheduled\",\"country\":\"AQ\",\"session\":99,\"scheduled_for\":\"2058-01-21T08:00:00Z\"}\n\
         {\"type\":\"review_postponed\",\"country\":\"SN\",\"session\":99}\n",
    )
    .unwrap();
    let bad = bad.display().to_string();
    let (ok, out) = import(&url, &[&bad], &[]).await;
    assert!(!ok, "exit 1 when anything was refused: {out}");
    assert!(
        out.contains(
            "4 rows: 1 accepted, 1 duplicate, 2 refused (invalid_field: 1, unknown_type: 1)"
        ),
        "{out}"
    );
    assert!(
        out.contains("  line 3 (review_scheduled): invalid_field:"),
        "{out}"
    );
    assert!(
        out.contains("  line 4 (review_postponed): unknown_type:"),
        "{out}"
    );
}

#[tokio::test]
async fn a_dry_run_validates_without_a_server() {
    let file = example_file();
    let (ok, out) = import("nats://127.0.0.1:9", &["--dry-run", &file], &[]).await;
    assert!(ok, "{out}");
    assert!(out.ends_with(": 16 rows: 16 valid, 0 refused\n"), "{out}");
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.csv");
    std::fs::write(&bad, "type,country,session\nreview_held,KZ,forty\n").unwrap();
    let (ok, out) = import(
        "nats://127.0.0.1:9",
        &[&bad.display().to_string(), "--dry-run"],
        &[],
    )
    .await;
    assert!(!ok);
    assert!(
        out.contains("line 2 (review_held): invalid_field: field \"session\""),
        "{out}"
    );
}

#[tokio::test]
async fn a_publisher_imports_with_its_own_key_and_a_reader_cannot() {
    // Not a TestApp: the shipped configuration and its users.
    let nats = NatsServer::start_secured();
    let url = nats.url();
    let _services = upr_tests::start_services(&nats, &url, &[]).await;
    let file = example_file();
    let publisher = nats.seed_file("publisher").display().to_string();
    let reader = nats.seed_file("reader").display().to_string();
    let (ok, out) = import(&url, &[&file], &[("NATS_NKEY", &publisher)]).await;
    assert!(ok, "{out}");
    assert!(
        out.ends_with(": 16 rows: 16 accepted, 0 duplicate, 0 refused\n"),
        "{out}"
    );
    // A reader may not send intake: no answer, so the import stops at the
    // first row and says how to go on.
    let (ok, out) = import(&url, &[&file], &[("NATS_NKEY", &reader)]).await;
    assert!(!ok, "{out}");
    assert!(
        out.contains("stopped at line 2: ingest did not answer"),
        "{out}"
    );
    assert!(out.contains("; 16 rows not sent."), "{out}");
}

/// Contract V3.3: an `event_id` is a duplicate only when the request carries
/// the same event; a reused id with other content is `conflict` on
/// `event_id`, naming the type and review it belongs to, in the same review
/// (the aggregate's ids) and in another (the log's duplicate window, then
/// the stored event looked up by its sequence).
#[tokio::test]
async fn a_reused_event_id_with_other_content_is_refused_naming_its_event() {
    let stack = stack().await;
    let id = "0190f3a2-7b1c-7d4e-9a2b-3c4d5e6f7a8b";
    let scheduled = kz(json!({"event_id": id, "scheduled_for": KZ48_DATE}));
    let (_, seq) = stack.record("review_scheduled", &scheduled).await;
    // The same event again, with another source: a duplicate, as before.
    let mut retry = scheduled.clone();
    retry["source"] = "a retry".into();
    let reply = stack.accept("review_scheduled", &retry).await;
    assert_eq!(
        (reply["duplicate"].as_bool(), reply["seq"].as_u64()),
        (Some(true), Some(seq))
    );

    // Same review, other data or other type.
    let mut moved = scheduled.clone();
    moved["scheduled_for"] = "2025-02-01T08:30:00Z".into();
    for (ty, payload) in [
        ("review_rescheduled", moved.clone()),
        (
            "side_event_held",
            kz(json!({"event_id": id, "title": "t", "held_on": "2025-01-22"})),
        ),
    ] {
        let e = stack.refused(ty, &payload).await;
        assert_eq!(
            (e["code"].as_str(), e["field"].as_str()),
            (Some("conflict"), Some("event_id")),
            "{e}"
        );
        let message = e["message"].as_str().unwrap();
        assert!(
            message.contains("review_scheduled of review KZ.48"),
            "{message}"
        );
    }
    // Another review: found through the log, not the review's own ids.
    let elsewhere =
        json!({"country": "CH", "session": 49, "event_id": id, "scheduled_for": KZ48_DATE});
    let e = stack.refused("review_scheduled", &elsewhere).await;
    assert_eq!(
        (e["code"].as_str(), e["field"].as_str()),
        (Some("conflict"), Some("event_id")),
        "{e}"
    );
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("review_scheduled of review KZ.48"),
        "{e}"
    );
    assert_eq!(stack.events_count().await, 1, "nothing else was stored");
}

/// Contract V3.1: a server without users authenticates nobody, so events
/// are stored with `"schema": 3` and `recorded_by: null`, and a
/// `Nats-Request-Info` header a client sends names nobody either.
#[tokio::test]
async fn without_users_events_are_recorded_by_nobody_whatever_the_headers_say() {
    let stack = stack().await;
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Request-Info", r#"{"acc":"forged"}"#);
    let reply = stack
        .client()
        .request_with_headers(
            "upr.ingest.review_scheduled",
            headers,
            kz(json!({"scheduled_for": KZ48_DATE})).to_string().into(),
        )
        .await
        .unwrap();
    let reply: Value = serde_json::from_slice(&reply.payload).unwrap();
    let seq = reply["seq"].as_u64().expect("accepted");
    let (_, _, stored) = stack.stored(seq).await;
    assert_eq!(
        (stored["schema"].as_u64(), stored["recorded_by"].clone()),
        (Some(3), Value::Null)
    );
    let review = stack.query("upr.query.review.KZ.48", seq).await;
    assert_eq!(
        review["review"]["history"][0]["recorded_by"],
        Value::Null,
        "{review}"
    );
}
