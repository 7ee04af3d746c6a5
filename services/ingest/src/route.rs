//! Review-affine routing between ingest replicas.
//!
//! Intake subjects carry the event type, not the review, so the queue group
//! spreads one review's commands over every replica. Each replica caches the
//! reviews it decided on; a command that meets a cache another replica has
//! moved on costs a refused append and a catch-up read before the real
//! append (three round trips to JetStream instead of one), which made two
//! replicas several times slower than one.
//!
//! So every review has one owner among the live replicas, chosen by
//! rendezvous hashing over their micro-service ids: a replica that receives
//! a command for a review it does not own hands it to the owner on
//! `upr.internal.ingest.<owner>.<type>` (one hop through the server) and
//! relays the answer. Every replica computes the same owner from the same
//! membership; when memberships differ for a moment (a replica starting or
//! stopping) two replicas may append to one review, which the log's
//! expected-sequence check keeps correct, only slower. Ownership is a
//! performance matter, never a correctness one.
//!
//! Membership is what `$SRV.PING.upr-ingest` answers, asked every
//! [`PING_EVERY`]. A replica that stops answering is dropped after
//! [`MISSED_ROUNDS`] rounds, or at once when a hand-over finds no one
//! subscribed (it stopped); a new one counts from its first answer.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
    time::Duration,
};

use async_nats::Client;
use futures::StreamExt;
use tracing::{debug, info, warn};
use upr_domain::ReviewKey;
use upr_nats::contract::services;

use crate::stats::Counters;

/// How often the replicas are counted.
pub const PING_EVERY: Duration = Duration::from_secs(1);
/// How long one round waits for answers.
const PING_WINDOW: Duration = Duration::from_millis(250);
/// Rounds a replica may miss (busy, a slow answer) before its reviews move.
pub const MISSED_ROUNDS: u32 = 3;

/// The live ingest replicas as this one sees them.
#[derive(Debug)]
pub struct Peers {
    me: Arc<str>,
    members: RwLock<Members>,
}

#[derive(Debug, Default)]
struct Members {
    /// Sorted, always holding `me`.
    ids: Vec<Arc<str>>,
    /// Rounds in a row each other replica did not answer.
    missed: HashMap<Arc<str>, u32>,
}

impl Peers {
    /// A membership of one: this replica owns every review until it has
    /// heard from the others.
    pub fn new(me: &str) -> Self {
        let me: Arc<str> = Arc::from(me);
        Self {
            members: RwLock::new(Members {
                ids: vec![me.clone()],
                missed: HashMap::new(),
            }),
            me,
        }
    }

    /// This replica's id.
    pub fn me(&self) -> &str {
        &self.me
    }

    /// The replica that owns `key`, or `None` when it is this one.
    pub fn owner(&self, key: ReviewKey) -> Option<Arc<str>> {
        let members = self
            .members
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let owner = owner(key, &members.ids);
        (**owner != *self.me).then(|| owner.clone())
    }

    /// How many replicas share the reviews.
    pub fn count(&self) -> usize {
        self.members
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .ids
            .len()
    }

    /// Takes in one round of answers: the ids that answered join (or stay),
    /// the others miss a round, and go after [`MISSED_ROUNDS`].
    pub fn round(&self, answered: &[String]) {
        let mut members = self
            .members
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Members { ids, missed } = &mut *members;
        for id in ids.iter() {
            if **id != *self.me && !answered.iter().any(|a| **a == **id) {
                *missed.entry(id.clone()).or_default() += 1;
            }
        }
        let before = ids.len();
        ids.retain(|id| missed.get(id).is_none_or(|&m| m < MISSED_ROUNDS));
        missed.retain(|id, _| ids.contains(id));
        for id in answered {
            missed.remove(id.as_str());
            if !ids.iter().any(|known| **known == **id) {
                ids.push(Arc::from(id.as_str()));
            }
        }
        ids.sort();
        if ids.len() != before {
            info!(
                replicas = ids.len(),
                "ingest replicas changed; reviews re-shared"
            );
        }
    }

    /// Drops `id` at once: a hand-over found nobody listening for it.
    pub fn gone(&self, id: &str) {
        let mut members = self
            .members
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if *self.me != *id {
            members.ids.retain(|known| **known != *id);
            members.missed.remove(id);
        }
    }
}

/// The owner of `key` among `ids` (not empty): the id with the highest
/// score for this review. Adding or removing one replica moves only the
/// reviews that replica wins or held, and every replica agrees on the
/// result whatever the order of `ids`.
///
/// # Panics
/// When `ids` is empty (the membership always holds this replica).
pub fn owner(key: ReviewKey, ids: &[Arc<str>]) -> &Arc<str> {
    let review = key.to_string();
    ids.iter()
        .max_by_key(|id| (score(review.as_bytes(), id.as_bytes()), *id))
        .expect("membership always holds this replica")
}

/// FNV-1a over both names, then a 64-bit finaliser: stable across builds
/// and versions (unlike `DefaultHasher`), so replicas built differently
/// during an upgrade still agree.
fn score(review: &[u8], id: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in review.iter().chain(b"/").chain(id) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// Counts the replicas every [`PING_EVERY`] until the connection closes.
/// Answers arriving after their round's window count in the next round.
pub async fn watch(client: Client, peers: Arc<Peers>, counters: Arc<Counters>) {
    let inbox = client.new_inbox();
    let mut answers = match client.subscribe(inbox.clone()).await {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "cannot count ingest replicas; this one owns every review");
            return;
        }
    };
    let ping = format!("$SRV.PING.{}", services::INGEST);
    loop {
        if let Err(e) = client
            .publish_with_reply(ping.clone(), inbox.clone(), "".into())
            .await
        {
            debug!(error = %e, "replica count not sent");
        }
        let mut answered = Vec::new();
        let window = tokio::time::sleep(PING_WINDOW);
        tokio::pin!(window);
        loop {
            tokio::select! {
                () = &mut window => break,
                answer = answers.next() => match answer {
                    None => return,
                    Some(m) => {
                        if let Some(id) = serde_json::from_slice::<serde_json::Value>(&m.payload)
                            .ok()
                            .and_then(|v| v["id"].as_str().map(str::to_owned))
                        {
                            answered.push(id);
                        }
                    }
                },
            }
        }
        // Our own answer may be late too; we are a member regardless.
        answered.retain(|id| id != peers.me());
        peers.round(&answered);
        counters.replicas(peers.count());
        tokio::time::sleep(PING_EVERY.saturating_sub(PING_WINDOW)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> ReviewKey {
        ReviewKey::parse(s).unwrap()
    }

    fn ids(names: &[&str]) -> Vec<Arc<str>> {
        names.iter().map(|n| Arc::from(*n)).collect()
    }

    /// Reviews of the sort users record: every member state at a few sessions.
    fn reviews() -> Vec<ReviewKey> {
        let countries = ["KZ", "FR", "BR", "JP", "NG", "MX", "IN", "DE", "ZA", "CL"];
        (40..60)
            .flat_map(|s| countries.map(|c| key(&format!("{c}.{s}"))))
            .collect()
    }

    #[test]
    fn every_replica_agrees_whatever_order_it_lists_the_others_in() {
        let a = ids(&["a1", "b2", "c3"]);
        let b = ids(&["c3", "a1", "b2"]);
        for k in reviews() {
            assert_eq!(owner(k, &a), owner(k, &b), "{k}");
        }
    }

    #[test]
    fn reviews_are_shared_about_evenly() {
        let three = ids(&["QX7PZ", "MB2KD", "T9W4R"]);
        let all = reviews();
        for id in &three {
            let mine = all.iter().filter(|k| owner(**k, &three) == id).count();
            // 200 reviews over 3 replicas: about 67 each.
            assert!((40..=95).contains(&mine), "{id}: {mine} of {}", all.len());
        }
    }

    #[test]
    fn a_replica_leaving_moves_only_its_own_reviews() {
        let three = ids(&["a", "b", "c"]);
        let two = ids(&["a", "c"]);
        for k in reviews() {
            let before = owner(k, &three);
            if **before != *"b" {
                assert_eq!(
                    before,
                    owner(k, &two),
                    "{k} moved although b did not own it"
                );
            }
        }
    }

    #[test]
    fn a_silent_replica_goes_after_missed_rounds_and_a_gone_one_at_once() {
        let peers = Peers::new("me");
        peers.round(&["other".into(), "third".into()]);
        assert_eq!(peers.count(), 3);
        for _ in 1..MISSED_ROUNDS {
            peers.round(&["third".into()]);
            assert_eq!(
                peers.count(),
                3,
                "dropped before {MISSED_ROUNDS} missed rounds"
            );
        }
        peers.round(&["third".into()]);
        assert_eq!(peers.count(), 2);
        peers.gone("third");
        assert_eq!(peers.count(), 1);
        assert!(reviews().into_iter().all(|k| peers.owner(k).is_none()));
        peers.gone("me");
        assert_eq!(peers.count(), 1, "a replica never drops itself");
    }

    #[test]
    fn an_answer_resets_the_missed_count() {
        let peers = Peers::new("me");
        peers.round(&["other".into()]);
        for _ in 0..(MISSED_ROUNDS * 3) {
            peers.round(&[]);
            peers.round(&["other".into()]);
        }
        assert_eq!(peers.count(), 2);
    }
}
