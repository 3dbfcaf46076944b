//! The core behaviour through the public API: reads, coalescing, isolation, refresh, events.

mod common;

use std::sync::Arc;
use std::time::Duration;

use cache_worker::{Event, FetchError, RemovalCause, Worker};
use common::{
    Reply, Upstream, consecutive, drain, drain_within, key, settle, spawn_fetch, started,
    started_with,
};
use futures_util::StreamExt;

async fn start(upstream: &Upstream) -> Worker<Upstream> {
    started(upstream, "test").await
}

#[tokio::test]
async fn get_fetch_peek_keys() {
    let up = Upstream::with_values(&[("a", 1), ("b", 2)]);
    let w = start(&up).await;

    assert_eq!(w.peek("a"), None, "peek never loads");
    assert_eq!(w.fetch(&key("a")).await.expect("a").as_ref(), &1);
    assert_eq!(w.get(&key("b")).await.as_deref(), Some(&2));
    assert_eq!(w.peek("a").as_deref(), Some(&1));
    let mut keys = w.keys();
    keys.sort();
    assert_eq!(keys, ["a", "b"]);
    assert_eq!(w.len(), 2);

    // A hit does not load again.
    w.fetch(&key("a")).await.expect("a");
    assert_eq!(up.loads_of("a"), 1);
    let stats = w.stats();
    assert_eq!(stats.loads, 2);
    assert_eq!(stats.entries, 2);
    assert!(stats.hits >= 2, "{stats:?}");
}

#[tokio::test]
async fn load_error_panic_and_not_found_store_nothing() {
    let up = Upstream::new();
    up.set("err", Reply::Fail("database on fire"));
    up.set("boom", Reply::Panic("loader exploded"));
    let w = start(&up).await;

    let err = w.fetch(&key("err")).await.expect_err("error");
    assert!(matches!(err, FetchError::Load(_)), "{err:?}");
    assert!(err.to_string().contains("database on fire"), "{err}");

    let err = w.fetch(&key("boom")).await.expect_err("panic");
    assert!(matches!(err, FetchError::Panicked(_)), "{err:?}");
    assert!(err.to_string().contains("loader exploded"), "{err}");

    let err = w.fetch(&key("nobody")).await.expect_err("missing");
    assert!(matches!(err, FetchError::NotFound), "{err:?}");
    assert_eq!(w.get(&key("nobody")).await, None);

    assert_eq!(w.len(), 0, "nothing stored");
    let stats = w.stats();
    assert_eq!(
        (stats.load_errors, stats.panics, stats.not_found),
        (1, 1, 2)
    );

    // The next fetch tries again, and succeeds once upstream does.
    up.set_value("err", 7);
    assert_eq!(*w.fetch(&key("err")).await.expect("retry"), 7);
    assert_eq!(up.loads_of("err"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_misses_share_one_load() {
    let up = Upstream::with_values(&[("hot", 42)]);
    up.set_delay(Duration::from_millis(50));
    let w = start(&up).await;

    let readers: Vec<_> = (0..200).map(|_| spawn_fetch(&w, "hot")).collect();
    for r in readers {
        assert_eq!(*r.await.expect("join").expect("value"), 42);
    }
    assert_eq!(up.loads_of("hot"), 1);
    assert_eq!(w.stats().coalesced, 199);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_load_gives_every_waiter_the_error_once() {
    let up = Upstream::new();
    up.set("bad", Reply::Panic("kaboom"));
    up.set_delay(Duration::from_millis(50));
    let w = start(&up).await;

    let readers: Vec<_> = (0..20).map(|_| spawn_fetch(&w, "bad")).collect();
    for r in readers {
        let err = r.await.expect("no reader panics").expect_err("error");
        assert!(
            matches!(&err, FetchError::Panicked(m) if m.contains("kaboom")),
            "{err:?}"
        );
    }
    assert_eq!(up.loads_of("bad"), 1);
    assert_eq!(w.stats().panics, 1);
    assert_eq!(w.len(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_fetch_cancels_nothing_for_the_others() {
    let up = Upstream::with_values(&[("k", 5)]);
    up.set_delay(Duration::from_secs(1));
    let w = start(&up).await;

    let first = spawn_fetch(&w, "k");
    settle().await;
    let second = spawn_fetch(&w, "k");
    settle().await;
    first.abort();
    assert!(first.await.expect_err("aborted").is_cancelled());

    assert_eq!(*second.await.expect("join").expect("value"), 5);
    assert_eq!(up.loads_of("k"), 1);
    assert_eq!(w.peek("k").as_deref(), Some(&5));

    // Even with every waiter gone the load finishes and stores its value.
    up.set_value("lonely", 9);
    let only = spawn_fetch(&w, "lonely");
    settle().await;
    only.abort();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(w.peek("lonely").as_deref(), Some(&9));
}

#[tokio::test(start_paused = true)]
async fn the_load_timeout_gives_timeout_and_stores_nothing() {
    let up = Upstream::new();
    up.set("slow", Reply::Hang);
    let w = started_with(&up, "timeouts", |b| b.load_timeout(Duration::from_secs(3))).await;
    let err = w.fetch(&key("slow")).await.expect_err("timeout");
    assert!(
        matches!(err, FetchError::Timeout(d) if d == Duration::from_secs(3)),
        "{err:?}"
    );
    assert_eq!(w.stats().timeouts, 1);
    assert_eq!(w.len(), 0);
    // The next fetch tries again.
    up.set_value("slow", 1);
    assert_eq!(*w.fetch(&key("slow")).await.expect("second try"), 1);
}

#[tokio::test(start_paused = true)]
async fn periodic_refresh_reloads_every_key_and_keeps_old_values_on_error() {
    let up = Upstream::new();
    for (k, v) in [("a", 1), ("b", 2), ("c", 3)] {
        up.set_value(k, v);
    }
    let w = started_with(&up, "periodic", |b| {
        b.refresh(Duration::from_secs(60))
            .retry_backoff(Duration::from_secs(5), Duration::from_secs(20))
    })
    .await;
    for k in ["a", "b", "c"] {
        w.fetch(&key(k)).await.expect("load");
    }
    let mut events = w.subscribe();

    up.set_value("a", 10); // changed
    up.set("b", Reply::Fail("upstream down")); // stale-if-error
    up.set("c", Reply::Missing); // gone
    tokio::time::sleep(Duration::from_secs(61)).await;
    settle().await;

    assert_eq!(up.loads_of("a"), 2);
    assert_eq!(w.peek("a").as_deref(), Some(&10));
    assert_eq!(
        w.peek("b").as_deref(),
        Some(&2),
        "stale-if-error keeps the old value"
    );
    assert_eq!(w.peek("c"), None, "Ok(None) removes");

    let seen = consecutive(&drain(&mut events).await);
    assert!(seen.contains(&Event::Updated {
        key: key("a"),
        value: Arc::new(10),
        previous: Arc::new(1),
        version: 0,
    }));
    assert!(seen.contains(&Event::Removed {
        key: key("c"),
        cause: RemovalCause::Gone,
        value: Arc::new(3),
        version: 0,
    }));
    assert!(
        matches!(seen.last(), Some(Event::FullReload { count: 2, .. })),
        "{seen:?}"
    );
    let stats = w.stats();
    assert_eq!(
        (
            stats.refresh_cycles,
            stats.updated,
            stats.removed,
            stats.refresh_failures
        ),
        (1, 1, 1, 1)
    );

    // The failed key is retried with backoff (5 s, then 10 s) before the next cycle.
    let before = up.loads_of("b");
    tokio::time::sleep(Duration::from_secs(6)).await;
    settle().await;
    assert_eq!(up.loads_of("b"), before + 1, "first retry after 5 s");
    tokio::time::sleep(Duration::from_secs(6)).await;
    settle().await;
    assert_eq!(up.loads_of("b"), before + 1, "second retry waits 10 s");
    up.set_value("b", 20);
    tokio::time::sleep(Duration::from_secs(5)).await;
    settle().await;
    assert_eq!(w.peek("b").as_deref(), Some(&20));
}

#[tokio::test(start_paused = true)]
async fn refresh_all_runs_a_cycle_now_and_reports_it() {
    let up = Upstream::with_values(&[("x", 1)]);
    let w = start(&up).await;
    w.fetch(&key("x")).await.expect("x");
    up.set_value("x", 2);
    let report = w.refresh_all().await.expect("cycle");
    assert_eq!((report.reloaded, report.updated, report.entries), (1, 1, 1));
    assert!(!report.bulk);
    assert_eq!(w.peek("x").as_deref(), Some(&2));
}

#[tokio::test(start_paused = true)]
async fn per_entry_expiry_and_refresh_follow_the_clock() {
    let up = Upstream::with_values(&[("e", 1)]);
    *up.expire_after.lock() = Some(Duration::from_secs(30));
    let w = start(&up).await;
    let mut events = w.subscribe();
    w.fetch(&key("e")).await.expect("e");
    tokio::time::sleep(Duration::from_secs(29)).await;
    settle().await;
    assert_eq!(w.peek("e").as_deref(), Some(&1));
    tokio::time::sleep(Duration::from_secs(2)).await;
    settle().await;
    assert_eq!(w.peek("e"), None, "expired after 30 s");
    assert_eq!(w.stats().expired, 1);
    assert_eq!(
        drain(&mut events).await.pop(),
        Some(Event::Removed {
            key: key("e"),
            cause: RemovalCause::Expired,
            value: Arc::new(1),
            version: w.version(),
        })
    );

    // Per-entry refresh: reloaded every 10 s on its own timer, with no periodic cycle at all.
    *up.expire_after.lock() = None;
    *up.refresh_after.lock() = Some(Duration::from_secs(10));
    up.set_value("r", 1);
    w.fetch(&key("r")).await.expect("r");
    up.set_value("r", 2);
    tokio::time::sleep(Duration::from_secs(11)).await;
    settle().await;
    assert_eq!(up.loads_of("r"), 2);
    assert_eq!(w.peek("r").as_deref(), Some(&2));
    tokio::time::sleep(Duration::from_secs(10)).await;
    settle().await;
    assert_eq!(up.loads_of("r"), 3);
    assert_eq!(w.stats().refresh_cycles, 0, "no full cycle ran");
}

/// Regression: a bulk reload compared each entry's expiry with a `now` read before the entries
/// were made, so on a real clock an entry whose `expire_after` was zero (a show that ended)
/// slipped in whenever the millisecond ticked, and an expired entry came back with every reload.
#[tokio::test]
async fn a_bulk_reload_never_stores_an_entry_that_has_already_expired() {
    let up = Upstream::new();
    let collection: Vec<(String, u64)> = (0..20_000).map(|i| (format!("k{i}"), i)).collect();
    *up.collection.lock() = Some(Ok(collection));
    *up.expire_after.lock() = Some(Duration::ZERO);
    let w = start(&up).await;
    let mut events = w.subscribe();
    let report = w.refresh_all().await.expect("cycle");
    assert!(report.bulk, "{report:?}");
    assert_eq!((report.inserted, report.entries), (0, 0), "{report:?}");
    assert!(w.is_empty());
    assert_eq!(w.stats().inserted, 0);
    for event in drain(&mut events).await {
        assert!(
            matches!(event, Event::FullReload { .. }),
            "no entry event for an expired entry: {event:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn bulk_load_swaps_the_collection_and_reports_the_difference() {
    let up = Upstream::new();
    up.set_collection(&[("a", 1), ("b", 2), ("c", 3)]);
    let w = started_with(&up, "bulk", |b| b.refresh(Duration::from_secs(3600))).await;
    // The first bulk load runs right after a cold start.
    let mut events = w.subscribe();
    for _ in 0..100 {
        if w.len() == 3 {
            break;
        }
        settle().await;
    }
    assert_eq!(w.len(), 3);
    drain(&mut events).await;

    up.set_collection(&[("a", 1), ("b", 20), ("d", 4)]);
    let report = w.refresh_all().await.expect("cycle");
    assert!(report.bulk);
    assert_eq!(
        (
            report.inserted,
            report.updated,
            report.unchanged,
            report.removed,
            report.entries
        ),
        (1, 1, 1, 1, 3)
    );
    let seen = consecutive(&drain(&mut events).await);
    assert_eq!(seen.len(), 4, "{seen:?}");
    assert!(seen.contains(&Event::Inserted {
        key: key("d"),
        value: Arc::new(4),
        version: 0,
    }));
    assert!(seen.contains(&Event::Updated {
        key: key("b"),
        value: Arc::new(20),
        previous: Arc::new(2),
        version: 0,
    }));
    assert!(seen.contains(&Event::Removed {
        key: key("c"),
        cause: RemovalCause::Gone,
        value: Arc::new(3),
        version: 0,
    }));
    assert_eq!(
        seen.last(),
        Some(&Event::FullReload {
            count: 3,
            version: 0
        })
    );

    // A failing bulk load keeps the old collection.
    up.fail_collection("feed down");
    let report = w.refresh_all().await.expect("cycle");
    assert_eq!(report.failed, 1);
    assert_eq!(w.len(), 3);
    assert_eq!(w.peek("b").as_deref(), Some(&20));
}

#[tokio::test]
async fn equal_writes_emit_nothing() {
    let up = Upstream::new();
    let w = start(&up).await;
    let mut events = w.subscribe();
    let v0 = w.version();
    w.insert(key("k"), 1);
    w.insert(key("k"), 1);
    w.insert(key("k"), Arc::new(1));
    w.insert(key("k"), 2);
    assert_eq!(w.invalidate("k").as_deref(), Some(&2));
    assert_eq!(w.invalidate("k"), None);
    let seen = drain_within(&mut events, Duration::from_millis(10)).await;
    assert_eq!(
        seen,
        [
            Event::Inserted {
                key: key("k"),
                value: Arc::new(1),
                version: v0 + 1,
            },
            Event::Updated {
                key: key("k"),
                value: Arc::new(2),
                previous: Arc::new(1),
                version: v0 + 2,
            },
            Event::Removed {
                key: key("k"),
                cause: RemovalCause::Invalidated,
                value: Arc::new(2),
                version: v0 + 3,
            },
        ]
    );
    assert_eq!(w.stats().unchanged, 2);
}

#[tokio::test]
async fn a_subscriber_that_falls_behind_is_told_how_much_it_missed() {
    let up = Upstream::new();
    let w = Worker::builder(up.clone())
        .bucket("lag")
        .event_capacity(4)
        .start()
        .await
        .expect("start");
    let mut events = w.subscribe();
    for i in 0..10 {
        w.insert(key("k"), i);
    }
    assert_eq!(events.next().await, Some(Event::Lagged { missed: 6 }));
    assert!(matches!(events.next().await, Some(Event::Updated { .. })));
}

#[tokio::test]
async fn fetch_unsaved_then_insert_commits() {
    let up = Upstream::with_values(&[("v", 3)]);
    let w = start(&up).await;
    let fetched = w.fetch_unsaved(&key("v")).await.expect("loaded");
    assert!(fetched.loaded);
    assert_eq!(w.peek("v"), None, "not saved");
    w.insert(key("v"), fetched.value.clone());
    let again = w.fetch_unsaved(&key("v")).await.expect("cached");
    assert!(!again.loaded);
    assert_eq!(up.loads_of("v"), 1);
}

#[tokio::test]
async fn cache_disabled_loads_every_time_and_stores_nothing() {
    let up = Upstream::with_values(&[("v", 3)]);
    let w = Worker::builder(up.clone())
        .bucket("bypass")
        .cache_enabled(false)
        .start()
        .await
        .expect("start");
    for _ in 0..3 {
        assert_eq!(*w.fetch(&key("v")).await.expect("v"), 3);
    }
    assert_eq!(up.loads_of("v"), 3);
    assert_eq!(w.len(), 0);
    assert_eq!(w.peek("v"), None);
}

#[tokio::test]
async fn after_shutdown_hits_are_served_and_misses_do_not_load() {
    let up = Upstream::with_values(&[("a", 1), ("b", 2)]);
    let w = start(&up).await;
    w.fetch(&key("a")).await.expect("a");
    w.shutdown().await.expect("shutdown");
    w.shutdown().await.expect("shutdown"); // twice is fine
    assert_eq!(*w.fetch(&key("a")).await.expect("hit"), 1);
    assert!(matches!(
        w.fetch(&key("b")).await,
        Err(FetchError::NotStarted)
    ));
    assert!(w.refresh_all().await.is_err());
}

#[tokio::test]
async fn invalid_settings_are_start_errors() {
    let err = Worker::builder(Upstream::new())
        .bucket("bad")
        .concurrency(0)
        .start()
        .await
        .expect_err("invalid");
    assert!(err.to_string().contains("concurrency"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn dropping_the_last_handle_stops_the_background_tasks() {
    let up = Upstream::with_values(&[("a", 1)]);
    let w = started_with(&up, "dropped", |b| b.refresh(Duration::from_secs(1))).await;
    w.fetch(&key("a")).await.expect("a");
    let second = w.clone();
    drop(w);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        up.loads_of("a") >= 2,
        "a live handle keeps the refresher running"
    );
    drop(second);
    settle().await;
    let loads = up.loads_of("a");
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(
        up.loads_of("a"),
        loads,
        "no refresh after the last handle is gone"
    );
    // The worker's state (and the upstream it holds) is released.
    assert_eq!(std::sync::Arc::strong_count(&up.loads), 1);
}
