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

use std::{
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use async_nats::jetstream::kv::{self, CreateErrorKind};
use bytes::Bytes;
use tokio::time::Instant;
use tracing::{debug, info, warn};
use upr_shared::contract::PROJECTION_LEASE_TTL;

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
    holder: String,
    revision: AtomicU64,
    valid_until: Mutex<Instant>,
}

impl Lease {
    /// Takes the lease if nobody holds it: `None` while another instance does.
    ///
    /// # Errors
    /// NATS did not answer.
    pub async fn try_take(kv: &kv::Store, holder: &str) -> Result<Option<Self>, kv::CreateError> {
        let sent = Instant::now();
        match kv.create(KEY, Bytes::from(holder.to_owned())).await {
            Ok(revision) => Ok(Some(Self {
                kv: kv.clone(),
                holder: holder.to_owned(),
                revision: AtomicU64::new(revision),
                valid_until: Mutex::new(sent + PROJECTION_LEASE_TTL - MARGIN),
            })),
            Err(e) if e.kind() == CreateErrorKind::AlreadyExists => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Whether the lease is still surely this instance's.
    pub fn is_valid(&self) -> bool {
        Instant::now() < *self.valid_until.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One renewal; an error means it did not take (the lease may still be
    /// valid for a while, see [`Self::is_valid`]).
    async fn renew(&self) -> Result<(), kv::UpdateError> {
        let sent = Instant::now();
        let revision = self
            .kv
            .update(
                KEY,
                Bytes::from(self.holder.clone()),
                self.revision.load(Ordering::Acquire),
            )
            .await?;
        self.revision.store(revision, Ordering::Release);
        *self.valid_until.lock().unwrap_or_else(|p| p.into_inner()) =
            sent + PROJECTION_LEASE_TTL - MARGIN;
        Ok(())
    }

    /// Renews every [`RENEW_EVERY`] and returns once the lease is lost, with why.
    pub async fn keep(&self) -> String {
        loop {
            tokio::time::sleep(RENEW_EVERY).await;
            match self.renew().await {
                Ok(()) => debug!("lease renewed"),
                Err(e) if !self.is_valid() => return format!("lease not renewed in time: {e}"),
                Err(e) => warn!(error = %e, "lease renewal failed; retrying while it lasts"),
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

/// Waits until this instance holds the lease (a NATS failure is retried).
pub async fn take(kv: &kv::Store, holder: &str) -> Lease {
    let mut said = false;
    loop {
        match Lease::try_take(kv, holder).await {
            Ok(Some(lease)) => return lease,
            Ok(None) => {
                if !said {
                    info!("another instance is active; standing by");
                    said = true;
                }
            }
            Err(e) => warn!(error = %e, "cannot ask for the lease; retrying"),
        }
        tokio::time::sleep(RETRY_EVERY).await;
    }
}
