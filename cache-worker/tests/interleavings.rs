//! Interleavings pinned deterministically, through the public API: a load held once it has read
//! upstream (the test lets it go after an insert, an invalidate or a second read), a write from
//! another thread at the moment the `refresh_after` hook sees a value, and many misses of one
//! key held until every waiter has joined its flight. The randomized counterpart is
//! `stress.rs`; `CACHE_WORKER_LONG=1` runs ten times as many coalescing rounds.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use cache_worker::{CacheWorker, Entries, Error, FetchError, RefreshReport, Worker};
use parking_lot::Mutex;
use tokio::task::JoinHandle;

use common::{
    Hold, Holds, Upstream, drain_within, eventually_within, key, long_run, replayed, spawn_fetch,
    spawn_refresh_all, started,
};

/// A loader whose calls wait until the test releases their key's hold, counting how many loads
/// of a key run at once.
#[derive(Clone, Default)]
struct Gated(Arc<GatedShared>);

#[derive(Default)]
struct GatedShared {
    holds: Holds<u32>,
    loads: Mutex<HashMap<u32, u32>>,
    in_flight: Mutex<HashMap<u32, u32>>,
    most_in_flight: AtomicU32,
}

impl CacheWorker for Gated {
    type Key = u32;
    type Value = u64;
    type Error = std::io::Error;

    async fn load(&self, key: &u32) -> Result<Option<u64>, std::io::Error> {
        let s = &self.0;
        *s.loads.lock().entry(*key).or_default() += 1;
        let now = {
            let mut in_flight = s.in_flight.lock();
            let n = in_flight.entry(*key).or_default();
            *n += 1;
            *n
        };
        s.most_in_flight.fetch_max(now, SeqCst);
        s.holds.pass(key).await;
        *s.in_flight.lock().entry(*key).or_default() -= 1;
        Ok(Some(u64::from(*key) * 1_000 + 7))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_of_one_key_share_one_load() {
    const WAITERS: u64 = 64;
    const AT_ONCE: u32 = 16;
    let rounds = if long_run() { 200 } else { 20 };
    let up = Gated::default();
    let worker = started(&up, "coalesce").await;
    for round in 0..rounds {
        let keys: Vec<u32> = (round * AT_ONCE..(round + 1) * AT_ONCE).collect();
        let holds: Vec<_> = keys.iter().map(|&key| up.0.holds.hold(key)).collect();
        let before = worker.stats();
        let waiters: Vec<_> = keys
            .iter()
            .flat_map(|&key| (0..WAITERS).map(move |i| (key, i)))
            .map(|(key, i)| {
                let worker = worker.clone();
                tokio::spawn(async move {
                    if i % 2 == 0 {
                        worker.fetch(&key).await.ok()
                    } else {
                        worker.get(&key).await
                    }
                })
            })
            .collect();
        // Every waiter has found the flight of its key once all but one per key coalesced.
        let expected = u64::from(AT_ONCE) * (WAITERS - 1);
        eventually_within(Duration::from_secs(30), || {
            worker.stats().coalesced - before.coalesced >= expected
        })
        .await;
        assert_eq!(worker.stats().coalesced - before.coalesced, expected);
        for hold in holds {
            hold.release();
        }
        let mut values: HashMap<u32, Vec<Arc<u64>>> = HashMap::new();
        for (n, waiter) in waiters.into_iter().enumerate() {
            let key = keys[n / WAITERS as usize];
            let value = waiter.await.expect("no waiter panics").expect("a value");
            assert_eq!(*value, u64::from(key) * 1_000 + 7);
            values.entry(key).or_default().push(value);
        }
        for (key, got) in &values {
            assert_eq!(up.0.loads.lock()[key], 1, "key {key}: one load");
            assert!(
                got.iter().all(|v| Arc::ptr_eq(v, &got[0])),
                "key {key}: every waiter shares the one loaded value"
            );
        }
        let after = worker.stats();
        assert_eq!(after.loads - before.loads, u64::from(AT_ONCE));
        assert_eq!(after.misses - before.misses, u64::from(AT_ONCE) * WAITERS);
    }
    assert_eq!(up.0.most_in_flight.load(SeqCst), 1);
    eprintln!(
        "coalescing: {rounds} rounds x {AT_ONCE} keys x {WAITERS} concurrent misses → {} loads, {} coalesced",
        worker.stats().loads,
        worker.stats().coalesced
    );
    worker.shutdown().await.expect("shutdown");
}

/// The scripted upstream, a worker on it, the hold of its key `1`, and the held task.
type Held<T> = (Upstream, Worker<Upstream>, Hold, JoinHandle<T>);

/// A worker whose key `1` reads 100 upstream (and is loaded first if `loaded`), and the task
/// `spawn` starts on it, held once it has read the key upstream.
async fn held<T>(loaded: bool, spawn: impl FnOnce(&Worker<Upstream>) -> JoinHandle<T>) -> Held<T> {
    let up = Upstream::new();
    let worker = started(&up, "scripted").await;
    up.set_value("1", 100);
    if loaded {
        assert_eq!(worker.fetch(&key("1")).await.ok().as_deref(), Some(&100));
    }
    let hold = up.hold("1");
    let task = spawn(&worker);
    hold.entered().await;
    (up, worker, hold, task)
}

/// A worker whose key `1` is loaded as 100, and a refresh cycle whose reload of it has read 100
/// upstream and is held.
async fn reload_held() -> Held<Result<RefreshReport, Error>> {
    held(true, spawn_refresh_all).await
}

/// A worker whose miss of key `1` has read 100 upstream and is held.
async fn miss_held() -> Held<Result<Arc<u64>, FetchError>> {
    held(false, |worker| spawn_fetch(worker, "1")).await
}

/// Lets the held `task` go and waits for it; checks that key `1` then holds `newer`, the value
/// written after the held load read upstream (else the load `overwrote` it). Gives what the
/// task gave.
async fn released<T>(
    worker: &Worker<Upstream>,
    hold: Hold,
    task: JoinHandle<T>,
    newer: u64,
    overwrote: &str,
) -> T {
    hold.release();
    let out = task.await.expect("join");
    assert_eq!(worker.peek("1").as_deref(), Some(&newer), "{overwrote}");
    out
}

/// An insert while the held task's load is in flight: the value written is newer than what the
/// load read, and stays. `what` loaded, and what its task must then give.
async fn insert_while_held<T, E: std::fmt::Debug>(
    (_up, worker, hold, task): Held<Result<T, E>>,
    (what, ends): (&str, &str),
) {
    worker.insert(key("1"), 300);
    let overwrote = format!("{what} that read upstream before the insert overwrote it");
    released(&worker, hold, task, 300, &overwrote)
        .await
        .expect(ends);
    worker.shutdown().await.expect("shutdown");
}

/// Regression guard for a lost update: a refresh cycle's reload reads upstream, then the key
/// is invalidated (upstream changed) and fetched again, loading the new value. The reload,
/// finishing last, must not put its older value back over the newer one.
#[tokio::test]
async fn a_reload_begun_before_an_invalidate_does_not_overwrite_the_newer_load() {
    let (up, worker, hold, cycle) = reload_held().await;

    up.set_value("1", 200);
    assert_eq!(worker.invalidate("1").as_deref(), Some(&100));
    assert_eq!(worker.fetch(&key("1")).await.ok().as_deref(), Some(&200));

    let overwrote =
        "the reload that read upstream before the invalidate overwrote the value loaded after it";
    released(&worker, hold, cycle, 200, overwrote)
        .await
        .expect("the cycle ends");
    worker.shutdown().await.expect("shutdown");
}

/// The same with an insert: a value written while a reload of the key was in flight is newer
/// than what the reload read, and stays.
#[tokio::test]
async fn a_reload_begun_before_an_insert_does_not_overwrite_it() {
    insert_while_held(reload_held().await, ("the reload", "the cycle ends")).await;
}

/// The same for a miss: a value inserted while the miss loads is newer than what the load read.
#[tokio::test]
async fn a_load_begun_before_an_insert_does_not_overwrite_it() {
    insert_while_held(
        miss_held().await,
        ("the load", "the load answers its waiter"),
    )
    .await;
}

/// A miss's load that read upstream before an invalidate: its waiter still gets what it read,
/// but the value is not stored, and a read after the invalidate loads again rather than
/// joining the detached load.
#[tokio::test]
async fn a_load_begun_before_an_invalidate_is_not_stored() {
    let (up, worker, hold, first) = miss_held().await;

    up.set_value("1", 200);
    assert_eq!(worker.invalidate("1"), None, "nothing stored yet");
    assert_eq!(
        worker.fetch(&key("1")).await.ok().as_deref(),
        Some(&200),
        "a read after the invalidate joined the load that began before it"
    );

    let overwrote =
        "the load that read upstream before the invalidate overwrote the value loaded after it";
    assert_eq!(
        released(&worker, hold, first, 200, overwrote)
            .await
            .ok()
            .as_deref(),
        Some(&100),
        "the first waiter gets what its load read"
    );
    assert_eq!(up.loads_of("1"), 2);
    worker.shutdown().await.expect("shutdown");
}

/// A trap: when `refresh_after` sees `key` get `value`, another thread writes `insert`.
#[derive(Clone, Copy)]
struct Trap {
    key: u32,
    value: u64,
    insert: u64,
}

/// An upstream with a trap in its `refresh_after` hook: each key's current value, and the
/// collection of its bulk load.
#[derive(Clone, Default)]
struct Trapped(Arc<TrappedShared>);

#[derive(Default)]
struct TrappedShared {
    upstream: Mutex<HashMap<u32, u64>>,
    collection: Mutex<Option<Vec<(u32, u64)>>>,
    /// Armed by a test: when `refresh_after` sees `key` get `value`, another thread writes
    /// `insert` to the worker at that moment (between the store and its event).
    trap: Mutex<Option<Trap>>,
    handle: OnceLock<Worker<Trapped>>,
}

impl CacheWorker for Trapped {
    type Key = u32;
    type Value = u64;
    type Error = std::io::Error;

    async fn load(&self, key: &u32) -> Result<Option<u64>, std::io::Error> {
        Ok(self.0.upstream.lock().get(key).copied())
    }

    async fn load_all(&self) -> Option<Result<Entries<Self>, std::io::Error>> {
        self.0.collection.lock().clone().map(Ok)
    }

    fn refresh_after(&self, key: &u32, value: &u64) -> Option<Duration> {
        let s = &self.0;
        let sprung = {
            let mut trap = s.trap.lock();
            match *trap {
                Some(t) if t.key == *key && t.value == *value => trap.take(),
                _ => None,
            }
        };
        if let Some(t) = sprung {
            // The hook only pins the moment: the write comes from another thread, as it would
            // from another task, and is given a bounded moment to land (the hook itself never
            // writes to the worker, which its documentation forbids). A worker that holds a
            // lock of the write until the event is out makes the write wait instead, and it
            // lands after: either way the events must replay to the bucket.
            let worker = s.handle.get().expect("handle set").clone();
            let (wrote, written) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                worker.insert(t.key, t.insert);
                let _ = wrote.send(());
            });
            let _ = written.recv_timeout(Duration::from_secs(2));
        }
        None
    }
}

async fn trapped(bulk: Option<Vec<(u32, u64)>>) -> (Trapped, Worker<Trapped>) {
    let up = Trapped::default();
    *up.0.collection.lock() = bulk;
    let worker = started(&up, "scripted").await;
    let _ = up.0.handle.set(worker.clone());
    (up, worker)
}

/// Arms the trap `(key, value, insert)`, runs `write` (which gives the hook that value; else
/// `what` failed), and checks that the trap was sprung and that the events sent meanwhile
/// replay to what the bucket holds for the key.
async fn sprung<T, E: std::fmt::Debug>(
    up: &Trapped,
    worker: &Worker<Trapped>,
    (key, value, insert): (u32, u64, u64),
    (write, what): (impl Future<Output = Result<T, E>>, &str),
) {
    *up.0.trap.lock() = Some(Trap { key, value, insert });
    let mut events = worker.subscribe();
    write.await.expect(what);
    let seen = drain_within(&mut events, Duration::from_millis(50)).await;
    assert!(up.0.trap.lock().is_none(), "the trap was sprung");
    let now = worker.peek(&key).map(|v| *v);
    assert_eq!(
        replayed(&seen, &key),
        now,
        "replaying {seen:?} does not give what the bucket holds"
    );
}

/// Events must come in the order of the writes they report: a write to a key made by another
/// thread between a loaded value's store and its `Inserted` event must be reported after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_follow_the_order_of_writes_to_a_key() {
    let (up, worker) = trapped(None).await;
    up.0.upstream.lock().insert(1, 100);
    let fetch = worker.fetch(&1);
    sprung(&up, &worker, (1, 100, 500), (fetch, "loaded")).await;
    worker.shutdown().await.expect("shutdown");
}

/// The same for a bulk reload: a write made while the swap's events are being sent must be
/// reported after the swap's event for that key, so that a subscriber's copy ends equal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_of_a_bulk_swap_and_a_concurrent_write_stay_in_order() {
    let (up, worker) = trapped(Some(vec![(1, 10), (2, 20)])).await;
    worker.refresh_all().await.expect("first collection");
    assert_eq!(worker.peek(&1).as_deref(), Some(&10));
    *up.0.collection.lock() = Some(vec![(1, 11), (2, 21)]);
    let swap = worker.refresh_all();
    sprung(&up, &worker, (1, 11, 600), (swap, "second collection")).await;
    worker.shutdown().await.expect("shutdown");
}
