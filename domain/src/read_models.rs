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

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::country::Country;
use super::event::{
    Envelope, EventData, EventRetracted, EventType, Recommendations, ReviewKey, Session,
};
use super::lifecycle::{ReviewStatus, evolve};
use super::limits::ReviewSize;
use super::party::PartyName;
use super::side_event::SideEventView;
use super::time::Timestamp;

/// One line of a review's history: every event stored on its subjects,
/// side events included (`upr.events.KZ.48.>` is the review's history).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
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
    /// Who recorded it (contract v3): the party the server authenticated;
    /// `null` for events of schema 1 and 2, and without users.
    pub recorded_by: Option<PartyName>,
    /// Set when a later `event_retracted` took this event back.
    pub retracted: Option<RetractionMark>,
}

/// How a history entry was retracted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct RetractionMark {
    /// The stream sequence of the `event_retracted` event.
    pub seq: u64,
    /// Its reason, cut to [`REASON_CHARS`] characters (the log keeps it whole).
    pub reason: String,
}

/// How much of a retraction's reason a history entry repeats: up to 100
/// retractions fit in a review value only if their reasons are short there.
pub const REASON_CHARS: usize = 50;

/// The Council's adoption of a review's outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OutcomeView {
    /// When it was adopted.
    pub adopted_on: Timestamp,
    /// The Human Rights Council session that adopted it.
    pub hrc_session: u16,
    /// The state's final positions, if known.
    pub recommendations: Option<Recommendations>,
}

/// The outcome report of a review.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ReportView {
    /// When it was published.
    pub published_on: Timestamp,
    /// The UN document symbol, if known.
    pub document_symbol: Option<String>,
    /// The recommendation counts, if known.
    pub recommendations: Option<Recommendations>,
}

/// `upr_reviews` value, key `KZ.48`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
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
    /// The three states facilitating the review, if the scheduling named them.
    pub troika: Option<Vec<Country>>,
    /// Every event of the review, in stream order, retracted ones marked.
    pub history: Vec<HistoryEntry>,
    /// The side events this country held at this session, in full, by
    /// `held_on` then `event_id`.
    pub side_events: Vec<SideEventView>,
    /// The outcome report, once published.
    pub report: Option<ReportView>,
    /// The Council's adoption of the outcome, once adopted.
    pub outcome: Option<OutcomeView>,
    /// The last stream sequence applied.
    pub last_seq: u64,
    /// Bytes `side_events` take in the value, once counted: the byte limit
    /// is checked for every side event, and counting means serialising.
    #[serde(skip)]
    #[schemars(skip)]
    side_event_bytes: Derived,
}

/// A figure derived from a value's fields, kept so it is not computed
/// again; not part of the value (no JSON, and equal whatever it holds).
#[derive(Debug, Clone, Copy, Default)]
struct Derived(Option<usize>);

impl PartialEq for Derived {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Derived {}

/// What folding one event into a review value did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fold {
    /// The value changed.
    Applied,
    /// Nothing changed: an applied sequence, another review's event, or one
    /// past the review's limits.
    Ignored,
    /// A retraction of a lifecycle event: restoring what the event replaced
    /// needs the review's earlier events ([`ReviewView::apply_with_history`]).
    NeedsHistory,
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
            troika: None,
            history: Vec::new(),
            side_events: Vec::new(),
            report: None,
            outcome: None,
            last_seq: 0,
            side_event_bytes: Derived(Some(0)),
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

    /// How much of the per-review limits this value uses: counts from the
    /// history (retracted entries stay there, so they still count), bytes
    /// from the side events in force, summed only when `event` is a side
    /// event (the only case that needs them).
    fn size_for(&mut self, event: &Envelope) -> ReviewSize {
        let mut size = ReviewSize::default();
        for h in &self.history {
            match h.event_type {
                EventType::SideEventHeld => size.side_events += 1,
                EventType::EventRetracted => size.retractions += 1,
                _ => size.lifecycle += 1,
            }
        }
        if let EventData::SideEventHeld(_) = event.data {
            size.side_event_bytes = *self.side_event_bytes.0.get_or_insert_with(|| {
                self.side_events
                    .iter()
                    .map(SideEventView::encoded_len)
                    .sum()
            });
        }
        size
    }

    /// Folds one event. A retraction of a side event, or one that takes
    /// nothing back, is folded here; a retraction of the lifecycle event in
    /// force answers [`Fold::NeedsHistory`] and changes nothing yet.
    pub fn apply(&mut self, seq: u64, event: &Envelope) -> Fold {
        if seq <= self.last_seq
            || event.review_key() != self.key()
            || self.size_for(event).check(event).is_err()
        {
            return Fold::Ignored;
        }
        if let EventData::EventRetracted(r) = &event.data
            && self.lifecycle_in_force().last() == Some(&r.retracts)
        {
            return Fold::NeedsHistory;
        }
        self.fold(seq, event);
        Fold::Applied
    }

    /// Folds a retraction that [`ReviewView::apply`] answered with
    /// [`Fold::NeedsHistory`], given the review's events before it
    /// (`upr.events.<C>.<S>.>` up to `seq - 1`; other events are ignored).
    pub fn apply_with_history(
        &mut self,
        seq: u64,
        event: &Envelope,
        history: &[(u64, Envelope)],
    ) -> Fold {
        match self.apply(seq, event) {
            Fold::NeedsHistory => {}
            done => return done,
        }
        self.fold(seq, event);
        // Restore what the lifecycle events still in force set, in order.
        let in_force = self.lifecycle_in_force();
        self.status = None;
        self.scheduled_for = None;
        self.location = None;
        self.troika = None;
        self.report = None;
        self.outcome = None;
        for (_, e) in history
            .iter()
            .filter(|(s, e)| *s < seq && in_force.contains(&e.id))
        {
            self.status = evolve(self.status, e.event_type());
            self.fold_lifecycle_data(e);
        }
        Fold::Applied
    }

    /// How the event at `seq`, as this value holds it, changed the number of
    /// side events in force: +1 for a side event, -1 for a retraction that
    /// took one back, else 0. Read from the history, so a session or country
    /// value taking in a redelivered event counts it exactly as the first
    /// time (each does so only for a `seq` past its own `last_seq`).
    pub fn side_event_delta(&self, seq: u64) -> i64 {
        let Ok(i) = self.history.binary_search_by_key(&seq, |h| h.seq) else {
            return 0;
        };
        match self.history[i].event_type {
            EventType::SideEventHeld => 1,
            EventType::EventRetracted => {
                let took_back_side_event = self.history.iter().any(|h| {
                    h.event_type == EventType::SideEventHeld
                        && h.retracted.as_ref().is_some_and(|r| r.seq == seq)
                });
                -i64::from(took_back_side_event)
            }
            _ => 0,
        }
    }

    /// Whether nothing of the review is in force: every event it held was
    /// retracted. Session and country values then list it as if it had
    /// never been recorded.
    pub fn is_void(&self) -> bool {
        self.status.is_none() && self.side_events.is_empty()
    }

    /// Ids of the lifecycle events in force (not retracted), oldest first.
    fn lifecycle_in_force(&self) -> Vec<Uuid> {
        self.history
            .iter()
            .filter(|h| h.retracted.is_none())
            .filter(|h| {
                !matches!(
                    h.event_type,
                    EventType::SideEventHeld | EventType::EventRetracted
                )
            })
            .map(|h| h.event_id)
            .collect()
    }

    fn fold(&mut self, seq: u64, event: &Envelope) {
        let ty = event.event_type();
        self.status = evolve(self.status, ty);
        self.history.push(HistoryEntry {
            event_type: ty,
            event_id: event.id,
            seq,
            occurred_at: event.occurred_at,
            recorded_by: event.recorded_by.clone(),
            retracted: None,
        });
        match &event.data {
            EventData::SideEventHeld(d) => {
                let item = SideEventView::of(event.id, event.recorded_by.as_ref(), d);
                if let Some(bytes) = &mut self.side_event_bytes.0 {
                    *bytes += item.encoded_len();
                }
                let at = self
                    .side_events
                    .partition_point(|e| (e.held_on, e.event_id) <= (item.held_on, item.event_id));
                self.side_events.insert(at, item);
            }
            EventData::EventRetracted(r) => self.mark_retracted(seq, r),
            _ => self.fold_lifecycle_data(event),
        }
        self.last_seq = seq;
    }

    /// Marks the target of a retraction (if it is an event of this review
    /// not yet retracted, and not a retraction itself) and drops it from the
    /// side events. Anything else leaves the value as it was: a retraction
    /// written around ingest that names nothing valid takes nothing back.
    fn mark_retracted(&mut self, seq: u64, r: &EventRetracted) {
        let Some(target) = self.history.iter_mut().find(|h| {
            h.event_id == r.retracts
                && h.retracted.is_none()
                && h.event_type != EventType::EventRetracted
        }) else {
            return;
        };
        target.retracted = Some(RetractionMark {
            seq,
            reason: r.reason.chars().take(REASON_CHARS).collect(),
        });
        if target.event_type == EventType::SideEventHeld {
            self.side_events.retain(|s| s.event_id != r.retracts);
            self.side_event_bytes = Derived(None);
        }
    }

    /// What a lifecycle event sets besides the status.
    fn fold_lifecycle_data(&mut self, event: &Envelope) {
        match &event.data {
            EventData::ReviewScheduled(d) => {
                self.scheduled_for = Some(d.scheduled_for);
                self.location = Some(d.location.clone());
                self.troika.clone_from(&d.troika);
            }
            EventData::ReviewRescheduled(d) => self.scheduled_for = Some(d.scheduled_for),
            EventData::ReportPublished(d) => {
                self.report = Some(ReportView {
                    published_on: d.published_on,
                    document_symbol: d.document_symbol.clone(),
                    recommendations: d.recommendations,
                });
            }
            EventData::OutcomeAdopted(d) => {
                self.outcome = Some(OutcomeView {
                    adopted_on: d.adopted_on,
                    hrc_session: d.hrc_session,
                    recommendations: d.recommendations,
                });
            }
            EventData::ReviewCancelled(_)
            | EventData::ReviewHeld(_)
            | EventData::SideEventHeld(_)
            | EventData::EventRetracted(_) => {}
        }
    }

    /// The KV value bytes.
    pub fn to_json(&self) -> Vec<u8> {
        to_json(self)
    }
}

/// A review as listed in its session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
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

    /// Takes in the review value `review` after it folded the event at
    /// `seq`. The session lists each review as its value now stands, so
    /// every event, a retraction included, lands the same way. `false` (and
    /// no change) for an already applied `seq` or a review of another session.
    pub fn absorb(&mut self, seq: u64, review: &ReviewView) -> bool {
        if seq <= self.last_seq || review.session != self.session {
            return false;
        }
        if let Some(i) = self
            .reviews
            .iter()
            .position(|r| r.country == review.country)
        {
            self.reviews.remove(i);
        }
        self.side_events = moved(self.side_events, review.side_event_delta(seq));
        self.last_seq = seq;
        if review.is_void() {
            return true; // everything retracted: listed as if never recorded
        }
        let item = SessionReview {
            country: review.country,
            country_name: review.country_name.clone(),
            status: review.status,
            scheduled_for: review.scheduled_for,
            side_events: count(review.side_events.len()),
        };
        // The list is kept sorted and a country appears once, so a binary
        // search finds the place a full sort would give.
        let order = |r: &SessionReview| (r.scheduled_for.is_none(), r.scheduled_for, r.country);
        let at = self.reviews.partition_point(|r| order(r) < order(&item));
        self.reviews.insert(at, item);
        true
    }

    /// The KV value bytes.
    pub fn to_json(&self) -> Vec<u8> {
        to_json(self)
    }
}

/// A review as listed for its country.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CountryReport {
    /// The session of the review it reports on.
    pub session: Session,
    /// When it was published.
    pub published_on: Timestamp,
    /// The UN document symbol, if known.
    pub document_symbol: Option<String>,
}

/// `upr_countries` value, key `KZ`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
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

    /// Takes in the review value `review` after it folded the event at
    /// `seq` (as [`SessionView::absorb`]). `false` (and no change) for an
    /// already applied `seq` or a review of another country.
    pub fn absorb(&mut self, seq: u64, review: &ReviewView) -> bool {
        if seq <= self.last_seq || review.country != self.country {
            return false;
        }
        let session = review.session;
        let entry = CountryReview {
            session,
            cycle: session.cycle(),
            status: review.status,
            scheduled_for: review.scheduled_for,
        };
        match (
            self.reviews.binary_search_by_key(&session, |r| r.session),
            review.is_void(),
        ) {
            (Ok(i), false) => self.reviews[i] = entry,
            (Err(i), false) => self.reviews.insert(i, entry),
            (Ok(i), true) => {
                self.reviews.remove(i);
            }
            (Err(_), true) => {}
        }
        let at = self.reports.binary_search_by_key(&session, |r| r.session);
        match (&review.report, at) {
            (Some(r), at) => {
                let report = CountryReport {
                    session,
                    published_on: r.published_on,
                    document_symbol: r.document_symbol.clone(),
                };
                match at {
                    Ok(i) => self.reports[i] = report,
                    Err(i) => self.reports.insert(i, report),
                }
            }
            (None, Ok(i)) => {
                self.reports.remove(i);
            }
            (None, Err(_)) => {}
        }
        self.side_events = moved(self.side_events, review.side_event_delta(seq));
        self.last_seq = seq;
        true
    }

    /// The KV value bytes.
    pub fn to_json(&self) -> Vec<u8> {
        to_json(self)
    }
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// A side-event total moved by `delta`.
fn moved(total: u32, delta: i64) -> u32 {
    u32::try_from(i64::from(total) + delta).unwrap_or(0)
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
/// projections are compared against.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadModels {
    /// `upr_reviews`.
    pub reviews: BTreeMap<ReviewKey, ReviewView>,
    /// `upr_sessions`.
    pub sessions: BTreeMap<Session, SessionView>,
    /// `upr_countries`.
    pub countries: BTreeMap<Country, CountryView>,
    /// The log by review and sequence: the history a retraction needs (a
    /// live projection reads it from the stream instead).
    events: BTreeMap<ReviewKey, BTreeMap<u64, Envelope>>,
}

impl ReadModels {
    /// Applies one event to the three views it belongs to: the review value
    /// first, then the session and country values take in what it became.
    pub fn apply(&mut self, seq: u64, event: &Envelope) -> Touched {
        let review = event.review_key();
        let view = self
            .reviews
            .entry(review)
            .or_insert_with(|| ReviewView::new(review));
        let log = self.events.entry(review).or_default();
        let changed = match view.apply(seq, event) {
            Fold::NeedsHistory => {
                let history: Vec<(u64, Envelope)> =
                    log.range(..seq).map(|(s, e)| (*s, e.clone())).collect();
                view.apply_with_history(seq, event, &history) == Fold::Applied
            }
            fold => fold == Fold::Applied,
        };
        log.insert(seq, event.clone());
        // Also for an event the review already holds: a session or country
        // value that missed it (a crash between writes) catches up.
        if changed || view.holds(seq) {
            self.sessions
                .entry(event.session)
                .or_insert_with(|| SessionView::new(event.session))
                .absorb(seq, view);
            self.countries
                .entry(event.country)
                .or_insert_with(|| CountryView::new(event.country))
                .absorb(seq, view);
        }
        Touched {
            review,
            session: event.session,
            country: event.country,
            changed,
        }
    }

    /// Makes the log known, as a live projection knows the stream: models
    /// resumed from stored values can then fold a retraction.
    #[must_use]
    pub fn knowing<'a>(mut self, log: impl IntoIterator<Item = (u64, &'a Envelope)>) -> Self {
        for (seq, event) in log {
            self.events
                .entry(event.review_key())
                .or_default()
                .insert(seq, event.clone());
        }
        self
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
        let horizon = Upcoming::horizon(now, within_days);
        let mut out: Vec<Upcoming> = self
            .reviews
            .values()
            .filter(|r| r.status == Some(ReviewStatus::Scheduled))
            .filter(|r| country.is_none_or(|c| c == r.country))
            .filter_map(|r| Some(Upcoming::new(r.country, r.session, r.scheduled_for?)))
            .filter(|u| u.scheduled_for > now && horizon.is_none_or(|h| u.scheduled_for <= h))
            .collect();
        out.sort_by_key(|u| (u.scheduled_for, u.country, u.session));
        out
    }
}

/// One entry of `upr.query.upcoming`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Upcoming {
    /// The state under review.
    pub country: Country,
    /// Its UN short name.
    pub country_name: String,
    /// The Working Group session.
    pub session: Session,
    /// When the review starts.
    pub scheduled_for: Timestamp,
}

impl Upcoming {
    /// The entry of `country`'s review at `session` on `scheduled_for`.
    pub fn new(country: Country, session: Session, scheduled_for: Timestamp) -> Self {
        Self {
            country,
            country_name: country.un_name().to_owned(),
            session,
            scheduled_for,
        }
    }

    /// The latest date an `upr.query.upcoming` with `within_days` admits:
    /// `now + within_days`; `None` (no bound) without `within_days`, or when
    /// that date is past what a timestamp can hold.
    pub fn horizon(now: Timestamp, within_days: Option<u32>) -> Option<Timestamp> {
        within_days.and_then(|d| now.checked_add(time::Duration::days(d.into())))
    }
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation, reason = "test sequences are small")]
pub(crate) mod tests {
    use super::*;
    use crate::limits::MAX_LIFECYCLE_EVENTS;
    use serde_json::json;

    /// Builds envelopes with predictable ids (`…0001`, `…0002`, …).
    #[allow(
        clippy::needless_pass_by_value,
        reason = "callers pass json! temporaries"
    )]
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
                                 "occurred_at": format!("2024-11-{:02}T10:00:00Z", n % 28 + 1),
                                 "recorded_by": null, "retracted": null})
            })
            .collect()
    }

    fn side_view(n: u128, held: &str) -> serde_json::Value {
        json!({"event_id": id(n), "recorded_by": null, "title": format!("Side {n}"), "held_on": held,
               "speakers": [{"name": "A", "role": null}], "participating_states": 3, "topics": ["t"]})
    }

    #[test]
    fn the_review_view_has_every_field_in_contract_order() {
        let m = folded();
        let kz = &m.reviews[&ReviewKey::parse("KZ.48").unwrap()];
        assert_eq!(kz.kv_key(), "KZ.48");
        let expected = json!({
            "country": "KZ", "country_name": "Kazakhstan", "session": 48, "cycle": 4, "status": "reported",
            "scheduled_for": "2025-01-24T08:30:00Z", "location": "Geneva", "troika": null,
            "history": history(&[("review_scheduled", 1), ("side_event_held", 3), ("review_rescheduled", 4),
                                 ("review_held", 7), ("report_published", 8)]),
            "side_events": [side_view(3, "2025-01-22T00:00:00Z")],
            "report": {"published_on": "2025-03-01T00:00:00Z", "document_symbol": "A/HRC/59/10",
                       "recommendations": {"total": 300, "supported": 250, "noted": 50}},
            "outcome": null,
            "last_seq": 8,
        });
        assert_eq!(text(kz.to_json()), expected.to_string());
    }

    #[test]
    fn history_and_side_event_entries_say_who_recorded_them() {
        let mut side = side(9, "FR.48", "2025-01-20T00:00:00Z");
        side.schema = crate::SCHEMA;
        side.recorded_by = Some(PartyName::parse("ngo-a").unwrap());
        let m = ReadModels::fold([(1, &side)]);
        let fr = &m.reviews[&ReviewKey::parse("FR.48").unwrap()];
        let json: serde_json::Value = serde_json::from_slice(&fr.to_json()).unwrap();
        assert_eq!(json["history"][0]["recorded_by"], "ngo-a");
        assert_eq!(json["side_events"][0]["recorded_by"], "ngo-a");
    }

    #[test]
    fn a_review_with_only_side_events_has_a_null_status() {
        let m = folded();
        let fr = &m.reviews[&ReviewKey::parse("FR.48").unwrap()];
        let expected = json!({"country": "FR", "country_name": "France", "session": 48, "cycle": 4,
            "status": null, "scheduled_for": null, "location": null, "troika": null,
            "history": history(&[("side_event_held", 5)]),
            "side_events": [side_view(5, "2025-01-20T00:00:00Z")], "report": null, "outcome": null,
            "last_seq": 5});
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
        assert_eq!(
            ReviewView::new(ReviewKey::parse("KZ.47").unwrap()).apply(1, &e),
            Fold::Ignored
        );
        let mut kz48 = ReviewView::new(ReviewKey::parse("KZ.48").unwrap());
        assert_eq!(kz48.apply(1, &e), Fold::Applied);
        assert!(!SessionView::new(Session::new(47).unwrap()).absorb(1, &kz48));
        assert!(!CountryView::new(Country::parse("CH").unwrap()).absorb(1, &kz48));
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

    /// Contract v2: after a retraction, the read models are what they would
    /// be had the retracted event never been recorded. Exactly: every
    /// field but the history and `last_seq` is byte-identical to the fold
    /// of the log without the retracted event and the retraction; the
    /// history keeps the retracted entry, marked, and the retraction; a
    /// review whose every event was retracted is empty and listed nowhere.
    mod retractions {
        use super::*;
        use proptest::prelude::*;

        const KEYS: [&str; 3] = ["KZ.48", "CH.48", "KZ.47"];

        fn make(n: u64, key: usize, ty: u8, day: u8) -> Envelope {
            let when = format!("2025-{:02}-{:02}T08:30:00Z", day / 28 + 1, day % 28 + 1);
            let (ty, data) = match ty % 7 {
                0 => (
                    EventType::ReviewScheduled,
                    json!({"scheduled_for": when, "location": format!("Room {day}"),
                        "troika": if day.is_multiple_of(2) { json!(["AR", "JP", "SN"]) } else { json!(null) }}),
                ),
                1 => (EventType::ReviewRescheduled, json!({"scheduled_for": when})),
                2 => (EventType::ReviewCancelled, json!({})),
                3 => (EventType::ReviewHeld, json!({})),
                4 => (
                    EventType::SideEventHeld,
                    json!({"title": format!("Side {n}"), "held_on": when}),
                ),
                5 => (
                    EventType::ReportPublished,
                    json!({"published_on": when, "document_symbol": "A/HRC/59/10"}),
                ),
                _ => (
                    EventType::OutcomeAdopted,
                    json!({"adopted_on": when, "hrc_session": 58}),
                ),
            };
            envelope(n, KEYS[key], data, ty)
        }

        fn retraction(n: u64, target: &Envelope) -> Envelope {
            let data = json!({"retracts": target.id, "reason": "r".repeat(150)});
            envelope(
                n,
                &target.review_key().to_string(),
                data,
                EventType::EventRetracted,
            )
        }

        fn fold(log: &[Envelope]) -> ReadModels {
            ReadModels::fold(log.iter().enumerate().map(|(i, e)| (i as u64 + 1, e)))
        }

        /// The values with `history` and `last_seq` left out.
        fn comparable(m: &ReadModels) -> Vec<(String, serde_json::Value)> {
            let strip = |mut v: serde_json::Value| {
                let o = v.as_object_mut().unwrap();
                o.remove("history");
                o.remove("last_seq");
                v
            };
            let reviews = m.reviews.values().filter(|r| !r.is_void()).map(|r| {
                (
                    format!("review {}", r.kv_key()),
                    strip(serde_json::to_value(r).unwrap()),
                )
            });
            // A session or country whose every event was retracted lists nothing.
            let sessions = m
                .sessions
                .values()
                .filter(|v| !v.reviews.is_empty())
                .map(|v| {
                    (
                        format!("session {}", v.kv_key()),
                        strip(serde_json::to_value(v).unwrap()),
                    )
                });
            let countries = m
                .countries
                .values()
                .filter(|v| !v.reviews.is_empty())
                .map(|v| {
                    (
                        format!("country {}", v.kv_key()),
                        strip(serde_json::to_value(v).unwrap()),
                    )
                });
            reviews.chain(sessions).chain(countries).collect()
        }

        proptest! {
            #[test]
            fn a_retraction_gives_the_fold_of_the_log_without_the_retracted_event(
                specs in proptest::collection::vec((0usize..3, 0u8..7, 0u8..50), 1..30),
                at in any::<prop::sample::Index>(),
                pick in any::<prop::sample::Index>(),
            ) {
                let events: Vec<Envelope> = specs.iter().enumerate()
                    .map(|(i, (k, t, d))| make(i as u64 + 1, *k, *t, *d)).collect();
                let p = at.index(events.len()) + 1;
                // What may be retracted after the first p events: any side
                // event, or a review's latest lifecycle event in force.
                let before = fold(&events[..p]);
                let mut targets: Vec<&Envelope> = Vec::new();
                for view in before.reviews.values() {
                    let in_force = view.lifecycle_in_force();
                    for e in &events[..p] {
                        let side = e.event_type() == EventType::SideEventHeld && view.side_events.iter().any(|s| s.event_id == e.id);
                        if side || in_force.last() == Some(&e.id) {
                            targets.push(e);
                        }
                    }
                }
                prop_assume!(!targets.is_empty());
                let target = targets[pick.index(targets.len())].clone();
                let r = retraction(1000, &target);

                let with: Vec<Envelope> = events[..p].iter().cloned().chain([r]).chain(events[p..].iter().cloned()).collect();
                let without: Vec<Envelope> = events.iter().filter(|e| e.id != target.id).cloned().collect();
                let (a, b) = (fold(&with), fold(&without));
                prop_assert_eq!(comparable(&a), comparable(&b));

                // The history keeps the entry, marked with the (cut) reason.
                let view = &a.reviews[&target.review_key()];
                let entry = view.history.iter().find(|h| h.event_id == target.id).unwrap();
                let mark = entry.retracted.as_ref().unwrap();
                prop_assert_eq!(mark.seq, p as u64 + 1);
                prop_assert_eq!(mark.reason.chars().count(), REASON_CHARS);
                prop_assert!(view.history.iter().any(|h| h.event_type == EventType::EventRetracted));
            }
        }
    }

    /// The largest values intake lets through stay under the bound, with
    /// every event recorded by a party of the longest name allowed.
    mod sizes {
        use super::*;
        use crate::intake::parse_intake;
        use crate::limits::{MAX_SIDE_EVENT_BYTES, MAX_VALUE_BYTES};
        use crate::member_states::MEMBER_STATES;

        /// The longest time intake accepts, as text.
        const LATEST: &str = "9999-12-31T23:59:59.999999999Z";
        /// A character JSON writes as six bytes (`\u0001`).
        const WIDE: &str = "\u{1}";
        /// A party name as long as names may be: every event here is
        /// recorded by it, so `recorded_by` takes all the room a name can in
        /// each history and side-event entry.
        const LONGEST_PARTY: &str = "ngo-with-a-name-of-32-characters";

        #[test]
        fn the_recorder_has_the_longest_name_a_party_may_have() {
            assert_eq!(LONGEST_PARTY.len(), crate::party::MAX_PARTY_NAME);
            PartyName::parse(LONGEST_PARTY).unwrap();
        }

        /// Accepted by intake and recorded by [`LONGEST_PARTY`], or the test
        /// is wrong.
        fn accepted(n: u64, ty: &str, mut payload: serde_json::Value) -> Envelope {
            payload["occurred_at"] = LATEST.into();
            payload["source"] = WIDE.repeat(200).into();
            let bytes = serde_json::to_vec(&payload).unwrap();
            parse_intake(ty, &bytes)
                .unwrap_or_else(|e| panic!("{ty} refused: {e:?}"))
                .into_envelope(
                    Uuid::from_u128(u128::MAX - u128::from(n)),
                    Timestamp::parse_rfc3339(LATEST).unwrap(),
                    Some(PartyName::parse(LONGEST_PARTY).unwrap()),
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

        /// Bytes the side event `e` takes in its review value.
        fn side_bytes(e: &Envelope) -> usize {
            match &e.data {
                EventData::SideEventHeld(d) => {
                    SideEventView::of(e.id, e.recorded_by.as_ref(), d).encoded_len()
                }
                _ => 0,
            }
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

        /// The other worst case: 100 side events in force, 100 retracted
        /// (each marked with a reason), 100 lifecycle events, 100 retractions:
        /// the most history entries a review holds, each naming its recorder,
        /// beside side events that fill their byte limit.
        #[test]
        fn a_review_value_full_of_retractions_stays_under_256_kib() {
            let mut log = vec![accepted(
                0,
                "review_scheduled",
                json!({"country": "KZ", "session": 999,
                "scheduled_for": LATEST, "location": WIDE.repeat(200)}),
            )];
            for n in 1..=99 {
                log.push(accepted(
                    n,
                    "review_rescheduled",
                    json!({"country": "KZ", "session": 999,
                    "scheduled_for": LATEST}),
                ));
            }
            // Side events as large as 100 of them may be together: each
            // takes a hundredth of the byte limit in the value, to the byte
            // (its title fills what its other fields and its recorder leave).
            let side = |n: u64| {
                let titled = |title: String| {
                    let mut s = largest_side_event("KZ", 999, 0);
                    s["title"] = title.into();
                    s["topics"] = json!([]);
                    accepted(n, "side_event_held", s)
                };
                let room = MAX_SIDE_EVENT_BYTES / 100 - side_bytes(&titled("x".into()));
                titled(WIDE.repeat(room / 6) + &"x".repeat(1 + room % 6))
            };
            for n in 100..200 {
                log.push(side(n));
            }
            for n in 100..200 {
                let target = Uuid::from_u128(u128::MAX - u128::from(n));
                log.push(accepted(
                    1000 + n,
                    "event_retracted",
                    json!({"country": "KZ", "session": 999,
                    "retracts": target, "reason": WIDE.repeat(1000)}),
                ));
            }
            for n in 200..300 {
                log.push(side(n));
            }
            let m = fold_all(&log);
            let kz = &m.reviews[&ReviewKey::parse("KZ.999").unwrap()];
            let retracted = kz.history.iter().filter(|h| h.retracted.is_some()).count();
            assert_eq!(
                (kz.history.len(), retracted, kz.side_events.len()),
                (400, 100, 100)
            );
            let in_force: usize = kz.side_events.iter().map(SideEventView::encoded_len).sum();
            assert_eq!(in_force, MAX_SIDE_EVENT_BYTES / 100 * 100);
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
            (0u8..3, 1u8..3, 0u8..8, 0u8..40)
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
                EventType::OutcomeAdopted => json!({"adopted_on": when, "hrc_session": 58}),
                // Names an earlier event (of any review: some take nothing back).
                EventType::EventRetracted => {
                    json!({"retracts": Uuid::from_u128(u128::from(day) % u128::from(n.max(1)) + 1), "reason": "r"})
                }
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
