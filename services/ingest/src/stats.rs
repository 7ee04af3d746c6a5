//! Counters shown in the STATS data of the intake endpoint
//! (`nats micro stats upr-ingest`), so operators see what the service
//! accepted and why it refused the rest.

use std::{
    collections::BTreeMap,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use upr_domain::ErrorCode;

/// Outcome counts since start.
#[derive(Debug, Default)]
pub struct Counters {
    accepted: AtomicU64,
    duplicate: AtomicU64,
    /// Commands handed to the replica owning their review (counted there too).
    handed_over: AtomicU64,
    /// Appends refused because another writer had moved the review on: the
    /// cost of replicas sharing a review, which ownership keeps near zero.
    lost_races: AtomicU64,
    /// Ingest replicas sharing the reviews, as this one counts them.
    replicas: AtomicU64,
    /// By code; a std mutex because it is held for one map update, never
    /// across an await.
    rejected: Mutex<BTreeMap<&'static str, u64>>,
}

impl Counters {
    /// One event stored.
    pub fn accepted(&self) {
        self.accepted.fetch_add(1, Ordering::Relaxed);
    }

    /// One retry answered with the original sequence.
    pub fn duplicate(&self) {
        self.duplicate.fetch_add(1, Ordering::Relaxed);
    }

    /// One command handed to the replica owning its review.
    pub fn handed_over(&self) {
        self.handed_over.fetch_add(1, Ordering::Relaxed);
    }

    /// One append that lost a race for its review.
    pub fn lost_race(&self) {
        self.lost_races.fetch_add(1, Ordering::Relaxed);
    }

    /// The replicas counted in the last round.
    pub fn replicas(&self, n: usize) {
        self.replicas.store(n as u64, Ordering::Relaxed);
    }

    /// One refusal.
    pub fn rejected(&self, code: ErrorCode) {
        let mut map = self
            .rejected
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *map.entry(code.as_str()).or_default() += 1;
    }

    /// `{"accepted": n, "duplicate": n, "handed_over": n, "lost_races": n,
    /// "replicas": n, "rejected": {"<code>": n, ...}}`.
    pub fn snapshot(&self) -> serde_json::Value {
        let rejected = self
            .rejected
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        serde_json::json!({
            "accepted": self.accepted.load(Ordering::Relaxed),
            "duplicate": self.duplicate.load(Ordering::Relaxed),
            "handed_over": self.handed_over.load(Ordering::Relaxed),
            "lost_races": self.lost_races.load(Ordering::Relaxed),
            "replicas": self.replicas.load(Ordering::Relaxed).max(1),
            "rejected": rejected,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_counts_by_outcome_and_code() {
        let c = Counters::default();
        c.accepted();
        c.accepted();
        c.duplicate();
        c.rejected(ErrorCode::Conflict);
        c.rejected(ErrorCode::InvalidJson);
        c.rejected(ErrorCode::Conflict);
        c.handed_over();
        c.lost_race();
        c.replicas(3);
        assert_eq!(
            c.snapshot(),
            serde_json::json!({
                "accepted": 2, "duplicate": 1, "handed_over": 1, "lost_races": 1, "replicas": 3,
                "rejected": {"conflict": 2, "invalid_json": 1}
            })
        );
    }
}
