//! A scripted upstream for the behaviour tests: each key answers what the test sets, and every
//! call is counted.
#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cache_worker::{CacheWorker, Entries, SeedError};
use parking_lot::Mutex;

/// What the upstream answers for a key.
#[derive(Clone, Debug)]
pub enum Reply {
    Value(u64),
    Missing,
    Fail(&'static str),
    Panic(&'static str),
    Hang,
}

#[derive(Debug, thiserror::Error)]
#[error("upstream says: {0}")]
pub struct UpstreamError(pub String);

/// A whole collection, or why it cannot be had.
pub type Collection = Option<Result<Vec<(String, u64)>, String>>;
/// What `seed` answers.
pub type Seed = Option<Result<Vec<(String, u64)>, SeedFailure>>;

#[derive(Clone, Default)]
pub struct Upstream {
    pub replies: Arc<Mutex<HashMap<String, Reply>>>,
    /// `Some`: the worker has a bulk load answering this collection (or `Err` with this text).
    pub collection: Arc<Mutex<Collection>>,
    pub loads: Arc<Mutex<HashMap<String, usize>>>,
    pub bulk_loads: Arc<AtomicUsize>,
    pub seeds: Arc<AtomicUsize>,
    pub seed: Arc<Mutex<Seed>>,
    pub delay: Arc<Mutex<Duration>>,
    /// Per-entry refresh interval and expiry, for every key.
    pub refresh_after: Arc<Mutex<Option<Duration>>>,
    pub expire_after: Arc<Mutex<Option<Duration>>>,
    /// Calls the test holds after they read upstream: `Some(key)` for `load(key)`, `None` for
    /// `load_all`.
    pub holds: Arc<Mutex<HashMap<Option<String>, Arc<Gate>>>>,
}

/// One held call: it says when it has read upstream, then waits until the test releases it.
pub struct Gate {
    entered: tokio::sync::Semaphore,
    release: tokio::sync::Semaphore,
}

impl Default for Gate {
    fn default() -> Self {
        Gate {
            entered: tokio::sync::Semaphore::new(0),
            release: tokio::sync::Semaphore::new(0),
        }
    }
}

impl Gate {
    async fn pass(&self) {
        self.entered.add_permits(1);
        if let Ok(permit) = self.release.acquire().await {
            permit.forget();
        }
    }
}

/// The test's side of a held call (see [`Upstream::hold`]).
pub struct Hold(Arc<Gate>);

impl Hold {
    /// Waits until the held call has read upstream and is waiting.
    pub async fn entered(&self) {
        if let Ok(permit) = self.0.entered.acquire().await {
            permit.forget();
        }
    }

    /// Lets the held call return what it read.
    pub fn release(self) {
        self.0.release.add_permits(1);
    }
}

#[derive(Clone, Debug)]
pub enum SeedFailure {
    Skip,
    Abort,
}

impl Upstream {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn set(&self, key: &str, reply: Reply) {
        self.replies.lock().insert(key.to_owned(), reply);
    }

    pub fn set_value(&self, key: &str, value: u64) {
        self.set(key, Reply::Value(value));
    }

    pub fn set_collection(&self, items: &[(&str, u64)]) {
        *self.collection.lock() =
            Some(Ok(items.iter().map(|(k, v)| (k.to_string(), *v)).collect()));
    }

    pub fn fail_collection(&self, why: &str) {
        *self.collection.lock() = Some(Err(why.to_owned()));
    }

    pub fn loads_of(&self, key: &str) -> usize {
        self.loads.lock().get(key).copied().unwrap_or(0)
    }

    pub fn total_loads(&self) -> usize {
        self.loads.lock().values().sum()
    }

    pub fn set_delay(&self, delay: Duration) {
        *self.delay.lock() = delay;
    }

    /// Holds the next call of `load(key)` once it has read its reply, until released.
    pub fn hold(&self, key: &str) -> Hold {
        self.hold_call(Some(key.to_owned()))
    }

    /// Holds the next call of `load_all` once it has read the collection, until released.
    pub fn hold_bulk(&self) -> Hold {
        self.hold_call(None)
    }

    fn hold_call(&self, call: Option<String>) -> Hold {
        let gate = Arc::new(Gate::default());
        self.holds.lock().insert(call, gate.clone());
        Hold(gate)
    }

    async fn pass_hold(&self, call: Option<String>) {
        let gate = self.holds.lock().remove(&call);
        if let Some(gate) = gate {
            gate.pass().await;
        }
    }
}

impl CacheWorker for Upstream {
    type Key = String;
    type Value = u64;
    type Error = UpstreamError;

    async fn load(&self, key: &String) -> Result<Option<u64>, UpstreamError> {
        *self.loads.lock().entry(key.clone()).or_default() += 1;
        let delay = *self.delay.lock();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let reply = self.replies.lock().get(key).cloned();
        self.pass_hold(Some(key.clone())).await;
        match reply.unwrap_or(Reply::Missing) {
            Reply::Value(v) => Ok(Some(v)),
            Reply::Missing => Ok(None),
            Reply::Fail(why) => Err(UpstreamError(why.to_owned())),
            Reply::Panic(why) => panic!("{why}"),
            Reply::Hang => std::future::pending().await,
        }
    }

    async fn load_all(&self) -> Option<Result<Entries<Self>, UpstreamError>> {
        let collection = self.collection.lock().clone()?;
        self.bulk_loads.fetch_add(1, Ordering::SeqCst);
        self.pass_hold(None).await;
        Some(collection.map_err(UpstreamError))
    }

    async fn seed(&self) -> Result<Entries<Self>, SeedError<UpstreamError>> {
        self.seeds.fetch_add(1, Ordering::SeqCst);
        match self.seed.lock().clone() {
            None => Ok(Vec::new()),
            Some(Ok(items)) => Ok(items),
            Some(Err(SeedFailure::Skip)) => Err(UpstreamError("seed source down".into()).into()),
            Some(Err(SeedFailure::Abort)) => {
                Err(SeedError::Abort(UpstreamError("seed says stop".into())))
            }
        }
    }

    fn refresh_after(&self, _key: &String, _value: &u64) -> Option<Duration> {
        *self.refresh_after.lock()
    }

    fn expire_after(&self, _key: &String, _value: &u64) -> Option<Duration> {
        *self.expire_after.lock()
    }
}

pub fn key(k: &str) -> String {
    k.to_owned()
}

/// Lets spawned tasks run: yields a few times on the current runtime.
pub async fn settle() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

/// `CACHE_WORKER_LONG=1`: the long variants of the randomized tests.
pub fn long_run() -> bool {
    std::env::var("CACHE_WORKER_LONG").as_deref() == Ok("1")
}

/// splitmix64: a small, seeded, reproducible generator for the randomized tests.
pub struct Rng(pub u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// The generator for one decision, from independent parts (seed, key, call number).
    pub fn of(parts: &[u64]) -> Self {
        let mut rng = Rng(0);
        for part in parts {
            rng.0 ^= *part;
            rng.next();
        }
        rng
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// What went wrong, collected from every task and thread (a panic in one would hide the
/// others), up to `limit` messages.
pub struct Problems {
    all: Mutex<Vec<String>>,
    limit: usize,
}

impl Problems {
    pub fn new(limit: usize) -> Self {
        Problems {
            all: Mutex::new(Vec::new()),
            limit,
        }
    }

    pub fn push(&self, what: String) {
        let mut all = self.all.lock();
        if all.len() < self.limit {
            all.push(what);
        }
    }

    pub fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.all.lock())
    }
}
