//! A fake Vista Connect server for tests and demos: [`FakeVista`].
//!
//! It serves the recorded feed of a Berlin cinema group (13 cinemas, 114 film rows for 54
//! films, 362 sessions) on `127.0.0.1`, with the showtimes moved so that the sessions are
//! upcoming, and knobs to change seats, remove sessions, inject failures and latency, and serve
//! unreadable rows or JSON — all usable while it serves, from any thread.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), cache_worker::vista::VistaError> {
//! use cache_worker::vista::VistaClient;
//! use cache_worker::vista::testing::{FakeVista, Route};
//!
//! let fake = FakeVista::start().await;
//! let client = VistaClient::new(fake.base_url(), fake.token())?;
//! assert_eq!(client.cinemas().await?.items.len(), 13);
//!
//! fake.set_seats("1001-17024", 3);
//! let session = client.session("1001-17024").await?.expect("still there");
//! assert_eq!(session.seats_available, 3);
//!
//! fake.remove_session("1001-17024");
//! assert_eq!(client.session("1001-17024").await?, None);
//! assert_eq!(fake.requests(Route::Sessions), 2);
//! # Ok(()) }
//! ```

mod feed;
mod live;
mod server;

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp, civil};
use serde_json::Value;
use tokio::task::JoinHandle;

use feed::{
    CINEMAS_JSON, FILMS_JSON, SESSIONS_JSON, find, load, row_id, set_seats, set_showtime_of,
    shift_sessions,
};
use server::{Failure, FakeState, Knobs, lock, router};

/// The path under which the OData routes are served; [`FakeVista::base_url`] ends with it.
const BASE_PATH: &str = "/WSVistaWebClient/";
/// The token of [`FakeVista::start`].
const DEFAULT_TOKEN: &str = "fake-vista-token";

/// One of the fake's OData routes, for its request counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Route {
    /// `GET OData.svc/Cinemas`.
    Cinemas,
    /// `GET OData.svc/GetScheduledFilms`.
    Films,
    /// `GET OData.svc/Sessions` (with or without `$filter`).
    Sessions,
}

impl Route {
    const ALL: [Route; 3] = [Route::Cinemas, Route::Films, Route::Sessions];

    /// The OData collection name, as in the URL.
    #[must_use]
    pub fn collection(self) -> &'static str {
        match self {
            Route::Cinemas => "Cinemas",
            Route::Films => "GetScheduledFilms",
            Route::Sessions => "Sessions",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// A fake Vista Connect server on `127.0.0.1`, serving the recorded feed.
///
/// Cheap to clone: clones share the server, which stops when the last clone is dropped.
///
/// **The shift.** The recorded showtimes (2019) are moved by one exact duration, a whole
/// number of minutes, so that the earliest show starts [`first_show_in`] from now (5 minutes
/// by default) in the fake's time zone, and the spacing of all shows is kept. Showtimes stay
/// naive local times; each business date is recomputed from the moved showtime with a 6 AM
/// cut-off, as a real Vista does (a show moved to 01:30 belongs to the previous business day).
/// Moving by whole days instead would keep the recorded clock times but could not make the
/// first show start minutes from now, which is what polling tests and demos need.
///
/// **Requests** are counted per [`Route`] on arrival, before the latency, the token check and
/// any injected failure. Then, in order: the latency is waited, the `connectapitoken` header
/// is checked (401 if missing or wrong), an injected failure answers, malformed JSON is
/// served if asked, and otherwise the collection is served, with a bad row appended if asked,
/// then filtered by `$filter` (only `<Field> eq '<text>'`) and cut down by `$select`. An
/// unsupported `$filter` or an unknown `$select` field is a 400.
///
/// [`first_show_in`]: FakeVistaBuilder::first_show_in
#[derive(Clone)]
pub struct FakeVista {
    inner: Arc<Inner>,
}

struct Inner {
    addr: SocketAddr,
    base_url: String,
    shift: SignedDuration,
    state: Arc<FakeState>,
    server: JoinHandle<()>,
    live: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.server.abort();
        if let Some(live) = lock(&self.live).take() {
            live.abort();
        }
    }
}

/// Settings of a [`FakeVista`] before it starts: [`FakeVista::builder`].
#[derive(Debug)]
#[must_use]
pub struct FakeVistaBuilder {
    token: String,
    time_zone: TimeZone,
    first_show_in: Duration,
    now: Option<Timestamp>,
    live: Option<Duration>,
}

impl FakeVistaBuilder {
    /// The token the server accepts (default `"fake-vista-token"`).
    pub fn token(mut self, token: &str) -> Self {
        token.clone_into(&mut self.token);
        self
    }

    /// The cinema's time zone, in which the showtimes are moved (default: the system's).
    /// Give the client the same zone ([`VistaClient::with_time_zone`]).
    ///
    /// [`VistaClient::with_time_zone`]: crate::vista::VistaClient::with_time_zone
    pub fn time_zone(mut self, time_zone: TimeZone) -> Self {
        self.time_zone = time_zone;
        self
    }

    /// How long from now the earliest show starts (default 5 minutes; rounded up to a whole
    /// minute of the local clock).
    pub fn first_show_in(mut self, first_show_in: Duration) -> Self {
        self.first_show_in = first_show_in;
        self
    }

    /// The "now" the showtimes are moved against (default: the real now), for tests that must
    /// know the exact showtimes.
    pub fn now(mut self, now: Timestamp) -> Self {
        self.now = Some(now);
        self
    }

    /// Starts the live mode right away: see [`FakeVista::start_live`].
    pub fn live(mut self, period: Duration) -> Self {
        self.live = Some(period);
        self
    }

    /// Binds `127.0.0.1:0` and starts serving on the current tokio runtime.
    ///
    /// # Errors
    ///
    /// The error of binding the socket, or `InvalidData` if the moved showtimes leave jiff's
    /// range (a `first_show_in` of centuries).
    pub async fn start(self) -> io::Result<FakeVista> {
        let now = self.now.unwrap_or_else(Timestamp::now);
        let (sessions, shift) = shift_sessions(
            load(SESSIONS_JSON)?,
            &self.time_zone,
            now,
            self.first_show_in,
        )?;
        let session_fields = sessions
            .rows
            .iter()
            .flat_map(|row| row.keys().cloned())
            .collect();
        let state = Arc::new(FakeState {
            token: self.token,
            time_zone: self.time_zone,
            cinemas: load(CINEMAS_JSON)?,
            films: load(FILMS_JSON)?,
            sessions: Mutex::new(sessions),
            session_fields,
            knobs: Mutex::new(Knobs::default()),
            requests: Default::default(),
        });
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let app = router(Arc::clone(&state));
        let server = tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, app).await {
                tracing::error!(%error, "the fake Vista server stopped");
            }
        });
        let fake = FakeVista {
            inner: Arc::new(Inner {
                addr,
                base_url: format!("http://{addr}{BASE_PATH}"),
                shift,
                state,
                server,
                live: Mutex::new(None),
            }),
        };
        if let Some(period) = self.live {
            fake.start_live(period);
        }
        Ok(fake)
    }
}

impl FakeVista {
    /// Starts a fake with the default settings (token `"fake-vista-token"`, the system's time
    /// zone, the first show 5 minutes from now).
    ///
    /// # Panics
    ///
    /// If `127.0.0.1:0` cannot be bound; [`FakeVista::builder`] returns that error instead.
    pub async fn start() -> FakeVista {
        match FakeVista::builder().start().await {
            Ok(fake) => fake,
            Err(error) => panic!("cannot start the fake Vista server on 127.0.0.1: {error}"),
        }
    }

    /// Settings for a fake, to [`start`](FakeVistaBuilder::start).
    pub fn builder() -> FakeVistaBuilder {
        FakeVistaBuilder {
            token: DEFAULT_TOKEN.to_owned(),
            time_zone: TimeZone::system(),
            first_show_in: Duration::from_secs(5 * 60),
            now: None,
            live: None,
        }
    }

    /// The base URL to give [`VistaClient::new`](crate::vista::VistaClient::new), such as
    /// `http://127.0.0.1:41234/WSVistaWebClient/`.
    #[must_use]
    pub fn base_url(&self) -> &str {
        &self.inner.base_url
    }

    /// The token the server accepts.
    #[must_use]
    pub fn token(&self) -> &str {
        &self.inner.state.token
    }

    /// The socket address it listens on.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// The time zone in which the showtimes were moved.
    #[must_use]
    pub fn time_zone(&self) -> &TimeZone {
        &self.inner.state.time_zone
    }

    /// How far the recorded showtimes were moved (a whole number of minutes).
    #[must_use]
    pub fn shift(&self) -> SignedDuration {
        self.inner.shift
    }

    /// The ids of the sessions it serves now, in the order of the feed.
    #[must_use]
    pub fn session_ids(&self) -> Vec<String> {
        lock(&self.inner.state.sessions)
            .rows
            .iter()
            .filter_map(|row| row.get("ID").and_then(Value::as_str).map(str::to_owned))
            .collect()
    }

    /// The free seats of a session, `None` if it does not serve that session.
    #[must_use]
    pub fn seats(&self, id: &str) -> Option<u32> {
        let sessions = lock(&self.inner.state.sessions);
        let seats = find(&sessions.rows, id)?.get("SeatsAvailable")?.as_u64()?;
        u32::try_from(seats).ok()
    }

    /// The (moved) showtime of a session, `None` if it does not serve that session.
    #[must_use]
    pub fn showtime(&self, id: &str) -> Option<civil::DateTime> {
        let sessions = lock(&self.inner.state.sessions);
        find(&sessions.rows, id)?
            .get("Showtime")?
            .as_str()?
            .parse()
            .ok()
    }

    /// Sets the free seats of a session; `false` if it does not serve that session.
    pub fn set_seats(&self, id: &str, seats: u32) -> bool {
        set_seats(&mut lock(&self.inner.state.sessions).rows, id, seats)
    }

    /// Moves a session to another (naive, local) showtime, as when a show is rescheduled, and
    /// gives it the business date that follows (6 AM cut-off); `false` if it does not serve
    /// that session or the showtime is out of range.
    ///
    /// A showtime in the past is how a test makes a session expire: the sessions worker drops a
    /// session 20 minutes after its showtime.
    pub fn set_showtime(&self, id: &str, showtime: civil::DateTime) -> bool {
        let mut sessions = lock(&self.inner.state.sessions);
        sessions
            .rows
            .iter_mut()
            .find(|row| row_id(row) == Some(id))
            .is_some_and(|row| set_showtime_of(row, showtime).is_ok())
    }

    /// Stops serving a session (as when it is cancelled); `false` if it did not serve it.
    pub fn remove_session(&self, id: &str) -> bool {
        let mut sessions = lock(&self.inner.state.sessions);
        let before = sessions.rows.len();
        sessions.rows.retain(|row| row_id(row) != Some(id));
        sessions.rows.len() != before
    }

    /// Answers the next `n` requests (any route, with a valid token) with HTTP 500.
    pub fn fail_next(&self, n: u64) {
        self.fail_with(500, Some(n));
    }

    /// Answers every request (with a valid token) with HTTP 500 until
    /// [`clear_failures`](FakeVista::clear_failures).
    pub fn fail_until_cleared(&self) {
        self.fail_with(500, None);
    }

    /// Answers requests (with a valid token) with `status` and a short text body: the next
    /// `times` of them, or all until [`clear_failures`](FakeVista::clear_failures) if `None`.
    /// Replaces a failure set before. A status that is not a valid HTTP status is taken as 500.
    pub fn fail_with(&self, status: u16, times: Option<u64>) {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        lock(&self.inner.state.knobs).failure = Some(Failure {
            status,
            remaining: times,
        });
    }

    /// Stops injecting failures.
    pub fn clear_failures(&self) {
        lock(&self.inner.state.knobs).failure = None;
    }

    /// Waits this long before answering each request (`Duration::ZERO` to stop).
    pub fn set_latency(&self, latency: Duration) {
        lock(&self.inner.state.knobs).latency = latency;
    }

    /// Appends one unreadable row to every collection it serves (a session `"9999-1"` whose
    /// showtime is not a time, a cinema whose id is not a number, a film whose id is a number).
    pub fn serve_bad_row(&self, on: bool) {
        lock(&self.inner.state.knobs).bad_row = on;
    }

    /// Answers every request (with a valid token) with a 200 whose JSON is cut off.
    pub fn serve_malformed_json(&self, on: bool) {
        lock(&self.inner.state.knobs).malformed = on;
    }

    /// How many requests reached a route.
    #[must_use]
    pub fn requests(&self, route: Route) -> u64 {
        self.inner.state.requests[route.index()].load(Ordering::SeqCst)
    }

    /// How many requests reached any of the routes.
    #[must_use]
    pub fn total_requests(&self) -> u64 {
        Route::ALL
            .into_iter()
            .map(|route| self.requests(route))
            .sum()
    }

    /// Sets every request counter to zero.
    pub fn reset_requests(&self) {
        for counter in &self.inner.state.requests {
            counter.store(0, Ordering::SeqCst);
        }
    }

    /// Starts the live mode (or restarts it with a new period): every `period`, the fake sells
    /// 1–4 seats of two of the next upcoming sessions, and every fourth period it drops one of
    /// them, as a real box office would. Each change is logged at `info` level. Uses the wall
    /// clock: for demos, not for tests.
    pub fn start_live(&self, period: Duration) {
        let task = live::spawn(Arc::clone(&self.inner.state), period);
        if let Some(previous) = lock(&self.inner.live).replace(task) {
            previous.abort();
        }
    }

    /// Stops the live mode.
    pub fn stop_live(&self) {
        if let Some(live) = lock(&self.inner.live).take() {
            live.abort();
        }
    }
}

impl std::fmt::Debug for FakeVista {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeVista")
            .field("base_url", &self.inner.base_url)
            .field("shift", &self.inner.shift)
            .finish_non_exhaustive()
    }
}
