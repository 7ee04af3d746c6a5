//! Operations: `/healthz` for supervisors and load balancers, `/metrics`
//! (see [`crate::metrics`]) for Prometheus.

use axum::{
    Json, Router,
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
};
use serde_json::json;
use upr_nats::contract::query;

use crate::http::AppState;

/// How long `/healthz` waits for the projection: a supervisor's probe
/// (compose: `upr-gateway healthcheck`, 3 s) must get an answer in time.
pub const HEALTH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// The operations routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(crate::metrics::handler))
}

/// 200 while NATS is connected and the projection answers its status
/// query, else 503: a gateway whose answers would all be 503 is not
/// healthy, whatever its own process thinks.
async fn healthz(State(state): State<AppState>) -> Response {
    let connected = matches!(
        state.nats.connection_state(),
        async_nats::connection::State::Connected
    );
    if !connected {
        return unhealthy("not connected to NATS");
    }
    let status = crate::query::ask_within(
        &state.nats,
        query::STATUS.to_string(),
        "".into(),
        HEALTH_TIMEOUT,
    );
    match status.await {
        Ok(m) if crate::query::answer_status(&m.payload) == Some(StatusCode::OK) => {
            (StatusCode::OK, Json(json!({"ok": true}))).into_response()
        }
        Ok(_) => unhealthy("the projection's status query did not answer ok"),
        Err(e) => unhealthy(&e.message),
    }
}

fn unhealthy(why: &str) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({"ok": false, "error": {"code": "unavailable", "message": why, "field": null}})),
    )
        .into_response()
}
