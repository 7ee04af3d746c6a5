//! The client: it follows the contract (its own `event_id` per command, the
//! same payload again on timeout, "no responders" and `unavailable`) and
//! writes down every definitive answer, because the checks compare the log
//! with what the client was told, not with what it sent.
//!
//! Each command goes out on the connection of one party (its own account
//! and key, as `upr-keys add` makes them), so the ledger also knows who
//! recorded every acknowledged event: what the log must say in
//! `recorded_by`, and who may retract it.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use async_nats::{Client, RequestErrorKind};
use bytes::Bytes;
use serde_json::Value;
use upr_domain::EventType;
use upr_nats::contract::subjects;
use uuid::Uuid;

/// How long one command may go without a definitive answer (ok or a
/// refusal other than `unavailable`) before the test gives up on it.
const COMMAND_DEADLINE: Duration = Duration::from_secs(90);
/// Client-side timeout of one request; ingest answers within 2.5 s.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(4);

/// What the client was told about one command, definitively.
#[derive(Debug, Clone)]
pub(crate) enum Outcome {
    Stored,
    Refused { code: String },
}

/// One party of the run: its name (its account, so what `recorded_by`
/// says), its own connection, and whether it is named in `UPR_EDITORS`.
pub(crate) struct Party {
    pub(crate) name: &'static str,
    pub(crate) client: Client,
    pub(crate) editor: bool,
}

#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) commands: AtomicU64,
    pub(crate) stored: AtomicU64,
    pub(crate) duplicates: AtomicU64,
    pub(crate) conflicts: AtomicU64,
    pub(crate) forbidden: AtomicU64,
    pub(crate) timeouts: AtomicU64,
    pub(crate) no_responders: AtomicU64,
    pub(crate) unavailable: AtomicU64,
    pub(crate) other_errors: AtomicU64,
}

fn add(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

pub(crate) fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

/// Everything the client learnt, for the checks.
#[derive(Default)]
pub(crate) struct Ledger {
    /// event id -> the seq an `ok` reply gave.
    pub(crate) acked: HashMap<Uuid, u64>,
    /// event id -> the party whose request got the `ok` reply.
    pub(crate) recorded_by: HashMap<Uuid, &'static str>,
    /// event ids definitively refused.
    pub(crate) refused: HashSet<Uuid>,
    /// Things that contradict the contract, found while running.
    pub(crate) violations: Vec<String>,
}

#[derive(Clone)]
pub(crate) struct Driver {
    /// The operators' connection (`admin`, in the service account): reads
    /// back the streams, buckets and consumers; never sends a command.
    pub(crate) client: Client,
    /// Who sends the commands.
    pub(crate) parties: Arc<[Party]>,
    pub(crate) counters: Arc<Counters>,
    pub(crate) ledger: Arc<Mutex<Ledger>>,
    /// The highest sequence an `ok` reply gave.
    pub(crate) max_seq: Arc<AtomicU64>,
    /// Closed while the notifier is alive but behind the log (see
    /// [`crate::observe::sample_notifier_floor`]).
    pub(crate) gate: Arc<AtomicBool>,
}

impl Driver {
    pub(crate) fn new(client: Client, parties: Vec<Party>) -> Self {
        Self {
            client,
            parties: parties.into(),
            counters: Arc::new(Counters::default()),
            ledger: Arc::new(Mutex::new(Ledger::default())),
            max_seq: Arc::new(AtomicU64::new(0)),
            gate: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Sends one command as party number `party` until it gets a definitive
    /// answer, retrying with the same payload (so the same `event_id`) on
    /// the same connection, as the contract tells clients to.
    pub(crate) async fn send(
        &self,
        party: usize,
        ty: EventType,
        id: Uuid,
        mut payload: Value,
    ) -> Outcome {
        let party = &self.parties[party];
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
            match party.client.send_request(subject.clone(), request).await {
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
                        ledger.recorded_by.insert(id, party.name);
                        return Outcome::Stored;
                    }
                    let code = reply["error"]["code"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned();
                    if code == "unavailable" {
                        add(&self.counters.unavailable);
                    } else if !code.is_empty() {
                        match code.as_str() {
                            "conflict" => add(&self.counters.conflicts),
                            "forbidden" => add(&self.counters.forbidden),
                            _ => {}
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
                "{ty} {id} from {} got no definitive answer within {COMMAND_DEADLINE:?}: the system did not recover",
                party.name
            );
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(500));
        }
    }

    pub(crate) fn violation(&self, what: String) {
        self.ledger.lock().unwrap().violations.push(what);
    }
}
