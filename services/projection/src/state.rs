//! What the consumer loop shares with the query handlers and the stats
//! handler: the applied sequence (as a watch, so `min_seq` waits without
//! polling), the upcoming index and the counters.

use std::sync::{
    RwLock,
    atomic::{AtomicU64, Ordering},
};

use serde_json::json;
use tokio::sync::watch;

use crate::upcoming::UpcomingIndex;

/// Shared between the consumer loop (the only writer) and the queries.
#[derive(Debug)]
pub struct Shared {
    /// The last stream sequence whose effects are durable in the buckets.
    /// Bumped only after a batch's writes are acknowledged by JetStream, so a
    /// query that waited for it reads its own write.
    applied: watch::Sender<u64>,
    /// Scheduled reviews by date. A std lock: it is held for microseconds and
    /// never across an await.
    pub upcoming: RwLock<UpcomingIndex>,
    /// Events folded into the read models since start.
    pub events_applied: AtomicU64,
    /// Messages of the log that were not valid envelopes, skipped since start.
    pub malformed_skipped: AtomicU64,
    /// Events past their review's limits (written around ingest), skipped
    /// by every read model since start (each is logged with its sequence).
    pub beyond_limits_skipped: AtomicU64,
    /// Messages in the stream after the last one processed (from the last
    /// message's metadata); 0 when caught up.
    pub lag: AtomicU64,
    /// How many times the read models were emptied and replayed from 1.
    pub replays: AtomicU64,
    /// Read-model values larger than the server accepts, left unwritten
    /// since start (each is logged with its key).
    pub values_refused: AtomicU64,
}

impl Default for Shared {
    fn default() -> Self {
        Self {
            applied: watch::Sender::new(0),
            upcoming: RwLock::default(),
            events_applied: AtomicU64::new(0),
            malformed_skipped: AtomicU64::new(0),
            beyond_limits_skipped: AtomicU64::new(0),
            lag: AtomicU64::new(0),
            replays: AtomicU64::new(0),
            values_refused: AtomicU64::new(0),
        }
    }
}

impl Shared {
    /// The applied sequence now.
    pub fn applied_seq(&self) -> u64 {
        *self.applied.borrow()
    }

    /// Publishes a new applied sequence (also downwards, on a replay).
    pub fn set_applied(&self, seq: u64) {
        self.applied.send_replace(seq);
    }

    /// A receiver to wait for `applied >= n`.
    pub fn watch_applied(&self) -> watch::Receiver<u64> {
        self.applied.subscribe()
    }

    /// The service's own counters, added to each endpoint's STATS `data`.
    pub fn stats_json(&self) -> serde_json::Value {
        json!({
            "applied_seq": self.applied_seq(),
            "lag": self.lag.load(Ordering::Relaxed),
            "events_applied": self.events_applied.load(Ordering::Relaxed),
            "malformed_skipped": self.malformed_skipped.load(Ordering::Relaxed),
            "beyond_limits_skipped": self.beyond_limits_skipped.load(Ordering::Relaxed),
            "replays": self.replays.load(Ordering::Relaxed),
            "values_refused": self.values_refused.load(Ordering::Relaxed),
            "scheduled_reviews": self.upcoming.read().map_or(0, |u| u.len()),
        })
    }
}
