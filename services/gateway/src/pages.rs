//! The HTML pages (contract V3.5): `/`, the upcoming reviews with a country
//! filter, and `/reviews/<COUNTRY>/<session>`, one review in full. Rendered
//! on the server from the projection's answers with templates in
//! `services/gateway/templates/` (checked when the binary is compiled); no
//! JavaScript, so they work in any browser and with a screen reader.
//!
//! The page models are built from the JSON answers by pure functions
//! ([`index_page`], [`review_page`]), tested without NATS; a field the
//! value may or may not carry (`recorded_by`, added by contract V3.1) is
//! read when present and shown as "—" otherwise.

use askama::Template;
use axum::{
    Router,
    extract::{Path, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use serde_json::{Value, json};
use time::{OffsetDateTime, format_description::well_known::Rfc3339, macros::format_description};
use upr_domain::{Country, ErrorCode, RejectError, ReviewKey};
use upr_nats::contract::query as subjects;

use crate::{
    api::{Params, country_code, pairs, session_number},
    http::AppState,
    query::ask,
};

/// The page routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(index))
        .route("/reviews/{country}/{session}", get(review))
}

/// Most rows the front page lists: past it, the filter narrows.
pub const MAX_ROWS: usize = 200;

/// A date as a page shows it, with its machine-readable form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DateText {
    /// `23 January 2031, 08:30 UTC`.
    pub text: String,
    /// The RFC 3339 text, for `<time datetime>`.
    pub datetime: String,
}

/// `2031-01-23T08:30:00Z` as `23 January 2031, 08:30 UTC`; any other text
/// as it is.
pub fn date_text(rfc3339: &str) -> DateText {
    let format =
        format_description!("[day padding:none] [month repr:long] [year], [hour]:[minute] UTC");
    let text = OffsetDateTime::parse(rfc3339, &Rfc3339)
        .ok()
        .and_then(|t| t.to_offset(time::UtcOffset::UTC).format(&format).ok())
        .unwrap_or_else(|| rfc3339.to_string());
    DateText {
        text,
        datetime: rfc3339.to_string(),
    }
}

/// One row of the front page.
#[derive(Debug, Clone)]
pub struct UpcomingRow {
    /// `/reviews/KZ/48`.
    pub href: String,
    /// The state's UN name.
    pub country_name: String,
    /// The session.
    pub session: u64,
    /// The date, for people.
    pub date: String,
    /// The date, for machines.
    pub datetime: String,
    /// The review's status.
    pub status: String,
}

/// The front page.
#[derive(Debug, Template)]
#[template(path = "index.html")]
pub struct IndexPage {
    /// The country filter as typed (empty: every country).
    pub country: String,
    /// The rows, soonest first.
    pub reviews: Vec<UpcomingRow>,
    /// What went wrong, for the person (a bad filter, NATS unreachable).
    pub error: Option<String>,
    /// The table's caption.
    pub caption: String,
    /// The calendar file of this selection.
    pub calendar_url: String,
    /// Its link text.
    pub calendar_label: String,
}

/// The front page for the answer of `upr.query.upcoming`; `country` is the
/// filter as the person typed it, `code` the state it names.
pub fn index_page(country: &str, code: Option<Country>, answer: &Value) -> IndexPage {
    let all = answer["reviews"].as_array().map_or(&[][..], Vec::as_slice);
    let reviews: Vec<UpcomingRow> = all
        .iter()
        .take(MAX_ROWS)
        .map(|r| {
            let code = r["country"].as_str().unwrap_or_default();
            let session = r["session"].as_u64().unwrap_or_default();
            let date = date_text(r["scheduled_for"].as_str().unwrap_or_default());
            UpcomingRow {
                href: format!("/reviews/{code}/{session}"),
                country_name: r["country_name"]
                    .as_str()
                    .map_or_else(|| code.to_string(), str::to_string),
                session,
                date: date.text,
                datetime: date.datetime,
                status: r["status"].as_str().unwrap_or("scheduled").to_string(),
            }
        })
        .collect();
    let caption = if all.len() > MAX_ROWS {
        format!(
            "The next {MAX_ROWS} of {} upcoming reviews, soonest first; filter by country for the others",
            all.len()
        )
    } else if reviews.len() == 1 {
        "1 upcoming review".to_string()
    } else {
        format!("{} upcoming reviews, soonest first", reviews.len())
    };
    let (calendar_url, calendar_label) = match code {
        Some(c) => (
            format!("/calendar/{c}.ics"),
            format!("calendar of {}", c.un_name()),
        ),
        None => (
            "/calendar.ics".to_string(),
            "calendar of every review".to_string(),
        ),
    };
    IndexPage {
        country: country.to_string(),
        reviews,
        error: None,
        caption,
        calendar_url,
        calendar_label,
    }
}

/// One history row.
#[derive(Debug, Clone)]
pub struct HistoryRow {
    /// The event type in words.
    pub event: String,
    /// When it occurred, for people.
    pub date: String,
    /// The same, for machines.
    pub datetime: String,
    /// Who recorded it, or "—".
    pub recorded_by: String,
    /// Its stream sequence.
    pub seq: u64,
    /// "no", or the retraction's reason.
    pub retracted: String,
}

/// One side event row.
#[derive(Debug, Clone)]
pub struct SideEventRow {
    /// Its title.
    pub title: String,
    /// When it was held, for people.
    pub date: String,
    /// The same, for machines.
    pub datetime: String,
    /// The speakers, "name (role)", comma-separated.
    pub speakers: String,
    /// Who recorded it, or "—".
    pub recorded_by: String,
}

/// A review's page.
#[derive(Debug, Template)]
#[template(path = "review.html")]
pub struct ReviewPage {
    /// `UPR review: Kazakhstan (session 48)`.
    pub heading: String,
    /// The state's UN name.
    pub country_name: String,
    /// The status, or a sentence when there is none yet.
    pub status: String,
    /// The date, when scheduled.
    pub date: Option<DateText>,
    /// The location, or "—".
    pub location: String,
    /// The troika's names, or "—".
    pub troika: String,
    /// The UPR cycle.
    pub cycle: String,
    /// Every event, oldest first.
    pub history: Vec<HistoryRow>,
    /// The side events.
    pub side_events: Vec<SideEventRow>,
    /// The report's fields, empty when none is published.
    pub report: Vec<(String, String)>,
    /// The outcome's fields, empty when not adopted.
    pub outcome: Vec<(String, String)>,
    /// The state's calendar file.
    pub calendar_url: String,
    /// The same review as JSON.
    pub api_url: String,
}

const NONE: &str = "—";

fn text_or_dash(v: &Value) -> String {
    match v {
        Value::String(s) if !s.is_empty() => s.clone(),
        Value::Null | Value::String(_) => NONE.to_string(),
        other => other.to_string(),
    }
}

fn words(event_type: &str) -> String {
    let mut s = event_type.replace('_', " ");
    if let Some(first) = s.get_mut(0..1) {
        first.make_ascii_uppercase();
    }
    s
}

/// The fields of a report or outcome object, in words, its counts flattened.
fn fields(v: &Value) -> Vec<(String, String)> {
    let Some(map) = v.as_object() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (key, value) in map {
        match value {
            Value::Object(inner) => {
                let parts: Vec<String> = inner.iter().map(|(k, v)| format!("{k}: {v}")).collect();
                out.push((words(key), parts.join(", ")));
            }
            v if key.ends_with("_on") || key.ends_with("_at") => {
                out.push((words(key), date_text(&text_or_dash(v)).text));
            }
            v => out.push((words(key), text_or_dash(v))),
        }
    }
    out
}

/// The page of the review value `review` (the `review` of
/// `upr.query.review`'s answer).
pub fn review_page(key: ReviewKey, review: &Value) -> ReviewPage {
    let country_name = review["country_name"]
        .as_str()
        .map_or_else(|| key.country.un_name().to_string(), str::to_string);
    let troika = review["troika"].as_array().map_or_else(
        || NONE.to_string(),
        |codes| {
            codes
                .iter()
                .filter_map(Value::as_str)
                .map(|c| {
                    Country::parse(c).map_or_else(|_| c.to_string(), |c| c.un_name().to_string())
                })
                .collect::<Vec<_>>()
                .join(", ")
        },
    );
    let history = review["history"]
        .as_array()
        .map_or(&[][..], Vec::as_slice)
        .iter()
        .map(|h| {
            let date = date_text(h["occurred_at"].as_str().unwrap_or_default());
            HistoryRow {
                event: words(h["type"].as_str().unwrap_or_default()),
                date: date.text,
                datetime: date.datetime,
                recorded_by: text_or_dash(&h["recorded_by"]),
                seq: h["seq"].as_u64().unwrap_or_default(),
                retracted: match &h["retracted"] {
                    Value::Null => "no".to_string(),
                    r => format!("yes: {}", r["reason"].as_str().unwrap_or_default()),
                },
            }
        })
        .collect();
    let side_events = review["side_events"]
        .as_array()
        .map_or(&[][..], Vec::as_slice)
        .iter()
        .map(|s| {
            let date = date_text(s["held_on"].as_str().unwrap_or_default());
            let speakers: Vec<String> = s["speakers"]
                .as_array()
                .map_or(&[][..], Vec::as_slice)
                .iter()
                .map(|p| match p["role"].as_str() {
                    Some(role) => format!("{} ({role})", p["name"].as_str().unwrap_or_default()),
                    None => p["name"].as_str().unwrap_or_default().to_string(),
                })
                .collect();
            SideEventRow {
                title: s["title"].as_str().unwrap_or_default().to_string(),
                date: date.text,
                datetime: date.datetime,
                speakers: if speakers.is_empty() {
                    NONE.to_string()
                } else {
                    speakers.join(", ")
                },
                recorded_by: text_or_dash(&s["recorded_by"]),
            }
        })
        .collect();
    ReviewPage {
        heading: format!("UPR review: {country_name} (session {})", key.session),
        status: review["status"]
            .as_str()
            .unwrap_or("none yet (only side events are recorded)")
            .to_string(),
        date: review["scheduled_for"].as_str().map(date_text),
        location: text_or_dash(&review["location"]),
        troika,
        cycle: text_or_dash(&review["cycle"]),
        history,
        side_events,
        report: fields(&review["report"]),
        outcome: fields(&review["outcome"]),
        calendar_url: format!("/calendar/{}.ics", key.country),
        api_url: format!("/api/v1/reviews/{}/{}", key.country, key.session),
        country_name,
    }
}

/// A page that says what went wrong.
#[derive(Debug, Template)]
#[template(path = "error.html")]
pub struct ErrorPage {
    /// `Not found`, ...
    pub heading: String,
    /// The refusal's sentence.
    pub message: String,
}

fn html(status: StatusCode, page: &impl Template) -> Response {
    match page.render() {
        Ok(body) => (
            status,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            body,
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the page could not be rendered: {e}"),
        )
            .into_response(),
    }
}

fn error_page(e: &RejectError) -> Response {
    let status = crate::http::status_of(e.code);
    let heading = match e.code {
        ErrorCode::NotFound => "Not found",
        ErrorCode::Unavailable | ErrorCode::Timeout => "Temporarily unavailable",
        _ => "Cannot show this page",
    };
    html(
        status,
        &ErrorPage {
            heading: heading.to_string(),
            message: e.message.clone(),
        },
    )
}

/// The JSON answer of `subject`, or the refusal it carries.
async fn answer(
    state: &AppState,
    subject: String,
    payload: bytes::Bytes,
) -> Result<Value, RejectError> {
    let message = ask(&state.nats, subject, payload).await?;
    let value: Value = serde_json::from_slice(&message.payload).map_err(|e| {
        RejectError::new(
            ErrorCode::Unavailable,
            format!("the answer is not JSON: {e}"),
        )
    })?;
    if value["ok"] == true {
        return Ok(value);
    }
    Err(
        serde_json::from_value(value["error"].clone()).unwrap_or_else(|_| {
            RejectError::new(ErrorCode::Unavailable, "the answer carried no error")
        }),
    )
}

async fn index(State(state): State<AppState>, params: Params) -> Response {
    let params = match pairs(params) {
        Ok(p) => p,
        Err(e) => return error_page(&e),
    };
    let typed = params
        .iter()
        .find(|(k, _)| k == "country")
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_default();
    let code = if typed.is_empty() {
        None
    } else {
        match country_code(&typed) {
            Ok(c) => Some(c),
            Err(_) => {
                let mut page = index_page(&typed, None, &json!({}));
                page.error = Some(format!(
                    "{typed:?} is not a country code: type two letters, such as KZ for Kazakhstan."
                ));
                return html(StatusCode::BAD_REQUEST, &page);
            }
        }
    };
    let payload = code.map_or_else(bytes::Bytes::new, |c| {
        bytes::Bytes::from(json!({"country": c.as_str()}).to_string())
    });
    match answer(&state, subjects::UPCOMING.to_string(), payload).await {
        Ok(value) => html(StatusCode::OK, &index_page(&typed, code, &value)),
        Err(e) => error_page(&e),
    }
}

async fn review(
    State(state): State<AppState>,
    Path((country, session)): Path<(String, String)>,
) -> Response {
    let key = match country_code(&country).and_then(|country| {
        Ok(ReviewKey {
            country,
            session: session_number(&session)?,
        })
    }) {
        Ok(k) => k,
        Err(e) => return error_page(&e),
    };
    match answer(&state, subjects::review(key), bytes::Bytes::new()).await {
        Ok(value) => html(StatusCode::OK, &review_page(key, &value["review"])),
        Err(e) => error_page(&e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kz48() -> ReviewKey {
        ReviewKey::parse("KZ.48").unwrap()
    }

    fn value(recorded_by: Option<&str>) -> Value {
        let mut entry = json!({"type": "review_scheduled", "event_id": "0b7c8e62-4a47-4c1e-9a53-3a1f0b1f2d11",
                               "seq": 1, "occurred_at": "2030-11-06T10:00:00Z", "retracted": null});
        if let Some(who) = recorded_by {
            entry["recorded_by"] = json!(who);
        }
        json!({"country": "KZ", "country_name": "Kazakhstan", "session": 48, "cycle": 5,
               "status": "scheduled", "scheduled_for": "2031-01-23T08:30:00Z",
               "location": "Palais des Nations <Room XX>", "troika": ["BO", "FR", "JP"],
               "history": [entry],
               "side_events": [{"event_id": "1b7c8e62-4a47-4c1e-9a53-3a1f0b1f2d11", "title": "Civic space",
                                "held_on": "2031-01-22T00:00:00Z",
                                "speakers": [{"name": "A. Person", "role": "NGO"}],
                                "participating_states": null, "topics": []}],
               "report": null, "outcome": null, "last_seq": 2})
    }

    #[test]
    fn a_review_page_shows_status_date_troika_and_who_recorded_each_entry() {
        let page = review_page(kz48(), &value(Some("ohchr-desk")));
        assert_eq!(page.heading, "UPR review: Kazakhstan (session 48)");
        assert_eq!(page.status, "scheduled");
        assert_eq!(
            page.date.as_ref().unwrap().text,
            "23 January 2031, 08:30 UTC"
        );
        assert_eq!(
            page.troika,
            "Bolivia (Plurinational State of), France, Japan"
        );
        assert_eq!(page.history[0].recorded_by, "ohchr-desk");
        assert_eq!(page.history[0].event, "Review scheduled");
        assert_eq!(page.side_events[0].speakers, "A. Person (NGO)");
        assert_eq!(page.calendar_url, "/calendar/KZ.ics");
        let html = page.render().unwrap();
        assert!(html.contains("<html lang=\"en\">"));
        assert!(html.contains("name=\"viewport\""));
        assert!(html.contains("<th scope=\"col\">Recorded by</th>"));
        assert!(
            html.contains("Palais des Nations &#60;Room XX&#62;")
                || html.contains("Palais des Nations &lt;Room XX&gt;"),
            "escaped: {html}"
        );
        assert!(!html.contains("<script"), "no JavaScript");
    }

    #[test]
    fn an_entry_without_recorded_by_shows_a_dash() {
        let page = review_page(kz48(), &value(None));
        assert_eq!(page.history[0].recorded_by, "—");
        assert_eq!(page.side_events[0].recorded_by, "—");
    }

    #[test]
    fn the_front_page_links_each_review_and_the_matching_calendar() {
        let answer = json!({"ok": true, "reviews": [
            {"country": "KZ", "country_name": "Kazakhstan", "session": 48, "scheduled_for": "2031-01-23T08:30:00Z"}]});
        let page = index_page("kz", Country::parse("kz").ok(), &answer);
        assert_eq!(page.reviews[0].href, "/reviews/KZ/48");
        assert_eq!(page.reviews[0].status, "scheduled");
        assert_eq!(page.calendar_url, "/calendar/KZ.ics");
        assert_eq!(page.caption, "1 upcoming review");
        let page = index_page("", None, &answer);
        assert_eq!(page.calendar_url, "/calendar.ics");
        let html = page.render().unwrap();
        assert!(html.contains("<label for=\"country\">"));
        assert!(
            html.contains("<th scope=\"row\"><a href=\"/reviews/KZ/48\">Kazakhstan</a></th>"),
            "{html}"
        );
    }
}
