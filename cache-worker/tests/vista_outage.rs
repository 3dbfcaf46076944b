#![cfg(feature = "vista-testing")]
//! Upstream outages against the fake Vista server (issue #6), through the public API only:
//! 500s and timeouts for longer than several refresh periods while readers run. Every cached
//! key is answered from memory, nothing is removed, the refresher's retries back off (bounded
//! in the fake's request counts), and the workers recover by themselves when the server does.
//!
//! The real clock throughout: the fake serves real sockets, and tokio's paused clock would
//! auto-advance while waiting on them and fire timeouts that never happened. The settings are
//! short (refresh every 1 s, retries after 100 ms doubling to 800 ms) and every wait is bounded
//! by [`GUARD`], a guard against hangs rather than a speed assertion. Request counts are
//! checked against bounds derived from the backoff schedule, with slack, never exactly.
//!
//! Lines starting with `[figures]` (shown with `--nocapture`) give what was measured.

use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use cache_worker::vista::testing::{FakeVista, Route};
use cache_worker::vista::{Cinemas, Feed, Films, Session, Sessions, VistaClient, VistaError};
use cache_worker::vista::{VistaWorker, poll_interval};
use cache_worker::{Builder, CacheWorker, Event, FetchError, RemovalCause, Stats, Worker};
use futures_util::StreamExt;
use parking_lot::Mutex;
use tokio::task::JoinHandle;

/// The refresh period of every worker here.
const REFRESH: Duration = Duration::from_secs(1);
/// The first retry delay of a failed reload; it doubles with each further failure...
const RETRY_MIN: Duration = Duration::from_millis(100);
/// ... up to this.
const RETRY_MAX: Duration = Duration::from_millis(800);
// A failed bulk reload is retried after `min(retry delay, refresh period)`; with the longest
// retry delay below the period, the schedule below is the retry delay alone.
const _: () = assert!(RETRY_MAX.as_millis() < REFRESH.as_millis());
/// How long the 500 outage lasts: five refresh periods.
const OUTAGE: Duration = Duration::from_secs(5);
/// How long the timeout outage lasts: three refresh periods.
const SLOW_OUTAGE: Duration = Duration::from_secs(3);
/// The fake's latency in the timeout outage, ...
const LATENCY: Duration = Duration::from_secs(1);
/// ... well past the client's timeout.
const CLIENT_TIMEOUT: Duration = Duration::from_millis(250);
/// The longest any single wait may take: a guard against hangs, not a speed assertion.
const GUARD: Duration = Duration::from_secs(5);
/// How often waits look again.
const POLL: Duration = Duration::from_millis(2);
/// Requests allowed over a computed bound: one in flight at each edge of a window, and one
/// more for the sampling of the fake's counters.
const SLACK: u64 = 3;
/// The Sessions TTL: sessions whose poll interval is `None` or at least a minute are not
/// polled on their own within one test.
const SESSIONS_TTL: Duration = Duration::from_secs(3600);
/// The poll interval of a session that starts within ten minutes.
const NEAR_POLL: Duration = Duration::from_secs(10);

/// Entries in the recorded feed.
const CINEMAS: usize = 13;
const FILMS: usize = 54;
const SESSIONS: usize = 362;

// ---------------------------------------------------------------------------------------------
// The backoff schedule, as the settings document it.

/// The delay before retry `n` (1-based) of a failed reload: `RETRY_MIN`, doubled with each
/// further failure, at most `RETRY_MAX`.
fn retry_delay(n: u32) -> Duration {
    RETRY_MIN
        .saturating_mul(1 << n.saturating_sub(1).min(20))
        .min(RETRY_MAX)
}

/// The most attempts one retry schedule (starting from no failures) can make in `window` when
/// every failed attempt takes at least `attempt`: one at the window's start, then one after
/// each retry delay.
fn backoff_bound(window: Duration, attempt: Duration) -> u64 {
    let mut at = Duration::ZERO;
    let mut n = 1u32;
    loop {
        at += attempt + retry_delay(n);
        if at > window {
            return u64::from(n);
        }
        n += 1;
    }
}

/// The same for a schedule that retries every `RETRY_MIN`, without backoff.
fn fixed_interval_bound(window: Duration, attempt: Duration) -> u64 {
    let step = (attempt + RETRY_MIN).as_micros();
    u64::try_from(window.as_micros() / step).unwrap_or(u64::MAX) + 1
}

#[test]
fn the_bounds_follow_the_schedule() {
    // Attempts at 0, 0.1, 0.3, 0.7, 1.5, 2.3, 3.1, 3.9, 4.7 s.
    assert_eq!(backoff_bound(Duration::from_secs(5), Duration::ZERO), 9);
    assert_eq!(
        fixed_interval_bound(Duration::from_secs(5), Duration::ZERO),
        51
    );
    // Each attempt taking 250 ms: at 0, 0.35, 0.8, 1.45, 2.5 s.
    assert_eq!(
        backoff_bound(Duration::from_secs(3), Duration::from_millis(250)),
        5
    );
    assert_eq!(retry_delay(1), RETRY_MIN);
    assert_eq!(retry_delay(4), RETRY_MAX);
    assert_eq!(retry_delay(40), RETRY_MAX);
}

// ---------------------------------------------------------------------------------------------
// Helpers.

/// Fails the test if `future` takes longer than `limit`.
async fn within<T>(limit: Duration, what: &str, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, future).await {
        Ok(value) => value,
        Err(_) => panic!("{what} did not finish within {limit:?}"),
    }
}

/// Polls `check` until it gives a value, for at most `limit`.
async fn until<T>(limit: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    within(limit, what, async {
        loop {
            if let Some(value) = check() {
                return value;
            }
            tokio::time::sleep(POLL).await;
        }
    })
    .await
}

/// A client of `fake` that does not retry on its own: each failed request is one failed load,
/// so the fake's request counts show the refresher's schedule.
fn client(fake: &FakeVista) -> VistaClient {
    VistaClient::new(fake.base_url(), fake.token())
        .expect("a valid client")
        .with_attempts(1)
        .with_time_zone(fake.time_zone().clone())
}

/// A fake whose shows all start at least 3 hours from now: no session is polled on its own,
/// so each route sees the bulk reloads and nothing else.
async fn far_fake() -> FakeVista {
    FakeVista::builder()
        .first_show_in(Duration::from_secs(3 * 3600))
        .start()
        .await
        .expect("the fake Vista server starts")
}

/// Starts a worker with the short settings (and whatever `configure` adds), memory only, and
/// waits until its collection is loaded.
async fn start<F: Feed>(
    client: VistaClient,
    configure: impl FnOnce(Builder<VistaWorker<F>>) -> Builder<VistaWorker<F>>,
) -> Worker<VistaWorker<F>> {
    let builder = VistaWorker::<F>::new(client)
        .builder()
        .refresh(REFRESH)
        .retry_backoff(RETRY_MIN, RETRY_MAX)
        .no_file();
    let worker = configure(builder).start().await.expect("the worker starts");
    let report = within(GUARD, "the first load", worker.refresh_all())
        .await
        .expect("the worker runs");
    assert!(report.bulk && report.failed == 0, "{report:?}");
    worker
}

struct Three {
    cinemas: Worker<Cinemas>,
    films: Worker<Films>,
    sessions: Worker<Sessions>,
}

async fn start_three(fake: &FakeVista) -> Three {
    let three = Three {
        cinemas: start(client(fake), |b| b).await,
        films: start(client(fake), |b| b).await,
        sessions: start(client(fake), |b| b).await,
    };
    assert_eq!(
        [three.cinemas.len(), three.films.len(), three.sessions.len()],
        [CINEMAS, FILMS, SESSIONS]
    );
    three
}

/// The sessions, earliest show first.
fn by_showtime(sessions: &Worker<Sessions>) -> Vec<Arc<Session>> {
    let mut all: Vec<_> = sessions
        .keys()
        .into_iter()
        .filter_map(|id| sessions.peek(&id))
        .collect();
    all.sort_by(|a, b| (a.showtime, &a.id).cmp(&(b.showtime, &b.id)));
    all
}

/// The two sessions that start last: a bulk reload is the only thing that reads them.
fn two_far_sessions(sessions: &Worker<Sessions>) -> (Arc<Session>, Arc<Session>) {
    let mut all = by_showtime(sessions);
    let last = all.pop().expect("sessions are loaded");
    let before = all.pop().expect("two sessions");
    (last, before)
}

/// Every entry of a worker at one moment.
type Snapshot<W> = Arc<Vec<(<W as CacheWorker>::Key, Arc<<W as CacheWorker>::Value>)>>;

/// Every entry of a worker now.
fn snapshot<W: CacheWorker>(worker: &Worker<W>) -> Snapshot<W> {
    Arc::new(
        worker
            .keys()
            .into_iter()
            .filter_map(|key| worker.peek(&key).map(|value| (key, value)))
            .collect(),
    )
}

/// Events with when they arrived.
type Log<K, V> = Arc<Mutex<Vec<(Instant, Event<K, V>)>>>;

/// Every event of one worker, with when it arrived.
struct Recorder<K, V> {
    log: Log<K, V>,
    task: JoinHandle<()>,
}

fn record<W: CacheWorker>(worker: &Worker<W>) -> Recorder<W::Key, W::Value> {
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut events = worker.subscribe();
    let task = tokio::spawn({
        let log = log.clone();
        async move {
            while let Some(event) = events.next().await {
                log.lock().push((Instant::now(), event));
            }
        }
    });
    Recorder { log, task }
}

impl<K: Clone + Debug, V: Debug> Recorder<K, V> {
    fn since(&self, from: Instant) -> Vec<Event<K, V>> {
        self.log
            .lock()
            .iter()
            .filter(|(at, _)| *at >= from)
            .map(|(_, event)| event.clone())
            .collect()
    }

    /// The first event since `from` that `pick` accepts, and when it arrived.
    async fn wait_for<T>(
        &self,
        from: Instant,
        what: &str,
        mut pick: impl FnMut(&Event<K, V>) -> Option<T>,
    ) -> (T, Instant) {
        until(GUARD, what, || {
            self.log
                .lock()
                .iter()
                .filter(|(at, _)| *at >= from)
                .find_map(|(at, event)| pick(event).map(|found| (found, *at)))
        })
        .await
    }

    /// When the first full reload since `from` was announced.
    async fn full_reload(&self, from: Instant, what: &str) -> Instant {
        self.wait_for(from, what, |event| {
            matches!(event, Event::FullReload { .. }).then_some(())
        })
        .await
        .1
    }

    /// Checks that nothing changed since `from` while upstream failed: no entry inserted,
    /// updated or removed, and at most one full reload (of a cycle answered just before the
    /// outage began).
    fn assert_quiet_since(&self, from: Instant, worker: &str) {
        let events = self.since(from);
        let reloads = events
            .iter()
            .filter(|event| matches!(event, Event::FullReload { .. }))
            .count();
        assert!(
            reloads <= 1 && events.len() == reloads,
            "{worker}: events during the outage: {events:?}"
        );
    }
}

impl<K, V> Drop for Recorder<K, V> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// When requests reached each route, seen by polling the fake's counters every [`POLL`].
struct Sampler {
    arrivals: Arc<Mutex<Vec<(Route, Instant)>>>,
    task: JoinHandle<()>,
}

const ROUTES: [Route; 3] = [Route::Cinemas, Route::Films, Route::Sessions];

impl Sampler {
    fn start(fake: &FakeVista) -> Sampler {
        let arrivals = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn({
            let arrivals = arrivals.clone();
            let fake = fake.clone();
            async move {
                let mut seen = ROUTES.map(|route| fake.requests(route));
                loop {
                    tokio::time::sleep(POLL).await;
                    let now = Instant::now();
                    for (route, seen) in ROUTES.into_iter().zip(seen.iter_mut()) {
                        let count = fake.requests(route);
                        let mut arrivals = arrivals.lock();
                        for _ in *seen..count {
                            arrivals.push((route, now));
                        }
                        *seen = count;
                    }
                }
            }
        });
        Sampler { arrivals, task }
    }

    /// When requests reached `route` in `[from, to)`.
    fn times(&self, route: Route, from: Instant, to: Instant) -> Vec<Instant> {
        self.arrivals
            .lock()
            .iter()
            .filter(|(r, at)| *r == route && *at >= from && *at < to)
            .map(|(_, at)| *at)
            .collect()
    }

    fn count(&self, route: Route, from: Instant, to: Instant) -> u64 {
        self.times(route, from, to).len() as u64
    }

    /// When the first request since `from` reached `route`.
    async fn first(&self, route: Route, from: Instant, limit: Duration) -> Instant {
        until(limit, &format!("a request to {route:?}"), || {
            self.times(route, from, far_future()).first().copied()
        })
        .await
    }

    /// The gaps between consecutive requests to `route` in `[from, to)`, in milliseconds.
    fn gaps_ms(&self, route: Route, from: Instant, to: Instant) -> Vec<u128> {
        self.times(route, from, to)
            .windows(2)
            .map(|pair| (pair[1] - pair[0]).as_millis())
            .collect()
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(3600)
}

/// Readers of every key of one worker.
type Readers = Vec<JoinHandle<(u64, Duration)>>;

/// Starts `tasks` readers that, until `stop`, `peek` and `get` every key of `entries` and check
/// that each is answered with its value, and that the bucket never shrinks. Each gives how many
/// reads it made and the slowest `get`.
fn read_all<W: CacheWorker>(
    worker: &Worker<W>,
    entries: &Snapshot<W>,
    tasks: usize,
    stop: &Arc<AtomicBool>,
) -> Readers
where
    W::Value: Debug,
{
    (0..tasks)
        .map(|_| {
            let (worker, entries, stop) = (worker.clone(), entries.clone(), stop.clone());
            tokio::spawn(async move {
                let mut reads = 0;
                let mut slowest = Duration::ZERO;
                while !stop.load(Ordering::Relaxed) {
                    for (key, value) in entries.iter() {
                        let peeked = worker.peek(key);
                        assert_eq!(peeked.as_deref(), Some(&**value), "peek({key:?})");
                        let started = Instant::now();
                        let got = worker.get(key).await;
                        slowest = slowest.max(started.elapsed());
                        assert_eq!(got.as_deref(), Some(&**value), "get({key:?})");
                        reads += 2;
                    }
                    assert!(worker.len() >= entries.len(), "the bucket shrank");
                    // Room for the refresher and the fake on a small machine.
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                (reads, slowest)
            })
        })
        .collect()
}

/// Stops the readers and sums what they did.
async fn stop_readers(stop: &AtomicBool, readers: Readers) -> (u64, Duration) {
    stop.store(true, Ordering::Relaxed);
    let mut reads = 0;
    let mut slowest = Duration::ZERO;
    for reader in readers {
        let (n, slow) = within(GUARD, "a reader", reader)
            .await
            .expect("a reader checked every answer");
        reads += n;
        slowest = slowest.max(slow);
    }
    (reads, slowest)
}

/// A read of a key that is not cached, while upstream fails: `get` gives `None` and `fetch` an
/// error, each within [`GUARD`]. Gives the error and how long `fetch` took.
async fn miss<W: CacheWorker>(worker: &Worker<W>, key: &W::Key) -> (FetchError, Duration)
where
    W::Value: Debug,
{
    let got = within(GUARD, "get of an uncached key", worker.get(key)).await;
    assert!(got.is_none(), "{key:?} is not upstream and upstream fails");
    let started = Instant::now();
    let error = within(GUARD, "fetch of an uncached key", worker.fetch(key))
        .await
        .expect_err("upstream fails");
    (error, started.elapsed())
}

/// The client's error inside a failed load.
fn vista_error(error: &FetchError) -> Option<&VistaError> {
    match error {
        FetchError::Load(source) => source.downcast_ref::<VistaError>(),
        _ => None,
    }
}

/// The change in two snapshots of the counters.
fn failures(before: &Stats, after: &Stats) -> (u64, u64, u64) {
    (
        after.refresh_failures - before.refresh_failures,
        after.load_errors - before.load_errors,
        after.timeouts - before.timeouts,
    )
}

/// Checks the requests a route got in `[from, to)` against the backoff schedule: at most its
/// bound (plus `SLACK`, plus `extra` requests the test made itself), clearly fewer than retries
/// every `RETRY_MIN` would make, and at least `at_least`. Gives the count and the bound.
fn assert_backoff(
    sampler: &Sampler,
    route: Route,
    (from, to): (Instant, Instant),
    attempt: Duration,
    keys: u64,
    at_least: u64,
) -> (u64, u64, u64) {
    let window = to - from;
    let count = sampler.count(route, from, to);
    let bound = keys * backoff_bound(window, attempt) + SLACK;
    let fixed = keys * fixed_interval_bound(window, attempt);
    assert!(
        count <= bound,
        "{route:?}: {count} requests in {window:?}, more than the backoff allows ({bound})"
    );
    assert!(
        count >= at_least,
        "{route:?}: {count} requests in {window:?}: the failed reloads were not retried"
    );
    (count, bound, fixed)
}

// ---------------------------------------------------------------------------------------------
// The tests.

/// All three workers loaded, then HTTP 500 on every request for five refresh periods.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_long_500_outage_is_served_from_memory_backs_off_and_recovers() {
    let fake = far_fake().await;
    let Three {
        cinemas,
        films,
        sessions,
    } = start_three(&fake).await;
    let (changed, gone) = two_far_sessions(&sessions);
    let events = (record(&cinemas), record(&films), record(&sessions));
    let sampler = Sampler::start(&fake);
    let before = [cinemas.stats(), films.stats(), sessions.stats()];
    let stop = Arc::new(AtomicBool::new(false));
    let mut readers = read_all(&cinemas, &snapshot(&cinemas), 2, &stop);
    readers.extend(read_all(&films, &snapshot(&films), 2, &stop));
    readers.extend(read_all(&sessions, &snapshot(&sessions), 2, &stop));

    fake.fail_until_cleared();
    let outage = Instant::now();
    // Changes upstream during the outage, to be seen once it is over.
    assert!(fake.set_seats(&changed.id, changed.seats_available + 5));
    assert!(fake.remove_session(&gone.id));
    tokio::time::sleep(OUTAGE).await;
    let window = (outage, Instant::now());

    // A key that is not cached is an error at once, not a wait for upstream.
    let (cinema_miss, cinema_took) = miss(&cinemas, &4242).await;
    let (film_miss, film_took) = miss(&films, &"HO99999999".to_owned()).await;
    let (session_miss, session_took) = miss(&sessions, &"1001-99999999".to_owned()).await;
    for error in [&cinema_miss, &film_miss, &session_miss] {
        assert_eq!(
            vista_error(error).and_then(VistaError::status),
            Some(500),
            "{error}"
        );
    }
    let (reads, slowest) = stop_readers(&stop, readers).await;

    // Nothing was removed, nothing changed, the bucket never shrank.
    events.0.assert_quiet_since(outage, "cinemas");
    events.1.assert_quiet_since(outage, "films");
    events.2.assert_quiet_since(outage, "sessions");
    assert_eq!(
        [cinemas.len(), films.len(), sessions.len()],
        [CINEMAS, FILMS, SESSIONS]
    );
    assert_eq!(sessions.peek(&gone.id).as_deref(), Some(&*gone));
    assert!(reads > 0);

    // The failures show in the stats: failed reloads, and failed loads (the reloads and the
    // two reads of a missing key).
    let after = [cinemas.stats(), films.stats(), sessions.stats()];
    for (name, (before, after)) in ["cinemas", "films", "sessions"]
        .into_iter()
        .zip(before.iter().zip(&after))
    {
        let (refresh_failures, load_errors, _) = failures(before, after);
        assert!(refresh_failures >= 4, "{name}: {after:?}");
        assert!(load_errors >= refresh_failures + 2, "{name}: {after:?}");
    }

    // The backoff, in the requests each route got: each failed reload is one request, retried
    // after 100, 200, 400, 800, 800... ms. At least one failure and three retries: the first
    // failure comes within a refresh period, the three retries within 0.7 s of it.
    let mut figures = Vec::new();
    for route in ROUTES {
        let (count, bound, fixed) = assert_backoff(&sampler, route, window, Duration::ZERO, 1, 4);
        assert!(
            bound * 2 < fixed,
            "the bound ({bound}) must tell backoff from a fixed interval ({fixed})"
        );
        let gaps = sampler.gaps_ms(route, window.0, window.1);
        // Retries come sooner than the next refresh period would.
        assert!(
            gaps.iter()
                .min()
                .is_some_and(|&gap| gap < REFRESH.as_millis() / 2),
            "{route:?}: gaps {gaps:?} ms"
        );
        figures.push(format!(
            "{route:?} {count} (bound {bound}, fixed-interval {fixed}, gaps {gaps:?} ms)"
        ));
    }

    // Recovery, with no refresh_all: the next retry succeeds and brings the changes.
    fake.clear_failures();
    let cleared = Instant::now();
    let (seats, updated_at) = events
        .2
        .wait_for(
            cleared,
            "the seat change after the outage",
            |event| match event {
                Event::Updated { key, value, .. } if *key == changed.id => {
                    Some(value.seats_available)
                }
                _ => None,
            },
        )
        .await;
    assert_eq!(seats, changed.seats_available + 5);
    let (cause, removed_at) = events
        .2
        .wait_for(
            cleared,
            "the removal after the outage",
            |event| match event {
                Event::Removed { key, cause, .. } if *key == gone.id => Some(*cause),
                _ => None,
            },
        )
        .await;
    assert_eq!(cause, RemovalCause::Gone);
    let cinemas_at = events.0.full_reload(cleared, "cinemas to recover").await;
    let films_at = events.1.full_reload(cleared, "films to recover").await;
    assert_eq!(
        [cinemas.len(), films.len(), sessions.len()],
        [CINEMAS, FILMS, SESSIONS - 1]
    );
    assert!(sessions.peek(&gone.id).is_none());
    for event in events.0.since(outage) {
        assert!(
            matches!(event, Event::FullReload { count: CINEMAS }),
            "{event:?}"
        );
    }
    for event in events.1.since(outage) {
        assert!(
            matches!(event, Event::FullReload { count: FILMS }),
            "{event:?}"
        );
    }
    let removed: Vec<_> = events
        .2
        .since(outage)
        .into_iter()
        .filter(|event| matches!(event, Event::Removed { .. }))
        .collect();
    assert_eq!(
        removed.len(),
        1,
        "only the session gone upstream: {removed:?}"
    );

    eprintln!(
        "[figures] 500 outage of {:?}; requests per route: {}; reads served {reads} (slowest get {slowest:?}); \
         uncached fetch answered in {cinema_took:?} / {film_took:?} / {session_took:?}; \
         recovered (cinemas, films, session update, session removal) after {:?} / {:?} / {:?} / {:?}; \
         stats after: cinemas {:?} films {:?} sessions {:?}",
        window.1 - window.0,
        figures.join("; "),
        cinemas_at - cleared,
        films_at - cleared,
        updated_at - cleared,
        removed_at - cleared,
        failures(&before[0], &after[0]),
        failures(&before[1], &after[1]),
        failures(&before[2], &after[2]),
    );
}

/// All three workers loaded, then the fake answers only after the client's timeout (cinemas,
/// sessions) or the worker's load timeout (films), for three refresh periods.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_timeout_outage_is_served_from_memory_and_recovers() {
    let fake = far_fake().await;
    let slow = |fake: &FakeVista| client(fake).with_timeout(CLIENT_TIMEOUT);
    let cinemas: Worker<Cinemas> = start(slow(&fake), |b| b).await;
    // The films' client would wait 5 s: the worker's load timeout ends the load first.
    let films: Worker<Films> = start(client(&fake).with_timeout(Duration::from_secs(5)), |b| {
        b.load_timeout(CLIENT_TIMEOUT)
    })
    .await;
    let sessions: Worker<Sessions> = start(slow(&fake), |b| b).await;
    let (changed, _) = two_far_sessions(&sessions);
    let events = (record(&cinemas), record(&films), record(&sessions));
    let sampler = Sampler::start(&fake);
    let before = [cinemas.stats(), films.stats(), sessions.stats()];
    let stop = Arc::new(AtomicBool::new(false));
    let mut readers = read_all(&cinemas, &snapshot(&cinemas), 2, &stop);
    readers.extend(read_all(&films, &snapshot(&films), 2, &stop));
    readers.extend(read_all(&sessions, &snapshot(&sessions), 2, &stop));

    fake.set_latency(LATENCY);
    let outage = Instant::now();
    assert!(fake.set_seats(&changed.id, changed.seats_available + 4));
    tokio::time::sleep(SLOW_OUTAGE).await;
    let window = (outage, Instant::now());

    // A key that is not cached: a timeout error, not a hang.
    let (cinema_miss, cinema_took) = miss(&cinemas, &4242).await;
    let (film_miss, film_took) = miss(&films, &"HO99999999".to_owned()).await;
    let (session_miss, session_took) = miss(&sessions, &"1001-99999999".to_owned()).await;
    for error in [&cinema_miss, &session_miss] {
        assert!(
            vista_error(error).is_some_and(VistaError::is_timeout),
            "{error}"
        );
    }
    assert!(
        matches!(film_miss, FetchError::Timeout(t) if t == CLIENT_TIMEOUT),
        "{film_miss}"
    );
    let (reads, slowest) = stop_readers(&stop, readers).await;

    events.0.assert_quiet_since(outage, "cinemas");
    events.1.assert_quiet_since(outage, "films");
    events.2.assert_quiet_since(outage, "sessions");
    assert_eq!(
        [cinemas.len(), films.len(), sessions.len()],
        [CINEMAS, FILMS, SESSIONS]
    );
    assert!(reads > 0);

    // The reloads ended as errors: timeouts of the client (a load error) or of the worker.
    let after = [cinemas.stats(), films.stats(), sessions.stats()];
    let changes = [0, 1, 2].map(|i| failures(&before[i], &after[i]));
    for (name, (refresh_failures, load_errors, timeouts)) in
        [("cinemas", changes[0]), ("sessions", changes[2])]
    {
        assert!(refresh_failures >= 2, "{name}: {:?}", changes);
        assert!(load_errors >= refresh_failures + 2, "{name}: {changes:?}");
        assert_eq!(timeouts, 0, "{name}: the client timed out first");
    }
    let (refresh_failures, _, timeouts) = changes[1];
    assert!(refresh_failures >= 2, "films: {changes:?}");
    assert!(timeouts >= refresh_failures + 2, "films: {changes:?}");

    // Each failed attempt lasts the timeout, then waits its retry delay.
    let figures: Vec<_> = ROUTES
        .into_iter()
        .map(|route| {
            let (count, bound, fixed) =
                assert_backoff(&sampler, route, window, CLIENT_TIMEOUT, 1, 2);
            let gaps = sampler.gaps_ms(route, window.0, window.1);
            format!("{route:?} {count} (bound {bound}, fixed-interval {fixed}, gaps {gaps:?} ms)")
        })
        .collect();

    fake.set_latency(Duration::ZERO);
    let cleared = Instant::now();
    let (seats, updated_at) = events
        .2
        .wait_for(
            cleared,
            "the seat change after the outage",
            |event| match event {
                Event::Updated { key, value, .. } if *key == changed.id => {
                    Some(value.seats_available)
                }
                _ => None,
            },
        )
        .await;
    assert_eq!(seats, changed.seats_available + 4);
    let cinemas_at = events.0.full_reload(cleared, "cinemas to recover").await;
    let films_at = events.1.full_reload(cleared, "films to recover").await;
    assert_eq!(
        [cinemas.len(), films.len(), sessions.len()],
        [CINEMAS, FILMS, SESSIONS]
    );

    eprintln!(
        "[figures] timeout outage (latency {LATENCY:?}, timeouts {CLIENT_TIMEOUT:?}) of {:?}; requests per route: {}; \
         reads served {reads} (slowest get {slowest:?}); uncached fetch answered in {cinema_took:?} / {film_took:?} / {session_took:?}; \
         recovered (cinemas, films, session update) after {:?} / {:?} / {:?}; (refresh failures, load errors, timeouts): {changes:?}",
        window.1 - window.0,
        figures.join("; "),
        cinemas_at - cleared,
        films_at - cleared,
        updated_at - cleared,
    );
}

/// After an outage long enough for the retries to reach `RETRY_MAX`, and a recovery, the next
/// outage is retried from `RETRY_MIN` again: the refresher resets its count of failed bulk
/// reloads after a successful one (`finish_cycle` in refresh.rs).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_backoff_starts_over_after_recovery() {
    let fake = far_fake().await;
    let Three {
        cinemas,
        films,
        sessions,
    } = start_three(&fake).await;
    let events = (record(&cinemas), record(&films), record(&sessions));
    let sampler = Sampler::start(&fake);

    fake.fail_until_cleared();
    let outage = Instant::now();
    // Six failures in a row: 100, 200, 400, 800, 800 ms apart, the last at the longest delay.
    let mut escalated = Vec::new();
    for route in ROUTES {
        until(Duration::from_secs(8), "six failed reloads", || {
            (sampler.count(route, outage, far_future()) >= 6).then_some(())
        })
        .await;
        let gaps = sampler.gaps_ms(route, outage, far_future());
        let last = *gaps.last().expect("gaps");
        // A timer never fires early: the last gap is the longest delay, give or take sampling.
        assert!(last * 4 >= RETRY_MAX.as_millis() * 3, "{route:?}: {gaps:?}");
        escalated.push(format!("{route:?} {gaps:?}"));
    }

    fake.clear_failures();
    let cleared = Instant::now();
    events.0.full_reload(cleared, "cinemas to recover").await;
    events.1.full_reload(cleared, "films to recover").await;
    events.2.full_reload(cleared, "sessions to recover").await;

    // Down again: the first failure comes with the next periodic cycle, the retries after it
    // at 0.1, 0.3, 0.7 s. Had the backoff kept its 800 ms, the second retry would come at 1.6 s.
    fake.fail_until_cleared();
    let again = Instant::now();
    let mut firsts = Vec::new();
    for route in ROUTES {
        firsts.push((route, sampler.first(route, again, GUARD).await));
    }
    let latest = firsts
        .iter()
        .map(|(_, at)| *at)
        .max()
        .expect("three routes");
    tokio::time::sleep_until((latest + Duration::from_secs(1)).into()).await;
    let mut restarted = Vec::new();
    for (route, first) in firsts {
        let count = sampler.count(route, first, first + Duration::from_secs(1));
        let gaps = sampler.gaps_ms(route, first, first + Duration::from_secs(1));
        assert!(
            count >= 3,
            "{route:?}: {count} requests in the first second of the second outage (gaps {gaps:?} ms): \
             the backoff did not start over"
        );
        restarted.push(format!("{route:?} {count} in 1 s, gaps {gaps:?}"));
    }
    fake.clear_failures();
    assert_eq!(
        [cinemas.len(), films.len(), sessions.len()],
        [CINEMAS, FILMS, SESSIONS]
    );
    eprintln!(
        "[figures] backoff reset: first outage gaps (ms): {}; after recovery: {}",
        escalated.join("; "),
        restarted.join("; ")
    );
}

/// A 500 on the next two requests only, whichever workers make them, while all three refresh:
/// the cycles they fail are retried, nothing is lost, and a change upstream arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_few_500s_mid_cycle_lose_nothing() {
    let fake = far_fake().await;
    let Three {
        cinemas,
        films,
        sessions,
    } = start_three(&fake).await;
    let (changed, _) = two_far_sessions(&sessions);
    let entries = (snapshot(&cinemas), snapshot(&films), snapshot(&sessions));
    let events = (record(&cinemas), record(&films), record(&sessions));
    let failed_before = [cinemas.stats(), films.stats(), sessions.stats()]
        .iter()
        .map(|s| s.refresh_failures)
        .sum::<u64>();

    let from = Instant::now();
    assert!(fake.set_seats(&changed.id, changed.seats_available + 2));
    fake.fail_next(2);
    // Each 500 fails one reload of one worker (the client does not retry).
    until(GUARD, "two failed reloads", || {
        let failed = [cinemas.stats(), films.stats(), sessions.stats()]
            .iter()
            .map(|s| s.refresh_failures)
            .sum::<u64>();
        (failed - failed_before >= 2).then_some(())
    })
    .await;
    let failed = Instant::now();
    events.0.full_reload(failed, "cinemas to reload").await;
    events.1.full_reload(failed, "films to reload").await;
    let (seats, _) = events
        .2
        .wait_for(from, "the seat change", |event| match event {
            Event::Updated { key, value, .. } if *key == changed.id => Some(value.seats_available),
            _ => None,
        })
        .await;
    assert_eq!(seats, changed.seats_available + 2);
    events.2.full_reload(failed, "sessions to reload").await;

    for (name, recorded) in [
        ("cinemas", events.0.since(from).len()),
        ("films", events.1.since(from).len()),
    ] {
        assert!(recorded > 0, "{name} reloaded");
    }
    for event in events.0.since(from) {
        assert!(matches!(event, Event::FullReload { .. }), "{event:?}");
    }
    for event in events.1.since(from) {
        assert!(matches!(event, Event::FullReload { .. }), "{event:?}");
    }
    for event in events.2.since(from) {
        match event {
            Event::FullReload { count } => assert_eq!(count, SESSIONS),
            Event::Updated { key, .. } => assert_eq!(key, changed.id),
            other => panic!("{other:?}"),
        }
    }
    // Every entry is still there with its value.
    let unchanged = |key: &String| *key != changed.id;
    for (key, value) in entries.0.iter() {
        assert_eq!(cinemas.peek(key).as_deref(), Some(&**value));
    }
    for (key, value) in entries.1.iter() {
        assert_eq!(films.peek(key).as_deref(), Some(&**value));
    }
    for (key, value) in entries.2.iter().filter(|(key, _)| unchanged(key)) {
        assert_eq!(sessions.peek(key).as_deref(), Some(&**value));
    }
    assert_eq!(
        [cinemas.len(), films.len(), sessions.len()],
        [CINEMAS, FILMS, SESSIONS]
    );
}

/// The same two 500s with the client's own retries on (3 attempts): the client absorbs them
/// and no reload fails. No periodic refresh here: each reload is a `refresh_all`, so that the
/// first one is known to meet both 500s.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_few_500s_are_absorbed_by_the_client_retries() {
    let fake = far_fake().await;
    let retrying = |fake: &FakeVista| {
        client(fake)
            .with_attempts(3)
            .with_backoff(Duration::from_millis(20))
    };
    let cinemas: Worker<Cinemas> = start(retrying(&fake), |b| b.refresh(Duration::ZERO)).await;
    let films: Worker<Films> = start(retrying(&fake), |b| b.refresh(Duration::ZERO)).await;
    let sessions: Worker<Sessions> = start(retrying(&fake), |b| b.refresh(Duration::ZERO)).await;
    let events = (record(&cinemas), record(&films), record(&sessions));
    let before = [cinemas.stats(), films.stats(), sessions.stats()];
    let requests = ROUTES.map(|route| fake.requests(route));

    fake.fail_next(2);
    let from = Instant::now();
    let reports = [
        within(GUARD, "a reload of cinemas", cinemas.refresh_all()).await,
        within(GUARD, "a reload of films", films.refresh_all()).await,
        within(GUARD, "a reload of sessions", sessions.refresh_all()).await,
    ];
    for report in reports {
        let report = report.expect("running");
        assert!(
            report.bulk && report.failed == 0 && report.removed == 0,
            "{report:?}"
        );
    }
    // The cinemas' request met both 500s and was tried three times.
    let made = [0, 1, 2].map(|i| fake.requests(ROUTES[i]) - requests[i]);
    assert_eq!(
        made,
        [3, 1, 1],
        "requests per route (cinemas, films, sessions)"
    );
    let after = [cinemas.stats(), films.stats(), sessions.stats()];
    for (before, after) in before.iter().zip(&after) {
        assert_eq!(failures(before, after), (0, 0, 0), "{after:?}");
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    for event in events.0.since(from) {
        assert!(
            matches!(event, Event::FullReload { count: CINEMAS }),
            "{event:?}"
        );
    }
    for event in events.1.since(from) {
        assert!(
            matches!(event, Event::FullReload { count: FILMS }),
            "{event:?}"
        );
    }
    for event in events.2.since(from) {
        assert!(
            matches!(event, Event::FullReload { count: SESSIONS }),
            "{event:?}"
        );
    }
    assert_eq!(
        [cinemas.len(), films.len(), sessions.len()],
        [CINEMAS, FILMS, SESSIONS]
    );
}

/// The sessions that are polled every 10 s (the ones starting within ten minutes), after
/// checking that every other one is polled at most once a minute, that is never within a test.
fn near_sessions(fake: &FakeVista, sessions: &Worker<Sessions>) -> Vec<Arc<Session>> {
    let now = jiff::Timestamp::now();
    let mut near = Vec::new();
    for session in by_showtime(sessions) {
        match session.poll_interval(now, fake.time_zone(), SESSIONS_TTL) {
            Some(NEAR_POLL) => near.push(session),
            Some(other) => assert!(other >= Duration::from_secs(60), "{session:?}"),
            None => {}
        }
    }
    assert_eq!(poll_interval(300, SESSIONS_TTL), Some(NEAR_POLL));
    near
}

/// A Sessions worker whose only reload in the test is its first: each session near its
/// showtime is polled on its own every 10 s, and those polls are what the outage hits. Three
/// of the last shows are moved to the time of the first one (5 minutes from now), so that
/// several sessions are polled.
async fn polled_sessions(fake: &FakeVista) -> Worker<Sessions> {
    let mut shows: Vec<_> = fake
        .session_ids()
        .into_iter()
        .filter_map(|id| fake.showtime(&id).map(|at| (at, id)))
        .collect();
    shows.sort();
    let first = shows.first().expect("the feed has sessions").0;
    for (_, id) in shows.iter().rev().take(3) {
        assert!(fake.set_showtime(id, first));
    }
    start(client(fake), |b| b.refresh(SESSIONS_TTL)).await
}

/// The per-session polls during an outage: each failed poll is retried with backoff, nothing
/// is lost, the polls bring the changes once the server is back, and their backoff starts over.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn session_polls_back_off_during_an_outage_and_recover() {
    let fake = FakeVista::start().await;
    let sessions = polled_sessions(&fake).await;
    let loaded = Instant::now();
    let near = near_sessions(&fake, &sessions);
    assert!(
        near.len() >= 4,
        "{} sessions start within ten minutes",
        near.len()
    );
    let keys = near.len() as u64;
    let entries = snapshot(&sessions);
    let events = record(&sessions);
    let sampler = Sampler::start(&fake);
    let before = sessions.stats();

    fake.fail_until_cleared();
    let outage = Instant::now();
    let (changed, gone) = (&near[0], &near[1]);
    assert!(fake.set_seats(&changed.id, changed.seats_available + 6));
    assert!(fake.remove_session(&gone.id));
    // The polls come 10 s after the load, all at once.
    let first = sampler
        .first(Route::Sessions, outage, NEAR_POLL + GUARD)
        .await;
    let window = (first, first + Duration::from_secs(3));
    tokio::time::sleep_until(window.1.into()).await;
    assert!(
        loaded.elapsed() < Duration::from_secs(55),
        "the sessions polled once a minute would poll now: the bound below no longer holds"
    );
    let (count, bound, fixed) = assert_backoff(
        &sampler,
        Route::Sessions,
        window,
        Duration::ZERO,
        keys,
        2 * keys,
    );
    assert!(bound * 2 < fixed, "{bound} {fixed}");
    let gaps = sampler.gaps_ms(Route::Sessions, window.0, window.1);
    let failed = sessions.stats().refresh_failures - before.refresh_failures;
    assert!(failed >= 2 * keys, "{failed}");

    // Nothing removed or changed, every entry kept.
    events.assert_quiet_since(outage, "sessions");
    for (key, value) in entries.iter() {
        assert_eq!(sessions.peek(key).as_deref(), Some(&**value));
    }
    assert_eq!(sessions.len(), SESSIONS);

    // Back: the next retry of each poll gets through, with no refresh_all.
    fake.clear_failures();
    let cleared = Instant::now();
    let (seats, updated_at) = events
        .wait_for(cleared, "the polled seat change", |event| match event {
            Event::Updated { key, value, .. } if *key == changed.id => Some(value.seats_available),
            _ => None,
        })
        .await;
    assert_eq!(seats, changed.seats_available + 6);
    let (cause, removed_at) = events
        .wait_for(cleared, "the polled removal", |event| match event {
            Event::Removed { key, cause, .. } if *key == gone.id => Some(*cause),
            _ => None,
        })
        .await;
    assert_eq!(cause, RemovalCause::Gone);
    assert_eq!(sessions.len(), SESSIONS - 1);
    // Let the other polls' retries land too; the next polls are 10 s away.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let recovered = Instant::now();

    // Down again: 10 s after the polls got through, they fail again, and are retried after
    // RETRY_MIN again (0, 0.1, 0.3 s: three requests each in the first half second), not
    // after the 800 ms they had reached.
    fake.fail_until_cleared();
    let again = sampler
        .first(Route::Sessions, recovered, NEAR_POLL + GUARD)
        .await;
    let half = again + Duration::from_millis(500);
    tokio::time::sleep_until(half.into()).await;
    let restarted = sampler.count(Route::Sessions, again, half);
    let restarted_gaps = sampler.gaps_ms(Route::Sessions, again, half);
    fake.clear_failures();
    assert!(
        restarted >= 2 * (keys - 1),
        "{restarted} requests in the first half second for {} polled sessions (gaps {restarted_gaps:?} ms): \
         the polls' backoff did not start over",
        keys - 1
    );

    eprintln!(
        "[figures] per-session polls: {keys} sessions polled every 10 s; in the 3 s from the first failed poll: \
         {count} requests (bound {bound}, fixed-interval {fixed}, gaps {gaps:?} ms), {failed} failed reloads; \
         recovered (update, removal) after {:?} / {:?}; second outage: {restarted} requests in 0.5 s (gaps {restarted_gaps:?} ms)",
        updated_at - cleared,
        removed_at - cleared,
    );
}

/// Polls that failed until their retries waited `RETRY_MAX`, then a successful reload of the
/// whole collection (here `refresh_all`; a periodic cycle does the same): the sessions are
/// fresh again, so the next failed poll must be retried after `RETRY_MIN`, not after the
/// longest delay the previous outage had reached.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_successful_reload_resets_the_backoff_of_session_polls() {
    let fake = FakeVista::start().await;
    let sessions = polled_sessions(&fake).await;
    let near = near_sessions(&fake, &sessions);
    assert!(
        near.len() >= 4,
        "{} sessions start within ten minutes",
        near.len()
    );
    let keys = near.len() as u64;
    let sampler = Sampler::start(&fake);
    let before = sessions.stats().refresh_failures;

    fake.fail_until_cleared();
    // Five failed polls of each: the next retry waits RETRY_MAX (100, 200, 400, 800 ms).
    until(
        NEAR_POLL + GUARD,
        "five failed polls of each session",
        || (sessions.stats().refresh_failures - before >= 5 * keys).then_some(()),
    )
    .await;
    let requests = fake.requests(Route::Sessions);
    fake.clear_failures();
    let report = within(GUARD, "a reload", sessions.refresh_all())
        .await
        .expect("running");
    fake.fail_until_cleared();
    let reloaded = Instant::now();
    assert!(report.bulk && report.failed == 0, "{report:?}");
    assert_eq!(
        fake.requests(Route::Sessions) - requests,
        1,
        "only the reload got through, no poll (else it would have reset its own backoff)"
    );

    // 10 s after the reload the polls fail again.
    let first = sampler
        .first(Route::Sessions, reloaded, NEAR_POLL + GUARD)
        .await;
    let half = first + Duration::from_millis(500);
    // Looked at a little longer than asserted, to show when the retries came.
    let shown = first + Duration::from_millis(1200);
    tokio::time::sleep_until(shown.into()).await;
    let count = sampler.count(Route::Sessions, first, half);
    let gaps = sampler.gaps_ms(Route::Sessions, first, shown);
    fake.clear_failures();
    eprintln!(
        "[figures] after a successful reload: {count} requests for {keys} polled sessions in the first 0.5 s \
         of the next outage (gaps over 1.2 s: {gaps:?} ms)"
    );
    assert!(
        count >= 2 * keys,
        "{count} requests for {keys} polled sessions in the first half second after they failed \
         again (gaps {gaps:?} ms): their retries still wait the delay of the previous outage"
    );
    assert_eq!(sessions.len(), SESSIONS);
}
