//! The working set: decoded read-model values the fold works on, bounded in
//! memory.
//!
//! Events are folded here; each touched value is marked dirty and written
//! once per write round however many events changed it. Between batches
//! clean values stay cached (most events hit a value touched recently), and
//! when the cache grows past its budget the least recently used clean values
//! are dropped; a later miss reads the value back from KV. Each table also
//! remembers which keys exist in KV, so a miss on a key that was never
//! written (most keys during a rebuild) costs no request at all.

use std::collections::{HashMap, HashSet};
use std::fmt::Display;
use std::hash::Hash;

use serde::{Serialize, de::DeserializeOwned};
use upr_domain::{
    Country, CountryView, Envelope, Fold, ReviewKey, ReviewView, Session, SessionView,
};

/// What the working set needs of a read-model value.
pub trait View: Serialize + DeserializeOwned {
    /// Its identity, also its KV key through `Display`.
    type Key: Copy + Eq + Hash + Display;
    /// The value before any event.
    fn empty(key: Self::Key) -> Self;
    /// The value this event belongs to.
    fn key_of(event: &Envelope) -> Self::Key;
    /// Parses a KV key; `None` for keys this projection never writes.
    fn parse_key(text: &str) -> Option<Self::Key>;
}

impl View for ReviewView {
    type Key = ReviewKey;
    fn empty(key: ReviewKey) -> Self {
        Self::new(key)
    }
    fn key_of(event: &Envelope) -> ReviewKey {
        event.review_key()
    }
    fn parse_key(text: &str) -> Option<ReviewKey> {
        ReviewKey::parse(text).filter(|k| k.to_string() == text)
    }
}

impl View for SessionView {
    type Key = Session;
    fn empty(key: Session) -> Self {
        Self::new(key)
    }
    fn key_of(event: &Envelope) -> Session {
        event.session
    }
    fn parse_key(text: &str) -> Option<Session> {
        Session::parse(text).ok()
    }
}

impl View for CountryView {
    type Key = Country;
    fn empty(key: Country) -> Self {
        Self::new(key)
    }
    fn key_of(event: &Envelope) -> Country {
        event.country
    }
    fn parse_key(text: &str) -> Option<Country> {
        Country::parse(text).ok().filter(|c| c.as_str() == text)
    }
}

/// Fixed cost counted per cached value on top of its JSON size (map entry,
/// struct, allocations).
const SLOT_OVERHEAD: usize = 128;

struct Slot<V> {
    view: V,
    /// JSON size plus overhead when last read or written; while new and
    /// unwritten, the table's average (it is held all the same).
    weight: usize,
    /// The batch that last touched it, for least-recently-used eviction.
    stamp: u64,
    dirty: bool,
}

/// One bucket's cached values.
pub struct Table<V: View> {
    slots: HashMap<V::Key, Slot<V>>,
    /// Keys that exist in KV (read at start, added on each write).
    known: HashSet<V::Key>,
    /// Keys changed since the last write, in first-touched order.
    dirty: Vec<V::Key>,
    weight: usize,
    /// JSON bytes and number of values written so far: the weight a new
    /// value is counted with until it is written.
    written: (usize, usize),
}

impl<V: View> Default for Table<V> {
    fn default() -> Self {
        Self {
            slots: HashMap::new(),
            known: HashSet::new(),
            dirty: Vec::new(),
            weight: 0,
            written: (0, 0),
        }
    }
}

impl<V: View> Table<V> {
    /// Records that `key` exists in KV.
    pub fn mark_known(&mut self, key: V::Key) {
        self.known.insert(key);
    }

    /// Whether folding an event of `key` needs its value read from KV first.
    pub fn needs_load(&self, key: &V::Key) -> bool {
        !self.slots.contains_key(key) && self.known.contains(key)
    }

    /// Caches a value read from KV.
    pub fn insert_loaded(&mut self, key: V::Key, view: V, json_len: usize, stamp: u64) {
        let weight = json_len + SLOT_OVERHEAD;
        self.weight += weight;
        if let Some(old) = self.slots.insert(
            key,
            Slot {
                view,
                weight,
                stamp,
                dirty: false,
            },
        ) {
            self.weight -= old.weight;
        }
    }

    /// Changes the value of `key` (created empty when new) with `change`,
    /// which says whether it changed anything; a changed value is dirty.
    pub fn update<T>(
        &mut self,
        key: V::Key,
        stamp: u64,
        change: impl FnOnce(&mut V) -> (bool, T),
    ) -> T {
        let guess = self.new_value_weight();
        let slot = self.slots.entry(key).or_insert_with(|| {
            self.weight += guess;
            Slot {
                view: V::empty(key),
                weight: guess,
                stamp,
                dirty: false,
            }
        });
        slot.stamp = stamp;
        let (changed, out) = change(&mut slot.view);
        if changed && !slot.dirty {
            slot.dirty = true;
            self.dirty.push(key);
        }
        out
    }

    /// What a value never written is counted as: the average written so
    /// far (1 KiB before the first write), plus the overhead.
    fn new_value_weight(&self) -> usize {
        let (bytes, values) = self.written;
        bytes.checked_div(values).unwrap_or(1024) + SLOT_OVERHEAD
    }

    /// Whether any value changed since it was last written.
    pub fn has_dirty(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// The keys changed since they were last written, in first-touched
    /// order; they stay dirty (never evicted) until [`Table::mark_clean`].
    pub fn take_dirty(&mut self) -> Vec<V::Key> {
        std::mem::take(&mut self.dirty)
    }

    /// How many values changed since they were last written.
    pub fn dirty_len(&self) -> usize {
        self.dirty.len()
    }

    /// [`Table::take_dirty`] for the values last touched before batch
    /// `stamp` (the others stay dirty, in order).
    pub fn take_dirty_touched_before(&mut self, stamp: u64) -> Vec<V::Key> {
        if stamp == u64::MAX {
            return self.take_dirty();
        }
        let slots = &self.slots;
        let (cold, hot) = std::mem::take(&mut self.dirty)
            .into_iter()
            .partition(|key| slots.get(key).is_none_or(|s| s.stamp < stamp));
        self.dirty = hot;
        cold
    }

    /// The value's JSON, as written to KV.
    pub fn serialize(&self, key: &V::Key) -> Option<bytes::Bytes> {
        self.slots
            .get(key)
            .map(|s| bytes::Bytes::from(to_json(&s.view)))
    }

    /// Records that the value of `key` was written (`json_len` bytes).
    pub fn mark_clean(&mut self, key: V::Key, json_len: usize) {
        if let Some(slot) = self.slots.get_mut(&key) {
            let weight = json_len + SLOT_OVERHEAD;
            self.weight = self.weight - slot.weight + weight;
            slot.weight = weight;
            self.written.0 += json_len;
            self.written.1 += 1;
            slot.dirty = false;
        }
        self.known.insert(key);
    }

    fn clean_stamps(&self, out: &mut Vec<(u64, usize)>) {
        out.extend(
            self.slots
                .values()
                .filter(|s| !s.dirty)
                .map(|s| (s.stamp, s.weight)),
        );
    }

    fn evict_up_to(&mut self, stamp: u64) {
        let mut freed = 0;
        self.slots.retain(|_, s| {
            let keep = s.dirty || s.stamp > stamp;
            if !keep {
                freed += s.weight;
            }
            keep
        });
        self.weight -= freed;
    }

    /// The cached value of `key`, if cached.
    pub fn get(&self, key: &V::Key) -> Option<&V> {
        self.slots.get(key).map(|s| &s.view)
    }

    /// How many values are cached.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    fn clear(&mut self) {
        *self = Self::default();
    }
}

fn to_json<V: Serialize>(view: &V) -> Vec<u8> {
    serde_json::to_vec(view)
        .expect("a read-model value holds only strings, integers and structs: it serializes")
}

/// What folding one event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// At least one value changed.
    Changed,
    /// Every value had applied it already (redelivery).
    Already,
    /// Past its review's limits (written around ingest): skipped.
    BeyondLimits,
    /// A retraction of a lifecycle event: nothing changed yet, the review's
    /// earlier events are needed.
    NeedsHistory,
}

/// The three tables and their shared memory budget.
pub struct WorkingSet {
    /// `upr_reviews` values.
    pub reviews: Table<ReviewView>,
    /// `upr_sessions` values.
    pub sessions: Table<SessionView>,
    /// `upr_countries` values.
    pub countries: Table<CountryView>,
    /// Largest total weight (JSON bytes + overhead) kept between batches.
    budget: usize,
    /// Batch counter, the clock of the LRU.
    clock: u64,
}

impl WorkingSet {
    /// An empty working set that keeps about `budget` bytes of values.
    pub fn new(budget: usize) -> Self {
        Self {
            reviews: Table::default(),
            sessions: Table::default(),
            countries: Table::default(),
            budget,
            clock: 0,
        }
    }

    /// Starts a batch: returns its stamp.
    pub fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// Folds one event into the three values it belongs to. The review
    /// value folds it; the session and country values take in what the
    /// review value became, so an event past the review's limits changes
    /// none of them. A retraction of a lifecycle event answers
    /// [`Applied::NeedsHistory`]: call [`WorkingSet::apply_with_history`].
    pub fn apply(&mut self, seq: u64, event: &Envelope) -> Applied {
        self.fold(seq, event, None)
    }

    /// [`WorkingSet::apply`] for a retraction, given the review's events
    /// before `seq`.
    pub fn apply_with_history(
        &mut self,
        seq: u64,
        event: &Envelope,
        history: &[(u64, Envelope)],
    ) -> Applied {
        self.fold(seq, event, Some(history))
    }

    fn fold(&mut self, seq: u64, event: &Envelope, history: Option<&[(u64, Envelope)]>) -> Applied {
        let stamp = self.clock;
        let key = event.review_key();
        let fold = self.reviews.update(key, stamp, |review| {
            let fold = match history {
                Some(h) => review.apply_with_history(seq, event, h),
                None => review.apply(seq, event),
            };
            (fold == Fold::Applied, fold)
        });
        let Some(review) = self.reviews.get(&key) else {
            return Applied::Already;
        };
        match fold {
            Fold::NeedsHistory => return Applied::NeedsHistory,
            Fold::Ignored if !review.holds(seq) => {
                return if seq > review.last_seq {
                    Applied::BeyondLimits
                } else {
                    Applied::Already
                };
            }
            _ => {}
        }
        // Also for an event the review already holds: a session or country
        // value that missed it (a crash between writes) catches up.
        let b = self.sessions.update(event.session, stamp, |s| {
            let changed = s.absorb(seq, review);
            (changed, changed)
        });
        let c = self.countries.update(event.country, stamp, |c| {
            let changed = c.absorb(seq, review);
            (changed, changed)
        });
        if fold == Fold::Applied || b || c {
            Applied::Changed
        } else {
            Applied::Already
        }
    }

    /// Total weight of cached values.
    pub fn weight(&self) -> usize {
        self.reviews.weight + self.sessions.weight + self.countries.weight
    }

    /// Drops least recently used clean values until the weight is at most
    /// three quarters of the budget (so eviction runs rarely, not per batch).
    pub fn evict(&mut self) {
        let total = self.weight();
        if total <= self.budget {
            return;
        }
        let target = self.budget / 4 * 3;
        let mut stamps = Vec::new();
        self.reviews.clean_stamps(&mut stamps);
        self.sessions.clean_stamps(&mut stamps);
        self.countries.clean_stamps(&mut stamps);
        stamps.sort_unstable_by_key(|(stamp, _)| *stamp);
        let mut freed = 0;
        let mut upto = 0;
        for (stamp, weight) in stamps {
            if total - freed <= target {
                break;
            }
            freed += weight;
            upto = stamp;
        }
        // Evicting by stamp drops every value of that batch; values of the
        // current batch are kept even over budget (they are needed next).
        let upto = upto.min(self.clock.saturating_sub(1));
        self.reviews.evict_up_to(upto);
        self.sessions.evict_up_to(upto);
        self.countries.evict_up_to(upto);
    }

    /// Forgets everything (before a replay into empty buckets).
    pub fn clear(&mut self) {
        self.reviews.clear();
        self.sessions.clear();
        self.countries.clear();
    }
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation, reason = "test sequences are small")]
mod tests {
    use super::*;

    fn event(n: u128, key: &str) -> Envelope {
        let key = ReviewKey::parse(key).unwrap();
        let json = serde_json::json!({
            "id": uuid::Uuid::from_u128(n), "type": "side_event_held", "schema": 1,
            "country": key.country, "session": key.session,
            "occurred_at": "2024-11-06T10:00:00Z", "recorded_at": "2024-11-06T10:00:00Z",
            "source": null, "data": {"title": "T", "held_on": "2025-01-22T00:00:00Z"},
        });
        Envelope::from_json(&serde_json::to_vec(&json).unwrap()).unwrap()
    }

    #[test]
    fn an_event_past_its_review_limits_changes_no_value() {
        let mut set = WorkingSet::new(1 << 20);
        set.tick();
        let limit = upr_domain::MAX_SIDE_EVENTS as u128;
        for n in 1..=limit {
            assert_eq!(set.apply(n as u64, &event(n, "KZ.48")), Applied::Changed);
        }
        let (session, country) = (Session::new(48).unwrap(), Country::parse("KZ").unwrap());
        let before = (
            set.sessions.serialize(&session),
            set.countries.serialize(&country),
        );
        let over = event(limit + 1, "KZ.48");
        assert_eq!(set.apply(201, &over), Applied::BeyondLimits);
        assert_eq!(set.apply(201, &over), Applied::BeyondLimits, "and again");
        let after = (
            set.sessions.serialize(&session),
            set.countries.serialize(&country),
        );
        assert_eq!(before, after);
        // Another review of the same session and country still folds.
        assert_eq!(set.apply(202, &event(999, "KZ.49")), Applied::Changed);
    }

    #[test]
    fn a_value_changed_by_many_events_is_written_once_and_redelivery_is_skipped() {
        let mut set = WorkingSet::new(1 << 20);
        set.tick();
        let e1 = event(1, "KZ.48");
        assert_eq!(set.apply(1, &e1), Applied::Changed);
        assert_eq!(set.apply(2, &event(2, "KZ.48")), Applied::Changed);
        assert_eq!(
            set.apply(1, &e1),
            Applied::Already,
            "an applied sequence changes nothing"
        );
        let kz48 = ReviewKey::parse("KZ.48").unwrap();
        let dirty = set.reviews.take_dirty();
        assert_eq!(dirty, [kz48]);
        assert_eq!(set.sessions.take_dirty().len(), 1);
        let json = set.reviews.serialize(&kz48).unwrap();
        set.reviews.mark_clean(kz48, json.len());
        assert!(!set.reviews.has_dirty());
        assert_eq!(set.reviews.get(&kz48).unwrap().side_events.len(), 2);
        assert!(!set.reviews.needs_load(&kz48));
    }

    fn clean<V: View>(table: &mut Table<V>) {
        for key in table.take_dirty() {
            let len = table.serialize(&key).unwrap().len();
            table.mark_clean(key, len);
        }
    }

    #[test]
    fn a_value_not_yet_written_counts_at_the_average_written_size() {
        let mut set = WorkingSet::new(1 << 20);
        set.tick();
        set.apply(1, &event(1, "KZ.48"));
        let fresh = set.reviews.weight;
        assert_eq!(fresh, 1024 + SLOT_OVERHEAD, "1 KiB before any write");
        let kz48 = ReviewKey::parse("KZ.48").unwrap();
        set.reviews.take_dirty();
        set.reviews.mark_clean(kz48, 300);
        set.apply(2, &event(2, "KZ.49"));
        assert_eq!(
            set.reviews.weight,
            (300 + SLOT_OVERHEAD) * 2,
            "the written one at its size, the new one at the average"
        );
    }

    #[test]
    fn values_touched_lately_stay_dirty_when_only_cold_ones_are_taken() {
        let mut set = WorkingSet::new(1 << 20);
        let first = set.tick();
        set.apply(1, &event(1, "KZ.48"));
        set.apply(2, &event(2, "KZ.49"));
        let second = set.tick();
        set.apply(3, &event(3, "KZ.49"));
        let (kz48, kz49) = (
            ReviewKey::parse("KZ.48").unwrap(),
            ReviewKey::parse("KZ.49").unwrap(),
        );
        assert_eq!(set.reviews.take_dirty_touched_before(first), []);
        assert_eq!(set.reviews.take_dirty_touched_before(second), [kz48]);
        assert_eq!(
            set.reviews.dirty_len(),
            1,
            "KZ.49 was touched by the second batch"
        );
        assert_eq!(set.reviews.take_dirty_touched_before(u64::MAX), [kz49]);
        assert_eq!(set.reviews.dirty_len(), 0);
    }

    #[test]
    fn eviction_keeps_the_budget_and_known_keys_are_loaded_on_a_miss() {
        let mut set = WorkingSet::new(4 * 1024);
        for n in 1..=200u64 {
            set.tick();
            // Spread over states, so no single value outgrows the budget.
            let key = if n == 1 || n == 200 {
                format!("KZ.{n}")
            } else {
                let state = upr_domain::MEMBER_STATES[n as usize % 193].0;
                format!("{state}.{n}")
            };
            set.apply(n, &event(n.into(), &key));
            clean(&mut set.reviews);
            clean(&mut set.sessions);
            clean(&mut set.countries);
            set.evict();
            assert!(set.weight() <= 4 * 1024 + 2048, "weight {}", set.weight());
        }
        let first = ReviewKey::parse("KZ.1").unwrap();
        assert!(
            set.reviews.needs_load(&first),
            "evicted, but known to exist in KV"
        );
        assert!(
            !set.reviews.needs_load(&ReviewKey::parse("KZ.201").unwrap()),
            "never written: no request"
        );
        assert!(
            set.reviews
                .get(&ReviewKey::parse("KZ.200").unwrap())
                .is_some(),
            "most recent stays"
        );
    }
}
