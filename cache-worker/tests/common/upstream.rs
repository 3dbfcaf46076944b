//! A scripted upstream for the behaviour tests: each key answers what the test sets, every
//! call is counted, and a test can hold a call (see [`Upstream::hold`]). And [`Nothing`], an
//! upstream of any key and value type that has nothing.

use std::collections::HashMap;
use std::fmt::Debug;
use std::hash::Hash;
use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cache_worker::{CacheWorker, Entries, SeedError};
use parking_lot::Mutex;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::hold::{Hold, Holds};

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
    pub holds: Arc<Holds<Option<String>>>,
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

    /// An upstream whose `seed` answers `seed`.
    pub fn with_seed(seed: Seed) -> Self {
        let up = Self::new();
        *up.seed.lock() = seed;
        up
    }

    /// An upstream where each of `values`' keys answers its value.
    pub fn with_values(values: &[(&str, u64)]) -> Self {
        let up = Self::new();
        for (key, value) in values {
            up.set_value(key, *value);
        }
        up
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
        self.holds.hold(Some(key.to_owned()))
    }

    /// Holds the next call of `load_all` once it has read the collection, until released.
    pub fn hold_bulk(&self) -> Hold {
        self.holds.hold(None)
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
        self.holds.pass(&Some(key.clone())).await;
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
        self.holds.pass(&None).await;
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

/// An upstream of keys `K` and values `V` where no key exists: for what a worker does
/// without its loader (its settings, its start from a dump).
pub struct Nothing<K, V>(PhantomData<fn() -> (K, V)>);

impl<K, V> Default for Nothing<K, V> {
    fn default() -> Self {
        Nothing(PhantomData)
    }
}

impl<K, V> Clone for Nothing<K, V> {
    fn clone(&self) -> Self {
        Nothing::default()
    }
}

impl<K, V> CacheWorker for Nothing<K, V>
where
    K: Eq + Hash + Clone + Debug + Serialize + DeserializeOwned + Send + Sync + 'static,
    V: PartialEq + Serialize + DeserializeOwned + Send + Sync + 'static,
{
    type Key = K;
    type Value = V;
    type Error = std::io::Error;

    async fn load(&self, _: &K) -> Result<Option<V>, std::io::Error> {
        Ok(None)
    }
}
