//! A worker's bucket over HTTP: delta sync as JSON, and its changes live as Server-Sent Events
//! (feature `http`).
//!
//! [`router`] gives an [`axum::Router`] of two routes, to nest wherever the application likes:
//!
//! | route | answer |
//! |---|---|
//! | `GET /` | the whole bucket: `{"kind":"full","version":N,"entries":[{"key":K,"value":V},…]}` |
//! | `GET /?since=V` | what a client at version `V` needs: a `full` as above, `{"kind":"delta","from":V,"version":N,"changes":[…]}`, or `{"kind":"no_change","version":N}` |
//! | `GET /events` | Server-Sent Events: the bucket, then every change as it happens |
//!
//! Keys and values are written with their `Serialize` implementations; versions are JSON
//! numbers (they stay below 2^53, exact in JavaScript). A `since` that is not a version is a
//! `400` with `{"error":"…"}`. Every JSON answer has `Cache-Control: no-store`: `since` is the
//! conditional request, and `no_change` its "not modified".
//!
//! Nested at `/sessions`, the routes are `/sessions`, `/sessions?since=V` and
//! `/sessions/events`; axum does not match `/sessions/` (with the slash) to the first.
//!
//! # Changes
//!
//! A change, in a delta or in an SSE `change` event, is one of:
//!
//! - `{"key":K,"value":V}`: the key has the value `V` now (inserted or updated);
//! - `{"key":K,"patch":P}`: the key's value is the one the client holds with the
//!   [RFC 7386](https://www.rfc-editor.org/rfc/rfc7386) merge patch `P` applied (members of
//!   `P` replace the client's, recursively into objects; a `null` member removes). Sent instead
//!   of the value when the client's old value is known, the patch is shorter than the value and
//!   gives exactly the value (a member that becomes `null`, for one, cannot be patched);
//! - `{"key":K,"removed":true}`: the key left the bucket. A client that does not hold the key
//!   ignores it.
//!
//! A delta holds at most one change per key (its last), in the order of those changes.
//!
//! # Events
//!
//! `GET /events` is an `text/event-stream` of:
//!
//! - `event: full`, `id: N`, `data: {"kind":"full",…}`: the whole bucket at version `N`; the
//!   client replaces its copy;
//! - `event: change`, `id: N`, `data: <a change>`: one change, at version `N` (live changes
//!   patch against the value the key had at version `N - 1`);
//! - comments (lines starting with `:`): a keep-alive every 15 s, so that proxies keep the
//!   stream open, and a notice when this stream fell behind (see below).
//!
//! It starts with what the client needs, then goes on with the live changes:
//!
//! - without a version: an `event: full`, so a page needs nothing but the stream;
//! - with one, in the `Last-Event-ID` header (as a browser's `EventSource` sends it on a
//!   reconnect; it wins over the query) or as `?since=V`: the changes since `V`, each as its own
//!   `change` event, or one `full` if they are no longer retained, or nothing if `V` is current.
//!
//! The changes of such a catch-up are whole values, never patches, each with the version of
//! that key's last change as its `id` (and the last one with the version the catch-up brings
//! the client to), in the order of those versions. A client that loses the stream part-way
//! and reconnects with the last `id` it saw gets exactly the changes it had not seen, then the
//! live ones: no gap, no duplicate. Live changes have the version they made as their `id`.
//! Until the last change of a catch-up has arrived, a copy is not at any one version of the
//! bucket: resume it with the stream, not with `GET /?since=` (whose patches are against the
//! values at that version).
//!
//! Each stream has its own queue of the worker's events ([`Builder::event_capacity`]), so a
//! slow client does not slow the worker or the other clients. One that falls further behind
//! gets a comment saying so, then a catch-up from the last version it was sent (the changes, or
//! a `full`), then the live changes again. The stream ends when the worker shuts down; a
//! request after that gets a `503`.
//!
//! # Example
//!
//! ```no_run
//! use cache_worker::{CacheWorker, Worker};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, PartialEq, Serialize, Deserialize)]
//! struct Session {
//!     film: String,
//!     seats_available: u32,
//! }
//!
//! struct Sessions;
//!
//! impl CacheWorker for Sessions {
//!     type Key = String;
//!     type Value = Session;
//!     type Error = std::io::Error;
//!
//!     async fn load(&self, _id: &String) -> Result<Option<Session>, std::io::Error> {
//!         Ok(None) // the ticketing system in real life
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let sessions = Worker::builder(Sessions).bucket("sessions").start().await?;
//! // GET /sessions, /sessions?since=V and /sessions/events.
//! let app = axum::Router::new().nest("/sessions", cache_worker::http::router(sessions.clone()));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! axum::serve(listener, app).await?;
//! # Ok(()) }
//! ```
//!
//! In a page:
//!
//! ```js
//! const copy = new Map();
//! const events = new EventSource("/sessions/events");
//! events.addEventListener("full", (e) => {
//!   copy.clear();
//!   for (const { key, value } of JSON.parse(e.data).entries) copy.set(key, value);
//! });
//! events.addEventListener("change", (e) => {
//!   const change = JSON.parse(e.data);
//!   if (change.removed) copy.delete(change.key);
//!   else if ("patch" in change) copy.set(change.key, mergePatch(copy.get(change.key), change.patch));
//!   else copy.set(change.key, change.value);
//! });
//! ```
//!
//! [`Builder::event_capacity`]: crate::Builder::event_capacity

mod json;
mod sse;

use std::sync::Arc;

use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response, Sse};
use axum::routing::get;
use serde::Deserialize;

use crate::{CacheWorker, Worker};

/// The routes of `worker`'s bucket: `GET /` (with `?since=V`) and `GET /events`. See the
/// [module docs](self) for what they answer.
///
/// The router holds a handle to the worker (so the worker runs while it is served); nest it
/// under a path of your application:
///
/// ```
/// # use cache_worker::{CacheWorker, Worker};
/// # struct Prices;
/// # impl CacheWorker for Prices {
/// #     type Key = String; type Value = u32; type Error = std::io::Error;
/// #     async fn load(&self, _: &String) -> Result<Option<u32>, std::io::Error> { Ok(None) }
/// # }
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), cache_worker::Error> {
/// let prices = Worker::builder(Prices).bucket("prices").start().await?;
/// let app: axum::Router = axum::Router::new().nest("/prices", cache_worker::http::router(prices));
/// # Ok(()) }
/// ```
pub fn router<W: CacheWorker>(worker: Worker<W>) -> Router {
    Router::new()
        .route("/", get(sync::<W>))
        .route("/events", get(events::<W>))
        .with_state(Served {
            worker,
            renders: Arc::default(),
        })
}

/// What the handlers share: the worker, and the JSON of its latest changes.
struct Served<W: CacheWorker> {
    worker: Worker<W>,
    renders: Arc<sse::Renders>,
}

// Not derived: `W` itself need not be `Clone`.
impl<W: CacheWorker> Clone for Served<W> {
    fn clone(&self) -> Self {
        Served {
            worker: self.worker.clone(),
            renders: self.renders.clone(),
        }
    }
}

/// The query of both routes.
#[derive(Deserialize)]
struct SinceQuery {
    since: Option<String>,
}

/// `GET /` and `GET /?since=V`.
async fn sync<W: CacheWorker>(
    State(Served { worker, .. }): State<Served<W>>,
    query: Result<Query<SinceQuery>, QueryRejection>,
) -> Response {
    let since = match since_in_query(query) {
        Ok(since) => since,
        Err(bad) => return bad.into_response(),
    };
    let synced = worker.inner.sync(since);
    match json::synced(&synced) {
        Ok(body) => json_response(StatusCode::OK, body),
        Err(error) => unserializable(&worker, &error),
    }
}

/// `GET /events`.
async fn events<W: CacheWorker>(
    State(Served { worker, renders }): State<Served<W>>,
    headers: HeaderMap,
    query: Result<Query<SinceQuery>, QueryRejection>,
) -> Response {
    let since = match last_event_id(&headers) {
        Ok(Some(since)) => Some(since),
        Ok(None) => match since_in_query(query) {
            Ok(since) => since,
            Err(bad) => return bad.into_response(),
        },
        Err(bad) => return bad.into_response(),
    };
    if worker.inner.closed.is_cancelled() {
        return json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            json::error("the worker has shut down"),
        );
    }
    match sse::Feed::start(worker.clone(), renders, since) {
        Ok(feed) => {
            let mut response = Sse::new(feed.into_stream())
                .keep_alive(sse::keep_alive())
                .into_response();
            // Asks nginx-like proxies not to buffer the stream.
            response
                .headers_mut()
                .insert("x-accel-buffering", HeaderValue::from_static("no"));
            response
        }
        Err(error) => unserializable(&worker, &error),
    }
}

/// A request's `since` that is not a version: a `400` with a JSON error.
struct BadVersion(String);

impl IntoResponse for BadVersion {
    fn into_response(self) -> Response {
        json_response(StatusCode::BAD_REQUEST, json::error(&self.0))
    }
}

fn since_in_query(
    query: Result<Query<SinceQuery>, QueryRejection>,
) -> Result<Option<u64>, BadVersion> {
    let Query(query) = query.map_err(|rejection| BadVersion(rejection.body_text()))?;
    query
        .since
        .map(|since| parse_version(&since, "`since`"))
        .transpose()
}

/// The `Last-Event-ID` header, if the request has one that is not empty (the SSE standard
/// says a browser sends none when it has no id; an empty one is read the same).
fn last_event_id(headers: &HeaderMap) -> Result<Option<u64>, BadVersion> {
    let Some(value) = headers.get("last-event-id") else {
        return Ok(None);
    };
    let text = value
        .to_str()
        .map_err(|_| BadVersion("`Last-Event-ID` must be a version (an unsigned integer)".into()))?
        .trim();
    if text.is_empty() {
        return Ok(None);
    }
    parse_version(text, "`Last-Event-ID`").map(Some)
}

fn parse_version(text: &str, what: &str) -> Result<u64, BadVersion> {
    text.parse().map_err(|_| {
        BadVersion(format!(
            "{what} must be a version (an unsigned integer, as the `version` of an earlier answer), not {text:?}"
        ))
    })
}

fn json_response(status: StatusCode, body: String) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

/// A key or a value whose `Serialize` fails: the application's bug, answered with a `500`.
fn unserializable<W: CacheWorker>(worker: &Worker<W>, error: &serde_json::Error) -> Response {
    tracing::error!(
        bucket = worker.inner.bucket_name(),
        %error,
        "the bucket cannot be written as JSON"
    );
    json_response(
        StatusCode::INTERNAL_SERVER_ERROR,
        json::error(&format!("the bucket cannot be written as JSON: {error}")),
    )
}
