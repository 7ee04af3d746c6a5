//! Which projection instance is active: the one holding the lease.
//!
//! The projection's consumer acknowledges everything up to a checkpoint at
//! once (ack-all), and session and country values are rewritten whole, so
//! two instances folding at the same time would fight over the consumer's
//! position and overwrite each other's values. One instance therefore holds
//! a lease, the key `active` in `upr_projection_lease`, and consumes and
//! answers queries; any other instance stands by, asking for the lease every
//! [`RETRY_EVERY`], and takes over within about [`PROJECTION_LEASE_TTL`]
//! after the holder dies.
//!
//! The lease is a compare-and-set chain on one key in a bucket whose values
//! expire after [`PROJECTION_LEASE_TTL`]: taking it is a create (refused
//! while the key exists), renewing an update at the last revision (refused
//! once someone else holds it), and a holder that stops renewing loses it by
//! the server's clock alone. The holder also counts the lease as valid only
//! until [`PROJECTION_LEASE_TTL`] − [`MARGIN`] after it *sent* its last
//! successful renewal, and checks that before every write round: a process
//! paused for longer than the lease (a stopped container, a frozen VM) finds
//! it expired on waking and stops instead of writing over its successor.
//!
//! A lease that is gone without anyone else holding it (the server restarted
//! and lost the in-memory bucket, or it expired while NATS was unreachable)
//! is taken again, as a new term: another instance may have been active in
//! between, so the holder reloads its read models from the buckets before
//! it writes again. Only a lease another instance holds is lost for good:
//! the instance then stops, and its supervisor starts it again as a standby.

use std::{
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use async_nats::jetstream::{
    self,
    kv::{self, CreateErrorKind, Operation},
};
use bytes::Bytes;
use tokio::time::Instant;
use tracing::{debug, info, warn};
use upr_nats::contract::{self, PROJECTION_LEASE_TTL};

/// The one key of the lease bucket.
const KEY: &str = "active";
/// How often the holder renews.
pub const RENEW_EVERY: Duration = Duration::from_secs(1);
/// How often a standby asks for the lease.
pub const RETRY_EVERY: Duration = Duration::from_millis(500);
/// Kept off the lease's end for clock rates and the time a write round
/// takes once the check passed.
const MARGIN: Duration = Duration::from_millis(750);

/// A lease this instance holds.
#[derive(Debug)]
pub struct Lease {
    kv: kv::Store,
    /// To create the bucket again when the server lost it.
    js: jetstream::Context,
    replicas: usize,
    holder: String,
    revision: AtomicU64,
    valid_until: Mutex<Instant>,
    /// Bumped each time the lease is taken again after it was gone.
    term: AtomicU64,
}

impl Lease {
    /// Takes the lease if nobody holds it: `None` while another instance does.
    ///
    /// # Errors
    /// NATS did not answer.
    pub async fn try_take(
        js: &jetstream::Context,
        replicas: usize,
        kv: &kv::Store,
        holder: &str,
    ) -> Result<Option<Self>, kv::CreateError> {
        let sent = Instant::now();
        match kv.create(KEY, Bytes::from(holder.to_owned())).await {
            Ok(revision) => Ok(Some(Self {
                kv: kv.clone(),
                js: js.clone(),
                replicas,
                holder: holder.to_owned(),
                revision: AtomicU64::new(revision),
                valid_until: Mutex::new(sent + PROJECTION_LEASE_TTL - MARGIN),
                term: AtomicU64::new(0),
            })),
            Err(e) if e.kind() == CreateErrorKind::AlreadyExists => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Which term of the lease this is: a holder that sees it change
    /// reloads before writing.
    pub fn term(&self) -> u64 {
        self.term.load(Ordering::Acquire)
    }

    /// Whether the lease is still surely this instance's.
    pub fn is_valid(&self) -> bool {
        Instant::now()
            < *self
                .valid_until
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn renewed(&self, revision: u64, sent: Instant) {
        self.revision.store(revision, Ordering::Release);
        *self
            .valid_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) =
            sent + PROJECTION_LEASE_TTL - MARGIN;
    }

    /// One renewal. `Ok(false)`: another instance holds the lease; an error
    /// is a failure to reach NATS (the lease may still be valid for a while,
    /// see [`Self::is_valid`]).
    async fn renew(&self) -> Result<bool, async_nats::Error> {
        let sent = Instant::now();
        let revision = self.revision.load(Ordering::Acquire);
        let holder = Bytes::from(self.holder.clone());
        if let Ok(next) = self.kv.update(KEY, holder.clone(), revision).await {
            self.renewed(next, sent);
            return Ok(true);
        }
        // Not at our revision: ours still (an update whose answer was lost),
        // someone else's, or gone.
        match self.kv.entry(KEY).await {
            Ok(Some(entry)) if entry.operation == Operation::Put => {
                if entry.value == holder {
                    self.renewed(entry.revision, sent);
                    return Ok(true);
                }
                return Ok(false);
            }
            Ok(_) => {}
            Err(e) if e.kind() == kv::EntryErrorKind::Other => {
                // No bucket at all: the server restarted and lost it.
                upr_nats::setup::ensure_bucket(
                    &self.js,
                    contract::projection_lease_bucket(self.replicas),
                )
                .await?;
            }
            Err(e) => return Err(e.into()),
        }
        match self.kv.create(KEY, holder).await {
            Ok(next) => {
                self.renewed(next, sent);
                self.term.fetch_add(1, Ordering::AcqRel);
                warn!("the lease was gone; taken again (reloading the read models before writing)");
                Ok(true)
            }
            Err(e) if e.kind() == CreateErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Renews every [`RENEW_EVERY`] and returns once another instance holds
    /// the lease. While NATS is unreachable it keeps trying; the lease's
    /// validity, checked before every write, fences the writes meanwhile.
    pub async fn keep(&self) -> String {
        loop {
            tokio::time::sleep(RENEW_EVERY).await;
            match self.renew().await {
                Ok(true) => debug!("lease renewed"),
                Ok(false) => return "another instance holds the projection lease".into(),
                Err(e) => {
                    warn!(error = %e, valid = self.is_valid(), "lease renewal failed; retrying");
                }
            }
        }
    }

    /// Gives the lease up, so a standby takes over at once rather than when
    /// it expires.
    pub async fn release(&self) {
        let revision = self.revision.load(Ordering::Acquire);
        match self.kv.delete_expect_revision(KEY, Some(revision)).await {
            Ok(()) => info!("lease released"),
            Err(e) => debug!(error = %e, "lease not released; it expires by itself"),
        }
    }
}

/// Asks for the lease until this instance holds it, every [`RETRY_EVERY`].
///
/// With `within` (start-up): gives up after that long (`Ok(None)`: another
/// instance is active, and this one says it stands by), and a NATS failure
/// that lasts until then stops start-up (which reports it); a failure that
/// passes is retried, as on a cluster whose node just died the lease
/// bucket is briefly not found while its stream elects a leader. Without
/// (a standby waiting): as long as it takes, NATS failures retried.
///
/// # Errors
/// Only with `within`: NATS did not answer at the last try before the limit.
pub async fn take(
    js: &jetstream::Context,
    replicas: usize,
    kv: &kv::Store,
    holder: &str,
    within: Option<Duration>,
) -> Result<Option<Lease>, kv::CreateError> {
    let deadline = within.map(|d| tokio::time::Instant::now() + d);
    loop {
        let failed = match Lease::try_take(js, replicas, kv, holder).await {
            Ok(Some(lease)) => return Ok(Some(lease)),
            Ok(None) => None,
            Err(e) => {
                warn!(error = %e, "cannot ask for the lease; retrying");
                Some(e)
            }
        };
        if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
            if let Some(e) = failed {
                return Err(e);
            }
            info!("another instance is active; standing by");
            return Ok(None);
        }
        tokio::time::sleep(RETRY_EVERY).await;
    }
}
