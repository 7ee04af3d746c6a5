//! Webhooks (contract V3.5) end to end: a real nats-server, ingest, the
//! notifier and the gateway, and a receiver of our own on a loopback port
//! that checks every signature with the Standard Webhooks project's own
//! library (`standardwebhooks`), not with the gateway's code.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode, Uri},
};
use serde_json::{Value, json};
use upr_nats::contract::{self, env, services};
use upr_tests::{NatsServer, ServiceProcess, TestApp, eventually, free_port, webhook_position};

const WAIT: Duration = Duration::from_secs(30);

/// One POST the receiver got.
#[derive(Debug, Clone)]
struct Received {
    path: String,
    id: String,
    content_type: String,
    body: String,
    /// Whether `standardwebhooks` accepted the signature (then the
    /// receiver answered 200, else 400).
    verified: bool,
}

type Log = Arc<Mutex<Vec<Received>>>;

/// An HTTP receiver on a fixed loopback port that can be stopped (nothing
/// listens, connections are refused) and started again on the same port.
/// It runs on a runtime of its own, so stopping it closes every
/// connection it had, as a crashed receiver would.
struct Receiver {
    addr: SocketAddr,
    secret: String,
    log: Log,
    running: Option<(
        tokio::sync::oneshot::Sender<()>,
        std::thread::JoinHandle<()>,
    )>,
}

impl Receiver {
    fn start(port: u16, secret: &str) -> Self {
        let mut r = Self {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            secret: secret.to_owned(),
            log: Log::default(),
            running: None,
        };
        r.restart();
        r
    }

    fn restart(&mut self) {
        assert!(self.running.is_none(), "already running");
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (addr, log) = (self.addr, self.log.clone());
        let verifier = Arc::new(standardwebhooks::Webhook::new(&self.secret).unwrap());
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let socket = tokio::net::TcpSocket::new_v4().unwrap();
                socket.set_reuseaddr(true).unwrap();
                socket.bind(addr).unwrap();
                let listener = socket.listen(64).unwrap();
                ready_tx.send(()).unwrap();
                let app = Router::new().fallback(receive).with_state((verifier, log));
                tokio::select! {
                    _ = axum::serve(listener, app) => {}
                    _ = stop_rx => {}
                }
            });
            // Dropping the runtime ends every connection task with it.
        });
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("the receiver listening");
        self.running = Some((stop_tx, thread));
    }

    fn stop(&mut self) {
        let (stop, thread) = self.running.take().expect("running");
        let _ = stop.send(());
        thread.join().unwrap();
    }

    fn received(&self) -> Vec<Received> {
        self.log.lock().unwrap().clone()
    }

    /// The accepted (verified) deliveries to `path`, in arrival order.
    fn accepted(&self, path: &str) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| r.verified && r.path == path)
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if self.running.is_some() {
            self.stop();
        }
    }
}

async fn receive(
    State((verifier, log)): State<(Arc<standardwebhooks::Webhook>, Log)>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let verified = verifier.verify(&body, &headers).is_ok();
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    log.lock().unwrap().push(Received {
        path: uri.path().to_owned(),
        id: header("webhook-id"),
        content_type: header("content-type"),
        body: String::from_utf8_lossy(&body).into_owned(),
        verified,
    });
    if verified {
        StatusCode::OK
    } else {
        StatusCode::BAD_REQUEST
    }
}

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

/// Every stored notification: (subject, payload), in stream order.
async fn stored(app: &TestApp) -> Vec<(String, String)> {
    let Ok(mut stream) = app.js().get_stream(contract::NOTIFICATIONS_STREAM).await else {
        return Vec::new();
    };
    let last = stream.info().await.unwrap().state.last_sequence;
    let mut out = Vec::new();
    for seq in 1..=last {
        if let Ok(m) = stream.get_raw_message(seq).await {
            out.push((
                m.subject.to_string(),
                String::from_utf8(m.payload.to_vec()).unwrap(),
            ));
        }
    }
    out
}

/// A key of 32 random bytes as a Standard Webhooks secret.
fn new_secret() -> String {
    let mut key = uuid::Uuid::new_v4().as_bytes().to_vec();
    key.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
    format!("whsec_{}", data_encoding::BASE64.encode(&key))
}

fn id_of(payload: &str) -> String {
    let v: Value = serde_json::from_str(payload).unwrap();
    v["id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn webhooks_get_every_matching_notification_in_order_through_outages_and_a_gateway_restart() {
    let dir = tempfile::tempdir().unwrap();
    let secret = new_secret();
    // The trailing newline an editor adds is ignored.
    std::fs::write(dir.path().join("hook.secret"), format!("{secret}\n")).unwrap();
    let port = free_port();
    let nobody = free_port();
    let subscriptions = json!([
        {"name": "everything", "url": format!("http://127.0.0.1:{port}/all"), "secret_file": "hook.secret"},
        {"name": "kz-reminders", "url": format!("http://127.0.0.1:{port}/kz"), "secret_file": "hook.secret",
         "countries": ["KZ"], "kinds": ["reminder"]},
        // Nothing ever listens here: its retries must delay no one else.
        {"name": "nobody-home", "url": format!("http://127.0.0.1:{nobody}/"), "secret_file": "hook.secret"},
    ]);
    let file = dir.path().join("webhooks.json");
    std::fs::write(&file, subscriptions.to_string()).unwrap();

    let mut receiver = Receiver::start(port, &secret);
    let mut app = TestApp::builder()
        .env(env::UPR_REMINDER_LEADS, "2s,4s")
        .env(env::UPR_WEBHOOKS, file.to_str().unwrap())
        .env(env::UPR_WEBHOOK_RETRY_MAX, "2s")
        .notifications()
        .start()
        .await;
    eventually(WAIT, "the webhooks' positions", || async {
        for name in ["everything", "kz-reminders", "nobody-home"] {
            webhook_position(app.js(), name).await?;
        }
        Some(())
    })
    .await;

    // While the receiver is up: two change notices and two reminders.
    schedule(&app, "KZ", 48, "2030-01-23T08:30:00Z").await;
    schedule(&app, "FR", 48, "2030-01-23T08:30:00Z").await;
    reschedule(&app, "KZ", 48, "2030-01-24T08:30:00Z").await;
    reschedule(&app, "FR", 48, "2030-01-24T08:30:00Z").await;
    schedule(&app, "KZ", 49, &in_secs(6)).await;
    eventually(WAIT, "four notifications delivered", || async {
        (receiver.accepted("/all").len() == 4).then_some(())
    })
    .await;

    // The receiver goes down for longer than a reminder's lead (4 s);
    // meanwhile a notice and two reminders are sent, and the gateway is
    // restarted.
    receiver.stop();
    let down = Instant::now();
    reschedule(&app, "FR", 48, "2030-01-25T08:30:00Z").await;
    schedule(&app, "KZ", 50, &in_secs(7)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let gateway = app.service_mut(services::GATEWAY);
    let status = gateway.terminate(Duration::from_secs(10));
    assert!(status.success(), "{status:?}\n{}", gateway.logs());
    gateway.restart();
    eventually(WAIT, "seven notifications stored", || async {
        (stored(&app).await.len() == 7 && down.elapsed() > Duration::from_secs(5)).then_some(())
    })
    .await;
    receiver.restart();

    // Back up: everything missed arrives, then a live one.
    eventually(WAIT, "the missed notifications delivered", || async {
        (receiver.accepted("/all").len() == 7 && receiver.accepted("/kz").len() == 4).then_some(())
    })
    .await;
    app.accept("review_cancelled", &json!({"country": "KZ", "session": 48}))
        .await;
    eventually(WAIT, "the live notification delivered", || async {
        (receiver.accepted("/all").len() == 8).then_some(())
    })
    .await;
    // Nothing more comes (no second copy of anything).
    tokio::time::sleep(Duration::from_secs(1)).await;

    let kept = stored(&app).await;
    assert_eq!(kept.len(), 8);
    let received = receiver.received();
    assert!(
        received.iter().all(|r| r.verified),
        "every signature verifies: {received:#?}"
    );
    let everything: &dyn Fn(&str) -> bool = &|_| true;
    let kz_reminders: &dyn Fn(&str) -> bool = &|s| s.starts_with("upr.notify.reminder.KZ");
    for (path, wanted) in [("/all", everything), ("/kz", kz_reminders)] {
        let expected: Vec<&(String, String)> =
            kept.iter().filter(|(subject, _)| wanted(subject)).collect();
        let got = receiver.accepted(path);
        let got_ids: Vec<&str> = got.iter().map(|r| r.id.as_str()).collect();
        let expected_ids: Vec<String> = expected.iter().map(|(_, p)| id_of(p)).collect();
        // Every matching notification, in stream order, each accepted once.
        assert_eq!(got_ids, expected_ids, "{path}");
        for (r, (_, payload)) in got.iter().zip(&expected) {
            assert_eq!(&r.body, payload, "{path}: the body is the notification");
            assert_eq!(r.content_type, "application/json");
        }
    }
    let kinds: Vec<Value> = kept
        .iter()
        .map(|(_, p)| serde_json::from_str::<Value>(p).unwrap()["kind"].clone())
        .collect();
    assert_eq!(kinds.iter().filter(|k| *k == "reminder").count(), 4);
    assert_eq!(kinds.iter().filter(|k| *k == "cancelled").count(), 1);
}

#[tokio::test]
async fn a_bad_subscription_file_stops_start_up_naming_the_entry_and_field() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("hook.secret"), new_secret()).unwrap();
    let file = dir.path().join("webhooks.json");
    std::fs::write(
        &file,
        json!([
            {"name": "chat", "url": "http://127.0.0.1:9/", "secret_file": "hook.secret"},
            {"name": "mail", "url": "mailto:someone@example.org", "secret_file": "hook.secret"},
        ])
        .to_string(),
    )
    .unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let mut gateway = ServiceProcess::start(
        services::GATEWAY,
        &nats.url(),
        &[
            (env::UPR_WEBHOOKS, file.to_str().unwrap()),
            (env::UPR_HTTP_ADDR, &addr),
        ],
    );
    let status = gateway.wait_exit(Duration::from_secs(10));
    assert!(!status.success());
    let logs = gateway.logs();
    assert!(
        logs.contains("UPR_WEBHOOKS") && logs.contains(r#"entry 2 ("mail"): field "url""#),
        "{logs}"
    );
}

#[tokio::test]
async fn a_notification_no_longer_kept_is_given_up_so_the_next_ones_go_out() {
    let dir = tempfile::tempdir().unwrap();
    let secret = new_secret();
    std::fs::write(dir.path().join("hook.secret"), &secret).unwrap();
    let port = free_port();
    let file = dir.path().join("webhooks.json");
    std::fs::write(
        &file,
        json!([{"name": "later", "url": format!("http://127.0.0.1:{port}/"), "secret_file": "hook.secret"}])
            .to_string(),
    )
    .unwrap();
    let app = TestApp::builder()
        .env(env::UPR_WEBHOOKS, file.to_str().unwrap())
        .env(env::UPR_WEBHOOK_RETRY_MAX, "1s")
        .notifications()
        .start()
        .await;
    eventually(WAIT, "the webhook's position", || async {
        webhook_position(app.js(), "later").await
    })
    .await;

    // Nothing listens yet: the first notice is retried...
    schedule(&app, "KZ", 48, "2030-01-23T08:30:00Z").await;
    reschedule(&app, "KZ", 48, "2030-01-24T08:30:00Z").await;
    eventually(WAIT, "a failed attempt", || async {
        app.gateway()
            .logs()
            .contains("webhook attempt failed")
            .then_some(())
    })
    .await;
    let mut stream = app
        .js()
        .get_stream(contract::NOTIFICATIONS_STREAM)
        .await
        .unwrap();
    let held = stream.info().await.unwrap().state.last_sequence;
    assert_eq!(webhook_position(app.js(), "later").await, Some(held - 1));
    // ... until an operator purges the stream: then it is given up.
    stream.purge().await.unwrap();
    eventually(WAIT, "the purged notice given up", || async {
        app.gateway()
            .logs()
            .contains("no longer kept by UPR_NOTIFICATIONS; giving up on it")
            .then_some(())
    })
    .await;
    eventually(WAIT, "the position past it", || async {
        (webhook_position(app.js(), "later").await? == held).then_some(())
    })
    .await;

    // The subscription goes on with the next notification.
    let receiver = Receiver::start(port, &secret);
    reschedule(&app, "KZ", 48, "2030-01-25T08:30:00Z").await;
    let got = eventually(WAIT, "the next notice delivered", || async {
        let got = receiver.accepted("/");
        (!got.is_empty()).then_some(got)
    })
    .await;
    assert_eq!(got.len(), 1, "{got:#?}");
    let kept = stored(&app).await;
    assert_eq!(kept.len(), 1, "only the last notice is still kept");
    assert_eq!(got[0].body, kept[0].1);
}

/// The gateway in this process (not a child), so its counters can be read
/// as `/metrics` reads them.
#[tokio::test]
async fn the_counters_show_deliveries_and_failed_attempts_per_subscription() {
    let dir = tempfile::tempdir().unwrap();
    let secret = new_secret();
    std::fs::write(dir.path().join("hook.secret"), &secret).unwrap();
    let port = free_port();
    let file = dir.path().join("webhooks.json");
    std::fs::write(
        &file,
        json!([
            {"name": "up", "url": format!("http://127.0.0.1:{port}/"), "secret_file": "hook.secret"},
            {"name": "down", "url": format!("http://127.0.0.1:{}/", free_port()), "secret_file": "hook.secret"},
        ])
        .to_string(),
    )
    .unwrap();
    let receiver = Receiver::start(port, &secret);
    let app = TestApp::builder().ingest().notifier().start().await;
    let url = app.url();
    let file_name = file.to_str().unwrap().to_owned();
    let settings = [
        (env::NATS_URL, url.as_str()),
        (env::UPR_HTTP_ADDR, "127.0.0.1:0"),
        (env::UPR_WEBHOOKS, file_name.as_str()),
        (env::UPR_WEBHOOK_RETRY_MAX, "1s"),
    ];
    let lookup = upr_nats::config::lookup_pairs(&settings);
    let config = upr_gateway::Config::from_lookup(&lookup).unwrap();
    let gateway = upr_gateway::App::build(config).await.unwrap();
    let metrics = gateway.webhook_metrics();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(gateway.run(async {
        let _ = stopped.await;
    }));
    let counts = |name: &str| {
        let c = metrics
            .subscriptions()
            .iter()
            .find(|c| c.name == name)
            .unwrap()
            .clone();
        (c.delivered(), c.failed_attempts())
    };
    assert_eq!(counts("up"), (0, 0));
    eventually(WAIT, "the webhooks' positions", || async {
        for name in ["up", "down"] {
            webhook_position(app.js(), name).await?;
        }
        Some(())
    })
    .await;

    schedule(&app, "KZ", 48, "2030-01-23T08:30:00Z").await;
    reschedule(&app, "KZ", 48, "2030-01-24T08:30:00Z").await;
    reschedule(&app, "KZ", 48, "2030-01-25T08:30:00Z").await;
    eventually(
        WAIT,
        "two deliveries and failed attempts counted",
        || async { (counts("up").0 == 2 && counts("down").1 >= 2).then_some(()) },
    )
    .await;
    assert_eq!(counts("up").1, 0, "no attempt at the live receiver failed");
    assert_eq!(counts("down").0, 0);
    assert_eq!(receiver.accepted("/").len(), 2);

    // And it stops when told, at once.
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), running)
        .await
        .expect("the gateway stopped within 5 s")
        .unwrap()
        .unwrap();
}

/// CPU time (user + system) the process `pid` has used so far.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces): utime and
    // stime are the 12th and 13th, in clock ticks (100 a second on Linux).
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after.split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10)
}

/// The upgrade from a gateway that delivered through durable consumers: a
/// subscription without a stored position, whose consumer
/// `upr-gateway-webhook-<name>` is there, resumes after that consumer's ack
/// floor (nothing acknowledged again, nothing after it skipped). And a
/// subscription whose filter matches none of the notifications stays idle:
/// it waits for the live feed's next news, not for a match.
#[tokio::test]
async fn a_subscription_resumes_after_its_earlier_consumers_ack_floor_and_an_unmatched_one_idles() {
    use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
    let dir = tempfile::tempdir().unwrap();
    let secret = new_secret();
    std::fs::write(dir.path().join("hook.secret"), &secret).unwrap();
    let port = free_port();
    let file = dir.path().join("webhooks.json");
    std::fs::write(
        &file,
        json!([
            {"name": "chat", "url": format!("http://127.0.0.1:{port}/"), "secret_file": "hook.secret"},
            {"name": "fr-only", "url": format!("http://127.0.0.1:{port}/fr"), "secret_file": "hook.secret",
             "countries": ["FR"]},
        ])
        .to_string(),
    )
    .unwrap();
    let app = TestApp::builder().all().start().await;
    schedule(&app, "KZ", 48, "2030-01-23T08:30:00Z").await;
    for day in 24..=26 {
        reschedule(&app, "KZ", 48, &format!("2030-01-{day}T08:30:00Z")).await;
    }
    eventually(WAIT, "three notices stored", || async {
        (stored(&app).await.len() == 3).then_some(())
    })
    .await;

    // What an earlier gateway left: its consumer, two notices acknowledged.
    let stream = app
        .js()
        .get_stream(contract::NOTIFICATIONS_STREAM)
        .await
        .unwrap();
    let earlier = stream
        .create_consumer(pull::Config {
            durable_name: Some(contract::gateway::webhook_consumer("chat")),
            deliver_policy: DeliverPolicy::All,
            ack_policy: AckPolicy::Explicit,
            filter_subject: contract::subjects::NOTIFY_ALL.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut batch = earlier.fetch().max_messages(2).messages().await.unwrap();
    while let Some(message) = futures::StreamExt::next(&mut batch).await {
        message.unwrap().double_ack().await.unwrap();
    }

    let receiver = Receiver::start(port, &secret);
    let addr = format!("127.0.0.1:{}", free_port());
    let gateway = app
        .spawn(
            services::GATEWAY,
            &[
                (env::UPR_WEBHOOKS, file.to_str().unwrap()),
                (env::UPR_HTTP_ADDR, &addr),
            ],
        )
        .await;
    let got = eventually(WAIT, "the third notice delivered", || async {
        let got = receiver.accepted("/");
        (!got.is_empty()).then_some(got)
    })
    .await;
    eventually(WAIT, "chat's position stored", || async {
        (webhook_position(app.js(), "chat").await? == 3).then_some(())
    })
    .await;
    assert_eq!(webhook_position(app.js(), "fr-only").await, Some(3));
    assert!(
        gateway
            .logs()
            .contains("resuming where the earlier durable consumer got to"),
        "{}",
        gateway.logs()
    );

    assert_eq!(got[0].body, stored(&app).await[2].1, "the third notice");

    // One more that `fr-only` does not match: `chat` sends it, and then a
    // few seconds with nothing new cost the gateway next to no CPU, though
    // the feed's newest is past where `fr-only` matched anything.
    reschedule(&app, "KZ", 48, "2030-01-27T08:30:00Z").await;
    eventually(WAIT, "the fourth notice delivered", || async {
        (receiver.accepted("/").len() == 2).then_some(())
    })
    .await;
    let pid = gateway.pid().unwrap();
    let before = cpu_time(pid);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let used = cpu_time(pid).saturating_sub(before);
    assert!(used < Duration::from_millis(300), "{used:?} of CPU in 3 s");
    let got = receiver.accepted("/");
    let kept = stored(&app).await;
    assert_eq!(
        got.iter().map(|r| r.body.as_str()).collect::<Vec<_>>(),
        [kept[2].1.as_str(), kept[3].1.as_str()],
        "nothing acknowledged before sent again, nothing sent twice"
    );
    assert!(receiver.accepted("/fr").is_empty());
}
