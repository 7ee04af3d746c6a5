//! From intake message to reply: validate, route to the review's worker,
//! decide against the log, append, answer.
//!
//! Several replicas: a command for a review another replica owns is handed
//! to it ([`crate::route`]) and its answer relayed, so each review's state
//! lives in one replica's cache.
//!
//! Concurrency: reviews are sharded by hash over N workers. A worker handles
//! its messages one at a time, so one review's commands are decided and
//! appended in arrival order, while the N workers keep up to N appends in
//! flight at once. Each worker owns its part of the review cache, so there
//! are no locks. Queues are bounded: when a worker falls behind, the intake
//! loop waits, the subscription buffers, and requesters (who wait for their
//! reply) slow down.

use std::{
    hash::{DefaultHasher, Hash, Hasher},
    sync::Arc,
    time::Duration,
};

use async_nats::{Client, Message, RequestErrorKind, service::Request};
use bytes::Bytes;
use serde_json::json;
use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore, mpsc},
    time::Instant,
};
use tracing::{Instrument, debug, info_span, warn};
use upr_domain::{
    Command, Decision, Editors, ErrorCode, IdInUse, PartyName, RejectError, ReviewKey, Timestamp,
    parse_intake,
};
use upr_nats::{
    contract::{ingest, subjects},
    service::requester_account,
};
use uuid::Uuid;

use crate::{
    cache::ReviewCache,
    rate::{IntakeRate, Verdict},
    rejection::{RecordSender, RejectionRecord},
    requester,
    route::Peers,
    stats::Counters,
    store::{EventLog, HistoryInbox, StoreError},
};

/// Messages waiting for one worker; beyond this the intake loop waits.
pub const WORKER_QUEUE: usize = 64;

/// Bytes of intake payload taken in and not yet answered, over every queue
/// (waiting to be parsed, waiting for a worker). The client library bounds
/// its buffer by message count only, so the intake loop does nothing but
/// take a message and its share of this budget; past it the message is
/// answered `unavailable` at once ("busy") and never buffered.
pub const QUEUED_BYTES: usize = 16 * 1024 * 1024;

/// A message taken in, holding its share of [`QUEUED_BYTES`].
pub type Admitted = (Intake, OwnedSemaphorePermit);

/// How long a replica waits for the owner of a review to answer a command
/// it handed over: the owner's [`BUDGET`] and some queueing, still inside
/// a `nats req`'s 5 s.
pub const HAND_OVER_WAIT: Duration = Duration::from_secs(4);

/// An intake message and where its answer goes.
pub enum Intake {
    /// From the public intake endpoint (the queue group).
    Endpoint(Request),
    /// Handed over by another replica on `upr.internal.ingest.<me>.<type>`;
    /// the answer goes back to that replica, which relays it.
    HandedOver {
        /// The message as the other replica received it, on the hand-over subject.
        message: Message,
        /// The connection to answer on.
        client: Client,
    },
}

impl Intake {
    /// The message as received.
    pub fn message(&self) -> &Message {
        match self {
            Self::Endpoint(request) => &request.message,
            Self::HandedOver { message, .. } => message,
        }
    }

    /// The intake type the sender named (the subject's last part).
    fn event_type(&self) -> &str {
        let subject = self.message().subject.as_str();
        match self {
            Self::Endpoint(_) => subject.strip_prefix(subjects::INGEST_PREFIX),
            Self::HandedOver { .. } => ingest::route_event_type(subject),
        }
        .unwrap_or(subject)
    }

    /// Who sent it, as the server authenticated it ([`crate::requester`]).
    fn recorded_by(&self, trusted: bool) -> Option<PartyName> {
        match self {
            Self::Endpoint(request) => {
                requester::from_request_info(request.message.headers.as_ref(), trusted)
            }
            Self::HandedOver { message, .. } => requester::from_hand_over(message.headers.as_ref()),
        }
    }

    /// The public intake subject the sender used, for records and logs.
    fn intake_subject(&self) -> String {
        match self {
            Self::Endpoint(request) => request.message.subject.to_string(),
            Self::HandedOver { .. } => format!("{}{}", subjects::INGEST_PREFIX, self.event_type()),
        }
    }

    /// Sends the answer when the message was a request; a plain publish gets none.
    async fn reply(&self, body: Bytes) {
        let Some(to) = self.message().reply.clone() else {
            return;
        };
        let sent = match self {
            Self::Endpoint(request) => request.respond(Ok(body)).await,
            Self::HandedOver { client, .. } => client.publish(to, body).await,
        };
        if let Err(e) = sent {
            warn!(subject = %self.message().subject, error = %e, "reply not sent");
        }
    }
}

/// Time one command may take from the moment its worker starts it, so a
/// `nats req` (5 s timeout) gets `unavailable` rather than a timeout.
pub const BUDGET: Duration = Duration::from_millis(2500);

/// Lost races retried before answering `unavailable`.
pub const MAX_ATTEMPTS: usize = 20;

/// The current time as ingest records it: UTC, milliseconds.
pub fn now() -> Timestamp {
    upr_nats::clock::now_millis()
}

/// Replies, rejection records and counters: what every outcome goes through.
#[derive(Clone)]
pub struct Responder {
    counters: Arc<Counters>,
    records: RecordSender,
}

impl Responder {
    /// A responder writing records to `records`.
    pub fn new(counters: Arc<Counters>, records: RecordSender) -> Self {
        Self { counters, records }
    }

    /// Answers a stored (or already stored) event.
    async fn stored(&self, intake: &Intake, id: Uuid, seq: u64, duplicate: bool) {
        if duplicate {
            self.counters.duplicate();
        } else {
            self.counters.accepted();
        }
        let body = json!({"ok": true, "event_id": id, "seq": seq, "duplicate": duplicate});
        intake.reply(Bytes::from(body.to_string())).await;
    }

    /// Answers a refusal and records it on `upr.rejected`.
    async fn refused(&self, intake: &Intake, error: RejectError, received_at: Timestamp) {
        self.counters.rejected(error.code);
        let subject = intake.intake_subject();
        debug!(%subject, code = %error.code, field = ?error.field, "refused");
        let record = RejectionRecord::new(
            &subject,
            error.clone(),
            &intake.message().payload,
            received_at,
        );
        let body = json!({"ok": false, "error": error});
        intake.reply(Bytes::from(body.to_string())).await;
        if self.records.send(record).await.is_err() {
            warn!("rejection writer stopped; record dropped");
        }
    }
}

/// One validated command on its way to its worker.
pub struct Job {
    intake: Intake,
    command: Command,
    /// Who sent it, as the server authenticated it.
    recorded_by: Option<PartyName>,
    received_at: Timestamp,
    /// Its share of [`QUEUED_BYTES`], given back when the job is done.
    _bytes: OwnedSemaphorePermit,
}

/// Validates and routes messages; owns the senders of the workers' queues.
pub struct Dispatcher {
    /// Shared with hand-overs in flight, so the workers run until the last
    /// of them has come back (a hand-over may end in this replica).
    workers: Arc<[mpsc::Sender<Job>]>,
    responder: Responder,
    /// [`QUEUED_BYTES`], in bytes.
    queued: Arc<Semaphore>,
    /// Who owns which review, and the connection commands are handed over on.
    peers: Arc<Peers>,
    edge: Client,
    /// Intake per party ([`crate::rate`]).
    rate: Arc<IntakeRate>,
    /// Whether the server's requester information names the sender.
    trusted: bool,
}

/// How many workers, and how many reviews they cache in all.
#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    /// Workers (reviews appended to concurrently).
    pub workers: usize,
    /// Reviews cached, over all workers.
    pub cache: usize,
}

/// Who is who: whether the server authenticates senders (else every event
/// is recorded by nobody), and who may retract any event.
#[derive(Debug, Clone)]
pub struct Parties {
    /// The server requires authentication, so its `Nats-Request-Info` is believed.
    pub trusted: bool,
    /// `UPR_EDITORS`.
    pub editors: Arc<Editors>,
}

impl Parties {
    /// Requester information is the server's only where it authenticates
    /// (`edge`'s server requires it); without users nobody is named.
    pub fn of(edge: &Client, editors: &Editors) -> Self {
        Self {
            trusted: edge.server_info().auth_required,
            editors: Arc::new(editors.clone()),
        }
    }
}

impl Dispatcher {
    /// Starts `sizes.workers` workers over `log`, each caching up to
    /// `cache / workers` reviews, and returns the dispatcher and their handles.
    pub fn start(
        sizes: Sizes,
        log: &EventLog,
        responder: Responder,
        (peers, edge): (Arc<Peers>, Client),
        parties: &Parties,
        rate: Arc<IntakeRate>,
    ) -> (Self, Vec<tokio::task::JoinHandle<()>>) {
        let Sizes {
            workers: count,
            cache,
        } = sizes;
        let count = count.max(1);
        let per_worker = cache.div_ceil(count).max(1);
        let mut senders = Vec::with_capacity(count);
        let mut handles = Vec::with_capacity(count);
        for _ in 0..count {
            let (tx, rx) = mpsc::channel(WORKER_QUEUE);
            let worker = Worker {
                inbox: HistoryInbox::new(log),
                log: log.clone(),
                cache: ReviewCache::new(per_worker),
                responder: responder.clone(),
                editors: parties.editors.clone(),
            };
            handles.push(tokio::spawn(worker.run(rx)));
            senders.push(tx);
        }
        (
            Self {
                workers: senders.into(),
                responder,
                queued: Arc::new(Semaphore::new(QUEUED_BYTES)),
                peers,
                edge,
                rate,
                trusted: parties.trusted,
            },
            handles,
        )
    }

    /// The message's share of [`QUEUED_BYTES`] if the budget allows (never
    /// waits): the intake loop's whole work, so it keeps pace with the
    /// socket. `None`: answer [`Self::busy`].
    pub fn admit(&self, intake: &Intake) -> Option<OwnedSemaphorePermit> {
        let size = u32::try_from(intake.message().payload.len().max(1)).unwrap_or(u32::MAX);
        self.queued.clone().try_acquire_many_owned(size).ok()
    }

    /// Answers a message that did not fit in the budget: `unavailable`, safe
    /// to retry with the same `event_id`. Counted, not recorded in
    /// `UPR_REJECTED` (recording a flood would feed it).
    pub async fn busy(&self, intake: &Intake) {
        self.responder.counters.rejected(ErrorCode::Unavailable);
        let error = RejectError::new(
            ErrorCode::Unavailable,
            "ingest is busy; nothing was stored, retry with the same event_id",
        );
        let body = json!({"ok": false, "error": error});
        intake.reply(Bytes::from(body.to_string())).await;
    }

    /// Validates one admitted message; refuses it here, hands it to the
    /// replica owning its review, or queues it for the worker of its review
    /// (waiting while that queue is full). A command handed over is never
    /// handed on: two replicas that disagree for a moment about an owner
    /// cannot bounce it between them.
    pub async fn dispatch(&self, (intake, bytes): Admitted) {
        let received_at = now();
        if let Intake::Endpoint(request) = &intake
            && let Some(party) = requester_account(request.message.headers.as_ref())
            && let Verdict::Refused {
                retry_after,
                record,
            } = self.rate.check(&party, std::time::Instant::now())
        {
            let error = RejectError::new(
                ErrorCode::Unavailable,
                format!(
                    "{party} sends more than {} intake messages a second; nothing was stored, \
                     retry with the same event_id in {} ms",
                    self.rate.per_second(),
                    retry_after.as_millis().max(1)
                ),
            );
            if record {
                self.responder.refused(&intake, error, received_at).await;
            } else {
                self.responder.counters.rejected(ErrorCode::Unavailable);
                let body = json!({"ok": false, "error": error});
                intake.reply(Bytes::from(body.to_string())).await;
            }
            return;
        }
        match parse_intake(intake.event_type(), &intake.message().payload) {
            Err(error) => self.responder.refused(&intake, error, received_at).await,
            Ok(command) => {
                let job = Job {
                    recorded_by: intake.recorded_by(self.trusted),
                    intake,
                    command,
                    received_at,
                    _bytes: bytes,
                };
                let owner = match &job.intake {
                    Intake::Endpoint(_) => self.peers.owner(job.command.review_key()),
                    Intake::HandedOver { .. } => None,
                };
                match owner {
                    None => queue(&self.workers, &self.responder, job).await,
                    Some(owner) => {
                        self.responder.counters.handed_over();
                        let hand_over = HandOver {
                            workers: self.workers.clone(),
                            responder: self.responder.clone(),
                            peers: self.peers.clone(),
                            edge: self.edge.clone(),
                        };
                        tokio::spawn(hand_over.run(owner, job));
                    }
                }
            }
        }
    }
}

/// Queues `job` for the worker of its review (waiting while it is full).
async fn queue(workers: &[mpsc::Sender<Job>], responder: &Responder, job: Job) {
    let worker = &workers[shard(job.command.review_key(), workers.len())];
    if let Err(mpsc::error::SendError(job)) = worker.send(job).await {
        let error = RejectError::unavailable("ingest is shutting down");
        responder.refused(&job.intake, error, job.received_at).await;
    }
}

/// One command on its way to the replica that owns its review.
struct HandOver {
    workers: Arc<[mpsc::Sender<Job>]>,
    responder: Responder,
    peers: Arc<Peers>,
    edge: Client,
}

impl HandOver {
    /// Sends the message to `owner` and relays its answer. Nobody listening
    /// (the owner stopped): it is dropped from the membership and the
    /// command is decided here. No answer in time: `unavailable`, since the
    /// owner may still store it (a retry with the same `event_id` is safe).
    async fn run(self, owner: Arc<str>, job: Job) {
        let message = job.intake.message();
        // Who sent it goes with it, as this replica authenticated it; the
        // owner believes this header only on the hand-over subject.
        let mut headers = message.headers.clone().unwrap_or_default();
        headers.insert(
            ingest::RECORDED_BY,
            job.recorded_by.as_ref().map_or("", PartyName::as_str),
        );
        let request = async_nats::Request::new()
            .payload(message.payload.clone())
            .headers(headers)
            .timeout(Some(HAND_OVER_WAIT));
        let subject = ingest::route(&owner, job.intake.event_type());
        match self.edge.send_request(subject, request).await {
            Ok(answer) => job.intake.reply(answer.payload).await,
            Err(e) if e.kind() == RequestErrorKind::NoResponders => {
                debug!(%owner, "owner of the review is gone; deciding here");
                self.peers.gone(&owner);
                queue(&self.workers, &self.responder, job).await;
            }
            Err(e) => {
                let error = RejectError::unavailable(format_args!(
                    "the ingest replica owning review {} did not answer ({e}); retry with the same event_id",
                    job.command.review_key()
                ));
                self.responder
                    .refused(&job.intake, error, job.received_at)
                    .await;
            }
        }
    }
}

/// The worker that owns `key`: stable for the life of the process.
#[allow(
    clippy::cast_possible_truncation,
    reason = "the remainder is below workers, a usize"
)]
fn shard(key: ReviewKey, workers: usize) -> usize {
    let mut h = DefaultHasher::new();
    key.hash(&mut h);
    (h.finish() % workers as u64) as usize
}

/// Handles the commands of its share of reviews, one at a time.
struct Worker {
    log: EventLog,
    inbox: HistoryInbox,
    cache: ReviewCache,
    responder: Responder,
    /// Who may retract any event.
    editors: Arc<Editors>,
}

/// A command's stored event.
struct Stored {
    id: Uuid,
    seq: u64,
    duplicate: bool,
}

impl Worker {
    async fn run(mut self, mut jobs: mpsc::Receiver<Job>) {
        while let Some(job) = jobs.recv().await {
            let key = job.command.review_key();
            let span = info_span!(
                "intake",
                subject = %job.intake.message().subject,
                review = %key,
                seq = tracing::field::Empty,
            );
            self.handle(job).instrument(span).await;
        }
    }

    async fn handle(&mut self, job: Job) {
        let Job {
            intake,
            command,
            recorded_by,
            received_at,
            _bytes,
        } = job;
        match self.append(command, recorded_by).await {
            Ok(stored) => {
                tracing::Span::current().record("seq", stored.seq);
                debug!(event_id = %stored.id, duplicate = stored.duplicate, "stored");
                self.responder
                    .stored(&intake, stored.id, stored.seq, stored.duplicate)
                    .await;
            }
            Err(error) => self.responder.refused(&intake, error, received_at).await,
        }
    }

    /// Load, decide, append: the review's state comes from the cache or
    /// from its history in the log, the domain's
    /// [`Review::decide`](upr_domain::Review::decide) rules on the event, and
    /// an allowed event is appended under the review's last sequence. What
    /// the state missed (a lost race, or a refusal the log may not bear out)
    /// is read before the next decision.
    async fn append(
        &mut self,
        command: Command,
        recorded_by: Option<PartyName>,
    ) -> Result<Stored, RejectError> {
        let deadline = Instant::now() + BUDGET;
        let key = command.review_key();
        let id = command.event_id.unwrap_or_else(Uuid::now_v7);
        let subject = subjects::event(key.country, key.session, command.event_type());
        let event = command.into_envelope(id, now(), recorded_by);
        let envelope = Bytes::from(event.to_json());
        let stored = |seq, duplicate| Stored { id, seq, duplicate };

        // Load. A cached state was not read during this command: it may
        // lag behind what other replicas appended since.
        let (review, cached) = match self.cache.get_mut(&key) {
            Some(review) => (review, true),
            None => {
                let loaded = self
                    .log
                    .load(&mut self.inbox, key, deadline)
                    .await
                    .map_err(unavailable)?;
                (self.cache.insert(key, loaded), false)
            }
        };
        for attempt in 1..=MAX_ATTEMPTS {
            if attempt > 1 {
                // Read only what the state missed (usually one event another
                // replica appended).
                if let Err(e) = self
                    .log
                    .catch_up(&mut self.inbox, key, review, deadline)
                    .await
                {
                    self.cache.forget(&key);
                    return Err(unavailable(e));
                }
            }
            // Decide, then append.
            let expected = match review.decide(&event, &self.editors) {
                Ok(Decision::Duplicate(seq)) => return Ok(stored(seq, true)),
                Ok(Decision::Append { expected_last_seq }) => expected_last_seq,
                // An append is checked by the log (expected sequence); a
                // refusal is not, so it is only final when decided on the
                // log as it is now: another replica may have moved the
                // review on, or stored this very event_id, since it was cached.
                Err(_) if attempt == 1 && cached => {
                    debug!(attempt, "refusal decided on a cached state; catching up");
                    continue;
                }
                // Decided on what a direct get returned, which on a cluster
                // may come from a replica behind the leader: final only when
                // the leader has nothing newer.
                Err(refusal) => {
                    match self.log.is_current(key, review.last_seq(), deadline).await {
                        // The domain's refusal becomes the reply's code
                        // and sentence here, at the edge.
                        Ok(true) => return Err(refusal.into()),
                        Ok(false) => {
                            debug!(attempt, "the leader holds newer events; catching up");
                            continue;
                        }
                        Err(e) => return Err(unavailable(e)),
                    }
                }
            };
            let result = self
                .log
                .append(key, &subject, id, envelope.clone(), expected, deadline)
                .await;
            match result {
                Ok(ack) if ack.duplicate => {
                    // The server's window knew the id but this state did
                    // not: the state is stale, or the id belongs to another
                    // review. A duplicate only if it is the same event.
                    self.cache.forget(&key);
                    let original = self
                        .log
                        .get(ack.sequence, deadline)
                        .await
                        .map_err(unavailable)?;
                    return match original {
                        Some(original) => match IdInUse::check(&original, &event) {
                            Ok(()) => Ok(stored(ack.sequence, true)),
                            Err(e) => Err(e.into()),
                        },
                        None => Err(RejectError::conflict(format!(
                            "event_id {id} already identifies a message of the event log that is not a valid event; a new event needs a new event_id"
                        ))
                        .with_field("event_id")),
                    };
                }
                Ok(ack) => {
                    review.apply(ack.sequence, Some(id), Some(&event));
                    return Ok(stored(ack.sequence, false));
                }
                Err(StoreError::Conflict) => {
                    self.responder.counters.lost_race();
                    debug!(attempt, expected, "review changed meanwhile; catching up");
                }
                Err(e) => {
                    // Whether it was stored is unknown: forget the state so
                    // the next command reads the log.
                    self.cache.forget(&key);
                    return Err(unavailable(e));
                }
            }
        }
        Err(RejectError::unavailable(format_args!(
            "review {key} kept changing during {MAX_ATTEMPTS} attempts"
        )))
    }
}

fn unavailable(e: StoreError) -> RejectError {
    warn!(error = %e, "event store unavailable");
    RejectError::unavailable(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_review_always_goes_to_the_same_worker() {
        let kz = ReviewKey::parse("KZ.48").unwrap();
        let first = shard(kz, 256);
        assert!((0..10).all(|_| shard(kz, 256) == first));
        assert!(first < 256);
        assert_eq!(shard(kz, 1), 0);
    }

    #[test]
    fn recorded_times_have_millisecond_precision() {
        let t = now();
        assert_eq!(t.as_offset_datetime().nanosecond() % 1_000_000, 0);
    }
}
