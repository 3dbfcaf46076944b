//! The HTTP side of the fake: its state, its routes and how it answers.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use jiff::tz::TimeZone;
use serde_json::{Map, Value};

use super::Route;
use super::feed::{Collection, bad_row_of};

/// What the fake serves and how: shared by the server, the handle and the live mode.
pub(super) struct FakeState {
    pub(super) token: String,
    pub(super) time_zone: TimeZone,
    pub(super) cinemas: Collection,
    pub(super) films: Collection,
    pub(super) sessions: Mutex<Collection>,
    /// Every property of a session row, for `$select` checks.
    pub(super) session_fields: HashSet<String>,
    pub(super) knobs: Mutex<Knobs>,
    pub(super) requests: [AtomicU64; 3],
}

#[derive(Default)]
pub(super) struct Knobs {
    pub(super) failure: Option<Failure>,
    pub(super) latency: Duration,
    pub(super) bad_row: bool,
    pub(super) malformed: bool,
}

pub(super) struct Failure {
    pub(super) status: StatusCode,
    /// `None`: until cleared.
    pub(super) remaining: Option<u64>,
}

/// Locks a mutex; a panic elsewhere while it was held leaves plain data, still usable.
pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The OData routes under `/WSVistaWebClient/OData.svc/`, and a 404 for anything else.
pub(super) fn router(state: Arc<FakeState>) -> Router {
    let route = |route: Route| {
        get(
            move |State(state): State<Arc<FakeState>>,
                  headers: HeaderMap,
                  Query(query): Query<HashMap<String, String>>| async move {
                serve(&state, route, &headers, &query).await
            },
        )
    };
    Router::new()
        .route("/WSVistaWebClient/OData.svc/Cinemas", route(Route::Cinemas))
        .route(
            "/WSVistaWebClient/OData.svc/GetScheduledFilms",
            route(Route::Films),
        )
        .route(
            "/WSVistaWebClient/OData.svc/Sessions",
            route(Route::Sessions),
        )
        .fallback(|| async { (StatusCode::NOT_FOUND, "fake Vista: no such resource") })
        .with_state(state)
}

/// Answers one request; see [`FakeVista`](super::FakeVista) for the order of the checks.
async fn serve(
    state: &FakeState,
    route: Route,
    headers: &HeaderMap,
    query: &HashMap<String, String>,
) -> Response {
    state.requests[route.index()].fetch_add(1, Ordering::SeqCst);
    let latency = lock(&state.knobs).latency;
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let token = headers.get("connectapitoken").and_then(|v| v.to_str().ok());
    if token != Some(state.token.as_str()) {
        return (
            StatusCode::UNAUTHORIZED,
            "fake Vista: missing or invalid connectapitoken",
        )
            .into_response();
    }
    let (failure, malformed, bad_row) = {
        let mut knobs = lock(&state.knobs);
        let failure = match &mut knobs.failure {
            Some(Failure {
                status,
                remaining: None,
            }) => Some(*status),
            Some(Failure {
                status,
                remaining: Some(remaining),
            }) => {
                let status = *status;
                *remaining = remaining.saturating_sub(1);
                if *remaining == 0 {
                    knobs.failure = None;
                }
                Some(status)
            }
            None => None,
        };
        (failure, knobs.malformed, knobs.bad_row)
    };
    if let Some(status) = failure {
        let body = format!("fake Vista: injected failure (HTTP {})", status.as_u16());
        return (status, body).into_response();
    }
    if malformed {
        return json_response(br#"{"odata.metadata":"cut off","value":[{"ID":"10"#.to_vec());
    }
    let mut collection = match route {
        Route::Cinemas => state.cinemas.clone(),
        Route::Films => state.films.clone(),
        Route::Sessions => lock(&state.sessions).clone(),
    };
    if bad_row {
        collection.rows.push(bad_row_of(route));
    }
    match answer(state, route, collection, query) {
        Ok(body) => json_response(body),
        Err(message) => (StatusCode::BAD_REQUEST, message).into_response(),
    }
}

fn json_response(body: Vec<u8>) -> Response {
    (
        [(
            CONTENT_TYPE,
            "application/json;odata=minimalmetadata;charset=utf-8",
        )],
        body,
    )
        .into_response()
}

/// Applies `$filter` and `$select` and writes the OData envelope.
fn answer(
    state: &FakeState,
    route: Route,
    mut collection: Collection,
    query: &HashMap<String, String>,
) -> Result<Vec<u8>, String> {
    if let Some(filter) = query.get("$filter") {
        let (field, text) = parse_filter(filter)?;
        collection
            .rows
            .retain(|row| row.get(field).and_then(Value::as_str) == Some(text.as_str()));
    }
    if let Some(select) = query.get("$select") {
        let fields: Vec<&str> = select.split(',').map(str::trim).collect();
        let known = |field: &str| match route {
            Route::Sessions => state.session_fields.contains(field),
            Route::Cinemas => state.cinemas.rows.iter().any(|row| row.contains_key(field)),
            Route::Films => state.films.rows.iter().any(|row| row.contains_key(field)),
        };
        if let Some(unknown) = fields.iter().find(|field| !known(field)) {
            return Err(format!(
                "fake Vista: $select names an unknown property {unknown:?} of {}",
                route.collection()
            ));
        }
        for row in &mut collection.rows {
            row.retain(|key, _| fields.contains(&key.as_str()));
        }
    }
    let mut envelope = Map::new();
    envelope.insert(
        "odata.metadata".to_owned(),
        Value::from(collection.metadata),
    );
    envelope.insert(
        "value".to_owned(),
        Value::Array(collection.rows.into_iter().map(Value::Object).collect()),
    );
    serde_json::to_vec(&Value::Object(envelope)).map_err(|e| e.to_string())
}

/// Parses the only `$filter` form the fake knows: `<Field> eq '<text>'` (`''` is a quote).
fn parse_filter(filter: &str) -> Result<(&str, String), String> {
    let unsupported = || {
        format!("fake Vista: unsupported $filter {filter:?} (only `<Field> eq '<text>'` is known)")
    };
    let (field, literal) = filter.trim().split_once(" eq ").ok_or_else(unsupported)?;
    let text = literal
        .trim()
        .strip_prefix('\'')
        .and_then(|l| l.strip_suffix('\''))
        .ok_or_else(unsupported)?;
    Ok((field.trim(), text.replace("''", "'")))
}
