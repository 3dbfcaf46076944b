#![cfg(feature = "vista-testing")]
//! The per-session polls of the Sessions worker in an outage of the fake Vista server (issue
//! #6), through the public API only: each session near its showtime is polled on its own every
//! 10 s, a failed poll is retried with backoff, and the backoff starts over after a recovery or
//! a successful reload of the whole collection. The settings, the schedule and the machinery
//! are those of `vista_outage.rs` (in `common/outage.rs`); the real clock throughout.
//!
//! Lines starting with `[figures]` (shown with `--nocapture`) give what was measured.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use cache_worker::vista::testing::{FakeVista, Route};
use cache_worker::vista::{Session, Sessions, poll_interval};
use cache_worker::{RemovalCause, Worker};
use common::outage::*;
use common::vista::{SESSIONS, by_showtime, client};
use common::{until, within};

/// The sessions that are polled every 10 s (the ones starting within ten minutes, at least four
/// of them), after checking that every other one is polled at most once a minute, that is
/// never within a test.
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
    assert!(
        near.len() >= 4,
        "{} sessions start within ten minutes",
        near.len()
    );
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
        .seat_change(cleared, "the polled seat change", &changed.id)
        .await;
    assert_eq!(seats, changed.seats_available + 6);
    let (cause, removed_at) = events
        .removal(cleared, "the polled removal", &gone.id)
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
