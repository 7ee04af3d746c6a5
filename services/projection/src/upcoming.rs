//! The in-memory index behind `upr.query.upcoming` and `upr.query.calendar`:
//! every review with a status and a date, and those `scheduled` ordered by
//! date, then country, then session.
//!
//! Kept in memory because the queries scan by date, which the KV buckets
//! cannot do; it is rebuilt at start from `upr_reviews` and updated once a
//! write to `upr_reviews` has landed, so it never runs ahead of the bucket.

use std::collections::{BTreeSet, HashMap};

use upr_domain::{
    CalendarEntry, Country, ReviewKey, ReviewStatus, ReviewView, Session, Timestamp, Upcoming,
};

/// Reviews with a date: scheduled ones by date, all for the calendar.
#[derive(Debug, Default)]
pub struct UpcomingIndex {
    /// Scheduled reviews, sorted as the query answers: date, country, session.
    by_date: BTreeSet<(Timestamp, Country, Session)>,
    /// Every review with a status and a date, as the calendar shows it; a
    /// scheduled one's entry also says where it is filed in `by_date`.
    calendar: HashMap<ReviewKey, CalendarEntry>,
}

/// Where a scheduled review is filed in `by_date`; `None` otherwise.
fn filed(e: &CalendarEntry) -> Option<(Timestamp, Country, Session)> {
    (e.status == ReviewStatus::Scheduled).then_some((e.scheduled_for, e.country, e.session))
}

impl UpcomingIndex {
    /// Files the review under its date if it is scheduled, else removes it;
    /// keeps its calendar entry current.
    pub fn update(&mut self, view: &ReviewView) {
        self.file(view.key(), CalendarEntry::of(view));
    }

    /// [`UpcomingIndex::update`] with the review's entry taken earlier
    /// (when its value was sent to the bucket), `None` for a review without
    /// a status and a date.
    pub fn file(&mut self, key: ReviewKey, entry: Option<CalendarEntry>) {
        if let Some(old) = self.calendar.remove(&key).as_ref().and_then(filed) {
            self.by_date.remove(&old);
        }
        if let Some(entry) = entry {
            if let Some(at) = filed(&entry) {
                self.by_date.insert(at);
            }
            self.calendar.insert(key, entry);
        }
    }

    /// Forgets everything (before a replay).
    pub fn clear(&mut self) {
        self.by_date.clear();
        self.calendar.clear();
    }

    /// The calendar entries, of one country or all, by date, then country,
    /// then session.
    pub fn calendar(&self, country: Option<Country>) -> Vec<CalendarEntry> {
        let mut out: Vec<CalendarEntry> = self
            .calendar
            .values()
            .filter(|e| country.is_none_or(|c| c == e.country))
            .cloned()
            .collect();
        out.sort_by_key(|e| (e.scheduled_for, e.country, e.session));
        out
    }

    /// How many reviews are scheduled (any date).
    pub fn len(&self) -> usize {
        self.by_date.len()
    }

    /// Whether no review is scheduled.
    pub fn is_empty(&self) -> bool {
        self.by_date.is_empty()
    }

    /// Scheduled reviews strictly after `now` and, with `within_days`, no
    /// later than `now + within_days`, optionally of one country; soonest
    /// first, then country, then session (the order of
    /// `ReadModels::upcoming`).
    pub fn query(
        &self,
        now: Timestamp,
        within_days: Option<u32>,
        country: Option<Country>,
    ) -> Vec<Upcoming> {
        use std::ops::Bound::{Excluded, Unbounded};
        let horizon = Upcoming::horizon(now, within_days);
        // Everything filed under `now` itself sorts below (now, max, max).
        let start = (
            now,
            Country::parse("ZW").ok(),
            Session::new(u64::from(Session::MAX)).ok(),
        );
        let lower = match start {
            (t, Some(c), Some(s)) => Excluded((t, c, s)),
            _ => Unbounded,
        };
        self.by_date
            .range((lower, Unbounded))
            .filter(|(at, _, _)| *at > now)
            .take_while(|(at, _, _)| horizon.is_none_or(|h| *at <= h))
            .filter(|(_, c, _)| country.is_none_or(|want| want == *c))
            .map(|&(scheduled_for, country, session)| {
                Upcoming::new(country, session, scheduled_for)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use upr_domain::{Envelope, ReadModels};

    #[allow(
        clippy::needless_pass_by_value,
        reason = "callers pass json! temporaries"
    )]
    fn env(n: u128, key: &str, ty: &str, data: serde_json::Value) -> Envelope {
        let key = ReviewKey::parse(key).unwrap();
        let json = serde_json::json!({
            "id": uuid::Uuid::from_u128(n), "type": ty, "schema": 1,
            "country": key.country, "session": key.session,
            "occurred_at": "2024-11-06T10:00:00Z", "recorded_at": "2024-11-06T10:00:00Z",
            "source": null, "data": data,
        });
        Envelope::from_json(&serde_json::to_vec(&json).unwrap()).unwrap()
    }

    #[test]
    fn the_index_answers_like_the_pure_fold() {
        let sched = |n, key, when: &str| {
            env(
                n,
                key,
                "review_scheduled",
                serde_json::json!({"scheduled_for": when, "location": "Geneva"}),
            )
        };
        let log = [
            sched(1, "KZ.48", "2025-01-23T08:30:00Z"),
            sched(2, "CH.48", "2025-01-23T08:30:00Z"),
            sched(3, "BR.48", "2025-01-21T08:30:00Z"),
            sched(4, "FR.47", "2024-11-01T00:00:00Z"),
            env(
                5,
                "BR.48",
                "review_rescheduled",
                serde_json::json!({"scheduled_for": "2025-02-01T00:00:00Z", "reason": null}),
            ),
            env(
                6,
                "CH.48",
                "review_cancelled",
                serde_json::json!({"reason": null}),
            ),
            sched(7, "ZW.999", "2025-01-23T08:30:00Z"),
            sched(8, "AD.1", "2025-01-01T00:00:00Z"),
        ];
        let models = ReadModels::fold(log.iter().enumerate().map(|(i, e)| (i as u64 + 1, e)));
        let mut index = UpcomingIndex::default();
        for view in models.reviews.values() {
            index.update(view);
        }
        assert_eq!(index.len(), 5);
        let kz = Country::parse("KZ").ok();
        for now in [
            "2024-01-01T00:00:00Z",
            "2025-01-01T00:00:00Z",
            "2025-01-23T08:30:00Z",
            "2025-01-22T00:00:00Z",
        ] {
            let now = Timestamp::parse_rfc3339(now).unwrap();
            for within in [None, Some(0), Some(1), Some(30)] {
                for country in [None, kz] {
                    assert_eq!(
                        index.query(now, within, country),
                        models.upcoming(now, within, country),
                        "{now} {within:?} {country:?}"
                    );
                }
            }
        }
        index.clear();
        assert!(index.is_empty());
    }
}
