//! `GET /v1/health` (every backend's state, counts and last check) and
//! `GET /v1/events` (the recent transitions).

use axum::{
    Json,
    extract::{Query, State as AxState},
};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::api::Ctx;

/// `GET /v1/health`
pub async fn get_health(AxState(ctx): AxState<Ctx>) -> Json<Value> {
    let health = ctx.rt.lock().await.health.clone();
    let v = health.view();
    Json(serde_json::to_value(v).unwrap_or(Value::Null))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// At most this many (the most recent); default 100.
    #[serde(default)]
    limit: Option<usize>,
    /// Only events after this sequence number.
    #[serde(default)]
    since: Option<u64>,
}

/// `GET /v1/events?limit=N&since=SEQ`: oldest first.
pub async fn get_events(
    AxState(ctx): AxState<Ctx>,
    q: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, (axum::http::StatusCode, Json<Value>)> {
    let Query(q) = q.map_err(|e| {
        (
            axum::http::StatusCode::BAD_REQUEST,
            Json(json!({ "error": e.body_text() })),
        )
    })?;
    let health = ctx.rt.lock().await.health.clone();
    let events = health.events(q.limit.unwrap_or(100), q.since.unwrap_or(0));
    Ok(Json(json!({ "events": events })))
}
