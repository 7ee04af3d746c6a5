//! Connecting to NATS and making sure the streams and buckets exist as the
//! contract describes them.
//!
//! Every service creates what it needs when it is missing, so the first start
//! on an empty server just works; but a stream that exists with another
//! configuration is refused with the difference named, because silently
//! "fixing" an operator's stream (say, its replicas or retention) could lose
//! events.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use async_nats::{
    Client, ConnectOptions,
    jetstream::{self, ErrorCode, context::GetStreamErrorKind, kv, stream},
};
use tracing::{info, warn};

use crate::config::NatsConfig;

/// Why a stream or bucket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// It exists, but with settings the service cannot work with.
    #[error(
        "{kind} {name} exists with an incompatible configuration: {differences}. \
         Fix or remove it (see docs/operations.md, Troubleshooting), then start again"
    )]
    Incompatible {
        /// "stream", "bucket" or "consumer".
        kind: &'static str,
        /// Its name.
        name: String,
        /// Each difference as `field: found X, expected Y`.
        differences: String,
    },
    /// It does not exist, and the caller is not its owner.
    #[error("stream {name} does not exist yet; its owner creates it")]
    Missing {
        /// Its name.
        name: String,
    },
    /// JetStream refused or did not answer.
    #[error("{kind} {name}: {source}")]
    JetStream {
        /// "stream", "bucket" or "consumer".
        kind: &'static str,
        /// Its name.
        name: String,
        /// The client's error.
        source: async_nats::Error,
    },
}

/// The seed file `NATS_NKEY` names cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("NATS_NKEY: cannot read {}: {source}", .path.display())]
pub struct NkeyFileError {
    /// The file.
    pub path: std::path::PathBuf,
    /// Why it cannot be read.
    pub source: std::io::Error,
}

/// How long a start-up step keeps trying while JetStream is unreachable or
/// slow to answer (a server or cluster still starting, a stream being created
/// by another replica at the same moment) before the service gives up and
/// its supervisor restarts it.
pub const SETUP_PATIENCE: Duration = Duration::from_secs(30);

/// The error of a start-up step, as [`patiently`] sees it: whether another
/// try can succeed.
pub trait SetupFailure: std::fmt::Display {
    /// `true` when retrying cannot help (a configuration that must be fixed
    /// first): the service stops at once.
    fn is_permanent(&self) -> bool;
}

impl SetupFailure for SetupError {
    fn is_permanent(&self) -> bool {
        matches!(self, Self::Incompatible { .. })
    }
}

/// Runs a start-up step until it succeeds, retrying with backoff for up to
/// [`SETUP_PATIENCE`]; a permanent error (an incompatible configuration)
/// fails at once, as retrying cannot fix it.
///
/// # Errors
/// The step's error once it is permanent or patience has run out.
pub async fn patiently<T, E, F, Fut>(mut step: F) -> Result<T, E>
where
    E: SetupFailure,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let started = Instant::now();
    let mut backoff =
        crate::retry::Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
    loop {
        match step().await {
            Ok(v) => return Ok(v),
            Err(e) if e.is_permanent() => return Err(e),
            Err(e) if started.elapsed() < SETUP_PATIENCE => {
                let delay = backoff.next_delay();
                warn!(error = %e, retry_in = ?delay, "JetStream not ready");
                tokio::time::sleep(delay).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Connects, retrying with back-off until the server answers, because in a
/// compose deployment the services may start before NATS is ready. Once
/// connected, the client reconnects by itself forever; connection events are
/// logged.
///
/// `name` is the service (`upr-ingest` ...): the connection's name, and its
/// inbox prefix `_INBOX.<name>`, so the server configuration lets each
/// service subscribe to its own replies only (see [`inbox_prefix`]).
///
/// This is the service's *core* connection: JetStream appends, consumers,
/// buckets. What other users can send to (intake, queries, status, `$SRV`)
/// is served on a second connection, [`connect_edge`].
///
/// # Errors
/// Only for settings that can never work (an unreadable credentials file, an
/// unparsable URL); an unreachable server is retried, not an error.
pub async fn connect(config: &NatsConfig, name: &str) -> Result<Client, async_nats::Error> {
    connect_as(config, name, Role::Core).await
}

/// The service's *edge* connection: the micro service and its endpoints,
/// which anyone allowed to request them can reach. async-nats 0.51 reads a
/// delivered message whose subject or reply subject is not UTF-8 as a
/// protocol error and drops the connection; on its own connection such a
/// message costs a reconnect of the edge (replies in flight are lost, the
/// clients retry), never the appends, consumers and acks of the core.
///
/// # Errors
/// As [`connect`].
///
/// `largest_message` is the most a caller may send in one message; it sizes
/// the buffer ([`EDGE_BUFFER_BYTES`]).
pub async fn connect_edge(
    config: &NatsConfig,
    name: &str,
    largest_message: usize,
) -> Result<Client, async_nats::Error> {
    let buffer = (EDGE_BUFFER_BYTES / largest_message.max(1)).max(64);
    connect_as(config, name, Role::Edge(buffer)).await
}

/// Bytes an edge subscription may buffer while the service is busy. The
/// client library bounds its buffer by message count, so the count is this
/// divided by the largest message the service's callers may send (the
/// shipped config's account limits: 128 KiB for intake, 8 KiB for queries):
/// 512 intake messages, 8,192 queries. Past it the client drops messages (a
/// slow-consumer event) and requesters retry. The core connection's larger
/// buffer only ever holds answers to what the service asked for.
pub const EDGE_BUFFER_BYTES: usize = 64 * 1024 * 1024;

/// Messages the client dropped (slow consumer), reported at most once a
/// second.
#[derive(Default)]
struct Dropped {
    count: AtomicU64,
    last_report: Mutex<Option<Instant>>,
}

impl Dropped {
    /// Counts one drop; returns the count to report when a second has
    /// passed since the last report.
    fn record(&self) -> Option<u64> {
        self.count.fetch_add(1, Ordering::Relaxed);
        let mut last = self
            .last_report
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if last.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
            return None;
        }
        *last = Some(Instant::now());
        Some(self.count.swap(0, Ordering::Relaxed))
    }
}

/// Which of a service's two connections, for the logs.
#[derive(Debug, Clone, Copy)]
enum Role {
    Core,
    /// With its buffer, in messages.
    Edge(usize),
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Self::Core => "core",
            Self::Edge(_) => "edge",
        }
    }
}

async fn connect_as(
    config: &NatsConfig,
    name: &str,
    role: Role,
) -> Result<Client, async_nats::Error> {
    let mut backoff =
        crate::retry::Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        match options(config, name, role)
            .await?
            .connect(config.servers.as_slice())
            .await
        {
            Ok(client) => {
                info!(url = %config.url, connection = role.as_str(), "connected to NATS");
                return Ok(client);
            }
            Err(e) => {
                let delay = backoff.next_delay();
                warn!(url = %config.url, connection = role.as_str(), error = %e, retry_in = ?delay, "NATS not reachable yet");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

async fn options(
    config: &NatsConfig,
    name: &str,
    role: Role,
) -> Result<ConnectOptions, async_nats::Error> {
    let connection = role.as_str();
    let dropped = Arc::new(Dropped::default());
    let mut opts = ConnectOptions::new()
        .name(name)
        .custom_inbox_prefix(inbox_prefix(name))
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(2))
        .subscription_capacity(match role {
            // JetStream replies and pull deliveries: bounded by what the
            // service itself asks for.
            Role::Core => 64 * 1024,
            Role::Edge(buffer) => buffer,
        })
        .event_callback(move |event| {
            let dropped = dropped.clone();
            async move {
                match event {
                    async_nats::Event::Connected => {
                        info!(connection, "NATS connection (re)established");
                    }
                    async_nats::Event::Disconnected => {
                        warn!(connection, "NATS connection lost; reconnecting");
                    }
                    // One event per dropped message: under a flood, one
                    // line a second with the count, not a line a message.
                    async_nats::Event::SlowConsumer(_) => {
                        if let Some(count) = dropped.record() {
                            warn!(
                                connection,
                                dropped = count,
                                "messages dropped: the service is slower than what arrives"
                            );
                        }
                    }
                    other => warn!(connection, event = %other, "NATS connection event"),
                }
            }
        });
    if let Some(path) = &config.creds {
        opts = opts.credentials_file(path).await?;
    }
    if let Some(path) = &config.nkey {
        let seed = std::fs::read_to_string(path).map_err(|source| NkeyFileError {
            path: path.clone(),
            source,
        })?;
        opts = opts.nkey(seed.trim().to_string());
    }
    if let Some((user, password)) = &config.user_password {
        opts = opts.user_and_password(user.clone(), password.clone());
    }
    if let Some(ca) = &config.tls_ca {
        opts = opts.require_tls(true).add_root_certificates(ca.clone());
    }
    if let Some((cert, key)) = &config.tls_client {
        opts = opts.add_client_certificate(cert.clone(), key.clone());
    }
    Ok(opts)
}

/// The inbox prefix of a service's connection: replies, JetStream acks and
/// pull deliveries to `upr-ingest` arrive on `_INBOX.upr-ingest.>`, which only
/// the `ingest` user may subscribe to (`deploy/nats/nats.conf`).
pub fn inbox_prefix(name: &str) -> String {
    format!("_INBOX.{name}")
}

/// Waits for a stream that another service owns (the event log, created by
/// ingest) and checks it is compatible. Only a stream's owner creates or
/// updates it, which is also all the server configuration allows
/// (`deploy/nats/nats.conf`): a reader of the stream never resets what the
/// owner was configured with (`UPR_DEDUP_WINDOW`), and a service that starts
/// first simply waits for its owner.
///
/// # Errors
/// [`SetupError::Incompatible`] naming each difference, or
/// [`SetupError::JetStream`] when JetStream answers with another error.
pub async fn await_stream(
    js: &jetstream::Context,
    want: stream::Config,
) -> Result<stream::Stream, SetupError> {
    // A stream that does not exist yet is waited for as long as it takes;
    // JetStream not answering, as long as [`patiently`] would.
    let logged = std::sync::atomic::AtomicBool::new(false);
    patiently(|| async {
        loop {
            match ensure(js, want.clone(), Owner::No).await {
                Err(SetupError::Missing { name }) => {
                    if !logged.swap(true, Ordering::Relaxed) {
                        info!(stream = %name, "waiting for the stream's owner to create it");
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                other => return other,
            }
        }
    })
    .await
}

/// Creates the stream when missing, accepts it when compatible, refuses it
/// otherwise, for the service that owns the stream (ingest for the event
/// log, the notifier for its streams). The de-duplication window and
/// description may differ (they are tuning, not semantics): an existing
/// stream's are updated to `want`.
///
/// # Errors
/// [`SetupError::Incompatible`] naming each difference, or
/// [`SetupError::JetStream`] when JetStream does not answer.
pub async fn ensure_own_stream(
    js: &jetstream::Context,
    want: stream::Config,
) -> Result<stream::Stream, SetupError> {
    ensure(js, want, Owner::Yes).await
}

/// Whether the caller owns the stream it sets up.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Owner {
    Yes,
    No,
}

/// What [`ensure`] sets up: a stream, or a bucket (a stream underneath).
/// Each says how to compare an existing one with what is wanted and how to
/// open or create it; finding, refusing and naming the differences is the
/// one path both share.
trait Wanted {
    /// What the caller gets: the stream or the bucket.
    type Handle;
    /// "stream" or "bucket", for messages.
    const KIND: &'static str;
    /// Its name, for messages.
    fn name(&self) -> &str;
    /// The stream it lives in.
    fn stream_name(&self) -> String;
    /// Each difference from `have` that makes it unusable, as
    /// `field: found X, expected Y`.
    fn differences(&self, have: &stream::Config, owner: Owner) -> Vec<String>;
    /// Opens the compatible existing one (the owner first updates what may
    /// differ).
    async fn open(
        &self,
        js: &jetstream::Context,
        existing: stream::Stream,
        have: &stream::Config,
        owner: Owner,
    ) -> Result<Self::Handle, async_nats::Error>;
    /// Creates it.
    async fn create(self, js: &jetstream::Context) -> Result<Self::Handle, async_nats::Error>;
}

impl Wanted for stream::Config {
    type Handle = stream::Stream;
    const KIND: &'static str = "stream";

    fn name(&self) -> &str {
        &self.name
    }

    fn stream_name(&self) -> String {
        self.name.clone()
    }

    fn differences(&self, have: &stream::Config, owner: Owner) -> Vec<String> {
        stream_differences(have, self, owner)
    }

    async fn open(
        &self,
        js: &jetstream::Context,
        existing: stream::Stream,
        have: &stream::Config,
        owner: Owner,
    ) -> Result<stream::Stream, async_nats::Error> {
        if owner == Owner::Yes
            && (have.duplicate_window != self.duplicate_window
                || have.description != self.description
                || limit(have.max_bytes) != limit(self.max_bytes))
        {
            info!(stream = %self.name, "updating de-duplication window / description / size bound");
            js.update_stream(self).await?;
        }
        Ok(existing)
    }

    async fn create(self, js: &jetstream::Context) -> Result<stream::Stream, async_nats::Error> {
        info!(stream = %self.name, replicas = self.num_replicas, "creating stream");
        Ok(js.create_stream(self).await?)
    }
}

impl Wanted for kv::Config {
    type Handle = kv::Store;
    const KIND: &'static str = "bucket";

    fn name(&self) -> &str {
        &self.bucket
    }

    fn stream_name(&self) -> String {
        format!("KV_{}", self.bucket)
    }

    /// An existing bucket must keep the same storage, history and replicas.
    fn differences(&self, have: &stream::Config, _: Owner) -> Vec<String> {
        let mut out = Differences::default();
        out.check_debug("storage", &have.storage, &self.storage);
        out.check(
            "history",
            &have.max_messages_per_subject.to_string(),
            &self.history.to_string(),
        );
        out.check(
            "replicas",
            &have.num_replicas.to_string(),
            &self.num_replicas.to_string(),
        );
        out.0
    }

    async fn open(
        &self,
        js: &jetstream::Context,
        _: stream::Stream,
        _: &stream::Config,
        _: Owner,
    ) -> Result<kv::Store, async_nats::Error> {
        Ok(js.get_key_value(&self.bucket).await?)
    }

    async fn create(self, js: &jetstream::Context) -> Result<kv::Store, async_nats::Error> {
        info!(bucket = %self.bucket, replicas = self.num_replicas, "creating bucket");
        Ok(js.create_key_value(self).await?)
    }
}

/// Creates `want` when missing (if the caller owns it), accepts it when
/// compatible, refuses it otherwise with each difference named.
async fn ensure<W: Wanted>(
    js: &jetstream::Context,
    want: W,
    owner: Owner,
) -> Result<W::Handle, SetupError> {
    let name = want.name().to_owned();
    let js_err = |source: async_nats::Error| SetupError::JetStream {
        kind: W::KIND,
        name: name.clone(),
        source,
    };
    match js.get_stream(want.stream_name()).await {
        Ok(mut existing) => {
            let have = existing
                .info()
                .await
                .map_err(|e| js_err(e.into()))?
                .config
                .clone();
            let differences = want.differences(&have, owner);
            if !differences.is_empty() {
                return Err(SetupError::Incompatible {
                    kind: W::KIND,
                    name,
                    differences: differences.join("; "),
                });
            }
            want.open(js, existing, &have, owner).await.map_err(js_err)
        }
        Err(e)
            if matches!(e.kind(), GetStreamErrorKind::JetStream(ref j)
                if j.error_code() == ErrorCode::STREAM_NOT_FOUND) =>
        {
            if owner == Owner::No {
                return Err(SetupError::Missing { name });
            }
            want.create(js).await.map_err(js_err)
        }
        Err(e) => Err(js_err(e.into())),
    }
}

/// The settings an existing stream or bucket has other than wanted, each
/// as `field: found H, expected W`.
#[derive(Default)]
struct Differences(Vec<String>);

impl Differences {
    /// Notes `field` when what the server has (`have`) is not what is
    /// wanted (`want`).
    fn check(&mut self, field: &str, have: &str, want: &str) {
        if have != want {
            self.0
                .push(format!("{field}: found {have}, expected {want}"));
        }
    }

    /// [`Self::check`] on the values as `Debug` writes them.
    fn check_debug<T: std::fmt::Debug>(&mut self, field: &str, have: &T, want: &T) {
        self.check(field, &format!("{have:?}"), &format!("{want:?}"));
    }
}

/// A stream limit as text; 0 (what a config asks for) and -1 (what the
/// server reports back) both mean unlimited, so they must compare equal.
fn limit(value: i64) -> String {
    if value <= 0 {
        "unlimited".to_string()
    } else {
        value.to_string()
    }
}

/// The settings whose difference changes what the system guarantees. The
/// size bound counts only for a non-owner: the owner moves it to what it is
/// configured with (so a bound added in a newer version reaches existing
/// streams).
fn stream_differences(have: &stream::Config, want: &stream::Config, owner: Owner) -> Vec<String> {
    let mut out = Differences::default();
    out.check_debug("subjects", &have.subjects, &want.subjects);
    out.check_debug("storage", &have.storage, &want.storage);
    out.check_debug("retention", &have.retention, &want.retention);
    out.check(
        "replicas",
        &have.num_replicas.to_string(),
        &want.num_replicas.to_string(),
    );
    out.check_debug("max_age", &have.max_age, &want.max_age);
    out.check(
        "max_msgs",
        &limit(have.max_messages),
        &limit(want.max_messages),
    );
    if owner == Owner::No {
        out.check("max_bytes", &limit(have.max_bytes), &limit(want.max_bytes));
    }
    out.check(
        "max_msgs_per_subject",
        &limit(have.max_messages_per_subject),
        &limit(want.max_messages_per_subject),
    );
    out.check(
        "allow_direct",
        &have.allow_direct.to_string(),
        &want.allow_direct.to_string(),
    );
    out.check(
        "allow_msg_schedules",
        &have.allow_message_schedules.to_string(),
        &want.allow_message_schedules.to_string(),
    );
    out.0
}

/// Creates the bucket when missing; an existing one must keep the same
/// storage, history and replicas.
///
/// # Errors
/// As [`ensure_own_stream`].
pub async fn ensure_bucket(
    js: &jetstream::Context,
    want: kv::Config,
) -> Result<kv::Store, SetupError> {
    ensure(js, want, Owner::Yes).await
}
