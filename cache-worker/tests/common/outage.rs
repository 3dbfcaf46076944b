//! The outage tests' machinery (feature `vista-testing`): the short refresh and retry settings
//! and the backoff schedule they imply, the three workers started with them, an event
//! recorder, a sampler of the fake's request counters, readers that check every answer, and
//! the checks of a route's requests against the schedule.

use std::fmt::Debug;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use cache_worker::vista::VistaWorker;
use cache_worker::vista::testing::{FakeVista, Route};
use cache_worker::vista::{Cinemas, Feed, Films, Session, Sessions, VistaClient, VistaError};
use cache_worker::{Builder, CacheWorker, Event, FetchError, RemovalCause, Stats, Worker};
use futures_util::StreamExt;
use parking_lot::Mutex;
use tokio::task::JoinHandle;

use super::vista::{CINEMAS, FILMS, SESSIONS, by_showtime, client};
use super::wait::{POLL, until, within};

/// The refresh period of every worker here.
pub const REFRESH: Duration = Duration::from_secs(1);
/// The first retry delay of a failed reload; it doubles with each further failure...
pub const RETRY_MIN: Duration = Duration::from_millis(100);
/// ... up to this.
pub const RETRY_MAX: Duration = Duration::from_millis(800);
// A failed bulk reload is retried after `min(retry delay, refresh period)`; with the longest
// retry delay below the period, the schedule below is the retry delay alone.
const _: () = assert!(RETRY_MAX.as_millis() < REFRESH.as_millis());
/// How long the 500 outage lasts: five refresh periods.
pub const OUTAGE: Duration = Duration::from_secs(5);
/// How long the timeout outage lasts: three refresh periods.
pub const SLOW_OUTAGE: Duration = Duration::from_secs(3);
/// The fake's latency in the timeout outage, ...
pub const LATENCY: Duration = Duration::from_secs(1);
/// ... well past the client's timeout.
pub const CLIENT_TIMEOUT: Duration = Duration::from_millis(250);
/// The longest any single wait may take: a guard against hangs, not a speed assertion.
pub const GUARD: Duration = Duration::from_secs(5);
/// Requests allowed over a computed bound: one in flight at each edge of a window, and one
/// more for the sampling of the fake's counters.
pub const SLACK: u64 = 3;
/// The Sessions TTL: sessions whose poll interval is `None` or at least a minute are not
/// polled on their own within one test.
pub const SESSIONS_TTL: Duration = Duration::from_secs(3600);
/// The poll interval of a session that starts within ten minutes.
pub const NEAR_POLL: Duration = Duration::from_secs(10);

/// The delay before retry `n` (1-based) of a failed reload: `RETRY_MIN`, doubled with each
/// further failure, at most `RETRY_MAX`.
pub fn retry_delay(n: u32) -> Duration {
    RETRY_MIN
        .saturating_mul(1 << n.saturating_sub(1).min(20))
        .min(RETRY_MAX)
}

/// The most attempts one retry schedule (starting from no failures) can make in `window` when
/// every failed attempt takes at least `attempt`: one at the window's start, then one after
/// each retry delay.
pub fn backoff_bound(window: Duration, attempt: Duration) -> u64 {
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
pub fn fixed_interval_bound(window: Duration, attempt: Duration) -> u64 {
    let step = (attempt + RETRY_MIN).as_micros();
    u64::try_from(window.as_micros() / step).unwrap_or(u64::MAX) + 1
}

/// Starts a worker with the short settings (and whatever `configure` adds), memory only, and
/// waits until its collection is loaded.
pub async fn start<F: Feed>(
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

/// The three workers, started with the short settings on `fake`, each loaded.
pub async fn start_three(fake: &FakeVista) -> (Worker<Cinemas>, Worker<Films>, Worker<Sessions>) {
    let three: (Worker<Cinemas>, Worker<Films>, Worker<Sessions>) = (
        start(client(fake), |b| b).await,
        start(client(fake), |b| b).await,
        start(client(fake), |b| b).await,
    );
    assert_eq!(
        [three.0.len(), three.1.len(), three.2.len()],
        [CINEMAS, FILMS, SESSIONS]
    );
    three
}

/// The two sessions that start last: a bulk reload is the only thing that reads them.
pub fn two_far_sessions(sessions: &Worker<Sessions>) -> (Arc<Session>, Arc<Session>) {
    let mut all = by_showtime(sessions);
    let last = all.pop().expect("sessions are loaded");
    let before = all.pop().expect("two sessions");
    (last, before)
}

/// Every entry of a worker at one moment.
pub type Snapshot<W> = Arc<Vec<(<W as CacheWorker>::Key, Arc<<W as CacheWorker>::Value>)>>;

/// Every entry of a worker now.
pub fn snapshot<W: CacheWorker>(worker: &Worker<W>) -> Snapshot<W> {
    Arc::new(
        worker
            .keys()
            .into_iter()
            .filter_map(|key| worker.peek(&key).map(|value| (key, value)))
            .collect(),
    )
}

/// Events with when they arrived.
pub type Log<K, V> = Arc<Mutex<Vec<(Instant, Event<K, V>)>>>;

/// Every event of one worker, with when it arrived.
pub struct Recorder<K, V> {
    log: Log<K, V>,
    task: JoinHandle<()>,
}

pub fn record<W: CacheWorker>(worker: &Worker<W>) -> Recorder<W::Key, W::Value> {
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
    pub fn since(&self, from: Instant) -> Vec<Event<K, V>> {
        self.log
            .lock()
            .iter()
            .filter(|(at, _)| *at >= from)
            .map(|(_, event)| event.clone())
            .collect()
    }

    /// The first event since `from` that `pick` accepts, and when it arrived.
    pub async fn wait_for<T>(
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
    pub async fn full_reload(&self, from: Instant, what: &str) -> Instant {
        self.wait_for(from, what, |event| {
            matches!(event, Event::FullReload { .. }).then_some(())
        })
        .await
        .1
    }

    /// Checks that nothing changed since `from` while upstream failed: no entry inserted,
    /// updated or removed, and at most one full reload (of a cycle answered just before the
    /// outage began).
    pub fn assert_quiet_since(&self, from: Instant, worker: &str) {
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

impl Recorder<String, Session> {
    /// The first change of session `id`'s seats since `from`: the seats, and when it arrived.
    pub async fn seat_change(&self, from: Instant, what: &str, id: &str) -> (u32, Instant) {
        self.wait_for(from, what, |event| match event {
            Event::Updated { key, value, .. } if key == id => Some(value.seats_available),
            _ => None,
        })
        .await
    }

    /// The first removal of session `id` since `from`: its cause, and when it arrived.
    pub async fn removal(&self, from: Instant, what: &str, id: &str) -> (RemovalCause, Instant) {
        self.wait_for(from, what, |event| match event {
            Event::Removed { key, cause, .. } if key == id => Some(*cause),
            _ => None,
        })
        .await
    }
}

impl<K, V> Drop for Recorder<K, V> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// When requests reached each route, seen by polling the fake's counters every [`POLL`].
pub struct Sampler {
    arrivals: Arc<Mutex<Vec<(Route, Instant)>>>,
    task: JoinHandle<()>,
}

pub const ROUTES: [Route; 3] = [Route::Cinemas, Route::Films, Route::Sessions];

impl Sampler {
    pub fn start(fake: &FakeVista) -> Sampler {
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
    pub fn times(&self, route: Route, from: Instant, to: Instant) -> Vec<Instant> {
        self.arrivals
            .lock()
            .iter()
            .filter(|(r, at)| *r == route && *at >= from && *at < to)
            .map(|(_, at)| *at)
            .collect()
    }

    pub fn count(&self, route: Route, from: Instant, to: Instant) -> u64 {
        self.times(route, from, to).len() as u64
    }

    /// When the first request since `from` reached `route`.
    pub async fn first(&self, route: Route, from: Instant, limit: Duration) -> Instant {
        until(limit, &format!("a request to {route:?}"), || {
            self.times(route, from, far_future()).first().copied()
        })
        .await
    }

    /// The gaps between consecutive requests to `route` in `[from, to)`, in milliseconds.
    pub fn gaps_ms(&self, route: Route, from: Instant, to: Instant) -> Vec<u128> {
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

pub fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(3600)
}

/// Readers of every key of one worker.
pub type Readers = Vec<JoinHandle<(u64, Duration)>>;

/// Starts `tasks` readers that, until `stop`, `peek` and `get` every key of `entries` and check
/// that each is answered with its value, and that the bucket never shrinks. Each gives how many
/// reads it made and the slowest `get`.
pub fn read_all<W: CacheWorker>(
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

/// [`read_all`] of the three workers, two readers each.
pub fn read_three(
    (cinemas, films, sessions): (&Worker<Cinemas>, &Worker<Films>, &Worker<Sessions>),
    stop: &Arc<AtomicBool>,
) -> Readers {
    let mut readers = read_all(cinemas, &snapshot(cinemas), 2, stop);
    readers.extend(read_all(films, &snapshot(films), 2, stop));
    readers.extend(read_all(sessions, &snapshot(sessions), 2, stop));
    readers
}

/// Stops the readers and sums what they did.
pub async fn stop_readers(stop: &AtomicBool, readers: Readers) -> (u64, Duration) {
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
pub async fn miss<W: CacheWorker>(worker: &Worker<W>, key: &W::Key) -> (FetchError, Duration)
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
pub fn vista_error(error: &FetchError) -> Option<&VistaError> {
    match error {
        FetchError::Load(source) => source.downcast_ref::<VistaError>(),
        _ => None,
    }
}

/// The change in two snapshots of the counters.
pub fn failures(before: &Stats, after: &Stats) -> (u64, u64, u64) {
    (
        after.refresh_failures - before.refresh_failures,
        after.load_errors - before.load_errors,
        after.timeouts - before.timeouts,
    )
}

/// Checks the requests a route got in `[from, to)` against the backoff schedule: at most its
/// bound (plus `SLACK`, plus `extra` requests the test made itself), clearly fewer than retries
/// every `RETRY_MIN` would make, and at least `at_least`. Gives the count and the bound.
pub fn assert_backoff(
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
