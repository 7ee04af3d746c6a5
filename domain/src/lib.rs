//! The pure domain core: no I/O, no async, no NATS, no clock. Services pass
//! bytes and times in and get decisions, events and views out, so every rule
//! here is tested without a server.
//!
//! - [`bounds`]: how large each event field may be (the bottom of the graph).
//! - [`json`]: a strict JSON reader (no duplicated keys, bounded nesting).
//! - [`country`]: ISO 3166-1 alpha-2 codes, the only way a country enters.
//! - [`time`]: UTC timestamps, parsed strictly and written as RFC 3339 `Z`.
//! - [`span`]: lengths of time like `7d`, for reminder leads and settings.
//! - [`event`]: the eight event types, their data, the stored envelope.
//! - [`party`]: who recorded an event, a party's authenticated name.
//! - [`error`]: error codes and the `{code, message, field}` rejection, which
//!   the typed errors of the rules ([`LifecycleError`], [`LimitError`]) become.
//! - [`json_schema`]: JSON Schema fragments of the domain's values.
//! - [`field`]: the kinds of intake value, each owning its parsing, limit
//!   and JSON Schema fragment.
//! - [`intake`]: intake payload bytes to a validated command, or a rejection.
//! - [`lifecycle`]: a review's status; `decide` holds the rules, `evolve` folds.
//! - [`limits`]: how much one review may hold, for intake and the fold alike.
//! - [`side_event`]: a side event as its review lists it, and the bytes it takes.
//! - [`review`]: the review aggregate: `decide` holds the write rules
//!   (duplicate, limits, lifecycle), `apply` folds the review's history.
//! - [`member_states`]: the 193 UN member states the UPR reviews, with UN names.
//! - [`read_models`]: the review, session and country views as idempotent folds.
//! - [`reminders`]: lead times, reminder planning and notice payloads.
//! - [`calendar`](mod@calendar): reviews as an RFC 5545 iCalendar document.

pub mod bounds;
pub mod calendar;
pub mod country;
pub mod error;
pub mod event;
pub mod field;
pub mod intake;
pub mod json;
pub mod json_schema;
pub mod lifecycle;
pub mod limits;
pub mod member_states;
pub mod party;
pub mod read_models;
pub mod reminders;
pub mod review;
pub mod side_event;
pub mod span;
pub mod time;

pub use calendar::{CalendarEntry, REVIEW_MINUTES, calendar};
pub use country::{COUNTRIES, Country, CountryError};
pub use error::{ErrorCode, RejectError};
pub use event::{
    DEFAULT_LOCATION, Envelope, EnvelopeError, EventData, EventRetracted, EventType,
    OutcomeAdopted, Recommendations, ReportPublished, ReviewCancelled, ReviewHeld, ReviewKey,
    ReviewRescheduled, ReviewScheduled, SCHEMA, SCHEMA_RECORDED_BY, SCHEMAS_READ, Session,
    SessionError, SideEventHeld, Speaker,
};
pub use intake::{Command, MAX_PAYLOAD, parse_intake};
pub use lifecycle::{
    LifecycleEntry, LifecycleError, Needs, ReviewState, ReviewStatus, decide, evolve,
};
pub use limits::{
    LimitError, MAX_LIFECYCLE_EVENTS, MAX_RETRACTIONS, MAX_SIDE_EVENT_BYTES, MAX_SIDE_EVENTS,
    MAX_VALUE_BYTES, ReviewSize,
};
pub use member_states::{MEMBER_STATES, member_state_name};
pub use party::{PartyName, PartyNameError};
pub use read_models::{
    CountryReport, CountryReview, CountryView, Fold, HistoryEntry, OutcomeView, REASON_CHARS,
    ReadModels, ReportView, RetractionMark, ReviewView, SessionReview, SessionView, Touched,
    Upcoming,
};
pub use reminders::{
    CancelledNotice, ChangeNotice, CorrectedNotice, Firing, LATE_AFTER, Lead, LeadError,
    NoticeHead, NoticeKind, Reminder, ReminderNotice, RescheduledNotice, Retracted, TIMER_EARLY,
    classify, parse_leads, plan,
};
pub use review::{Decision, Editors, Forbidden, IdInUse, Refusal, Review};
pub use side_event::{SideEventView, side_event_bytes};
pub use span::{SPAN_UNITS, Span, SpanError, parse_span};
pub use time::{TimeError, Timestamp};
