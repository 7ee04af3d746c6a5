//! The fault test: a mixed workload through ingest while every process of
//! the system, nats-server included, is killed with SIGKILL at random
//! moments and restarted on the same port and store; then the three
//! promises users rely on are checked against what JetStream holds.
//!
//! - Every acknowledged event (an `ok` reply) is in `UPR_EVENTS` exactly
//!   once, at the sequence the reply gave, and nothing else is there.
//! - The read models (every key of the three buckets) are byte for byte the
//!   pure fold of the whole stream (`ReadModels::fold`).
//! - Every reminder that fell due is in `UPR_NOTIFICATIONS` exactly once,
//!   and no other: the expected set is computed from the stream with
//!   `domain::reminders::plan` and the notifier's rules. Where timing makes
//!   a reminder ambiguous (a process was down around its due time, or the
//!   notifier learnt of a change only after the due time), only the strong
//!   invariants are checked for it: never twice, never one that must not
//!   exist, never at or after its review date.
//! - Every reschedule and cancel has exactly one change notice.
//!
//! The client follows the contract: requests with its own `event_id`, retried
//! with the same id on timeout, "no responders" and `unavailable`.
//!
//! Knobs: `UPR_FAULT_SEED` (printed at the start; the kill schedule and the
//! workload's choices derive from it), `UPR_FAULT_EVENTS` (stored events to
//! reach, default 10 000). `scripts/fault-long` runs the long variant.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use async_nats::{Client, RequestErrorKind, jetstream};
use bytes::Bytes;
use futures::StreamExt;
use serde_json::{Value, json};
use upr_shared::{
    contract::{self, services, subjects},
    domain::{
        Country, Envelope, EventData, EventType, MEMBER_STATES, ReadModels, ReviewKey, ReviewState,
        ReviewStatus, Session, Timestamp, evolve, parse_leads, plan,
    },
};
use upr_tests::{NatsServer, ServiceProcess};
use uuid::Uuid;

/// Reminder leads of the run: short, so reminders fall due while it runs.
const LEADS: &str = "4s,2s";
/// How long one command may go without a definitive answer (ok or a
/// refusal other than `unavailable`) before the test gives up on it.
const COMMAND_DEADLINE: Duration = Duration::from_secs(90);
/// Client-side timeout of one request; ingest answers within 2.5 s.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(4);
/// Concurrent clients driving the long-lived reviews.
const BULK_CLIENTS: usize = 32;
/// The bulk clients pause while the notifier is this many events behind...
const GATE_CLOSE: u64 = 120;
/// ... until it is no more than this many behind.
const GATE_OPEN: u64 = 40;
/// Ingest and notifier replicas (queue group / shared consumers).
const INGEST_REPLICAS: usize = 2;
const NOTIFIER_REPLICAS: usize = 2;

// ---------------------------------------------------------------------------
// A small seeded generator (SplitMix64): reproducible and dependency-free.

#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// Uniform in `lo..=hi`.
    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    /// `true` with probability `percent` / 100.
    fn percent(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    /// An independent generator for a sub-task.
    fn fork(&mut self) -> Self {
        Self(self.next())
    }

    fn uuid(&mut self) -> Uuid {
        let bytes = (u128::from(self.next()) << 64 | u128::from(self.next())).to_le_bytes();
        uuid::Builder::from_random_bytes(bytes).into_uuid()
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64
}

fn ts(ms: i64) -> Timestamp {
    Timestamp::from_unix_millis(ms).expect("timestamp in range")
}

// ---------------------------------------------------------------------------
// The client: requests with retries, and what it was told.

/// What the client was told about one command, definitively.
#[derive(Debug, Clone)]
enum Outcome {
    Stored,
    Refused { code: String },
}

#[derive(Default)]
struct Counters {
    commands: AtomicU64,
    stored: AtomicU64,
    duplicates: AtomicU64,
    conflicts: AtomicU64,
    timeouts: AtomicU64,
    no_responders: AtomicU64,
    unavailable: AtomicU64,
    other_errors: AtomicU64,
}

fn add(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

/// Everything the client learnt, for the checks.
#[derive(Default)]
struct Ledger {
    /// event id -> the seq an `ok` reply gave.
    acked: HashMap<Uuid, u64>,
    /// event ids definitively refused.
    refused: HashSet<Uuid>,
    /// Things that contradict the contract, found while running.
    violations: Vec<String>,
}

#[derive(Clone)]
struct Driver {
    client: Client,
    counters: Arc<Counters>,
    ledger: Arc<Mutex<Ledger>>,
    /// The highest sequence an `ok` reply gave.
    max_seq: Arc<AtomicU64>,
    /// Closed while the notifier is alive but behind the log (see [`Gate`]).
    gate: Arc<AtomicBool>,
}

impl Driver {
    /// Sends one command until it gets a definitive answer, retrying with the
    /// same payload (so the same `event_id`) as the contract tells clients to.
    async fn send(&self, ty: EventType, id: Uuid, mut payload: Value) -> Outcome {
        payload["event_id"] = id.to_string().into();
        let subject = subjects::ingest(ty);
        let body = Bytes::from(payload.to_string());
        add(&self.counters.commands);
        let deadline = Instant::now() + COMMAND_DEADLINE;
        let mut backoff = Duration::from_millis(50);
        loop {
            let request = async_nats::Request::new()
                .payload(body.clone())
                .timeout(Some(REQUEST_TIMEOUT));
            match self.client.send_request(subject.clone(), request).await {
                Ok(reply) => {
                    let reply: Value = match serde_json::from_slice(&reply.payload) {
                        Ok(v) => v,
                        Err(e) => {
                            self.violation(format!("{ty} {id}: reply is not JSON: {e}"));
                            add(&self.counters.other_errors);
                            Value::Null
                        }
                    };
                    if reply["ok"] == true {
                        let seq = reply["seq"].as_u64().unwrap_or(0);
                        if reply["event_id"] != id.to_string().as_str() || seq == 0 {
                            self.violation(format!("{ty} {id}: malformed ok reply {reply}"));
                        }
                        if reply["duplicate"] == true {
                            add(&self.counters.duplicates);
                        }
                        add(&self.counters.stored);
                        self.max_seq.fetch_max(seq, Ordering::Relaxed);
                        let mut ledger = self.ledger.lock().unwrap();
                        if let Some(before) = ledger.acked.insert(id, seq)
                            && before != seq
                        {
                            ledger.violations.push(format!(
                                "{id} acknowledged twice with different seqs {before} and {seq}"
                            ));
                        }
                        return Outcome::Stored;
                    }
                    let code = reply["error"]["code"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned();
                    if code == "unavailable" {
                        add(&self.counters.unavailable);
                    } else if !code.is_empty() {
                        if code == "conflict" {
                            add(&self.counters.conflicts);
                        }
                        self.ledger.lock().unwrap().refused.insert(id);
                        return Outcome::Refused { code };
                    }
                }
                Err(e) => match e.kind() {
                    RequestErrorKind::TimedOut => add(&self.counters.timeouts),
                    RequestErrorKind::NoResponders => add(&self.counters.no_responders),
                    _ => add(&self.counters.other_errors),
                },
            }
            assert!(
                Instant::now() < deadline,
                "{ty} {id} got no definitive answer within {COMMAND_DEADLINE:?}: the system did not recover"
            );
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(500));
        }
    }

    fn violation(&self, what: String) {
        self.ledger.lock().unwrap().violations.push(what);
    }
}

// ---------------------------------------------------------------------------
// The workload: what a review's next command is, given what the client knows.

/// The client's knowledge of one review, from its own acknowledged commands.
struct ReviewModel {
    key: ReviewKey,
    status: Option<ReviewStatus>,
    dates: HashSet<i64>,
    /// Lifecycle events in force, oldest first (what a retraction may take back).
    in_force: Vec<(Uuid, EventType)>,
    /// Every stored event: its type and whether it was retracted.
    events: HashMap<Uuid, (EventType, bool)>,
}

/// A command and whether the lifecycle allows it (else `conflict` is due).
struct Next {
    ty: EventType,
    payload: Value,
    allowed: bool,
}

impl ReviewModel {
    fn new(key: ReviewKey) -> Self {
        Self {
            key,
            status: None,
            dates: HashSet::new(),
            in_force: Vec::new(),
            events: HashMap::new(),
        }
    }

    /// A correction of a long-lived review: mostly of the latest lifecycle
    /// event in force or of a side event, some of an event the rules do not
    /// let it take back (an older lifecycle event, one already retracted, an
    /// unknown id), which must be refused with `conflict`.
    fn retraction(&self, rng: &mut Rng) -> Next {
        let side: Vec<Uuid> = self
            .events
            .iter()
            .filter(|(_, (ty, retracted))| *ty == EventType::SideEventHeld && !retracted)
            .map(|(id, _)| *id)
            .collect();
        let target = match rng.below(100) {
            0..45 => self.in_force.last().map(|e| e.0),
            45..80 => side
                .get(rng.below(side.len().max(1) as u64) as usize)
                .copied(),
            80..90 => self.in_force.first().map(|e| e.0),
            _ => None,
        }
        .unwrap_or_else(|| rng.uuid());
        let mut p = self.base(rng);
        p["retracts"] = target.to_string().into();
        p["reason"] = "recorded by mistake (fault test)".into();
        let state = ReviewState {
            lifecycle: self
                .in_force
                .iter()
                .map(|(id, ty)| upr_shared::domain::LifecycleEntry {
                    id: *id,
                    event: *ty,
                    scheduled_for: None,
                    location: None,
                    recorded_at: None,
                })
                .collect(),
        };
        let known = self.events.get(&target).copied();
        let allowed = state.decide_retraction(target, known, self.key).is_ok();
        Next {
            ty: EventType::EventRetracted,
            payload: p,
            allowed,
        }
    }

    fn base(&self, rng: &mut Rng) -> Value {
        let country = self.key.country.as_str();
        let country = if rng.percent(10) {
            country.to_lowercase()
        } else {
            country.to_owned()
        };
        let mut p = json!({"country": country, "session": self.key.session.get()});
        if rng.percent(10) {
            p["source"] = "UPR Info".into();
        }
        if rng.percent(10) {
            p["occurred_at"] = ts(now_ms() - rng.between(0, 86_400_000) as i64)
                .to_string()
                .into();
        }
        p
    }

    /// A date not used before for this review, so reminder ids of different
    /// (re)schedulings never coincide.
    fn fresh_date(&mut self, mut ms: i64) -> String {
        while !self.dates.insert(ms) {
            ms += 1;
        }
        ts(ms).to_string()
    }

    /// A far-future (reminders not due during the run) or past (none planned) date.
    fn far_date(&mut self, rng: &mut Rng) -> String {
        let day = 86_400_000i64;
        let ms = if rng.percent(70) {
            now_ms() + rng.between(60, 1500) as i64 * day
        } else {
            now_ms() - rng.between(1, 1500) as i64 * day
        };
        self.fresh_date(ms / 60_000 * 60_000)
    }

    fn command(&self, ty: EventType, rng: &mut Rng, date: Option<String>) -> Next {
        let mut p = self.base(rng);
        let day = |rng: &mut Rng| {
            ts(now_ms() - rng.between(0, 400) as i64 * 86_400_000).to_string()[..10].to_owned()
        };
        match ty {
            EventType::ReviewScheduled => {
                p["scheduled_for"] = date.expect("a date").into();
                if rng.percent(30) {
                    p["location"] =
                        (*rng.pick(&["Geneva", "New York", "Palais des Nations, Room XX"])).into();
                }
            }
            EventType::ReviewRescheduled => {
                p["scheduled_for"] = date.expect("a date").into();
                if rng.percent(50) {
                    p["reason"] = "liquidity crisis".into();
                }
            }
            EventType::ReviewCancelled => {
                if rng.percent(50) {
                    p["reason"] = "the state withdrew".into();
                }
            }
            EventType::ReviewHeld => {
                if rng.percent(50) {
                    p["held_on"] = day(rng).into();
                }
                if rng.percent(50) {
                    p["recommendations_received"] = rng.below(300).into();
                }
            }
            EventType::SideEventHeld => {
                p["title"] = format!("Side event {}", rng.below(1_000_000)).into();
                p["held_on"] = day(rng).into();
                if rng.percent(50) {
                    p["speakers"] =
                        json!([{"name": "A. Rapporteur", "role": "UN"}, {"name": "B. Defender"}]);
                }
                if rng.percent(50) {
                    p["participating_states"] = rng.below(60).into();
                }
                if rng.percent(30) {
                    p["topics"] = json!(["civic space", "press freedom"]);
                }
            }
            EventType::ReportPublished => {
                p["published_on"] = day(rng).into();
                if rng.percent(50) {
                    p["document_symbol"] =
                        format!("A/HRC/{}/{}", rng.between(40, 60), rng.between(1, 20)).into();
                }
                if rng.percent(50) {
                    let supported = rng.below(200);
                    let noted = rng.below(100);
                    p["recommendations"] = json!({"total": supported + noted + rng.below(10), "supported": supported, "noted": noted});
                }
            }
            EventType::OutcomeAdopted => {
                p["adopted_on"] = day(rng).into();
                p["hrc_session"] = rng.between(40, 62).into();
            }
            // Corrections have their own end-to-end tests; this workload
            // keeps to commands whose outcome the status alone decides.
            EventType::EventRetracted => unreachable!("the fault workload does not retract"),
        }
        let allowed = upr_shared::domain::decide(self.status, ty, self.key).is_ok();
        Next {
            ty,
            payload: p,
            allowed,
        }
    }

    /// The next command of a long-lived review: mostly what the lifecycle
    /// allows, some conflicts on purpose.
    fn next_bulk(&mut self, rng: &mut Rng) -> Next {
        use EventType::*;
        if rng.percent(6) && !self.events.is_empty() {
            return self.retraction(rng);
        }
        let roll = rng.below(100);
        let ty = match self.status {
            None | Some(ReviewStatus::Cancelled) => match roll {
                0..70 => ReviewScheduled,
                70..92 => SideEventHeld,
                _ => *rng.pick(&[
                    ReviewHeld,
                    ReviewRescheduled,
                    ReviewCancelled,
                    ReportPublished,
                ]),
            },
            Some(ReviewStatus::Scheduled) => match roll {
                0..22 => ReviewRescheduled,
                22..34 => ReviewCancelled,
                34..60 => ReviewHeld,
                60..96 => SideEventHeld,
                _ => *rng.pick(&[ReviewScheduled, ReportPublished]),
            },
            Some(ReviewStatus::Held) => match roll {
                0..50 => ReportPublished,
                50..58 => OutcomeAdopted,
                58..94 => SideEventHeld,
                _ => *rng.pick(&[ReviewCancelled, ReviewHeld, ReviewScheduled]),
            },
            Some(ReviewStatus::Reported) => match roll {
                0..20 => OutcomeAdopted,
                20..88 => SideEventHeld,
                _ => *rng.pick(&[ReportPublished, ReviewHeld, ReviewRescheduled]),
            },
            Some(ReviewStatus::Adopted) => match roll {
                0..90 => SideEventHeld,
                _ => *rng.pick(&[OutcomeAdopted, ReportPublished, ReviewScheduled]),
            },
        };
        let date = matches!(ty, ReviewScheduled | ReviewRescheduled).then(|| self.far_date(rng));
        self.command(ty, rng, date)
    }

    fn accepted(&mut self, id: Uuid, ty: EventType, payload: &Value) {
        match ty {
            EventType::EventRetracted => {
                let target = payload["retracts"]
                    .as_str()
                    .and_then(|t| Uuid::parse_str(t).ok());
                if self.in_force.last().map(|e| e.0) == target {
                    self.in_force.pop();
                }
                if let Some(entry) = target.and_then(|t| self.events.get_mut(&t)) {
                    entry.1 = true;
                }
            }
            EventType::SideEventHeld => {}
            _ => self.in_force.push((id, ty)),
        }
        self.events.insert(id, (ty, false));
        self.status = self.in_force.iter().fold(None, |s, e| evolve(s, e.1));
    }
}

/// Sends `next` and keeps the model in step; records a violation when the
/// answer is not the one the lifecycle calls for. `true` when stored.
async fn drive(driver: &Driver, model: &mut ReviewModel, next: Next, rng: &mut Rng) -> bool {
    let id = rng.uuid();
    let ty = next.ty;
    match driver.send(ty, id, next.payload.clone()).await {
        Outcome::Stored => {
            if !next.allowed {
                driver.violation(format!(
                    "{ty} {id} on {} accepted while the review was {:?}",
                    model.key, model.status
                ));
            }
            model.accepted(id, ty, &next.payload);
            true
        }
        Outcome::Refused { code } => {
            if next.allowed || code != "conflict" {
                driver.violation(format!(
                    "{ty} {id} on {} (status {:?}) refused with {code}: {}",
                    model.key, model.status, next.payload
                ));
            }
            false
        }
    }
}

/// One client working through its share of long-lived reviews until the
/// run has stored `target` events.
async fn bulk_client(driver: Driver, keys: Vec<ReviewKey>, mut rng: Rng, target: u64) {
    let mut models: Vec<ReviewModel> = keys.into_iter().map(ReviewModel::new).collect();
    while get(&driver.counters.stored) < target {
        while driver.gate.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let i = rng.below(models.len() as u64) as usize;
        let next = models[i].next_bulk(&mut rng);
        drive(&driver, &mut models[i], next, &mut rng).await;
    }
}

/// A review scheduled a few seconds ahead, so its reminders fall due during
/// the run, then maybe rescheduled, cancelled (and scheduled again) or held
/// at a random moment before or after a due time.
async fn near_review(driver: Driver, key: ReviewKey, mut rng: Rng) {
    use EventType::*;
    let mut m = ReviewModel::new(key);
    let soon = |m: &mut ReviewModel, rng: &mut Rng| {
        let ms = now_ms() + rng.between(6000, 11_000) as i64;
        Some(m.fresh_date(ms))
    };
    let pause = |rng: &mut Rng| Duration::from_millis(rng.between(100, 7000));
    let date = soon(&mut m, &mut rng);
    let next = m.command(ReviewScheduled, &mut rng, date);
    drive(&driver, &mut m, next, &mut rng).await;
    let plan: &[EventType] = match rng.below(100) {
        0..35 => &[],
        35..45 => &[SideEventHeld],
        45..62 => &[ReviewRescheduled],
        62..72 => &[ReviewCancelled],
        72..80 => &[ReviewCancelled, ReviewScheduled],
        80..92 => &[ReviewHeld, ReportPublished],
        _ => &[ReviewRescheduled, ReviewRescheduled],
    };
    for &ty in plan {
        tokio::time::sleep(pause(&mut rng)).await;
        let date = if matches!(ty, ReviewScheduled | ReviewRescheduled) {
            soon(&mut m, &mut rng)
        } else {
            None
        };
        let next = m.command(ty, &mut rng, date);
        drive(&driver, &mut m, next, &mut rng).await;
    }
}

// ---------------------------------------------------------------------------
// The chaos: SIGKILL one process at a time at seeded moments, restart it on
// the same port and store, wait until everything answers again.

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Target {
    Ingest(usize),
    Projection,
    Notifier(usize),
    Nats,
}

impl Target {
    fn label(&self) -> &'static str {
        match self {
            Target::Ingest(_) => "ingest",
            Target::Projection => "projection",
            Target::Notifier(_) => "notifier",
            Target::Nats => "nats-server",
        }
    }
}

/// One outage: from the kill until everything answered its healthcheck again.
#[derive(Debug, Clone)]
struct Outage {
    target: Target,
    down_ms: i64,
    up_ms: i64,
}

struct System {
    nats: NatsServer,
    ingest: Vec<ServiceProcess>,
    projection: ServiceProcess,
    notifier: Vec<ServiceProcess>,
}

impl System {
    fn services(&self) -> impl Iterator<Item = &ServiceProcess> {
        self.ingest
            .iter()
            .chain([&self.projection])
            .chain(self.notifier.iter())
    }

    /// Blocks until every service answers `healthcheck`, or panics with the
    /// log of the one that does not.
    fn wait_all_healthy(&self, within: Duration) {
        for p in self.services() {
            wait_healthy(p, within);
        }
    }
}

/// Blocks until `p` answers `healthcheck`, or panics with its log.
fn wait_healthy(p: &ServiceProcess, within: Duration) {
    let deadline = Instant::now() + within;
    while !p.healthcheck().success() {
        assert!(
            Instant::now() < deadline,
            "a service did not recover within {within:?}; its log:\n{}",
            p.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn chaos(mut system: System, mut rng: Rng, stop: Arc<AtomicBool>) -> (System, Vec<Outage>) {
    let mut outages = Vec::new();
    let nap = |ms: u64, stop: &AtomicBool| {
        let until = Instant::now() + Duration::from_millis(ms);
        while Instant::now() < until && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    loop {
        nap(rng.between(1000, 3000), &stop);
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let target = match rng.below(100) {
            0..30 => Target::Ingest(rng.below(INGEST_REPLICAS as u64) as usize),
            30..50 => Target::Projection,
            50..75 => Target::Notifier(rng.below(NOTIFIER_REPLICAS as u64) as usize),
            _ => Target::Nats,
        };
        let downtime = rng.between(0, 1500);
        let down_ms = now_ms();
        match target {
            Target::Nats => {
                system.nats.kill();
                std::thread::sleep(Duration::from_millis(downtime));
                system.nats.restart();
            }
            _ => {
                let p = match target {
                    Target::Ingest(i) => &mut system.ingest[i],
                    Target::Projection => &mut system.projection,
                    Target::Notifier(i) => &mut system.notifier[i],
                    Target::Nats => unreachable!(),
                };
                p.kill9();
                std::thread::sleep(Duration::from_millis(downtime));
                p.restart();
            }
        }
        match target {
            Target::Nats => system.wait_all_healthy(Duration::from_secs(60)),
            Target::Ingest(i) => wait_healthy(&system.ingest[i], Duration::from_secs(60)),
            Target::Projection => wait_healthy(&system.projection, Duration::from_secs(60)),
            Target::Notifier(i) => wait_healthy(&system.notifier[i], Duration::from_secs(60)),
        }
        outages.push(Outage {
            target,
            down_ms,
            up_ms: now_ms(),
        });
    }
    (system, outages)
}

/// Stops the chaos thread and gets the processes back even when the test
/// panics, so no child outlives the test.
struct ChaosGuard {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<(System, Vec<Outage>)>>,
}

impl ChaosGuard {
    fn finish(mut self) -> (System, Vec<Outage>) {
        self.stop.store(true, Ordering::Relaxed);
        let handle = self.handle.take().expect("joined once");
        match handle.join() {
            Ok(v) => v,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

impl Drop for ChaosGuard {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

// ---------------------------------------------------------------------------
// Reading back what JetStream holds.

struct StoredMsg {
    seq: u64,
    subject: String,
    msg_id: Option<String>,
    payload: Bytes,
}

/// Every message of a stream, in order, with an ordered consumer.
async fn read_stream(client: &Client, name: &str) -> Vec<StoredMsg> {
    let js = jetstream::new(client.clone());
    let mut stream = js.get_stream(name).await.expect("stream exists");
    let info = stream.info().await.expect("stream info");
    let (count, last) = (info.state.messages, info.state.last_sequence);
    let mut out = Vec::with_capacity(count as usize);
    if count == 0 {
        return out;
    }
    let consumer = stream
        .create_consumer(jetstream::consumer::push::OrderedConfig {
            deliver_subject: client.new_inbox(),
            ..Default::default()
        })
        .await
        .expect("ordered consumer");
    let mut messages = consumer.messages().await.expect("messages");
    while let Some(m) = tokio::time::timeout(Duration::from_secs(30), messages.next())
        .await
        .expect("stream read stalled")
    {
        let m = m.expect("ordered message");
        let seq = m.info().expect("jetstream metadata").stream_sequence;
        let msg_id = m
            .headers
            .as_ref()
            .and_then(|h| h.get("Nats-Msg-Id"))
            .map(|v| v.to_string());
        out.push(StoredMsg {
            seq,
            subject: m.subject.to_string(),
            msg_id,
            payload: m.payload.clone(),
        });
        if seq >= last {
            break;
        }
    }
    out
}

/// Every key and value of a KV bucket.
async fn read_bucket(client: &Client, bucket: &str) -> BTreeMap<String, Bytes> {
    let js = jetstream::new(client.clone());
    let kv = js.get_key_value(bucket).await.expect("bucket exists");
    let keys: Vec<String> = kv
        .keys()
        .await
        .expect("keys")
        .map(|k| k.expect("key"))
        .collect()
        .await;
    let mut out = BTreeMap::new();
    for key in keys {
        if let Some(v) = kv.get(&key).await.expect("kv get") {
            out.insert(key, v);
        }
    }
    out
}

async fn consumer_caught_up(client: &Client, stream: &str, consumer: &str) -> bool {
    let js = jetstream::new(client.clone());
    let Ok(s) = js.get_stream(stream).await else {
        return false;
    };
    let Ok(info) = s.consumer_info(consumer).await else {
        return false;
    };
    info.num_pending == 0 && info.num_ack_pending == 0
}

/// Samples the notifier's ack floor on `UPR_EVENTS` every 200 ms: when the
/// notifier had applied a given event, at the latest.
///
/// It also works the gate of the bulk clients. The notifier applies events
/// one at a time across all replicas, slower than a debug-built ingest on
/// two shared cores accepts them; unthrottled, its backlog grows for the
/// whole run and every near-term reminder would be planned after its review
/// date, leaving nothing to check. So while the notifier is alive (its floor
/// moved within the last second) and more than [`GATE_CLOSE`] events behind,
/// the bulk clients pause; near-term reviews never do.
async fn sample_notifier_floor(driver: Driver, stop: Arc<AtomicBool>) -> Vec<(i64, u64)> {
    let js = jetstream::new(driver.client.clone());
    let mut samples: Vec<(i64, u64)> = Vec::new();
    let mut moved_at = now_ms();
    while !stop.load(Ordering::Relaxed) {
        let floor = async {
            let s = js.get_stream(contract::EVENTS_STREAM).await.ok()?;
            let info = s
                .consumer_info(contract::notifier::EVENTS_CONSUMER)
                .await
                .ok()?;
            Some(info.ack_floor.stream_sequence)
        };
        if let Ok(Some(floor)) = tokio::time::timeout(Duration::from_secs(1), floor).await {
            let now = now_ms();
            if samples.last().is_none_or(|(_, f)| *f != floor) {
                moved_at = now;
            }
            samples.push((now, floor));
            let backlog = driver.max_seq.load(Ordering::Relaxed).saturating_sub(floor);
            let alive = now - moved_at < 1000;
            let closed = driver.gate.load(Ordering::Relaxed);
            let close = alive && (backlog > GATE_CLOSE || (closed && backlog > GATE_OPEN));
            driver.gate.store(close, Ordering::Relaxed);
        } else {
            driver.gate.store(false, Ordering::Relaxed);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    driver.gate.store(false, Ordering::Relaxed);
    samples
}

/// The first sampled moment at which the notifier had applied `seq`
/// (`i64::MAX` when never seen): an upper bound of when it did.
fn applied_by(samples: &[(i64, u64)], seq: u64) -> i64 {
    samples
        .iter()
        .find(|(_, floor)| *floor >= seq)
        .map_or(i64::MAX, |(t, _)| *t)
}

// ---------------------------------------------------------------------------
// The expected reminders, from the stream and the notifier's rules.

#[derive(Debug, Clone)]
struct Expected {
    reminder: upr_shared::domain::Reminder,
    /// It must be in UPR_NOTIFICATIONS.
    must: bool,
    /// It must not be (the change was applied before it came due, or it is
    /// not due yet).
    never: bool,
    /// Why it is neither required nor forbidden, for the figures.
    ambiguous: Option<&'static str>,
    /// When the notifier had planned it, at the latest (ms since the epoch).
    planned_by: i64,
}

struct Timeline<'a> {
    floor: &'a [(i64, u64)],
    outages: &'a [Outage],
    run_start: i64,
    /// When the checks started: reminders due before must have been sent.
    run_end: i64,
    /// When the notifications were read: none due later can be there.
    read_at: i64,
}

impl Timeline<'_> {
    /// Whether the notifier (any replica) or nats-server was down, or coming
    /// back, at some point of `[from, to]`.
    fn disturbed(&self, from: i64, to: i64) -> bool {
        self.outages.iter().any(|o| {
            // After a nats-server restart the notifier's consumers need a few
            // seconds to be re-established; a notifier restart less.
            let settle = match o.target {
                Target::Nats => 5000,
                Target::Notifier(_) => 2000,
                _ => return false,
            };
            o.down_ms <= to && o.up_ms + settle >= from
        })
    }
}

fn expected_reminders(events: &[(u64, Envelope)], t: &Timeline<'_>) -> BTreeMap<String, Expected> {
    let leads = parse_leads(LEADS).expect("leads");
    let mut by_review: BTreeMap<ReviewKey, Vec<(u64, &Envelope)>> = BTreeMap::new();
    for (seq, e) in events {
        by_review.entry(e.review_key()).or_default().push((*seq, e));
    }
    let lifecycle = |e: &Envelope| {
        !matches!(
            e.event_type(),
            EventType::SideEventHeld | EventType::ReportPublished
        )
    };
    let mut out = BTreeMap::new();
    for (key, history) in by_review {
        let mut state = ReviewState::default();
        for (i, (seq, e)) in history.iter().enumerate() {
            state.apply(e);
            let date = match &e.data {
                EventData::ReviewScheduled(d) => d.scheduled_for,
                EventData::ReviewRescheduled(d) => d.scheduled_for,
                _ => continue,
            };
            let location = state.location().unwrap_or("Geneva").to_owned();
            let next = history[i + 1..].iter().find(|(_, n)| lifecycle(n));
            for r in plan(
                key.country,
                key.session,
                date,
                &location,
                &leads,
                e.recorded_at,
            ) {
                let due = r.due_at.unix_millis();
                let review_at = r.scheduled_for.unix_millis();
                let planned_by = applied_by(t.floor, *seq);
                // When the notifier learnt of the next change, at the latest.
                let change_known = next.map(|(s, _)| applied_by(t.floor, *s));
                let change_recorded = next.map(|(_, n)| n.recorded_at.unix_millis());
                let never = due > t.read_at || change_known.is_some_and(|k| k < due);
                let ambiguous = if never {
                    None
                } else if due <= t.run_start || review_at + 1000 >= t.run_end {
                    Some("outside the run")
                } else if planned_by >= due - 300 {
                    Some("planned late (notifier behind the log)")
                } else if change_recorded.is_some_and(|c| c <= due + 2000) {
                    Some("changed around its due time")
                } else if t.disturbed(due - 1000, due + 2000) {
                    Some("notifier or nats-server down around its due time")
                } else {
                    None
                };
                let must = !never && ambiguous.is_none();
                let id = r.id.clone();
                let entry = Expected {
                    reminder: r,
                    must,
                    never,
                    ambiguous,
                    planned_by,
                };
                if let Some(before) = out.insert(id.clone(), entry) {
                    panic!("the workload planned reminder {id} twice: {before:?}");
                }
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------

#[derive(Debug, Default)]
struct Report {
    lines: Vec<String>,
    failures: Vec<String>,
}

impl Report {
    fn line(&mut self, s: String) {
        println!("{s}");
        self.lines.push(s);
    }

    /// Records a failure unless `ok`; prints the first 100 of each kind
    /// (contract violations seen by the client, and the rest).
    fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            let w = what();
            let contract = w.starts_with("contract:");
            let same_kind = self
                .failures
                .iter()
                .filter(|f| f.starts_with("contract:") == contract)
                .count();
            if same_kind < 100 {
                println!("FAILED: {w}");
            }
            self.failures.push(w);
        }
    }
}

/// The log text without terminal colour codes.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        v.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name} must be an unsigned integer, got {v:?}"))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_events_read_models_and_reminders_survive_sigkill_of_every_process() {
    let seed = env_u64("UPR_FAULT_SEED").unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    let target = env_u64("UPR_FAULT_EVENTS").unwrap_or(10_000);
    let mut report = Report::default();
    report.line(format!(
        "fault test: UPR_FAULT_SEED={seed} UPR_FAULT_EVENTS={target} (rerun with these to repeat the schedule)"
    ));
    let mut rng = Rng::new(seed);
    let started = Instant::now();
    let run_start = now_ms();

    // The system: nats-server, 2 ingest, 1 projection, 2 notifiers.
    let nats = NatsServer::start();
    let url = nats.url();
    let start = |name: &str, env: &[(&str, &str)]| ServiceProcess::start(name, &url, env);
    let ingest: Vec<_> = (0..INGEST_REPLICAS)
        .map(|_| start(services::INGEST, &[]))
        .collect();
    let projection = start(services::PROJECTION, &[]);
    let notifier: Vec<_> = (0..NOTIFIER_REPLICAS)
        .map(|_| {
            start(
                services::NOTIFIER,
                &[(contract::env::UPR_REMINDER_LEADS, LEADS)],
            )
        })
        .collect();
    let system = System {
        nats,
        ingest,
        projection,
        notifier,
    };
    for p in system.services() {
        p.wait_healthy().await;
    }

    let client = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .max_reconnects(None)
        .reconnect_delay_callback(|n| Duration::from_millis((n as u64 * 50).min(500)))
        .connect(url.clone())
        .await
        .expect("connect");
    let driver = Driver {
        client: client.clone(),
        counters: Arc::new(Counters::default()),
        ledger: Arc::new(Mutex::new(Ledger::default())),
        max_seq: Arc::new(AtomicU64::new(0)),
        gate: Arc::new(AtomicBool::new(false)),
    };

    let stop_chaos = Arc::new(AtomicBool::new(false));
    let chaos_rng = rng.fork();
    let guard = ChaosGuard {
        stop: stop_chaos.clone(),
        handle: Some(std::thread::spawn({
            let stop = stop_chaos.clone();
            move || chaos(system, chaos_rng, stop)
        })),
    };
    let stop_sampling = Arc::new(AtomicBool::new(false));
    let sampler = tokio::spawn(sample_notifier_floor(driver.clone(), stop_sampling.clone()));

    // Long-lived reviews: the bulk of the events.
    let mut keys: Vec<ReviewKey> = Vec::new();
    for session in 1..=60u64 {
        for (code, _) in MEMBER_STATES.iter() {
            keys.push(ReviewKey {
                country: Country::parse(code).expect("listed code"),
                session: Session::new(session).expect("1..=60"),
            });
        }
    }
    let reviews = (target as usize / 7).clamp(BULK_CLIENTS, keys.len());
    for i in (1..keys.len()).rev() {
        keys.swap(i, rng.below(i as u64 + 1) as usize);
    }
    let mut bulk = Vec::new();
    for w in 0..BULK_CLIENTS {
        let mine: Vec<ReviewKey> = keys[..reviews]
            .iter()
            .skip(w)
            .step_by(BULK_CLIENTS)
            .copied()
            .collect();
        bulk.push(tokio::spawn(bulk_client(
            driver.clone(),
            mine,
            rng.fork(),
            target,
        )));
    }

    // Reviews a few seconds ahead, started every 150-400 ms while the bulk runs.
    let mut near_keys = Vec::new();
    for session in 900..=999u64 {
        for (code, _) in MEMBER_STATES.iter() {
            near_keys.push(ReviewKey {
                country: Country::parse(code).expect("listed code"),
                session: Session::new(session).expect("900..=999"),
            });
        }
    }
    for i in (1..near_keys.len()).rev() {
        near_keys.swap(i, rng.below(i as u64 + 1) as usize);
    }
    let mut near = Vec::new();
    let mut next_near = near_keys.into_iter();
    while !bulk.iter().all(|h| h.is_finished()) {
        let key = next_near.next().expect("enough near-term review keys");
        near.push(tokio::spawn(near_review(driver.clone(), key, rng.fork())));
        tokio::time::sleep(Duration::from_millis(rng.between(150, 400))).await;
    }
    for h in bulk.into_iter().chain(near) {
        if let Err(e) = h.await {
            std::panic::resume_unwind(e.into_panic());
        }
    }
    let workload_done = started.elapsed();

    // Stop killing; every process is up again when the chaos thread returns.
    let (system, outages) = guard.finish();
    system.wait_all_healthy(Duration::from_secs(60));

    // Wait until every near-term review date has passed and the notifier and
    // the projection have caught up with the log.
    let events_raw = read_stream(&client, contract::EVENTS_STREAM).await;
    let last_seq = events_raw.last().map_or(0, |m| m.seq);
    let mut envelopes = Vec::new();
    for m in &events_raw {
        match Envelope::from_json(&m.payload) {
            Ok(e) => envelopes.push((m.seq, e)),
            Err(e) => report
                .failures
                .push(format!("seq {} is not a valid envelope: {e}", m.seq)),
        }
    }
    let latest_date = envelopes
        .iter()
        .filter_map(|(_, e)| match &e.data {
            EventData::ReviewScheduled(d) => Some(d.scheduled_for.unix_millis()),
            EventData::ReviewRescheduled(d) => Some(d.scheduled_for.unix_millis()),
            _ => None,
        })
        .filter(|d| *d < now_ms() + 60_000)
        .max()
        .unwrap_or(0);
    while now_ms() < latest_date + 2500 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let caught_up = async {
        loop {
            let status = client
                .request(contract::query::STATUS, json!({}).to_string().into())
                .await
                .ok()
                .and_then(|r| serde_json::from_slice::<Value>(&r.payload).ok());
            let projection_done = status.is_some_and(|s| s["applied_seq"] == last_seq);
            let notifier_done = consumer_caught_up(
                &client,
                contract::EVENTS_STREAM,
                contract::notifier::EVENTS_CONSUMER,
            )
            .await
                && consumer_caught_up(
                    &client,
                    contract::notifier::TIMERS_STREAM,
                    contract::notifier::TIMERS_CONSUMER,
                )
                .await;
            if projection_done && notifier_done {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    if tokio::time::timeout(Duration::from_secs(120), caught_up)
        .await
        .is_err()
    {
        report
            .failures
            .push("projection or notifier did not catch up within 120 s".into());
    }
    stop_sampling.store(true, Ordering::Relaxed);
    let floor = sampler.await.expect("sampler");
    let run_end = now_ms();

    // 1. The event log: every acknowledged event exactly once, nothing else.
    let ledger = std::mem::take(&mut *driver.ledger.lock().unwrap());
    let mut seen: HashMap<Uuid, u64> = HashMap::new();
    for (m, (seq, e)) in events_raw.iter().zip(&envelopes) {
        debug_assert_eq!(m.seq, *seq);
        report.check(
            m.msg_id.as_deref() == Some(e.id.to_string().as_str()),
            || {
                format!(
                    "seq {}: Nats-Msg-Id {:?} differs from the envelope id {}",
                    m.seq, m.msg_id, e.id
                )
            },
        );
        report.check(
            m.subject == subjects::event(e.country, e.session, e.event_type()),
            || {
                format!(
                    "seq {}: subject {} does not match its envelope",
                    m.seq, m.subject
                )
            },
        );
        if let Some(first) = seen.insert(e.id, m.seq) {
            report.check(false, || {
                format!("event {} stored twice: seq {first} and {}", e.id, m.seq)
            });
        }
        report.check(ledger.acked.contains_key(&e.id), || {
            format!(
                "seq {}: event {} is stored but was never acknowledged",
                m.seq, e.id
            )
        });
        report.check(!ledger.refused.contains(&e.id), || {
            format!("seq {}: event {} is stored but was refused", m.seq, e.id)
        });
    }
    let mut lost = 0;
    for (id, seq) in &ledger.acked {
        match seen.get(id) {
            Some(s) if s == seq => {}
            Some(s) => report.check(false, || {
                format!("event {id} acknowledged at seq {seq} but stored at {s}")
            }),
            None => {
                lost += 1;
                report.check(false, || {
                    format!("acknowledged event {id} (seq {seq}) is missing from UPR_EVENTS")
                });
            }
        }
    }
    for v in &ledger.violations {
        report.check(false, || format!("contract: {v}"));
    }
    let violations = ledger.violations.len();

    // 2. The read models: every key of the three buckets, byte for byte.
    let folded = ReadModels::fold(envelopes.iter().map(|(s, e)| (*s, e)));
    let expect_bucket = |pairs: Vec<(String, Vec<u8>)>| -> BTreeMap<String, Bytes> {
        pairs
            .into_iter()
            .map(|(k, v)| (k, Bytes::from(v)))
            .collect()
    };
    let buckets = [
        (
            contract::REVIEWS_BUCKET,
            expect_bucket(
                folded
                    .reviews
                    .values()
                    .map(|v| (v.kv_key(), v.to_json()))
                    .collect(),
            ),
        ),
        (
            contract::SESSIONS_BUCKET,
            expect_bucket(
                folded
                    .sessions
                    .values()
                    .map(|v| (v.kv_key(), v.to_json()))
                    .collect(),
            ),
        ),
        (
            contract::COUNTRIES_BUCKET,
            expect_bucket(
                folded
                    .countries
                    .values()
                    .map(|v| (v.kv_key(), v.to_json()))
                    .collect(),
            ),
        ),
    ];
    let mut values_checked = 0;
    for (bucket, expected) in buckets {
        let actual = read_bucket(&client, bucket).await;
        let keys: BTreeSet<&String> = expected.keys().chain(actual.keys()).collect();
        let mut differing = Vec::new();
        for k in keys {
            if expected.get(k) != actual.get(k) {
                differing.push(format!(
                    "  {bucket} {k}:\n    expected {}\n    actual   {}",
                    expected
                        .get(k)
                        .map_or("(none)".into(), |v| String::from_utf8_lossy(v).into_owned()),
                    actual
                        .get(k)
                        .map_or("(none)".into(), |v| String::from_utf8_lossy(v).into_owned()),
                ));
            }
        }
        values_checked += expected.len();
        let n = differing.len();
        differing.truncate(5);
        report.check(n == 0, || {
            format!(
                "{n} values of {bucket} differ from the fold, e.g.:\n{}",
                differing.join("\n")
            )
        });
    }

    // 3. Notifications: reminders and change notices.
    let notices = read_stream(&client, contract::NOTIFICATIONS_STREAM).await;
    let timeline = Timeline {
        floor: &floor,
        outages: &outages,
        run_start,
        run_end,
        read_at: now_ms(),
    };
    let expected = expected_reminders(&envelopes, &timeline);
    let mut sent: HashMap<String, Value> = HashMap::new();
    let mut change_notices: HashMap<String, u32> = HashMap::new();
    let mut late = 0;
    for m in &notices {
        let v: Value = match serde_json::from_slice(&m.payload) {
            Ok(v) => v,
            Err(e) => {
                report.check(false, || {
                    format!("notification seq {} is not JSON: {e}", m.seq)
                });
                continue;
            }
        };
        let id = v["id"].as_str().unwrap_or_default().to_owned();
        report.check(m.msg_id.as_deref() == Some(id.as_str()), || {
            format!("notification {id}: Nats-Msg-Id is {:?}", m.msg_id)
        });
        if v["kind"] != "reminder" {
            *change_notices.entry(id).or_default() += 1;
            continue;
        }
        if v["late"] == true {
            late += 1;
        }
        if sent.insert(id.clone(), v.clone()).is_some() {
            report.check(false, || format!("reminder {id} sent twice"));
        }
        let Some(exp) = expected.get(&id) else {
            report.check(false, || {
                format!("reminder {id} was never planned by any (re)scheduling: {v}")
            });
            continue;
        };
        report.check(!exp.never, || format!("reminder {id} must not have been sent (its review changed before it was due, or it is not due): {v}"));
        let r = &exp.reminder;
        let want = json!({"id": r.id, "kind": "reminder", "country": r.country, "session": r.session,
            "scheduled_for": r.scheduled_for, "location": r.location, "lead": r.lead, "due_at": r.due_at});
        for (k, w) in want.as_object().expect("object") {
            report.check(&v[k] == w, || {
                format!("reminder {id}: {k} is {}, expected {w}", v[k])
            });
        }
        let sent_at = v["sent_at"]
            .as_str()
            .and_then(|s| Timestamp::parse_rfc3339(s).ok());
        report.check(
            sent_at.is_some_and(|s| s >= r.due_at && s < r.scheduled_for),
            || {
                format!(
                    "reminder {id} sent at {:?}, outside [due_at, scheduled_for)",
                    v["sent_at"]
                )
            },
        );
        if let Some(s) = sent_at {
            let is_late = s.since(r.due_at) > upr_shared::domain::LATE_AFTER;
            report.check(v["late"] == is_late, || {
                format!("reminder {id}: late is {} for sent_at {s}", v["late"])
            });
        }
    }
    let notifier_logs: String = system
        .notifier
        .iter()
        .map(|p| strip_ansi(&p.logs()))
        .collect::<Vec<_>>()
        .join("\n");
    let mut must = 0;
    let mut missing = 0;
    let mut ambiguous: BTreeMap<&str, (u32, u32)> = BTreeMap::new();
    for (id, exp) in &expected {
        if exp.must {
            must += 1;
            if !sent.contains_key(id) {
                missing += 1;
                let r = &exp.reminder;
                let (due, date) = (r.due_at.unix_millis(), r.scheduled_for.unix_millis());
                let near: Vec<String> = outages
                    .iter()
                    .filter(|o| o.up_ms >= due - 10_000 && o.down_ms <= date + 10_000)
                    .map(|o| {
                        format!(
                            "{:?} down {:+} ms .. up {:+} ms from due",
                            o.target,
                            o.down_ms - due,
                            o.up_ms - due
                        )
                    })
                    .collect();
                let log: Vec<&str> = notifier_logs
                    .lines()
                    .filter(|l| l.contains(id.as_str()))
                    .collect();
                report.check(false, || {
                    format!(
                        "reminder {id} fell due well inside the run with the notifier up, but was never sent \
                         (due {}, review {}, planned {} ms before due; outages nearby: {near:?}; notifier log: {log:#?})",
                        r.due_at, r.scheduled_for, due - exp.planned_by,
                    )
                });
            }
        } else if let Some(why) = exp.ambiguous {
            let e = ambiguous.entry(why).or_default();
            e.0 += 1;
            e.1 += u32::from(sent.contains_key(id));
        }
    }
    let (mut changes, mut corrections, mut corrected) = (0, 0, 0);
    // A correction is announced when it takes back what subscribers were
    // told of: a scheduling, a reschedule or a cancellation.
    let mut lifecycles: HashMap<ReviewKey, ReviewState> = HashMap::new();
    for (_, e) in &envelopes {
        let taken_back = lifecycles.entry(e.review_key()).or_default().apply(e);
        if e.event_type() == EventType::EventRetracted {
            corrections += 1;
            corrected += u32::from(taken_back.is_some());
        }
        let kind = match (e.event_type(), taken_back.map(|t| t.event)) {
            (EventType::ReviewRescheduled, _) => "rescheduled",
            (EventType::ReviewCancelled, _) => "cancelled",
            (
                EventType::EventRetracted,
                Some(
                    EventType::ReviewScheduled
                    | EventType::ReviewRescheduled
                    | EventType::ReviewCancelled,
                ),
            ) => "corrected",
            _ => continue,
        };
        changes += 1;
        let id = format!("{}.{}.{kind}.{}", e.country, e.session, e.id);
        let n = change_notices.remove(&id).unwrap_or(0);
        report.check(n == 1, || {
            format!("change notice {id} is in UPR_NOTIFICATIONS {n} times")
        });
    }
    report.check(change_notices.is_empty(), || {
        format!(
            "change notices without an event: {:?}",
            change_notices.keys().take(5).collect::<Vec<_>>()
        )
    });

    // The figures of the run.
    let c = &driver.counters;
    let mut kills: BTreeMap<&str, u32> = BTreeMap::new();
    for o in &outages {
        *kills.entry(o.target.label()).or_default() += 1;
    }
    report.line(format!(
        "events: {} stored (last seq {last_seq}), {} commands, {} conflicts on purpose, {} duplicate replies to retries",
        envelopes.len(), get(&c.commands), get(&c.conflicts), get(&c.duplicates)
    ));
    report.line(format!(
        "retries: {} timeouts, {} no responders, {} unavailable, {} other errors",
        get(&c.timeouts),
        get(&c.no_responders),
        get(&c.unavailable),
        get(&c.other_errors)
    ));
    report.line(format!(
        "kills (SIGKILL + restart): {} in all, {kills:?}",
        outages.len()
    ));
    report.line(format!(
        "read models: {values_checked} values compared byte for byte"
    ));
    report.line(format!(
        "reminders: {} planned, {} fell due during the run; {} sent ({late} late); {must} required, {missing} of them missing; ambiguous (count, sent): {ambiguous:?}",
        expected.len(),
        expected.values().filter(|e| e.reminder.due_at.unix_millis() <= run_end).count(),
        sent.len(),
    ));
    report.line(format!(
        "change notices: {changes} expected, each checked exactly once; \
         {corrections} retractions stored, {corrected} of a lifecycle event"
    ));
    let mut lags: Vec<i64> = envelopes
        .iter()
        .map(|(seq, e)| applied_by(&floor, *seq).saturating_sub(e.recorded_at.unix_millis()))
        .filter(|l| *l < i64::MAX / 2)
        .collect();
    lags.sort_unstable();
    let pct = |p: usize| {
        lags.get(lags.len().saturating_sub(1) * p / 100)
            .copied()
            .unwrap_or(0)
    };
    report.line(format!(
        "notifier planner lag behind ingest (ms, sampled every 200 ms): p50 {} p90 {} p99 {} max {}",
        pct(50), pct(90), pct(99), pct(100)
    ));
    report.line(format!(
        "contract violations seen by the client: {violations}"
    ));
    report.line(format!(
        "losses: {lost} acknowledged events lost; wall time {:.1} s (workload {:.1} s)",
        started.elapsed().as_secs_f64(),
        workload_done.as_secs_f64()
    ));

    if !report.failures.is_empty() {
        // Keep every log of the run for the diagnosis: the processes' own
        // directories vanish with them.
        let dir =
            std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("upr-fault-{seed}"));
        let _ = std::fs::create_dir_all(&dir);
        let named = system
            .ingest
            .iter()
            .enumerate()
            .map(|(i, p)| (format!("ingest-{i}"), p))
            .chain([("projection".to_owned(), &system.projection)])
            .chain(
                system
                    .notifier
                    .iter()
                    .enumerate()
                    .map(|(i, p)| (format!("notifier-{i}"), p)),
            );
        for (name, p) in named {
            let _ = std::fs::write(dir.join(format!("{name}.log")), strip_ansi(&p.logs()));
        }
        let _ = std::fs::copy(
            system.nats.store_dir().join("nats-server.log"),
            dir.join("nats-server.log"),
        );
        let outage_lines: Vec<String> = outages
            .iter()
            .map(|o| format!("{:?}\t{}\t{}", o.target, o.down_ms, o.up_ms))
            .collect();
        let _ = std::fs::write(dir.join("outages.tsv"), outage_lines.join("\n"));
        println!("logs of every process kept in {}", dir.display());
    }
    let n = report.failures.len();
    report.failures.sort_by_key(|f| f.starts_with("contract:"));
    report.failures.truncate(40);
    assert!(
        n == 0,
        "UPR_FAULT_SEED={seed}: {n} failures, the first ones:\n{}",
        report.failures.join("\n")
    );
}

/// The lifecycle is decided against the log, not against what one replica
/// happened to see last: with two ingest replicas taking turns at random, a
/// client sending schedule, hold, report in order to one review must never
/// be told `conflict`. (A replica that cached "scheduled" before the other
/// replica stored the hold may not refuse the report on that stale view.)
#[tokio::test]
async fn two_ingest_replicas_never_refuse_a_valid_command_from_a_stale_view() {
    let nats = NatsServer::start();
    let replicas: Vec<ServiceProcess> = (0..2)
        .map(|_| ServiceProcess::start(services::INGEST, &nats.url(), &[]))
        .collect();
    for p in &replicas {
        p.wait_healthy().await;
    }
    let client = nats.client().await;
    // Both replicas must be subscribed before the queue group spreads the work.
    let mut seen_replicas = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while seen_replicas.len() < 2 {
        assert!(
            Instant::now() < deadline,
            "two intake endpoints never showed up"
        );
        let inbox = client.new_inbox();
        let mut replies = client.subscribe(inbox.clone()).await.expect("subscribe");
        client
            .publish_with_reply(format!("$SRV.INFO.{}", services::INGEST), inbox, "".into())
            .await
            .expect("publish");
        while let Ok(Some(m)) =
            tokio::time::timeout(Duration::from_millis(300), replies.next()).await
        {
            let info: Value = serde_json::from_slice(&m.payload).expect("info");
            if info["endpoints"].as_array().is_some_and(|e| !e.is_empty()) {
                seen_replicas.insert(info["id"].to_string());
            }
        }
    }
    let mut refused = Vec::new();
    for session in 1..=40u64 {
        let review = json!({"country": "KZ", "session": session});
        let steps = [
            (
                EventType::ReviewScheduled,
                json!({"scheduled_for": "2030-01-23T08:30:00Z"}),
            ),
            (EventType::ReviewHeld, json!({})),
            (
                EventType::ReportPublished,
                json!({"published_on": "2030-03-01"}),
            ),
            (
                EventType::SideEventHeld,
                json!({"title": "Civic space", "held_on": "2030-01-22"}),
            ),
        ];
        for (ty, extra) in steps {
            let mut p = review.clone();
            for (k, v) in extra.as_object().expect("object") {
                p[k] = v.clone();
            }
            let reply = client
                .request(subjects::ingest(ty), p.to_string().into())
                .await
                .expect("reply");
            let reply: Value = serde_json::from_slice(&reply.payload).expect("json");
            if reply["ok"] != true {
                refused.push(format!("KZ.{session} {ty}: {reply}"));
                break;
            }
        }
    }
    assert!(
        refused.is_empty(),
        "{} valid commands refused (of 40 reviews):\n{}",
        refused.len(),
        refused.join("\n")
    );
}
