//! The oracle: what the stream says must be in the buckets and in
//! `UPR_NOTIFICATIONS`, computed with the domain's pure functions
//! (`ReadModels::fold`, `reminders::plan`, `ReviewState`), and the
//! comparisons with what JetStream holds. Every mismatch is recorded in the
//! [`Report`] rather than asserted at once, so one run shows every kind of
//! failure it found.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use bytes::Bytes;
use serde_json::{Value, json};
use upr_domain::{
    Envelope, EventData, EventType, PartyName, ReadModels, ReviewKey, ReviewState, Timestamp,
    parse_leads, plan,
};
use upr_nats::contract::{self, subjects};
use uuid::Uuid;

use crate::{
    LEADS,
    chaos::{Outage, Target},
    client::Ledger,
    observe::{StoredMsg, applied_by},
};

#[derive(Debug, Default)]
pub(crate) struct Report {
    pub(crate) lines: Vec<String>,
    pub(crate) failures: Vec<String>,
}

impl Report {
    pub(crate) fn line(&mut self, s: String) {
        println!("{s}");
        self.lines.push(s);
    }

    /// Records a failure unless `ok`; prints the first 100 of each kind
    /// (contract violations seen by the client, and the rest).
    pub(crate) fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            let w = what();
            let contract = w.starts_with("contract:");
            let same_kind = self
                .failures
                .iter()
                .filter(|f| f.starts_with("contract:") == contract)
                .count();
            if same_kind < 100 {
                println!("FAILED: {w}");
            }
            self.failures.push(w);
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Expected {
    pub(crate) reminder: upr_domain::Reminder,
    /// It must be in `UPR_NOTIFICATIONS`.
    pub(crate) must: bool,
    /// It must not be (the change was applied before it came due, or it is
    /// not due yet).
    pub(crate) never: bool,
    /// Why it is neither required nor forbidden, for the figures.
    pub(crate) ambiguous: Option<&'static str>,
    /// When the notifier had planned it, at the latest (ms since the epoch).
    pub(crate) planned_by: i64,
}

pub(crate) struct Timeline<'a> {
    pub(crate) floor: &'a [(i64, u64)],
    pub(crate) outages: &'a [Outage],
    pub(crate) run_start: i64,
    /// When the checks started: reminders due before must have been sent.
    pub(crate) run_end: i64,
    /// When the notifications were read: none due later can be there.
    pub(crate) read_at: i64,
}

impl Timeline<'_> {
    /// Whether the notifier (any replica) or nats-server was down, or coming
    /// back, at some point of `[from, to]`.
    fn disturbed(&self, from: i64, to: i64) -> bool {
        self.outages.iter().any(|o| {
            // After a nats-server restart the notifier's consumers need a few
            // seconds to be re-established; a notifier restart less.
            let settle = match o.target {
                Target::Nats(_) => 5000,
                Target::Notifier(_) => 2000,
                _ => return false,
            };
            o.down_ms <= to && o.up_ms + settle >= from
        })
    }
}

pub(crate) fn expected_reminders(
    events: &[(u64, Envelope)],
    t: &Timeline<'_>,
) -> BTreeMap<String, Expected> {
    let leads = parse_leads(LEADS).expect("leads");
    let mut by_review: BTreeMap<ReviewKey, Vec<(u64, &Envelope)>> = BTreeMap::new();
    for (seq, e) in events {
        by_review.entry(e.review_key()).or_default().push((*seq, e));
    }
    let lifecycle = |e: &Envelope| {
        !matches!(
            e.event_type(),
            EventType::SideEventHeld | EventType::ReportPublished
        )
    };
    let mut out = BTreeMap::new();
    for (key, history) in by_review {
        let mut state = ReviewState::default();
        for (i, (seq, e)) in history.iter().enumerate() {
            state.apply(e);
            let date = match &e.data {
                EventData::ReviewScheduled(d) => d.scheduled_for,
                EventData::ReviewRescheduled(d) => d.scheduled_for,
                _ => continue,
            };
            let location = state.location().unwrap_or("Geneva").to_owned();
            let next = history[i + 1..].iter().find(|(_, n)| lifecycle(n));
            for r in plan(
                key.country,
                key.session,
                date,
                &location,
                &leads,
                e.recorded_at,
            ) {
                let due = r.due_at.unix_millis();
                let review_at = r.scheduled_for.unix_millis();
                let planned_by = applied_by(t.floor, *seq);
                // When the notifier learnt of the next change, at the latest.
                let change_known = next.map(|(s, _)| applied_by(t.floor, *s));
                let change_recorded = next.map(|(_, n)| n.recorded_at.unix_millis());
                let never = due > t.read_at || change_known.is_some_and(|k| k < due);
                let ambiguous = if never {
                    None
                } else if due <= t.run_start || review_at + 1000 >= t.run_end {
                    Some("outside the run")
                } else if planned_by >= due - 300 {
                    Some("planned late (notifier behind the log)")
                } else if change_recorded.is_some_and(|c| c <= due + 2000) {
                    Some("changed around its due time")
                } else if t.disturbed(due - 1000, due + 2000) {
                    Some("notifier or nats-server down around its due time")
                } else {
                    None
                };
                let must = !never && ambiguous.is_none();
                let id = r.id.clone();
                let entry = Expected {
                    reminder: r,
                    must,
                    never,
                    ambiguous,
                    planned_by,
                };
                if let Some(before) = out.insert(id.clone(), entry) {
                    panic!("the workload planned reminder {id} twice: {before:?}");
                }
            }
        }
    }
    out
}

/// The event log: every acknowledged event exactly once, at the seq its
/// reply gave, with the right id and subject; nothing unacknowledged or
/// refused; and no answer the client found contradicting the contract.
/// Returns the acknowledged events that are missing.
pub(crate) fn check_log(
    report: &mut Report,
    events_raw: &[StoredMsg],
    envelopes: &[(u64, Envelope)],
    ledger: &Ledger,
) -> u64 {
    let mut seen: HashMap<Uuid, u64> = HashMap::new();
    for (m, (seq, e)) in events_raw.iter().zip(envelopes) {
        debug_assert_eq!(m.seq, *seq);
        report.check(
            m.msg_id.as_deref() == Some(e.id.to_string().as_str()),
            || {
                format!(
                    "seq {}: Nats-Msg-Id {:?} differs from the envelope id {}",
                    m.seq, m.msg_id, e.id
                )
            },
        );
        report.check(
            m.subject == subjects::event(e.country, e.session, e.event_type()),
            || {
                format!(
                    "seq {}: subject {} does not match its envelope",
                    m.seq, m.subject
                )
            },
        );
        if let Some(first) = seen.insert(e.id, m.seq) {
            report.check(false, || {
                format!("event {} stored twice: seq {first} and {}", e.id, m.seq)
            });
        }
        report.check(ledger.acked.contains_key(&e.id), || {
            format!(
                "seq {}: event {} is stored but was never acknowledged",
                m.seq, e.id
            )
        });
        report.check(!ledger.refused.contains(&e.id), || {
            format!("seq {}: event {} is stored but was refused", m.seq, e.id)
        });
    }
    let mut lost = 0;
    for (id, seq) in &ledger.acked {
        match seen.get(id) {
            Some(s) if s == seq => {}
            Some(s) => report.check(false, || {
                format!("event {id} acknowledged at seq {seq} but stored at {s}")
            }),
            None => {
                lost += 1;
                report.check(false, || {
                    format!("acknowledged event {id} (seq {seq}) is missing from UPR_EVENTS")
                });
            }
        }
    }
    for v in &ledger.violations {
        report.check(false, || format!("contract: {v}"));
    }
    lost
}

/// Every key and value the three buckets must hold: the pure fold of the
/// whole log, as the projection writes it.
pub(crate) fn expected_buckets(
    envelopes: &[(u64, Envelope)],
) -> [(&'static str, BTreeMap<String, Bytes>); 3] {
    let folded = ReadModels::fold(envelopes.iter().map(|(s, e)| (*s, e)));
    let expect_bucket = |pairs: Vec<(String, Vec<u8>)>| -> BTreeMap<String, Bytes> {
        pairs
            .into_iter()
            .map(|(k, v)| (k, Bytes::from(v)))
            .collect()
    };
    [
        (
            contract::REVIEWS_BUCKET,
            expect_bucket(
                folded
                    .reviews
                    .values()
                    .map(|v| (v.kv_key(), v.to_json()))
                    .collect(),
            ),
        ),
        (
            contract::SESSIONS_BUCKET,
            expect_bucket(
                folded
                    .sessions
                    .values()
                    .map(|v| (v.kv_key(), v.to_json()))
                    .collect(),
            ),
        ),
        (
            contract::COUNTRIES_BUCKET,
            expect_bucket(
                folded
                    .countries
                    .values()
                    .map(|v| (v.kv_key(), v.to_json()))
                    .collect(),
            ),
        ),
    ]
}

/// One bucket against the fold, byte for byte: no value differs, none is
/// missing or extra.
pub(crate) fn check_bucket(
    report: &mut Report,
    bucket: &str,
    expected: &BTreeMap<String, Bytes>,
    actual: &BTreeMap<String, Bytes>,
) {
    let keys: BTreeSet<&String> = expected.keys().chain(actual.keys()).collect();
    let mut differing = Vec::new();
    for k in keys {
        if expected.get(k) != actual.get(k) {
            differing.push(format!(
                "  {bucket} {k}:\n    expected {}\n    actual   {}",
                expected
                    .get(k)
                    .map_or("(none)".into(), |v| String::from_utf8_lossy(v).into_owned()),
                actual
                    .get(k)
                    .map_or("(none)".into(), |v| String::from_utf8_lossy(v).into_owned()),
            ));
        }
    }
    let n = differing.len();
    differing.truncate(5);
    report.check(n == 0, || {
        format!(
            "{n} values of {bucket} differ from the fold, e.g.:\n{}",
            differing.join("\n")
        )
    });
}

/// What `UPR_NOTIFICATIONS` held, sorted out by [`check_notifications`].
#[derive(Default)]
pub(crate) struct Notices {
    /// Reminders sent, by id.
    pub(crate) sent: HashMap<String, Value>,
    /// Change notices, by id, with how often each is there.
    pub(crate) changes: HashMap<String, u32>,
    /// `corrected` notices, by id: the `retracted_by` each says.
    pub(crate) retracted_by: HashMap<String, Value>,
    /// Reminders marked late.
    pub(crate) late: u32,
}

/// Every notification: JSON, with `Nats-Msg-Id` = its id; every reminder
/// sent once, planned by some (re)scheduling, not forbidden, with the
/// planned fields, sent within `[due_at, scheduled_for)` and marked late
/// exactly when it was.
pub(crate) fn check_notifications(
    report: &mut Report,
    notices: &[StoredMsg],
    expected: &BTreeMap<String, Expected>,
) -> Notices {
    let mut out = Notices::default();
    for m in notices {
        let v: Value = match serde_json::from_slice(&m.payload) {
            Ok(v) => v,
            Err(e) => {
                report.check(false, || {
                    format!("notification seq {} is not JSON: {e}", m.seq)
                });
                continue;
            }
        };
        let id = v["id"].as_str().unwrap_or_default().to_owned();
        report.check(m.msg_id.as_deref() == Some(id.as_str()), || {
            format!("notification {id}: Nats-Msg-Id is {:?}", m.msg_id)
        });
        if v["kind"] != "reminder" {
            if v["kind"] == "corrected" {
                out.retracted_by
                    .insert(id.clone(), v["retracted_by"].clone());
            }
            *out.changes.entry(id).or_default() += 1;
            continue;
        }
        if v["late"] == true {
            out.late += 1;
        }
        if out.sent.insert(id.clone(), v.clone()).is_some() {
            report.check(false, || format!("reminder {id} sent twice"));
        }
        let Some(exp) = expected.get(&id) else {
            report.check(false, || {
                format!("reminder {id} was never planned by any (re)scheduling: {v}")
            });
            continue;
        };
        report.check(!exp.never, || format!("reminder {id} must not have been sent (its review changed before it was due, or it is not due): {v}"));
        let r = &exp.reminder;
        let want = json!({"id": r.id, "kind": "reminder", "country": r.country, "session": r.session,
            "scheduled_for": r.scheduled_for, "location": r.location, "lead": r.lead, "due_at": r.due_at});
        for (k, w) in want.as_object().expect("object") {
            report.check(&v[k] == w, || {
                format!("reminder {id}: {k} is {}, expected {w}", v[k])
            });
        }
        let sent_at = v["sent_at"]
            .as_str()
            .and_then(|s| Timestamp::parse_rfc3339(s).ok());
        report.check(
            sent_at.is_some_and(|s| s >= r.due_at && s < r.scheduled_for),
            || {
                format!(
                    "reminder {id} sent at {:?}, outside [due_at, scheduled_for)",
                    v["sent_at"]
                )
            },
        );
        if let Some(s) = sent_at {
            let is_late = s.since(r.due_at) > upr_domain::LATE_AFTER;
            report.check(v["late"] == is_late, || {
                format!("reminder {id}: late is {} for sent_at {s}", v["late"])
            });
        }
    }
    out
}

/// The figures of [`check_required`]: required reminders, how many of them
/// are missing, and the ambiguous ones by reason as (count, sent).
pub(crate) struct Required {
    pub(crate) must: u32,
    pub(crate) missing: u32,
    pub(crate) ambiguous: BTreeMap<&'static str, (u32, u32)>,
}

/// Every required reminder was sent. A missing one is reported with the
/// outages around it and the notifiers' log lines that name it, which is
/// what a diagnosis needs first.
pub(crate) fn check_required(
    report: &mut Report,
    expected: &BTreeMap<String, Expected>,
    sent: &HashMap<String, Value>,
    outages: &[Outage],
    notifier_logs: &str,
) -> Required {
    let mut must = 0;
    let mut missing = 0;
    let mut ambiguous: BTreeMap<&str, (u32, u32)> = BTreeMap::new();
    for (id, exp) in expected {
        if exp.must {
            must += 1;
            if !sent.contains_key(id) {
                missing += 1;
                let r = &exp.reminder;
                let (due, date) = (r.due_at.unix_millis(), r.scheduled_for.unix_millis());
                let near: Vec<String> = outages
                    .iter()
                    .filter(|o| o.up_ms >= due - 10_000 && o.down_ms <= date + 10_000)
                    .map(|o| {
                        format!(
                            "{:?} down {:+} ms .. up {:+} ms from due",
                            o.target,
                            o.down_ms - due,
                            o.up_ms - due
                        )
                    })
                    .collect();
                let log: Vec<&str> = notifier_logs
                    .lines()
                    .filter(|l| l.contains(id.as_str()))
                    .collect();
                report.check(false, || {
                    format!(
                        "reminder {id} fell due well inside the run with the notifier up, but was never sent \
                         (due {}, review {}, planned {} ms before due; outages nearby: {near:?}; notifier log: {log:#?})",
                        r.due_at, r.scheduled_for, due - exp.planned_by,
                    )
                });
            }
        } else if let Some(why) = exp.ambiguous {
            let e = ambiguous.entry(why).or_default();
            e.0 += 1;
            e.1 += u32::from(sent.contains_key(id));
        }
    }
    Required {
        must,
        missing,
        ambiguous,
    }
}

/// The figures of [`check_change_notices`].
pub(crate) struct Changes {
    /// Change notices the log calls for.
    pub(crate) expected: u32,
    /// Retractions stored.
    pub(crate) corrections: u32,
    /// Retractions that took back a lifecycle event.
    pub(crate) corrected: u32,
}

/// Every reschedule, cancel and announced correction has exactly one change
/// notice, and there is none without such an event; a `corrected` notice's
/// `retracted_by` is the party that recorded the retraction. (`changes` is
/// consumed: what is left in it has no event.)
pub(crate) fn check_change_notices(
    report: &mut Report,
    envelopes: &[(u64, Envelope)],
    mut changes: HashMap<String, u32>,
    retracted_by: &HashMap<String, Value>,
) -> Changes {
    let (mut expected, mut corrections, mut corrected) = (0, 0, 0);
    // A correction is announced when it takes back what subscribers were
    // told of: a scheduling, a reschedule or a cancellation.
    let mut lifecycles: HashMap<ReviewKey, ReviewState> = HashMap::new();
    for (_, e) in envelopes {
        let taken_back = lifecycles.entry(e.review_key()).or_default().apply(e);
        if e.event_type() == EventType::EventRetracted {
            corrections += 1;
            corrected += u32::from(taken_back.is_some());
        }
        let kind = match (e.event_type(), taken_back.map(|t| t.event)) {
            (EventType::ReviewRescheduled, _) => "rescheduled",
            (EventType::ReviewCancelled, _) => "cancelled",
            (
                EventType::EventRetracted,
                Some(
                    EventType::ReviewScheduled
                    | EventType::ReviewRescheduled
                    | EventType::ReviewCancelled,
                ),
            ) => "corrected",
            _ => continue,
        };
        expected += 1;
        let id = format!("{}.{}.{kind}.{}", e.country, e.session, e.id);
        let n = changes.remove(&id).unwrap_or(0);
        report.check(n == 1, || {
            format!("change notice {id} is in UPR_NOTIFICATIONS {n} times")
        });
        if let Some(said) = retracted_by.get(&id) {
            let recorder = recorder(e);
            report.check(said.as_str() == recorder, || {
                format!("corrected notice {id} says retracted_by {said}, the retraction was recorded by {recorder:?}")
            });
        }
    }
    report.check(changes.is_empty(), || {
        format!(
            "change notices without an event: {:?}",
            changes.keys().take(5).collect::<Vec<_>>()
        )
    });
    Changes {
        expected,
        corrections,
        corrected,
    }
}

/// Who recorded `e`, as text.
fn recorder(e: &Envelope) -> Option<&str> {
    e.recorded_by.as_ref().map(PartyName::as_str)
}

/// The figures of [`check_parties`].
#[derive(Default)]
pub(crate) struct Attribution {
    /// Events in the log, by the party that recorded them.
    pub(crate) recorded: BTreeMap<String, u32>,
    /// Retractions in the log sent by the recorder of the event they name.
    pub(crate) retracted_by_recorder: u32,
    /// ... and by an editor that did not record it.
    pub(crate) retracted_by_editor: u32,
    /// History and side-event entries of the review values checked.
    pub(crate) entries: u32,
}

/// Who recorded what (contract V3.1) and who took what back (V3.2), in the
/// log and in what readers see:
/// - every stored event's `recorded_by` is the party whose request was
///   acknowledged (the ledger), never another and never `null`;
/// - every stored retraction that names an event of the log was sent by
///   that event's recorder or by one of `editors`;
/// - every `history` and `side_events` entry of every `upr_reviews` value
///   names the party that recorded that event.
///
/// (A refused retraction is not in the log: [`check_log`] checks that.)
pub(crate) fn check_parties(
    report: &mut Report,
    envelopes: &[(u64, Envelope)],
    ledger: &Ledger,
    editors: &[&str],
    reviews: &BTreeMap<String, Bytes>,
) -> Attribution {
    let mut out = Attribution::default();
    let by_id: HashMap<Uuid, &Envelope> = envelopes.iter().map(|(_, e)| (e.id, e)).collect();
    for (seq, e) in envelopes {
        let acknowledged_by = ledger.recorded_by.get(&e.id).copied();
        report.check(recorder(e) == acknowledged_by && recorder(e).is_some(), || {
            format!(
                "seq {seq}: event {} says recorded_by {:?}, but {acknowledged_by:?} recorded it",
                e.id,
                recorder(e)
            )
        });
        *out.recorded
            .entry(recorder(e).unwrap_or("(null)").to_owned())
            .or_default() += 1;
        let EventData::EventRetracted(r) = &e.data else {
            continue;
        };
        let Some(target) = by_id.get(&r.retracts) else {
            continue;
        };
        if recorder(target) == recorder(e) {
            out.retracted_by_recorder += 1;
        } else if recorder(e).is_some_and(|by| editors.contains(&by)) {
            out.retracted_by_editor += 1;
        } else {
            report.check(false, || {
                format!(
                    "seq {seq}: {:?} retracted event {}, recorded by {:?}, without being an editor",
                    recorder(e),
                    r.retracts,
                    recorder(target)
                )
            });
        }
    }
    for (key, value) in reviews {
        let Ok(v) = serde_json::from_slice::<Value>(value) else {
            report.check(false, || format!("upr_reviews {key} is not JSON"));
            continue;
        };
        let entries = v["history"]
            .as_array()
            .into_iter()
            .chain(v["side_events"].as_array())
            .flatten();
        for entry in entries {
            out.entries += 1;
            let id = entry["event_id"]
                .as_str()
                .and_then(|id| Uuid::parse_str(id).ok());
            let due = id.and_then(|id| ledger.recorded_by.get(&id).copied());
            report.check(
                due.is_some() && entry["recorded_by"].as_str() == due,
                || {
                    format!(
                        "upr_reviews {key}: the entry of {:?} says recorded_by {}, but {due:?} recorded it",
                        entry["event_id"], entry["recorded_by"]
                    )
                },
            );
        }
    }
    out
}
