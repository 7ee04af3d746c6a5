//! One NATS request with a bound on the wait, and its answer as HTTP.
//!
//! Every call the gateway makes to NATS goes through [`ask`], so none can
//! hang a request: past [`NATS_TIMEOUT`] the client gets `unavailable`.

use std::time::Duration;

use async_nats::{Client, Message, RequestErrorKind};
use axum::{
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use bytes::Bytes;
use upr_domain::{ErrorCode, RejectError};
use upr_nats::contract::gateway::NATS_TIMEOUT;

use crate::http::{error_response, status_of};

/// Sends `payload` to `subject` and waits up to [`NATS_TIMEOUT`] for the
/// answer.
///
/// # Errors
/// `unavailable` when nothing answers (no responder, no connection) or the
/// answer does not come in time.
pub async fn ask(nats: &Client, subject: String, payload: Bytes) -> Result<Message, RejectError> {
    ask_within(nats, subject, payload, NATS_TIMEOUT).await
}

/// [`ask`] with a shorter bound, for answers a supervisor waits on
/// (`/healthz`).
///
/// # Errors
/// As [`ask`].
pub async fn ask_within(
    nats: &Client,
    subject: String,
    payload: Bytes,
    timeout: Duration,
) -> Result<Message, RejectError> {
    let request = nats.request(subject.clone(), payload);
    match tokio::time::timeout(timeout, request).await {
        Ok(Ok(message)) => Ok(message),
        Ok(Err(e)) => Err(RejectError::new(
            ErrorCode::Unavailable,
            match e.kind() {
                RequestErrorKind::NoResponders => {
                    format!("nothing answers {subject} on NATS right now")
                }
                RequestErrorKind::TimedOut => format!("no answer to {subject} in time"),
                _ => format!("NATS request {subject} failed: {e}"),
            },
        )),
        Err(_) => Err(RejectError::new(
            ErrorCode::Unavailable,
            format!("no answer to {subject} within {} ms", timeout.as_millis()),
        )),
    }
}

/// The HTTP status of a NATS answer `{"ok": ...}`: 200 for `ok`, else the
/// status of its error code. `None` when the payload is not such an answer.
pub fn answer_status(payload: &[u8]) -> Option<StatusCode> {
    #[derive(serde::Deserialize)]
    struct Head {
        ok: bool,
        #[serde(default)]
        error: Option<ErrorHead>,
    }
    #[derive(serde::Deserialize)]
    struct ErrorHead {
        code: ErrorCode,
    }
    let head: Head = serde_json::from_slice(payload).ok()?;
    match (head.ok, head.error) {
        (true, _) => Some(StatusCode::OK),
        (false, Some(error)) => Some(status_of(error.code)),
        (false, None) => None,
    }
}

/// Asks `subject` and answers with the NATS answer itself as the JSON body
/// (contract V3.5), its status decided by [`answer_status`].
pub async fn json(nats: &Client, subject: String, payload: Bytes) -> Response {
    match ask(nats, subject.clone(), payload).await {
        Ok(message) => match answer_status(&message.payload) {
            Some(status) => (
                status,
                [(header::CONTENT_TYPE, "application/json")],
                message.payload,
            )
                .into_response(),
            None => error_response(&RejectError::new(
                ErrorCode::Unavailable,
                format!("{subject} answered something that is not a query answer"),
            )),
        },
        Err(e) => error_response(&e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_map_to_the_statuses_of_contract_v3_5() {
        let cases: [(&str, Option<u16>); 8] = [
            (r#"{"ok":true,"review":{}}"#, Some(200)),
            (
                r#"{"ok":false,"error":{"code":"not_found","message":"x","field":null}}"#,
                Some(404),
            ),
            (
                r#"{"ok":false,"error":{"code":"invalid_field","message":"x","field":"min_seq"}}"#,
                Some(400),
            ),
            (
                r#"{"ok":false,"error":{"code":"invalid_json","message":"x","field":null}}"#,
                Some(400),
            ),
            (
                r#"{"ok":false,"error":{"code":"unavailable","message":"x","field":null}}"#,
                Some(503),
            ),
            (
                r#"{"ok":false,"error":{"code":"timeout","message":"x","field":null}}"#,
                Some(503),
            ),
            (r#"{"ok":false}"#, None),
            ("BEGIN:VCALENDAR", None),
        ];
        for (payload, status) in cases {
            assert_eq!(
                answer_status(payload.as_bytes()).map(|s| s.as_u16()),
                status,
                "{payload}"
            );
        }
    }
}
