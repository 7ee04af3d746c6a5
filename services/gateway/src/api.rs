//! The read API (`/api/v1/...`, contract V3.5): each route is one query of
//! the projection (contract section 4), its answer passed through as the
//! body. The gateway checks the path and the query parameters itself, so
//! a bad one is a 400 naming the field and never reaches NATS as a subject.

use axum::{
    Router,
    extract::{Path, Query, State, rejection::QueryRejection},
    response::Response,
    routing::get,
};
use bytes::Bytes;
use serde_json::{Map, Value};
use upr_domain::{Country, RejectError, ReviewKey, Session};
use upr_nats::contract::query as subjects;

use crate::http::{AppState, error_response};

/// The read API's routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/reviews/{country}/{session}", get(review))
        .route("/api/v1/sessions/{session}", get(session))
        .route("/api/v1/countries/{country}", get(country))
        .route("/api/v1/upcoming", get(upcoming))
        .route("/api/v1/status", get(status))
}

/// The query string as pairs; a string that cannot be decoded is refused
/// like a bad parameter.
pub type Params = Result<Query<Vec<(String, String)>>, QueryRejection>;

/// The options every query takes.
pub const MIN_SEQ_ONLY: &[&str] = &["min_seq"];
/// The options of `upcoming`.
pub const UPCOMING_OPTIONS: &[&str] = &["min_seq", "within_days", "country"];

/// The NATS query payload for the query parameters `params`: empty without
/// options, else a JSON object such as `{"min_seq": 42}`. Numbers are
/// checked here (they become JSON numbers); the projection checks ranges
/// and codes as it does for any client. An empty value counts as absent,
/// as an HTML form sends an empty field.
///
/// # Errors
/// `invalid_field` naming the parameter: unknown, repeated, or not a whole
/// number where one is expected.
pub fn payload(params: &[(String, String)], allowed: &[&str]) -> Result<Bytes, RejectError> {
    let mut options = Map::new();
    for (key, value) in params {
        if !allowed.contains(&key.as_str()) {
            return Err(RejectError::unknown_field(key.clone(), allowed));
        }
        if options.contains_key(key) {
            return Err(RejectError::invalid(key.clone(), "is given more than once"));
        }
        let value = value.trim();
        if value.is_empty() {
            continue;
        }
        let json = match key.as_str() {
            "country" => Value::String(value.to_string()),
            _ => Value::from(value.parse::<u64>().map_err(|_| {
                RejectError::invalid(
                    key.clone(),
                    format_args!("must be a whole number >= 0, got {value:?}"),
                )
            })?),
        };
        options.insert(key.clone(), json);
    }
    if options.is_empty() {
        return Ok(Bytes::new());
    }
    Ok(Bytes::from(Value::Object(options).to_string()))
}

/// The pairs of `params`, or the refusal of a query string that cannot be
/// read.
///
/// # Errors
/// `invalid_field` (`query`) with the decoder's reason.
pub fn pairs(params: Params) -> Result<Vec<(String, String)>, RejectError> {
    params
        .map(|Query(p)| p)
        .map_err(|e| RejectError::invalid("query", format_args!("cannot be read: {e}")))
}

/// A path's country code, as the subject needs it (upper case).
///
/// # Errors
/// `invalid_field` (`country`).
pub fn country_code(text: &str) -> Result<Country, RejectError> {
    Country::parse(text).map_err(|e| RejectError::invalid("country", e))
}

/// A path's session number.
///
/// # Errors
/// `invalid_field` (`session`).
pub fn session_number(text: &str) -> Result<Session, RejectError> {
    Session::parse(text).map_err(|e| RejectError::invalid("session", e))
}

async fn ask(
    state: &AppState,
    subject: Result<String, RejectError>,
    params: Params,
    allowed: &[&str],
) -> Response {
    let request = subject.and_then(|s| Ok((s, payload(&pairs(params)?, allowed)?)));
    match request {
        Ok((subject, payload)) => crate::query::json(&state.nats, subject, payload).await,
        Err(e) => error_response(&e),
    }
}

async fn review(
    State(state): State<AppState>,
    Path((country, session)): Path<(String, String)>,
    params: Params,
) -> Response {
    let subject = country_code(&country).and_then(|country| {
        Ok(subjects::review(ReviewKey {
            country,
            session: session_number(&session)?,
        }))
    });
    ask(&state, subject, params, MIN_SEQ_ONLY).await
}

async fn session(
    State(state): State<AppState>,
    Path(session): Path<String>,
    params: Params,
) -> Response {
    let subject = session_number(&session).map(subjects::session);
    ask(&state, subject, params, MIN_SEQ_ONLY).await
}

async fn country(
    State(state): State<AppState>,
    Path(country): Path<String>,
    params: Params,
) -> Response {
    let subject = country_code(&country).map(subjects::country);
    ask(&state, subject, params, MIN_SEQ_ONLY).await
}

async fn upcoming(State(state): State<AppState>, params: Params) -> Response {
    ask(
        &state,
        Ok(subjects::UPCOMING.to_string()),
        params,
        UPCOMING_OPTIONS,
    )
    .await
}

async fn status(State(state): State<AppState>, params: Params) -> Response {
    ask(
        &state,
        Ok(subjects::STATUS.to_string()),
        params,
        MIN_SEQ_ONLY,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use upr_domain::ErrorCode;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn query_parameters_become_the_nats_options() {
        assert_eq!(payload(&[], MIN_SEQ_ONLY).unwrap(), "");
        assert_eq!(
            payload(&pairs(&[("min_seq", "42")]), MIN_SEQ_ONLY).unwrap(),
            r#"{"min_seq":42}"#
        );
        assert_eq!(
            payload(
                &pairs(&[("country", "kz"), ("within_days", "30"), ("min_seq", "")]),
                UPCOMING_OPTIONS
            )
            .unwrap(),
            r#"{"country":"kz","within_days":30}"#
        );
    }

    #[test]
    fn a_bad_parameter_is_refused_naming_it() {
        for (params, allowed, field) in [
            (
                vec![("within_days", "abc")],
                UPCOMING_OPTIONS,
                "within_days",
            ),
            (vec![("min_seq", "-1")], MIN_SEQ_ONLY, "min_seq"),
            (vec![("min_seq", "1.5")], MIN_SEQ_ONLY, "min_seq"),
            (vec![("within_days", "3")], MIN_SEQ_ONLY, "within_days"),
            (
                vec![("min_seq", "1"), ("min_seq", "2")],
                MIN_SEQ_ONLY,
                "min_seq",
            ),
            (vec![("colour", "red")], UPCOMING_OPTIONS, "colour"),
        ] {
            let e = payload(&pairs(&params), allowed).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidField, "{params:?}");
            assert_eq!(e.field.as_deref(), Some(field), "{params:?}");
            assert!(e.message.contains(field), "{}", e.message);
        }
    }

    #[test]
    fn path_segments_are_checked_before_they_become_subjects() {
        assert_eq!(country_code("kz").unwrap().as_str(), "KZ");
        for bad in ["K", "KZ.>", "*", "XX", "KZZ"] {
            let e = country_code(bad).unwrap_err();
            assert_eq!(e.field.as_deref(), Some("country"), "{bad}");
        }
        assert_eq!(session_number("48").unwrap().get(), 48);
        for bad in ["0", "1000", "4.8", "x", ">"] {
            let e = session_number(bad).unwrap_err();
            assert_eq!(e.field.as_deref(), Some("session"), "{bad}");
        }
    }
}
