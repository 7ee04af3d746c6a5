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

use upr_shared::domain::ErrorCode;

/// Outcome counts since start.
#[derive(Debug, Default)]
pub struct Counters {
    accepted: AtomicU64,
    duplicate: AtomicU64,
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

    /// One refusal.
    pub fn rejected(&self, code: ErrorCode) {
        let mut map = self.rejected.lock().unwrap_or_else(|p| p.into_inner());
        *map.entry(code.as_str()).or_default() += 1;
    }

    /// `{"accepted": n, "duplicate": n, "rejected": {"<code>": n, ...}}`.
    pub fn snapshot(&self) -> serde_json::Value {
        let rejected = self
            .rejected
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        serde_json::json!({
            "accepted": self.accepted.load(Ordering::Relaxed),
            "duplicate": self.duplicate.load(Ordering::Relaxed),
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
        assert_eq!(
            c.snapshot(),
            serde_json::json!({"accepted": 2, "duplicate": 1, "rejected": {"conflict": 2, "invalid_json": 1}})
        );
    }
}
