#![cfg(feature = "vista-testing")]
//! Upstream outages against the fake Vista server (issue #6), through the public API only:
//! 500s and timeouts for longer than several refresh periods while readers run. Every cached
//! key is answered from memory, nothing is removed, the refresher's retries back off (bounded
//! in the fake's request counts), and the workers recover by themselves when the server does.
//! The per-session polls in an outage are in `vista_session_polls.rs`.
//!
//! The real clock throughout: the fake serves real sockets, and tokio's paused clock would
//! auto-advance while waiting on them and fire timeouts that never happened. The settings are
//! short (refresh every 1 s, retries after 100 ms doubling to 800 ms) and every wait is bounded
//! by [`GUARD`], a guard against hangs rather than a speed assertion. Request counts are
//! checked against bounds derived from the backoff schedule, with slack, never exactly (the
//! settings, the schedule and the machinery are in `common/outage.rs`).
//!
//! Lines starting with `[figures]` (shown with `--nocapture`) give what was measured.

mod common;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use cache_worker::vista::testing::FakeVista;
use cache_worker::vista::{Cinema, Cinemas, Film, Films, Session, Sessions, VistaError};
use cache_worker::{Event, FetchError, RemovalCause, Stats, Worker};
use common::outage::*;
use common::vista::{CINEMAS, FILMS, SESSIONS, client, far_fake};
use common::{until, within};

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
// One outage, watched.

/// The events of the three workers.
type Events = (
    Recorder<u32, Cinema>,
    Recorder<String, Film>,
    Recorder<String, Session>,
);

/// What an outage test saw: the two sessions that start last (the first changed upstream during
/// the outage, the second perhaps removed), every event, the fake's requests, the three workers'
/// stats before and after, when the outage ran, the three reads of an uncached key (each
/// worker's error and how long it took), and the reads served meanwhile and the slowest `get`.
struct Outage {
    changed: Arc<Session>,
    gone: Arc<Session>,
    events: Events,
    sampler: Sampler,
    before: [Stats; 3],
    after: [Stats; 3],
    window: (Instant, Instant),
    misses: [(FetchError, Duration); 3],
    reads: u64,
    slowest: Duration,
}

/// Runs an outage of `lasting` that `begin` starts on `fake` while readers read every entry:
/// upstream gives the changed session `seats` more seats (and removes the other if `remove`).
/// Checks that every reader was answered from memory throughout and that nothing changed: no
/// event but a reload, no entry gone.
async fn outage(
    fake: &FakeVista,
    (cinemas, films, sessions): (&Worker<Cinemas>, &Worker<Films>, &Worker<Sessions>),
    begin: impl FnOnce(&FakeVista),
    (seats, remove): (u32, bool),
    lasting: Duration,
) -> Outage {
    let (changed, gone) = two_far_sessions(sessions);
    let events = (record(cinemas), record(films), record(sessions));
    let sampler = Sampler::start(fake);
    let before = [cinemas.stats(), films.stats(), sessions.stats()];
    let stop = Arc::new(AtomicBool::new(false));
    let readers = read_three((cinemas, films, sessions), &stop);

    begin(fake);
    let outage = Instant::now();
    // Changes upstream during the outage, to be seen once it is over.
    assert!(fake.set_seats(&changed.id, changed.seats_available + seats));
    if remove {
        assert!(fake.remove_session(&gone.id));
    }
    tokio::time::sleep(lasting).await;
    let window = (outage, Instant::now());

    let misses = [
        miss(cinemas, &4242).await,
        miss(films, &"HO99999999".to_owned()).await,
        miss(sessions, &"1001-99999999".to_owned()).await,
    ];
    let (reads, slowest) = stop_readers(&stop, readers).await;

    // Nothing was removed, nothing changed, the bucket never shrank.
    events.0.assert_quiet_since(outage, "cinemas");
    events.1.assert_quiet_since(outage, "films");
    events.2.assert_quiet_since(outage, "sessions");
    assert_eq!(
        [cinemas.len(), films.len(), sessions.len()],
        [CINEMAS, FILMS, SESSIONS]
    );
    assert!(reads > 0);
    let after = [cinemas.stats(), films.stats(), sessions.stats()];
    Outage {
        changed,
        gone,
        events,
        sampler,
        before,
        after,
        window,
        misses,
        reads,
        slowest,
    }
}

impl Outage {
    /// The `[figures]` of the outage: how long it ran, the requests per route (`routes`), the
    /// reads served and the slowest `get`, and how long each uncached fetch took.
    fn figures(&self, routes: &[String]) -> String {
        format!(
            "of {:?}; requests per route: {}; reads served {} (slowest get {:?}); \
             uncached fetch answered in {:?} / {:?} / {:?}",
            self.window.1 - self.window.0,
            routes.join("; "),
            self.reads,
            self.slowest,
            self.misses[0].1,
            self.misses[1].1,
            self.misses[2].1,
        )
    }
}

/// Once upstream answers again from `cleared`: the changed session's `seats` more seats arrive,
/// and cinemas and films reload. When each happened.
async fn recovery(
    events: &Events,
    cleared: Instant,
    changed: &Session,
    seats: u32,
) -> (Instant, Instant, Instant) {
    let (now, updated_at) = events
        .2
        .seat_change(cleared, "the seat change after the outage", &changed.id)
        .await;
    assert_eq!(now, changed.seats_available + seats);
    let cinemas_at = events.0.full_reload(cleared, "cinemas to recover").await;
    let films_at = events.1.full_reload(cleared, "films to recover").await;
    (updated_at, cinemas_at, films_at)
}

// ---------------------------------------------------------------------------------------------
// The tests.

/// All three workers loaded, then HTTP 500 on every request for five refresh periods.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_long_500_outage_is_served_from_memory_backs_off_and_recovers() {
    let fake = far_fake().await;
    let (cinemas, films, sessions) = start_three(&fake).await;
    let seen = outage(
        &fake,
        (&cinemas, &films, &sessions),
        FakeVista::fail_until_cleared,
        (5, true),
        OUTAGE,
    )
    .await;
    let outage = seen.window.0;

    // A key that is not cached is an error at once, not a wait for upstream.
    for (error, _) in &seen.misses {
        assert_eq!(
            vista_error(error).and_then(VistaError::status),
            Some(500),
            "{error}"
        );
    }
    assert_eq!(sessions.peek(&seen.gone.id).as_deref(), Some(&*seen.gone));

    // The failures show in the stats: failed reloads, and failed loads (the reloads and the
    // two reads of a missing key).
    for (name, (before, after)) in ["cinemas", "films", "sessions"]
        .into_iter()
        .zip(seen.before.iter().zip(&seen.after))
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
        let (count, bound, fixed) =
            assert_backoff(&seen.sampler, route, seen.window, Duration::ZERO, 1, 4);
        assert!(
            bound * 2 < fixed,
            "the bound ({bound}) must tell backoff from a fixed interval ({fixed})"
        );
        let gaps = seen.sampler.gaps_ms(route, seen.window.0, seen.window.1);
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
    let (updated_at, cinemas_at, films_at) =
        recovery(&seen.events, cleared, &seen.changed, 5).await;
    let (cause, removed_at) = seen
        .events
        .2
        .removal(cleared, "the removal after the outage", &seen.gone.id)
        .await;
    assert_eq!(cause, RemovalCause::Gone);
    assert_eq!(
        [cinemas.len(), films.len(), sessions.len()],
        [CINEMAS, FILMS, SESSIONS - 1]
    );
    assert!(sessions.peek(&seen.gone.id).is_none());
    for event in seen.events.0.since(outage) {
        assert!(
            matches!(event, Event::FullReload { count: CINEMAS, .. }),
            "{event:?}"
        );
    }
    for event in seen.events.1.since(outage) {
        assert!(
            matches!(event, Event::FullReload { count: FILMS, .. }),
            "{event:?}"
        );
    }
    let removed: Vec<_> = seen
        .events
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
        "[figures] 500 outage {}; \
         recovered (cinemas, films, session update, session removal) after {:?} / {:?} / {:?} / {:?}; \
         stats after: cinemas {:?} films {:?} sessions {:?}",
        seen.figures(&figures),
        cinemas_at - cleared,
        films_at - cleared,
        updated_at - cleared,
        removed_at - cleared,
        failures(&seen.before[0], &seen.after[0]),
        failures(&seen.before[1], &seen.after[1]),
        failures(&seen.before[2], &seen.after[2]),
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
    let seen = outage(
        &fake,
        (&cinemas, &films, &sessions),
        |fake| fake.set_latency(LATENCY),
        (4, false),
        SLOW_OUTAGE,
    )
    .await;

    // A key that is not cached: a timeout error, not a hang.
    let [(cinema_miss, _), (film_miss, _), (session_miss, _)] = &seen.misses;
    for error in [cinema_miss, session_miss] {
        assert!(
            vista_error(error).is_some_and(VistaError::is_timeout),
            "{error}"
        );
    }
    assert!(
        matches!(film_miss, FetchError::Timeout(t) if *t == CLIENT_TIMEOUT),
        "{film_miss}"
    );

    // The reloads ended as errors: timeouts of the client (a load error) or of the worker.
    let changes = [0, 1, 2].map(|i| failures(&seen.before[i], &seen.after[i]));
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
                assert_backoff(&seen.sampler, route, seen.window, CLIENT_TIMEOUT, 1, 2);
            let gaps = seen.sampler.gaps_ms(route, seen.window.0, seen.window.1);
            format!("{route:?} {count} (bound {bound}, fixed-interval {fixed}, gaps {gaps:?} ms)")
        })
        .collect();

    fake.set_latency(Duration::ZERO);
    let cleared = Instant::now();
    let (updated_at, cinemas_at, films_at) =
        recovery(&seen.events, cleared, &seen.changed, 4).await;
    assert_eq!(
        [cinemas.len(), films.len(), sessions.len()],
        [CINEMAS, FILMS, SESSIONS]
    );

    eprintln!(
        "[figures] timeout outage (latency {LATENCY:?}, timeouts {CLIENT_TIMEOUT:?}) {}; \
         recovered (cinemas, films, session update) after {:?} / {:?} / {:?}; (refresh failures, load errors, timeouts): {changes:?}",
        seen.figures(&figures),
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
    let (cinemas, films, sessions) = start_three(&fake).await;
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
    let (cinemas, films, sessions) = start_three(&fake).await;
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
        .seat_change(from, "the seat change", &changed.id)
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
            Event::FullReload { count, .. } => assert_eq!(count, SESSIONS),
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
            matches!(event, Event::FullReload { count: CINEMAS, .. }),
            "{event:?}"
        );
    }
    for event in events.1.since(from) {
        assert!(
            matches!(event, Event::FullReload { count: FILMS, .. }),
            "{event:?}"
        );
    }
    for event in events.2.since(from) {
        assert!(
            matches!(
                event,
                Event::FullReload {
                    count: SESSIONS,
                    ..
                }
            ),
            "{event:?}"
        );
    }
    assert_eq!(
        [cinemas.len(), films.len(), sessions.len()],
        [CINEMAS, FILMS, SESSIONS]
    );
}
