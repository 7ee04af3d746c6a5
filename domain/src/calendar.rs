//! `upr.query.calendar`: the reviews with a date as an RFC 5545 iCalendar
//! document, so a calendar program can import or subscribe to it.
//!
//! Each review is one VEVENT whose UID never changes (`KZ-48@upr-tracker`)
//! and whose SEQUENCE grows with every lifecycle change, so a program that
//! subscribes sees a reschedule as a change of the same event, not a second
//! one.
//!
//! The document depends on the data only: DTSTAMP is when the review last
//! changed ([`CalendarEntry::stamp`]) and each VALARM's UID is made of the
//! review and the lead, never the clock or a random id. So the same data
//! gives the same bytes, and the HTTP gateway's `ETag` changes exactly when a
//! review does (a subscriber polling every few minutes downloads nothing
//! while nothing changed). Written with the `icalendar` crate: line folding at 75 octets, text
//! escaping and CRLF endings are easy to get subtly wrong by hand.

use icalendar::{Alarm, Calendar, Component, EventLike};

use super::country::Country;
use super::event::{EventType, Session};
use super::lifecycle::ReviewStatus;
use super::read_models::ReviewView;
use super::reminders::Lead;
use super::time::Timestamp;

/// How long a review's interactive dialogue lasts: 3 h 30 min.
pub const REVIEW_MINUTES: i64 = 210;

/// One review as a calendar shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CalendarEntry {
    /// The state under review.
    pub country: Country,
    /// The Working Group session.
    pub session: Session,
    /// When the review starts.
    pub scheduled_for: Timestamp,
    /// Where.
    pub location: String,
    /// Its status (cancelled reviews stay, marked cancelled).
    pub status: ReviewStatus,
    /// How many times the review's lifecycle changed since it was first
    /// scheduled (retractions included): the iCalendar SEQUENCE.
    pub sequence: u32,
    /// When the review's lifecycle last changed: the `occurred_at` of its
    /// latest lifecycle event in the log (the iCalendar DTSTAMP). Taken from
    /// the data rather than the clock so the document is stable.
    pub stamp: Timestamp,
}

impl CalendarEntry {
    /// The entry of a review that has a status and a date; `None` otherwise.
    pub fn of(view: &ReviewView) -> Option<Self> {
        let lifecycle = || {
            view.history
                .iter()
                .filter(|h| h.event_type != EventType::SideEventHeld)
        };
        let changes = lifecycle().count();
        let scheduled_for = view.scheduled_for?;
        Some(Self {
            stamp: lifecycle()
                .next_back()
                .map_or(scheduled_for, |h| h.occurred_at),
            country: view.country,
            session: view.session,
            scheduled_for,
            location: view.location.clone().unwrap_or_default(),
            status: view.status?,
            sequence: u32::try_from(changes.saturating_sub(1)).unwrap_or(u32::MAX),
        })
    }

    /// `KZ-48@upr-tracker`: the same for the review's whole life.
    pub fn uid(&self) -> String {
        format!("{}-{}@upr-tracker", self.country, self.session)
    }

    /// `KZ-48-7d@upr-tracker`: the UID of the review's alarm for `lead`,
    /// the same on every fetch so a subscriber does not see new alarms.
    pub fn alarm_uid(&self, lead: &Lead) -> String {
        format!(
            "{}-{}-{}@upr-tracker",
            self.country,
            self.session,
            lead.label()
        )
    }
}

/// The iCalendar document of `entries`, with one alarm per reminder lead on
/// each review still scheduled. A function of its arguments only: the same
/// entries give the same bytes.
pub fn calendar(entries: &[CalendarEntry], leads: &[Lead]) -> String {
    let mut cal = Calendar::empty();
    cal.append_property(("VERSION", "2.0"))
        .append_property(("PRODID", "-//UPR Tracker//upr.query.calendar//EN"))
        .append_property(("CALSCALE", "GREGORIAN"))
        .append_property(("METHOD", "PUBLISH"))
        .name("UPR reviews");
    for e in entries {
        let name = e.country.un_name();
        let end = e
            .scheduled_for
            .checked_add(time::Duration::minutes(REVIEW_MINUTES))
            .unwrap_or(e.scheduled_for);
        let mut event = icalendar::Event::new();
        event
            .uid(&e.uid())
            .add_property("DTSTAMP", basic(e.stamp))
            .add_property("DTSTART", basic(e.scheduled_for))
            .add_property("DTEND", basic(end))
            .sequence(e.sequence)
            .summary(&format!("UPR review: {name} (session {})", e.session))
            .description(&format!(
                "Universal Periodic Review of {name} by the Working Group at its session {} (cycle {}); status: {}.",
                e.session,
                e.session.cycle(),
                e.status.as_str()
            ))
            .location(&e.location)
            .add_property(
                "STATUS",
                if e.status == ReviewStatus::Cancelled {
                    "CANCELLED"
                } else {
                    "CONFIRMED"
                },
            );
        if e.status == ReviewStatus::Scheduled {
            for lead in leads {
                // The crate writes a trigger in seconds (-PT604800S); the
                // same trigger in the lead's own unit (-P1W) reads better.
                let mut alarm = Alarm::display(
                    &format!("UPR review of {name} in {}", lead.label()),
                    -chrono::Duration::seconds(i64::try_from(lead.secs()).unwrap_or(i64::MAX)),
                );
                alarm.add_property("TRIGGER", format!("-{}", duration(lead.secs())));
                // Without these the writer adds a random UID and the time of
                // writing as DTSTAMP, and every fetch would differ.
                alarm.add_property("UID", e.alarm_uid(lead));
                alarm.add_property("DTSTAMP", basic(e.stamp));
                event.alarm(alarm.done());
            }
        }
        cal.push(event.done());
    }
    cal.done().to_string()
}

/// An RFC 5545 duration in the largest whole unit: `P1W`, `P7D`, `PT12H`,
/// `PT90M`, `PT45S` (as a person would write the lead).
fn duration(secs: u64) -> String {
    match secs {
        s if s % 604_800 == 0 => format!("P{}W", s / 604_800),
        s if s % 86_400 == 0 => format!("P{}D", s / 86_400),
        s if s % 3_600 == 0 => format!("PT{}H", s / 3_600),
        s if s % 60 == 0 => format!("PT{}M", s / 60),
        s => format!("PT{s}S"),
    }
}

/// `20250123T083000Z`, the iCalendar form of a UTC time (to the second).
fn basic(t: Timestamp) -> String {
    let text = t.to_string(); // 2025-01-23T08:30:00(.fff)Z
    let digits: String = text
        .chars()
        .take(19)
        .filter(|c| c.is_ascii_digit() || *c == 'T')
        .collect();
    format!("{digits}Z")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reminders::parse_leads;

    fn ts(s: &str) -> Timestamp {
        Timestamp::parse_rfc3339(s).unwrap()
    }

    fn entry(code: &str, status: ReviewStatus, sequence: u32) -> CalendarEntry {
        CalendarEntry {
            country: Country::parse(code).unwrap(),
            session: Session::new(48).unwrap(),
            scheduled_for: ts("2025-01-23T08:30:00.250Z"),
            location: "Palais des Nations, Room XX; Geneva".into(),
            status,
            sequence,
            stamp: ts("2025-01-01T12:00:00Z"),
        }
    }

    /// Read back with an independent parser (the `ical` crate).
    fn parse(text: &str) -> ical::parser::ical::component::IcalCalendar {
        let mut reader = ical::IcalParser::new(std::io::BufReader::new(text.as_bytes()));
        let cal = reader.next().expect("one calendar").expect("it parses");
        assert!(reader.next().is_none(), "exactly one calendar");
        cal
    }

    fn props(
        e: &ical::parser::ical::component::IcalEvent,
    ) -> std::collections::BTreeMap<String, String> {
        e.properties
            .iter()
            .map(|p| (p.name.clone(), p.value.clone().unwrap_or_default()))
            .collect()
    }

    #[test]
    fn every_field_reads_back_with_an_independent_parser() {
        let leads = parse_leads("30d,7d,1d").unwrap();
        let text = calendar(
            &[
                entry("BO", ReviewStatus::Scheduled, 2),
                entry("KZ", ReviewStatus::Cancelled, 1),
            ],
            &leads,
        );
        assert!(text.contains("\r\n"), "CRLF line endings");
        assert!(text.lines().all(|l| l.len() <= 75), "folded at 75 octets");
        let cal = parse(&text);
        let head: std::collections::BTreeMap<_, _> = cal
            .properties
            .iter()
            .map(|p| (p.name.as_str(), p.value.as_deref().unwrap_or("")))
            .collect();
        assert_eq!(head["VERSION"], "2.0");
        assert_eq!(head["PRODID"], "-//UPR Tracker//upr.query.calendar//EN");
        assert_eq!(cal.events.len(), 2);

        let bo = props(&cal.events[0]);
        assert_eq!(bo["UID"], "BO-48@upr-tracker");
        assert_eq!(bo["DTSTART"], "20250123T083000Z");
        assert_eq!(bo["DTEND"], "20250123T120000Z", "3 h 30 min later");
        assert_eq!(bo["DTSTAMP"], "20250101T120000Z");
        assert_eq!(bo["SEQUENCE"], "2");
        assert_eq!(
            bo["SUMMARY"],
            "UPR review: Bolivia (Plurinational State of) (session 48)"
        );
        // Escaped by the writer: a comma and a semicolon in the location.
        assert_eq!(bo["LOCATION"], "Palais des Nations\\, Room XX\\; Geneva");
        assert_eq!(bo["STATUS"], "CONFIRMED");
        let alarms = &cal.events[0].alarms;
        assert_eq!(alarms.len(), 3, "one alarm per lead");
        let triggers: Vec<String> = alarms
            .iter()
            .map(|a| {
                a.properties
                    .iter()
                    .find(|p| p.name == "TRIGGER")
                    .and_then(|p| p.value.clone())
                    .unwrap()
            })
            .collect();
        // 30 days, a week (7d) and a day before the start.
        assert_eq!(triggers, ["-P30D", "-P1W", "-P1D"]);
        let actions: Vec<_> = alarms
            .iter()
            .map(|a| {
                a.properties
                    .iter()
                    .find(|p| p.name == "ACTION")
                    .and_then(|p| p.value.clone())
                    .unwrap()
            })
            .collect();
        assert_eq!(actions, ["DISPLAY"; 3]);
        let alarm_props: Vec<std::collections::BTreeMap<String, String>> = alarms
            .iter()
            .map(|a| {
                a.properties
                    .iter()
                    .map(|p| (p.name.clone(), p.value.clone().unwrap_or_default()))
                    .collect()
            })
            .collect();
        let uids: Vec<&str> = alarm_props.iter().map(|p| p["UID"].as_str()).collect();
        assert_eq!(
            uids,
            [
                "BO-48-30d@upr-tracker",
                "BO-48-7d@upr-tracker",
                "BO-48-1d@upr-tracker"
            ]
        );
        assert!(
            alarm_props
                .iter()
                .all(|p| p["DTSTAMP"] == "20250101T120000Z")
        );

        let kz = props(&cal.events[1]);
        assert_eq!(kz["STATUS"], "CANCELLED");
        assert!(cal.events[1].alarms.is_empty(), "no alarms when cancelled");
    }

    #[test]
    fn the_same_entries_give_the_same_bytes() {
        let leads = parse_leads("30d,7d,1d").unwrap();
        let entries = [
            entry("BO", ReviewStatus::Scheduled, 2),
            entry("KZ", ReviewStatus::Cancelled, 1),
        ];
        let first = calendar(&entries, &leads);
        // Across a second boundary, where a clock-made DTSTAMP would change.
        std::thread::sleep(std::time::Duration::from_millis(1100));
        assert_eq!(calendar(&entries, &leads), first);
        let mut changed = entries.clone();
        changed[0].sequence = 3;
        assert_ne!(calendar(&changed, &leads), first);
    }

    #[test]
    fn durations_take_the_largest_whole_unit() {
        let cases = [
            (604_800, "P1W"),
            (2_592_000, "P30D"),
            (86_400, "P1D"),
            (43_200, "PT12H"),
            (5_400, "PT90M"),
            (45, "PT45S"),
            (1_209_600, "P2W"),
        ];
        for (secs, text) in cases {
            assert_eq!(duration(secs), text, "{secs} s");
        }
    }

    #[test]
    fn the_sequence_counts_lifecycle_changes_and_the_uid_stays() {
        use crate::read_models::tests::envelope;
        use serde_json::json;
        let mut view = ReviewView::new(crate::ReviewKey::parse("KZ.48").unwrap());
        let scheduled = envelope(
            1,
            "KZ.48",
            json!({"scheduled_for": "2025-01-23T08:30:00Z", "location": "Geneva"}),
            EventType::ReviewScheduled,
        );
        view.apply(1, &scheduled);
        let first = CalendarEntry::of(&view).unwrap();
        view.apply(
            2,
            &envelope(
                2,
                "KZ.48",
                json!({"title": "t", "held_on": "2025-01-20T00:00:00Z"}),
                EventType::SideEventHeld,
            ),
        );
        assert_eq!(
            CalendarEntry::of(&view).unwrap(),
            first,
            "side events change nothing"
        );
        view.apply(
            3,
            &envelope(
                3,
                "KZ.48",
                json!({"scheduled_for": "2025-01-24T08:30:00Z"}),
                EventType::ReviewRescheduled,
            ),
        );
        let moved = CalendarEntry::of(&view).unwrap();
        assert_eq!((first.sequence, moved.sequence), (0, 1));
        assert_ne!(first.stamp, moved.stamp, "DTSTAMP follows the last change");
        assert_eq!(first.uid(), moved.uid());
        assert_eq!(moved.scheduled_for, ts("2025-01-24T08:30:00Z"));
        assert!(
            CalendarEntry::of(&ReviewView::new(view.key())).is_none(),
            "no date, no entry"
        );
    }
}
