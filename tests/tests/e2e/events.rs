//! `GET /events` (contract V3.5): the notifications as Server-Sent Events,
//! from a real nats-server, ingest, the notifier and the gateway. Reminders
//! come seconds after a scheduling (`UPR_REMINDER_LEADS=2s,4s`); change
//! notices come at once on a reschedule or a cancellation.

use std::time::Duration;

use serde_json::json;
use upr_nats::contract::{self, env, services};
use upr_tests::{
    TestApp, eventually,
    sse::{SseClient, SseEvent},
};

/// How long a test waits for a notification to reach a client.
const WAIT: Duration = Duration::from_secs(20);

/// RFC 3339 to the second, `secs` from now.
fn in_secs(secs: u64) -> String {
    (time::OffsetDateTime::now_utc() + Duration::from_secs(secs))
        .replace_nanosecond(0)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

async fn schedule(app: &TestApp, country: &str, session: u32, when: &str) {
    app.accept(
        "review_scheduled",
        &json!({"country": country, "session": session, "scheduled_for": when, "location": "Geneva"}),
    )
    .await;
}

async fn reschedule(app: &TestApp, country: &str, session: u32, when: &str) {
    app.accept(
        "review_rescheduled",
        &json!({"country": country, "session": session, "scheduled_for": when}),
    )
    .await;
}

/// Everything in `UPR_NOTIFICATIONS`: (sequence, subject, payload).
async fn stored(app: &TestApp) -> Vec<(u64, String, String)> {
    let Ok(mut stream) = app.js().get_stream(contract::NOTIFICATIONS_STREAM).await else {
        return Vec::new();
    };
    let last = stream.info().await.unwrap().state.last_sequence;
    let mut out = Vec::new();
    for seq in 1..=last {
        if let Ok(m) = stream.get_raw_message(seq).await {
            out.push((
                seq,
                m.subject.to_string(),
                String::from_utf8(m.payload.to_vec()).unwrap(),
            ));
        }
    }
    out
}

/// Waits until the stream holds `n` notifications; returns them.
async fn stored_count(app: &TestApp, n: usize) -> Vec<(u64, String, String)> {
    eventually(WAIT, &format!("{n} notifications stored"), || async {
        let all = stored(app).await;
        (all.len() == n).then_some(all)
    })
    .await
}

/// The next `n` events, each within [`WAIT`].
async fn take(client: &mut SseClient, n: usize) -> Vec<SseEvent> {
    let mut out = Vec::new();
    while out.len() < n {
        let event = client
            .next(WAIT)
            .await
            .unwrap_or_else(|| panic!("only {} of {n} events came: {out:?}", out.len()));
        out.push(event);
    }
    out
}

/// Each event is the stored notification of its sequence: `event` its
/// kind, `id` its sequence, `data` its JSON on one line, unchanged.
#[track_caller]
fn assert_match_stored(events: &[SseEvent], stored: &[(u64, String, String)]) {
    for e in events {
        let (_, subject, payload) = stored
            .iter()
            .find(|(seq, _, _)| *seq == e.seq())
            .unwrap_or_else(|| panic!("event {e:?} is not a stored notification"));
        assert_eq!(e.data_lines, 1, "{e:?}");
        assert_eq!(&e.data, payload, "{e:?}");
        let data = e.json();
        assert_eq!(e.event, data["kind"].as_str().unwrap(), "{e:?}");
        assert_eq!(
            subject,
            &format!(
                "upr.notify.{}.{}",
                data["kind"].as_str().unwrap(),
                data["country"].as_str().unwrap()
            )
        );
    }
}

fn seqs(events: &[SseEvent]) -> Vec<u64> {
    events.iter().map(SseEvent::seq).collect()
}

#[tokio::test]
async fn events_are_live_and_a_reconnect_gets_exactly_the_missed_ones_then_live_ones() {
    let app = TestApp::builder()
        .env(env::UPR_REMINDER_LEADS, "2s,4s")
        .notifications()
        .start()
        .await;
    let addr = app.http_addr();
    schedule(&app, "KZ", 48, "2030-01-23T08:30:00Z").await;
    schedule(&app, "FR", 48, "2030-01-23T08:30:00Z").await;

    let mut all = SseClient::connect(addr, "/events", &[]).await.unwrap();
    assert_eq!(all.head.header("content-type"), Some("text/event-stream"));
    let mut fr = SseClient::connect(addr, "/events?country=fr", &[])
        .await
        .unwrap();

    // Live: two reminders (due 2 s and 4 s before a review 6 s ahead) and
    // two change notices.
    schedule(&app, "KZ", 49, &in_secs(6)).await;
    reschedule(&app, "KZ", 48, "2030-01-24T08:30:00Z").await;
    reschedule(&app, "FR", 48, "2030-01-24T08:30:00Z").await;
    let live = take(&mut all, 4).await;
    let kept = stored_count(&app, 4).await;
    assert_eq!(seqs(&live), [1, 2, 3, 4], "{live:?}");
    assert_match_stored(&live, &kept);
    let kinds: Vec<&str> = live.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == "reminder").count(),
        2,
        "{kinds:?}"
    );
    assert_eq!(
        kinds.iter().filter(|k| **k == "rescheduled").count(),
        2,
        "{kinds:?}"
    );

    // The client goes away; three notifications are sent meanwhile.
    let last_seen = live.last().unwrap().id.clone();
    drop(all);
    reschedule(&app, "KZ", 48, "2030-01-25T08:30:00Z").await;
    reschedule(&app, "FR", 48, "2030-01-25T08:30:00Z").await;
    app.accept("review_cancelled", &json!({"country": "KZ", "session": 48}))
        .await;
    let kept = stored_count(&app, 7).await;

    // Back with Last-Event-ID: exactly the three it missed, in order...
    let mut back = SseClient::connect(addr, "/events", &[("Last-Event-ID", &last_seen)])
        .await
        .unwrap();
    let missed = take(&mut back, 3).await;
    assert_eq!(seqs(&missed), [5, 6, 7], "{missed:?}");
    assert_match_stored(&missed, &kept);
    // (The notifier keeps order within a review, not across reviews.)
    assert!(missed.iter().any(|e| e.event == "cancelled"), "{missed:?}");
    // ... then live ones, nothing twice.
    reschedule(&app, "FR", 48, "2030-01-26T08:30:00Z").await;
    let next = take(&mut back, 1).await;
    assert_eq!(seqs(&next), [8]);
    let kept = stored_count(&app, 8).await;
    assert_match_stored(&next, &kept);
    assert_eq!(back.drain(Duration::from_millis(500)).await, []);

    // `?after=` does the same for a client that cannot send the header.
    let mut from_start = SseClient::connect(addr, "/events?after=0", &[])
        .await
        .unwrap();
    assert_eq!(
        seqs(&take(&mut from_start, 8).await),
        [1, 2, 3, 4, 5, 6, 7, 8]
    );

    // `?country=fr` got France's notifications only, all of them, in order.
    let expected: Vec<u64> = kept
        .iter()
        .filter(|(_, subject, _)| subject.rsplit('.').next() == Some("FR"))
        .map(|(seq, _, _)| *seq)
        .collect();
    assert_eq!(expected.len(), 3);
    let got = take(&mut fr, expected.len()).await;
    assert_eq!(seqs(&got), expected);
    assert_match_stored(&got, &kept);
    assert_eq!(fr.drain(Duration::from_millis(500)).await, []);
    // Resuming a filtered stream skips the other states' notifications.
    let mut fr_again = SseClient::connect(addr, "/events?country=FR&after=5", &[])
        .await
        .unwrap();
    let fr_after_5: Vec<u64> = expected.iter().copied().filter(|seq| *seq > 5).collect();
    assert_eq!(
        seqs(&take(&mut fr_again, fr_after_5.len()).await),
        fr_after_5
    );
    assert_eq!(fr_again.drain(Duration::from_millis(500)).await, []);
}

#[tokio::test]
async fn a_bad_country_or_sequence_is_a_json_400_naming_the_field() {
    let app = TestApp::builder().notifications().start().await;
    for (path, header, field) in [
        ("/events?country=XX", None, "country"),
        ("/events?country=Kazakhstan", None, "country"),
        ("/events?after=soon", None, "after"),
        ("/events?after=-1", None, "after"),
        ("/events", Some("yesterday"), "Last-Event-ID"),
    ] {
        let headers: Vec<(&str, &str)> = header.map(|h| ("Last-Event-ID", h)).into_iter().collect();
        let answer = app.get_with(path, &headers).await;
        assert_eq!(answer.status, 400, "{path}: {}", answer.text());
        assert_eq!(answer.header("content-type"), Some("application/json"));
        let body = answer.json();
        assert_eq!(body["ok"], false);
        assert_eq!(body["error"]["code"], "invalid_field", "{body}");
        assert_eq!(body["error"]["field"], field, "{body}");
    }
}

#[tokio::test]
async fn event_streams_have_their_own_cap_outside_the_request_limit_and_end_on_shutdown() {
    let mut app = TestApp::builder()
        .env(env::UPR_SSE_MAX_CLIENTS, "2")
        .env(env::UPR_HTTP_MAX_REQUESTS, "1")
        .notifications()
        .start()
        .await;
    let addr = app.http_addr();
    let mut first = SseClient::connect(addr, "/events", &[]).await.unwrap();
    let second = SseClient::connect(addr, "/events", &[]).await.unwrap();

    // Two streams open and a request limit of one: ordinary requests are
    // still answered, because streams do not count against that limit.
    let other = app.get("/no/such/page").await;
    assert_eq!(other.status, 404, "{}", other.text());

    // A third stream is past UPR_SSE_MAX_CLIENTS.
    let refused = SseClient::connect(addr, "/events", &[])
        .await
        .err()
        .unwrap();
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert_eq!(refused.json()["error"]["code"], "unavailable");
    assert!(refused.header("retry-after").is_some());

    // A client that leaves frees its place.
    drop(second);
    let mut third = eventually(WAIT, "a stream slot freed", || async {
        SseClient::connect(addr, "/events", &[]).await.ok()
    })
    .await;

    // SIGTERM: the open streams end at once instead of holding the
    // shutdown for its whole grace period (10 s).
    let started = std::time::Instant::now();
    let status = app
        .service_mut(services::GATEWAY)
        .terminate(Duration::from_secs(5));
    assert!(status.success(), "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(first.ends_within(Duration::from_secs(1)).await);
    assert!(third.ends_within(Duration::from_secs(1)).await);
}

/// The answer to one `GET path` on a new connection: `Some(status)`, or
/// `None` when the gateway closed the connection without answering.
async fn status_on_new_connection(addr: std::net::SocketAddr, path: &str) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut socket = tokio::net::TcpStream::connect(addr).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    // A connection closed on accept may refuse the write or the read.
    socket.write_all(request.as_bytes()).await.ok()?;
    let mut bytes = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), socket.read_to_end(&mut bytes))
        .await
        .expect("an answer or a close within 5 s")
        .ok()?;
    upr_tests::http::parse(&bytes).map(|a| a.status)
}

/// The connection cap is derived from the two limits
/// (`UPR_HTTP_MAX_REQUESTS` + `UPR_SSE_MAX_CLIENTS` + a margin), not fixed:
/// with every stream slot taken and the margin's idle connections open, a
/// plain GET still gets a connection and an answer (a JSON 404, which needs
/// no other service); one connection more is closed on accept.
#[tokio::test]
async fn with_every_stream_slot_taken_a_plain_request_still_gets_a_connection() {
    let (max_requests, sse_max) = (1, 2);
    let app = TestApp::builder()
        .env(env::UPR_SSE_MAX_CLIENTS, &sse_max.to_string())
        .env(env::UPR_HTTP_MAX_REQUESTS, &max_requests.to_string())
        .notifications()
        .start()
        .await;
    let addr = app.http_addr();
    let cap = upr_gateway::server::max_connections(max_requests, sse_max);
    let mut streams = Vec::new();
    for _ in 0..sse_max {
        streams.push(SseClient::connect(addr, "/events", &[]).await.unwrap());
    }
    let refused = SseClient::connect(addr, "/events", &[])
        .await
        .err()
        .expect("the stream cap is full");
    assert_eq!(refused.status, 503);

    // Idle connections (a client that has not sent its head yet) fill all
    // but one of the connections left; they are closed after the head
    // timeout (5 s), so what follows runs within it.
    let mut idle = Vec::new();
    for _ in 0..cap - sse_max - 1 {
        idle.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    let started = std::time::Instant::now();
    assert_eq!(
        status_on_new_connection(addr, "/no/such/page").await,
        Some(404),
        "the last connection the cap allows is served"
    );
    // That one is closed after its answer; one more idle one fills the cap
    // and the next connection is closed on accept, unanswered.
    tokio::time::sleep(Duration::from_millis(200)).await;
    idle.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        status_on_new_connection(addr, "/no/such/page").await,
        None,
        "past {cap} connections the gateway closes new ones"
    );
    assert!(
        started.elapsed() < upr_gateway::server::HEAD_TIMEOUT,
        "checked before the idle connections timed out"
    );
    // A freed place is served again.
    drop(idle.pop());
    let answered = eventually(WAIT, "a freed connection served", || async {
        status_on_new_connection(addr, "/no/such/page").await
    })
    .await;
    assert_eq!(answered, 404);
    drop(streams);
}

#[tokio::test]
async fn a_client_too_slow_for_the_live_feed_reads_the_gap_from_the_stream_and_loses_nothing() {
    let addr = format!("127.0.0.1:{}", upr_tests::free_port());
    let app = TestApp::builder()
        .event_log()
        .notifier()
        .service(
            services::GATEWAY,
            &[
                (env::UPR_HTTP_ADDR, &addr),
                (env::RUST_LOG, "info,upr_gateway=debug"),
            ],
        )
        .start()
        .await;
    eventually(WAIT, "the notifications stream", || async {
        app.js()
            .get_stream(contract::NOTIFICATIONS_STREAM)
            .await
            .ok()
            .map(drop)
    })
    .await;
    let mut slow = SseClient::connect(app.http_addr(), "/events", &[])
        .await
        .unwrap();
    // A client that keeps up, reading as they come: once it has them all,
    // the live feed has passed every one on while the slow one read nothing.
    let n = 3000;
    let mut fast = SseClient::connect(app.http_addr(), "/events", &[])
        .await
        .unwrap();
    let fast = tokio::spawn(async move { take(&mut fast, n).await });

    // Far more than the live feed keeps for a client (1024 notifications)
    // and than the sockets buffer (16 KiB each: loopback buffers grow to
    // several MiB, which must not absorb the lag), while the client reads
    // nothing.
    let pad = "x".repeat(16 * 1024);
    let mut acks = Vec::new();
    for i in 0..n {
        let payload = json!({"id": format!("KZ.48.load.{i}"), "kind": "reminder", "country": "KZ", "pad": pad});
        acks.push(
            app.js()
                .publish("upr.notify.reminder.KZ", payload.to_string().into())
                .await
                .unwrap(),
        );
    }
    for ack in acks {
        ack.await.unwrap();
    }

    let expected: Vec<u64> = (1..=n as u64).collect();
    assert_eq!(seqs(&fast.await.unwrap()), expected);

    // Every one arrives at the slow client too, in order, once.
    let events = take(&mut slow, n).await;
    assert_eq!(seqs(&events), expected);
    assert_eq!(events[n - 1].json()["id"], format!("KZ.48.load.{}", n - 1));
    // The gateway logs the lag as it notices it; the file may trail a little.
    eventually(
        WAIT,
        "the client fell behind the live feed (gateway log)",
        || async { app.gateway().logs().contains("lagged").then_some(()) },
    )
    .await;
}
