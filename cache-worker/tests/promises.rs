//! Promises the README and the rustdoc make, checked from outside through the public API: each
//! test here failed before the fix it guards (issue #11, D1–D6).
//!
//! - D1: a bulk reload leaves alone the keys written or invalidated while `load_all` ran;
//! - D2: a reload never overwrites a newer write, even one of an equal value;
//! - D3: `event_capacity` is exact, and so is `Lagged { missed }`;
//! - D4: a read never returns an entry past its expiry, however late the refresher is;
//! - D5: a dump that gives no live entry is a cold start;
//! - D6: no setting can make `start` panic: each one out of range is an error naming it.

mod common;

use std::time::Duration;

use cache_worker::{ColdStart, Error, Event, EventStream, RemovalCause, StartKind, Worker};
use common::{
    Reply, SeedFailure, Upstream, builder, consecutive, drain_within, key, started, temp_dump,
};

/// Every event that arrives until none has for 100 ms, their versions checked to follow one
/// another and then set to 0 (the expected events below name none).
async fn drain(events: &mut EventStream<String, u64>) -> Vec<Event<String, u64>> {
    consecutive(&drain_within(events, Duration::from_millis(100)).await)
}

fn inserted(k: &str, v: u64) -> Event<String, u64> {
    Event::Inserted {
        key: key(k),
        value: v.into(),
        version: 0,
    }
}

fn removed(k: &str, v: u64, cause: RemovalCause) -> Event<String, u64> {
    Event::Removed {
        key: key(k),
        cause,
        value: v.into(),
        version: 0,
    }
}

// D1 -------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_bulk_reload_keeps_the_writes_made_while_it_loaded() {
    let up = Upstream::new();
    up.set_collection(&[("a", 1), ("b", 2), ("e", 9)]);
    let worker = started(&up, "d1").await;
    // The first cycle (the cold start's bulk load) is over once a cycle asked for now is.
    worker.refresh_all().await.expect("first cycle");
    assert_eq!(worker.len(), 3);

    let mut events = worker.subscribe();
    let hold = up.hold_bulk();
    up.set_collection(&[("a", 1), ("b", 2), ("d", 4)]);
    let cycle = tokio::spawn({
        let worker = worker.clone();
        async move { worker.refresh_all().await }
    });
    hold.entered().await; // load_all has read the collection and waits
    worker.insert(key("a"), 5);
    worker.insert(key("c"), 3);
    assert_eq!(worker.invalidate("b").as_deref(), Some(&2));
    hold.release();
    let report = cycle.await.expect("join").expect("cycle");

    assert_eq!(
        worker.peek("a").as_deref(),
        Some(&5),
        "a was written meanwhile"
    );
    assert_eq!(
        worker.peek("c").as_deref(),
        Some(&3),
        "c was written meanwhile"
    );
    assert_eq!(worker.peek("b"), None, "b was invalidated meanwhile");
    assert_eq!(
        worker.peek("d").as_deref(),
        Some(&4),
        "d follows the collection"
    );
    assert_eq!(worker.peek("e"), None, "e follows the collection");
    let mut keys = worker.keys();
    keys.sort();
    assert_eq!(keys, ["a", "c", "d"]);
    assert_eq!((report.inserted, report.updated, report.removed), (1, 0, 1));
    assert_eq!(
        drain(&mut events).await,
        [
            Event::Updated {
                key: key("a"),
                value: 5.into(),
                previous: 1.into(),
                version: 0,
            },
            inserted("c", 3),
            removed("b", 2, RemovalCause::Invalidated),
            inserted("d", 4),
            removed("e", 9, RemovalCause::Gone),
            Event::FullReload {
                count: 3,
                version: 0
            },
        ],
        "the events say what really changed"
    );
    worker.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn an_invalidate_of_an_absent_key_during_a_bulk_load_keeps_it_out() {
    let up = Upstream::new();
    up.set_collection(&[("a", 1)]);
    let worker = started(&up, "d1-absent").await;
    worker.refresh_all().await.expect("first cycle");

    let hold = up.hold_bulk();
    up.set_collection(&[("a", 1), ("n", 7)]);
    let cycle = tokio::spawn({
        let worker = worker.clone();
        async move { worker.refresh_all().await }
    });
    hold.entered().await;
    // "n changed upstream": the collection read before this is older than the change.
    assert_eq!(worker.invalidate("n"), None);
    hold.release();
    cycle.await.expect("join").expect("cycle");
    assert_eq!(worker.peek("n"), None);

    // The next reload, begun after the invalidate, brings it.
    worker.refresh_all().await.expect("cycle");
    assert_eq!(worker.peek("n").as_deref(), Some(&7));
    worker.shutdown().await.expect("shutdown");
}

// D2 -------------------------------------------------------------------------------------------

/// `insert(a, 1)`; a reload of `a` reads `upstream` and is held; `insert(a, 1)` again; the
/// reload lands. Returns the worker for the checks.
async fn reload_across_an_equal_write(upstream: Reply) -> Worker<Upstream> {
    let up = Upstream::new();
    let worker = started(&up, "d2").await;
    worker.insert(key("a"), 1);
    up.set("a", upstream);
    let hold = up.hold("a");
    let cycle = tokio::spawn({
        let worker = worker.clone();
        async move { worker.refresh_all().await }
    });
    hold.entered().await;
    worker.insert(key("a"), 1); // newer than what the reload read, and equal to what is stored
    hold.release();
    let report = cycle.await.expect("join").expect("cycle");
    assert_eq!(
        (report.reloaded, report.updated, report.removed),
        (0, 0, 0),
        "the reload's result is dropped"
    );
    worker
}

#[tokio::test]
async fn a_reload_does_not_overwrite_a_newer_write_of_an_equal_value() {
    let worker = reload_across_an_equal_write(Reply::Value(2)).await;
    assert_eq!(worker.peek("a").as_deref(), Some(&1));
    worker.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn a_reload_that_finds_the_key_gone_does_not_remove_a_newer_equal_write() {
    let worker = reload_across_an_equal_write(Reply::Missing).await;
    assert_eq!(worker.peek("a").as_deref(), Some(&1));
    worker.shutdown().await.expect("shutdown");
}

// D3 -------------------------------------------------------------------------------------------

/// Subscribes, inserts `k0..k{n}` with nobody reading, then reads what the subscriber gets.
async fn events_of_inserts(capacity: usize, n: u64) -> Vec<Event<String, u64>> {
    let worker = builder(&Upstream::new(), "d3")
        .event_capacity(capacity)
        .start()
        .await
        .expect("start");
    let mut events = worker.subscribe();
    for i in 0..n {
        worker.insert(format!("k{i}"), i);
    }
    let seen = drain(&mut events).await;
    worker.shutdown().await.expect("shutdown");
    seen
}

#[tokio::test]
async fn a_subscriber_more_than_event_capacity_behind_gets_one_exact_lagged() {
    let seen = events_of_inserts(3, 4).await;
    assert_eq!(
        seen,
        [
            Event::Lagged { missed: 1 },
            inserted("k1", 1),
            inserted("k2", 2),
            inserted("k3", 3)
        ]
    );
    // Past the channel's own (power of two) size too: what it dropped is counted as well.
    let seen = events_of_inserts(3, 10).await;
    assert_eq!(
        seen,
        [
            Event::Lagged { missed: 7 },
            inserted("k7", 7),
            inserted("k8", 8),
            inserted("k9", 9)
        ]
    );
    // Within the capacity nothing is dropped.
    let seen = events_of_inserts(3, 3).await;
    assert_eq!(seen.len(), 3);
    assert!(!seen.iter().any(|e| matches!(e, Event::Lagged { .. })));
}

// D4 -------------------------------------------------------------------------------------------

/// A worker whose entries expire 50 ms after they are loaded, on a runtime the test can block
/// so that the refresher's expiry timer cannot run.
async fn expiring(up: &Upstream) -> Worker<Upstream> {
    *up.expire_after.lock() = Some(Duration::from_millis(50));
    started(up, "d4").await
}

#[tokio::test(flavor = "current_thread")]
async fn a_read_never_returns_an_entry_past_its_expiry_even_when_the_timer_is_late() {
    let up = Upstream::with_values(&[("a", 1)]);
    let worker = expiring(&up).await;
    let mut events = worker.subscribe();
    assert_eq!(worker.fetch(&key("a")).await.ok().as_deref(), Some(&1));
    assert_eq!(worker.peek("a").as_deref(), Some(&1));

    // The only runtime thread is blocked: the refresher cannot remove the entry on time.
    std::thread::sleep(Duration::from_millis(120));
    assert_eq!(worker.peek("a"), None, "peek served an expired entry");
    assert!(worker.keys().is_empty(), "keys() listed an expired entry");

    up.set_value("a", 2);
    assert_eq!(
        worker.fetch(&key("a")).await.ok().as_deref(),
        Some(&2),
        "fetch must load again"
    );
    assert_eq!(up.loads_of("a"), 2);
    let seen = drain(&mut events).await;
    assert_eq!(
        seen[..3],
        [
            inserted("a", 1),
            removed("a", 1, RemovalCause::Expired),
            inserted("a", 2)
        ]
    );
    worker.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "current_thread")]
async fn an_insert_over_an_expired_entry_reports_the_expiry_first() {
    let up = Upstream::new();
    let worker = expiring(&up).await;
    let mut events = worker.subscribe();
    worker.insert(key("a"), 1);
    // Blocked past the deadline: the refresher cannot remove the entry first.
    std::thread::sleep(Duration::from_millis(120));
    worker.insert(key("a"), 1);
    assert_eq!(
        worker.peek("a").as_deref(),
        Some(&1),
        "the new entry is live"
    );
    assert_eq!(
        drain(&mut events).await[..3],
        [
            inserted("a", 1),
            removed("a", 1, RemovalCause::Expired),
            inserted("a", 1)
        ],
        "an equal value over an expired entry is a new entry, not an Unchanged"
    );
    worker.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "current_thread")]
async fn after_shutdown_an_expired_entry_is_not_served() {
    let up = Upstream::with_values(&[("a", 1)]);
    let worker = expiring(&up).await;
    assert_eq!(worker.get(&key("a")).await.as_deref(), Some(&1));
    worker.shutdown().await.expect("shutdown");
    assert_eq!(worker.peek("a").as_deref(), Some(&1), "still live");
    tokio::time::sleep(Duration::from_millis(120)).await;
    assert_eq!(worker.peek("a"), None);
    assert_eq!(worker.get(&key("a")).await, None);
    assert_eq!(
        worker.invalidate("a"),
        None,
        "an expired value is not handed back"
    );
}

// D5 -------------------------------------------------------------------------------------------

#[tokio::test]
async fn an_empty_dump_is_a_cold_start_and_seeding_runs_again() {
    let (_dir, file) = temp_dump("d5.dump");
    let up = Upstream::with_seed(Some(Err(SeedFailure::Skip)));
    let start = || builder(&up, "d5").file(&file).start();
    let memory_only = started(&Upstream::new(), "d5-memory").await;
    assert_eq!(memory_only.started(), &StartKind::Cold(ColdStart::NoFile));
    memory_only.shutdown().await.expect("shutdown");
    let first = start().await.expect("start");
    assert_eq!(first.started(), &StartKind::Cold(ColdStart::NotFound));
    first.shutdown().await.expect("shutdown"); // writes an empty dump
    assert!(file.exists());

    *up.seed.lock() = Some(Ok(vec![(key("s"), 1)]));
    let second = start().await.expect("start");
    assert_eq!(
        second.started(),
        &StartKind::Cold(ColdStart::NoLiveEntries { expired: 0 })
    );
    assert_eq!(up.seeds.load(std::sync::atomic::Ordering::SeqCst), 2);
    assert_eq!(second.peek("s").as_deref(), Some(&1), "the seed ran");
    second.shutdown().await.expect("shutdown");

    let third = start().await.expect("start");
    assert_eq!(
        third.started(),
        &StartKind::Warm {
            restored: 1,
            expired: 0
        }
    );
    assert_eq!(up.seeds.load(std::sync::atomic::Ordering::SeqCst), 2);
    third.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn a_dump_whose_entries_all_expired_is_a_cold_start() {
    let (_dir, file) = temp_dump("d5.dump");
    let up = Upstream::new();
    *up.expire_after.lock() = Some(Duration::from_millis(50));
    let start = || builder(&up, "d5-expired").file(&file).start();
    let first = start().await.expect("start");
    first.insert(key("a"), 1);
    first.insert(key("b"), 2);
    first.shutdown().await.expect("shutdown");
    tokio::time::sleep(Duration::from_millis(120)).await;

    let second = start().await.expect("start");
    assert_eq!(
        second.started(),
        &StartKind::Cold(ColdStart::NoLiveEntries { expired: 2 })
    );
    assert!(!second.started().is_warm());
    assert_eq!(second.stats().restored, 0);
    assert_eq!(up.seeds.load(std::sync::atomic::Ordering::SeqCst), 2);
    second.shutdown().await.expect("shutdown");
}

// D6 -------------------------------------------------------------------------------------------

/// The error of a start with `configure` applied; it must not panic.
async fn start_error(
    bucket: &str,
    configure: impl FnOnce(cache_worker::Builder<Upstream>) -> cache_worker::Builder<Upstream>,
) -> Error {
    configure(Worker::builder(Upstream::new()).bucket(bucket))
        .start()
        .await
        .expect_err("out of range")
}

#[tokio::test]
async fn an_out_of_range_setting_is_an_error_naming_it_never_a_panic() {
    let huge = Duration::MAX;
    let cases: Vec<(&str, &str, Error)> = vec![
        (
            "concurrency",
            "65536",
            start_error("d6", |b| b.concurrency(usize::MAX)).await,
        ),
        (
            "event_capacity",
            "1048576",
            start_error("d6", |b| b.event_capacity(usize::MAX)).await,
        ),
        (
            "event_capacity",
            "1048576",
            start_error("d6", |b| b.event_capacity(1 << 40)).await,
        ),
        (
            "refresh",
            "3650 days",
            start_error("d6", |b| b.refresh(huge)).await,
        ),
        (
            "load_timeout",
            "3650 days",
            start_error("d6", |b| b.load_timeout(huge)).await,
        ),
        (
            "shutdown_timeout",
            "3650 days",
            start_error("d6", |b| b.shutdown_timeout(huge)).await,
        ),
        (
            "dump_interval",
            "3650 days",
            start_error("d6", |b| b.dump_interval(huge)).await,
        ),
        (
            "retry_max",
            "3650 days",
            start_error("d6", |b| b.retry_backoff(Duration::from_secs(1), huge)).await,
        ),
    ];
    for (setting, range, error) in cases {
        let Error::InvalidConfig {
            setting: named,
            reason,
            ..
        } = &error
        else {
            panic!("{setting}: {error:?}");
        };
        assert_eq!(*named, setting);
        assert!(reason.contains(range), "{setting}: {reason}");
    }
}
