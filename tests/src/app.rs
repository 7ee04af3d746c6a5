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

use std::{path::PathBuf, time::Duration};

use async_nats::{
    Client,
    jetstream::{self, message::PublishMessage},
};
use futures::StreamExt;
use serde_json::{Value, json};
use tempfile::TempDir;
use upr_domain::Envelope;
use upr_nats::contract::{self, services, subjects};

use crate::{NatsServer, ServiceProcess, eventually};

/// How long [`TestApp`] waits for a service to answer after it is healthy,
/// and for the projection to catch up.
const READY: Duration = Duration::from_secs(20);

/// What [`TestApp::builder`] starts.
#[derive(Default)]
pub struct TestAppBuilder {
    services: Vec<(String, Vec<(String, String)>)>,
    env: Vec<(String, String)>,
    nats_conf: Option<String>,
    event_log: bool,
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
        let mut app = TestApp {
            services: Vec::new(),
            client,
            js,
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
    pub async fn accept(&self, ty: &str, payload: &Value) -> Value {
        let reply = self.command(ty, payload).await;
        assert_eq!(reply["ok"], true, "{ty} {payload} -> {reply}");
        reply
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
}
