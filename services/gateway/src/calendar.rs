//! The calendar over HTTP (contract V3.5): `/calendar.ics` and
//! `/calendar/<COUNTRY>.ics`, the documents of `upr.query.calendar[.<CC>]`,
//! for calendar programs that subscribe to a URL (`webcal://`).
//!
//! A subscriber polls, often every few minutes: the strong `ETag` (a hash
//! of the bytes, which depend on the data only, see upr-domain's calendar
//! module) lets it ask `If-None-Match` and get an empty 304 while nothing
//! changed.

use axum::{
    Router,
    extract::{Path, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use sha2::{Digest, Sha256};
use upr_domain::{Country, ErrorCode, RejectError};
use upr_nats::contract::query as subjects;

use crate::{
    api::{MIN_SEQ_ONLY, Params, pairs, payload},
    http::{AppState, error_response},
};

/// The calendar routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/calendar.ics", get(every_state))
        .route("/calendar/{file}", get(one_state))
}

/// The `Content-Type` of a calendar answer.
pub const CONTENT_TYPE: &str = "text/calendar; charset=utf-8";

async fn every_state(
    State(state): State<AppState>,
    headers: HeaderMap,
    params: Params,
) -> Response {
    serve(&state, Ok(subjects::CALENDAR.to_string()), params, &headers).await
}

async fn one_state(
    State(state): State<AppState>,
    Path(file): Path<String>,
    headers: HeaderMap,
    params: Params,
) -> Response {
    let subject = member_state(&file).map(subjects::calendar);
    serve(&state, subject, params, &headers).await
}

/// The member state a file name `KZ.ics` names.
///
/// # Errors
/// `not_found` for any other name: a code that is not a member state has
/// no calendar (contract V3.5).
pub fn member_state(file: &str) -> Result<Country, RejectError> {
    let code = file.strip_suffix(".ics").unwrap_or("");
    Country::parse(code)
        .ok()
        .filter(Country::is_member_state)
        .ok_or_else(|| {
            RejectError::new(
                ErrorCode::NotFound,
                format!("no calendar at /calendar/{file}: expected a UN member state's code, as in /calendar/KZ.ics"),
            )
        })
}

/// Asks `subject` (with `min_seq` when given, like every query) and answers
/// the calendar, or 304 when the client already holds these bytes.
async fn serve(
    state: &AppState,
    subject: Result<String, RejectError>,
    params: Params,
    request: &HeaderMap,
) -> Response {
    let asked = match subject.and_then(|s| Ok((s, payload(&pairs(params)?, MIN_SEQ_ONLY)?))) {
        Ok((subject, payload)) => crate::query::ask(&state.nats, subject, payload).await,
        Err(e) => Err(e),
    };
    let message = match asked {
        Ok(m) => m,
        Err(e) => return error_response(&e),
    };
    let is_calendar = message
        .headers
        .as_ref()
        .and_then(|h| h.get("Content-Type"))
        .is_some_and(|v| v.as_str().starts_with(subjects::CALENDAR_CONTENT_TYPE));
    if !is_calendar {
        // A refusal (`{"ok": false, ...}`) is passed on with its status.
        let status = crate::query::answer_status(&message.payload)
            .unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        return (
            status,
            [(header::CONTENT_TYPE, "application/json")],
            message.payload,
        )
            .into_response();
    }
    let tag = etag(&message.payload);
    let mut response = if matches(request, &tag) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (
            [(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE))],
            message.payload,
        )
            .into_response()
    };
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&tag) {
        headers.insert(header::ETAG, value);
    }
    // Stored, but checked with the server before each use: the ETag makes
    // that check cost a 304.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// The strong entity tag of `body`: a quoted hash of its bytes.
pub fn etag(body: &[u8]) -> String {
    let digest = Sha256::digest(body);
    format!(
        "\"{}\"",
        data_encoding::BASE64URL_NOPAD.encode(&digest[..18])
    )
}

/// Whether the request's `If-None-Match` names `tag` (or is `*`). The
/// comparison is the weak one RFC 9110 prescribes for this header, so a
/// `W/` prefix added by a proxy still matches.
pub fn matches(request: &HeaderMap, tag: &str) -> bool {
    request
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|candidate| candidate == "*" || candidate.trim_start_matches("W/") == tag)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_member_states_have_a_calendar_file() {
        assert_eq!(member_state("KZ.ics").unwrap().as_str(), "KZ");
        assert_eq!(member_state("kz.ics").unwrap().as_str(), "KZ");
        // Taiwan has an ISO code but is not a UN member state.
        for bad in ["TW.ics", "XX.ics", "KZ", "KZ.ical", ".ics", "KZ.ics.ics"] {
            let e = member_state(bad).unwrap_err();
            assert_eq!(e.code, ErrorCode::NotFound, "{bad}");
        }
    }

    #[test]
    fn the_etag_is_a_strong_hash_of_the_bytes() {
        let a = etag(b"BEGIN:VCALENDAR");
        assert!(a.starts_with('"') && a.ends_with('"') && !a.starts_with("W/"));
        assert_eq!(a, etag(b"BEGIN:VCALENDAR"));
        assert_ne!(a, etag(b"BEGIN:VCALENDAR "));
    }

    #[test]
    fn if_none_match_takes_lists_stars_and_weak_forms() {
        let tag = etag(b"x");
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::IF_NONE_MATCH, HeaderValue::from_str(v).unwrap());
            h
        };
        assert!(matches(&with(&tag), &tag));
        assert!(matches(&with(&format!("\"other\", {tag}")), &tag));
        assert!(matches(&with(&format!("W/{tag}")), &tag));
        assert!(matches(&with("*"), &tag));
        assert!(!matches(&with("\"other\""), &tag));
        assert!(!matches(&HeaderMap::new(), &tag));
    }
}
