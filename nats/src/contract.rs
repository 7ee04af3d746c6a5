//! Every public name of the system, defined once: subjects, streams, buckets,
//! service names, and the JetStream configuration each of them is created with.
//!
//! The services and the tests build subjects only through this module, so a
//! rename is one edit and a typo is a compile error rather than a silent
//! mismatch between two binaries.

use std::time::Duration;

use async_nats::jetstream::{
    kv,
    stream::{self, DiscardPolicy, RetentionPolicy, StorageType},
};

use upr_domain::{Country, Envelope, EnvelopeError, EventType, NoticeKind, ReviewKey, Session};

/// Rejected payloads are kept as text cut at this many bytes, so a flood of
/// huge garbage cannot fill the rejection stream.
pub const REJECTED_PAYLOAD_BYTES: usize = 4 * 1024;

/// Subject names and builders.
pub mod subjects {
    use super::{Country, Envelope, EnvelopeError, EventType, NoticeKind, ReviewKey, Session};

    /// Prefix of intake subjects: `upr.ingest.<type>`.
    pub const INGEST_PREFIX: &str = "upr.ingest.";
    /// What ingest subscribes to.
    pub const INGEST_ALL: &str = "upr.ingest.>";
    /// Queue group shared by all ingest replicas, so each message is handled once.
    pub const INGEST_QUEUE: &str = "upr-ingest";
    /// Every rejection, requested or not, is announced here.
    pub const REJECTED: &str = "upr.rejected";
    /// All subjects of the event log.
    pub const EVENTS_ALL: &str = "upr.events.>";
    /// All notification subjects.
    pub const NOTIFY_ALL: &str = "upr.notify.>";
    /// Prefix of the query API served by the projection.
    pub const QUERY_PREFIX: &str = "upr.query";

    /// `upr.ingest.<type>`.
    pub fn ingest(event_type: EventType) -> String {
        ingest_named(event_type.as_str())
    }

    /// `upr.ingest.<type>` for a type as a sender spelled it, known or not
    /// (`upr-ingest import` sends each row to its own type's subject, and
    /// ingest answers an unknown one with `unknown_type`).
    pub fn ingest_named(type_name: &str) -> String {
        format!("{INGEST_PREFIX}{type_name}")
    }

    /// `upr.events.<COUNTRY>.<session>.<type>`: where one accepted event is stored.
    pub fn event(country: Country, session: Session, event_type: EventType) -> String {
        format!("upr.events.{}.{}.{}", country, session, event_type.as_str())
    }

    /// `upr.events.<COUNTRY>.<session>.>`: one review's whole history. Ingest uses
    /// it as the scope of its optimistic-concurrency check.
    pub fn review_events(key: ReviewKey) -> String {
        format!("upr.events.{}.{}.>", key.country, key.session)
    }

    /// Splits `upr.events.<COUNTRY>.<session>.<type>` into its parts, `None` for
    /// anything else (consumers must survive whatever is found in the stream).
    pub fn parse_event(subject: &str) -> Option<(Country, Session, EventType)> {
        let rest = subject.strip_prefix("upr.events.")?;
        let mut parts = rest.split('.');
        let country = Country::parse(parts.next()?).ok()?;
        let session = Session::new(parts.next()?.parse().ok()?).ok()?;
        let event_type = EventType::parse(parts.next()?)?;
        parts
            .next()
            .is_none()
            .then_some((country, session, event_type))
    }

    /// A message of the event log as an event: a valid envelope stored on
    /// the one subject its own country, session and type name. Every
    /// consumer of the log (ingest reading a review's history, the
    /// projection, the notifier's planner and sender) decides with this
    /// function what counts as an event, so they skip exactly the same
    /// messages written around ingest.
    ///
    /// # Errors
    /// What is wrong, for the log.
    pub fn decode_stored(subject: &str, payload: &[u8]) -> Result<Envelope, EnvelopeError> {
        // One strict typed pass (`Envelope`'s own decoder refuses
        // duplicated and unknown keys as it reads).
        let event = serde_json::from_slice::<Envelope>(payload).map_err(EnvelopeError::Json)?;
        let expected = event_subject(&event);
        if subject != expected {
            return Err(EnvelopeError::WrongSubject {
                expected,
                subject: subject.to_owned(),
            });
        }
        Ok(event)
    }

    /// The subject `event` is stored on.
    pub fn event_subject(event: &Envelope) -> String {
        self::event(event.country, event.session, event.event_type())
    }

    /// `upr.notify.<kind>.<COUNTRY>`: `reminder`, `rescheduled`,
    /// `cancelled` or `corrected` notices about a state's reviews.
    pub fn notify(kind: NoticeKind, country: Country) -> String {
        format!("upr.notify.{}.{country}", kind.as_str())
    }
}

/// Names of the services as NATS micro services (`nats micro ls`), also the
/// names of the binaries.
pub mod services {
    /// The ingest service.
    pub const INGEST: &str = "upr-ingest";
    /// The projection service (read models and queries).
    pub const PROJECTION: &str = "upr-projection";
    /// The notifier service (reminders).
    pub const NOTIFIER: &str = "upr-notifier";
    /// The HTTP gateway (read only; not a NATS micro service: its health
    /// is its own `/healthz`).
    pub const GATEWAY: &str = "upr-gateway";
}

/// Names of the environment variables the binaries read ([`crate::config`]
/// reads and checks them). Everything that reads, sets or documents one
/// takes its name from here, so a variable cannot be read under one spelling
/// and documented or set under another.
pub mod env {
    /// Server URL, or a comma-separated list of cluster nodes.
    pub const NATS_URL: &str = "NATS_URL";
    /// A file holding the user's nkey seed.
    pub const NATS_NKEY: &str = "NATS_NKEY";
    /// User name, with [`NATS_PASSWORD`].
    pub const NATS_USER: &str = "NATS_USER";
    /// Password, with [`NATS_USER`].
    pub const NATS_PASSWORD: &str = "NATS_PASSWORD";
    /// A credentials file (JWT + nkey).
    pub const NATS_CREDS: &str = "NATS_CREDS";
    /// The CA of the server's certificate.
    pub const NATS_TLS_CA: &str = "NATS_TLS_CA";
    /// A client certificate, with [`NATS_TLS_KEY`].
    pub const NATS_TLS_CERT: &str = "NATS_TLS_CERT";
    /// The key of the client certificate, with [`NATS_TLS_CERT`].
    pub const NATS_TLS_KEY: &str = "NATS_TLS_KEY";
    /// Replicas of the streams and buckets a service creates.
    pub const UPR_REPLICAS: &str = "UPR_REPLICAS";
    /// The log filter.
    pub const RUST_LOG: &str = "RUST_LOG";
    /// `json` or `text` logs.
    pub const UPR_LOG_FORMAT: &str = "UPR_LOG_FORMAT";
    /// Where a running service writes its micro-service id.
    pub const UPR_HEALTH_FILE: &str = "UPR_HEALTH_FILE";
    /// Ingest: the event log's de-duplication window.
    pub const UPR_DEDUP_WINDOW: &str = "UPR_DEDUP_WINDOW";
    /// Ingest: how many reviews it appends to concurrently.
    pub const UPR_INGEST_WORKERS: &str = "UPR_INGEST_WORKERS";
    /// Ingest: how many reviews' state it keeps in memory.
    pub const UPR_INGEST_CACHE: &str = "UPR_INGEST_CACHE";
    /// Ingest: intake messages per second each party (account) may send.
    pub const UPR_INTAKE_RATE: &str = "UPR_INTAKE_RATE";
    /// Ingest: parties that may retract any event (comma-separated names).
    pub const UPR_EDITORS: &str = "UPR_EDITORS";
    /// Projection: most events folded per batch.
    pub const UPR_PROJECTION_BATCH: &str = "UPR_PROJECTION_BATCH";
    /// Projection: memory for cached read-model values, in MiB.
    pub const UPR_PROJECTION_CACHE_MB: &str = "UPR_PROJECTION_CACHE_MB";
    /// Notifier and projection: the reminder lead times.
    pub const UPR_REMINDER_LEADS: &str = "UPR_REMINDER_LEADS";
    /// Notifier: the durable consumers kept for readers.
    pub const UPR_READER_CONSUMERS: &str = "UPR_READER_CONSUMERS";
    /// Gateway: the address its HTTP server listens on.
    pub const UPR_HTTP_ADDR: &str = "UPR_HTTP_ADDR";
    /// Gateway: most HTTP requests in progress at once; past it, 503 at once.
    pub const UPR_HTTP_MAX_REQUESTS: &str = "UPR_HTTP_MAX_REQUESTS";
    /// Gateway: most `GET /events` streams open at once; past it, 503.
    pub const UPR_SSE_MAX_CLIENTS: &str = "UPR_SSE_MAX_CLIENTS";
    /// Gateway: the JSON file listing the webhook subscriptions.
    pub const UPR_WEBHOOKS: &str = "UPR_WEBHOOKS";
    /// Gateway: the longest pause between two attempts at a webhook.
    pub const UPR_WEBHOOK_RETRY_MAX: &str = "UPR_WEBHOOK_RETRY_MAX";
    /// The tests and the benchmark: which `nats-server` binary to start.
    pub const NATS_SERVER_BIN: &str = "NATS_SERVER_BIN";
}

// --- ingest: internal names -------------------------------------------------

/// Ingest's names that are not subjects of the public contract.
pub mod ingest {
    /// Name of the intake endpoint in the micro service (`nats micro info
    /// upr-ingest`), whose STATS data carries the accepted/duplicate/rejected counts.
    pub const ENDPOINT: &str = "intake";
    /// JetStream header scoping `Nats-Expected-Last-Subject-Sequence` to a
    /// wildcard, here one review's subjects `upr.events.<C>.<S>.>`.
    pub const EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT: &str =
        "Nats-Expected-Last-Subject-Sequence-Subject";

    /// The header a service import adds to every request and publish that
    /// crosses from another account: JSON whose `acc` is the sender's
    /// account, which is a party's name (contract V3.1). The server
    /// replaces a copy the client sent; exactly this spelling.
    pub const REQUEST_INFO: &str = "Nats-Request-Info";

    /// The header a replica hands a command over with: who recorded it, as
    /// the receiving replica authenticated it (empty: nobody). Trusted only
    /// on the hand-over subjects, which only the service account reaches.
    pub const RECORDED_BY: &str = "Upr-Recorded-By";

    /// `$JS.API.DIRECT.GET.<stream>`: where ingest reads a review's history.
    pub fn direct_get(stream: &str) -> String {
        format!("$JS.API.DIRECT.GET.{stream}")
    }

    /// `$JS.API.STREAM.MSG.GET.<stream>`: answered by the stream's leader
    /// only, so ingest confirms there that a review has nothing newer before
    /// a refusal is final (a direct get may be answered by a lagging replica).
    pub fn leader_get(stream: &str) -> String {
        format!("$JS.API.STREAM.MSG.GET.{stream}")
    }

    /// Prefix of the subjects one ingest replica hands a command to the
    /// replica owning its review on: `upr.internal.ingest.<instance>.<type>`.
    /// Inside the service account only; not part of the public contract.
    pub const ROUTE_PREFIX: &str = "upr.internal.ingest.";

    /// `upr.internal.ingest.<instance>.<type>`.
    pub fn route(instance: &str, event_type: &str) -> String {
        format!("{ROUTE_PREFIX}{instance}.{event_type}")
    }

    /// `upr.internal.ingest.<instance>.*`: what one replica listens on.
    pub fn route_all(instance: &str) -> String {
        format!("{ROUTE_PREFIX}{instance}.*")
    }

    /// The intake type of a hand-over subject (its last token).
    pub fn route_event_type(subject: &str) -> Option<&str> {
        subject
            .strip_prefix(ROUTE_PREFIX)?
            .split_once('.')
            .map(|(_, ty)| ty)
    }
}

// --- end ingest ---------------------------------------------------------------

/// The event log.
pub const EVENTS_STREAM: &str = "UPR_EVENTS";
/// Every refusal, kept a week.
pub const REJECTED_STREAM: &str = "UPR_REJECTED";
/// Every notification sent.
pub const NOTIFICATIONS_STREAM: &str = "UPR_NOTIFICATIONS";
/// Read model: one value per review, key `<COUNTRY>.<session>`.
pub const REVIEWS_BUCKET: &str = "upr_reviews";
/// Read model: one value per session, key `<session>`.
pub const SESSIONS_BUCKET: &str = "upr_sessions";
/// Read model: one value per country, key `<COUNTRY>`.
pub const COUNTRIES_BUCKET: &str = "upr_countries";

/// How long rejections are kept (contract: 7 days).
pub const REJECTED_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);
/// Size bound of `UPR_REJECTED`: a publisher sending only refusals fills at
/// most this much disk, then the oldest refusals go first (discard old).
pub const REJECTED_MAX_BYTES: i64 = 256 * 1024 * 1024;

/// Largest message a publisher may send in the shipped configuration
/// (`limits.max_payload` of the `PUBLISHER` account): intake is 64 KiB, up
/// to twice that is still answered `too_large`.
pub const PEOPLE_MAX_INTAKE_MESSAGE: usize = 128 * 1024;

/// Largest message a reader may send in the shipped configuration
/// (`limits.max_payload` of the `READER` account).
pub const PEOPLE_MAX_QUERY_MESSAGE: usize = 8 * 1024;

/// Default JetStream de-duplication window of the event log: how long a retry
/// with the same `event_id` is caught by the server itself. Ingest also checks
/// a review's own history, which has no time limit (see docs/architecture.md).
pub const DEFAULT_DEDUP_WINDOW: Duration = Duration::from_secs(3600);

/// The event log: file storage, kept forever, direct gets on so ingest can
/// read a review's last message without a consumer.
///
/// Durability (docs/reliability.md): every stream and bucket here is file
/// storage with the server's default persist mode (`persist_mode` unset),
/// so a publish is acknowledged only after the message is written to the
/// store: it survives a crash of nats-server (`kill -9`). Whether it also
/// survives a power loss is the server's `jetstream.sync_interval` (default
/// 2 min; `always` fsyncs before each ack), an operator setting, not a
/// stream one. Replicas come from `UPR_REPLICAS` (3 on a cluster: the ack
/// then waits for a quorum of 2).
pub fn events_stream(replicas: usize, dedup_window: Duration) -> stream::Config {
    stream::Config {
        name: EVENTS_STREAM.into(),
        description: Some("UPR Tracker event log: every accepted event, never changed".into()),
        subjects: vec![subjects::EVENTS_ALL.into()],
        storage: StorageType::File,
        retention: RetentionPolicy::Limits,
        discard: DiscardPolicy::Old,
        num_replicas: replicas,
        duplicate_window: dedup_window,
        allow_direct: true,
        deny_delete: true,
        deny_purge: true,
        ..Default::default()
    }
}

/// Rejections: file storage, one week.
pub fn rejected_stream(replicas: usize) -> stream::Config {
    stream::Config {
        name: REJECTED_STREAM.into(),
        description: Some("UPR Tracker: every refused intake message, kept 7 days".into()),
        subjects: vec![subjects::REJECTED.into()],
        storage: StorageType::File,
        retention: RetentionPolicy::Limits,
        discard: DiscardPolicy::Old,
        max_age: REJECTED_MAX_AGE,
        max_bytes: REJECTED_MAX_BYTES,
        num_replicas: replicas,
        ..Default::default()
    }
}

/// Notifications: every reminder and change notice, de-duplicated by its id.
pub fn notifications_stream(replicas: usize, dedup_window: Duration) -> stream::Config {
    stream::Config {
        name: NOTIFICATIONS_STREAM.into(),
        description: Some("UPR Tracker: every notification sent".into()),
        subjects: vec![subjects::NOTIFY_ALL.into()],
        storage: StorageType::File,
        retention: RetentionPolicy::Limits,
        discard: DiscardPolicy::Old,
        num_replicas: replicas,
        duplicate_window: dedup_window,
        allow_direct: true,
        ..Default::default()
    }
}

/// A read-model bucket: only the latest value matters (history 1), file storage.
pub fn read_model_bucket(bucket: &str, replicas: usize) -> kv::Config {
    kv::Config {
        bucket: bucket.into(),
        description: format!("UPR Tracker read model {bucket}"),
        history: 1,
        storage: StorageType::File,
        num_replicas: replicas,
        ..Default::default()
    }
}

// ---- projection: its consumer and its query subjects -----------------------

/// The bucket holding the projection's lease: the one key `active` names the
/// instance that consumes and answers queries; the others stand by. Every
/// value expires [`PROJECTION_LEASE_TTL`] after it was written (the bucket's
/// max age), so a dead holder's lease goes by itself, timed by the server's
/// clock alone.
pub const PROJECTION_LEASE_BUCKET: &str = "upr_projection_lease";
/// How long a lease lasts unless renewed; the holder renews it every second.
pub const PROJECTION_LEASE_TTL: Duration = Duration::from_secs(3);

/// `upr_projection_lease` as the projection creates it: in memory (a lease
/// outliving a server restart would only delay the next holder).
pub fn projection_lease_bucket(replicas: usize) -> kv::Config {
    kv::Config {
        bucket: PROJECTION_LEASE_BUCKET.into(),
        description: "UPR Tracker projection: which instance is active".into(),
        history: 1,
        max_age: PROJECTION_LEASE_TTL,
        storage: StorageType::Memory,
        num_replicas: replicas,
        ..Default::default()
    }
}

/// Durable pull consumer of the projection on `UPR_EVENTS`. Its ack floor and
/// the `last_seq` stored in each read-model value are the projection's
/// checkpoint.
pub const PROJECTION_CONSUMER: &str = "upr-projection";

/// Most events the projection folds in one batch.
pub const PROJECTION_MAX_BATCH: usize = 20_000;

/// Most messages the projection holds unacked: it acks at checkpoints (at
/// most 200,000 events apart while catching up), so this is above that plus
/// a batch and the server never throttles a catch-up.
pub const PROJECTION_MAX_ACK_PENDING: i64 = 300_000;

/// The projection's consumer: from sequence 1, ack-all (one ack per
/// checkpoint), a generous ack wait because messages are acked only after
/// their KV writes are durable.
pub fn projection_consumer() -> async_nats::jetstream::consumer::pull::Config {
    use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy};
    async_nats::jetstream::consumer::pull::Config {
        durable_name: Some(PROJECTION_CONSUMER.into()),
        description: Some(
            "UPR Tracker projection: folds the log into upr_reviews, upr_sessions, upr_countries"
                .into(),
        ),
        deliver_policy: DeliverPolicy::All,
        ack_policy: AckPolicy::All,
        ack_wait: Duration::from_secs(60),
        max_ack_pending: PROJECTION_MAX_ACK_PENDING,
        ..Default::default()
    }
}

/// Query subjects served by the projection (`upr.query.…`).
pub mod query {
    use super::{Country, ReviewKey, Session, subjects};

    /// Group of the query endpoints in the micro service.
    pub const GROUP: &str = subjects::QUERY_PREFIX;

    /// The query endpoints of the micro service: name (as `nats micro info`
    /// shows it) and subject under [`GROUP`]. The first token of each
    /// subject is what the projection's parser matches on.
    pub const ENDPOINTS: [(&str, &str); 7] = [
        ("review", "review.*.*"),
        ("session", "session.*"),
        ("country", "country.*"),
        ("upcoming", "upcoming"),
        ("status", "status"),
        ("calendar", "calendar"),
        ("country_calendar", "calendar.*"),
    ];

    /// What follows `upr.query.` in a query subject; `None` for any other subject.
    pub fn tail(subject: &str) -> Option<&str> {
        subject
            .strip_prefix(GROUP)
            .and_then(|rest| rest.strip_prefix('.'))
    }
    /// `upr.query.status`.
    pub const STATUS: &str = "upr.query.status";
    /// `upr.query.upcoming`.
    pub const UPCOMING: &str = "upr.query.upcoming";

    /// `upr.query.review.<COUNTRY>.<session>`.
    pub fn review(key: ReviewKey) -> String {
        format!("upr.query.review.{}.{}", key.country, key.session)
    }

    /// `upr.query.session.<session>`.
    pub fn session(session: Session) -> String {
        format!("upr.query.session.{session}")
    }

    /// `upr.query.country.<COUNTRY>`.
    pub fn country(country: Country) -> String {
        format!("upr.query.country.{country}")
    }

    /// `upr.query.calendar`: every review with a date, as iCalendar.
    pub const CALENDAR: &str = "upr.query.calendar";

    /// `upr.query.calendar.<COUNTRY>`: one state's reviews, as iCalendar.
    pub fn calendar(country: Country) -> String {
        format!("upr.query.calendar.{country}")
    }

    /// The `Content-Type` header of a calendar answer.
    pub const CALENDAR_CONTENT_TYPE: &str = "text/calendar";
}

// ---- notifier: its timers, state, consumers and status -----------------------

/// The notifier's names that are not part of the public contract, and the
/// de-duplication window of `UPR_NOTIFICATIONS`.
pub mod notifier {
    use std::time::Duration;

    use async_nats::jetstream::{
        consumer::{AckPolicy, DeliverPolicy, PriorityPolicy, pull},
        kv,
        stream::{self, DiscardPolicy, RetentionPolicy, StorageType},
    };

    use upr_domain::{Country, Session};

    /// The lead times when `UPR_REMINDER_LEADS` is unset.
    pub const DEFAULT_LEADS: &str = "30d,7d,1d";

    /// De-duplication window of `UPR_NOTIFICATIONS`: long, so a notifier that
    /// crashed between publishing and recording its sent-mark is still caught
    /// by the server days later (the sent-mark covers anything older).
    pub const NOTIFICATIONS_DEDUP_WINDOW: Duration = Duration::from_secs(7 * 24 * 3600);

    /// The stream holding one JetStream message schedule per pending reminder
    /// and the messages those schedules produce when they come due.
    pub const TIMERS_STREAM: &str = "UPR_NOTIFIER_TIMERS";
    /// Every subject of [`TIMERS_STREAM`].
    pub const TIMERS_ALL: &str = "upr.notifier.timer.>";
    /// The subjects the schedules write to when they fire.
    pub const DUE_ALL: &str = "upr.notifier.timer.due.>";
    /// The notifier's own state: `review.<C>.<S>` and `sent.<C>.<S>.<lead>.<ms>`.
    pub const STATE_BUCKET: &str = "upr_notifier";
    /// Durable consumer of `UPR_EVENTS`.
    pub const EVENTS_CONSUMER: &str = "upr-notifier";
    /// Durable consumer of the fired timers.
    pub const TIMERS_CONSUMER: &str = "upr-notifier-timers";
    /// The consumers when `UPR_READER_CONSUMERS` is unset: one for the
    /// `reader` account of `deploy/nats/nats.conf`.
    pub const DEFAULT_READER_CONSUMERS: &str = "reader";

    /// A durable consumer on `UPR_NOTIFICATIONS` for someone who follows the
    /// notifications: pulled (`nats consumer next UPR_NOTIFICATIONS <name>`),
    /// from the first notification kept, each acknowledged. The notifier
    /// creates it, not its reader: a reader allowed to create consumers in
    /// the service account could create a push consumer whose deliver
    /// subject is the event log or a bucket, a write that no subject
    /// permission can see (it is in the request's payload).
    ///
    /// What one pull may ask is bounded (contract V3.4): a reader can make
    /// the server send little more than the notifications themselves.
    /// nats-server has no floor on a pull's `idle_heartbeat` (only a ceiling,
    /// half its expiry), so heartbeats are bounded by the number of waiting
    /// pulls: [`READER_MAX_WAITING`] pulls at one heartbeat per millisecond
    /// at most, for everyone on this consumer together, however many pulls
    /// or connections a reader opens.
    pub fn reader_consumer(name: &str) -> pull::Config {
        pull::Config {
            durable_name: Some(name.into()),
            description: Some(format!("UPR Tracker: notifications for {name}")),
            deliver_policy: DeliverPolicy::All,
            ack_policy: AckPolicy::Explicit,
            ack_wait: Duration::from_secs(30),
            max_ack_pending: 1000,
            max_waiting: READER_MAX_WAITING,
            max_batch: READER_MAX_BATCH,
            max_bytes: READER_MAX_BYTES,
            max_expires: READER_MAX_EXPIRES,
            ..Default::default()
        }
    }

    /// Pulls that may wait at once on a reader consumer (the server's
    /// default is 512). The server cannot change it on an existing consumer,
    /// so the notifier replaces an older one, resuming after its ack floor.
    pub const READER_MAX_WAITING: i64 = 8;
    /// Most notifications one pull may ask for.
    pub const READER_MAX_BATCH: i64 = 256;
    /// Most bytes one pull may ask for (1 MiB).
    pub const READER_MAX_BYTES: i64 = 1024 * 1024;
    /// Longest a pull may wait (`nats consumer next` waits 5 s; the Rust
    /// and Go clients' default is 30 s).
    pub const READER_MAX_EXPIRES: Duration = Duration::from_secs(60);

    /// `upr.notifier.status`: `{"ok":true,"pending":N,"sent":N,"late":N,"skipped":N}`.
    pub const STATUS: &str = "upr.notifier.status";

    /// `upr.notifier.timer.at.<C>.<S>.<lead>`: the schedule of one reminder.
    /// One subject per review and lead, so publishing again replaces it.
    pub fn schedule(country: Country, session: Session, lead: &str) -> String {
        format!("upr.notifier.timer.at.{country}.{session}.{lead}")
    }

    /// `upr.notifier.timer.due.<C>.<S>.<lead>`: where that schedule fires.
    pub fn due(country: Country, session: Session, lead: &str) -> String {
        format!("upr.notifier.timer.due.{country}.{session}.{lead}")
    }

    /// `upr.notifier.timer.*.<C>.<S>.>`: every timer of one review, for a purge.
    pub fn review_timers(country: Country, session: Session) -> String {
        format!("upr.notifier.timer.*.{country}.{session}.>")
    }

    /// The timers stream: schedules allowed, one message per subject (a
    /// schedule or its fired message), so its size is bounded by the number
    /// of reviews times leads.
    pub fn timers_stream(replicas: usize) -> stream::Config {
        stream::Config {
            name: TIMERS_STREAM.into(),
            description: Some(
                "UPR Tracker notifier: one message schedule per pending reminder".into(),
            ),
            subjects: vec![TIMERS_ALL.into()],
            storage: StorageType::File,
            retention: RetentionPolicy::Limits,
            discard: DiscardPolicy::Old,
            max_messages_per_subject: 1,
            num_replicas: replicas,
            allow_message_schedules: true,
            ..Default::default()
        }
    }

    /// The notifier's state bucket (history 1, file storage).
    pub fn state_bucket(replicas: usize) -> kv::Config {
        kv::Config {
            bucket: STATE_BUCKET.into(),
            description: "UPR Tracker notifier: review dates and sent-marks".into(),
            history: 1,
            storage: StorageType::File,
            num_replicas: replicas,
            ..Default::default()
        }
    }

    /// The notifier's consumer of `UPR_EVENTS`: one event in flight across all
    /// replicas (`max_ack_pending` 1), so events of a review are applied in
    /// log order; a short ack wait so a killed replica's event is retried soon.
    ///
    /// One replica plans at a time: the server pins the priority group
    /// [`PLANNER_GROUP`] to one puller and moves the pin to a standby when
    /// it stops pulling for [`PLANNER_PIN_TIMEOUT`]. The pinned replica
    /// applies up to [`PLANNER_IN_FLIGHT`] events at once, in order within
    /// each review (services/notifier/src/planner.rs).
    #[allow(clippy::cast_possible_wrap, reason = "PLANNER_IN_FLIGHT is 256")]
    pub fn events_consumer() -> pull::Config {
        pull::Config {
            durable_name: Some(EVENTS_CONSUMER.into()),
            description: Some("UPR Tracker notifier: plans reminders from the event log".into()),
            deliver_policy: DeliverPolicy::All,
            ack_policy: AckPolicy::Explicit,
            ack_wait: Duration::from_secs(5),
            max_ack_pending: PLANNER_IN_FLIGHT as i64,
            priority_policy: PriorityPolicy::PinnedClient,
            priority_groups: vec![PLANNER_GROUP.into()],
            priority_timeout: PLANNER_PIN_TIMEOUT,
            ..Default::default()
        }
    }

    /// The priority group the notifier's replicas pull the event log in.
    pub const PLANNER_GROUP: &str = "planner";
    /// How long the pinned planner may go without pulling before a standby
    /// takes over. Pulls expire every few seconds, so a live replica keeps
    /// its pin; a dead one loses it after this.
    pub const PLANNER_PIN_TIMEOUT: Duration = Duration::from_secs(4);
    /// Events the pinned planner holds at once.
    pub const PLANNER_IN_FLIGHT: usize = 256;

    /// Fired timers one notifier replica holds at once. A timer fires up
    /// to `TIMER_EARLY` (2 s) before its reminder is due and is held until
    /// then, so this bounds the steady rate: 1,024 held for 2 s is 512
    /// reminders a second (10,000 due within a minute need 167). The timers
    /// consumer's `max_ack_pending`, so the server and the sender bound the
    /// same thing with the same figure.
    pub const TIMERS_IN_HAND: usize = 1024;

    /// The notifier's consumer of fired timers: each goes to one replica; a
    /// short ack wait so a killed replica's reminder is retried within seconds.
    #[allow(clippy::cast_possible_wrap, reason = "TIMERS_IN_HAND is 1024")]
    pub fn timers_consumer() -> pull::Config {
        pull::Config {
            durable_name: Some(TIMERS_CONSUMER.into()),
            description: Some("UPR Tracker notifier: sends reminders whose timer fired".into()),
            deliver_policy: DeliverPolicy::All,
            ack_policy: AckPolicy::Explicit,
            ack_wait: Duration::from_secs(5),
            max_ack_pending: TIMERS_IN_HAND as i64,
            filter_subject: DUE_ALL.into(),
            ..Default::default()
        }
    }
}

// ---- end notifier -------------------------------------------------------------

// ---- gateway: HTTP defaults ----------------------------------------------------

/// The HTTP gateway's names and defaults (contract V3.5).
pub mod gateway {
    use std::time::Duration;

    use async_nats::jetstream::{kv, stream::StorageType};

    /// Where the gateway listens when `UPR_HTTP_ADDR` is unset: loopback
    /// only, so a gateway started by hand is not reachable from the network.
    pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:8080";
    /// Requests in progress at once when `UPR_HTTP_MAX_REQUESTS` is unset.
    pub const DEFAULT_MAX_REQUESTS: &str = "256";
    /// How long the gateway waits for any NATS answer. Above the 5 s a query
    /// with `min_seq` may wait in the projection (contract section 4), so
    /// that wait ends with the projection's own `timeout` answer first.
    pub const NATS_TIMEOUT: Duration = Duration::from_secs(7);

    /// `GET /events` streams open at once when `UPR_SSE_MAX_CLIENTS` is
    /// unset. They live outside `UPR_HTTP_MAX_REQUESTS` (they last for
    /// hours), so they get a cap of their own.
    pub const DEFAULT_SSE_MAX_CLIENTS: &str = "1000";
    /// The longest pause between two attempts at a webhook when
    /// `UPR_WEBHOOK_RETRY_MAX` is unset.
    pub const DEFAULT_WEBHOOK_RETRY_MAX: &str = "5m";
    /// Prefix of the durable consumer on `UPR_NOTIFICATIONS` that delivered
    /// one webhook subscription before the gateway kept its positions in
    /// [`STATE_BUCKET`]: `upr-gateway-webhook-<name>`. Only read now, once,
    /// to resume a subscription where such a consumer had got to.
    pub const WEBHOOK_CONSUMER_PREFIX: &str = "upr-gateway-webhook-";

    /// The earlier durable consumer of the webhook subscription `name`.
    pub fn webhook_consumer(name: &str) -> String {
        format!("{WEBHOOK_CONSUMER_PREFIX}{name}")
    }

    /// The gateway's own state: how far each webhook subscription has been
    /// delivered (`webhook.<name>`: the stream sequence in
    /// `UPR_NOTIFICATIONS`, as decimal text).
    ///
    /// The notifier creates it, not the gateway: whoever may create a stream
    /// or a consumer chooses its configuration (a stream's subjects, a push
    /// consumer's deliver subject), which no subject permission can see. So
    /// the gateway's user creates nothing on JetStream; all it may write is
    /// values in this bucket.
    pub const STATE_BUCKET: &str = "upr_gateway";

    /// The key of the webhook subscription `name` in [`STATE_BUCKET`].
    pub fn webhook_position_key(name: &str) -> String {
        format!("webhook.{name}")
    }

    /// [`STATE_BUCKET`]: one value per subscription, small and bounded, so
    /// that even a stolen gateway key can keep little there.
    pub fn state_bucket(replicas: usize) -> kv::Config {
        kv::Config {
            bucket: STATE_BUCKET.into(),
            description: "UPR Tracker gateway: how far each webhook has been delivered".into(),
            history: 1,
            max_value_size: 32,
            max_bytes: 1024 * 1024,
            storage: StorageType::File,
            num_replicas: replicas,
            ..Default::default()
        }
    }
}

// ---- end gateway ---------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    const KZ: &str = r#"{"id":"0190f3a2-7b1c-7d4e-9a2b-3c4d5e6f7a8b","type":"review_scheduled","schema":1,"country":"KZ","session":48,"occurred_at":"2024-11-06T10:00:00Z","recorded_at":"2024-11-06T10:00:00.123Z","source":null,"data":{"scheduled_for":"2025-01-23T08:30:00Z","location":"Geneva"}}"#;
    const KZ_SUBJECT: &str = "upr.events.KZ.48.review_scheduled";

    #[test]
    fn canonical_and_hand_written_envelopes_decode_alike() {
        let canonical = subjects::decode_stored(KZ_SUBJECT, KZ.as_bytes()).unwrap();
        assert_eq!(canonical, Envelope::from_json(KZ.as_bytes()).unwrap());
        // Another key order and spacing: the strict path, same envelope.
        let v: serde_json::Value = serde_json::from_str(KZ).unwrap();
        let pretty = serde_json::to_vec_pretty(&v).unwrap();
        assert_eq!(
            subjects::decode_stored(KZ_SUBJECT, &pretty).unwrap(),
            canonical
        );
        // `data` before `type`: read as a strict tree first, same envelope.
        let data_first = format!(
            r#"{{"data":{{"scheduled_for":"2025-01-23T08:30:00Z","location":"Geneva"}},{}"#,
            KZ[1..].replace(
                r#","data":{"scheduled_for":"2025-01-23T08:30:00Z","location":"Geneva"}"#,
                ""
            )
        );
        assert_eq!(
            subjects::decode_stored(KZ_SUBJECT, data_first.as_bytes()).unwrap(),
            canonical
        );
    }

    #[test]
    fn a_stored_message_is_an_event_only_on_its_own_subject_and_strictly_valid() {
        let duplicated = KZ.replace(
            r#""location":"Geneva""#,
            r#""location":"Geneva","location":"Bern""#,
        );
        let duplicated_top = KZ.replace(r#""session":48,"#, r#""session":48,"session":49,"#);
        let data_first_duplicated = format!(
            r#"{{"data":{{"scheduled_for":"2025-01-23T08:30:00Z","location":"Geneva","location":"Bern"}},{}"#,
            KZ[1..].replace(
                r#","data":{"scheduled_for":"2025-01-23T08:30:00Z","location":"Geneva"}"#,
                ""
            )
        );
        let unknown = KZ.replace(r#""source":null,"#, r#""source":null,"extra":1,"#);
        let trailing = format!("{KZ} {{}}");
        let cases: [(&str, &[u8]); 10] = [
            (KZ_SUBJECT, b"{not json"),
            (KZ_SUBJECT, b""),
            (KZ_SUBJECT, duplicated.as_bytes()),
            (KZ_SUBJECT, duplicated_top.as_bytes()),
            (KZ_SUBJECT, data_first_duplicated.as_bytes()),
            (KZ_SUBJECT, unknown.as_bytes()),
            (KZ_SUBJECT, trailing.as_bytes()),
            ("upr.events.CH.48.review_scheduled", KZ.as_bytes()),
            ("upr.events.KZ.48.review_held", KZ.as_bytes()),
            // Every consumer reads subjects as ingest writes them.
            ("upr.events.kz.48.review_scheduled", KZ.as_bytes()),
        ];
        for (subject, payload) in cases {
            let decoded = subjects::decode_stored(subject, payload);
            if payload == data_first_duplicated.as_bytes() {
                let why = decoded.as_ref().unwrap_err().to_string();
                assert!(why.contains("duplicated key"), "{why}");
            }
            assert!(
                decoded.is_err(),
                "{subject} {}",
                String::from_utf8_lossy(payload)
            );
        }
    }

    #[test]
    fn event_subjects_round_trip_and_reject_anything_else() {
        let kz = Country::parse("kz").unwrap();
        let s48 = Session::new(48).unwrap();
        let subject = subjects::event(kz, s48, EventType::ReviewScheduled);
        assert_eq!(subject, "upr.events.KZ.48.review_scheduled");
        assert_eq!(
            subjects::parse_event(&subject),
            Some((kz, s48, EventType::ReviewScheduled))
        );
        for bad in [
            "upr.events.KZ.48",
            "upr.events.KZ.48.review_scheduled.x",
            "upr.events.XX.48.review_scheduled",
            "upr.events.KZ.0.review_scheduled",
            "upr.events.KZ.48.nope",
            "upr.ingest.review_scheduled",
        ] {
            assert_eq!(subjects::parse_event(bad), None, "{bad}");
        }
        let key = ReviewKey {
            country: kz,
            session: s48,
        };
        assert_eq!(subjects::review_events(key), "upr.events.KZ.48.>");
    }
}
