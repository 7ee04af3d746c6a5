//! The reviews whose state (the domain's [`Review`] aggregate) a worker
//! keeps in memory, so a command usually costs no read of the log.

use std::collections::HashMap;

use upr_domain::{Review, ReviewKey};

/// A bounded map of review states. When full, an arbitrary entry is
/// evicted: a miss only costs one read of the review's history.
#[derive(Debug)]
pub struct ReviewCache {
    capacity: usize,
    reviews: HashMap<ReviewKey, Review>,
}

impl ReviewCache {
    /// A cache holding at most `capacity` reviews (at least one).
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            reviews: HashMap::new(),
        }
    }

    /// The cached state, if any.
    pub fn get_mut(&mut self, key: &ReviewKey) -> Option<&mut Review> {
        self.reviews.get_mut(key)
    }

    /// Stores a freshly loaded state, evicting another when full.
    pub fn insert(&mut self, key: ReviewKey, review: Review) -> &mut Review {
        if self.reviews.len() >= self.capacity
            && !self.reviews.contains_key(&key)
            && let Some(victim) = self.reviews.keys().next().copied()
        {
            self.reviews.remove(&victim);
        }
        self.reviews.entry(key).insert_entry(review).into_mut()
    }

    /// Forgets a review whose cached state proved stale or uncertain.
    pub fn forget(&mut self, key: &ReviewKey) {
        self.reviews.remove(key);
    }

    /// How many reviews are cached.
    pub fn len(&self) -> usize {
        self.reviews.len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.reviews.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_stays_within_its_capacity() {
        let mut cache = ReviewCache::new(2);
        for k in ["KZ.48", "KZ.49", "FR.48", "FR.49"] {
            cache.insert(ReviewKey::parse(k).unwrap(), Review::default());
            assert!(cache.len() <= 2);
        }
        let fr = ReviewKey::parse("FR.49").unwrap();
        assert!(cache.get_mut(&fr).is_some());
        cache.forget(&fr);
        assert!(cache.get_mut(&fr).is_none());
    }
}
