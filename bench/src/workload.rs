//! The benchmark workload: many reviews, each a lifecycle-valid sequence of
//! intake messages (schedule, maybe reschedules, mostly side events, then
//! held and reported, sometimes cancelled and scheduled again).
//!
//! Every event exists in two forms: the flat intake JSON a client sends to
//! `upr.ingest.<type>`, and the stored envelope ingest would write for it,
//! built with the domain's own `parse_intake` + `into_envelope`, so the raw
//! baselines publish exactly the bytes ingest stores.
//!
//! Deterministic for a seed (`rand`'s seeded `StdRng`), except the event
//! ids, which must be unique per run: a seed gives the same review plans for
//! a given version of this code and its `Cargo.lock` (rand may change its
//! streams between versions), which is what comparing two sides of one run
//! needs.

use bytes::Bytes;
use rand::{RngExt, SeedableRng, rngs::StdRng, seq::IndexedRandom};
use serde_json::{Value, json};
use upr_domain::{Country, EventType, MEMBER_STATES, ReviewKey, Session, Timestamp, parse_intake};
use upr_nats::contract::subjects;
use uuid::Uuid;

/// One element of `items`, which is never empty here (the word lists below).
fn pick<'a, T>(rng: &mut StdRng, items: &'a [T]) -> &'a T {
    items.choose(rng).expect("a non-empty list")
}

/// Moves `date` 1 to 20 days later and gives the fields of the
/// `review_rescheduled` event that says so.
fn reschedule(date: &mut Timestamp, rng: &mut StdRng) -> Value {
    *date = date
        .checked_add(time::Duration::days(i64::from(rng.random_range(1..=20))))
        .unwrap_or(*date);
    json!({"scheduled_for": date.to_string(), "reason": pick(rng, REASONS)})
}

/// Number of distinct review keys (every UN member state at every session).
pub const KEY_SPACE: u64 = MEMBER_STATES.len() as u64 * Session::MAX as u64;

/// A stride coprime with [`KEY_SPACE`] (= 3^3 * 37 * 193), so consecutive
/// reviews land on scattered countries and sessions instead of filling one
/// session after another.
const KEY_STRIDE: u64 = 100_003;

/// Hands out review keys, each once.
#[derive(Debug, Clone, Default)]
pub struct Keys {
    next: u64,
}

impl Keys {
    /// The next unused review key.
    ///
    /// # Panics
    /// After [`KEY_SPACE`] keys: a run never needs that many.
    pub fn next_key(&mut self) -> ReviewKey {
        assert!(
            self.next < KEY_SPACE,
            "all {KEY_SPACE} review keys are used"
        );
        let idx = (self.next * KEY_STRIDE) % KEY_SPACE;
        self.next += 1;
        let country = Country::parse(MEMBER_STATES[(idx % MEMBER_STATES.len() as u64) as usize].0)
            .expect("MEMBER_STATES holds valid codes");
        let session = Session::new(1 + idx / MEMBER_STATES.len() as u64).expect("1..=999");
        ReviewKey { country, session }
    }

    /// How many keys were handed out.
    pub fn used(&self) -> u64 {
        self.next
    }
}

/// One intake message of the workload.
#[derive(Debug, Clone)]
pub struct Event {
    /// The review it belongs to.
    pub key: ReviewKey,
    /// Its type.
    pub ty: EventType,
    /// The client-chosen `event_id`, also the `Nats-Msg-Id`.
    pub id: Uuid,
    /// The flat intake JSON.
    pub intake: Bytes,
}

impl Event {
    /// `upr.ingest.<type>`.
    pub fn ingest_subject(&self) -> String {
        subjects::ingest(self.ty)
    }

    /// `upr.events.<C>.<S>.<type>`.
    pub fn event_subject(&self) -> String {
        subjects::event(self.key.country, self.key.session, self.ty)
    }

    /// The envelope ingest stores for this message when it records it at
    /// `recorded_at`.
    pub fn envelope(&self, recorded_at: Timestamp) -> Bytes {
        let command = parse_intake(self.ty.as_str(), &self.intake)
            .expect("the workload generates only valid intake");
        Bytes::from(command.into_envelope(self.id, recorded_at, None).to_json())
    }
}

/// The events of one review, in the order they must be sent.
#[derive(Debug, Clone)]
pub struct ReviewPlan {
    /// The review.
    pub key: ReviewKey,
    /// Its events, lifecycle-valid in this order (any prefix is valid too).
    pub events: Vec<Event>,
}

const WORDS: &[&str] = &[
    "civic",
    "space",
    "women's",
    "rights",
    "freedom",
    "of",
    "expression",
    "minority",
    "languages",
    "justice",
    "torture",
    "prevention",
    "children",
    "education",
    "climate",
    "migrants",
    "labour",
    "indigenous",
    "peoples",
    "media",
    "assembly",
    "disability",
    "health",
    "housing",
    "digital",
];
const TOPICS: &[&str] = &[
    "civic space",
    "gender equality",
    "torture prevention",
    "freedom of expression",
    "minorities",
    "children's rights",
    "climate justice",
    "migrants",
    "business and human rights",
    "disability",
];
const NAMES: &[&str] = &[
    "Aigerim Nurlanovna",
    "Jean Dupont",
    "Maria Gonzalez",
    "Kwame Mensah",
    "Li Wei",
    "Olga Petrova",
    "Fatima Al-Sayed",
    "Sipho Ndlovu",
    "Ana Silva",
    "Hiroshi Tanaka",
    "Amina Yusuf",
];
const ROLES: &[&str] = &[
    "Permanent Mission",
    "NGO coalition",
    "UN Special Rapporteur",
    "National Human Rights Institution",
    "Civil society",
    "Academic",
];
const REASONS: &[&str] = &[
    "liquidity crisis",
    "request of the State",
    "scheduling conflict",
];
const SOURCES: &[&str] = &["UPR Info", "OHCHR extranet", "mission note", "NGO monitor"];

/// Builds review plans.
#[derive(Debug)]
pub struct Generator {
    rng: StdRng,
    /// How many side events a review gets.
    side_events: std::ops::RangeInclusive<u64>,
}

/// Side events per review of the usual plans.
const SIDE_EVENTS: std::ops::RangeInclusive<u64> = 3..=10;
/// Side events per review of denser plans: the 192,807 review keys give
/// about 1.8M events with [`SIDE_EVENTS`]; longer streams need more events
/// per review.
const DENSE_SIDE_EVENTS: std::ops::RangeInclusive<u64> = 8..=40;

impl Generator {
    /// A generator whose plan shapes depend only on `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            rng: StdRng::seed_from_u64(seed),
            side_events: SIDE_EVENTS,
        }
    }

    /// From now on, reviews get 8 to 40 side events instead of 3 to 10.
    pub fn denser(&mut self) {
        self.side_events = DENSE_SIDE_EVENTS;
    }

    /// The review date of a session: session 48 was January 2025, three a year.
    fn session_date(session: Session) -> Timestamp {
        let base = Timestamp::parse_rfc3339("2025-01-20T08:30:00Z").expect("valid");
        let days = (i64::from(session.get()) - 48) * 121;
        base.checked_add(time::Duration::days(days)).unwrap_or(base)
    }

    /// A review's events: scheduled (for `scheduled_for`, or the session's
    /// usual dates), 0-2 reschedules, 3-10 side events, then usually held and
    /// reported; a few are cancelled and some of those scheduled again.
    #[expect(
        clippy::too_many_lines,
        reason = "one review's story, event by event, in the order the generator decides it"
    )]
    pub fn review(&mut self, key: ReviewKey, scheduled_for: Option<Timestamp>) -> ReviewPlan {
        let rng = &mut self.rng;
        let day0 = scheduled_for.unwrap_or_else(|| {
            let d = Self::session_date(key.session);
            d.checked_add(time::Duration::days(i64::from(rng.random_range(0..=11))))
                .unwrap_or(d)
        });
        let mut date = day0;
        let common = |rng: &mut StdRng, id: Uuid| {
            let mut m = serde_json::Map::new();
            m.insert("country".into(), json!(key.country.as_str()));
            m.insert("session".into(), json!(key.session.get()));
            m.insert("event_id".into(), json!(id.to_string()));
            if rng.random_bool(0.7) {
                m.insert("source".into(), json!(pick(rng, SOURCES)));
            }
            m
        };
        let mut events = Vec::with_capacity(12);
        let mut push = |ty: EventType, fields: Value, rng: &mut StdRng| {
            let id = Uuid::new_v4();
            let mut m = common(rng, id);
            if let Value::Object(f) = fields {
                m.extend(f);
            }
            events.push(Event {
                key,
                ty,
                id,
                intake: Bytes::from(serde_json::to_vec(&Value::Object(m)).expect("json")),
            });
        };
        push(
            EventType::ReviewScheduled,
            json!({"scheduled_for": date.to_string(), "location": "Geneva"}),
            rng,
        );
        let side_events = rng.random_range(self.side_events.clone());
        let reschedules = if rng.random_bool(0.1) {
            2
        } else {
            u64::from(rng.random_bool(0.35))
        };
        let mut r_left = reschedules;
        for i in 0..side_events {
            // Reschedules happen early, between the first side events.
            if r_left > 0 && i >= reschedules - r_left && rng.random_bool(0.5) {
                r_left -= 1;
                let fields = reschedule(&mut date, rng);
                push(EventType::ReviewRescheduled, fields, rng);
            }
            let title: Vec<&str> = (0..rng.random_range(4..=9))
                .map(|_| *pick(rng, WORDS))
                .collect();
            let speakers: Vec<Value> = (0..rng.random_range(1..=3))
                .map(|_| json!({"name": pick(rng, NAMES), "role": pick(rng, ROLES)}))
                .collect();
            let topics: Vec<&str> = (0..rng.random_range(1..=3))
                .map(|_| *pick(rng, TOPICS))
                .collect();
            let held_on = date
                .checked_sub(time::Duration::days(i64::from(rng.random_range(0..=30))))
                .unwrap_or(date);
            push(
                EventType::SideEventHeld,
                json!({
                    "title": format!("{} ({})", title.join(" "), key.country.name()),
                    "held_on": held_on.to_string(),
                    "speakers": speakers,
                    "participating_states": rng.random_range(0..=60),
                    "topics": topics,
                }),
                rng,
            );
        }
        for _ in 0..r_left {
            let fields = reschedule(&mut date, rng);
            push(EventType::ReviewRescheduled, fields, rng);
        }
        if rng.random_bool(0.05) {
            push(
                EventType::ReviewCancelled,
                json!({"reason": pick(rng, REASONS)}),
                rng,
            );
            if rng.random_bool(0.5) {
                date = date.checked_add(time::Duration::days(121)).unwrap_or(date);
                push(
                    EventType::ReviewScheduled,
                    json!({"scheduled_for": date.to_string(), "location": "Geneva"}),
                    rng,
                );
            }
        } else if rng.random_bool(0.6) {
            push(
                EventType::ReviewHeld,
                json!({"held_on": date.to_string(), "recommendations_received": rng.random_range(80..=320)}),
                rng,
            );
            if rng.random_bool(0.7) {
                let total = rng.random_range(80..=320);
                let supported = rng.random_range(0..=total);
                let noted = total - supported;
                let published = date
                    .checked_add(time::Duration::days(i64::from(rng.random_range(60..=120))))
                    .unwrap_or(date);
                push(
                    EventType::ReportPublished,
                    json!({
                        "published_on": published.to_string(),
                        "document_symbol": format!("A/HRC/{}/{}", 50 + key.session.get() / 3, rng.random_range(1..=17)),
                        "recommendations": {"total": total, "supported": supported, "noted": noted},
                    }),
                    rng,
                );
            }
        }
        ReviewPlan { key, events }
    }

    /// Plans with `events` events in total (the last plan cut short, which
    /// keeps it lifecycle-valid), on fresh keys from `keys`.
    pub fn plans(&mut self, keys: &mut Keys, events: usize) -> Vec<ReviewPlan> {
        let mut plans = Vec::new();
        let mut left = events;
        while left > 0 {
            let mut plan = self.review(keys.next_key(), None);
            plan.events.truncate(left);
            left -= plan.events.len();
            plans.push(plan);
        }
        plans
    }
}

/// Total events in `plans`.
pub fn count(plans: &[ReviewPlan]) -> usize {
    plans.iter().map(|p| p.events.len()).sum()
}

/// An endless-looking but bounded stream of events in log order: reviews
/// interleaved (a window of active reviews, one picked at random each
/// time), each review's events in lifecycle order. Builds reviews lazily, so
/// a million events never sit in memory at once.
pub struct Interleaved {
    generator: Generator,
    keys: Keys,
    active: Vec<(ReviewPlan, usize)>,
    window: usize,
    left: usize,
    /// Events per type produced so far, in [`EventType::ALL`] order.
    pub by_type: [usize; 6],
    /// Reviews that received at least one event.
    reviews: usize,
}

impl Interleaved {
    /// `events` events over reviews from `keys`, `window` reviews active at once.
    pub fn new(generator: Generator, keys: Keys, events: usize, window: usize) -> Self {
        Self {
            generator,
            keys,
            active: Vec::with_capacity(window),
            window: window.max(1),
            left: events,
            by_type: [0; 6],
            reviews: 0,
        }
    }

    /// Reviews started from now on are denser ([`Generator::denser`]).
    pub fn denser(&mut self) {
        self.generator.denser();
    }

    /// Distinct reviews that received at least one event.
    pub fn reviews(&self) -> usize {
        self.reviews
    }
}

impl Iterator for Interleaved {
    type Item = Event;

    fn next(&mut self) -> Option<Event> {
        if self.left == 0 {
            return None;
        }
        while self.active.len() < self.window {
            let plan = self.generator.review(self.keys.next_key(), None);
            self.active.push((plan, 0));
        }
        let i = self.generator.rng.random_range(0..self.active.len());
        let (plan, next) = &mut self.active[i];
        let event = plan.events[*next].clone();
        if *next == 0 {
            self.reviews += 1;
        }
        *next += 1;
        if *next == plan.events.len() {
            self.active.swap_remove(i);
        }
        self.left -= 1;
        let t = EventType::ALL
            .iter()
            .position(|t| *t == event.ty)
            .unwrap_or(0);
        self.by_type[t] += 1;
        Some(event)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use upr_domain::{ReviewStatus, decide, evolve};

    use super::*;

    #[test]
    fn keys_are_unique_and_scattered() {
        let mut keys = Keys::default();
        let first: Vec<_> = (0..20_000).map(|_| keys.next_key()).collect();
        assert_eq!(first.iter().collect::<HashSet<_>>().len(), first.len());
        let sessions: HashSet<_> = first[..100].iter().map(|k| k.session).collect();
        assert!(sessions.len() > 50);
    }

    #[test]
    fn every_plan_is_valid_intake_and_lifecycle_valid() {
        let mut g = Generator::new(7);
        let mut keys = Keys::default();
        let plans = g.plans(&mut keys, 5_000);
        assert_eq!(count(&plans), 5_000);
        let now = Timestamp::parse_rfc3339("2025-01-01T00:00:00Z").unwrap();
        let mut types = HashSet::new();
        for plan in &plans {
            let mut status: Option<ReviewStatus> = None;
            for e in &plan.events {
                let command = parse_intake(e.ty.as_str(), &e.intake).unwrap();
                assert_eq!(command.review_key(), plan.key);
                decide(status, e.ty, plan.key).unwrap();
                status = evolve(status, e.ty);
                let env = e.envelope(now);
                upr_domain::Envelope::from_json(&env).unwrap();
                types.insert(e.ty);
            }
        }
        assert_eq!(types.len(), 6, "all event types occur");
    }

    /// The raw and ingest passes of a comparison rely on this.
    #[test]
    fn a_seed_gives_the_same_plans_but_fresh_event_ids() {
        let shape = |seed| {
            let plans = Generator::new(seed).plans(&mut Keys::default(), 500);
            let ids: Vec<Uuid> = plans.iter().flat_map(|p| &p.events).map(|e| e.id).collect();
            let bodies: Vec<(ReviewKey, EventType, Value)> = plans
                .iter()
                .flat_map(|p| &p.events)
                .map(|e| {
                    let mut v: Value = serde_json::from_slice(&e.intake).unwrap();
                    v.as_object_mut().unwrap().remove("event_id");
                    (e.key, e.ty, v)
                })
                .collect();
            (bodies, ids)
        };
        let (a, a_ids) = shape(42);
        let (b, b_ids) = shape(42);
        let (c, _) = shape(43);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(a_ids.iter().zip(&b_ids).all(|(x, y)| x != y));
    }

    #[test]
    fn interleaving_keeps_each_review_in_order() {
        let it = Interleaved::new(Generator::new(1), Keys::default(), 3_000, 50);
        let mut status: std::collections::HashMap<ReviewKey, Option<ReviewStatus>> =
            std::collections::HashMap::default();
        let mut n = 0;
        for e in it {
            let s = status.entry(e.key).or_default();
            decide(*s, e.ty, e.key).unwrap();
            *s = evolve(*s, e.ty);
            n += 1;
        }
        assert_eq!(n, 3_000);
    }
}
