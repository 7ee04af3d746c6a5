//! The read models of `upr_reviews`, `upr_sessions` and `upr_countries`
//! (contract v2 shapes), as pure folds over `(stream sequence, envelope)`.
//!
//! Every view stores `last_seq`, the last stream sequence it applied, and
//! ignores any sequence at or below it: that single rule makes redelivery
//! harmless, and because the fold is deterministic, rebuilding from sequence
//! 1 gives byte-identical values. Views never check lifecycle rules; they
//! fold whatever the log holds, with one exception that keeps them bounded:
//! an event past its review's limits ([`super::limits`]) is skipped by the
//! review view, and session and country views fold only what the review
//! view holds ([`ReviewView::holds`]).
//!
//! Sizes: full side events live only in the review value; session and
//! country values list reviews with counts. Each value stays under
//! [`MAX_VALUE_BYTES`](super::limits::MAX_VALUE_BYTES); the size tests
//! below build the largest value intake lets through.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::country::Country;
use super::event::{
    Envelope, EventData, EventType, Recommendations, ReviewKey, Session, SideEventHeld, Speaker,
};
use super::lifecycle::{ReviewStatus, evolve};
use super::limits::{ReviewSize, json_len};
use super::time::Timestamp;

/// One line of a review's history: every event stored on its subjects,
/// side events included (`upr.events.KZ.48.>` is the review's history).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// The event type.
    #[serde(rename = "type")]
    pub event_type: EventType,
    /// The stored event's id.
    pub event_id: Uuid,
    /// Its stream sequence, so clients can ask for `min_seq`.
    pub seq: u64,
    /// When it happened.
    pub occurred_at: Timestamp,
}

/// The outcome report of a review.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportView {
    /// When it was published.
    pub published_on: Timestamp,
    /// The UN document symbol, if known.
    pub document_symbol: Option<String>,
    /// The recommendation counts, if known.
    pub recommendations: Option<Recommendations>,
}

/// A side event as listed in full in its review.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SideEventView {
    /// The stored event's id (unique, and a stable tie-breaker in sorting).
    pub event_id: Uuid,
    /// The event's title.
    pub title: String,
    /// When it was held.
    pub held_on: Timestamp,
    /// Who spoke.
    pub speakers: Vec<Speaker>,
    /// How many states took part, if reported.
    pub participating_states: Option<u32>,
    /// Subjects covered.
    pub topics: Vec<String>,
}

impl SideEventView {
    /// The entry for the side event stored with `event_id`.
    pub fn of(event_id: Uuid, d: &SideEventHeld) -> Self {
        Self {
            event_id,
            title: d.title.clone(),
            held_on: d.held_on,
            speakers: d.speakers.clone(),
            participating_states: d.participating_states,
            topics: d.topics.clone(),
        }
    }

    /// Bytes it takes in the review value (what the side-event byte limit counts).
    pub fn encoded_len(&self) -> usize {
        json_len(self)
    }
}

/// `upr_reviews` value, key `KZ.48`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReviewView {
    /// The state under review.
    pub country: Country,
    /// Its UN short name.
    pub country_name: String,
    /// The Working Group session.
    pub session: Session,
    /// The UPR cycle of the session.
    pub cycle: u16,
    /// `null` while only side events exist for this country and session.
    pub status: Option<ReviewStatus>,
    /// The latest scheduled date (kept after cancellation and holding).
    pub scheduled_for: Option<Timestamp>,
    /// The location of the latest scheduling.
    pub location: Option<String>,
    /// Every event of the review, in stream order.
    pub history: Vec<HistoryEntry>,
    /// The side events this country held at this session, in full, by
    /// `held_on` then `event_id`.
    pub side_events: Vec<SideEventView>,
    /// The outcome report, once published.
    pub report: Option<ReportView>,
    /// The last stream sequence applied.
    pub last_seq: u64,
}

impl ReviewView {
    /// The empty view, before any event.
    pub fn new(key: ReviewKey) -> Self {
        Self {
            country: key.country,
            country_name: key.country.un_name().to_owned(),
            session: key.session,
            cycle: key.session.cycle(),
            status: None,
            scheduled_for: None,
            location: None,
            history: Vec::new(),
            side_events: Vec::new(),
            report: None,
            last_seq: 0,
        }
    }

    /// The view's identity.
    pub fn key(&self) -> ReviewKey {
        ReviewKey {
            country: self.country,
            session: self.session,
        }
    }

    /// Its key in `upr_reviews`, e.g. `KZ.48`.
    pub fn kv_key(&self) -> String {
        self.key().to_string()
    }

    /// Whether the event stored at `seq` is part of this review's value:
    /// session and country views fold an event only then, so an event the
    /// review skipped (past its limits) is skipped everywhere.
    pub fn holds(&self, seq: u64) -> bool {
        self.history.binary_search_by_key(&seq, |h| h.seq).is_ok()
    }

    /// How much of the per-review limits this value uses; the bytes of its
    /// side events are only summed when `event` is a side event (the only
    /// case that needs them).
    fn size_for(&self, event: &Envelope) -> ReviewSize {
        let side_events = self.side_events.len();
        let side_event_bytes = match event.data {
            EventData::SideEventHeld(_) => self.side_events.iter().map(|s| s.encoded_len()).sum(),
            _ => 0,
        };
        ReviewSize {
            side_events,
            side_event_bytes,
            lifecycle: self.history.len() - side_events,
        }
    }

    /// Folds one event; `false` (and no change) for an already applied
    /// `seq`, an event of another review, or one past the review's limits.
    pub fn apply(&mut self, seq: u64, event: &Envelope) -> bool {
        if seq <= self.last_seq
            || event.review_key() != self.key()
            || self.size_for(event).check(event).is_err()
        {
            return false;
        }
        let ty = event.event_type();
        self.status = evolve(self.status, ty);
        self.history.push(HistoryEntry {
            event_type: ty,
            event_id: event.id,
            seq,
            occurred_at: event.occurred_at,
        });
        match &event.data {
            EventData::ReviewScheduled(d) => {
                self.scheduled_for = Some(d.scheduled_for);
                self.location = Some(d.location.clone());
            }
            EventData::ReviewRescheduled(d) => self.scheduled_for = Some(d.scheduled_for),
            EventData::SideEventHeld(d) => {
                let item = SideEventView::of(event.id, d);
                let at = self
                    .side_events
                    .partition_point(|e| (e.held_on, e.event_id) <= (item.held_on, item.event_id));
                self.side_events.insert(at, item);
            }
            EventData::ReportPublished(d) => {
                self.report = Some(ReportView {
                    published_on: d.published_on,
                    document_symbol: d.document_symbol.clone(),
                    recommendations: d.recommendations,
                });
            }
            EventData::ReviewCancelled(_) | EventData::ReviewHeld(_) => {}
        }
        self.last_seq = seq;
        true
    }

    /// The KV value bytes.
    pub fn to_json(&self) -> Vec<u8> {
        to_json(self)
    }
}

/// A review as listed in its session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionReview {
    /// The state under review.
    pub country: Country,
    /// Its UN short name.
    pub country_name: String,
    /// Its status (`null` while only side events are known).
    pub status: Option<ReviewStatus>,
    /// Its latest scheduled date.
    pub scheduled_for: Option<Timestamp>,
    /// How many side events the state held at this session.
    pub side_events: u32,
}

/// `upr_sessions` value, key `48`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionView {
    /// The Working Group session.
    pub session: Session,
    /// Its UPR cycle.
    pub cycle: u16,
    /// Every state with an event at this session, by `scheduled_for`
    /// (unknown dates last), then country.
    pub reviews: Vec<SessionReview>,
    /// How many side events were held at this session, all states together.
    pub side_events: u32,
    /// The last stream sequence applied.
    pub last_seq: u64,
}

impl SessionView {
    /// The empty view, before any event.
    pub fn new(session: Session) -> Self {
        Self {
            session,
            cycle: session.cycle(),
            reviews: Vec::new(),
            side_events: 0,
            last_seq: 0,
        }
    }

    /// Its key in `upr_sessions`, e.g. `48`.
    pub fn kv_key(&self) -> String {
        self.session.to_string()
    }

    /// Folds one event; `false` (and no change) for an already applied
    /// `seq` or an event of another session.
    pub fn apply(&mut self, seq: u64, event: &Envelope) -> bool {
        if seq <= self.last_seq || event.session != self.session {
            return false;
        }
        let side = u32::from(event.event_type() == EventType::SideEventHeld);
        let at = self.reviews.iter().position(|r| r.country == event.country);
        let prev = at.map(|i| self.reviews.remove(i));
        let item = SessionReview {
            country: event.country,
            country_name: event.country.un_name().to_owned(),
            status: evolve(prev.as_ref().and_then(|r| r.status), event.event_type()),
            scheduled_for: new_date(event).or(prev.as_ref().and_then(|r| r.scheduled_for)),
            side_events: prev.map_or(0, |r| r.side_events).saturating_add(side),
        };
        // The list is kept sorted and a country appears once, so a binary
        // search finds the place a full sort would give.
        let order = |r: &SessionReview| (r.scheduled_for.is_none(), r.scheduled_for, r.country);
        let at = self.reviews.partition_point(|r| order(r) < order(&item));
        self.reviews.insert(at, item);
        self.side_events = self.side_events.saturating_add(side);
        self.last_seq = seq;
        true
    }

    /// The KV value bytes.
    pub fn to_json(&self) -> Vec<u8> {
        to_json(self)
    }
}

/// A review as listed for its country.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CountryReview {
    /// The Working Group session.
    pub session: Session,
    /// Its UPR cycle.
    pub cycle: u16,
    /// Its status (`null` while only side events are known).
    pub status: Option<ReviewStatus>,
    /// Its latest scheduled date.
    pub scheduled_for: Option<Timestamp>,
}

/// A published report as listed for its country. The recommendation counts
/// are in the review value: with them, a state reviewed at every one of the
/// 999 sessions would pass the value size bound.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CountryReport {
    /// The session of the review it reports on.
    pub session: Session,
    /// When it was published.
    pub published_on: Timestamp,
    /// The UN document symbol, if known.
    pub document_symbol: Option<String>,
}

/// `upr_countries` value, key `KZ`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CountryView {
    /// The state.
    pub country: Country,
    /// Its UN short name.
    pub country_name: String,
    /// Every session with an event of the state, by session.
    pub reviews: Vec<CountryReview>,
    /// How many side events it held, all sessions together.
    pub side_events: u32,
    /// Its reports, by session (a later report for a session replaces the
    /// earlier one, as in the review view).
    pub reports: Vec<CountryReport>,
    /// The last stream sequence applied.
    pub last_seq: u64,
}

impl CountryView {
    /// The empty view, before any event.
    pub fn new(country: Country) -> Self {
        Self {
            country,
            country_name: country.un_name().to_owned(),
            reviews: Vec::new(),
            side_events: 0,
            reports: Vec::new(),
            last_seq: 0,
        }
    }

    /// Its key in `upr_countries`, e.g. `KZ`.
    pub fn kv_key(&self) -> String {
        self.country.to_string()
    }

    /// Folds one event; `false` (and no change) for an already applied
    /// `seq` or an event of another country.
    pub fn apply(&mut self, seq: u64, event: &Envelope) -> bool {
        if seq <= self.last_seq || event.country != self.country {
            return false;
        }
        let session = event.session;
        let at = self.reviews.binary_search_by_key(&session, |r| r.session);
        let prev = at.ok().map(|i| &self.reviews[i]);
        let review = CountryReview {
            session,
            cycle: session.cycle(),
            status: evolve(prev.and_then(|r| r.status), event.event_type()),
            scheduled_for: new_date(event).or(prev.and_then(|r| r.scheduled_for)),
        };
        match at {
            Ok(i) => self.reviews[i] = review,
            Err(i) => self.reviews.insert(i, review),
        }
        match &event.data {
            EventData::SideEventHeld(_) => self.side_events = self.side_events.saturating_add(1),
            EventData::ReportPublished(d) => {
                let report = CountryReport {
                    session,
                    published_on: d.published_on,
                    document_symbol: d.document_symbol.clone(),
                };
                match self.reports.binary_search_by_key(&session, |r| r.session) {
                    Ok(i) => self.reports[i] = report,
                    Err(i) => self.reports.insert(i, report),
                }
            }
            _ => {}
        }
        self.last_seq = seq;
        true
    }

    /// The KV value bytes.
    pub fn to_json(&self) -> Vec<u8> {
        to_json(self)
    }
}

/// The date an event sets, if it sets one.
fn new_date(event: &Envelope) -> Option<Timestamp> {
    match &event.data {
        EventData::ReviewScheduled(d) => Some(d.scheduled_for),
        EventData::ReviewRescheduled(d) => Some(d.scheduled_for),
        _ => None,
    }
}

fn to_json<T: Serialize>(view: &T) -> Vec<u8> {
    serde_json::to_vec(view).expect("views hold only strings, integers and structs")
}

/// The views one event touches: write these three KV keys after applying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Touched {
    /// Key of the `upr_reviews` value.
    pub review: ReviewKey,
    /// Key of the `upr_sessions` value.
    pub session: Session,
    /// Key of the `upr_countries` value.
    pub country: Country,
    /// Whether any view changed (`false` for an already applied sequence).
    pub changed: bool,
}

impl Touched {
    /// The KV keys in bucket order: `upr_reviews`, `upr_sessions`,
    /// `upr_countries` (e.g. `["KZ.48", "48", "KZ"]`).
    pub fn kv_keys(&self) -> [String; 3] {
        [
            self.review.to_string(),
            self.session.to_string(),
            self.country.to_string(),
        ]
    }
}

/// All three read models in memory: the reference fold that live
/// projections are compared against, and a convenient cache.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadModels {
    /// `upr_reviews`.
    pub reviews: BTreeMap<ReviewKey, ReviewView>,
    /// `upr_sessions`.
    pub sessions: BTreeMap<Session, SessionView>,
    /// `upr_countries`.
    pub countries: BTreeMap<Country, CountryView>,
}

impl ReadModels {
    /// Applies one event to the three views it belongs to.
    pub fn apply(&mut self, seq: u64, event: &Envelope) -> Touched {
        let review = event.review_key();
        let view = self
            .reviews
            .entry(review)
            .or_insert_with(|| ReviewView::new(review));
        let a = view.apply(seq, event);
        if !view.holds(seq) {
            return Touched {
                review,
                session: event.session,
                country: event.country,
                changed: false,
            };
        }
        let b = self
            .sessions
            .entry(event.session)
            .or_insert_with(|| SessionView::new(event.session))
            .apply(seq, event);
        let c = self
            .countries
            .entry(event.country)
            .or_insert_with(|| CountryView::new(event.country))
            .apply(seq, event);
        Touched {
            review,
            session: event.session,
            country: event.country,
            changed: a || b || c,
        }
    }

    /// Folds a log from scratch.
    pub fn fold<'a>(events: impl IntoIterator<Item = (u64, &'a Envelope)>) -> Self {
        let mut models = Self::default();
        for (seq, event) in events {
            models.apply(seq, event);
        }
        models
    }

    /// Reviews for `upr.query.upcoming`: status `scheduled`, date after
    /// `now` and, if given, no later than `now + within_days`, for `country`
    /// if given; soonest first (then country, then session).
    pub fn upcoming(
        &self,
        now: Timestamp,
        within_days: Option<u32>,
        country: Option<Country>,
    ) -> Vec<Upcoming> {
        let horizon = within_days.and_then(|d| now.checked_add(time::Duration::days(d.into())));
        let mut out: Vec<Upcoming> = self
            .reviews
            .values()
            .filter(|r| r.status == Some(ReviewStatus::Scheduled))
            .filter(|r| country.is_none_or(|c| c == r.country))
            .filter_map(|r| {
                Some(Upcoming {
                    country: r.country,
                    session: r.session,
                    scheduled_for: r.scheduled_for?,
                })
            })
            .filter(|u| u.scheduled_for > now && horizon.is_none_or(|h| u.scheduled_for <= h))
            .collect();
        out.sort_by_key(|u| (u.scheduled_for, u.country, u.session));
        out
    }
}

/// One entry of `upr.query.upcoming`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Upcoming {
    /// The state under review.
    pub country: Country,
    /// The Working Group session.
    pub session: Session,
    /// When the review starts.
    pub scheduled_for: Timestamp,
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::domain::limits::MAX_LIFECYCLE_EVENTS;
    use serde_json::json;

    /// Builds envelopes with predictable ids (`…0001`, `…0002`, …).
    pub(crate) fn envelope(n: u64, key: &str, data: serde_json::Value, ty: EventType) -> Envelope {
        let key = ReviewKey::parse(key).unwrap();
        let json = json!({
            "id": Uuid::from_u128(n.into()), "type": ty, "schema": 1,
            "country": key.country, "session": key.session,
            "occurred_at": format!("2024-11-{:02}T10:00:00Z", n % 28 + 1),
            "recorded_at": "2024-12-01T00:00:00Z", "source": null, "data": data,
        });
        Envelope::from_json(&serde_json::to_vec(&json).unwrap()).unwrap()
    }

    fn scheduled(n: u64, key: &str, when: &str) -> Envelope {
        envelope(
            n,
            key,
            json!({"scheduled_for": when, "location": "Geneva"}),
            EventType::ReviewScheduled,
        )
    }

    fn side(n: u64, key: &str, held_on: &str) -> Envelope {
        let data = json!({"title": format!("Side {n}"), "held_on": held_on,
            "speakers": [{"name": "A", "role": null}], "participating_states": 3, "topics": ["t"]});
        envelope(n, key, data, EventType::SideEventHeld)
    }

    /// A session 48 with three countries, plus KZ at session 47.
    fn log() -> Vec<Envelope> {
        vec![
            scheduled(1, "KZ.48", "2025-01-23T08:30:00Z"),
            scheduled(2, "CH.48", "2025-01-21T08:30:00Z"),
            side(3, "KZ.48", "2025-01-22T00:00:00Z"),
            envelope(
                4,
                "KZ.48",
                json!({"scheduled_for": "2025-01-24T08:30:00Z", "reason": "room"}),
                EventType::ReviewRescheduled,
            ),
            side(5, "FR.48", "2025-01-20T00:00:00Z"),
            side(6, "CH.48", "2025-01-22T00:00:00Z"),
            envelope(
                7,
                "KZ.48",
                json!({"held_on": null, "recommendations_received": 300}),
                EventType::ReviewHeld,
            ),
            envelope(
                8,
                "KZ.48",
                json!({"published_on": "2025-03-01T00:00:00Z", "document_symbol": "A/HRC/59/10",
                       "recommendations": {"total": 300, "supported": 250, "noted": 50}}),
                EventType::ReportPublished,
            ),
            scheduled(9, "KZ.47", "2024-11-01T08:30:00Z"),
            envelope(
                10,
                "CH.48",
                json!({"reason": null}),
                EventType::ReviewCancelled,
            ),
            scheduled(11, "BR.48", "2025-01-21T08:30:00Z"),
        ]
    }

    fn folded() -> ReadModels {
        let log = log();
        ReadModels::fold(log.iter().enumerate().map(|(i, e)| (i as u64 + 1, e)))
    }

    fn text(bytes: Vec<u8>) -> String {
        String::from_utf8(bytes).unwrap()
    }

    fn id(n: u128) -> String {
        Uuid::from_u128(n).to_string()
    }

    fn history(rows: &[(&str, u64)]) -> Vec<serde_json::Value> {
        rows.iter()
            .map(|(t, n)| {
                json!({"type": t, "event_id": id((*n).into()), "seq": n,
                                 "occurred_at": format!("2024-11-{:02}T10:00:00Z", n % 28 + 1)})
            })
            .collect()
    }

    fn side_view(n: u128, held: &str) -> serde_json::Value {
        json!({"event_id": id(n), "title": format!("Side {n}"), "held_on": held,
               "speakers": [{"name": "A", "role": null}], "participating_states": 3, "topics": ["t"]})
    }

    #[test]
    fn the_review_view_has_every_field_in_contract_order() {
        let m = folded();
        let kz = &m.reviews[&ReviewKey::parse("KZ.48").unwrap()];
        assert_eq!(kz.kv_key(), "KZ.48");
        let expected = json!({
            "country": "KZ", "country_name": "Kazakhstan", "session": 48, "cycle": 4, "status": "reported",
            "scheduled_for": "2025-01-24T08:30:00Z", "location": "Geneva",
            "history": history(&[("review_scheduled", 1), ("side_event_held", 3), ("review_rescheduled", 4),
                                 ("review_held", 7), ("report_published", 8)]),
            "side_events": [side_view(3, "2025-01-22T00:00:00Z")],
            "report": {"published_on": "2025-03-01T00:00:00Z", "document_symbol": "A/HRC/59/10",
                       "recommendations": {"total": 300, "supported": 250, "noted": 50}},
            "last_seq": 8,
        });
        assert_eq!(text(kz.to_json()), expected.to_string());
    }

    #[test]
    fn a_review_with_only_side_events_has_a_null_status() {
        let m = folded();
        let fr = &m.reviews[&ReviewKey::parse("FR.48").unwrap()];
        let expected = json!({"country": "FR", "country_name": "France", "session": 48, "cycle": 4,
            "status": null, "scheduled_for": null, "location": null,
            "history": history(&[("side_event_held", 5)]),
            "side_events": [side_view(5, "2025-01-20T00:00:00Z")], "report": null, "last_seq": 5});
        assert_eq!(text(fr.to_json()), expected.to_string());
        let ch = &m.reviews[&ReviewKey::parse("CH.48").unwrap()];
        assert_eq!(
            (ch.status, ch.scheduled_for.unwrap().to_string()),
            (Some(ReviewStatus::Cancelled), "2025-01-21T08:30:00Z".into())
        );
    }

    #[test]
    fn a_review_lists_its_side_events_by_date_then_id() {
        let log = [
            side(9, "KZ.48", "2025-01-22T00:00:00Z"),
            side(7, "KZ.48", "2025-01-23T00:00:00Z"),
            side(8, "KZ.48", "2025-01-22T00:00:00Z"),
        ];
        let m = ReadModels::fold(log.iter().enumerate().map(|(i, e)| (i as u64 + 1, e)));
        let kz = &m.reviews[&ReviewKey::parse("KZ.48").unwrap()];
        let ids: Vec<u128> = kz
            .side_events
            .iter()
            .map(|s| s.event_id.as_u128())
            .collect();
        assert_eq!(ids, [8, 9, 7]);
    }

    #[test]
    fn the_session_view_lists_every_state_by_date_then_country_with_side_event_counts() {
        let m = folded();
        let s = &m.sessions[&Session::new(48).unwrap()];
        assert_eq!(s.kv_key(), "48");
        let expected = json!({
            "session": 48, "cycle": 4,
            "reviews": [
                {"country": "BR", "country_name": "Brazil", "status": "scheduled",
                 "scheduled_for": "2025-01-21T08:30:00Z", "side_events": 0},
                {"country": "CH", "country_name": "Switzerland", "status": "cancelled",
                 "scheduled_for": "2025-01-21T08:30:00Z", "side_events": 1},
                {"country": "KZ", "country_name": "Kazakhstan", "status": "reported",
                 "scheduled_for": "2025-01-24T08:30:00Z", "side_events": 1},
                {"country": "FR", "country_name": "France", "status": null,
                 "scheduled_for": null, "side_events": 1},
            ],
            "side_events": 3,
            "last_seq": 11,
        });
        assert_eq!(text(s.to_json()), expected.to_string());
    }

    #[test]
    fn the_country_view_sorts_reviews_and_reports_by_session() {
        let m = folded();
        let kz = &m.countries[&Country::parse("KZ").unwrap()];
        assert_eq!(kz.kv_key(), "KZ");
        let expected = json!({
            "country": "KZ", "country_name": "Kazakhstan",
            "reviews": [
                {"session": 47, "cycle": 4, "status": "scheduled", "scheduled_for": "2024-11-01T08:30:00Z"},
                {"session": 48, "cycle": 4, "status": "reported", "scheduled_for": "2025-01-24T08:30:00Z"},
            ],
            "side_events": 1,
            "reports": [{"session": 48, "published_on": "2025-03-01T00:00:00Z", "document_symbol": "A/HRC/59/10"}],
            "last_seq": 9,
        });
        assert_eq!(text(kz.to_json()), expected.to_string());
        let fr = &m.countries[&Country::parse("FR").unwrap()];
        assert_eq!(
            text(fr.to_json()),
            r#"{"country":"FR","country_name":"France","reviews":[{"session":48,"cycle":4,"status":null,"scheduled_for":null}],"side_events":1,"reports":[],"last_seq":5}"#
        );
    }

    #[test]
    fn an_event_past_its_review_limits_is_skipped_by_every_view() {
        // Written around ingest: 101 lifecycle events on one review.
        let mut log: Vec<Envelope> = (1..=MAX_LIFECYCLE_EVENTS as u64 + 1)
            .map(|n| scheduled(n, "KZ.48", "2025-01-23T08:30:00Z"))
            .collect();
        log.push(scheduled(500, "CH.48", "2025-01-21T08:30:00Z"));
        let m = ReadModels::fold(log.iter().enumerate().map(|(i, e)| (i as u64 + 1, e)));
        let kz = &m.reviews[&ReviewKey::parse("KZ.48").unwrap()];
        assert_eq!(kz.history.len(), MAX_LIFECYCLE_EVENTS);
        assert_eq!(kz.last_seq, MAX_LIFECYCLE_EVENTS as u64);
        assert!(!kz.holds(101) && kz.holds(100));
        // The session and country skipped seq 101 too, and took seq 102.
        let s = &m.sessions[&Session::new(48).unwrap()];
        let c = &m.countries[&Country::parse("KZ").unwrap()];
        assert_eq!((s.last_seq, c.last_seq), (102, 100));
        // Redelivering the skipped event changes nothing anywhere.
        let mut again = m.clone();
        assert!(!again.apply(101, &log[100]).changed);
        assert_eq!(again, m);
    }

    #[test]
    fn applying_the_same_seq_twice_is_the_same_as_once() {
        let log = log();
        let mut m = ReadModels::default();
        for (i, e) in log.iter().enumerate() {
            let seq = i as u64 + 1;
            assert!(m.apply(seq, e).changed);
            let again = m.apply(seq, e);
            assert!(!again.changed);
            assert_eq!(
                again.kv_keys(),
                [
                    e.review_key().to_string(),
                    e.session.to_string(),
                    e.country.to_string()
                ]
            );
        }
        assert_eq!(m, folded());
        // Redelivery of an old sequence after newer ones is also ignored.
        assert!(!m.apply(1, &log[0]).changed);
        assert_eq!(m, folded());
    }

    #[test]
    fn views_ignore_events_of_other_keys() {
        let e = scheduled(1, "KZ.48", "2025-01-23T08:30:00Z");
        assert!(!ReviewView::new(ReviewKey::parse("KZ.47").unwrap()).apply(1, &e));
        assert!(!SessionView::new(Session::new(47).unwrap()).apply(1, &e));
        assert!(!CountryView::new(Country::parse("CH").unwrap()).apply(1, &e));
    }

    #[test]
    fn folding_twice_gives_the_same_bytes_and_views_round_trip() {
        let (a, b) = (folded(), folded());
        for (x, y) in a.reviews.values().zip(b.reviews.values()) {
            assert_eq!(x.to_json(), y.to_json());
            assert_eq!(
                &serde_json::from_slice::<ReviewView>(&x.to_json()).unwrap(),
                x
            );
        }
        for v in a.sessions.values() {
            assert_eq!(
                &serde_json::from_slice::<SessionView>(&v.to_json()).unwrap(),
                v
            );
        }
        for v in a.countries.values() {
            assert_eq!(
                &serde_json::from_slice::<CountryView>(&v.to_json()).unwrap(),
                v
            );
        }
        assert_eq!(a, b);
    }

    #[test]
    fn upcoming_lists_future_scheduled_reviews_soonest_first() {
        let m = folded();
        let now = Timestamp::parse_rfc3339("2025-01-01T00:00:00Z").unwrap();
        let keys = |v: Vec<Upcoming>| {
            v.iter()
                .map(|u| format!("{}.{}", u.country, u.session))
                .collect::<Vec<_>>()
        };
        // KZ.48 is reported, CH.48 cancelled, KZ.47 in the past.
        assert_eq!(keys(m.upcoming(now, None, None)), ["BR.48"]);
        assert!(m.upcoming(now, Some(7), None).is_empty());
        assert_eq!(
            keys(m.upcoming(now, Some(30), Country::parse("BR").ok())),
            ["BR.48"]
        );
        assert!(m.upcoming(now, None, Country::parse("KZ").ok()).is_empty());
        let earlier = Timestamp::parse_rfc3339("2024-10-01T00:00:00Z").unwrap();
        assert_eq!(keys(m.upcoming(earlier, None, None)), ["KZ.47", "BR.48"]);
    }

    /// The largest values intake lets through stay under the bound.
    mod sizes {
        use super::*;
        use crate::domain::intake::parse_intake;
        use crate::domain::limits::{MAX_SIDE_EVENT_BYTES, MAX_VALUE_BYTES};
        use crate::domain::member_states::MEMBER_STATES;

        /// The longest time intake accepts, as text.
        const LATEST: &str = "9999-12-31T23:59:59.999999999Z";
        /// A character JSON writes as six bytes (`\u0001`).
        const WIDE: &str = "\u{1}";

        /// Accepted by intake, or the test is wrong.
        fn accepted(n: u64, ty: &str, mut payload: serde_json::Value) -> Envelope {
            payload["occurred_at"] = LATEST.into();
            payload["source"] = WIDE.repeat(200).into();
            let bytes = serde_json::to_vec(&payload).unwrap();
            parse_intake(ty, &bytes)
                .unwrap_or_else(|e| panic!("{ty} refused: {e:?}"))
                .into_envelope(
                    Uuid::from_u128(u128::MAX - u128::from(n)),
                    Timestamp::parse_rfc3339(LATEST).unwrap(),
                )
        }

        fn largest_side_event(country: &str, session: u16, speakers: usize) -> serde_json::Value {
            let speakers: Vec<_> = (0..speakers)
                .map(|_| json!({"name": WIDE.repeat(50), "role": WIDE.repeat(50)}))
                .collect();
            json!({"country": country, "session": session, "title": WIDE.repeat(300),
                   "held_on": LATEST, "speakers": speakers, "participating_states": 10_000,
                   "topics": [WIDE.repeat(100)]})
        }

        fn fold_all(events: &[Envelope]) -> ReadModels {
            // Sequences near the top of u64 make the longest `seq` fields.
            ReadModels::fold(
                events
                    .iter()
                    .enumerate()
                    .map(|(i, e)| (u64::MAX / 2 + i as u64, e)),
            )
        }

        #[test]
        fn a_review_value_with_every_limit_reached_stays_under_256_kib() {
            let mut log = vec![accepted(
                0,
                "review_scheduled",
                json!({"country": "KZ", "session": 999,
                "scheduled_for": LATEST, "location": WIDE.repeat(200)}),
            )];
            for n in 1..=97 {
                log.push(accepted(
                    n,
                    "review_rescheduled",
                    json!({"country": "KZ", "session": 999,
                    "scheduled_for": LATEST, "reason": WIDE.repeat(1000)}),
                ));
            }
            log.push(accepted(
                98,
                "review_held",
                json!({"country": "KZ", "session": 999,
                "held_on": LATEST, "recommendations_received": 10_000}),
            ));
            log.push(accepted(
                99,
                "report_published",
                json!({"country": "KZ", "session": 999,
                "published_on": LATEST, "document_symbol": "A".repeat(50),
                "recommendations": {"total": 10_000, "supported": 5_000, "noted": 5_000}}),
            ));
            // Side events as large as intake takes, then small ones, far past both limits.
            for n in 100..110 {
                log.push(accepted(
                    n,
                    "side_event_held",
                    largest_side_event("KZ", 999, 95),
                ));
            }
            for n in 110..400 {
                log.push(accepted(
                    n,
                    "side_event_held",
                    largest_side_event("KZ", 999, 0),
                ));
            }
            let m = fold_all(&log);
            let kz = &m.reviews[&ReviewKey::parse("KZ.999").unwrap()];
            let side_bytes: usize = kz.side_events.iter().map(SideEventView::encoded_len).sum();
            let smallest = kz
                .side_events
                .iter()
                .map(SideEventView::encoded_len)
                .min()
                .unwrap();
            assert!(
                side_bytes <= MAX_SIDE_EVENT_BYTES && side_bytes + smallest > MAX_SIDE_EVENT_BYTES,
                "side events filled to {side_bytes} bytes"
            );
            let len = kz.to_json().len();
            assert!(len < MAX_VALUE_BYTES, "review value of {len} bytes");
        }

        #[test]
        fn a_country_reviewed_at_every_session_stays_under_256_kib() {
            let mut log = Vec::new();
            for session in 1..=999u16 {
                let n = u64::from(session) * 4;
                let base = json!({"country": "KZ", "session": session});
                let with = |extra: serde_json::Value| {
                    let mut v = base.clone();
                    v.as_object_mut()
                        .unwrap()
                        .extend(extra.as_object().unwrap().clone());
                    v
                };
                log.push(accepted(
                    n,
                    "review_scheduled",
                    with(json!({"scheduled_for": LATEST})),
                ));
                log.push(accepted(n + 1, "review_held", with(json!({}))));
                log.push(accepted(
                    n + 2,
                    "report_published",
                    with(json!({"published_on": LATEST,
                    "document_symbol": "A".repeat(50),
                    "recommendations": {"total": 10_000, "supported": 5_000, "noted": 5_000}})),
                ));
                log.push(accepted(
                    n + 3,
                    "side_event_held",
                    largest_side_event("KZ", session, 0),
                ));
            }
            let m = fold_all(&log);
            let kz = &m.countries[&Country::parse("KZ").unwrap()];
            assert_eq!((kz.reviews.len(), kz.reports.len()), (999, 999));
            let len = kz.to_json().len();
            assert!(len < MAX_VALUE_BYTES, "country value of {len} bytes");
        }

        #[test]
        fn a_session_reviewing_every_member_state_stays_under_256_kib() {
            let mut log = Vec::new();
            for (i, (code, _)) in MEMBER_STATES.iter().enumerate() {
                let n = i as u64 * 2;
                log.push(accepted(
                    n,
                    "review_scheduled",
                    json!({"country": code, "session": 999, "scheduled_for": LATEST}),
                ));
                log.push(accepted(
                    n + 1,
                    "side_event_held",
                    largest_side_event(code, 999, 95),
                ));
            }
            let m = fold_all(&log);
            let s = &m.sessions[&Session::new(999).unwrap()];
            assert_eq!((s.reviews.len(), s.side_events), (193, 193));
            let len = s.to_json().len();
            assert!(len < MAX_VALUE_BYTES, "session value of {len} bytes");
        }
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn arb_event() -> impl Strategy<Value = (u8, u8, u8, u8)> {
            (0u8..3, 1u8..3, 0u8..6, 0u8..40)
        }

        fn make(n: u64, (c, s, t, day): (u8, u8, u8, u8)) -> Envelope {
            let key = format!("{}.{}", ["KZ", "CH", "BR"][c as usize], s);
            let when = format!("2025-{:02}-{:02}T08:30:00Z", day / 28 + 1, day % 28 + 1);
            let ty = EventType::ALL[t as usize];
            let data = match ty {
                EventType::ReviewScheduled => json!({"scheduled_for": when, "location": "Geneva"}),
                EventType::ReviewRescheduled => json!({"scheduled_for": when, "reason": null}),
                EventType::ReviewCancelled => json!({"reason": null}),
                EventType::ReviewHeld => json!({"held_on": when, "recommendations_received": null}),
                EventType::SideEventHeld => json!({"title": "t", "held_on": when}),
                EventType::ReportPublished => json!({"published_on": when}),
            };
            envelope(n, &key, data, ty)
        }

        fn bytes(m: &ReadModels) -> Vec<Vec<u8>> {
            let r = m.reviews.values().map(ReviewView::to_json);
            let s = m.sessions.values().map(SessionView::to_json);
            r.chain(s)
                .chain(m.countries.values().map(CountryView::to_json))
                .collect()
        }

        proptest! {
            #[test]
            fn fold_is_deterministic_and_redelivery_changes_nothing(
                specs in proptest::collection::vec(arb_event(), 0..40),
                redeliver in proptest::collection::vec(any::<prop::sample::Index>(), 0..20),
                prefix in any::<prop::sample::Index>(),
            ) {
                let log: Vec<Envelope> = specs.into_iter().enumerate().map(|(i, s)| make(i as u64 + 1, s)).collect();
                let seqd = || log.iter().enumerate().map(|(i, e)| (i as u64 + 1, e));
                let once = ReadModels::fold(seqd());
                for s in once.sessions.values() {
                    let order: Vec<_> = s.reviews.iter().map(|r| (r.scheduled_for.is_none(), r.scheduled_for, r.country)).collect();
                    prop_assert!(order.windows(2).all(|w| w[0] < w[1]), "session reviews out of order: {:?}", order);
                }
                prop_assert_eq!(bytes(&once), bytes(&ReadModels::fold(seqd())));

                // Live: each event may be redelivered right away, or an old one later.
                let mut live = ReadModels::default();
                for (seq, e) in seqd() {
                    live.apply(seq, e);
                    live.apply(seq, e);
                    if let Some(old) = redeliver.get(seq as usize).filter(|_| seq > 1) {
                        let i = old.index(seq as usize);
                        prop_assert!(!live.apply(i as u64 + 1, &log[i]).changed);
                    }
                }
                prop_assert_eq!(bytes(&live), bytes(&once));

                // Re-applying any prefix of the log after the fold changes nothing.
                let mut again = once.clone();
                let n = if log.is_empty() { 0 } else { prefix.index(log.len() + 1) };
                for (seq, e) in seqd().take(n) {
                    prop_assert!(!again.apply(seq, e).changed);
                }
                prop_assert_eq!(again, once);
            }
        }
    }
}
