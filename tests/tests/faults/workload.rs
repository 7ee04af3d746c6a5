//! The workload: what each review's next command is, and which party sends
//! it, given what the client knows of the review. The client keeps its own
//! model of every review's lifecycle and of who recorded each of its events,
//! so each answer can be judged as it arrives: a retraction by a party that
//! neither recorded the event nor is an editor must be refused with
//! `forbidden` (contract V3.2); otherwise a command the lifecycle allows
//! must be stored, one it forbids must be refused with `conflict`.
//!
//! Every choice comes from a seeded generator, so `UPR_FAULT_SEED` repeats
//! the workload's choices (not their timing against the processes).

use std::{
    collections::{HashMap, HashSet},
    sync::atomic::Ordering,
    time::Duration,
};

use rand::{RngExt, rngs::StdRng, seq::IndexedRandom};
use serde_json::{Value, json};
use upr_domain::{EventType, ReviewKey, ReviewState, ReviewStatus, evolve};
use uuid::Uuid;

use crate::{
    client::{Driver, Outcome, Party, get},
    now_ms, ts,
};

/// A UUID from the seeded generator, so event ids repeat with the seed too.
fn random_uuid(rng: &mut StdRng) -> Uuid {
    uuid::Builder::from_random_bytes(rng.random()).into_uuid()
}

/// One of `items`, never empty here (the literal lists below).
fn pick<'a, T>(rng: &mut StdRng, items: &'a [T]) -> &'a T {
    items.choose(rng).expect("a non-empty list")
}

/// The client's knowledge of one review, from its own acknowledged commands.
struct ReviewModel {
    key: ReviewKey,
    status: Option<ReviewStatus>,
    dates: HashSet<i64>,
    /// Lifecycle events in force, oldest first (what a retraction may take back).
    in_force: Vec<(Uuid, EventType)>,
    /// Every stored event, by id.
    events: HashMap<Uuid, Stored>,
}

/// What the client knows of one stored event.
#[derive(Debug, Clone, Copy)]
struct Stored {
    ty: EventType,
    retracted: bool,
    /// The party that recorded it (its index in [`Driver::parties`]).
    by: usize,
}

/// A command, the party that sends it, and the answer due.
struct Next {
    ty: EventType,
    payload: Value,
    party: usize,
    expect: Expect,
}

/// The answer a command must get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Stored,
    /// Refused with this code (`conflict` or `forbidden`).
    Refused(&'static str),
}

/// `Stored` when the lifecycle allows it, else a `conflict`.
fn lifecycle(allowed: bool) -> Expect {
    if allowed {
        Expect::Stored
    } else {
        Expect::Refused("conflict")
    }
}

/// Any party, for a command that is not a retraction: each records.
fn any_party(rng: &mut StdRng, parties: &[Party]) -> usize {
    rng.random_range(0..parties.len())
}

impl ReviewModel {
    fn new(key: ReviewKey) -> Self {
        Self {
            key,
            status: None,
            dates: HashSet::new(),
            in_force: Vec::new(),
            events: HashMap::new(),
        }
    }

    /// A correction of a long-lived review: mostly of the latest lifecycle
    /// event in force or of a side event, some of an event the rules do not
    /// let it take back (an older lifecycle event, one already retracted, an
    /// unknown id), which must be refused with `conflict`. Sent by the
    /// event's recorder, by an editor, or by a party that is neither, which
    /// must be refused with `forbidden` whatever the lifecycle says (the
    /// right to retract is checked first).
    fn retraction(&self, rng: &mut StdRng, parties: &[Party]) -> Next {
        let side: Vec<Uuid> = self
            .events
            .iter()
            .filter(|(_, e)| e.ty == EventType::SideEventHeld && !e.retracted)
            .map(|(id, _)| *id)
            .collect();
        let target = match rng.random_range(0..100) {
            0..45 => self.in_force.last().map(|e| e.0),
            45..80 => side.choose(rng).copied(),
            80..90 => self.in_force.first().map(|e| e.0),
            _ => None,
        }
        .unwrap_or_else(|| random_uuid(rng));
        let mut p = self.base(rng);
        p["retracts"] = target.to_string().into();
        p["reason"] = "recorded by mistake (fault test)".into();
        let state = ReviewState {
            lifecycle: self
                .in_force
                .iter()
                .map(|(id, ty)| upr_domain::LifecycleEntry {
                    id: *id,
                    event: *ty,
                    scheduled_for: None,
                    location: None,
                    recorded_at: None,
                })
                .collect(),
        };
        let known = self.events.get(&target).copied();
        let recorder = known.map(|e| e.by);
        let others: Vec<usize> = (0..parties.len())
            .filter(|&i| Some(i) != recorder && !parties[i].editor)
            .collect();
        let party = match rng.random_range(0..100) {
            0..45 => recorder,
            45..70 => parties.iter().position(|p| p.editor),
            _ => others.choose(rng).copied(),
        }
        .unwrap_or_else(|| any_party(rng, parties));
        // V3.2: only the recorder or an editor may take an event back.
        let forbidden = recorder.is_some_and(|r| r != party && !parties[party].editor);
        let expect = if forbidden {
            Expect::Refused("forbidden")
        } else {
            lifecycle(
                state
                    .decide_retraction(target, known.map(|e| (e.ty, e.retracted)), self.key)
                    .is_ok(),
            )
        };
        Next {
            ty: EventType::EventRetracted,
            payload: p,
            party,
            expect,
        }
    }

    fn base(&self, rng: &mut StdRng) -> Value {
        let country = self.key.country.as_str();
        let country = if rng.random_ratio(10, 100) {
            country.to_lowercase()
        } else {
            country.to_owned()
        };
        let mut p = json!({"country": country, "session": self.key.session.get()});
        if rng.random_ratio(10, 100) {
            p["source"] = "UPR Info".into();
        }
        if rng.random_ratio(10, 100) {
            p["occurred_at"] = ts(now_ms() - i64::from(rng.random_range(0..=86_400_000)))
                .to_string()
                .into();
        }
        p
    }

    /// A date not used before for this review, so reminder ids of different
    /// (re)schedulings never coincide.
    fn fresh_date(&mut self, mut ms: i64) -> String {
        while !self.dates.insert(ms) {
            ms += 1;
        }
        ts(ms).to_string()
    }

    /// A far-future (reminders not due during the run) or past (none planned) date.
    fn far_date(&mut self, rng: &mut StdRng) -> String {
        let day = 86_400_000i64;
        let ms = if rng.random_ratio(70, 100) {
            now_ms() + i64::from(rng.random_range(60..=1500)) * day
        } else {
            now_ms() - i64::from(rng.random_range(1..=1500)) * day
        };
        self.fresh_date(ms / 60_000 * 60_000)
    }

    fn command(
        &self,
        ty: EventType,
        rng: &mut StdRng,
        parties: &[Party],
        date: Option<String>,
    ) -> Next {
        let mut p = self.base(rng);
        let day = |rng: &mut StdRng| {
            ts(now_ms() - i64::from(rng.random_range(0..=400)) * 86_400_000).to_string()[..10]
                .to_owned()
        };
        match ty {
            EventType::ReviewScheduled => {
                p["scheduled_for"] = date.expect("a date").into();
                if rng.random_ratio(30, 100) {
                    p["location"] =
                        (*pick(rng, &["Geneva", "New York", "Palais des Nations, Room XX"])).into();
                }
            }
            EventType::ReviewRescheduled => {
                p["scheduled_for"] = date.expect("a date").into();
                if rng.random_ratio(50, 100) {
                    p["reason"] = "liquidity crisis".into();
                }
            }
            EventType::ReviewCancelled => {
                if rng.random_ratio(50, 100) {
                    p["reason"] = "the state withdrew".into();
                }
            }
            EventType::ReviewHeld => {
                if rng.random_ratio(50, 100) {
                    p["held_on"] = day(rng).into();
                }
                if rng.random_ratio(50, 100) {
                    p["recommendations_received"] = rng.random_range(0..300u64).into();
                }
            }
            EventType::SideEventHeld => {
                p["title"] = format!("Side event {}", rng.random_range(0..1_000_000)).into();
                p["held_on"] = day(rng).into();
                if rng.random_ratio(50, 100) {
                    p["speakers"] =
                        json!([{"name": "A. Rapporteur", "role": "UN"}, {"name": "B. Defender"}]);
                }
                if rng.random_ratio(50, 100) {
                    p["participating_states"] = rng.random_range(0..60u64).into();
                }
                if rng.random_ratio(30, 100) {
                    p["topics"] = json!(["civic space", "press freedom"]);
                }
            }
            EventType::ReportPublished => {
                p["published_on"] = day(rng).into();
                if rng.random_ratio(50, 100) {
                    p["document_symbol"] = format!(
                        "A/HRC/{}/{}",
                        rng.random_range(40..=60),
                        rng.random_range(1..=20)
                    )
                    .into();
                }
                if rng.random_ratio(50, 100) {
                    let supported = rng.random_range(0..200u64);
                    let noted = rng.random_range(0..100u64);
                    p["recommendations"] = json!({"total": supported + noted + rng.random_range(0..10), "supported": supported, "noted": noted});
                }
            }
            EventType::OutcomeAdopted => {
                p["adopted_on"] = day(rng).into();
                p["hrc_session"] = rng.random_range(40..=62u64).into();
            }
            // Corrections have their own end-to-end tests; this workload
            // keeps to commands whose outcome the status alone decides.
            EventType::EventRetracted => unreachable!("the fault workload does not retract"),
        }
        let allowed = upr_domain::decide(self.status, ty, self.key).is_ok();
        Next {
            ty,
            payload: p,
            party: any_party(rng, parties),
            expect: lifecycle(allowed),
        }
    }

    /// The next command of a long-lived review: mostly what the lifecycle
    /// allows, some conflicts on purpose.
    fn next_bulk(&mut self, rng: &mut StdRng, parties: &[Party]) -> Next {
        use EventType::*;
        if rng.random_ratio(6, 100) && !self.events.is_empty() {
            return self.retraction(rng, parties);
        }
        let roll = rng.random_range(0..100u64);
        let ty = match self.status {
            None | Some(ReviewStatus::Cancelled) => match roll {
                0..70 => ReviewScheduled,
                70..92 => SideEventHeld,
                _ => *pick(
                    rng,
                    &[
                        ReviewHeld,
                        ReviewRescheduled,
                        ReviewCancelled,
                        ReportPublished,
                    ],
                ),
            },
            Some(ReviewStatus::Scheduled) => match roll {
                0..22 => ReviewRescheduled,
                22..34 => ReviewCancelled,
                34..60 => ReviewHeld,
                60..96 => SideEventHeld,
                _ => *pick(rng, &[ReviewScheduled, ReportPublished]),
            },
            Some(ReviewStatus::Held) => match roll {
                0..50 => ReportPublished,
                50..58 => OutcomeAdopted,
                58..94 => SideEventHeld,
                _ => *pick(rng, &[ReviewCancelled, ReviewHeld, ReviewScheduled]),
            },
            Some(ReviewStatus::Reported) => match roll {
                0..20 => OutcomeAdopted,
                20..88 => SideEventHeld,
                _ => *pick(rng, &[ReportPublished, ReviewHeld, ReviewRescheduled]),
            },
            Some(ReviewStatus::Adopted) => match roll {
                0..90 => SideEventHeld,
                _ => *pick(rng, &[OutcomeAdopted, ReportPublished, ReviewScheduled]),
            },
        };
        let date = matches!(ty, ReviewScheduled | ReviewRescheduled).then(|| self.far_date(rng));
        self.command(ty, rng, parties, date)
    }

    fn accepted(&mut self, id: Uuid, next: &Next) {
        let (ty, payload) = (next.ty, &next.payload);
        match ty {
            EventType::EventRetracted => {
                let target = payload["retracts"]
                    .as_str()
                    .and_then(|t| Uuid::parse_str(t).ok());
                if self.in_force.last().map(|e| e.0) == target {
                    self.in_force.pop();
                }
                if let Some(entry) = target.and_then(|t| self.events.get_mut(&t)) {
                    entry.retracted = true;
                }
            }
            EventType::SideEventHeld => {}
            _ => self.in_force.push((id, ty)),
        }
        self.events.insert(
            id,
            Stored {
                ty,
                retracted: false,
                by: next.party,
            },
        );
        self.status = self.in_force.iter().fold(None, |s, e| evolve(s, e.1));
    }
}

/// Sends `next` and keeps the model in step; records a violation when the
/// answer is not the one the rights and the lifecycle call for. `true` when
/// stored.
async fn drive(driver: &Driver, model: &mut ReviewModel, next: Next, rng: &mut StdRng) -> bool {
    let id = random_uuid(rng);
    let ty = next.ty;
    let who = driver.parties[next.party].name;
    match driver.send(next.party, ty, id, next.payload.clone()).await {
        Outcome::Stored => {
            if next.expect != Expect::Stored {
                driver.violation(format!(
                    "{ty} {id} on {} from {who} accepted while {:?} was due (status {:?}): {}",
                    model.key, next.expect, model.status, next.payload
                ));
            }
            model.accepted(id, &next);
            true
        }
        Outcome::Refused { code } => {
            if !matches!(next.expect, Expect::Refused(due) if due == code) {
                driver.violation(format!(
                    "{ty} {id} on {} from {who} (status {:?}) refused with {code} while {:?} was due: {}",
                    model.key, model.status, next.expect, next.payload
                ));
            }
            false
        }
    }
}

/// One client working through its share of long-lived reviews until the
/// run has stored `target` events.
pub(crate) async fn bulk_client(
    driver: Driver,
    keys: Vec<ReviewKey>,
    mut rng: StdRng,
    target: u64,
) {
    let mut models: Vec<ReviewModel> = keys.into_iter().map(ReviewModel::new).collect();
    while get(&driver.counters.stored) < target {
        while driver.gate.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let i = rng.random_range(0..models.len());
        let next = models[i].next_bulk(&mut rng, &driver.parties);
        drive(&driver, &mut models[i], next, &mut rng).await;
    }
}

/// A review scheduled a few seconds ahead, so its reminders fall due during
/// the run, then maybe rescheduled, cancelled (and scheduled again) or held
/// at a random moment before or after a due time.
pub(crate) async fn near_review(driver: Driver, key: ReviewKey, mut rng: StdRng) {
    use EventType::*;
    let mut m = ReviewModel::new(key);
    let soon = |m: &mut ReviewModel, rng: &mut StdRng| {
        let ms = now_ms() + i64::from(rng.random_range(6000..=11_000));
        Some(m.fresh_date(ms))
    };
    let pause = |rng: &mut StdRng| Duration::from_millis(rng.random_range(100..=7000));
    let date = soon(&mut m, &mut rng);
    let next = m.command(ReviewScheduled, &mut rng, &driver.parties, date);
    drive(&driver, &mut m, next, &mut rng).await;
    let plan: &[EventType] = match rng.random_range(0..100) {
        0..35 => &[],
        35..45 => &[SideEventHeld],
        45..62 => &[ReviewRescheduled],
        62..72 => &[ReviewCancelled],
        72..80 => &[ReviewCancelled, ReviewScheduled],
        80..92 => &[ReviewHeld, ReportPublished],
        _ => &[ReviewRescheduled, ReviewRescheduled],
    };
    for &ty in plan {
        tokio::time::sleep(pause(&mut rng)).await;
        let date = if matches!(ty, ReviewScheduled | ReviewRescheduled) {
            soon(&mut m, &mut rng)
        } else {
            None
        };
        let next = m.command(ty, &mut rng, &driver.parties, date);
        drive(&driver, &mut m, next, &mut rng).await;
    }
}
