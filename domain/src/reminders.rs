//! Reminder planning: lead times, which reminders a scheduled review gets,
//! whether one is on time, late or too late, and the notice payloads.
//!
//! A reminder's id contains the review, the lead and the scheduled date, so
//! the same reminder always has the same id (the `Nats-Msg-Id` that makes it
//! exactly-once) and a rescheduled review gets new ids for its new date.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::country::Country;
use super::event::{Envelope, EventData, EventType, Session};
use super::lifecycle::{LifecycleEntry, ReviewState, ReviewStatus};
use super::party::PartyName;
use super::span::{SpanError, parse_span};
use super::time::Timestamp;

/// How long before the review a reminder is due, e.g. `7d`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Lead {
    secs: u64,
    label: String,
}

/// The longest lead accepted: ten years, far beyond any UPR planning and
/// safely inside timestamp arithmetic.
pub const MAX_LEAD_SECS: u64 = 3650 * 86_400;

/// Why `UPR_REMINDER_LEADS` could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeadError {
    /// Nothing but separators or blanks.
    #[error("no reminder leads given; expected a list like 30d,7d,1d")]
    Empty,
    /// An empty item between commas (1-based position).
    #[error("reminder lead {0} is empty; expected a list like 30d,7d,1d")]
    EmptyItem(usize),
    /// An item that is not `<positive integer><unit>`.
    #[error("reminder lead {item:?} {reason}")]
    Invalid {
        /// The item as given.
        item: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Two items of the same length of time (`7d` and `1w`).
    #[error("reminder lead {item:?} repeats {same_as:?}")]
    Duplicate {
        /// The later item.
        item: String,
        /// The earlier item with the same duration.
        same_as: String,
    },
}

impl Lead {
    /// Parses one item like `7d` (units `s`, `m`, `h`, `d`, `w`, lower case
    /// so `m` can only mean minutes). The label is normalised (`07d` -> `7d`).
    ///
    /// # Errors
    /// [`LeadError::Invalid`] for anything else, zero, or more than ten years.
    pub fn parse(item: &str) -> Result<Self, LeadError> {
        let invalid = |reason| LeadError::Invalid {
            item: item.to_owned(),
            reason,
        };
        let span = parse_span(item).map_err(|e| {
            invalid(match e {
                SpanError::Empty => "is empty",
                SpanError::UnknownUnit => "must end with a unit: s, m, h, d or w",
                SpanError::NotANumber => "must be a positive integer followed by a unit, like 7d",
                SpanError::NumberTooLong => "is too long",
                SpanError::TooManySeconds => "is longer than 3650d",
                SpanError::Zero => "must be positive",
            })
        })?;
        if span.secs > MAX_LEAD_SECS {
            return Err(invalid("is longer than 3650d"));
        }
        Ok(Self {
            secs: span.secs,
            label: format!("{}{}", span.count, span.unit),
        })
    }

    /// The lead in seconds (always > 0).
    pub fn secs(&self) -> u64 {
        self.secs
    }

    /// The normalised label used in reminder ids and notices, e.g. `7d`.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The lead as a duration.
    #[allow(
        clippy::cast_possible_wrap,
        reason = "secs <= MAX_LEAD_SECS, which fits i64"
    )]
    pub fn duration(&self) -> time::Duration {
        time::Duration::seconds(self.secs as i64)
    }
}

impl fmt::Display for Lead {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.label)
    }
}

/// Parses `UPR_REMINDER_LEADS` (`30d,7d,1d`): comma-separated, blanks
/// around items ignored, sorted longest first (so reminders come out in the
/// order they fall due).
///
/// # Errors
/// A [`LeadError`] for an empty list or item, a malformed item, or two items
/// of the same length.
pub fn parse_leads(spec: &str) -> Result<Vec<Lead>, LeadError> {
    if spec.trim().is_empty() {
        return Err(LeadError::Empty);
    }
    let mut leads: Vec<Lead> = Vec::new();
    for (i, item) in spec.split(',').map(str::trim).enumerate() {
        if item.is_empty() {
            return Err(LeadError::EmptyItem(i + 1));
        }
        let lead = Lead::parse(item)?;
        if let Some(same) = leads.iter().find(|l| l.secs == lead.secs) {
            return Err(LeadError::Duplicate {
                item: item.to_owned(),
                same_as: same.label.clone(),
            });
        }
        leads.push(lead);
    }
    leads.sort_by_key(|l| std::cmp::Reverse(l.secs));
    Ok(leads)
}

/// One planned reminder. Serializable, so a timer can carry it until it
/// comes due.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reminder {
    /// `KZ.48.7d.2025-01-23T08:30:00Z`: stable, so it is its own `Nats-Msg-Id`.
    pub id: String,
    /// The state under review.
    pub country: Country,
    /// The Working Group session.
    pub session: Session,
    /// The review date this reminder is for.
    pub scheduled_for: Timestamp,
    /// Where the review takes place.
    pub location: String,
    /// The lead label, e.g. `7d`.
    pub lead: String,
    /// `scheduled_for - lead`.
    pub due_at: Timestamp,
}

/// How long before `due_at` a reminder's timer fires. The JetStream message
/// scheduler runs at most every 250 ms after its previous run *ended*
/// (nats-server 2.15, `scheduler.go` and `runMsgScheduling`), and a run
/// stores every fired message while holding the stream's lock, so a timer
/// fires later than asked by the floor plus the runs' length: measured
/// (the notifier's micro STATS `reminder_timing.fired_late_ms`) p50 173 ms,
/// p99 484 ms on a loaded 2-core machine, which a 300 ms margin did not
/// cover. Set 2 s early, it reaches the sender before `due_at` even so, and
/// the sender holds the reminder until `due_at` ([`Reminder::wait`]); the
/// cost is only timers held in memory for longer.
pub const TIMER_EARLY: time::Duration = time::Duration::seconds(2);

/// How long after `due_at` a sent reminder counts as late: the contract
/// promises delivery within one second of the due time.
pub const LATE_AFTER: time::Duration = time::Duration::SECOND;

/// What to do with a reminder at a given moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Firing {
    /// Send it with `late: false`.
    OnTime,
    /// Send it with `late: true` (it came due while the notifier was down).
    Late,
    /// Drop it: the review date has arrived, a reminder is pointless now.
    Never,
}

/// The reminders for a review scheduled (or rescheduled) at `scheduled_at`
/// for `scheduled_for`, one per lead, skipping those already due at
/// `scheduled_at`. Pass the scheduling event's `recorded_at`: that is when
/// the system learnt the date. Leads that reach before year 0000 are skipped.
pub fn plan(
    country: Country,
    session: Session,
    scheduled_for: Timestamp,
    location: &str,
    leads: &[Lead],
    scheduled_at: Timestamp,
) -> Vec<Reminder> {
    leads
        .iter()
        .filter_map(|lead| {
            let due_at = scheduled_for.checked_sub(lead.duration())?;
            (due_at > scheduled_at).then(|| Reminder {
                id: format!("{country}.{session}.{}.{scheduled_for}", lead.label),
                country,
                session,
                scheduled_for,
                location: location.to_owned(),
                lead: lead.label.clone(),
                due_at,
            })
        })
        .collect()
}

/// Whether `reminder`, being sent at `now`, is on time, late or pointless.
///
/// Callers send only at or after `due_at`; a `now` before it is treated as
/// on time (and flagged in debug builds) rather than invented into a fourth
/// case.
pub fn classify(reminder: &Reminder, now: Timestamp) -> Firing {
    debug_assert!(
        now >= reminder.due_at,
        "reminder {} classified before it is due",
        reminder.id
    );
    if now >= reminder.scheduled_for {
        Firing::Never
    } else if reminder
        .due_at
        .checked_add(LATE_AFTER)
        .is_none_or(|limit| now > limit)
    {
        Firing::Late
    } else {
        Firing::OnTime
    }
}

/// The `kind` of a notification, also the subject token
/// (`upr.notify.<kind>.<COUNTRY>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum NoticeKind {
    /// A review is coming up.
    Reminder,
    /// A review moved.
    Rescheduled,
    /// A review was called off.
    Cancelled,
    /// A retraction changed a date or status subscribers were told of.
    Corrected,
}

impl NoticeKind {
    /// The wire name, e.g. `"reminder"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Reminder => "reminder",
            Self::Rescheduled => "rescheduled",
            Self::Cancelled => "cancelled",
            Self::Corrected => "corrected",
        }
    }
}

/// The fields every notification starts with: which notice, of what kind,
/// about which review (with the state's name and the session's cycle).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct NoticeHead {
    /// Stable, so it is also the notice's `Nats-Msg-Id`.
    pub id: String,
    /// What the notice is about; also the subject token.
    pub kind: NoticeKind,
    /// The state under review.
    pub country: Country,
    /// Its UN short name.
    pub country_name: String,
    /// The Working Group session.
    pub session: Session,
    /// Its UPR cycle.
    pub cycle: u16,
}

impl NoticeHead {
    /// The head of a `kind` notice about `country` at `session`, with `id`.
    pub fn new(kind: NoticeKind, country: Country, session: Session, id: String) -> Self {
        Self {
            id,
            kind,
            country,
            country_name: country.un_name().to_owned(),
            session,
            cycle: session.cycle(),
        }
    }
}

/// The payload on `upr.notify.reminder.<COUNTRY>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ReminderNotice {
    /// Id, kind (`reminder`, `rescheduled`, ...), review, name and cycle.
    #[serde(flatten)]
    pub head: NoticeHead,
    /// The review date.
    pub scheduled_for: Timestamp,
    /// Where.
    pub location: String,
    /// The lead label.
    pub lead: String,
    /// When it was due.
    pub due_at: Timestamp,
    /// When it was sent.
    pub sent_at: Timestamp,
    /// Whether it was sent later than one second after `due_at`.
    pub late: bool,
}

impl Reminder {
    /// When its timer should fire: [`TIMER_EARLY`] before `due_at`.
    pub fn timer_at(&self) -> Timestamp {
        self.due_at.checked_sub(TIMER_EARLY).unwrap_or(self.due_at)
    }

    /// How long to hold the reminder at `now` before sending it (zero once
    /// due): a reminder is never sent before `due_at`.
    pub fn wait(&self, now: Timestamp) -> std::time::Duration {
        let ms = self.due_at.since(now).whole_milliseconds();
        std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0))
    }

    /// The notice to publish for this reminder.
    pub fn notice(&self, sent_at: Timestamp, late: bool) -> ReminderNotice {
        ReminderNotice {
            head: NoticeHead::new(
                NoticeKind::Reminder,
                self.country,
                self.session,
                self.id.clone(),
            ),
            scheduled_for: self.scheduled_for,
            location: self.location.clone(),
            lead: self.lead.clone(),
            due_at: self.due_at,
            sent_at,
            late,
        }
    }
}

impl ReminderNotice {
    /// The payload bytes.
    ///
    /// # Panics
    /// Never: a notice holds only strings, integers and structs, which serialize.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("notices hold only strings, integers and structs")
    }
}

/// The payload on `upr.notify.rescheduled.<COUNTRY>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct RescheduledNotice {
    /// Id, kind (`reminder`, `rescheduled`, ...), review, name and cycle.
    #[serde(flatten)]
    pub head: NoticeHead,
    /// The date before the change (`null` if the notifier never saw it).
    pub old_scheduled_for: Option<Timestamp>,
    /// The new date.
    pub scheduled_for: Timestamp,
    /// Why, if given.
    pub reason: Option<String>,
    /// The `review_rescheduled` event.
    pub event_id: Uuid,
    /// When it was sent.
    pub sent_at: Timestamp,
}

/// The payload on `upr.notify.cancelled.<COUNTRY>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CancelledNotice {
    /// Id, kind (`reminder`, `rescheduled`, ...), review, name and cycle.
    #[serde(flatten)]
    pub head: NoticeHead,
    /// The date that was cancelled (`null` if the notifier never saw it).
    pub scheduled_for: Option<Timestamp>,
    /// Why, if given.
    pub reason: Option<String>,
    /// The `review_cancelled` event.
    pub event_id: Uuid,
    /// When it was sent.
    pub sent_at: Timestamp,
}

/// What a correction took back, in a [`CorrectedNotice`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Retracted {
    /// The retracted event.
    pub event_id: Uuid,
    /// Its type.
    #[serde(rename = "type")]
    pub event_type: EventType,
}

/// The payload on `upr.notify.corrected.<COUNTRY>`: a retraction took back
/// a scheduling, a reschedule or a cancellation that subscribers were told of
/// (by reminders or notices); the review now stands as `status` on
/// `scheduled_for`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CorrectedNotice {
    /// Id, kind (`reminder`, `rescheduled`, ...), review, name and cycle.
    #[serde(flatten)]
    pub head: NoticeHead,
    /// What was taken back.
    pub retracted: Retracted,
    /// Why.
    pub reason: String,
    /// Who retracted it (contract v3): the party that recorded the
    /// `event_retracted` event; `null` for a retraction of schema 1 or 2, or
    /// without users.
    pub retracted_by: Option<PartyName>,
    /// The review's status now (`null`: no lifecycle event in force).
    pub status: Option<ReviewStatus>,
    /// Its date now.
    pub scheduled_for: Option<Timestamp>,
    /// Its date before the correction.
    pub old_scheduled_for: Option<Timestamp>,
    /// The `event_retracted` event.
    pub event_id: Uuid,
    /// When it was sent.
    pub sent_at: Timestamp,
}

/// A notice about a change of date or status; its id contains the event
/// id, so re-processing the event publishes the same message id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ChangeNotice {
    /// See [`RescheduledNotice`].
    Rescheduled(RescheduledNotice),
    /// See [`CancelledNotice`].
    Cancelled(CancelledNotice),
    /// See [`CorrectedNotice`].
    Corrected(CorrectedNotice),
}

impl ChangeNotice {
    /// The notice for a `review_rescheduled` or `review_cancelled` event
    /// (`None` for other types). `previous_scheduled_for` is the review's
    /// date before this event.
    pub fn for_event(
        event: &Envelope,
        previous_scheduled_for: Option<Timestamp>,
        sent_at: Timestamp,
    ) -> Option<Self> {
        let (country, session, event_id) = (event.country, event.session, event.id);
        let head = |kind: NoticeKind| {
            let id = format!("{country}.{session}.{}.{event_id}", kind.as_str());
            NoticeHead::new(kind, country, session, id)
        };
        match &event.data {
            EventData::ReviewRescheduled(d) => Some(Self::Rescheduled(RescheduledNotice {
                head: head(NoticeKind::Rescheduled),
                old_scheduled_for: previous_scheduled_for,
                scheduled_for: d.scheduled_for,
                reason: d.reason.clone(),
                event_id,
                sent_at,
            })),
            EventData::ReviewCancelled(d) => Some(Self::Cancelled(CancelledNotice {
                head: head(NoticeKind::Cancelled),
                scheduled_for: previous_scheduled_for,
                reason: d.reason.clone(),
                event_id,
                sent_at,
            })),
            _ => None,
        }
    }

    /// The notice for a retraction that took back `taken_back`, when
    /// subscribers were told of what it set: a scheduling or reschedule (by
    /// reminders) or a reschedule or cancellation (by notices). `after` is
    /// the review's lifecycle once the event is taken back; `None` for other
    /// types, whose effects were never announced.
    pub fn corrected(
        retraction: &Envelope,
        taken_back: &LifecycleEntry,
        before: &ReviewState,
        after: &ReviewState,
        sent_at: Timestamp,
    ) -> Option<Self> {
        let EventData::EventRetracted(r) = &retraction.data else {
            return None;
        };
        let announced = matches!(
            taken_back.event,
            EventType::ReviewScheduled | EventType::ReviewRescheduled | EventType::ReviewCancelled
        );
        if !announced {
            return None;
        }
        let (country, session, event_id) = (retraction.country, retraction.session, retraction.id);
        let id = format!("{country}.{session}.corrected.{event_id}");
        Some(Self::Corrected(CorrectedNotice {
            head: NoticeHead::new(NoticeKind::Corrected, country, session, id),
            retracted: Retracted {
                event_id: taken_back.id,
                event_type: taken_back.event,
            },
            reason: r.reason.clone(),
            retracted_by: retraction.recorded_by.clone(),
            status: after.status(),
            scheduled_for: after.scheduled_for(),
            old_scheduled_for: before.scheduled_for(),
            event_id,
            sent_at,
        }))
    }

    /// Id, kind and review of the notice.
    pub fn head(&self) -> &NoticeHead {
        match self {
            Self::Rescheduled(n) => &n.head,
            Self::Cancelled(n) => &n.head,
            Self::Corrected(n) => &n.head,
        }
    }

    /// The id, also the `Nats-Msg-Id`.
    pub fn id(&self) -> &str {
        &self.head().id
    }

    /// The kind, for the subject.
    pub fn kind(&self) -> NoticeKind {
        self.head().kind
    }

    /// The country, for the subject.
    pub fn country(&self) -> Country {
        self.head().country
    }

    /// The payload bytes.
    ///
    /// # Panics
    /// Never: a notice holds only strings, integers and structs, which serialize.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("notices hold only strings, integers and structs")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventType;
    use crate::read_models::tests::envelope;
    use serde_json::json;

    fn ts(s: &str) -> Timestamp {
        Timestamp::parse_rfc3339(s).unwrap()
    }

    fn kz() -> (Country, Session) {
        (Country::parse("KZ").unwrap(), Session::new(48).unwrap())
    }

    fn leads() -> Vec<Lead> {
        parse_leads("30d,7d,1d").unwrap()
    }

    fn plan_kz(scheduled_for: &str, scheduled_at: &str) -> Vec<Reminder> {
        let (c, s) = kz();
        plan(
            c,
            s,
            ts(scheduled_for),
            "Geneva",
            &leads(),
            ts(scheduled_at),
        )
    }

    fn ids(rs: &[Reminder]) -> Vec<&str> {
        rs.iter().map(|r| r.id.as_str()).collect()
    }

    #[test]
    fn leads_parse_sorted_longest_first_with_normalised_labels() {
        let l = parse_leads(" 1d, 30d ,07d,90m,2w,45s,3h").unwrap();
        let labels: Vec<_> = l.iter().map(Lead::label).collect();
        assert_eq!(labels, ["30d", "2w", "7d", "1d", "3h", "90m", "45s"]);
        assert_eq!(l[2].secs(), 7 * 86_400);
    }

    #[test]
    fn bad_lead_lists_are_rejected_with_a_clear_message() {
        assert_eq!(parse_leads(""), Err(LeadError::Empty));
        assert_eq!(parse_leads("30d,,1d"), Err(LeadError::EmptyItem(2)));
        assert_eq!(parse_leads("7d,"), Err(LeadError::EmptyItem(2)));
        assert_eq!(
            parse_leads("7d,1w").unwrap_err().to_string(),
            "reminder lead \"1w\" repeats \"7d\""
        );
        assert!(matches!(
            parse_leads("7d,7d"),
            Err(LeadError::Duplicate { .. })
        ));
        for bad in [
            "0d",
            "7",
            "d",
            "7D",
            "7y",
            "-7d",
            "+7d",
            "1.5d",
            "7 d",
            "99999999999999999999d",
            "3651d",
            "é",
        ] {
            assert!(
                matches!(parse_leads(bad), Err(LeadError::Invalid { .. })),
                "{bad:?}"
            );
        }
        assert!(parse_leads("3650d").is_ok());
    }

    #[test]
    fn each_bad_lead_says_what_is_wrong_with_it() {
        for (bad, reason) in [
            ("", "is empty"),
            ("7y", "must end with a unit: s, m, h, d or w"),
            ("7", "must end with a unit: s, m, h, d or w"),
            (
                "+7d",
                "must be a positive integer followed by a unit, like 7d",
            ),
            (
                "d",
                "must be a positive integer followed by a unit, like 7d",
            ),
            ("99999999999999999999d", "is too long"),
            ("3651d", "is longer than 3650d"),
            ("18446744073709551615w", "is longer than 3650d"),
            ("0d", "must be positive"),
        ] {
            assert_eq!(
                Lead::parse(bad),
                Err(LeadError::Invalid {
                    item: bad.to_owned(),
                    reason
                }),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn plan_gives_one_reminder_per_lead_with_the_contract_id() {
        let rs = plan_kz("2025-01-23T08:30:00Z", "2024-11-06T10:00:00Z");
        assert_eq!(
            ids(&rs),
            [
                "KZ.48.30d.2025-01-23T08:30:00Z",
                "KZ.48.7d.2025-01-23T08:30:00Z",
                "KZ.48.1d.2025-01-23T08:30:00Z"
            ]
        );
        assert_eq!(rs[1].due_at, ts("2025-01-16T08:30:00Z"));
        assert_eq!(
            (rs[1].lead.as_str(), rs[1].location.as_str()),
            ("7d", "Geneva")
        );
    }

    #[test]
    fn reminders_already_due_when_scheduled_are_not_planned() {
        // Scheduled 10 days ahead: the 30d reminder is already past.
        let rs = plan_kz("2025-01-23T08:30:00Z", "2025-01-13T08:30:00Z");
        assert_eq!(
            ids(&rs),
            [
                "KZ.48.7d.2025-01-23T08:30:00Z",
                "KZ.48.1d.2025-01-23T08:30:00Z"
            ]
        );
        // Due exactly at the scheduling moment counts as past.
        let rs = plan_kz("2025-01-23T08:30:00Z", "2025-01-22T08:30:00Z");
        assert!(rs.is_empty());
        // Scheduled after the date itself: nothing.
        assert!(plan_kz("2025-01-23T08:30:00Z", "2025-02-01T00:00:00Z").is_empty());
    }

    #[test]
    fn rescheduling_replaces_the_old_dates_reminders() {
        let old = plan_kz("2025-01-23T08:30:00Z", "2024-11-06T10:00:00Z");
        // Rescheduled on Jan 10 to Jan 30: the new 30d is past, 7d and 1d are new ids.
        let new = plan_kz("2025-01-30T08:30:00Z", "2025-01-10T00:00:00Z");
        assert_eq!(
            ids(&new),
            [
                "KZ.48.7d.2025-01-30T08:30:00Z",
                "KZ.48.1d.2025-01-30T08:30:00Z"
            ]
        );
        assert!(new.iter().all(|n| old.iter().all(|o| o.id != n.id)));
    }

    #[test]
    fn classify_on_time_late_and_never() {
        let r = &plan_kz("2025-01-23T08:30:00Z", "2024-11-06T10:00:00Z")[1];
        assert_eq!(classify(r, ts("2025-01-16T08:30:00Z")), Firing::OnTime);
        assert_eq!(classify(r, ts("2025-01-16T08:30:01Z")), Firing::OnTime);
        assert_eq!(classify(r, ts("2025-01-16T08:30:01.001Z")), Firing::Late);
        assert_eq!(classify(r, ts("2025-01-23T08:29:59Z")), Firing::Late);
        assert_eq!(classify(r, ts("2025-01-23T08:30:00Z")), Firing::Never);
        assert_eq!(classify(r, ts("2025-02-01T00:00:00Z")), Firing::Never);
    }

    #[test]
    fn a_timer_fires_early_and_the_reminder_waits_for_its_due_time() {
        let r = &plan_kz("2025-01-23T08:30:00Z", "2024-11-06T10:00:00Z")[1];
        assert_eq!(r.due_at.to_string(), "2025-01-16T08:30:00Z");
        assert_eq!(r.timer_at().to_string(), "2025-01-16T08:29:58Z");
        assert_eq!(
            r.wait(ts("2025-01-16T08:29:59.800Z")),
            std::time::Duration::from_millis(200)
        );
        assert_eq!(
            r.wait(ts("2025-01-16T08:30:00Z")),
            std::time::Duration::ZERO
        );
        assert_eq!(
            r.wait(ts("2025-01-16T09:00:00Z")),
            std::time::Duration::ZERO
        );
    }

    #[test]
    fn the_reminder_notice_matches_the_contract_shape() {
        let r = &plan_kz("2025-01-23T08:30:00Z", "2024-11-06T10:00:00Z")[1];
        let n = r.notice(ts("2025-01-16T08:30:00.250Z"), false);
        let expected = json!({"id": "KZ.48.7d.2025-01-23T08:30:00Z", "kind": "reminder", "country": "KZ",
            "country_name": "Kazakhstan", "session": 48, "cycle": 4, "scheduled_for": "2025-01-23T08:30:00Z", "location": "Geneva",
            "lead": "7d", "due_at": "2025-01-16T08:30:00Z", "sent_at": "2025-01-16T08:30:00.25Z", "late": false});
        assert_eq!(
            String::from_utf8(n.to_json()).unwrap(),
            expected.to_string()
        );
    }

    #[test]
    fn change_notices_carry_old_and_new_dates_and_idempotent_ids() {
        let sent = ts("2025-01-10T00:00:00Z");
        let old = Some(ts("2025-01-23T08:30:00Z"));
        let e = envelope(
            5,
            "KZ.48",
            json!({"scheduled_for": "2025-01-30T08:30:00Z", "reason": "room"}),
            EventType::ReviewRescheduled,
        );
        let n = ChangeNotice::for_event(&e, old, sent).unwrap();
        let id = Uuid::from_u128(5);
        assert_eq!(
            (n.id(), n.kind(), n.country().as_str()),
            (
                format!("KZ.48.rescheduled.{id}").as_str(),
                NoticeKind::Rescheduled,
                "KZ"
            )
        );
        let expected = json!({"id": format!("KZ.48.rescheduled.{id}"), "kind": "rescheduled", "country": "KZ",
            "country_name": "Kazakhstan", "session": 48, "cycle": 4,
            "old_scheduled_for": "2025-01-23T08:30:00Z", "scheduled_for": "2025-01-30T08:30:00Z",
            "reason": "room", "event_id": id, "sent_at": "2025-01-10T00:00:00Z"});
        assert_eq!(
            String::from_utf8(n.to_json()).unwrap(),
            expected.to_string()
        );

        let e = envelope(
            6,
            "KZ.48",
            json!({"reason": null}),
            EventType::ReviewCancelled,
        );
        let n = ChangeNotice::for_event(&e, old, sent).unwrap();
        let id = Uuid::from_u128(6);
        let expected = json!({"id": format!("KZ.48.cancelled.{id}"), "kind": "cancelled", "country": "KZ",
            "country_name": "Kazakhstan", "session": 48, "cycle": 4,
            "scheduled_for": "2025-01-23T08:30:00Z", "reason": null, "event_id": id, "sent_at": "2025-01-10T00:00:00Z"});
        assert_eq!(
            String::from_utf8(n.to_json()).unwrap(),
            expected.to_string()
        );

        let e = envelope(
            7,
            "KZ.48",
            json!({"held_on": null, "recommendations_received": null}),
            EventType::ReviewHeld,
        );
        assert_eq!(ChangeNotice::for_event(&e, old, sent), None);
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn plan_never_yields_due_at_after_the_review_nor_duplicate_ids(
                date in 0i64..4_000_000_000,
                before in -10_000_000i64..100_000_000,
                lead_set in proptest::collection::btree_set((1u64..400, 0usize..5), 0..8),
            ) {
                let units = ["s", "m", "h", "d", "w"];
                let mut seen = std::collections::HashSet::new();
                let spec: Vec<String> = lead_set
                    .into_iter()
                    .map(|(n, u)| Lead::parse(&format!("{n}{}", units[u])).unwrap())
                    .filter(|l| seen.insert(l.secs()))
                    .map(|l| l.label().to_owned())
                    .collect();
                let leads = if spec.is_empty() { vec![] } else { parse_leads(&spec.join(",")).unwrap() };
                let scheduled_for = Timestamp::from_unix_millis(date * 1000).unwrap();
                let scheduled_at = Timestamp::from_unix_millis((date - before) * 1000).unwrap();
                let (c, s) = kz();
                let rs = plan(c, s, scheduled_for, "Geneva", &leads, scheduled_at);
                let ids: std::collections::HashSet<_> = rs.iter().map(|r| &r.id).collect();
                prop_assert_eq!(ids.len(), rs.len());
                prop_assert!(rs.iter().all(|r| r.due_at < scheduled_for && r.due_at > scheduled_at));
                prop_assert!(rs.windows(2).all(|w| w[0].due_at < w[1].due_at));
                prop_assert!(rs.iter().all(|r| classify(r, r.due_at) == Firing::OnTime));
            }
        }
    }
}
