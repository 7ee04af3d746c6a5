//! The HTTP surface: one [`Router`] over one [`AppState`], each area adding
//! its routes through its own `routes()` (see [`router`]), and what every
//! answer shares: the error body, the unknown-path answer, the refusal of
//! bodies on GET and the concurrency limit.

use std::{convert::Infallible, sync::Arc};

use async_nats::jetstream;
use axum::{
    Json, Router,
    error_handling::HandleErrorLayer,
    extract::Request,
    http::{StatusCode, Uri, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
};
use serde_json::json;
use tower::{BoxError, ServiceBuilder, limit::GlobalConcurrencyLimitLayer};
use upr_domain::{ErrorCode, RejectError};

use crate::{api, calendar, events, metrics::Metrics, ops, pages, webhooks};

/// What every handler shares. Cheap to clone: the NATS client and the
/// JetStream context are handles to one connection.
#[derive(Clone)]
pub struct AppState {
    /// The gateway's NATS connection (its own user, read rights only):
    /// queries to the projection and the notifier's status.
    pub nats: async_nats::Client,
    /// JetStream over the same connection, for reading streams such as
    /// `UPR_NOTIFICATIONS` (never for writing: the user may not).
    pub js: jetstream::Context,
    /// The request counters and latency histogram of `/metrics`.
    pub metrics: Arc<Metrics>,
    /// The webhook counters per subscription, for `/metrics` (none until
    /// the deliveries start).
    pub webhooks: webhooks::Metrics,
    /// The `/events` hub, for `/metrics` to count its open streams (`None`
    /// until the live feed starts).
    pub events: Option<events::Hub>,
}

impl AppState {
    /// State over a connected client.
    pub fn new(nats: async_nats::Client) -> Self {
        let js = jetstream::new(nats.clone());
        Self {
            nats,
            js,
            metrics: Arc::default(),
            webhooks: webhooks::Metrics::default(),
            events: None,
        }
    }
}

/// Every route of the gateway, with the bounds of contract V3.5 around them:
/// bodies refused on GET, at most `max_requests` in progress (past it, 503
/// at once), and a JSON `not_found` for any other path.
pub fn router(state: AppState, max_requests: usize) -> Router {
    let metrics = state.metrics.clone();
    Router::new()
        .merge(ops::routes())
        .merge(api::routes())
        .merge(calendar::routes())
        .merge(pages::routes())
        .fallback(unknown_path)
        .method_not_allowed_fallback(wrong_method)
        .layer(middleware::from_fn(refuse_body))
        // One semaphore for the whole router (a plain concurrency limit
        // would be copied into each route), and load shedding in front of
        // it so a request past the limit is answered at once, not queued.
        .layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(overloaded))
                .load_shed()
                .layer(GlobalConcurrencyLimitLayer::new(max_requests)),
        )
        // Outermost, so the 503s of the limit are counted too.
        .layer(middleware::from_fn_with_state(
            metrics,
            crate::metrics::track,
        ))
        .with_state(state)
}

/// The HTTP status of an answer carrying `code` (contract V3.5).
pub fn status_of(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::NotFound => StatusCode::NOT_FOUND,
        ErrorCode::Unavailable | ErrorCode::Timeout => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::Conflict | ErrorCode::LimitExceeded => StatusCode::CONFLICT,
        ErrorCode::Forbidden => StatusCode::FORBIDDEN,
        ErrorCode::InvalidJson
        | ErrorCode::UnknownType
        | ErrorCode::MissingField
        | ErrorCode::InvalidField => StatusCode::BAD_REQUEST,
    }
}

/// `{"ok": false, "error": {...}}` with the status its code calls for: the
/// shape of a NATS answer, so a client reads the gateway's own refusals
/// (a bad query parameter, NATS unreachable) like the projection's.
pub fn error_response(error: &RejectError) -> Response {
    (
        status_of(error.code),
        Json(json!({"ok": false, "error": error})),
    )
        .into_response()
}

async fn unknown_path(uri: Uri) -> Response {
    error_response(&RejectError::new(
        ErrorCode::NotFound,
        format!("nothing is served at {}", uri.path()),
    ))
}

/// A known path asked with another method than GET or HEAD: 405 in the
/// shape of every other refusal, naming the method, and `Allow`.
async fn wrong_method(method: axum::http::Method, uri: Uri) -> Response {
    let mut response = error_response(&RejectError::invalid(
        "method",
        format_args!(
            "{method} is not served at {}: only GET and HEAD are",
            uri.path()
        ),
    ));
    *response.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
    response
        .headers_mut()
        .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
    response
}

/// Refuses a request that carries a body: nothing here reads one, and a
/// body a server does not read is a way to make it hold a connection.
/// Public for routes mounted outside [`router`]'s limit (`/events`).
pub async fn refuse_body(request: Request, next: Next) -> Response {
    let headers = request.headers();
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .is_some_and(|v| v.as_bytes() != b"0");
    if declared || headers.contains_key(header::TRANSFER_ENCODING) {
        return error_response(&RejectError::invalid(
            "body",
            format_args!(
                "is not allowed: a {} request carries no body",
                request.method()
            ),
        ));
    }
    next.run(request).await
}

async fn overloaded(error: BoxError) -> Result<Response, Infallible> {
    if error.is::<tower::load_shed::error::Overloaded>() {
        let mut response = error_response(&RejectError::new(
            ErrorCode::Unavailable,
            "too many requests in progress; try again in a second",
        ));
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        return Ok(response);
    }
    Ok(error_response(&RejectError::new(
        ErrorCode::Unavailable,
        format!("the gateway failed: {error}"),
    )))
}
