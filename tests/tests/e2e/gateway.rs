//! The HTTP gateway (contract V3.5) against a real nats-server and the real
//! services.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use yaml_rust2::{Yaml, YamlLoader};

use serde_json::json;
use upr_nats::contract::{self, env, services};
use upr_tests::{
    NatsServer, ServiceProcess, TestApp, browser, eventually, http, sse::SseClient, start_services,
};

#[tokio::test]
async fn healthz_is_ok_while_the_projection_answers_and_unknown_paths_are_json_404() {
    let app = TestApp::builder()
        .ingest()
        .projection()
        .gateway()
        .start()
        .await;
    let health = app.get("/healthz").await;
    assert_eq!(health.status, 200, "{}", health.text());
    assert!(app.gateway().healthcheck().success());

    let missing = app.get("/no/such/page").await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.header("content-type"), Some("application/json"));
    let body = missing.json();
    assert_eq!(body["ok"], false);
    assert_eq!(body["error"]["code"], "not_found");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("/no/such/page"),
        "{body}"
    );
}

#[tokio::test]
async fn healthz_is_503_while_the_projection_does_not_answer() {
    let mut app = TestApp::builder()
        .ingest()
        .projection()
        .gateway()
        .start()
        .await;
    assert_eq!(app.get("/healthz").await.status, 200);
    app.projection_mut().kill9();
    let health = app.get("/healthz").await;
    assert_eq!(health.status, 503, "{}", health.text());
    assert_eq!(health.json()["error"]["code"], "unavailable");
    assert!(!app.gateway().healthcheck().success());
    // The gateway itself is still serving.
    assert_eq!(app.service(services::GATEWAY).name(), services::GATEWAY);
    assert_eq!(app.get("/nope").await.status, 404);
}

/// A scheduled review of KZ at session 48; returns the stream sequence.
async fn schedule_kz48(app: &TestApp) -> u64 {
    app.record(
        "review_scheduled",
        &json!({"country": "KZ", "session": 48, "scheduled_for": "2031-01-23T08:30:00Z",
                "location": "Palais des Nations, Room XX", "troika": ["BO", "FR", "JP"]}),
    )
    .await
    .1
}

#[tokio::test]
async fn the_read_api_answers_with_the_nats_answer_and_its_status() {
    let mut app = TestApp::builder()
        .ingest()
        .projection()
        .gateway()
        .start()
        .await;
    let seq = schedule_kz48(&app).await;

    let review = app
        .get(&format!("/api/v1/reviews/KZ/48?min_seq={seq}"))
        .await;
    assert_eq!(review.status, 200, "{}", review.text());
    assert_eq!(review.header("content-type"), Some("application/json"));
    assert_eq!(
        review.json(),
        app.query("upr.query.review.KZ.48", seq).await,
        "the body is the NATS answer itself"
    );
    assert_eq!(review.json()["review"]["status"], "scheduled");
    // A code in lower case names the same review.
    assert_eq!(app.get("/api/v1/reviews/kz/48").await.status, 200);

    let session = app.get(&format!("/api/v1/sessions/48?min_seq={seq}")).await;
    assert_eq!(session.status, 200, "{}", session.text());
    assert_eq!(session.json()["session"]["reviews"][0]["country"], "KZ");
    let country = app
        .get(&format!("/api/v1/countries/KZ?min_seq={seq}"))
        .await;
    assert_eq!(country.status, 200, "{}", country.text());
    assert_eq!(country.json()["country"]["reviews"][0]["session"], 48);
    let upcoming = app
        .get(&format!(
            "/api/v1/upcoming?country=KZ&within_days=3650&min_seq={seq}"
        ))
        .await;
    assert_eq!(upcoming.status, 200, "{}", upcoming.text());
    assert_eq!(upcoming.json()["reviews"][0]["session"], 48);
    let none_soon = app.get("/api/v1/upcoming?country=KZ&within_days=1").await;
    assert_eq!(
        none_soon.json()["reviews"],
        json!([]),
        "{}",
        none_soon.text()
    );
    let status = app.get(&format!("/api/v1/status?min_seq={seq}")).await;
    assert_eq!(status.status, 200);
    assert!(status.json()["applied_seq"].as_u64().unwrap() >= seq);

    // not_found from the projection: 404 with its answer.
    let missing = app.get("/api/v1/reviews/KZ/47").await;
    assert_eq!(missing.status, 404, "{}", missing.text());
    assert_eq!(missing.json()["error"]["code"], "not_found");

    // Bad input: 400 naming the field, from the gateway or the projection.
    for (path, field) in [
        ("/api/v1/upcoming?within_days=abc", "within_days"),
        ("/api/v1/upcoming?within_days=99999999", "within_days"),
        ("/api/v1/upcoming?country=XX", "country"),
        ("/api/v1/reviews/XX/48", "country"),
        ("/api/v1/reviews/KZ/0", "session"),
        ("/api/v1/sessions/abc", "session"),
        ("/api/v1/countries/KZ?colour=red", "colour"),
        ("/api/v1/status?min_seq=-3", "min_seq"),
    ] {
        let answer = app.get(path).await;
        assert_eq!(answer.status, 400, "{path}: {}", answer.text());
        let body = answer.json();
        assert_eq!(body["ok"], false, "{path}");
        assert_eq!(body["error"]["code"], "invalid_field", "{path}: {body}");
        assert_eq!(body["error"]["field"], field, "{path}: {body}");
    }

    // Nothing answers on NATS: 503 unavailable, at once.
    app.projection_mut().kill9();
    let started = Instant::now();
    let down = app.get("/api/v1/status").await;
    assert_eq!(down.status, 503, "{}", down.text());
    assert_eq!(down.json()["error"]["code"], "unavailable");
    assert!(started.elapsed() < Duration::from_secs(8), "bounded wait");
}

/// The VEVENTs of a calendar, read with an independent parser.
fn vevents(text: &str) -> Vec<BTreeMap<String, String>> {
    let mut reader = ical::IcalParser::new(std::io::BufReader::new(text.as_bytes()));
    let cal = reader.next().expect("a calendar").expect("it parses");
    assert!(reader.next().is_none(), "one calendar");
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
async fn a_calendar_program_subscribed_over_http_sees_a_reschedule_as_a_change() {
    let app = TestApp::builder()
        .ingest()
        .projection()
        .gateway()
        .start()
        .await;
    let seq = schedule_kz48(&app).await;
    let url = format!("/calendar/KZ.ics?min_seq={seq}");

    // First fetch.
    let first = app.get(&url).await;
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(
        first.header("content-type"),
        Some("text/calendar; charset=utf-8")
    );
    let tag = first.header("etag").expect("an ETag").to_string();
    assert!(
        tag.starts_with('"') && !tag.starts_with("W/"),
        "strong: {tag}"
    );
    let events = vevents(&first.text());
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["UID"], "KZ-48@upr-tracker");
    assert_eq!(events[0]["SEQUENCE"], "0");
    assert_eq!(events[0]["DTSTART"], "20310123T083000Z");

    // Polling again: nothing changed, so nothing is sent.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let again = app.get_with(&url, &[("If-None-Match", &tag)]).await;
    assert_eq!(again.status, 304, "{}", again.text());
    assert!(again.body.is_empty());
    assert_eq!(again.header("etag"), Some(tag.as_str()));
    assert_eq!(app.get(&url).await.body, first.body, "the same bytes");

    // The review moves: the same event, a newer version of it.
    let moved = app
        .record(
            "review_rescheduled",
            &json!({"country": "KZ", "session": 48, "scheduled_for": "2031-01-24T08:30:00Z"}),
        )
        .await
        .1;
    let after = app
        .get_with(
            &format!("/calendar/KZ.ics?min_seq={moved}"),
            &[("If-None-Match", &tag)],
        )
        .await;
    assert_eq!(after.status, 200, "{}", after.text());
    assert_ne!(after.header("etag"), Some(tag.as_str()), "a new ETag");
    let events = vevents(&after.text());
    assert_eq!(events.len(), 1, "a change, not a duplicate: {events:?}");
    assert_eq!(events[0]["UID"], "KZ-48@upr-tracker");
    assert_eq!(events[0]["SEQUENCE"], "1");
    assert_eq!(events[0]["DTSTART"], "20310124T083000Z");

    // Every state's calendar holds it too.
    let all = app.get("/calendar.ics").await;
    assert_eq!(all.status, 200);
    assert!(
        vevents(&all.text())
            .iter()
            .any(|e| e["UID"] == "KZ-48@upr-tracker")
    );

    // A code that is not a member state has no calendar.
    for path in ["/calendar/TW.ics", "/calendar/XX.ics", "/calendar/KZ.txt"] {
        let answer = app.get(path).await;
        assert_eq!(answer.status, 404, "{path}");
        assert_eq!(answer.json()["error"]["code"], "not_found", "{path}");
    }
}

/// A stand-in for a webhook receiver on a loopback port that accepts
/// everything (204) and keeps each body. Returns its port and the bodies.
async fn accepting_receiver() -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let kept = bodies.clone();
    let app = axum::Router::new().fallback(move |body: String| {
        let kept = kept.clone();
        async move {
            kept.lock().unwrap().push(body);
            axum::http::StatusCode::NO_CONTENT
        }
    });
    tokio::spawn(async move { axum::serve(listener, app).await });
    (port, bodies)
}

/// The shipped configuration: the gateway as its own user answers with the
/// projection's data, serves `/events` and delivers webhooks, and that
/// user can write nothing.
#[expect(
    clippy::too_many_lines,
    reason = "the shipped user's whole surface, read then live then refused, in one walk"
)]
#[tokio::test]
async fn the_gateway_serves_as_its_own_read_only_user_in_the_shipped_configuration() {
    let nats = NatsServer::start_secured();
    let _services = start_services(&nats, &nats.url(), &[]).await;
    let seed = nats.seed_file("gateway").display().to_string();
    let addr = format!("127.0.0.1:{}", upr_tests::free_port());
    let dir = tempfile::tempdir().unwrap();
    let (port, bodies) = accepting_receiver().await;
    let hooks = webhooks_file(dir.path(), "chat", &format!("http://127.0.0.1:{port}/upr"));
    let gateway = ServiceProcess::start(
        services::GATEWAY,
        &nats.url(),
        &[
            ("NATS_NKEY", &seed),
            ("UPR_HTTP_ADDR", &addr),
            (env::UPR_WEBHOOKS, &hooks),
        ],
    );
    gateway.wait_healthy().await;
    let addr = addr.parse().unwrap();
    let admin = async_nats::jetstream::new(nats.client_as("admin").await);
    eventually(
        Duration::from_secs(20),
        "the webhook's position",
        || async { upr_tests::webhook_position(&admin, "chat").await },
    )
    .await;
    let mut live = SseClient::connect(addr, "/events", &[])
        .await
        .unwrap_or_else(|a| panic!("{}", a.text()));

    let publisher = nats.client_as("publisher").await;
    let reply = publisher
        .request(
            "upr.ingest.review_scheduled",
            json!({"country": "KZ", "session": 48, "scheduled_for": "2099-01-23T08:30:00Z"})
                .to_string()
                .into(),
        )
        .await
        .unwrap();
    let seq = serde_json::from_slice::<serde_json::Value>(&reply.payload).unwrap()["seq"]
        .as_u64()
        .unwrap();
    for path in [
        format!("/api/v1/reviews/KZ/48?min_seq={seq}"),
        format!("/api/v1/sessions/48?min_seq={seq}"),
        "/api/v1/countries/KZ".to_string(),
        "/api/v1/upcoming?country=KZ".to_string(),
        "/api/v1/status".to_string(),
        "/calendar.ics".to_string(),
        "/calendar/KZ.ics".to_string(),
    ] {
        let answer = http::get(addr, &path, &[]).await;
        assert_eq!(answer.status, 200, "{path}: {}", answer.text());
    }

    // A reschedule sends a notice at once: it reaches the open event stream
    // and the webhook receiver, both read through the gateway's user.
    publisher
        .request(
            "upr.ingest.review_rescheduled",
            json!({"country": "KZ", "session": 48, "scheduled_for": "2099-01-24T08:30:00Z"})
                .to_string()
                .into(),
        )
        .await
        .unwrap();
    let event = live
        .next(Duration::from_secs(20))
        .await
        .expect("the notice on /events");
    assert_eq!(event.event, "rescheduled", "{event:?}");
    assert_eq!(event.json()["country"], "KZ");
    let delivered = eventually(Duration::from_secs(20), "the webhook delivered", || async {
        bodies.lock().unwrap().first().cloned()
    })
    .await;
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&delivered).unwrap()["id"],
        event.json()["id"],
        "the same notification"
    );
    // The storage figures with the shipped account limit (20G).
    let metrics = http::get(addr, "/metrics", &[]).await.text();
    let limit = series(&metrics, "upr_storage_limit_bytes").expect("the limit");
    let storage = series(&metrics, "upr_storage_bytes").expect("the storage");
    let log_bytes = series(&metrics, "upr_event_log_bytes").expect("the log's bytes");
    assert!(limit >= 20e9, "{metrics}");
    assert!(
        0.0 < log_bytes && log_bytes <= storage && storage < limit,
        "{metrics}"
    );
    assert!(
        !nats.log().contains("Violation"),
        "the gateway used only what it may: {}",
        nats.log()
    );

    // Its user can write nothing: no event, no read model, no stream change.
    let as_gateway = nats.client_as("gateway").await;
    for subject in [
        "upr.ingest.review_cancelled",
        "upr.events.KZ.48.review_cancelled",
        "$KV.upr_reviews.KZ.48",
        "upr.notify.reminder.KZ",
        "$JS.API.STREAM.DELETE.UPR_EVENTS",
        "$JS.API.CONSUMER.CREATE.UPR_EVENTS",
    ] {
        as_gateway.publish(subject, "{}".into()).await.unwrap();
        as_gateway.flush().await.unwrap();
        eventually(Duration::from_secs(5), "the refusal logged", || async {
            nats.log()
                .lines()
                .any(|l| l.contains("Publish Violation") && l.contains(subject))
                .then_some(())
        })
        .await;
    }
}

/// The value of the series `name` (with its labels, exactly) in a
/// Prometheus exposition.
fn series(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// A stand-in for a broken webhook receiver on a loopback port: every
/// request is answered 500. Returns its port and how many it answered.
async fn failing_receiver() -> (u16, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = hits.clone();
    let app = axum::Router::new().fallback(move || {
        let counted = counted.clone();
        async move {
            counted.fetch_add(1, Ordering::SeqCst);
            axum::http::StatusCode::INTERNAL_SERVER_ERROR
        }
    });
    tokio::spawn(async move { axum::serve(listener, app).await });
    (port, hits)
}

/// A `UPR_WEBHOOKS` file in `dir` with one subscription `name` to `url`.
fn webhooks_file(dir: &std::path::Path, name: &str, url: &str) -> String {
    let key: Vec<u8> = (0u8..32).collect();
    std::fs::write(
        dir.join("hook.secret"),
        format!("whsec_{}\n", data_encoding::BASE64.encode(&key)),
    )
    .unwrap();
    let file = dir.join("webhooks.json");
    std::fs::write(
        &file,
        json!([{"name": name, "url": url, "secret_file": "hook.secret"}]).to_string(),
    )
    .unwrap();
    file.display().to_string()
}

#[expect(
    clippy::too_many_lines,
    reason = "one scrape checked series by series: the requests, the live notifications, the system"
)]
#[tokio::test]
async fn metrics_count_requests_by_route_and_report_the_log_the_projection_and_the_notifier() {
    let dir = tempfile::tempdir().unwrap();
    let (port, attempts) = failing_receiver().await;
    let hooks = webhooks_file(dir.path(), "chat", &format!("http://127.0.0.1:{port}/hook"));
    let app = TestApp::builder()
        .env(env::UPR_WEBHOOKS, &hooks)
        .env(env::UPR_WEBHOOK_RETRY_MAX, "1s")
        .all()
        .gateway()
        .start()
        .await;
    let seq = schedule_kz48(&app).await;
    assert_eq!(
        app.get(&format!("/api/v1/reviews/KZ/48?min_seq={seq}"))
            .await
            .status,
        200
    );
    assert_eq!(app.get("/api/v1/reviews/KZ/47").await.status, 404);
    assert_eq!(app.get("/no/such/page").await.status, 404);
    app.caught_up().await;

    let metrics = app.get("/metrics").await;
    assert_eq!(metrics.status, 200);
    assert!(
        metrics
            .header("content-type")
            .is_some_and(|t| t.starts_with("application/openmetrics-text")),
        "{:?}",
        metrics.header("content-type")
    );
    let text = metrics.text();
    let route = "/api/v1/reviews/{country}/{session}";
    assert_eq!(
        series(
            &text,
            &format!(
                "upr_gateway_http_requests_total{{route=\"{route}\",method=\"GET\",status=\"200\"}}"
            )
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        series(
            &text,
            &format!(
                "upr_gateway_http_requests_total{{route=\"{route}\",method=\"GET\",status=\"404\"}}"
            )
        ),
        Some(1.0),
        "{text}"
    );
    // Unknown paths share one series: a client cannot create new ones.
    assert_eq!(
        series(
            &text,
            "upr_gateway_http_requests_total{route=\"unmatched\",method=\"GET\",status=\"404\"}"
        ),
        Some(1.0),
        "{text}"
    );
    assert!(
        series(
            &text,
            &format!("upr_gateway_http_request_duration_seconds_count{{route=\"{route}\"}}")
        ) == Some(2.0),
        "{text}"
    );
    let log = series(&text, "upr_events_in_log").expect("events in the log");
    assert!(log >= 1.0, "{text}");
    assert_eq!(
        series(&text, "upr_projection_applied_seq"),
        Some(log),
        "{text}"
    );
    assert_eq!(series(&text, "upr_projection_lag"), Some(0.0), "{text}");
    // Storage, from the same status answer: the log holds the event, the
    // account at least the log (this server has no account limit, so no
    // limit series; the shipped configuration's is checked with its user).
    let log_bytes = series(&text, "upr_event_log_bytes").expect("the log's bytes");
    assert!(log_bytes > 0.0, "{text}");
    let storage = series(&text, "upr_storage_bytes").expect("the account's bytes");
    assert!(storage >= log_bytes, "{text}");
    assert_eq!(series(&text, "upr_storage_limit_bytes"), None, "{text}");
    for name in ["upr_event_log_bytes", "upr_storage_bytes"] {
        assert!(
            text.contains(&format!("# HELP {name} "))
                && text.contains(&format!("# TYPE {name} gauge")),
            "{name} in\n{text}"
        );
    }
    for figure in [
        "upr_notifier_reminders_pending",
        "upr_notifier_reminders_sent",
        "upr_notifier_reminders_late",
    ] {
        assert!(series(&text, figure).is_some(), "{figure} in\n{text}");
    }
    assert_eq!(
        series(&text, "upr_source_up{source=\"notifier\"}"),
        Some(1.0)
    );
    assert_eq!(
        series(&text, "upr_gateway_events_streams_open"),
        Some(0.0),
        "{text}"
    );

    // The live notifications: an open /events stream is counted, and a
    // receiver that answers 500 shows its failed attempts rising while
    // nothing is delivered.
    eventually(
        Duration::from_secs(20),
        "the webhook's position",
        || async { upr_tests::webhook_position(app.js(), "chat").await },
    )
    .await;
    let stream = SseClient::connect(app.http_addr(), "/events", &[])
        .await
        .unwrap_or_else(|a| panic!("{}", a.text()));
    let delivered = "upr_gateway_webhook_delivered_total{subscription=\"chat\"}";
    let failed = "upr_gateway_webhook_failed_attempts_total{subscription=\"chat\"}";
    let open = "upr_gateway_events_streams_open";
    app.accept(
        "review_rescheduled",
        &json!({"country": "KZ", "session": 48, "scheduled_for": "2031-01-24T08:30:00Z"}),
    )
    .await;
    let first = eventually(
        Duration::from_secs(30),
        "a failed attempt counted",
        || async {
            let text = app.get("/metrics").await.text();
            (series(&text, failed)? >= 1.0).then_some(text)
        },
    )
    .await;
    assert_eq!(series(&first, open), Some(1.0), "{first}");
    assert_eq!(series(&first, delivered), Some(0.0), "{first}");
    let before = series(&first, failed).unwrap();
    let later = eventually(
        Duration::from_secs(30),
        "failed attempts rising",
        || async {
            let text = app.get("/metrics").await.text();
            (series(&text, failed)? > before).then_some(text)
        },
    )
    .await;
    assert_eq!(series(&later, delivered), Some(0.0), "{later}");
    assert!(
        attempts.load(Ordering::SeqCst) >= 2,
        "the receiver was asked each time"
    );
    drop(stream);
    eventually(
        Duration::from_secs(20),
        "the closed stream uncounted",
        || async {
            let text = app.get("/metrics").await.text();
            (series(&text, open)? == 0.0).then_some(())
        },
    )
    .await;
}

#[expect(
    clippy::too_many_lines,
    reason = "one person's walk through the pages, step by step, reads best in order"
)]
#[tokio::test]
async fn a_person_finds_a_review_in_the_browser_and_its_links_lead_where_they_say() {
    let app = TestApp::builder()
        .ingest()
        .projection()
        .gateway()
        .start()
        .await;
    schedule_kz48(&app).await;
    app.accept(
        "side_event_held",
        &json!({"country": "KZ", "session": 48, "title": "Civic space in Kazakhstan",
                "held_on": "2031-01-22T00:00:00Z", "speakers": [{"name": "A. Person", "role": "NGO"}]}),
    )
    .await;
    app.caught_up().await;
    let base = format!("http://{}", app.http_addr());

    let home_url = format!("{base}/");
    let home = tokio::task::spawn_blocking(move || browser::dump_dom(&home_url))
        .await
        .unwrap();
    let seen = browser::visible_text(&home);
    for text in [
        "Upcoming UPR reviews",
        "Kazakhstan",
        "23 January 2031, 08:30 UTC",
        "scheduled",
    ] {
        assert!(seen.contains(text), "the front page shows {text:?}: {seen}");
    }
    let review_link = browser::link_to(&home, "Kazakhstan").expect("a link to the review");
    assert_eq!(review_link, "/reviews/KZ/48");
    let calendar_link =
        browser::link_to(&home, "calendar of every review").expect("a calendar link");
    let calendar = app.get(&calendar_link).await;
    assert_eq!(calendar.status, 200);
    assert_eq!(
        calendar.header("content-type"),
        Some("text/calendar; charset=utf-8")
    );

    // Filtered by country, with the form's own query string.
    let filtered_url = format!("{base}/?country=kz");
    let filtered = tokio::task::spawn_blocking(move || browser::dump_dom(&filtered_url))
        .await
        .unwrap();
    assert!(browser::visible_text(&filtered).contains("Kazakhstan"));
    assert_eq!(
        browser::link_to(&filtered, "calendar of Kazakhstan").as_deref(),
        Some("/calendar/KZ.ics")
    );

    let review_url = format!("{base}{review_link}");
    let review = tokio::task::spawn_blocking(move || browser::dump_dom(&review_url))
        .await
        .unwrap();
    let seen = browser::visible_text(&review);
    for text in [
        "UPR review: Kazakhstan (session 48)",
        "Status scheduled",
        "23 January 2031, 08:30 UTC",
        "Palais des Nations, Room XX",
        "Bolivia (Plurinational State of), France, Japan",
        "Review scheduled",
        "Civic space in Kazakhstan",
        "A. Person (NGO)",
    ] {
        assert!(
            seen.contains(text),
            "the review page shows {text:?}: {seen}"
        );
    }
    let ics = browser::link_to(&review, "calendar of Kazakhstan (.ics)").expect("a calendar link");
    assert_eq!(ics, "/calendar/KZ.ics");
    let calendar = app.get(&ics).await;
    assert_eq!(calendar.status, 200);
    assert!(calendar.text().contains("UID:KZ-48@upr-tracker"));

    // A filter that is not a code: the page says so, with a 400.
    let bad = app.get("/?country=XX").await;
    assert_eq!(bad.status, 400);
    assert!(
        bad.text().contains("is not a country code"),
        "{}",
        bad.text()
    );

    // A review that does not exist: a page saying so, with a 404.
    assert_eq!(app.get("/reviews/KZ/47").await.status, 404);
    let missing_url = format!("{base}/reviews/KZ/47");
    let missing = tokio::task::spawn_blocking(move || browser::dump_dom(&missing_url))
        .await
        .unwrap();
    assert!(
        browser::visible_text(&missing).contains("Not found"),
        "{missing}"
    );

    // On a phone's width, the page renders (docs/ holds such a screenshot).
    let shot_dir = tempfile::tempdir().unwrap();
    let shot = shot_dir.path().join("review.png");
    let (url, file) = (format!("{base}/reviews/KZ/48"), shot.clone());
    tokio::task::spawn_blocking(move || browser::screenshot(&url, &file, 412, 1400))
        .await
        .unwrap();
    let png = std::fs::read(&shot).expect("a screenshot");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{} bytes",
        png.len()
    );
    if let Some(keep) = std::env::var_os("UPR_KEEP_SCREENSHOT") {
        std::fs::copy(&shot, keep).unwrap();
    }
}

#[expect(
    clippy::too_many_lines,
    reason = "each hostile client and then the check that everything still answers, in the order they happen"
)]
#[tokio::test]
async fn hostile_clients_get_bounded_answers_and_every_service_still_answers() {
    let app = TestApp::builder()
        .all()
        .service(
            services::GATEWAY,
            &[
                (
                    "UPR_HTTP_ADDR",
                    &format!("127.0.0.1:{}", upr_tests::free_port()),
                ),
                ("UPR_HTTP_MAX_REQUESTS", "4"),
            ],
        )
        .start()
        .await;
    let addr = app.http_addr();

    // A request head past 8 KiB is refused by the server itself.
    let huge = format!(
        "GET /api/v1/status HTTP/1.1\r\nHost: x\r\nX-Padding: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(16 * 1024)
    );
    let answer = raw_status(addr, huge.as_bytes()).await;
    assert!(matches!(answer, None | Some(431)), "{answer:?}");
    // Just under it is served.
    let fits = format!(
        "GET /api/v1/status HTTP/1.1\r\nHost: x\r\nX-Padding: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(6 * 1024)
    );
    assert_eq!(raw_status(addr, fits.as_bytes()).await, Some(200));

    // A body on GET is refused, naming it.
    let with_body = http::raw(
        addr,
        b"GET /api/v1/status HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
    )
    .await;
    assert_eq!(with_body.status, 400, "{}", with_body.text());
    assert_eq!(with_body.json()["error"]["field"], "body");
    // Another method: 405 in the same shape, naming it.
    let post = http::raw(
        addr,
        b"POST /api/v1/status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(post.status, 405, "{}", post.text());
    assert_eq!(post.header("allow"), Some("GET, HEAD"));
    assert_eq!(post.json()["error"]["field"], "method");
    let chunked = http::raw(
        addr,
        b"GET /api/v1/status HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(chunked.status, 400, "{}", chunked.text());

    // Slow clients: 50 connections that never finish their request head,
    // and 20 that send nothing at all.
    let mut slow = Vec::new();
    for _ in 0..20 {
        slow.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    for _ in 0..50 {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /api/v1/status HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        slow.push(s);
    }
    // Meanwhile everyone else is served.
    let started = Instant::now();
    assert_eq!(app.get("/api/v1/status").await.status, 200);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    // And the slow ones are closed once their time is up.
    for s in &mut slow {
        let mut buf = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
        assert!(read.is_ok(), "a slow client was still held after 10 s");
    }

    // Many at once while the projection hangs: past the limit of 4, 503 at
    // once instead of a queue.
    app.projection().freeze();
    // SIGSTOP takes effect asynchronously: wait until the kernel says so.
    let pid = app.projection().pid().unwrap();
    eventually(
        Duration::from_secs(5),
        "the projection stopped",
        || async move {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let state = stat.rsplit_once(") ")?.1.chars().next()?;
            (state == 'T').then_some(())
        },
    )
    .await;
    let burst: Vec<_> = (0..40)
        .map(|_| {
            tokio::spawn(async move {
                let started = Instant::now();
                let answer = http::get(addr, "/api/v1/status", &[]).await;
                (answer, started.elapsed())
            })
        })
        .collect();
    let mut shed = 0;
    for task in burst {
        let (answer, took) = task.await.unwrap();
        assert_eq!(answer.status, 503, "{}", answer.text());
        assert_eq!(answer.json()["error"]["code"], "unavailable");
        if answer.header("retry-after") == Some("1") {
            shed += 1;
            assert!(
                took < Duration::from_secs(3),
                "shed at once, not after {took:?}"
            );
        }
    }
    assert!(shed >= 30, "only {shed} of 40 were shed at the limit");
    app.projection().thaw();

    // Afterwards the gateway and every service answer as before.
    eventually(
        Duration::from_secs(20),
        "the gateway healthy again",
        || async { (app.get("/healthz").await.status == 200).then_some(()) },
    )
    .await;
    let seq = schedule_kz48(&app).await;
    assert_eq!(
        app.get(&format!("/api/v1/reviews/KZ/48?min_seq={seq}"))
            .await
            .status,
        200
    );
    let notifier = app.request("upr.notifier.status", "").await;
    assert_eq!(notifier["ok"], true, "{notifier}");
    assert!(app.gateway().healthcheck().success());
}

/// The status code of a raw request, or `None` when the server closed the
/// connection without one.
async fn raw_status(addr: std::net::SocketAddr, request: &[u8]) -> Option<u16> {
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    // The server may close while the request is still being written.
    let _ = s.write_all(request).await;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
    http::parse(&buf).map(|r| r.status)
}

/// `node` itself, or the node its `$ref` (`#/components/...`) points at.
fn resolve<'a>(doc: &'a Yaml, node: &'a Yaml) -> &'a Yaml {
    match node["$ref"].as_str() {
        Some(r) if r.starts_with("#/") => r[2..].split('/').fold(doc, |n, key| &n[key]),
        _ => node,
    }
}

/// A YAML schema node as JSON (the inline schemas of openapi.yaml).
fn yaml_json(node: &Yaml) -> serde_json::Value {
    match node {
        Yaml::Hash(h) => serde_json::Value::Object(
            h.iter()
                .map(|(k, v)| (k.as_str().unwrap().to_string(), yaml_json(v)))
                .collect(),
        ),
        Yaml::Array(a) => serde_json::Value::Array(a.iter().map(yaml_json).collect()),
        Yaml::String(s) => json!(s),
        Yaml::Integer(i) => json!(i),
        Yaml::Boolean(b) => json!(b),
        Yaml::Real(r) => json!(r.parse::<f64>().unwrap()),
        _ => serde_json::Value::Null,
    }
}

/// Checks an answer against what openapi.yaml documents for `operation`:
/// its status is listed, its media type is the listed one, and a JSON body
/// validates against the schema the status refers to.
#[track_caller]
fn assert_documented(doc: &Yaml, operation: &Yaml, what: &str, answer: &http::HttpResponse) {
    let docs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs");
    let response = resolve(
        doc,
        &operation["responses"][answer.status.to_string().as_str()],
    );
    assert!(
        !response.is_badvalue(),
        "{what}: status {} is not documented: {}",
        answer.status,
        answer.text()
    );
    let Some(content) = response["content"].as_hash() else {
        assert!(
            answer.body.is_empty(),
            "{what}: a body where none is documented"
        );
        return;
    };
    let served = answer.header("content-type").unwrap_or_default();
    let (media, spec) = content
        .iter()
        .find(|(m, _)| served.starts_with(m.as_str().unwrap()))
        .unwrap_or_else(|| panic!("{what}: {served} is not the documented media type"));
    if media.as_str() != Some("application/json") {
        return;
    }
    let schema = match spec["schema"]["$ref"].as_str() {
        Some(file) => serde_json::from_str(&std::fs::read_to_string(docs.join(file)).unwrap())
            .unwrap_or_else(|e| panic!("{file}: {e}")),
        None => yaml_json(&spec["schema"]),
    };
    let validator = jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        .build(&schema)
        .unwrap_or_else(|e| panic!("{what}: the schema compiles: {e}"));
    let body = answer.json();
    let errors: Vec<String> = validator
        .iter_errors(&body)
        .map(|e| e.to_string())
        .collect();
    assert!(
        errors.is_empty(),
        "{what}: {body} against its schema: {errors:#?}"
    );
}

#[tokio::test]
async fn every_path_of_the_openapi_document_answers_as_documented() {
    let app = TestApp::builder().all().gateway().start().await;
    let seq = schedule_kz48(&app).await;
    app.caught_up().await;
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.yaml"),
    )
    .unwrap();
    let doc = &YamlLoader::load_from_str(&text).unwrap()[0];
    assert_eq!(doc["openapi"].as_str(), Some("3.1.0"));
    let paths = doc["paths"].as_hash().expect("paths");
    let documented: Vec<&str> = paths.keys().filter_map(Yaml::as_str).collect();
    for path in [
        "/",
        "/reviews/{country}/{session}",
        "/calendar.ics",
        "/calendar/{file}",
        "/api/v1/reviews/{country}/{session}",
        "/api/v1/sessions/{session}",
        "/api/v1/countries/{country}",
        "/api/v1/upcoming",
        "/api/v1/status",
        "/healthz",
        "/metrics",
    ] {
        assert!(documented.contains(&path), "openapi.yaml documents {path}");
    }
    for (template, item) in paths {
        let template = template.as_str().unwrap();
        let operation = &item["get"];
        // The path with each parameter's example, as a client fills it in.
        let mut url = template.to_string();
        for p in operation["parameters"].as_vec().into_iter().flatten() {
            let p = resolve(doc, p);
            if p["in"].as_str() == Some("path") {
                let example = match &p["example"] {
                    Yaml::Integer(i) => i.to_string(),
                    Yaml::String(s) => s.clone(),
                    other => panic!("{template}: example {other:?}"),
                };
                url = url.replace(&format!("{{{}}}", p["name"].as_str().unwrap()), &example);
            }
        }
        let answer = app.get(&url).await;
        assert_eq!(answer.status, 200, "{url}: {}", answer.text());
        assert_documented(doc, operation, &url, &answer);
        // min_seq where it is documented: the same, once that is applied.
        let takes_min_seq = operation["parameters"]
            .as_vec()
            .into_iter()
            .flatten()
            .any(|p| resolve(doc, p)["name"].as_str() == Some("min_seq"));
        if takes_min_seq {
            let waited = app.get(&format!("{url}?min_seq={seq}")).await;
            assert_eq!(waited.status, 200, "{url}?min_seq: {}", waited.text());
        }
    }
    // Refusals validate against the documented error schema too.
    let api = &doc["paths"]["/api/v1/reviews/{country}/{session}"]["get"];
    for url in [
        "/api/v1/reviews/KZ/47",
        "/api/v1/reviews/XX/48",
        "/api/v1/reviews/KZ/48?min_seq=x",
    ] {
        assert_documented(doc, api, url, &app.get(url).await);
    }
    let calendar = &doc["paths"]["/calendar/{file}"]["get"];
    let first = app.get("/calendar/KZ.ics").await;
    let tag = first.header("etag").unwrap().to_string();
    let again = app
        .get_with("/calendar/KZ.ics", &[("If-None-Match", &tag)])
        .await;
    assert_documented(doc, calendar, "304", &again);
    assert_documented(doc, calendar, "TW.ics", &app.get("/calendar/TW.ics").await);
}

#[tokio::test]
async fn sigterm_stops_the_gateway_cleanly_after_the_request_in_progress() {
    let mut app = TestApp::builder()
        .ingest()
        .projection()
        .gateway()
        .start()
        .await;
    let addr = app.http_addr();
    let seq = schedule_kz48(&app).await;
    // A request waiting for a sequence not yet in the log (the projection
    // answers `timeout` after its 5 s wait) is in progress when SIGTERM comes.
    let pending = tokio::spawn(async move {
        http::get(addr, &format!("/api/v1/status?min_seq={}", seq + 1), &[]).await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let status = app.gateway_mut().terminate(Duration::from_secs(15));
    assert!(status.success(), "exit status {status}");
    let answer = pending.await.unwrap();
    assert!(
        [400, 503].contains(&answer.status),
        "the request in progress got its answer: {} {}",
        answer.status,
        answer.text()
    );
}

#[tokio::test]
async fn a_bad_address_or_a_port_in_use_stops_the_gateway_naming_it() {
    // Nothing listens here: both mistakes are reported before NATS is asked.
    let nats_url = "nats://127.0.0.1:9";
    let mut bad = ServiceProcess::start(
        services::GATEWAY,
        nats_url,
        &[("UPR_HTTP_ADDR", "localhost")],
    );
    assert_eq!(bad.wait_exit(Duration::from_secs(10)).code(), Some(1));
    assert!(bad.logs().contains("UPR_HTTP_ADDR"), "{}", bad.logs());

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let mut busy = ServiceProcess::start(services::GATEWAY, nats_url, &[("UPR_HTTP_ADDR", &addr)]);
    assert_eq!(busy.wait_exit(Duration::from_secs(10)).code(), Some(1));
    assert!(
        busy.logs().contains(&format!("cannot listen on {addr}")),
        "{}",
        busy.logs()
    );
}

/// What a stolen gateway key tries besides the consumer itself: the same
/// request by every API subject that makes one, pulling from a reader's
/// consumer, and a stream of its own.
const REFUSED_TO_THE_GATEWAY: [&str; 7] = [
    "$JS.API.CONSUMER.CREATE.UPR_NOTIFICATIONS",
    "$JS.API.CONSUMER.CREATE.UPR_NOTIFICATIONS.thief",
    "$JS.API.CONSUMER.CREATE.UPR_NOTIFICATIONS.thief.upr.notify.reminder.KZ",
    "$JS.API.CONSUMER.DURABLE.CREATE.UPR_NOTIFICATIONS.thief",
    "$JS.API.CONSUMER.MSG.NEXT.UPR_NOTIFICATIONS.reader",
    "$JS.API.STREAM.CREATE.KV_upr_gateway",
    "$JS.API.STREAM.UPDATE.KV_upr_gateway",
];

/// A stolen gateway key cannot aim a push consumer at the event log
/// (docs/security.md, "The gateway creates nothing"). Whoever may create a
/// consumer chooses its configuration, and the server delivers a push
/// consumer's messages to its deliver subject, where a stream that captures
/// that subject stores them: with the event log's subjects, notifications
/// would be appended to the log (seen with nats-server 2.15 while the
/// gateway's user could create consumers). The gateway's user now may
/// create no consumer in any form, nor pull from one, nor create a stream:
/// the attempt is refused as a permission violation, no consumer appears,
/// nothing is delivered even while someone listens on the subject, and the
/// log's last sequence stays where it was.
#[tokio::test]
async fn a_stolen_gateway_key_cannot_aim_a_push_consumer_at_the_event_log() {
    use futures::TryStreamExt;
    let nats = NatsServer::start_secured();
    let _services = start_services(&nats, &nats.url(), &[]).await;
    let publisher = nats.client_as("publisher").await;
    for (ty, when) in [
        ("review_scheduled", "2099-01-23T08:30:00Z"),
        ("review_rescheduled", "2099-01-24T08:30:00Z"),
    ] {
        let reply = publisher
            .request(
                format!("upr.ingest.{ty}"),
                json!({"country": "KZ", "session": 48, "scheduled_for": when})
                    .to_string()
                    .into(),
            )
            .await
            .unwrap();
        let answer: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap();
        assert_eq!(answer["ok"], true, "{answer}");
    }
    let admin = async_nats::jetstream::new(nats.client_as("admin").await);
    let notifications = admin
        .get_stream(contract::NOTIFICATIONS_STREAM)
        .await
        .unwrap();
    eventually(Duration::from_secs(20), "the notice stored", || async {
        notifications
            .get_last_raw_message_by_subject("upr.notify.rescheduled.KZ")
            .await
            .ok()
    })
    .await;
    let mut events = admin.get_stream(contract::EVENTS_STREAM).await.unwrap();
    let before = events.info().await.unwrap().state.last_sequence;
    assert_eq!(before, 2);
    let consumers = || async {
        let mut names: Vec<String> = notifications.consumer_names().try_collect().await.unwrap();
        names.sort();
        names
    };
    let consumers_before = consumers().await;

    // The worst case: someone in the account listens on the target subject
    // (an operator's `nats sub 'upr.events.>'` as `admin`).
    let target = "upr.events.KZ.48.review_cancelled";
    let listener = nats.client_as("admin").await;
    let mut heard = listener.subscribe(target).await.unwrap();
    listener.flush().await.unwrap();

    // The attempt, with the gateway's key and nothing else.
    let as_gateway = nats
        .options_as("gateway")
        .custom_inbox_prefix("_INBOX.upr-gateway")
        .connect(nats.url())
        .await
        .unwrap();
    let js = async_nats::jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(2))
        .build(as_gateway.clone());
    let stream = js
        .get_stream(contract::NOTIFICATIONS_STREAM)
        .await
        .expect("the gateway may read the stream's info");
    let refused = stream
        .create_consumer(async_nats::jetstream::consumer::push::Config {
            deliver_subject: target.to_string(),
            deliver_policy: async_nats::jetstream::consumer::DeliverPolicy::All,
            ack_policy: async_nats::jetstream::consumer::AckPolicy::None,
            ..Default::default()
        })
        .await;
    assert!(refused.is_err(), "{refused:?}");
    // Every other way to the same request: each refused by the server.
    for subject in REFUSED_TO_THE_GATEWAY {
        let body = json!({"stream_name": contract::NOTIFICATIONS_STREAM,
                          "config": {"deliver_subject": target, "ack_policy": "none"}});
        as_gateway
            .publish(subject, body.to_string().into())
            .await
            .unwrap();
        as_gateway.flush().await.unwrap();
    }
    for subject in REFUSED_TO_THE_GATEWAY {
        eventually(Duration::from_secs(5), "the refusal logged", || async {
            nats.log()
                .lines()
                .any(|l| l.contains("Publish Violation") && l.contains(subject))
                .then_some(())
        })
        .await;
    }

    // Nothing came of it: no consumer, no delivery, the log as it was.
    let nothing =
        tokio::time::timeout(Duration::from_secs(3), futures::StreamExt::next(&mut heard)).await;
    assert!(nothing.is_err(), "delivered: {nothing:?}");
    assert_eq!(consumers().await, consumers_before);
    assert_eq!(events.info().await.unwrap().state.last_sequence, before);
}
