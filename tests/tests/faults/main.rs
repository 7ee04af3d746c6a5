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
//! - Every event says who recorded it: the server runs the shipped
//!   configuration (`deploy/nats/nats.conf`, keys from `upr-keys`), each
//!   party sends from its own account, and `recorded_by` in the log and in
//!   the read models' history is the party whose request was acknowledged.
//!   A retraction by a party that neither recorded the event nor is an
//!   editor (`UPR_EDITORS`) is refused with `forbidden` and stores nothing;
//!   the recorder's or an editor's is decided by the lifecycle, and the
//!   `corrected` notice names who retracted.
//!
//! The client follows the contract: requests with its own `event_id`, retried
//! with the same id on timeout, "no responders" and `unavailable`. A request
//! whose answer was lost is sent again until it gets one, so every command
//! ends acknowledged (then it is in the log once) or refused (then it is not).
//!
//! Knobs: `UPR_FAULT_SEED` (printed at the start; the kill schedule and the
//! workload's choices derive from it, so a seed repeats them for a given
//! version of this code and its `Cargo.lock`; the interleaving with the
//! processes is not repeatable), `UPR_FAULT_EVENTS` (stored events to reach,
//! default 10 000). `scripts/fault-long` runs the long variant.
//!
//! The modules, each readable on its own:
//! - [`client`]: requests with retries, and what the client was told;
//! - [`workload`]: what each review's next command is, and the client's
//!   model of the lifecycle that says whether it must be accepted;
//! - [`chaos`]: killing and restarting the processes;
//! - [`observe`]: reading back what JetStream holds, and the notifier's
//!   progress while the run goes on;
//! - [`oracle`]: what the stream says must be there, and the comparisons;
//! - [`sigkill`] and [`replicas`]: the tests.

#![allow(
    clippy::unwrap_used,
    reason = "tests: a helper's unwrap is an assertion, and a failure should panic where it happened"
)]

mod chaos;
mod client;
mod observe;
mod oracle;
mod replicas;
mod sigkill;
mod workload;

use std::time::{SystemTime, UNIX_EPOCH};

use upr_domain::Timestamp;

/// Reminder leads of the run: short, so reminders fall due while it runs.
const LEADS: &str = "4s,2s";
/// The parties that record events, each its own account and key
/// (`upr-keys add publisher NAME`): `publisher`, which every installation
/// gets first, another organisation, and [`EDITOR`], which records too.
const PARTIES: [&str; 3] = ["publisher", "ngo-a", EDITOR];
/// The one party named in `UPR_EDITORS`: it may retract anyone's event.
const EDITOR: &str = "desk";
/// How many of each process a run has.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Layout {
    /// nats-server nodes; more than one is a cluster, with every stream and
    /// bucket replicated on all of them.
    pub(crate) nodes: usize,
    pub(crate) ingest: usize,
    /// The first holds the lease; the others stand by.
    pub(crate) projections: usize,
    pub(crate) notifiers: usize,
}

impl Layout {
    /// One server; two ingest and two notifier replicas, one projection.
    pub(crate) const SINGLE: Layout = Layout {
        nodes: 1,
        ingest: 2,
        projections: 1,
        notifiers: 2,
    };
    /// Three nodes, R3 streams and buckets, two replicas of every service.
    pub(crate) const CLUSTER: Layout = Layout {
        nodes: 3,
        ingest: 2,
        projections: 2,
        notifiers: 2,
    };
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis()
        .try_into()
        .expect("milliseconds since 1970 fit in i64")
}

fn ts(ms: i64) -> Timestamp {
    Timestamp::from_unix_millis(ms).expect("timestamp in range")
}
