//! What a `publisher` or `reader` of the shipped `deploy/nats/nats.conf` can
//! do that it should not, tried for real against a nats-server running that
//! file and the three services running as their own users. Every line of
//! docs/security.md's threat table points at one of these tests.
//! The servers here run the shipped configuration, so these tests start
//! `NatsServer` and the services themselves rather than a `TestApp`.

use std::{collections::BTreeMap, time::Duration};

use async_nats::{
    Client,
    jetstream::{self, consumer::pull},
};
use futures::StreamExt;
use serde_json::{Value, json};
use upr_tests::{
    NatsCluster, NatsServer, RouteTls, ServiceProcess, cluster_config, cluster_config_with,
    eventually, free_port, secured_config_dir, start_services,
};

/// Every stream of the service account: the event log, the rejected log, the
/// notifications, the timers and every bucket.
const STREAMS: [&str; 9] = [
    "UPR_EVENTS",
    "UPR_REJECTED",
    "UPR_NOTIFICATIONS",
    "UPR_NOTIFIER_TIMERS",
    "KV_upr_reviews",
    "KV_upr_sessions",
    "KV_upr_countries",
    "KV_upr_notifier",
    "KV_upr_gateway",
];

/// Subjects a client outside the service account must never reach, directly
/// or as the reply subject of a request: writes into each stream above and
/// JetStream administration of the service account.
const PROTECTED: [&str; 20] = [
    "upr.events.ZZ.1.forged",
    "upr.events.KZ.48.review_cancelled",
    "upr.rejected",
    "upr.notify.reminder.KZ",
    "upr.notify.cancelled.KZ",
    "upr.notifier.timer.at.KZ.48.1d",
    "upr.notifier.timer.due.KZ.48.1d",
    "$KV.upr_reviews.KZ.48",
    "$KV.upr_sessions.48",
    "$KV.upr_countries.KZ",
    "$KV.upr_notifier.review.KZ.48",
    "$KV.upr_gateway.webhook.chat",
    "$JS.API.STREAM.DELETE.UPR_EVENTS",
    "$JS.API.STREAM.PURGE.UPR_EVENTS",
    "$JS.API.STREAM.PURGE.UPR_NOTIFIER_TIMERS",
    "$JS.API.STREAM.DELETE.KV_upr_reviews",
    "$JS.API.CONSUMER.DELETE.UPR_EVENTS.upr-projection",
    "$JS.API.CONSUMER.DELETE.UPR_NOTIFICATIONS.reader",
    // A command handed between ingest replicas, and the projection's lease
    // (whoever could write it could keep every projection on standby).
    "upr.internal.ingest.forged.review_cancelled",
    "$KV.upr_projection_lease.active",
];

/// The recorded review every test starts from.
const EVENT_ID: &str = "0b7c8e62-4a47-4c1e-9a53-3a1f0b1f2d11";

/// The shipped configuration with the three services, each as its own user.
struct Stack {
    nats: NatsServer,
    _services: Vec<ServiceProcess>,
    admin: jetstream::Context,
}

impl Stack {
    async fn start(extra: &[(&str, &str)]) -> Self {
        let nats = NatsServer::start_secured();
        let services = start_services(&nats, &nats.url(), extra).await;
        let admin = jetstream::new(nats.client_as("admin").await);
        Self {
            nats,
            _services: services,
            admin,
        }
    }

    /// A stack with KZ's review recorded and settled, the publisher's and
    /// the reader's clients, and the snapshot of every stream then.
    async fn start_recorded() -> (
        Self,
        Client,
        Client,
        BTreeMap<&'static str, (u64, u64, u64)>,
    ) {
        let stack = Self::start(&[]).await;
        let publisher = stack.nats.client_as("publisher").await;
        let reader = stack.nats.client_as("reader").await;
        stack.record_review(&publisher, &reader).await;
        // Let the notifier's sent-marks and the projection's checkpoint settle.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let before = stack.snapshot().await;
        (stack, publisher, reader, before)
    }

    /// Records KZ's review at session 48 as the publisher, and waits (asking
    /// as `reader`) until the projection and the notifier have applied it,
    /// so every stream and bucket exists and holds something.
    async fn record_review(&self, publisher: &Client, reader: &Client) {
        let reply = publisher
            .request("upr.ingest.review_scheduled", intake().into())
            .await
            .expect("ingest answers");
        let reply: Value = serde_json::from_slice(&reply.payload).unwrap();
        assert_eq!(reply["ok"], true, "{reply}");
        let seq = reply["seq"].as_u64().unwrap();
        let query = json!({"min_seq": seq}).to_string();
        let answer = reader
            .request("upr.query.review.KZ.48", query.into())
            .await
            .expect("projection answers");
        let answer: Value = serde_json::from_slice(&answer.payload).unwrap();
        assert_eq!(answer["ok"], true, "{answer}");
        eventually(Duration::from_secs(20), "the notifier's timers", || async {
            let status = reader
                .request("upr.notifier.status", "".into())
                .await
                .ok()?;
            let status: Value = serde_json::from_slice(&status.payload).ok()?;
            (status["pending"].as_u64()? >= 1).then_some(())
        })
        .await;
    }

    /// Message count, last sequence and bytes of every stream, read as admin.
    async fn snapshot(&self) -> BTreeMap<&'static str, (u64, u64, u64)> {
        let mut out = BTreeMap::new();
        for name in STREAMS {
            let mut stream = self
                .admin
                .get_stream(name)
                .await
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            let state = stream.info().await.expect("stream info").state.clone();
            out.insert(name, (state.messages, state.last_sequence, state.bytes));
        }
        out
    }

    /// Permission refusals the server logged.
    fn violations(&self) -> String {
        self.nats
            .log()
            .lines()
            .filter(|l| l.contains("Violation"))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// The review every test records: a date far ahead, so reminders stay
/// pending (none is sent during a test unless it asks for one).
fn intake() -> String {
    json!({
        "event_id": EVENT_ID, "country": "KZ", "session": 48,
        "scheduled_for": "2099-01-23T08:30:00Z", "location": "Geneva"
    })
    .to_string()
}

/// JetStream as a reader reaches it: the service account's API under the
/// domain `upr` (`nats --js-domain upr ...`).
fn reader_js(reader: &Client) -> jetstream::Context {
    jetstream::with_domain(reader.clone(), "upr")
}

/// The requests each user may send, with a payload the service answers
/// without storing anything new (a duplicate for ingest).
fn allowed_requests(user: &str) -> Vec<(&'static str, String)> {
    match user {
        "publisher" => vec![("upr.ingest.review_scheduled", intake())],
        "reader" => vec![
            ("upr.query.status", String::new()),
            ("upr.query.review.KZ.48", String::new()),
            ("upr.query.session.48", String::new()),
            ("upr.query.country.KZ", String::new()),
            ("upr.query.upcoming", String::new()),
            ("upr.notifier.status", String::new()),
            ("$SRV.PING", String::new()),
            ("$SRV.INFO.upr-projection", String::new()),
            ("$SRV.STATS.upr-ingest", String::new()),
            ("$JS.upr.API.STREAM.INFO.KV_upr_reviews", String::new()),
            (
                "$JS.upr.API.DIRECT.GET.KV_upr_reviews.$KV.upr_reviews.KZ.48",
                String::new(),
            ),
            ("$JS.upr.API.STREAM.INFO.UPR_NOTIFICATIONS", String::new()),
            (
                "$JS.upr.API.DIRECT.GET.UPR_NOTIFICATIONS",
                json!({"last_by_subj": "upr.notify.reminder.KZ"}).to_string(),
            ),
            (
                "$JS.upr.API.CONSUMER.INFO.UPR_NOTIFICATIONS.reader",
                String::new(),
            ),
        ],
        other => panic!("no requests for {other}"),
    }
}

#[tokio::test]
async fn forged_reply_subjects_and_direct_writes_leave_every_stream_unchanged() {
    let (stack, publisher, reader, before) = Stack::start_recorded().await;

    for (user, client) in [("publisher", &publisher), ("reader", &reader)] {
        for target in PROTECTED {
            // Straight at the protected subject, with and without a reply.
            client
                .publish(target, r#"{"forged":true}"#.into())
                .await
                .unwrap();
            client
                .publish_with_reply(target, "_INBOX.forged", r#"{"forged":true}"#.into())
                .await
                .unwrap();
            // Through every service it may use: the reply subject is the
            // protected one, so a service that published its answer there
            // would write into the service account.
            for (subject, payload) in allowed_requests(user) {
                client
                    .publish_with_reply(subject, target, payload.into())
                    .await
                    .unwrap();
            }
        }
        client.flush().await.unwrap();
    }
    // Every service has answered (or refused) everything above by the time a
    // request sent after it is answered; then a little more for stragglers.
    for (user, client) in [("publisher", &publisher), ("reader", &reader)] {
        let (subject, payload) = allowed_requests(user).remove(0);
        client
            .request(subject, payload.into())
            .await
            .unwrap_or_else(|e| panic!("{user} is still served: {e}"));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    assert_eq!(
        stack.snapshot().await,
        before,
        "a publisher or reader changed a stream or bucket of the service account"
    );
    let refused = stack.violations();
    assert!(
        refused.contains("\"upr.events.ZZ.1.forged\"")
            && refused.contains("\"$KV.upr_reviews.KZ.48\"")
            && refused.contains("\"upr.internal.ingest.forged.review_cancelled\"")
            && refused.contains("\"$KV.upr_projection_lease.active\""),
        "direct writes are refused and logged:\n{refused}"
    );
    // The services were never refused anything: their answers went to the
    // server's own reply subjects.
    for user in ["ingest", "projection", "notifier"] {
        let key = std::fs::read_to_string(stack.nats.seed_file(user)).unwrap();
        let public = nkeys::KeyPair::from_seed(key.trim()).unwrap().public_key();
        assert!(
            !refused.contains(&public),
            "{user} was refused something:\n{refused}"
        );
    }
}

#[tokio::test]
async fn jetstream_administration_is_refused_to_publisher_and_reader() {
    let (stack, publisher, reader, before) = Stack::start_recorded().await;

    // A push consumer on the notifications whose deliveries would land in
    // the event log: the reason readers get no consumer-create right.
    let push_into_the_log = json!({
        "stream_name": "UPR_NOTIFICATIONS",
        "config": {"durable_name": "reader", "deliver_subject": "upr.events.ZZ.1.pushed",
                   "ack_policy": "none", "deliver_policy": "all"}
    })
    .to_string();
    let attempts = [
        ("$JS.API.INFO", String::new()),
        ("$JS.API.STREAM.LIST", String::new()),
        (
            "$JS.API.STREAM.CREATE.EVIL",
            json!({"name": "EVIL", "subjects": ["upr.ingest.>"]}).to_string(),
        ),
        (
            "$JS.API.STREAM.UPDATE.UPR_EVENTS",
            json!({"name": "UPR_EVENTS", "subjects": ["upr.events.>"], "max_msgs": 1}).to_string(),
        ),
        ("$JS.API.STREAM.DELETE.UPR_EVENTS", String::new()),
        ("$JS.API.STREAM.PURGE.UPR_EVENTS", String::new()),
        ("$JS.API.STREAM.PURGE.KV_upr_reviews", String::new()),
        (
            "$JS.API.STREAM.MSG.DELETE.UPR_EVENTS",
            json!({"seq": 1}).to_string(),
        ),
        (
            "$JS.API.DIRECT.GET.UPR_EVENTS",
            json!({"seq": 1}).to_string(),
        ),
        (
            "$JS.API.CONSUMER.CREATE.UPR_NOTIFICATIONS.reader",
            push_into_the_log.clone(),
        ),
        (
            "$JS.API.CONSUMER.CREATE.UPR_NOTIFICATIONS.mine",
            push_into_the_log.clone(),
        ),
        (
            "$JS.API.CONSUMER.DURABLE.CREATE.UPR_NOTIFICATIONS.reader",
            push_into_the_log,
        ),
        (
            "$JS.API.CONSUMER.DELETE.UPR_NOTIFICATIONS.reader",
            String::new(),
        ),
        (
            "$JS.API.CONSUMER.DELETE.UPR_EVENTS.upr-projection",
            String::new(),
        ),
        (
            "$JS.API.CONSUMER.MSG.NEXT.UPR_EVENTS.upr-projection",
            json!({"batch": 10}).to_string(),
        ),
        (
            "$JS.API.CONSUMER.MSG.NEXT.UPR_NOTIFIER_TIMERS.upr-notifier-timers",
            json!({"batch": 10}).to_string(),
        ),
        ("$KV.upr_reviews.KZ.48", r#"{"forged":true}"#.to_string()),
        // The same through the domain the reader's reads use.
        ("$JS.upr.API.STREAM.DELETE.UPR_EVENTS", String::new()),
        ("$JS.upr.API.STREAM.PURGE.KV_upr_reviews", String::new()),
        (
            "$JS.upr.API.CONSUMER.CREATE.UPR_NOTIFICATIONS.reader",
            String::new(),
        ),
        (
            "$JS.upr.API.CONSUMER.DELETE.UPR_NOTIFICATIONS.reader",
            String::new(),
        ),
        (
            "$JS.upr.API.DIRECT.GET.UPR_EVENTS",
            json!({"seq": 1}).to_string(),
        ),
    ];
    for (user, client) in [("publisher", &publisher), ("reader", &reader)] {
        for (subject, payload) in &attempts {
            let answer = tokio::time::timeout(
                Duration::from_millis(500),
                client.request(*subject, payload.clone().into()),
            )
            .await;
            if let Ok(Ok(message)) = answer {
                panic!(
                    "{user} got an answer from {subject}: {}",
                    String::from_utf8_lossy(&message.payload)
                );
            }
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(stack.snapshot().await, before, "nothing changed");
    let consumers: Vec<String> = stack
        .admin
        .get_stream("UPR_NOTIFICATIONS")
        .await
        .unwrap()
        .consumer_names()
        .map(|n| n.unwrap())
        .collect()
        .await;
    assert_eq!(consumers, ["reader"], "no consumer was created or deleted");
}

/// A connection of `user` subscribed to everything its permissions could
/// possibly let through.
async fn spy(nats: &NatsServer, user: &str) -> (Client, Vec<(String, async_nats::Subscriber)>) {
    let client = nats.client_as(user).await;
    let mut subs = Vec::new();
    for subject in [
        ">",
        "_INBOX.>",
        "_R_.>",
        "$JS.>",
        "$KV.>",
        "upr.events.>",
        "upr.ingest.>",
    ] {
        if let Ok(sub) = client.subscribe(subject).await {
            subs.push((subject.to_string(), sub));
        }
    }
    client.flush().await.unwrap();
    (client, subs)
}

/// Panics with the first message any of the spy's subscriptions received.
async fn assert_saw_nothing(user: &str, subs: Vec<(String, async_nats::Subscriber)>) {
    for (subject, mut sub) in subs {
        if let Ok(Some(message)) = tokio::time::timeout(Duration::from_millis(50), sub.next()).await
        {
            panic!(
                "a {user} subscribed to {subject} saw {} ({})",
                message.subject,
                String::from_utf8_lossy(&message.payload)
            );
        }
    }
}

#[tokio::test]
async fn no_user_sees_another_users_or_a_services_traffic() {
    let stack = Stack::start(&[]).await;
    let publisher = stack.nats.client_as("publisher").await;
    let reader = stack.nats.client_as("reader").await;

    // While the publisher records (ingest appends, the projection and the
    // notifier pull, ack and write), a reader listens to everything.
    let (_reader_spy, subs) = spy(&stack.nats, "reader").await;
    // Waiting for the services is done as admin, so the reader account has
    // no traffic of its own in this phase.
    let admin = stack.nats.client_as("admin").await;
    stack.record_review(&publisher, &admin).await;
    for i in 0..5 {
        let payload = json!({"country": "KZ", "session": 48, "title": format!("Side event {i}"),
                             "held_on": "2025-01-20"});
        let reply = publisher
            .request("upr.ingest.side_event_held", payload.to_string().into())
            .await
            .unwrap();
        assert!(String::from_utf8_lossy(&reply.payload).contains("\"ok\":true"));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_saw_nothing("reader", subs).await;

    // While the reader queries, reads a bucket and pulls its consumer, a
    // publisher listens to everything.
    let (_publisher_spy, subs) = spy(&stack.nats, "publisher").await;
    reader
        .request("upr.query.session.48", "".into())
        .await
        .unwrap();
    reader.request("$SRV.PING", "".into()).await.unwrap();
    let js = reader_js(&reader);
    let bucket = js
        .get_key_value("upr_reviews")
        .await
        .expect("reader opens upr_reviews");
    bucket.get("KZ.48").await.expect("reader reads KZ.48");
    let consumer: jetstream::consumer::Consumer<pull::Config> = js
        .get_consumer_from_stream("reader", "UPR_NOTIFICATIONS")
        .await
        .expect("the reader's consumer");
    consumer
        .fetch()
        .max_messages(1)
        .expires(Duration::from_millis(500))
        .messages()
        .await
        .expect("pull");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_saw_nothing("publisher", subs).await;
}

#[tokio::test]
async fn a_reader_catches_up_on_missed_notifications_with_its_durable_consumer() {
    // A lead of 2 s makes a reminder come due within the test.
    let stack = Stack::start(&[("UPR_REMINDER_LEADS", "2s")]).await;
    let publisher = stack.nats.client_as("publisher").await;
    let soon = time::OffsetDateTime::now_utc() + Duration::from_secs(4);
    let soon = soon
        .replace_nanosecond(0)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let payload = json!({"country": "KZ", "session": 48, "scheduled_for": soon});
    let reply = publisher
        .request("upr.ingest.review_scheduled", payload.to_string().into())
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&reply.payload).contains("\"ok\":true"));
    // The reader was offline while the reminder was sent; it connects later.
    eventually(
        Duration::from_secs(20),
        "the reminder to be sent",
        || async {
            let mut stream = stack.admin.get_stream("UPR_NOTIFICATIONS").await.ok()?;
            (stream.info().await.ok()?.state.messages >= 1).then_some(())
        },
    )
    .await;

    // `nats consumer next UPR_NOTIFICATIONS reader`, as the reader.
    let reader = stack.nats.client_as("reader").await;
    let js = reader_js(&reader);
    let consumer: jetstream::consumer::Consumer<pull::Config> = js
        .get_consumer_from_stream("reader", "UPR_NOTIFICATIONS")
        .await
        .expect("the reader's consumer, created by the notifier");
    let mut batch = consumer
        .fetch()
        .max_messages(10)
        .expires(Duration::from_secs(2))
        .messages()
        .await
        .expect("pull");
    let message = batch
        .next()
        .await
        .expect("a missed notification")
        .expect("delivered");
    let reminder: Value = serde_json::from_slice(&message.payload).unwrap();
    assert_eq!(reminder["kind"], "reminder", "{reminder}");
    assert_eq!(reminder["country"], "KZ", "{reminder}");
    message.double_ack().await.expect("the reader acks it");
    drop(batch);

    // Acknowledged: the next pull has nothing new.
    let mut again = consumer
        .fetch()
        .max_messages(10)
        .expires(Duration::from_secs(1))
        .messages()
        .await
        .expect("pull");
    assert!(
        again.next().await.is_none(),
        "the acked reminder came again"
    );
}

#[tokio::test]
async fn cluster_routes_admit_only_nodes_with_the_route_password() {
    let cluster = NatsCluster::start_secured(3).await;
    // Routes with the password work: an R3 stream needs all three nodes.
    let admin = cluster.client_as("admin").await;
    upr_nats::setup::ensure_own_stream(
        &jetstream::new(admin),
        upr_nats::contract::events_stream(3, upr_nats::contract::DEFAULT_DEDUP_WINDOW),
    )
    .await
    .expect("an R3 stream on the authenticated cluster");

    // A reader on node 0 hears what the notifier publishes on node 1.
    let reader = NatsServer::options_from(&cluster.seed_file("reader"))
        .connect(cluster.node(0).url())
        .await
        .unwrap();
    let mut heard = reader.subscribe("upr.notify.>").await.unwrap();
    reader.flush().await.unwrap();
    let notifier_on = |url: String| {
        let seed = cluster.seed_file("notifier");
        async move {
            NatsServer::options_from(&seed)
                .connect(url)
                .await
                .expect("notifier connects")
        }
    };
    let legit = notifier_on(cluster.node(1).url()).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        legit
            .publish("upr.notify.reminder.KZ", "legit".into())
            .await
            .unwrap();
        legit.flush().await.unwrap();
        if let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(200), heard.next()).await
            && m.payload.as_ref() == b"legit"
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "nothing crossed the authenticated routes"
        );
    }
    // Drain the repeats of the control message.
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(300), heard.next()).await {}

    // A node with the same users but without the route password: it
    // tries every route, and is refused.
    let dir = cluster.secured_dir();
    let rogue_conf = cluster_config(
        dir,
        "rogue.conf",
        free_port(),
        Some(("guessed", cluster.routes())),
    );
    let rogue = NatsServer::start_on(
        free_port(),
        Some(rogue_conf),
        vec!["--server_name".into(), "rogue".into()],
        &[],
    );
    eventually(
        Duration::from_secs(10),
        "the cluster to refuse the rogue's routes",
        || async {
            (0..3)
                .any(|i| {
                    cluster
                        .node(i)
                        .log()
                        .contains("authentication error - User \"route\"")
                })
                .then_some(())
        },
    )
    .await;
    let forger = notifier_on(rogue.url()).await;
    for _ in 0..10 {
        forger
            .publish("upr.notify.reminder.KZ", "forged".into())
            .await
            .unwrap();
        forger.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(500), heard.next()).await {
        assert_ne!(
            m.payload.as_ref(),
            b"forged",
            "a node without the route password reached the cluster"
        );
    }
}

/// Publishes `forged` on `rogue` for a second and checks that `heard` (a
/// reader of the cluster) never gets it.
async fn assert_rogue_unheard(
    rogue: &NatsServer,
    seed: &std::path::Path,
    heard: &mut async_nats::Subscriber,
    why: &str,
) {
    let forger = NatsServer::options_from(seed)
        .connect(rogue.url())
        .await
        .expect("the notifier's key works on the rogue node");
    for _ in 0..10 {
        forger
            .publish("upr.notify.reminder.KZ", "forged".into())
            .await
            .unwrap();
        forger.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(500), heard.next()).await {
        assert_ne!(m.payload.as_ref(), b"forged", "{why}");
    }
}

#[tokio::test]
async fn cluster_routes_are_tls_and_refuse_a_plain_node_and_a_node_of_another_ca() {
    // The shipped cluster.conf: routes with the route password and TLS
    // (certificates from upr-keys). The cluster forms: an R3 stream needs
    // all three nodes.
    let cluster = NatsCluster::start_secured(3).await;
    let admin = cluster.client_as("admin").await;
    upr_nats::setup::ensure_own_stream(
        &jetstream::new(admin),
        upr_nats::contract::events_stream(3, upr_nats::contract::DEFAULT_DEDUP_WINDOW),
    )
    .await
    .expect("an R3 stream over TLS routes");
    for i in 0..3 {
        let log = cluster.node(i).log();
        assert!(
            !log.contains("TLS route handshake error"),
            "node {i}: the installation's own routes fail TLS:\n{log}"
        );
    }
    let reader = NatsServer::options_from(&cluster.seed_file("reader"))
        .connect(cluster.node(0).url())
        .await
        .unwrap();
    let mut heard = reader.subscribe("upr.notify.>").await.unwrap();
    reader.flush().await.unwrap();

    // Both rogues know the route password (read off a plain-text route
    // before this fix, or from a leaked file): only TLS keeps them out.
    let dir = cluster.secured_dir();
    let password = std::fs::read_to_string(dir.join("secrets/route.password")).unwrap();
    let forged = Some((password.trim(), cluster.routes()));
    let seed = cluster.seed_file("notifier");
    let failures = || {
        (0..3)
            .map(|i| {
                cluster
                    .node(i)
                    .log()
                    .matches("TLS route handshake error")
                    .count()
            })
            .sum::<usize>()
    };

    // 1. Plain-text routes, the right password.
    let before = failures();
    let plain = NatsServer::start_on(
        free_port(),
        Some(cluster_config_with(
            dir,
            "plain.conf",
            free_port(),
            forged,
            RouteTls::Plain,
        )),
        vec!["--server_name".into(), "plain".into()],
        &[],
    );
    eventually(
        Duration::from_secs(10),
        "the cluster to refuse the plain-text routes",
        || async { (failures() > before).then_some(()) },
    )
    .await;
    assert_rogue_unheard(
        &plain,
        &seed,
        &mut heard,
        "a node with plain-text routes joined the cluster",
    )
    .await;

    // 2. TLS with a certificate of another installation's CA, the right
    // password.
    let other = secured_config_dir();
    let before = failures();
    let foreign = NatsServer::start_on(
        free_port(),
        Some(cluster_config_with(
            dir,
            "foreign.conf",
            free_port(),
            forged,
            RouteTls::From(&other.path().join("secrets/route-tls")),
        )),
        vec!["--server_name".into(), "foreign".into()],
        &[],
    );
    eventually(
        Duration::from_secs(10),
        "the cluster to refuse the other CA's certificate",
        || async { (failures() > before).then_some(()) },
    )
    .await;
    assert_rogue_unheard(
        &foreign,
        &seed,
        &mut heard,
        "a node with another CA's route certificate joined the cluster",
    )
    .await;
    // No node counts either rogue as a route (a node's name is only known
    // once its route is up).
    for i in 0..3 {
        let log = cluster.node(i).log();
        for name in ["plain", "foreign"] {
            assert!(
                !log.contains(&format!("Remote: {name}")),
                "node {i} routed to {name}:\n{log}"
            );
        }
    }
    drop((plain, foreign));
}

#[tokio::test]
async fn a_service_refuses_a_key_file_that_others_can_read_naming_the_file() {
    use std::os::unix::fs::PermissionsExt;
    let nats = NatsServer::start_secured();
    let dir = tempfile::tempdir().unwrap();
    let mut processes = Vec::new();
    for binary in [
        upr_nats::contract::services::INGEST,
        upr_nats::contract::services::PROJECTION,
        upr_nats::contract::services::NOTIFIER,
    ] {
        let user = binary.trim_start_matches("upr-");
        let key = dir.path().join(format!("{user}.nk"));
        std::fs::copy(nats.seed_file(user), &key).unwrap();
        // What upr-keys wrote before it made every file 0600.
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let path = key.to_str().unwrap().to_string();
        let p = ServiceProcess::start(binary, &nats.url(), &[("NATS_NKEY", &path)]);
        processes.push((binary, key, path, p));
    }
    for (binary, key, path, mut p) in processes {
        let status = p.wait_exit(Duration::from_secs(15));
        let logs = p.logs();
        assert_eq!(status.code(), Some(1), "{binary}: {status:?}\n{logs}");
        assert!(
            logs.contains(&format!(
                "NATS_NKEY: {path} is readable by others (mode 644)"
            )) && logs.contains(&format!("chmod 600 {path}")),
            "{binary} names the file and the fix:\n{logs}"
        );
        // The same file made private: the service starts and stays up.
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let mut ok = ServiceProcess::start(binary, &nats.url(), &[("NATS_NKEY", &path)]);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(
            ok.try_exit().is_none(),
            "{binary} with a 0600 key:\n{}",
            ok.logs()
        );
        ok.terminate(Duration::from_secs(10));
    }
}

#[tokio::test]
async fn the_services_run_over_tls_and_a_plain_connection_is_refused() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let nats = NatsServer::start_secured_with(Vec::new(), |dir| {
        let status = std::process::Command::new(root.join("scripts/tls-certs"))
            .arg(dir.join("secrets/tls"))
            .stdout(std::process::Stdio::null())
            .status()
            .expect("run scripts/tls-certs");
        assert!(status.success(), "scripts/tls-certs");
        // The shipped tls.conf, its compose paths pointed at this directory.
        let shipped = std::fs::read_to_string(root.join("deploy/nats/tls.conf")).unwrap();
        shipped
            .lines()
            .filter(|l| !l.starts_with("include"))
            .collect::<Vec<_>>()
            .join("\n")
            .replace("/etc/nats/", &format!("{}/", dir.display()))
    });
    let ca = nats
        .seed_file("ingest")
        .with_file_name("tls")
        .join("ca.pem");
    let ca_text = ca.display().to_string();
    let _services = start_services(
        &nats,
        &format!("tls://127.0.0.1:{}", nats.port()),
        &[("NATS_TLS_CA", ca_text.as_str())],
    )
    .await;

    let tls = |user: &str| {
        nats.options_as(user)
            .require_tls(true)
            .add_root_certificates(ca.clone())
    };
    let publisher = tls("publisher")
        .connect(nats.url())
        .await
        .expect("publisher over TLS");
    let reader = tls("reader")
        .connect(nats.url())
        .await
        .expect("reader over TLS");
    let reply = publisher
        .request("upr.ingest.review_scheduled", intake().into())
        .await
        .expect("ingest answers over TLS");
    let reply: Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(reply["ok"], true, "{reply}");
    let query = json!({"min_seq": reply["seq"]}).to_string();
    let answer = reader
        .request("upr.query.review.KZ.48", query.into())
        .await
        .expect("projection answers over TLS");
    let answer: Value = serde_json::from_slice(&answer.payload).unwrap();
    assert_eq!(answer["review"]["status"], "scheduled", "{answer}");

    // Without TLS, the right key is not enough.
    let plain = tokio::time::timeout(
        Duration::from_secs(5),
        nats.options_as("publisher").connect(nats.url()),
    )
    .await;
    assert!(
        !matches!(plain, Ok(Ok(_))),
        "a plain connection was accepted"
    );
}

/// A request as `client` on `upr.ingest.<ty>`; the reply as JSON.
async fn ask(client: &Client, ty: &str, payload: &Value) -> Value {
    let reply = client
        .request(format!("upr.ingest.{ty}"), payload.to_string().into())
        .await
        .expect("ingest answers");
    serde_json::from_slice(&reply.payload).unwrap()
}

/// Contract V3.1 and V3.2 with the shipped configuration: each party is an
/// account of its own, `upr-keys add` plus a reload admits one, and every
/// event carries the name the server authenticated (a forged header or a
/// payload field changes nothing, for requests and plain publishes alike).
/// Only the recorder or an editor (`UPR_EDITORS`) may retract an event.
#[tokio::test]
async fn events_carry_the_recording_party_and_only_it_or_an_editor_may_retract() {
    let stack = Stack::start(&[("UPR_EDITORS", "desk")]).await;
    stack.nats.keys_and_reload(&["add", "publisher", "ngo-a"]);
    stack.nats.keys_and_reload(&["add", "publisher", "desk"]);
    let publisher = stack.nats.client_as("publisher").await;
    let ngo = stack.nats.client_as("ngo-a").await;
    let desk = stack.nats.client_as("desk").await;
    let admin = stack.nats.client_as("admin").await;
    let stored = |seq: u64| {
        let js = stack.admin.clone();
        async move {
            let stream = js.get_stream("UPR_EVENTS").await.unwrap();
            let m = stream.get_raw_message(seq).await.unwrap();
            serde_json::from_slice::<Value>(&m.payload).unwrap()
        }
    };

    let side = |title: &str| json!({"country": "KZ", "session": 48, "title": title, "held_on": "2025-01-20"});
    let reply = ask(&publisher, "side_event_held", &side("by the publisher")).await;
    let first = reply["event_id"].as_str().unwrap().to_owned();
    let event = stored(reply["seq"].as_u64().unwrap()).await;
    assert_eq!(
        (event["schema"].as_u64(), event["recorded_by"].as_str()),
        (Some(3), Some("publisher")),
        "{event}"
    );

    // A forged requester header is replaced by the server's.
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Request-Info", r#"{"acc":"publisher"}"#);
    let reply = ngo
        .request_with_headers(
            "upr.ingest.side_event_held",
            headers.clone(),
            side("by ngo-a").to_string().into(),
        )
        .await
        .unwrap();
    let reply: Value = serde_json::from_slice(&reply.payload).unwrap();
    let event = stored(reply["seq"].as_u64().unwrap()).await;
    assert_eq!(event["recorded_by"], "ngo-a", "{event}");

    // A plain publish goes through the same import, so it is named too.
    ngo.publish_with_headers(
        "upr.ingest.side_event_held",
        headers,
        side("published by ngo-a").to_string().into(),
    )
    .await
    .unwrap();
    ngo.flush().await.unwrap();
    let admin_js = jetstream::new(admin.clone());
    let published = eventually(Duration::from_secs(10), "the plain publish stored", || {
        let js = admin_js.clone();
        async move {
            let mut stream = js.get_stream("UPR_EVENTS").await.ok()?;
            let last = stream.info().await.ok()?.state.last_sequence;
            let m = stream.get_raw_message(last).await.ok()?;
            let v: Value = serde_json::from_slice(&m.payload).ok()?;
            (v["data"]["title"] == "published by ngo-a").then_some(v)
        }
    })
    .await;
    assert_eq!(published["recorded_by"], "ngo-a", "{published}");

    // recorded_by in a payload is an unknown field.
    let mut forged = side("forged");
    forged["recorded_by"] = "desk".into();
    let reply = ask(&ngo, "side_event_held", &forged).await;
    assert_eq!(
        (
            reply["error"]["code"].as_str(),
            reply["error"]["field"].as_str()
        ),
        (Some("invalid_field"), Some("recorded_by")),
        "{reply}"
    );

    // Retractions: another party is forbidden (the message names the
    // recorder), an editor may.
    let retract = json!({"country": "KZ", "session": 48, "retracts": first, "reason": "not ours"});
    let reply = ask(&ngo, "event_retracted", &retract).await;
    assert_eq!(
        (
            reply["error"]["code"].as_str(),
            reply["error"]["field"].as_str()
        ),
        (Some("forbidden"), Some("event_id")),
        "{reply}"
    );
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("\"publisher\""),
        "{reply}"
    );
    let reply = ask(&desk, "event_retracted", &retract).await;
    assert_eq!(reply["ok"], true, "an editor may retract: {reply}");
    let event = stored(reply["seq"].as_u64().unwrap()).await;
    assert_eq!(event["recorded_by"], "desk");
}

/// Contract V3.1: `upr-keys remove` and a reload close the party's open
/// connection and refuse its key; the other parties keep working. A new
/// reader sees nothing of another reader's traffic and cannot make it
/// receive a message through a reply subject.
#[tokio::test]
async fn a_removed_party_is_cut_off_and_readers_cannot_reach_each_other() {
    let stack = Stack::start(&[]).await;
    stack.nats.keys_and_reload(&["add", "publisher", "ngo-a"]);
    stack.nats.keys_and_reload(&["add", "reader", "press"]);
    let publisher = stack.nats.client_as("publisher").await;
    let ngo = stack.nats.client_as("ngo-a").await;
    let reader = stack.nats.client_as("reader").await;
    let (press, subs) = spy(&stack.nats, "press").await;
    let mut heard = press.subscribe("upr.notify.>").await.unwrap();
    press.flush().await.unwrap();

    // The reader puts a query's answer on a subject the press party
    // listens on: the server rewrites the reply into the reader's account.
    reader
        .publish_with_reply("upr.query.status", "upr.notify.reminder.KZ", "".into())
        .await
        .unwrap();
    reader.flush().await.unwrap();
    let reply = ask(
        &ngo,
        "side_event_held",
        &json!({"country": "KZ", "session": 48, "title": "t", "held_on": "2025-01-20"}),
    )
    .await;
    assert_eq!(reply["ok"], true, "{reply}");
    assert!(
        press.request("upr.query.status", "".into()).await.is_ok(),
        "the new reader queries"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        tokio::time::timeout(Duration::from_millis(200), heard.next())
            .await
            .is_err(),
        "no answer reached another reader"
    );
    drop(heard);
    // Its spy saw none of the publishers' or the reader's traffic (its own
    // query reply came on its inbox, so the spy is checked on the rest).
    let subs: Vec<_> = subs
        .into_iter()
        .filter(|(s, _)| s != "_INBOX.>" && s != ">")
        .collect();
    assert_saw_nothing("press", subs).await;

    let seed = std::fs::read_to_string(stack.nats.seed_file("ngo-a")).unwrap();
    stack.nats.keys_and_reload(&["remove", "ngo-a"]);
    eventually(
        Duration::from_secs(10),
        "ngo-a's connection closed",
        || async {
            (ngo.connection_state() != async_nats::connection::State::Connected).then_some(())
        },
    )
    .await;
    let again = async_nats::ConnectOptions::with_nkey(seed.trim().to_owned())
        .connect(stack.nats.url())
        .await;
    assert!(again.is_err(), "a revoked key is refused");
    let reply = ask(
        &publisher,
        "side_event_held",
        &json!({"country": "KZ", "session": 48, "title": "still here", "held_on": "2025-01-20"}),
    )
    .await;
    assert_eq!(reply["ok"], true, "the others keep working: {reply}");
}
