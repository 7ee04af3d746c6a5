//! [`TestApp`]: one nats-server and the services an end-to-end test asks
//! for, ready to answer, with a connected client and the requests tests
//! repeat. Everything stops and is removed when the app is dropped.
//!
//! ```ignore
//! let app = TestApp::builder().ingest().projection().start().await;
//! let seq = app.accept("review_scheduled", &json!({...})).await["seq"].as_u64().unwrap();
//! let review = app.query("upr.query.review.KZ.48", seq).await;
//! ```
//!
//! Tests that need a server of their own kind (the shipped configuration, a
//! cluster) use [`NatsServer`] and [`ServiceProcess`] directly.

use std::{
    borrow::Borrow,
    collections::BTreeMap,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use async_nats::{
    Client, HeaderMap, header,
    jetstream::{
        self,
        consumer::{DeliverPolicy, pull},
        message::PublishMessage,
    },
};
use futures::{StreamExt, TryStreamExt};
use serde_json::{Value, json};
use tempfile::TempDir;
use upr_domain::{Country, Envelope, EventData, ReadModels, SCHEMA, Session, Timestamp};
use upr_nats::contract::{
    self, COUNTRIES_BUCKET, REVIEWS_BUCKET, SESSIONS_BUCKET, notifier as names, services, subjects,
};
use uuid::Uuid;

use crate::{NatsServer, ServiceProcess, eventually};

/// How long [`TestApp`] waits for a service to answer after it is healthy,
/// and for the projection to catch up.
const READY: Duration = Duration::from_secs(20);

/// The read-model buckets, in the order [`Snapshot`]s list them.
pub const READ_MODEL_BUCKETS: [&str; 3] = [REVIEWS_BUCKET, SESSIONS_BUCKET, COUNTRIES_BUCKET];

/// bucket -> key -> value, as stored ([`TestApp::snapshot`]) or as the
/// domain folds it ([`TestApp::pure_fold`]).
pub type Snapshot = BTreeMap<String, BTreeMap<String, String>>;

/// What [`TestApp::builder`] starts.
#[derive(Default)]
pub struct TestAppBuilder {
    services: Vec<(String, Vec<(String, String)>)>,
    env: Vec<(String, String)>,
    nats_conf: Option<String>,
    event_log: bool,
    listen: Option<String>,
}

impl TestAppBuilder {
    /// One `upr-ingest` (call again for another replica).
    #[must_use]
    pub fn ingest(self) -> Self {
        self.service(services::INGEST, &[])
    }

    /// One `upr-projection`.
    #[must_use]
    pub fn projection(self) -> Self {
        self.service(services::PROJECTION, &[])
    }

    /// One `upr-notifier`.
    #[must_use]
    pub fn notifier(self) -> Self {
        self.service(services::NOTIFIER, &[])
    }

    /// One `upr-gateway` on a free loopback port ([`TestApp::http_addr`]).
    #[must_use]
    pub fn gateway(self) -> Self {
        let addr = format!("127.0.0.1:{}", crate::free_port());
        self.service(services::GATEWAY, &[(contract::env::UPR_HTTP_ADDR, &addr)])
    }

    /// Notifications from intake to HTTP: one ingest, one notifier and one
    /// gateway, so that what is recorded reaches `/events` and the webhooks
    /// (the gateway reads `UPR_NOTIFICATIONS` and the notifier creates it and
    /// the gateway's bucket).
    #[must_use]
    pub fn notifications(self) -> Self {
        self.ingest().notifier().gateway()
    }

    /// Ingest, the projection and the notifier, one of each.
    #[must_use]
    pub fn all(self) -> Self {
        self.ingest().projection().notifier()
    }

    /// One instance of the binary `name` with settings of its own, on top of
    /// those given with [`TestAppBuilder::env`].
    #[must_use]
    pub fn service(mut self, name: &str, env: &[(&str, &str)]) -> Self {
        self.services.push((name.to_string(), owned(env)));
        self
    }

    /// A setting for every service the app starts, also later ones
    /// ([`TestApp::spawn`]).
    #[must_use]
    pub fn env(mut self, var: &str, value: &str) -> Self {
        self.env.push((var.to_string(), value.to_string()));
        self
    }

    /// Configuration text for the server (`-c`), e.g. `max_payload: 16384`.
    #[must_use]
    pub fn nats_conf(mut self, text: &str) -> Self {
        self.nats_conf = Some(text.to_string());
        self
    }

    /// Creates the event log `UPR_EVENTS` as ingest does before any service
    /// starts, for tests that store events themselves instead of running
    /// ingest (the projection and the notifier wait for the log).
    #[must_use]
    pub fn event_log(mut self) -> Self {
        self.event_log = true;
        self
    }

    /// Subscribes to `subject` (core NATS, as `nats sub` would) before any
    /// service starts, collecting what arrives for [`TestApp::heard`].
    #[must_use]
    pub fn listen(mut self, subject: &str) -> Self {
        self.listen = Some(subject.to_string());
        self
    }

    /// Starts the server and the services together, and returns once each
    /// is healthy and answers: every ingest replica lists its intake
    /// endpoint, the projection answers `upr.query.status`.
    pub async fn start(self) -> TestApp {
        let conf_dir = self.nats_conf.as_ref().map(|text| {
            let dir = tempfile::tempdir().expect("tempdir");
            std::fs::write(dir.path().join("nats.conf"), text).expect("write nats.conf");
            dir
        });
        let conf: Option<PathBuf> = conf_dir.as_ref().map(|d| d.path().join("nats.conf"));
        let nats = NatsServer::start_with(conf, Vec::new());
        let client = nats.client().await;
        let js = jetstream::new(client.clone());
        if self.event_log {
            upr_nats::setup::ensure_own_stream(
                &js,
                contract::events_stream(1, contract::DEFAULT_DEDUP_WINDOW),
            )
            .await
            .expect("event log");
        }
        let heard = Arc::new(Mutex::new(Vec::new()));
        if let Some(subject) = &self.listen {
            let mut sub = client.subscribe(subject.clone()).await.unwrap();
            let sink = heard.clone();
            tokio::spawn(async move {
                while let Some(m) = sub.next().await {
                    let v: Value = serde_json::from_slice(&m.payload).unwrap_or(Value::Null);
                    sink.lock().unwrap().push((m.subject.to_string(), v));
                }
            });
            client.flush().await.unwrap();
        }
        let mut app = TestApp {
            services: Vec::new(),
            client,
            js,
            heard,
            env: self.env,
            nats,
            _conf_dir: conf_dir,
        };
        let started: Vec<ServiceProcess> = self
            .services
            .iter()
            .map(|(name, env)| app.process(name, env))
            .collect();
        let projection = started.iter().any(|p| p.name() == services::PROJECTION);
        for p in &started {
            // A gateway is healthy only once the projection answers; without
            // one (a test of that very case) it need only be listening.
            if p.name() == services::GATEWAY && !projection {
                wait_listening(p).await;
            } else {
                p.wait_healthy().await;
            }
        }
        app.services = started;
        app.wait_answering().await;
        app
    }
}

/// Waits until a gateway accepts connections on its `UPR_HTTP_ADDR`.
async fn wait_listening(gateway: &ServiceProcess) {
    let addr = gateway_addr(gateway);
    eventually(READY, "the gateway listening", || async move {
        tokio::net::TcpStream::connect(addr).await.ok().map(drop)
    })
    .await;
}

fn gateway_addr(gateway: &ServiceProcess) -> std::net::SocketAddr {
    gateway
        .env_var(contract::env::UPR_HTTP_ADDR)
        .and_then(|a| a.parse().ok())
        .expect("a gateway started by the harness has UPR_HTTP_ADDR")
}

fn owned(env: &[(&str, &str)]) -> Vec<(String, String)> {
    env.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A nats-server (JetStream, its own store, a free loopback port) and the
/// services a test asked for. See the [module documentation](self).
pub struct TestApp {
    // Dropped in this order: the services before the server they use.
    services: Vec<ServiceProcess>,
    client: Client,
    js: jetstream::Context,
    /// What arrived on the subject given to [`TestAppBuilder::listen`].
    heard: Arc<Mutex<Vec<(String, Value)>>>,
    env: Vec<(String, String)>,
    nats: NatsServer,
    _conf_dir: Option<TempDir>,
}

impl TestApp {
    /// What to start: `TestApp::builder().ingest().projection().start().await`.
    pub fn builder() -> TestAppBuilder {
        TestAppBuilder::default()
    }

    /// A client connected to the server, as a user with the NATS CLI has.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// JetStream over [`TestApp::client`].
    pub fn js(&self) -> &jetstream::Context {
        &self.js
    }

    /// The server, e.g. to stop or restart it.
    pub fn nats(&self) -> &NatsServer {
        &self.nats
    }

    /// The server, to stop, kill or restart it.
    pub fn nats_mut(&mut self) -> &mut NatsServer {
        &mut self.nats
    }

    /// The server's client URL.
    pub fn url(&self) -> String {
        self.nats.url()
    }

    /// Every service the app started, in start order.
    pub fn processes(&self) -> &[ServiceProcess] {
        &self.services
    }

    /// Every running instance of the binary `name`, in start order.
    pub fn instances(&self, name: &str) -> impl Iterator<Item = &ServiceProcess> {
        self.services.iter().filter(move |s| s.name() == name)
    }

    /// The first instance of the binary `name`.
    pub fn service(&self, name: &str) -> &ServiceProcess {
        self.instances(name)
            .next()
            .unwrap_or_else(|| panic!("the app runs no {name}"))
    }

    /// The first instance of the binary `name`, to kill, stop or restart it.
    pub fn service_mut(&mut self, name: &str) -> &mut ServiceProcess {
        self.services
            .iter_mut()
            .find(|s| s.name() == name)
            .unwrap_or_else(|| panic!("the app runs no {name}"))
    }

    /// The (first) `upr-ingest`.
    pub fn ingest(&self) -> &ServiceProcess {
        self.service(services::INGEST)
    }

    /// The (first) `upr-ingest`, to kill, stop or restart it.
    pub fn ingest_mut(&mut self) -> &mut ServiceProcess {
        self.service_mut(services::INGEST)
    }

    /// The (first) `upr-projection`.
    pub fn projection(&self) -> &ServiceProcess {
        self.service(services::PROJECTION)
    }

    /// The (first) `upr-projection`, to kill, stop or restart it.
    pub fn projection_mut(&mut self) -> &mut ServiceProcess {
        self.service_mut(services::PROJECTION)
    }

    /// The (first) `upr-notifier`.
    pub fn notifier(&self) -> &ServiceProcess {
        self.service(services::NOTIFIER)
    }

    /// The (first) `upr-notifier`, to kill, stop or restart it.
    pub fn notifier_mut(&mut self) -> &mut ServiceProcess {
        self.service_mut(services::NOTIFIER)
    }

    /// The (first) `upr-gateway`.
    pub fn gateway(&self) -> &ServiceProcess {
        self.service(services::GATEWAY)
    }

    /// The (first) `upr-gateway`, to kill, stop or restart it.
    pub fn gateway_mut(&mut self) -> &mut ServiceProcess {
        self.service_mut(services::GATEWAY)
    }

    /// Where the (first) gateway listens.
    pub fn http_addr(&self) -> std::net::SocketAddr {
        gateway_addr(self.gateway())
    }

    /// `GET path` on the gateway, with extra request headers.
    pub async fn get_with(
        &self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> crate::http::HttpResponse {
        crate::http::get(self.http_addr(), path, headers).await
    }

    /// `GET path` on the gateway.
    pub async fn get(&self, path: &str) -> crate::http::HttpResponse {
        self.get_with(path, &[]).await
    }

    fn process(&self, name: &str, env: &[(String, String)]) -> ServiceProcess {
        let all: Vec<(&str, &str)> = self
            .env
            .iter()
            .chain(env)
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        ServiceProcess::start(name, &self.url(), &all)
    }

    /// Starts one more instance of `name` (a standby, a second replica) with
    /// the app's settings and `env`, once it is healthy. The test owns it:
    /// the app does not count it among its own.
    pub async fn spawn(&self, name: &str, env: &[(&str, &str)]) -> ServiceProcess {
        let p = self.process(name, &owned(env));
        p.wait_healthy().await;
        p
    }

    /// Waits until the app's services answer: `n` intake endpoints for `n`
    /// ingest replicas, and the projection's status query.
    async fn wait_answering(&self) {
        let replicas = self.instances(services::INGEST).count();
        if replicas > 0 {
            self.wait_intake_endpoints(replicas).await;
        }
        if self.instances(services::PROJECTION).next().is_some() {
            eventually(
                READY,
                "the projection answering its status query",
                || async {
                    let v = self
                        .try_request("upr.query.status", "", Duration::from_secs(2))
                        .await?;
                    (v["ok"] == true).then_some(())
                },
            )
            .await;
        }
    }

    /// Waits until `n` ingest replicas list the intake endpoint (so each is
    /// subscribed to it), e.g. after restarting one.
    pub async fn wait_intake_endpoints(&self, n: usize) {
        let client = &self.client;
        eventually(READY, "ingest intake endpoints", || async move {
            let inbox = client.new_inbox();
            let mut replies = client.subscribe(inbox.clone()).await.ok()?;
            client
                .publish_with_reply(format!("$SRV.INFO.{}", services::INGEST), inbox, "".into())
                .await
                .ok()?;
            client.flush().await.ok()?;
            let mut found = 0;
            while let Ok(Some(m)) =
                tokio::time::timeout(Duration::from_millis(300), replies.next()).await
            {
                let info: Value = serde_json::from_slice(&m.payload).ok()?;
                let endpoints = info["endpoints"].as_array()?;
                if endpoints
                    .iter()
                    .any(|e| e["name"] == contract::ingest::ENDPOINT)
                {
                    found += 1;
                }
            }
            (found >= n).then_some(())
        })
        .await;
    }

    /// A request on `subject` whose reply must be JSON, returned as is.
    pub async fn request(&self, subject: &str, payload: impl Into<bytes::Bytes>) -> Value {
        let reply = self
            .client
            .request(subject.to_string(), payload.into())
            .await
            .unwrap_or_else(|e| panic!("{subject}: {e}"));
        serde_json::from_slice(&reply.payload)
            .unwrap_or_else(|e| panic!("{subject}: reply is not JSON ({e}): {:?}", reply.payload))
    }

    /// A request that may go unanswered (a service restarting, a connection
    /// coming back), for [`eventually`]: the JSON reply, or `None` when none
    /// came within `timeout` or it is not JSON.
    pub async fn try_request(
        &self,
        subject: &str,
        payload: impl Into<bytes::Bytes>,
        timeout: Duration,
    ) -> Option<Value> {
        let reply = tokio::time::timeout(
            timeout,
            self.client.request(subject.to_string(), payload.into()),
        )
        .await
        .ok()?
        .ok()?;
        serde_json::from_slice(&reply.payload).ok()
    }

    /// A command as `nats req upr.ingest.<ty> '<payload>'` sends it; the
    /// reply, accepted or not.
    pub async fn command(&self, ty: &str, payload: &Value) -> Value {
        self.request(
            &format!("{}{ty}", subjects::INGEST_PREFIX),
            payload.to_string(),
        )
        .await
    }

    /// A command that must be accepted; the reply (`event_id`, `seq`, ...).
    pub async fn accept(&self, ty: &str, payload: impl Borrow<Value>) -> Value {
        let payload = payload.borrow();
        let reply = self.command(ty, payload).await;
        assert_eq!(reply["ok"], true, "{ty} {payload} -> {reply}");
        reply
    }

    /// Records an event that must be accepted; returns `(event_id, seq)`.
    pub async fn record(&self, ty: &str, payload: impl Borrow<Value>) -> (String, u64) {
        let reply = self.accept(ty, payload).await;
        (
            reply["event_id"].as_str().unwrap().to_owned(),
            reply["seq"].as_u64().unwrap(),
        )
    }

    /// A command that must be refused; the reply's `error`.
    pub async fn refused(&self, ty: &str, payload: impl Borrow<Value>) -> Value {
        let reply = self.command(ty, payload.borrow()).await;
        assert_eq!(reply["ok"], false, "{ty} was accepted: {reply}");
        reply["error"].clone()
    }

    /// A command refused with `code`, the message saying `says`.
    pub async fn refused_saying(
        &self,
        ty: &str,
        payload: impl Borrow<Value>,
        code: &str,
        says: &str,
    ) {
        let e = self.refused(ty, payload).await;
        assert_eq!(e["code"], code, "{e}");
        let message = e["message"].as_str().unwrap_or_default();
        assert!(message.contains(says), "{message:?} does not say {says:?}");
    }

    /// `nats req upr.ingest.<ty> '<payload>'` with any bytes, not only JSON;
    /// the reply, which must come within 5 s and be JSON.
    pub async fn req(&self, ty: &str, payload: impl Into<Vec<u8>>) -> Value {
        let subject = format!("{}{ty}", subjects::INGEST_PREFIX);
        let reply = tokio::time::timeout(
            Duration::from_secs(5),
            self.client.request(subject.clone(), payload.into().into()),
        )
        .await
        .unwrap_or_else(|_| panic!("no reply on {subject} within 5 s"))
        .unwrap_or_else(|e| panic!("request on {subject}: {e}"));
        serde_json::from_slice(&reply.payload)
            .unwrap_or_else(|e| panic!("reply is not JSON ({e}): {:?}", reply.payload))
    }

    /// [`TestApp::req`] with a JSON payload.
    pub async fn req_json(&self, ty: &str, payload: Value) -> Value {
        self.req(ty, payload.to_string()).await
    }

    /// A query that must succeed, with `payload` as sent.
    pub async fn query_ok(&self, subject: &str, payload: &str) -> Value {
        let v = self.request(subject, payload.to_string()).await;
        assert_eq!(v["ok"], true, "{subject} {payload}: {v}");
        v
    }

    /// A query that must be refused with `code` naming `field`, and a message.
    pub async fn query_err(&self, subject: &str, payload: &str, code: &str, field: Option<&str>) {
        let v = self.request(subject, payload.to_string()).await;
        assert_eq!(v["ok"], false, "{subject} {payload}: {v}");
        assert_eq!(v["error"]["code"], code, "{subject} {payload}: {v}");
        assert_eq!(
            v["error"]["field"],
            field.map_or(Value::Null, Value::from),
            "{subject} {payload}: {v}"
        );
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{v}"
        );
    }

    /// The data of the first endpoint in the micro service `name`'s STATS.
    pub async fn service_stats(&self, name: &str) -> Value {
        let v = self.request(&format!("$SRV.STATS.{name}"), "").await;
        v["endpoints"][0]["data"].clone()
    }

    /// A query answered once the projection has applied `seq` (`min_seq`),
    /// which must succeed.
    pub async fn query(&self, subject: &str, seq: u64) -> Value {
        let v = self
            .request(subject, json!({"min_seq": seq}).to_string())
            .await;
        assert_eq!(v["ok"], true, "{subject}: {v}");
        v
    }

    /// Waits until the projection has applied everything in the event log;
    /// returns the last applied sequence.
    pub async fn caught_up(&self) -> u64 {
        eventually(READY, "projection caught up", || async {
            let v = self.request("upr.query.status", "").await;
            (v["ok"] == true && v["applied_seq"] == v["stream_last_seq"])
                .then(|| v["applied_seq"].as_u64().unwrap())
        })
        .await
    }

    /// Stores an envelope in the event log as ingest does (its subject, its
    /// id as `Nats-Msg-Id`); returns its stream sequence.
    pub async fn store_event(&self, event: &Envelope) -> u64 {
        let subject = subjects::event(event.country, event.session, event.event_type());
        self.store_raw(&subject, event.to_json(), &event.id.to_string())
            .await
    }

    /// Stores any bytes on `subject` with `msg_id`; returns the sequence.
    pub async fn store_raw(&self, subject: &str, payload: Vec<u8>, msg_id: &str) -> u64 {
        let publish = PublishMessage::build()
            .payload(payload.into())
            .message_id(msg_id);
        let ack = self
            .js
            .send_publish(subject.to_string(), publish)
            .await
            .expect("publish");
        ack.await.expect("stored").sequence
    }

    /// How many messages the stream `name` holds.
    pub async fn stream_messages(&self, name: &str) -> u64 {
        self.js
            .get_stream(name)
            .await
            .unwrap_or_else(|e| panic!("stream {name}: {e}"))
            .info()
            .await
            .unwrap_or_else(|e| panic!("stream {name}: {e}"))
            .state
            .messages
    }

    /// How many events the event log holds.
    pub async fn events_count(&self) -> u64 {
        self.stream_messages(contract::EVENTS_STREAM).await
    }

    /// How many rejection records `UPR_REJECTED` holds.
    pub async fn rejected_count(&self) -> u64 {
        self.stream_messages(contract::REJECTED_STREAM).await
    }

    /// Subject, headers and JSON of the stored event `seq`.
    pub async fn stored(&self, seq: u64) -> (String, HeaderMap, Value) {
        let stream = self.js.get_stream(contract::EVENTS_STREAM).await.unwrap();
        let m = stream.get_raw_message(seq).await.unwrap();
        (
            m.subject.to_string(),
            m.headers,
            serde_json::from_slice(&m.payload).unwrap(),
        )
    }

    /// Every stored event as (subject, JSON).
    pub async fn all_events(&self) -> Vec<(String, Value)> {
        let n = self.events_count().await;
        let stream = self.js.get_stream(contract::EVENTS_STREAM).await.unwrap();
        let mut out = Vec::new();
        for seq in 1..=n {
            let m = stream.get_raw_message(seq).await.unwrap();
            out.push((
                m.subject.to_string(),
                serde_json::from_slice(&m.payload).unwrap(),
            ));
        }
        out
    }

    /// The value under `key` in the bucket `bucket`, as text.
    pub async fn kv_get(&self, bucket: &str, key: &str) -> Option<String> {
        let kv = self.js.get_key_value(bucket).await.expect("bucket");
        kv.get(key)
            .await
            .expect("kv get")
            .map(|b| String::from_utf8(b.to_vec()).unwrap())
    }

    /// Every key of the three read-model buckets.
    pub async fn snapshot(&self) -> Snapshot {
        let mut out = Snapshot::new();
        for bucket in READ_MODEL_BUCKETS {
            let kv = self.js.get_key_value(bucket).await.expect("bucket");
            let keys: Vec<String> = kv
                .keys()
                .await
                .expect("keys")
                .try_collect()
                .await
                .expect("keys");
            let mut values = BTreeMap::new();
            for key in keys {
                let v = kv
                    .get(&key)
                    .await
                    .expect("get")
                    .expect("listed key has a value");
                values.insert(key, String::from_utf8(v.to_vec()).unwrap());
            }
            out.insert(bucket.to_string(), values);
        }
        out
    }

    /// The domain's pure fold of every valid event in the stream: what the
    /// read models must hold once the projection has caught up.
    pub async fn pure_fold(&self) -> Snapshot {
        let stream = self.js.get_stream(contract::EVENTS_STREAM).await.unwrap();
        let consumer = stream
            .create_consumer(pull::OrderedConfig {
                deliver_policy: DeliverPolicy::All,
                ..Default::default()
            })
            .await
            .unwrap();
        let mut events = Vec::new();
        if consumer.cached_info().num_pending > 0 {
            let mut messages = consumer.messages().await.unwrap();
            while let Some(m) = messages.next().await {
                let m = m.unwrap();
                let info = m.info().unwrap();
                let (seq, pending) = (info.stream_sequence, info.pending);
                if let Ok(e) = Envelope::from_json(&m.payload)
                    && subjects::event(e.country, e.session, e.event_type()) == m.subject.as_str()
                {
                    events.push((seq, e));
                }
                if pending == 0 {
                    break;
                }
            }
        }
        let models = ReadModels::fold(events.iter().map(|(s, e)| (*s, e)));
        let mut out = Snapshot::new();
        let as_text = |b: Vec<u8>| String::from_utf8(b).unwrap();
        out.insert(
            REVIEWS_BUCKET.into(),
            models
                .reviews
                .values()
                .map(|v| (v.kv_key(), as_text(v.to_json())))
                .collect(),
        );
        out.insert(
            SESSIONS_BUCKET.into(),
            models
                .sessions
                .values()
                .map(|v| (v.kv_key(), as_text(v.to_json())))
                .collect(),
        );
        out.insert(
            COUNTRIES_BUCKET.into(),
            models
                .countries
                .values()
                .map(|v| (v.kv_key(), as_text(v.to_json())))
                .collect(),
        );
        out
    }

    /// Everything heard on the subject given to [`TestAppBuilder::listen`]:
    /// (subject, JSON or null), in arrival order.
    pub fn heard(&self) -> Vec<(String, Value)> {
        self.heard.lock().unwrap().clone()
    }

    /// Stores an event of `code`'s review in `session` exactly as ingest
    /// does (its subject, `Nats-Msg-Id`, envelope), occurring and recorded now.
    pub async fn store_now(&self, code: &str, session: u64, data: EventData) -> Envelope {
        self.store_now_by(code, session, data, None).await
    }

    /// [`TestApp::store_now`], as recorded by the party `by` (schema 3).
    pub async fn store_now_by(
        &self,
        code: &str,
        session: u64,
        data: EventData,
        by: Option<&str>,
    ) -> Envelope {
        let at = Timestamp::from_offset_datetime(time::OffsetDateTime::now_utc())
            .unwrap()
            .truncate_to_millis();
        let envelope = Envelope {
            id: Uuid::new_v4(),
            data,
            schema: SCHEMA,
            country: Country::parse(code).unwrap(),
            session: Session::new(session).unwrap(),
            occurred_at: at,
            recorded_at: at,
            recorded_by: by.map(|name| upr_domain::PartyName::parse(name).unwrap()),
            source: None,
        };
        self.store_event(&envelope).await;
        envelope
    }

    /// The notifier's `upr.notifier.status`, `None` while it does not answer.
    pub async fn notifier_status(&self) -> Option<Value> {
        let reply = self.client.request(names::STATUS, "".into()).await.ok()?;
        serde_json::from_slice(&reply.payload).ok()
    }

    /// Waits until the notifier holds exactly `n` pending reminders.
    pub async fn wait_pending(&self, n: u64) {
        eventually(
            Duration::from_secs(10),
            &format!("{n} pending reminders"),
            || async {
                self.notifier_status()
                    .await
                    .filter(|s| s["pending"] == n)
                    .map(|_| ())
            },
        )
        .await;
    }

    /// Everything in `UPR_NOTIFICATIONS`: (subject, Nats-Msg-Id, payload).
    pub async fn notifications(&self) -> Vec<(String, String, Value)> {
        notifications(&self.js).await
    }

    /// The ids of the reminders in `UPR_NOTIFICATIONS`, in order.
    pub async fn reminder_ids(&self) -> Vec<String> {
        self.notifications()
            .await
            .into_iter()
            .filter(|(subject, _, _)| subject.starts_with("upr.notify.reminder."))
            .map(|(_, id, _)| id)
            .collect()
    }
}

/// Everything in `UPR_NOTIFICATIONS` read through `js` (say, a client
/// connected after a restart): (subject, Nats-Msg-Id, payload).
pub async fn notifications(js: &jetstream::Context) -> Vec<(String, String, Value)> {
    let Ok(mut stream) = js.get_stream(contract::NOTIFICATIONS_STREAM).await else {
        return Vec::new();
    };
    let last = stream.info().await.unwrap().state.last_sequence;
    let mut out = Vec::new();
    for seq in 1..=last {
        if let Ok(m) = stream.get_raw_message(seq).await {
            let id = m
                .headers
                .get(header::NATS_MESSAGE_ID)
                .map(ToString::to_string)
                .unwrap_or_default();
            out.push((
                m.subject.to_string(),
                id,
                serde_json::from_slice(&m.payload).unwrap(),
            ));
        }
    }
    out
}

/// How far the webhook subscription `name` has been delivered, read through
/// `js`: its position in the gateway's bucket, once the gateway has set it
/// (`None` before: no bucket or no key yet).
pub async fn webhook_position(js: &jetstream::Context, name: &str) -> Option<u64> {
    let kv = js
        .get_key_value(contract::gateway::STATE_BUCKET)
        .await
        .ok()?;
    let value = kv
        .get(contract::gateway::webhook_position_key(name))
        .await
        .ok()??;
    std::str::from_utf8(&value).ok()?.parse().ok()
}
