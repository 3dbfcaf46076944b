//! Loader chaos: a loader that panics, fails, hangs past the load timeout, answers `Ok(None)`
//! or a value, at random from a seeded generator, while periodic refreshes, per-entry timers,
//! `refresh_all`, readers on tasks (`get`/`fetch`) and readers on two OS threads (`peek`) run.
//!
//! What must hold throughout: no reader panics; every value a reader or a subscriber ever sees
//! for a key is one the loader returned for that key; every fetch error names its own key; the
//! refresher stays alive (every `refresh_all` answers, no restarts); and at the end the stats
//! equal what the loader did, and replaying the events gives the bucket's contents.
//!
//! The runtime is tokio's current-thread one with the clock paused, so hangs and refresh
//! intervals cost no real time; the two peeking threads run on the real clock until the test
//! stops them. The n-th answer for a key depends only on the seed, the key and n; which keys
//! a cycle reloads first follows the bucket's per-process hash seed, so a run with the same
//! `CACHE_WORKER_SEED=<seed>` replays the same answers in a close, not identical, order. The
//! default run makes at least 10,000 loader calls per test; `CACHE_WORKER_LONG=1` makes
//! 200,000.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::thread;
use std::time::Duration;

use cache_worker::{CacheWorker, Entries, Event, FetchError, Worker};
use futures_util::StreamExt;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use common::{Problems, Replica, Rng, handed_out, long_run};

const KEYS: u32 = 64;
const LOAD_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_SEED: u64 = 0x5EED_C4A0_5000_0001;

fn target_loads() -> u64 {
    if long_run() { 200_000 } else { 10_000 }
}

/// `CACHE_WORKER_SEED` (decimal or 0x-hex) to replay a failure, else the default.
fn seed() -> u64 {
    let Ok(text) = std::env::var("CACHE_WORKER_SEED") else {
        return DEFAULT_SEED;
    };
    let text = text.trim();
    let parsed = match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse(),
    };
    parsed.expect("CACHE_WORKER_SEED is a number")
}

/// A value that names its key and which of the loader's answers for that key it was.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Val {
    key: u32,
    generation: u64,
}

#[derive(Debug, thiserror::Error)]
#[error("chaos error: key={key}; call {call}")]
struct ChaosError {
    key: String,
    call: u64,
}

/// Every value the loader returned for one key.
#[derive(Default)]
struct Returned {
    next: u64,
    last: Option<u64>,
    all: HashSet<u64>,
}

/// What the loader did, counted by the loader itself.
#[derive(Default)]
struct Tally {
    load_calls: AtomicU64,
    values: AtomicU64,
    not_found: AtomicU64,
    errors: AtomicU64,
    panics: AtomicU64,
    hangs: AtomicU64,
    bulk_calls: AtomicU64,
    bulk_ok: AtomicU64,
    bulk_none: AtomicU64,
    bulk_errors: AtomicU64,
    bulk_panics: AtomicU64,
    bulk_hangs: AtomicU64,
    /// Loader futures alive now (a hung one until the timeout drops it).
    in_flight: AtomicU64,
    /// Panics of the `refresh_after` / `expire_after` hooks (no stat counts these).
    hook_panics: AtomicU64,
}

struct Shared {
    seed: u64,
    bulk: bool,
    /// Off: every call answers a fresh value at once.
    chaos: AtomicBool,
    calls: Vec<AtomicU64>,
    bulk_calls: AtomicU64,
    returned: Vec<Mutex<Returned>>,
    tally: Tally,
}

impl Shared {
    fn new(seed: u64, bulk: bool) -> Arc<Self> {
        Arc::new(Shared {
            seed,
            bulk,
            chaos: AtomicBool::new(true),
            calls: (0..KEYS).map(|_| AtomicU64::new(0)).collect(),
            bulk_calls: AtomicU64::new(0),
            returned: (0..KEYS).map(|_| Mutex::default()).collect(),
            tally: Tally::default(),
        })
    }

    /// Makes (and records, before anyone can see it) the value the loader returns for `key`:
    /// a new generation, or now and then the same as last time (a reload with no change).
    fn produce(&self, key: u32, rng: &mut Rng) -> Val {
        let mut r = self.returned[key as usize].lock();
        let generation = match r.last {
            Some(last) if rng.below(3) == 0 => last,
            _ => {
                r.next += 1;
                r.next
            }
        };
        r.all.insert(generation);
        r.last = Some(generation);
        Val { key, generation }
    }

    /// How one loader call ends (a value whenever chaos is off), drawn from `rng` with
    /// percentages up to `bounds`: a value, `absent` (no value), a failure, a panic, else a hang;
    /// then, unless it hangs, a stall drawn from the same `rng`.
    async fn outcome(&self, rng: &mut Rng, bounds: [u64; 4], absent: Outcome) -> Outcome {
        let outcome = if self.chaos.load(SeqCst) {
            match rng.below(100) {
                n if n < bounds[0] => Outcome::Value,
                n if n < bounds[1] => absent,
                n if n < bounds[2] => Outcome::Fail,
                n if n < bounds[3] => Outcome::Panic,
                _ => Outcome::Hang,
            }
        } else {
            Outcome::Value
        };
        if self.chaos.load(SeqCst) && !matches!(outcome, Outcome::Hang) {
            stall(rng).await;
        }
        outcome
    }

    fn was_returned(&self, key: u32, value: &Val) -> bool {
        handed_out(&self.returned, key, (value.key, value.generation), |r| {
            &r.all
        })
    }
}

/// Counts a loader future as alive until it is dropped: finished, unwound or cut by the timeout.
struct Alive<'a>(&'a AtomicU64);

impl<'a> Alive<'a> {
    fn enter(counter: &'a AtomicU64) -> Self {
        counter.fetch_add(1, SeqCst);
        Alive(counter)
    }
}

impl Drop for Alive<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, SeqCst);
    }
}

enum Outcome {
    Value,
    Missing,
    Fail,
    Panic,
    Hang,
    /// `load_all` only: this cycle has no bulk load (the per-key reloads run instead).
    NoBulk,
}

/// A pause of a chaotic length, always shorter than the load timeout.
async fn stall(rng: &mut Rng) {
    match rng.below(4) {
        0 => {}
        1 => {
            for _ in 0..=rng.below(3) {
                tokio::task::yield_now().await;
            }
        }
        2 => tokio::time::sleep(Duration::from_millis(rng.below(500))).await,
        _ => {
            let longest = LOAD_TIMEOUT.as_millis() as u64 - 100;
            tokio::time::sleep(Duration::from_millis(rng.below(longest))).await;
        }
    }
}

const CHAOS_PANIC: &str = "chaos panic";

#[derive(Clone)]
struct Chaos(Arc<Shared>);

impl CacheWorker for Chaos {
    type Key = u32;
    type Value = Val;
    type Error = ChaosError;

    async fn load(&self, key: &u32) -> Result<Option<Val>, ChaosError> {
        let s = &self.0;
        let t = &s.tally;
        let call = s.calls[*key as usize].fetch_add(1, SeqCst);
        t.load_calls.fetch_add(1, SeqCst);
        let _alive = Alive::enter(&t.in_flight);
        let mut rng = Rng::of(&[s.seed, u64::from(*key), call]);
        let outcome = s
            .outcome(&mut rng, [45, 55, 70, 85], Outcome::Missing)
            .await;
        match outcome {
            Outcome::Value => {
                t.values.fetch_add(1, SeqCst);
                Ok(Some(s.produce(*key, &mut rng)))
            }
            Outcome::Missing => {
                t.not_found.fetch_add(1, SeqCst);
                Ok(None)
            }
            Outcome::Fail => {
                t.errors.fetch_add(1, SeqCst);
                Err(ChaosError {
                    key: key.to_string(),
                    call,
                })
            }
            Outcome::Panic => {
                t.panics.fetch_add(1, SeqCst);
                panic!("{CHAOS_PANIC}: key={key}; call {call}");
            }
            Outcome::Hang | Outcome::NoBulk => {
                t.hangs.fetch_add(1, SeqCst);
                std::future::pending().await
            }
        }
    }

    async fn load_all(&self) -> Option<Result<Entries<Self>, ChaosError>> {
        let s = &self.0;
        if !s.bulk {
            return None;
        }
        let t = &s.tally;
        let call = s.bulk_calls.fetch_add(1, SeqCst);
        t.bulk_calls.fetch_add(1, SeqCst);
        let _alive = Alive::enter(&t.in_flight);
        let mut rng = Rng::of(&[s.seed, u64::MAX, call]);
        let outcome = s.outcome(&mut rng, [50, 60, 75, 90], Outcome::NoBulk).await;
        match outcome {
            Outcome::Value => {
                t.bulk_ok.fetch_add(1, SeqCst);
                let everything = !s.chaos.load(SeqCst);
                let mut entries = Vec::new();
                for key in 0..KEYS {
                    if everything || rng.below(5) != 0 {
                        entries.push((key, s.produce(key, &mut rng)));
                    }
                }
                Some(Ok(entries))
            }
            Outcome::NoBulk | Outcome::Missing => {
                t.bulk_none.fetch_add(1, SeqCst);
                None
            }
            Outcome::Fail => {
                t.bulk_errors.fetch_add(1, SeqCst);
                Some(Err(ChaosError {
                    key: "*".into(),
                    call,
                }))
            }
            Outcome::Panic => {
                t.bulk_panics.fetch_add(1, SeqCst);
                panic!("{CHAOS_PANIC}: key=*; bulk call {call}");
            }
            Outcome::Hang => {
                t.bulk_hangs.fetch_add(1, SeqCst);
                std::future::pending().await
            }
        }
    }

    /// Some values ask for their own reload, so per-entry timers and retries run too; and
    /// some make the hook panic, which must count as "no interval of its own".
    fn refresh_after(&self, key: &u32, value: &Val) -> Option<Duration> {
        if self.0.chaos.load(SeqCst) && value.generation % 13 == 5 {
            self.0.tally.hook_panics.fetch_add(1, SeqCst);
            panic!("{CHAOS_PANIC}: refresh_after key={key}");
        }
        (value.generation % 4 == 1).then_some(Duration::from_secs(3))
    }

    /// Some keys expire, so expiry runs alongside; and some values make the hook panic, which
    /// must count as "never expires".
    fn expire_after(&self, key: &u32, value: &Val) -> Option<Duration> {
        if self.0.chaos.load(SeqCst) && value.generation % 17 == 7 {
            self.0.tally.hook_panics.fetch_add(1, SeqCst);
            panic!("{CHAOS_PANIC}: expire_after key={key}");
        }
        (key % 8 == 3).then_some(Duration::from_secs(25))
    }
}

/// The loader's panics are expected by the thousand: keep them out of the test output. Any
/// other panic is printed as usual.
fn quiet_chaos_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let payload = info.payload();
            let message = payload
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| payload.downcast_ref::<&str>().copied())
                .unwrap_or("");
            if !message.starts_with(CHAOS_PANIC) {
                default(info);
            }
        }));
    });
}

/// Checks one `fetch` result: a value the loader returned for this key, or an error that
/// names this key.
fn check_fetch(shared: &Shared, bad: &Problems, key: u32, result: &Result<Arc<Val>, FetchError>) {
    let names_key = |text: &str| text.contains(&format!("key={key};"));
    match result {
        Ok(value) if shared.was_returned(key, value) => {}
        Ok(value) => bad.push(format!(
            "fetch({key}) gave {value:?}, never returned for it"
        )),
        Err(FetchError::NotFound) => {}
        Err(FetchError::Timeout(after)) if *after == LOAD_TIMEOUT => {}
        Err(e @ (FetchError::Load(_) | FetchError::Panicked(_))) if names_key(&e.to_string()) => {}
        Err(e) => bad.push(format!("fetch({key}) failed with {e:?}")),
    }
}

/// Replays the events into a copy of the bucket ([`Replica`]), checking too that every value
/// an event carries is one the loader returned for its key.
fn apply(replica: &mut Replica<u32, Val>, shared: &Shared, bad: &Problems, event: Event<u32, Val>) {
    if let Event::Inserted { key, value, .. } | Event::Updated { key, value, .. } = &event
        && !shared.was_returned(*key, value)
    {
        bad.push(format!("event {event:?}: never returned"));
    }
    if let Err(what) = replica.apply(event) {
        bad.push(format!("event {what}"));
    }
}

/// The figures of one run, printed for the reliability notes.
struct Report {
    peeks: u64,
    reads: u64,
    refresh_alls: u64,
    invalidations: u64,
}

async fn run_chaos(bulk: bool) {
    quiet_chaos_panics();
    let seed = seed();
    let target = target_loads();
    let began = tokio::time::Instant::now();
    let shared = Shared::new(seed, bulk);
    let bad = Arc::new(Problems::new(50));
    let worker = Worker::builder(Chaos(shared.clone()))
        .bucket(if bulk { "chaos-bulk" } else { "chaos" })
        .no_file()
        .refresh(Duration::from_secs(10))
        .load_timeout(LOAD_TIMEOUT)
        .concurrency(8)
        .retry_backoff(Duration::from_secs(1), Duration::from_secs(8))
        .event_capacity(1 << 16)
        .start()
        .await
        .expect("start");

    // Subscribed before anything ran: the first bulk cycle is only spawned by `start`.
    let mut events = worker.subscribe();
    let replay = Arc::new(Mutex::new(Replica::default()));
    let consumer = tokio::spawn({
        let (shared, bad, replay) = (shared.clone(), bad.clone(), replay.clone());
        async move {
            while let Some(event) = events.next().await {
                apply(&mut replay.lock(), &shared, &bad, event);
            }
        }
    });

    let stop = Arc::new(AtomicBool::new(false));
    let peekers: Vec<_> = (0..2u64)
        .map(|t| {
            let (worker, shared, bad, stop) =
                (worker.clone(), shared.clone(), bad.clone(), stop.clone());
            thread::spawn(move || {
                let mut rng = Rng::new(seed ^ (0xA11CE + t));
                let started = std::time::Instant::now();
                let mut peeks = 0u64;
                // Bounded: the test stops them, and a stuck test cannot keep them forever.
                while !stop.load(SeqCst) && started.elapsed() < Duration::from_secs(300) {
                    for _ in 0..64 {
                        let key = rng.below(u64::from(KEYS)) as u32;
                        if let Some(value) = worker.peek(&key)
                            && !shared.was_returned(key, &value)
                        {
                            bad.push(format!("peek({key}) saw {value:?}, never returned"));
                        }
                        peeks += 1;
                    }
                    if rng.below(4) == 0 {
                        let len = worker.len();
                        let keys = worker.keys();
                        if keys.iter().any(|k| *k >= KEYS) || len > KEYS as usize {
                            bad.push(format!("keys() {keys:?} / len() {len} out of range"));
                        }
                    }
                    thread::sleep(Duration::from_micros(50));
                }
                peeks
            })
        })
        .collect();

    let reads = Arc::new(AtomicU64::new(0));
    let readers: Vec<_> = (0..8u64)
        .map(|r| {
            let (worker, shared, bad, stop, reads) = (
                worker.clone(),
                shared.clone(),
                bad.clone(),
                stop.clone(),
                reads.clone(),
            );
            tokio::spawn(async move {
                let mut rng = Rng::new(seed ^ (0xBEAD + r));
                while !stop.load(SeqCst) {
                    let key = rng.below(u64::from(KEYS)) as u32;
                    if rng.below(2) == 0 {
                        let result = worker.fetch(&key).await;
                        check_fetch(&shared, &bad, key, &result);
                    } else if let Some(value) = worker.get(&key).await
                        && !shared.was_returned(key, &value)
                    {
                        bad.push(format!("get({key}) gave {value:?}, never returned"));
                    }
                    reads.fetch_add(1, SeqCst);
                    tokio::time::sleep(Duration::from_millis(rng.below(800))).await;
                }
            })
        })
        .collect();

    // The driver: now and then a refresh now, or an invalidation that makes the next read miss.
    let mut rng = Rng::new(seed ^ 0xD81E);
    let mut report = Report {
        peeks: 0,
        reads: 0,
        refresh_alls: 0,
        invalidations: 0,
    };
    while shared.tally.load_calls.load(SeqCst) + shared.tally.bulk_calls.load(SeqCst) < target {
        tokio::time::sleep(Duration::from_millis(rng.below(3_000))).await;
        match rng.below(10) {
            0..3 => {
                let done = worker.refresh_all().await;
                assert!(done.is_ok(), "refresh_all must keep answering: {done:?}");
                report.refresh_alls += 1;
            }
            3..6 => {
                let key = rng.below(u64::from(KEYS)) as u32;
                if let Some(value) = worker.invalidate(&key)
                    && !shared.was_returned(key, &value)
                {
                    bad.push(format!(
                        "invalidate({key}) removed {value:?}, never returned"
                    ));
                }
                report.invalidations += 1;
            }
            _ => {}
        }
        let found = bad.take();
        assert!(found.is_empty(), "seed {seed:#x}: {found:#?}");
    }

    stop.store(true, SeqCst);
    for reader in readers {
        reader.await.expect("no reader task panics");
    }
    for peeker in peekers {
        report.peeks += peeker.join().expect("no peeking thread panics");
    }
    report.reads = reads.load(SeqCst);

    // Calm: loads from now on answer at once; wait until the chaotic ones are all over (a hung
    // one ends at its timeout).
    shared.chaos.store(false, SeqCst);
    for _ in 0..1_000 {
        if shared.tally.in_flight.load(SeqCst) == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(shared.tally.in_flight.load(SeqCst), 0, "loads still alive");
    let last = worker.refresh_all().await;
    assert!(last.is_ok(), "refresh_all after the chaos: {last:?}");
    report.refresh_alls += 1;

    // On this one thread nothing runs between the two reads below: they are one moment.
    let stats = worker.stats();
    let t = &shared.tally;
    let get = |c: &AtomicU64| c.load(SeqCst);
    assert_eq!(get(&t.in_flight), 0);
    let bulk_failures = get(&t.bulk_errors) + get(&t.bulk_panics) + get(&t.bulk_hangs);
    assert_eq!(
        stats.loads,
        get(&t.load_calls) + get(&t.bulk_calls) - get(&t.bulk_none),
        "loads: every call of load, and of load_all unless it said it has no bulk load"
    );
    assert_eq!(
        stats.load_errors,
        get(&t.errors) + get(&t.bulk_errors),
        "load_errors"
    );
    assert_eq!(stats.panics, get(&t.panics) + get(&t.bulk_panics), "panics");
    assert_eq!(
        stats.timeouts,
        get(&t.hangs) + get(&t.bulk_hangs),
        "timeouts"
    );
    assert_eq!(stats.not_found, get(&t.not_found), "not_found");
    assert_eq!(stats.bulk_loads, get(&t.bulk_ok), "bulk_loads");
    assert_eq!(
        stats.refresher_restarts, 0,
        "a loader panic never crashes the refresher"
    );
    assert!(stats.refresh_cycles >= report.refresh_alls, "{stats:?}");
    let all_failures = get(&t.errors) + get(&t.panics) + get(&t.hangs) + bulk_failures;
    assert!(
        (bulk_failures..=all_failures).contains(&stats.refresh_failures),
        "refresh_failures {} not within {bulk_failures}..={all_failures}",
        stats.refresh_failures
    );
    assert_eq!(
        stats.hits + stats.misses,
        report.peeks + report.reads,
        "every peek, get and fetch is one hit or one miss"
    );
    assert_eq!(stats.entries, worker.len());

    // The chaos was real.
    for (what, count) in [
        ("values", get(&t.values)),
        ("not found", get(&t.not_found)),
        ("errors", get(&t.errors)),
        ("panics", get(&t.panics)),
        ("hangs", get(&t.hangs)),
        ("hook panics", get(&t.hook_panics)),
    ] {
        assert!(count > 0, "no {what} in {} loads", get(&t.load_calls));
    }
    if bulk {
        for (what, count) in [
            ("bulk values", get(&t.bulk_ok)),
            ("bulk fallbacks", get(&t.bulk_none)),
            ("bulk errors", get(&t.bulk_errors)),
            ("bulk panics", get(&t.bulk_panics)),
            ("bulk hangs", get(&t.bulk_hangs)),
        ] {
            assert!(count > 0, "no {what} in {} bulk loads", get(&t.bulk_calls));
        }
    }
    assert!(get(&t.load_calls) + get(&t.bulk_calls) >= target);

    // The events, replayed, give the bucket; and every value in it was returned for its key.
    let expected_events = stats.inserted + stats.updated + stats.removed + stats.expired;
    // A failed bulk load announces no reload; every other cycle does.
    let expected_reloads = stats.refresh_cycles - bulk_failures;
    for _ in 0..1_000 {
        let caught_up = {
            let replay = replay.lock();
            replay.entry_events >= expected_events && replay.full_reloads >= expected_reloads
        };
        if caught_up {
            break;
        }
        tokio::task::yield_now().await;
    }
    let mut contents = HashMap::new();
    for key in worker.keys() {
        let value = worker.peek(&key).expect("a listed key has a value");
        assert!(shared.was_returned(key, &value), "{key}: {value:?}");
        contents.insert(key, value);
    }
    {
        let replay = replay.lock();
        assert_eq!(replay.lagged, 0, "the subscriber never fell behind");
        assert_eq!(replay.entry_events, expected_events, "one event per change");
        assert_eq!(
            replay.full_reloads, expected_reloads,
            "one FullReload per cycle"
        );
        assert_eq!(replay.copy, contents, "replayed events give the bucket");
        eprintln!(
            "chaos{} seed {seed:#x}: {} load calls ({} values, {} not found, {} errors, {} panics, {} hangs/timeouts); \
             {} load_all calls ({} collections, {} no-bulk, {} errors, {} panics, {} hangs); \
             {} hook panics; {} refresh_all, {} refresh cycles, {} refresh failures, {} invalidations, {} restarts; \
             {} get/fetch on tasks, {} peeks on 2 threads; {} entry events + {} full reloads replayed; \
             {} coalesced; virtual time {:?}",
            if bulk { " (bulk)" } else { "" },
            get(&t.load_calls),
            get(&t.values),
            get(&t.not_found),
            get(&t.errors),
            get(&t.panics),
            get(&t.hangs),
            get(&t.bulk_calls),
            get(&t.bulk_ok),
            get(&t.bulk_none),
            get(&t.bulk_errors),
            get(&t.bulk_panics),
            get(&t.bulk_hangs),
            get(&t.hook_panics),
            report.refresh_alls,
            stats.refresh_cycles,
            stats.refresh_failures,
            report.invalidations,
            stats.refresher_restarts,
            report.reads,
            report.peeks,
            replay.entry_events,
            replay.full_reloads,
            stats.coalesced,
            began.elapsed(),
        );
    }
    let found = bad.take();
    assert!(found.is_empty(), "seed {seed:#x}: {found:#?}");

    // The worker still serves every key once upstream behaves.
    for key in 0..KEYS {
        let value = worker.fetch(&key).await.expect("loads answer again");
        assert!(shared.was_returned(key, &value), "{key}: {value:?}");
    }
    worker.shutdown().await.expect("shutdown");
    drop(worker);
    tokio::time::timeout(Duration::from_secs(60), consumer)
        .await
        .expect("the event stream ends once the worker is gone")
        .expect("the subscriber never panics");
}

#[tokio::test(start_paused = true)]
async fn a_chaotic_loader_never_reaches_readers_or_the_refresher() {
    run_chaos(false).await;
}

#[tokio::test(start_paused = true)]
async fn a_chaotic_bulk_loader_never_reaches_readers_or_the_refresher() {
    run_chaos(true).await;
}
