//! Cancellation and time: reads and refreshes dropped part-way, loads cut by the load timeout,
//! and refresh and expiry schedules on tokio's paused clock. Shutdown while loads and dumps are
//! in flight is in `shutdown.rs`.
//!
//! Covered elsewhere and not repeated here (tests/worker.rs): one aborted waiter of a coalesced
//! load, a plain load timeout, periodic refresh with backoff, per-entry refresh and expiry.

mod common;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::task::Poll;
use std::time::Duration;

use cache_worker::{CacheWorker, Entries, Event, FetchError, RemovalCause};
use common::{Reply, Timeline, Upstream, drain, key, poll_once, started, started_with};
use parking_lot::Mutex;
use tokio::time::Instant;

// ---------------------------------------------------------------------------------------------
// Reads dropped part-way
// ---------------------------------------------------------------------------------------------

/// A loader with six await points (three sleeps of 100 ms, three yields) that counts its calls
/// and the calls dropped before they finished.
#[derive(Clone, Default)]
struct Steps {
    loads: Arc<Mutex<HashMap<u32, u32>>>,
    finished: Arc<AtomicU64>,
    dropped: Arc<AtomicU64>,
}

struct Finish<'a> {
    steps: &'a Steps,
    done: bool,
}

impl Drop for Finish<'_> {
    fn drop(&mut self) {
        let counter = if self.done {
            &self.steps.finished
        } else {
            &self.steps.dropped
        };
        counter.fetch_add(1, SeqCst);
    }
}

impl CacheWorker for Steps {
    type Key = u32;
    type Value = u32;
    type Error = std::io::Error;

    async fn load(&self, key: &u32) -> Result<Option<u32>, std::io::Error> {
        *self.loads.lock().entry(*key).or_default() += 1;
        let mut finish = Finish {
            steps: self,
            done: false,
        };
        for step in 0..6 {
            if step % 2 == 0 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            } else {
                tokio::task::yield_now().await;
            }
        }
        finish.done = true;
        Ok(Some(key * 10))
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Read {
    Fetch,
    Get,
    FetchUnsaved,
}

/// Each kind of read is polled 0, 1, 2, ... times, 40 ms of the load apart, then dropped: at
/// every await point of the load and before, during and after it. Other waiters still get the
/// value, the load of a dropped `fetch`/`get` still lands (it runs on its own task), no flight
/// stays stuck, a later read works, and the stats add up.
#[tokio::test(start_paused = true)]
async fn a_read_dropped_at_any_point_strands_nothing() {
    let up = Steps::default();
    let worker = started(&up, "dropped-reads").await;
    let mut next_key = 0;
    let mut second_waiters = 0;
    let mut dropped_unsaved = 0;
    let mut cases = 0;
    for read in [Read::Fetch, Read::Get, Read::FetchUnsaved] {
        for polls in 0..=12 {
            next_key += 1;
            let key = next_key;
            cases += 1;
            let mut future: Pin<Box<dyn Future<Output = Option<u32>>>> =
                {
                    let worker = worker.clone();
                    match read {
                        Read::Fetch => {
                            Box::pin(async move { worker.fetch(&key).await.ok().map(|v| *v) })
                        }
                        Read::Get => Box::pin(async move { worker.get(&key).await.map(|v| *v) }),
                        Read::FetchUnsaved => Box::pin(async move {
                            worker.fetch_unsaved(&key).await.ok().map(|f| *f.value)
                        }),
                    }
                };
            let mut second = None;
            let mut finished = false;
            for poll in 0..polls {
                if let Poll::Ready(value) = poll_once(future.as_mut()) {
                    assert_eq!(value, Some(key * 10), "{read:?} after {polls} polls");
                    finished = true;
                    break;
                }
                if poll == 0 && read != Read::FetchUnsaved {
                    let worker = worker.clone();
                    second = Some(tokio::spawn(async move { worker.fetch(&key).await }));
                    second_waiters += 1;
                }
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
            drop(future);
            if read == Read::FetchUnsaved && polls > 0 && !finished {
                dropped_unsaved += 1;
            }
            let case = format!("{read:?} dropped after {polls} polls");
            if let Some(second) = second {
                let value = second.await.expect("no waiter panics");
                assert_eq!(
                    value.ok().as_deref(),
                    Some(&(key * 10)),
                    "{case}: the other waiter"
                );
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            let loads = up.loads.lock().get(&key).copied().unwrap_or(0);
            let stored = worker.peek(&key).map(|v| *v);
            match (read, polls) {
                (_, 0) => {
                    assert_eq!(loads, 0, "{case}: a future never polled does nothing");
                    assert_eq!(stored, None, "{case}");
                }
                (Read::FetchUnsaved, _) => {
                    assert_eq!(loads, 1, "{case}");
                    assert_eq!(stored, None, "{case}: fetch_unsaved never stores");
                }
                _ => {
                    assert_eq!(loads, 1, "{case}");
                    assert_eq!(stored, Some(key * 10), "{case}: the load landed");
                }
            }
            let later = tokio::time::timeout(Duration::from_secs(10), worker.fetch(&key))
                .await
                .unwrap_or_else(|_| panic!("{case}: a later fetch is stuck"));
            assert_eq!(
                later.ok().as_deref(),
                Some(&(key * 10)),
                "{case}: a later fetch"
            );
        }
    }
    let stats = worker.stats();
    let calls: u32 = up.loads.lock().values().sum();
    assert_eq!(stats.loads, u64::from(calls), "{stats:?}");
    assert_eq!((stats.load_errors, stats.panics, stats.timeouts), (0, 0, 0));
    assert_eq!(
        stats.coalesced, second_waiters,
        "each second waiter joined a flight"
    );
    assert_eq!(
        up.dropped.load(SeqCst),
        dropped_unsaved,
        "only an unsaved fetch runs its load in the caller's future, so only it drops loads"
    );
    assert_eq!(
        up.finished.load(SeqCst) + up.dropped.load(SeqCst),
        u64::from(calls)
    );
    assert_eq!(
        worker.len() as u64,
        next_key as u64,
        "every key ends up stored"
    );
    eprintln!(
        "dropped reads: {cases} cases, {calls} loads, {second_waiters} second waiters served, \
         {dropped_unsaved} unsaved loads cancelled with their caller"
    );
    worker.shutdown().await.expect("shutdown");
}

/// `refresh_all` futures dropped before, during and after their cycle: the refresher goes on,
/// and the next `refresh_all` gets a report.
#[tokio::test(start_paused = true)]
async fn a_refresh_all_dropped_part_way_leaves_the_refresher_running() {
    let up = Upstream::new();
    for k in ["a", "b", "c"] {
        up.set_value(k, 1);
    }
    let worker = started(&up, "dropped-refresh").await;
    for k in ["a", "b", "c"] {
        worker.fetch(&key(k)).await.expect("load");
    }
    up.set_delay(Duration::from_millis(300));
    for polls in 0..8 {
        let mut future = Box::pin(worker.refresh_all());
        for _ in 0..polls {
            if poll_once(future.as_mut()).is_ready() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        drop(future);
        let report = tokio::time::timeout(Duration::from_secs(60), worker.refresh_all())
            .await
            .expect("refresh_all answers")
            .expect("the refresher runs");
        assert_eq!((report.reloaded, report.entries), (3, 3), "{report:?}");
    }
    let stats = worker.stats();
    assert_eq!(stats.refresher_restarts, 0);
    assert!(stats.refresh_cycles >= 8, "{stats:?}");
    assert_eq!(stats.loads, 3 + 3 * stats.refresh_cycles, "{stats:?}");
    worker.shutdown().await.expect("shutdown");
}

// ---------------------------------------------------------------------------------------------
// The load timeout
// ---------------------------------------------------------------------------------------------

/// Every waiter of a hung load gets the timeout at the same moment, one timeout counted.
#[tokio::test(start_paused = true)]
async fn a_hung_load_times_out_for_every_waiter_at_once() {
    let up = Upstream::new();
    up.set("hung", Reply::Hang);
    let timeout = Duration::from_secs(3);
    let worker = started_with(&up, "hung-waiters", |b| b.load_timeout(timeout)).await;
    let began = Instant::now();
    let waiters: Vec<_> = (0..10)
        .map(|_| {
            let worker = worker.clone();
            tokio::spawn(async move {
                let result = worker.fetch(&key("hung")).await;
                (result, began.elapsed())
            })
        })
        .collect();
    for waiter in waiters {
        let (result, after) = waiter.await.expect("no waiter panics");
        assert!(
            matches!(result, Err(FetchError::Timeout(d)) if d == timeout),
            "{result:?}"
        );
        assert_eq!(after, timeout, "cut at the timeout on the paused clock");
    }
    let stats = worker.stats();
    assert_eq!((stats.loads, stats.timeouts, stats.coalesced), (1, 1, 9));
    assert_eq!(worker.len(), 0);
    worker.shutdown().await.expect("shutdown");
}

/// A reload that hangs is cut at the load timeout: the cycle finishes then, reports the
/// failure, and the old value stays.
#[tokio::test(start_paused = true)]
async fn a_hung_reload_keeps_the_old_value_and_ends_the_cycle_at_the_timeout() {
    let up = Upstream::with_values(&[("a", 1), ("b", 2)]);
    let timeout = Duration::from_secs(4);
    let worker = started_with(&up, "hung-reload", |b| b.load_timeout(timeout)).await;
    worker.fetch(&key("a")).await.expect("a");
    worker.fetch(&key("b")).await.expect("b");
    up.set("a", Reply::Hang);
    up.set_value("b", 20);
    let began = Instant::now();
    let report = worker.refresh_all().await.expect("cycle");
    assert_eq!(
        began.elapsed(),
        timeout,
        "the cycle waited for the hung reload, no longer"
    );
    assert_eq!((report.failed, report.updated, report.entries), (1, 1, 2));
    assert_eq!(worker.peek("a").as_deref(), Some(&1), "stale-if-hang");
    assert_eq!(worker.peek("b").as_deref(), Some(&20));
    let stats = worker.stats();
    assert_eq!((stats.timeouts, stats.refresh_failures), (1, 1));
    worker.shutdown().await.expect("shutdown");
}

/// A bulk worker whose `load_all` answers this collection, or hangs while it is `None`.
#[derive(Clone, Default)]
struct HangingBulk {
    collection: Arc<Mutex<Option<Entries<HangingBulk>>>>,
}

impl CacheWorker for HangingBulk {
    type Key = u32;
    type Value = u32;
    type Error = std::io::Error;

    async fn load(&self, _: &u32) -> Result<Option<u32>, std::io::Error> {
        Ok(None)
    }

    async fn load_all(&self) -> Option<Result<Entries<Self>, std::io::Error>> {
        let collection = self.collection.lock().clone();
        match collection {
            Some(entries) => Some(Ok(entries)),
            None => std::future::pending().await,
        }
    }
}

/// A bulk load that hangs is cut at the load timeout and keeps the whole old collection.
#[tokio::test(start_paused = true)]
async fn a_hung_bulk_load_keeps_the_collection() {
    let up = HangingBulk::default();
    *up.collection.lock() = Some(vec![(1, 10), (2, 20)]);
    let timeout = Duration::from_secs(5);
    let worker = started_with(&up, "hung-bulk", |b| b.load_timeout(timeout)).await;
    worker.refresh_all().await.expect("first collection");
    assert_eq!(worker.len(), 2);
    *up.collection.lock() = None;
    let began = Instant::now();
    let report = worker.refresh_all().await.expect("cycle");
    assert_eq!(began.elapsed(), timeout);
    assert!(report.bulk && report.failed == 1, "{report:?}");
    assert_eq!(worker.peek(&1).as_deref(), Some(&10));
    assert_eq!(worker.peek(&2).as_deref(), Some(&20));
    assert_eq!(worker.stats().timeouts, 1);
    worker.shutdown().await.expect("shutdown");
}

// ---------------------------------------------------------------------------------------------
// Refresh and expiry schedules on the paused clock
// ---------------------------------------------------------------------------------------------

/// The interval runs from the end of one cycle to the start of the next: a cycle that takes
/// 20 s pushes the next one back by 20 s.
#[tokio::test(start_paused = true)]
async fn the_refresh_interval_counts_from_the_end_of_the_previous_cycle() {
    let up = Upstream::with_values(&[("a", 1)]);
    let worker = started_with(&up, "interval", |b| b.refresh(Duration::from_secs(60))).await;
    let timeline = Timeline::begin();
    worker.fetch(&key("a")).await.expect("a");
    up.set_delay(Duration::from_secs(20));

    timeline.at(59).await;
    assert_eq!(up.loads_of("a"), 1, "no cycle before 60 s");
    timeline.at(61).await;
    assert_eq!(up.loads_of("a"), 2, "the first cycle began at 60 s");
    timeline.at(79).await;
    assert_eq!(worker.stats().refresh_cycles, 0, "it takes 20 s");
    timeline.at(81).await;
    assert_eq!(worker.stats().refresh_cycles, 1, "and ended at 80 s");
    timeline.at(139).await;
    assert_eq!(
        up.loads_of("a"),
        2,
        "the next is due 60 s after the end, not the start"
    );
    timeline.at(141).await;
    assert_eq!(up.loads_of("a"), 3, "the second cycle began at 140 s");
    worker.shutdown().await.expect("shutdown");
}

/// Reloads that fail and hang keep the old value (stale-if-error), but not past its expiry:
/// the entry still expires on time, and is not reloaded after.
#[tokio::test(start_paused = true)]
async fn an_entry_whose_reloads_fail_or_hang_still_expires_on_time() {
    let up = Upstream::with_values(&[("e", 1)]);
    *up.refresh_after.lock() = Some(Duration::from_secs(10));
    *up.expire_after.lock() = Some(Duration::from_secs(30));
    let worker = started_with(&up, "expiry-under-failure", |b| {
        b.load_timeout(Duration::from_secs(4))
            .retry_backoff(Duration::from_secs(1), Duration::from_secs(2))
    })
    .await;
    let mut events = worker.subscribe();
    let v0 = worker.version();
    let timeline = Timeline::begin();
    worker.fetch(&key("e")).await.expect("e");
    up.set("e", Reply::Hang);

    timeline.at(16).await;
    up.set("e", Reply::Fail("upstream down"));
    timeline.at(29).await;
    assert_eq!(
        worker.peek("e").as_deref(),
        Some(&1),
        "stale-if-error until expiry"
    );
    let stats = worker.stats();
    assert!(stats.timeouts >= 1 && stats.load_errors >= 1, "{stats:?}");
    timeline.at(31).await;
    assert_eq!(
        worker.peek("e"),
        None,
        "expired at 30 s whatever the reloads did"
    );
    let stats = worker.stats();
    assert_eq!(stats.expired, 1);
    let seen = drain(&mut events).await;
    assert_eq!(
        seen,
        [
            Event::Inserted {
                key: key("e"),
                value: Arc::new(1),
                version: v0 + 1,
            },
            Event::Removed {
                key: key("e"),
                cause: RemovalCause::Expired,
                value: Arc::new(1),
                version: v0 + 2,
            }
        ]
    );
    let loads = up.loads_of("e");
    timeline.at(120).await;
    assert_eq!(up.loads_of("e"), loads, "an expired entry is not reloaded");
    worker.shutdown().await.expect("shutdown");
}

/// An entry that expires while its reload is in flight stays gone: the late reload does not
/// bring it back.
#[tokio::test(start_paused = true)]
async fn an_entry_that_expires_while_it_reloads_stays_expired() {
    let up = Upstream::with_values(&[("x", 1)]);
    *up.refresh_after.lock() = Some(Duration::from_secs(28));
    *up.expire_after.lock() = Some(Duration::from_secs(30));
    let worker = started(&up, "expiry-during-reload").await;
    let mut events = worker.subscribe();
    let timeline = Timeline::begin();
    worker.fetch(&key("x")).await.expect("x");
    up.set_delay(Duration::from_secs(5));
    up.set_value("x", 2);

    timeline.at(29).await;
    assert_eq!(up.loads_of("x"), 2, "the reload began at 28 s");
    timeline.at(31).await;
    assert_eq!(worker.peek("x"), None, "expired at 30 s");
    timeline.at(40).await;
    assert_eq!(
        worker.peek("x"),
        None,
        "the reload that ended at 33 s stored nothing"
    );
    let seen = drain(&mut events).await;
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(
        matches!(
            &seen[1],
            Event::Removed {
                cause: RemovalCause::Expired,
                ..
            }
        ),
        "{seen:?}"
    );
    worker.shutdown().await.expect("shutdown");
}
