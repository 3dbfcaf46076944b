//! Concurrency stress through the public API: many tasks on a multi-threaded runtime mixing
//! `get`, `fetch`, `peek`, `insert`, `invalidate` and `refresh_all` over a few hundred keys,
//! with bulk reloads swapping the whole collection, checking invariants that hold whatever the
//! interleaving:
//!
//! - single flight: N concurrent misses of one key make one load, and at most one load of a
//!   key is in flight at any moment (counted in the loader) when every load is a miss's and
//!   the key is never invalidated (an invalidate detaches the load in flight); a
//!   refresh cycle's reload is not coalesced with a miss, so with per-key cycles at most two;
//! - no lost updates: after quiescence each key holds the effect of a write that no insert or
//!   invalidate began strictly after (see [`Log::check_final`]);
//! - events: replaying `Inserted` / `Updated` / `Removed` in order gives the bucket's final
//!   contents, each event following from the one before it;
//! - bulk swaps are atomic for readers: a reader never sees an older collection after a newer
//!   one, and `keys()` is always exactly one collection.
//!
//! Not model-checked with loom or shuttle: the code under test sits on tokio, dashmap and
//! arc-swap, none of which run under those checkers without their own models, so a model of
//! the library would test the model. These stress runs and the deterministic interleavings of
//! `interleavings.rs` are the deliverable. `CACHE_WORKER_LONG=1` runs ten times as many
//! operations.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::SeqCst};
use std::time::Duration;

use cache_worker::{CacheWorker, Entries, Event, Worker};
use futures_util::StreamExt;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use common::{Problems, Replica, Rng, handed_out, long_run};

const KEYS: u32 = 256;
/// Half of all operations go to these few keys, so that they collide.
const HOT: u32 = 16;
const TASKS: u64 = 64;
const SEED: u64 = 0x57E5_5000_0000_0001;

fn ops_per_task() -> u64 {
    if long_run() { 10_000 } else { 1_000 }
}

/// Half of the keys drawn are among the few hot ones, so that operations collide.
fn draw_key(rng: &mut Rng) -> u32 {
    let range = if rng.below(2) == 0 { HOT } else { KEYS };
    rng.below(u64::from(range)) as u32
}

/// Where a value came from; a bulk value names its collection's generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
enum Src {
    Load,
    Insert,
    Bulk(u64),
}

/// Every value is unique (`seq`) and names its key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Val {
    key: u32,
    seq: u64,
    src: Src,
}

/// One write to a key as the test saw it: its effect (a value's `seq`, or `None` for absent)
/// took place somewhere within the ticks `lo..=hi` (`hi` is settled at the end).
#[derive(Clone, Debug)]
struct Write {
    lo: u64,
    hi: Option<u64>,
    effect: Option<u64>,
    kind: WriteKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum WriteKind {
    /// The empty bucket at start.
    Start,
    Insert,
    Invalidate,
    /// A value `load` returned: stored by a fetch (which then returns it) or by a reload.
    Load,
    /// A key's fate in a bulk collection: its value, or absent.
    Bulk,
}

impl WriteKind {
    /// Done by the caller between its two ticks, for certain.
    fn definite(self) -> bool {
        matches!(
            self,
            WriteKind::Start | WriteKind::Insert | WriteKind::Invalidate
        )
    }
}

/// The writes of one key and every value ever written to it.
#[derive(Default)]
struct KeyLog {
    writes: Vec<Write>,
    values: HashSet<u64>,
}

/// What the test knows about every write, read and refresh, on one logical clock.
struct Log {
    tick: AtomicU64,
    seq: AtomicU64,
    keys: Vec<Mutex<KeyLog>>,
    /// The earliest tick by which each value was seen by a reader (so it was stored by then).
    observed: Vec<Mutex<HashMap<u64, u64>>>,
    /// `refresh_all` calls: (start tick, end tick).
    refreshes: Mutex<Vec<(u64, u64)>>,
}

impl Log {
    fn new() -> Self {
        Log {
            tick: AtomicU64::new(1),
            seq: AtomicU64::new(0),
            keys: (0..KEYS)
                .map(|_| {
                    Mutex::new(KeyLog {
                        writes: vec![Write {
                            lo: 0,
                            hi: Some(0),
                            effect: None,
                            kind: WriteKind::Start,
                        }],
                        values: HashSet::new(),
                    })
                })
                .collect(),
            observed: (0..KEYS).map(|_| Mutex::default()).collect(),
            refreshes: Mutex::default(),
        }
    }

    fn tick(&self) -> u64 {
        self.tick.fetch_add(1, SeqCst) + 1
    }

    fn value(&self, key: u32, src: Src) -> Val {
        Val {
            key,
            seq: self.seq.fetch_add(1, SeqCst),
            src,
        }
    }

    /// Makes `value` known as written before anyone can read it.
    fn announce(&self, value: &Val) {
        self.keys[value.key as usize]
            .lock()
            .values
            .insert(value.seq);
    }

    /// A write of `kind` to `key` with its effect, within the ticks `lo..=hi`.
    fn record(&self, key: u32, kind: WriteKind, effect: Option<u64>, (lo, hi): (u64, Option<u64>)) {
        let write = Write {
            lo,
            hi,
            effect,
            kind,
        };
        self.keys[key as usize].lock().writes.push(write);
    }

    fn was_written(&self, key: u32, value: &Val) -> bool {
        handed_out(&self.keys, key, (value.key, value.seq), |k| &k.values)
    }

    fn observe(&self, value: &Val, at: u64) {
        self.observed[value.key as usize]
            .lock()
            .entry(value.seq)
            .and_modify(|t| *t = (*t).min(at))
            .or_insert(at);
    }

    /// Checks the final state of every key: it must be the effect of a write that no definite
    /// write (an insert or invalidate, done between its two ticks) started strictly after.
    ///
    /// Bounds on when each write took effect, all sound whatever the interleaving:
    /// - insert / invalidate: between the caller's ticks;
    /// - a value a reader saw: stored before that read returned;
    /// - a loaded value no reader saw was stored by a reload (a fetch returns what it loads,
    ///   so it is always seen), and a bulk collection is swapped in by a cycle; both happen
    ///   before the end of any `refresh_all` that started after the loader returned;
    /// - otherwise, before the final tick.
    fn check_final(&self, worker: &Worker<Stress>, final_tick: u64) -> Vec<String> {
        let mut refreshes = self.refreshes.lock().clone();
        refreshes.sort_unstable();
        // The earliest end among calls started at or after each index.
        let mut earliest_end = vec![u64::MAX; refreshes.len() + 1];
        for i in (0..refreshes.len()).rev() {
            earliest_end[i] = earliest_end[i + 1].min(refreshes[i].1);
        }
        let cycle_bound = |lo: u64| {
            let first_after = refreshes.partition_point(|(start, _)| *start <= lo);
            earliest_end[first_after].min(final_tick)
        };
        let mut problems = Vec::new();
        for key in 0..KEYS {
            let log = self.keys[key as usize].lock();
            let observed = self.observed[key as usize].lock();
            let seen = |effect: Option<u64>| effect.and_then(|seq| observed.get(&seq).copied());
            let hi = |w: &Write| match w.kind {
                _ if w.kind.definite() => w.hi.unwrap_or(final_tick),
                WriteKind::Load => seen(w.effect).unwrap_or_else(|| cycle_bound(w.lo)),
                _ => seen(w.effect).unwrap_or(u64::MAX).min(cycle_bound(w.lo)),
            };
            let last_definite = log
                .writes
                .iter()
                .filter(|w| w.kind.definite())
                .map(|w| w.lo)
                .max()
                .unwrap_or(0);
            let candidates: Vec<&Write> = log
                .writes
                .iter()
                .filter(|w| hi(w) >= last_definite)
                .collect();
            let now = worker.peek(&key);
            let effect = now.as_ref().map(|v| v.seq);
            if !candidates.iter().any(|w| w.effect == effect) {
                problems.push(format!(
                    "key {key}: holds {now:?}; the last definite write started at tick \
                     {last_definite}, and the writes that may be last are {candidates:?}"
                ));
            }
        }
        problems
    }
}

#[derive(Clone)]
struct Stress(Arc<Shared>);

struct Shared {
    seed: u64,
    /// `load_all` answers a new collection (a bulk swap); otherwise it has none and refresh
    /// cycles reload key by key.
    bulk: bool,
    /// Off until the test subscribed: the cycle that follows a cold start finds no collection,
    /// so that no change happens before the subscriber is there to see it.
    ready: AtomicBool,
    log: Log,
    in_flight: Vec<AtomicU32>,
    most_in_flight: AtomicU32,
    calls: Vec<AtomicU64>,
    load_calls: AtomicU64,
    bulk_calls: AtomicU64,
    /// Each generation's collection, key → value seq; generation 0 is the empty bucket.
    collections: Mutex<Vec<HashMap<u32, u64>>>,
}

impl Shared {
    fn new(seed: u64, bulk: bool) -> Arc<Self> {
        Arc::new(Shared {
            seed,
            bulk,
            ready: AtomicBool::new(false),
            log: Log::new(),
            in_flight: (0..KEYS).map(|_| AtomicU32::new(0)).collect(),
            most_in_flight: AtomicU32::new(0),
            calls: (0..KEYS).map(|_| AtomicU64::new(0)).collect(),
            load_calls: AtomicU64::new(0),
            bulk_calls: AtomicU64::new(0),
            collections: Mutex::new(vec![HashMap::new()]),
        })
    }
}

/// Whether a load of `key` counts for the single-flight check: in the bulk run odd keys are
/// invalidated, and an invalidate detaches the key's load in flight (its value is not stored),
/// so that a read after it loads again at once, beside the detached load.
fn counts_for_single_flight(bulk: bool, key: u32) -> bool {
    !bulk || key.is_multiple_of(2)
}

struct InFlight<'a>(&'a AtomicU32);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, SeqCst);
    }
}

impl CacheWorker for Stress {
    type Key = u32;
    type Value = Val;
    type Error = std::io::Error;

    async fn load(&self, key: &u32) -> Result<Option<Val>, std::io::Error> {
        let s = &self.0;
        s.load_calls.fetch_add(1, SeqCst);
        let slot = &s.in_flight[*key as usize];
        let now = slot.fetch_add(1, SeqCst) + 1;
        let _in_flight = InFlight(slot);
        if counts_for_single_flight(s.bulk, *key) {
            s.most_in_flight.fetch_max(now, SeqCst);
        }
        let call = s.calls[*key as usize].fetch_add(1, SeqCst);
        let mut rng = Rng::new(s.seed ^ (u64::from(*key) << 32) ^ call);
        // A pause of a few scheduling rounds: the window in which other misses must join.
        for _ in 0..rng.below(4) {
            tokio::task::yield_now().await;
        }
        if rng.below(8) == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let value = s.log.value(*key, Src::Load);
        s.log.announce(&value);
        let lo = s.log.tick();
        s.log
            .record(*key, WriteKind::Load, Some(value.seq), (lo, None));
        Ok(Some(value))
    }

    async fn load_all(&self) -> Option<Result<Entries<Self>, std::io::Error>> {
        let s = &self.0;
        if !s.bulk || !s.ready.load(SeqCst) {
            return None;
        }
        s.bulk_calls.fetch_add(1, SeqCst);
        tokio::task::yield_now().await;
        // Cycles run one at a time, so generations follow the order of the swaps.
        let mut collections = s.collections.lock();
        let generation = collections.len() as u64;
        let mut rng = Rng::new(s.seed ^ generation.wrapping_mul(0x0B01_C0DE));
        let mut entries = Vec::new();
        let mut collection = HashMap::new();
        let mut fates = Vec::new();
        for key in 0..KEYS {
            if rng.below(5) == 0 {
                fates.push((key, None));
                continue;
            }
            let value = s.log.value(key, Src::Bulk(generation));
            s.log.announce(&value);
            collection.insert(key, value.seq);
            fates.push((key, Some(value.seq)));
            entries.push((key, value));
        }
        let lo = s.log.tick();
        for (key, effect) in fates {
            s.log.record(key, WriteKind::Bulk, effect, (lo, None));
        }
        collections.push(collection);
        Some(Ok(entries))
    }
}

/// One task's view: reads it made, and the newest bulk generation it has seen.
struct Reader<'a> {
    shared: &'a Shared,
    problems: &'a Problems,
    newest: u64,
    reads: u64,
}

impl<'a> Reader<'a> {
    /// A reader that has read nothing yet.
    fn new(shared: &'a Shared, problems: &'a Problems) -> Self {
        Reader {
            shared,
            problems,
            newest: 0,
            reads: 0,
        }
    }

    /// One read of `key`, answered at tick `at`: a value (see [`Reader::saw`]), none, or what
    /// went wrong.
    fn read(&mut self, key: u32, answer: Result<Option<Arc<Val>>, String>, at: u64) {
        self.reads += 1;
        match answer {
            Ok(Some(value)) => self.saw(key, &value, at),
            Ok(None) => {}
            Err(problem) => self.problems.push(problem),
        }
    }

    /// A value read for `key` at tick `at`: written for that key, and never from an older
    /// collection than one this reader saw before.
    fn saw(&mut self, key: u32, value: &Val, at: u64) {
        let log = &self.shared.log;
        if !log.was_written(key, value) {
            self.problems
                .push(format!("read {key} → {value:?}: never written for it"));
        }
        log.observe(value, at);
        if let Src::Bulk(generation) = value.src {
            if generation < self.newest {
                self.problems.push(format!(
                    "read {key} → generation {generation} after generation {}",
                    self.newest
                ));
            }
            self.newest = self.newest.max(generation);
        }
    }
}

#[derive(Default)]
struct Tally {
    reads: AtomicU64,
    inserts: AtomicU64,
    invalidations: AtomicU64,
    refresh_alls: AtomicU64,
    scans: AtomicU64,
}

async fn mixed_task(
    worker: Worker<Stress>,
    shared: Arc<Shared>,
    problems: Arc<Problems>,
    tally: Arc<Tally>,
    task: u64,
    invalidate: bool,
) {
    let log = &shared.log;
    let mut rng = Rng::new(shared.seed ^ (task + 1).wrapping_mul(0x0100_0000_01B3));
    let mut me = Reader::new(&shared, &problems);
    for _ in 0..ops_per_task() {
        let key = draw_key(&mut rng);
        match rng.below(100) {
            0..30 => {
                let fetched = worker.fetch(&key).await;
                let fetched = fetched
                    .map(Some)
                    .map_err(|e| format!("fetch({key}) failed: {e}"));
                me.read(key, fetched, log.tick());
            }
            30..45 => {
                let got = worker.get(&key).await;
                let got = got
                    .map(Some)
                    .ok_or_else(|| format!("get({key}) gave nothing"));
                me.read(key, got, log.tick());
            }
            45..70 => {
                let peeked = worker.peek(&key);
                me.read(key, Ok(peeked), log.tick());
            }
            70..80 => {
                let value = log.value(key, Src::Insert);
                log.announce(&value);
                let lo = log.tick();
                worker.insert(key, value.clone());
                let hi = log.tick();
                log.record(key, WriteKind::Insert, Some(value.seq), (lo, Some(hi)));
                tally.inserts.fetch_add(1, SeqCst);
            }
            // Odd keys only: an invalidate detaches a load of the key in flight, so a read
            // after it starts another load beside it; even keys keep the strict single-flight
            // count (see `counts_for_single_flight`).
            80..88 if invalidate => {
                let key = key | 1;
                let lo = log.tick();
                let removed = worker.invalidate(&key);
                let hi = log.tick();
                log.record(key, WriteKind::Invalidate, None, (lo, Some(hi)));
                if let Some(value) = removed {
                    me.saw(key, &value, hi);
                }
                tally.invalidations.fetch_add(1, SeqCst);
            }
            88..90 => {
                let lo = log.tick();
                let done = worker.refresh_all().await;
                let hi = log.tick();
                if let Err(e) = done {
                    problems.push(format!("refresh_all failed: {e}"));
                }
                log.refreshes.lock().push((lo, hi));
                tally.refresh_alls.fetch_add(1, SeqCst);
            }
            90..96 => {
                for key in 0..KEYS {
                    let peeked = worker.peek(&key);
                    let at = log.tick();
                    me.reads += 1;
                    if let Some(value) = peeked {
                        me.saw(key, &value, at);
                    }
                }
                tally.scans.fetch_add(1, SeqCst);
            }
            _ => {
                let keys = worker.keys();
                if let Some(k) = keys.iter().find(|k| **k >= KEYS) {
                    problems.push(format!("keys() lists {k}, never written"));
                }
            }
        }
        if rng.below(16) == 0 {
            tokio::task::yield_now().await;
        }
    }
    tally.reads.fetch_add(me.reads, SeqCst);
}

/// Replays events into a copy of the bucket ([`Replica`]), keeping the first few that did not
/// follow from the copy.
#[derive(Default)]
struct Replay {
    replica: Replica<u32, Val>,
    /// Events that did not follow from the copy, and the first few of them.
    broken_count: u64,
    broken: Vec<String>,
}

impl Replay {
    fn apply(&mut self, event: Event<u32, Val>) {
        if let Err(what) = self.replica.apply(event) {
            self.broken_count += 1;
            if self.broken.len() < 20 {
                self.broken.push(what);
            }
        }
    }
}

/// The bucket's contents now.
fn contents(worker: &Worker<Stress>) -> HashMap<u32, Arc<Val>> {
    worker
        .keys()
        .into_iter()
        .filter_map(|k| worker.peek(&k).map(|v| (k, v)))
        .collect()
}

/// Differences between the replayed copy and the bucket, for the failure message.
fn differences(copy: &HashMap<u32, Arc<Val>>, bucket: &HashMap<u32, Arc<Val>>) -> Vec<String> {
    let mut keys: Vec<u32> = copy.keys().chain(bucket.keys()).copied().collect();
    keys.sort_unstable();
    keys.dedup();
    keys.into_iter()
        .filter(|k| copy.get(k) != bucket.get(k))
        .take(10)
        .map(|k| {
            format!(
                "key {k}: events say {:?}, bucket holds {:?}",
                copy.get(&k).map(|v| (v.seq, v.src)),
                bucket.get(&k).map(|v| (v.seq, v.src))
            )
        })
        .collect()
}

/// The mixed workload. `bulk`: refresh cycles swap in a new collection each time, and
/// invalidations run too. Otherwise cycles reload key by key, and there are no invalidations,
/// which would only add more of the reload-beside-a-miss overlap described in the single
/// flight check (what such an overlap must not do is covered by the deterministic tests
/// below).
async fn run_mixed(bulk: bool) {
    let shared = Shared::new(SEED ^ u64::from(bulk), bulk);
    let problems = Arc::new(Problems::new(40));
    let tally = Arc::new(Tally::default());
    let worker = Worker::builder(Stress(shared.clone()))
        .bucket(if bulk { "stress-bulk" } else { "stress" })
        .refresh(Duration::ZERO)
        .concurrency(16)
        .event_capacity(1 << 18)
        .start()
        .await
        .expect("start");
    let mut events = worker.subscribe();
    shared.ready.store(true, SeqCst);
    let replay = Arc::new(Mutex::new(Replay::default()));
    // On a thread of its own, so that the 64 busy tasks cannot starve it into lagging.
    let consumed = Arc::new(AtomicBool::new(false));
    let consumer = std::thread::spawn({
        let (replay, consumed) = (replay.clone(), consumed.clone());
        move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                while !consumed.load(SeqCst) {
                    match tokio::time::timeout(Duration::from_millis(50), events.next()).await {
                        Ok(Some(event)) => replay.lock().apply(event),
                        Ok(None) => break,
                        Err(_) => {}
                    }
                }
            });
        }
    });

    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            tokio::spawn(mixed_task(
                worker.clone(),
                shared.clone(),
                problems.clone(),
                tally.clone(),
                t,
                bulk,
            ))
        })
        .collect();
    for task in tasks {
        task.await.expect("no task panics");
    }
    // Quiet now: every fetch returned (so its load is over), every refresh_all returned (so its
    // cycle is over), and there is no periodic refresh.
    let final_tick = shared.log.tick();
    let mut failures = problems.take();

    // With bulk cycles, every load of a key is a miss's, and misses share one load (counted
    // on the keys that are never invalidated). With
    // per-key cycles, a reload (of a present key) is not coalesced with a miss (of an absent
    // one): a key inserted while its miss loads may be reloaded at the same time, so two, by
    // design, and never more (cycles run one at a time; there are no per-entry timers here).
    let most = shared.most_in_flight.load(SeqCst);
    let allowed = if bulk { 1 } else { 2 };
    if most > allowed {
        failures.push(format!(
            "single flight: up to {most} loads of one key at once (at most {allowed})"
        ));
    }
    let stats = worker.stats();
    let load_calls = shared.load_calls.load(SeqCst);
    let bulk_calls = shared.bulk_calls.load(SeqCst);
    if stats.loads != load_calls + bulk_calls {
        failures.push(format!(
            "stats.loads {} != {load_calls} load calls + {bulk_calls} bulk loads",
            stats.loads
        ));
    }
    let reads = tally.reads.load(SeqCst);
    if stats.hits + stats.misses != reads {
        failures.push(format!(
            "hits {} + misses {} != {reads} reads",
            stats.hits, stats.misses
        ));
    }
    failures.extend(shared.log.check_final(&worker, final_tick));

    let expected_events = stats.inserted + stats.updated + stats.removed + stats.expired;
    for _ in 0..3_000 {
        if replay.lock().replica.entry_events >= expected_events {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let bucket = contents(&worker);
    {
        let replay = replay.lock();
        if replay.replica.lagged > 0 {
            failures.push(format!(
                "the subscriber lagged by {} events: raise event_capacity",
                replay.replica.lagged
            ));
        } else {
            if replay.replica.entry_events != expected_events {
                failures.push(format!(
                    "{} entry events, the stats count {expected_events} changes",
                    replay.replica.entry_events
                ));
            }
            if replay.broken_count > 0 {
                failures.push(format!(
                    "event order: {} of {} events did not follow from the ones before; the first:",
                    replay.broken_count, replay.replica.entry_events
                ));
            }
            failures.extend(replay.broken.iter().map(|b| format!("event order: {b}")));
            failures.extend(
                differences(&replay.replica.copy, &bucket)
                    .into_iter()
                    .map(|d| format!("replay: {d}")),
            );
        }
        eprintln!(
            "stress{}: {TASKS} tasks x {} ops on {KEYS} keys: {reads} reads, {} inserts, {} invalidations, \
             {} refresh_all ({} cycles, {} bulk swaps), {} scans; {load_calls} loads, {} coalesced, \
             most loads of one key at once {most}; {} events replayed ({} out of order), final {} entries; {} problems",
            if bulk { " (bulk)" } else { "" },
            ops_per_task(),
            tally.inserts.load(SeqCst),
            tally.invalidations.load(SeqCst),
            tally.refresh_alls.load(SeqCst),
            stats.refresh_cycles,
            stats.bulk_loads,
            tally.scans.load(SeqCst),
            stats.coalesced,
            replay.replica.entry_events,
            replay.broken_count,
            bucket.len(),
            failures.len(),
        );
    }
    consumed.store(true, SeqCst);
    consumer.join().expect("the subscriber never panics");
    worker.shutdown().await.expect("shutdown");
    assert!(failures.is_empty(), "{failures:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_operations_with_bulk_swaps_keep_every_invariant() {
    run_mixed(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_operations_with_per_key_reloads_keep_every_invariant() {
    run_mixed(false).await;
}

/// Readers on tasks and on OS threads while bulk reloads swap collections back to back, with
/// no per-key writes: `keys()` is always exactly one collection, `len()` the size of one, and
/// peeks never go back to an older collection once they saw a newer one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_never_see_a_mix_of_two_collections() {
    let shared = Shared::new(SEED ^ 0xC011, true);
    let worker = Worker::builder(Stress(shared.clone()))
        .bucket("swaps")
        .refresh(Duration::ZERO)
        .start()
        .await
        .expect("start");
    shared.ready.store(true, SeqCst);
    let swaps_per_swapper = if long_run() { 1_500 } else { 150 };
    let done = Arc::new(AtomicBool::new(false));
    let problems = Arc::new(Problems::new(40));
    let straddled = Arc::new(AtomicU64::new(0));
    let checks = Arc::new(AtomicU64::new(0));

    /// One pass of a reader: a scan, `keys()` and `len()`.
    fn read_once(
        worker: &Worker<Stress>,
        shared: &Shared,
        me: &mut Reader<'_>,
        straddled: &AtomicU64,
    ) {
        let first = me.newest;
        for key in 0..KEYS {
            if let Some(value) = worker.peek(&key) {
                let holds = match value.src {
                    Src::Bulk(g) => {
                        shared
                            .collections
                            .lock()
                            .get(g as usize)
                            .and_then(|c| c.get(&key))
                            == Some(&value.seq)
                    }
                    _ => false,
                };
                if !holds {
                    me.problems
                        .push(format!("peek({key}) → {value:?}: not in its collection"));
                }
                me.saw(key, &value, 0);
            }
        }
        if me.newest != first {
            straddled.fetch_add(1, SeqCst);
        }
        let mut keys = worker.keys();
        keys.sort_unstable();
        let collections = shared.collections.lock();
        let matching = (me.newest as usize..collections.len()).find(|&g| {
            let c = &collections[g];
            c.len() == keys.len() && keys.iter().all(|k| c.contains_key(k))
        });
        match matching {
            Some(g) => me.newest = g as u64,
            None => me.problems.push(format!(
                "keys() gave {} keys, not one collection from generation {} on",
                keys.len(),
                me.newest
            )),
        }
        let len = worker.len();
        if !collections[me.newest as usize..]
            .iter()
            .any(|c| c.len() == len)
        {
            me.problems.push(format!(
                "len() {len} is no collection's size from generation {} on",
                me.newest
            ));
        }
    }

    /// What every reader shares: the worker, what the test knows of it, and the counters.
    #[derive(Clone)]
    struct Readers {
        worker: Worker<Stress>,
        shared: Arc<Shared>,
        done: Arc<AtomicBool>,
        problems: Arc<Problems>,
        straddled: Arc<AtomicU64>,
        checks: Arc<AtomicU64>,
    }

    impl Readers {
        fn reader(&self) -> Reader<'_> {
            Reader::new(&self.shared, &self.problems)
        }

        /// One counted pass of `me`.
        fn pass(&self, me: &mut Reader<'_>) {
            read_once(&self.worker, &self.shared, me, &self.straddled);
            self.checks.fetch_add(1, SeqCst);
        }
    }

    let all = Readers {
        worker: worker.clone(),
        shared: shared.clone(),
        done: done.clone(),
        problems: problems.clone(),
        straddled: straddled.clone(),
        checks: checks.clone(),
    };
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let all = all.clone();
            std::thread::spawn(move || {
                let mut me = all.reader();
                let started = std::time::Instant::now();
                while !all.done.load(SeqCst) && started.elapsed() < Duration::from_secs(120) {
                    all.pass(&mut me);
                }
            })
        })
        .collect();
    let readers: Vec<_> = (0..8)
        .map(|_| {
            let all = all.clone();
            tokio::spawn(async move {
                let mut me = all.reader();
                while !all.done.load(SeqCst) {
                    all.pass(&mut me);
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    drop(all);
    let swappers: Vec<_> = (0..4)
        .map(|_| {
            let worker = worker.clone();
            tokio::spawn(async move {
                for _ in 0..swaps_per_swapper {
                    let report = worker.refresh_all().await.expect("refresh_all");
                    assert!(report.bulk, "{report:?}");
                }
            })
        })
        .collect();
    for swapper in swappers {
        swapper.await.expect("no swapper panics");
    }
    done.store(true, SeqCst);
    for reader in readers {
        reader.await.expect("no reader panics");
    }
    for thread in threads {
        thread.join().expect("no reading thread panics");
    }
    let generations = shared.collections.lock().len() - 1;
    eprintln!(
        "swaps: {generations} collections swapped in; {} reader passes (scan + keys + len), \
         {} scans saw a newer collection part-way",
        checks.load(SeqCst),
        straddled.load(SeqCst)
    );
    let found = problems.take();
    assert!(found.is_empty(), "{found:#?}");
    assert!(generations >= swaps_per_swapper, "{generations} swaps");
    assert_eq!(shared.load_calls.load(SeqCst), 0, "only bulk loads ran");
    worker.shutdown().await.expect("shutdown");
}
