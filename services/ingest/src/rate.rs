//! Intake rate per party: a token bucket for each requester's account
//! (contract V3.4; docs/security.md), so one publisher cannot fill the disk
//! the event log needs or take every other party's appends.
//!
//! The party is the account nats-server names in the `Nats-Request-Info`
//! header of a request crossing a service import. A request without it comes
//! from inside the service account (an operator, `upr-ingest import`) or
//! from a server without accounts: not limited here. Each replica keeps its
//! own buckets, so with N replicas a party may send up to N times the rate.

use std::{
    collections::HashMap,
    sync::{Mutex, PoisonError},
    time::{Duration, Instant},
};

/// `UPR_INTAKE_RATE` when unset: intake messages per second per party.
pub const DEFAULT_RATE: usize = 200;

/// How often a party's refusals are recorded in `UPR_REJECTED` at most:
/// recording every one of a flood would feed it.
pub const RECORD_EVERY: Duration = Duration::from_secs(1);

/// What the bucket says about one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Within the rate.
    Allowed,
    /// Past it: answer `unavailable` with the retry hint.
    Refused {
        /// When a token is back.
        retry_after: Duration,
        /// Record this refusal (the first of its party in [`RECORD_EVERY`]).
        record: bool,
    },
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
    recorded: Option<Instant>,
}

/// The buckets, one per party; a burst of one second's worth.
#[derive(Debug)]
pub struct IntakeRate {
    per_second: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl IntakeRate {
    /// `per_second` messages per second per party, bursts of as many.
    pub fn new(per_second: usize) -> Self {
        Self {
            per_second: f64::from(u32::try_from(per_second.max(1)).unwrap_or(u32::MAX)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// The rate per party.
    pub fn per_second(&self) -> f64 {
        self.per_second
    }

    /// Takes a token for `party` at `now`.
    pub fn check(&self, party: &str, now: Instant) -> Verdict {
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        let bucket = buckets.entry(party.to_string()).or_insert(Bucket {
            tokens: self.per_second,
            at: now,
            recorded: None,
        });
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.per_second).min(self.per_second);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Verdict::Allowed;
        }
        let retry_after = Duration::from_secs_f64((1.0 - bucket.tokens) / self.per_second);
        let record = bucket
            .recorded
            .is_none_or(|at| now.saturating_duration_since(at) >= RECORD_EVERY);
        if record {
            bucket.recorded = Some(now);
        }
        Verdict::Refused {
            retry_after,
            record,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_party_past_its_rate_is_refused_until_the_bucket_refills() {
        let rate = IntakeRate::new(10);
        let t0 = Instant::now();
        for _ in 0..10 {
            assert_eq!(rate.check("PUBLISHER", t0), Verdict::Allowed);
        }
        let Verdict::Refused {
            retry_after,
            record,
        } = rate.check("PUBLISHER", t0)
        else {
            panic!("the 11th in the same instant is refused");
        };
        assert!(record, "the first refusal is recorded");
        assert!(retry_after <= Duration::from_millis(100), "{retry_after:?}");
        assert!(
            matches!(
                rate.check("PUBLISHER", t0),
                Verdict::Refused { record: false, .. }
            ),
            "the next refusal in the same second is not recorded"
        );
        // Another party has its own bucket.
        assert_eq!(rate.check("ACME", t0), Verdict::Allowed);
        // A tenth of a second later, one more.
        let later = t0 + Duration::from_millis(100);
        assert_eq!(rate.check("PUBLISHER", later), Verdict::Allowed);
        assert!(matches!(
            rate.check("PUBLISHER", later),
            Verdict::Refused { .. }
        ));
    }
}
