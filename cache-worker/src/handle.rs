//! [`Worker`], the handle to a running worker, and its [`Builder`].

use std::borrow::Borrow;
use std::hash::Hash;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::FutureExt;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::config::{Attributes, Layer, Settings};
use crate::error::DumpFailure;
use crate::inner::{Inner, Source};
use crate::load::{fetch, load_one};
use crate::refresh::{Command, RefreshReport};
use crate::start::{ColdStart, StartKind};
use crate::store::persist;
use crate::store::{DynStore, FileStore, Store};
use crate::{
    CacheWorker, Changes, Error, EventStream, FetchError, SeedError, Stats, dump, refresh,
};

/// A running cache worker: a cheap-to-clone handle (two `Arc`s inside).
///
/// The bucket lives in the handle, not in a task, so a crashed refresher never loses data.
/// Dropping the last handle stops the background tasks; call [`shutdown`](Worker::shutdown)
/// first to write the final dump.
///
/// ```
/// # use cache_worker::{CacheWorker, Worker};
/// # struct Squares;
/// # impl CacheWorker for Squares {
/// #     type Key = u64; type Value = u64; type Error = std::io::Error;
/// #     async fn load(&self, key: &u64) -> Result<Option<u64>, std::io::Error> { Ok(Some(key * key)) }
/// # }
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), cache_worker::Error> {
/// let squares = Worker::builder(Squares).bucket("squares").start().await?;
/// assert_eq!(*squares.fetch(&12).await.unwrap(), 144);
/// assert_eq!(squares.peek(&12).as_deref(), Some(&144)); // cache only, never loads
/// squares.shutdown().await?;
/// # Ok(()) }
/// ```
pub struct Worker<W: CacheWorker> {
    pub(crate) inner: Arc<Inner<W>>,
    _alive: Arc<Alive>,
}

impl<W: CacheWorker> Clone for Worker<W> {
    fn clone(&self) -> Self {
        Worker {
            inner: self.inner.clone(),
            _alive: self._alive.clone(),
        }
    }
}

impl<W: CacheWorker> std::fmt::Debug for Worker<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("bucket", &self.inner.settings.bucket)
            .field("entries", &self.inner.bucket.len())
            .field("running", &self.inner.is_running())
            .finish()
    }
}

/// Held by every user handle (not by the background tasks): the last one dropped stops them,
/// and releases the dump file's lock for another instance.
struct Alive {
    cancel: CancellationToken,
    dump_file_lock: Arc<parking_lot::Mutex<Option<std::fs::File>>>,
    /// The bucket's version: a worker started after this one in the process starts after it.
    version: Arc<crossbeam_utils::CachePadded<std::sync::atomic::AtomicU64>>,
}

impl Drop for Alive {
    fn drop(&mut self) {
        self.cancel.cancel();
        self.dump_file_lock.lock().take();
        crate::versions::log::ended(self.version.load(Ordering::Acquire));
    }
}

/// A value from [`Worker::fetch_unsaved`], and whether the loader was called for it.
#[derive(Clone, Debug, PartialEq)]
pub struct Fetched<V> {
    /// The value.
    pub value: Arc<V>,
    /// `true` if it was loaded now (and not saved); `false` if it came from the bucket.
    pub loaded: bool,
}

impl<W: CacheWorker> Worker<W> {
    /// Starts configuring an instance of the worker `state` from the defaults; finish with
    /// [`Builder::start`]. A type with `#[cache_worker(..)]` has `T::builder(state)`, which
    /// starts from the attribute's settings instead (this function cannot see them).
    #[must_use = "a builder does nothing until `.start().await`"]
    pub fn builder(state: W) -> Builder<W> {
        Builder {
            state,
            preset: Layer::default(),
            explicit: Layer::default(),
            store: None,
        }
    }

    /// The value of `key`: from the bucket, or loaded (coalesced with concurrent misses) and
    /// stored. Any failure gives `None`; use [`fetch`](Worker::fetch) to see why.
    pub async fn get(&self, key: &W::Key) -> Option<Arc<W::Value>> {
        self.fetch(key).await.ok()
    }

    /// The value of `key`: from the bucket, or loaded and stored.
    ///
    /// Concurrent misses of one key share one load; each gets the same result. A load that
    /// fails, panics or passes the load timeout stores nothing and gives every waiter the same
    /// [`FetchError`]; the next fetch tries again. Dropping this future cancels nothing for
    /// the other waiters: the load runs on its own task.
    pub async fn fetch(&self, key: &W::Key) -> Result<Arc<W::Value>, FetchError> {
        fetch(&self.inner, key).await
    }

    /// The value of `key` if it is in the bucket. Never loads, never waits: the hot path.
    ///
    /// An entry past its expiry is not returned, whether or not the refresher has removed it
    /// yet (entries without an expiry cost no clock read).
    ///
    /// Takes any borrowed form of the key, as `HashMap::get` does (`&str` for a `String` key).
    #[inline]
    pub fn peek<Q>(&self, key: &Q) -> Option<Arc<W::Value>>
    where
        W::Key: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        if !self.inner.settings.cache_enabled {
            return None;
        }
        let found = self.inner.bucket.peek(key);
        if found.is_some() {
            self.inner.stats.hits.incr();
        } else {
            self.inner.stats.misses.incr();
        }
        found
    }

    /// Like [`fetch`](Worker::fetch), but a loaded value is not stored: validate it, then
    /// commit it with [`insert`](Worker::insert) (the original's `fetch_no_save` + `direct_set`).
    /// Not coalesced, since nothing is shared.
    pub async fn fetch_unsaved(&self, key: &W::Key) -> Result<Fetched<W::Value>, FetchError> {
        if let Some(value) = self.peek(key) {
            return Ok(Fetched {
                value,
                loaded: false,
            });
        }
        if !self.inner.is_running() {
            return Err(FetchError::NotStarted);
        }
        match load_one(&self.inner, key).await? {
            Some(value) => Ok(Fetched {
                value: Arc::new(value),
                loaded: true,
            }),
            None => Err(FetchError::NotFound),
        }
    }

    /// Stores `value` under `key` (a `V` or an `Arc<V>`). An equal value is no change and emits
    /// nothing. Ignored when the cache is disabled.
    pub fn insert(&self, key: W::Key, value: impl Into<Arc<W::Value>>) {
        if self.inner.settings.cache_enabled {
            self.inner.store(key, value.into(), Source::Insert);
        }
    }

    /// Removes `key` (`Removed { cause: Invalidated }`) and returns its value, if it had one.
    ///
    /// A load of the key already in flight may have read upstream before the change this
    /// announces: its waiters still get its value, but it is not stored, and the next read
    /// loads again. A reload by the refresher that began before is dropped the same way.
    pub fn invalidate<Q>(&self, key: &Q) -> Option<Arc<W::Value>>
    where
        W::Key: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.inner.invalidate(key)
    }

    /// Every key in the bucket now whose entry has not expired, in no particular order.
    pub fn keys(&self) -> Vec<W::Key> {
        self.inner.bucket.keys()
    }

    /// How many entries the bucket holds, counting any past their expiry that the refresher
    /// has not removed yet (reads never return those).
    pub fn len(&self) -> usize {
        self.inner.bucket.len()
    }

    /// Whether the bucket is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Runs one full refresh cycle now and returns what it did. If a cycle is running, the
    /// next one (started right after it) is the one reported.
    ///
    /// On a follower of a shared bucket (feature `redis`) the leader refreshes: this returns
    /// an empty report at once.
    pub async fn refresh_all(&self) -> Result<RefreshReport, Error> {
        let bucket = || self.inner.settings.bucket.clone();
        if !self.inner.is_running() {
            return Err(Error::ShutDown { bucket: bucket() });
        }
        let (reply, report) = oneshot::channel();
        self.inner
            .commands
            .send(Command::RefreshNow(reply))
            .map_err(|_| Error::ShutDown { bucket: bucket() })?;
        report
            .await
            .map_err(|_| Error::ShutDown { bucket: bucket() })
    }

    /// A stream of the bucket's changes from now on. See [`EventStream`] for what a
    /// subscriber that falls behind gets.
    pub fn subscribe(&self) -> EventStream<W::Key, W::Value> {
        self.inner.subscribe()
    }

    /// The bucket's version: it moves by one with every change (every `Inserted`, `Updated`
    /// and `Removed` event, whatever caused it) and not with an equal write.
    ///
    /// Each run (each start) begins at the wall clock in microseconds since the Unix epoch, or
    /// later: after the version of the dump it started warm from, and after the last version
    /// of every worker of this process that has shut down or been dropped. So a run never
    /// reuses a version of one before it in the process; across processes, only a run that
    /// made more than a million changes a second over its whole life could be overtaken by a
    /// later start's clock (or a clock set back). Versions stay exact in JavaScript numbers
    /// (below 2^53) until the year 2255.
    ///
    /// After a warm start from a dump written while the bucket did not change (always the
    /// final dump of a shutdown with no writes during it), a client at the dump's version is
    /// where this run started: it gets a (possibly empty) `Delta`, not a `Full`. `version()`
    /// itself moves on to this run's start. A client keeps the version with its copy and asks
    /// [`changes_since`](Self::changes_since) for what changed.
    pub fn version(&self) -> u64 {
        self.inner.current_version()
    }

    /// What a client holding a copy of the bucket at version `since` needs to be current:
    ///
    /// - `None` → [`Changes::Full`]: every live entry, at the version returned;
    /// - the current version → [`Changes::NoChange`];
    /// - a version whose later changes are all retained → [`Changes::Delta`]: one change per
    ///   key (its last), in version order;
    /// - anything else → [`Changes::Full`]: a version older than what is retained
    ///   ([`Builder::delta_threshold`] changes, for [`Builder::delta_ttl`]), of an earlier run
    ///   (unless this one started warm from its exact dump: a client at the dump's version
    ///   gets a delta), or ahead of the bucket.
    ///
    /// Never a delta with a change missing, never `NoChange` while there are changes.
    ///
    /// ```
    /// # use cache_worker::{CacheWorker, Changes, Change, Worker};
    /// # struct Prices;
    /// # impl CacheWorker for Prices {
    /// #     type Key = String; type Value = u32; type Error = std::io::Error;
    /// #     async fn load(&self, _: &String) -> Result<Option<u32>, std::io::Error> { Ok(None) }
    /// # }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), cache_worker::Error> {
    /// let prices = Worker::builder(Prices).start().await?;
    /// prices.insert("a".to_string(), 1);
    /// let Changes::Full { version, entries } = prices.changes_since(None) else { unreachable!() };
    /// assert_eq!(entries.len(), 1);
    ///
    /// prices.insert("a".to_string(), 2);
    /// prices.insert("b".to_string(), 3);
    /// let Changes::Delta { from, changes, .. } = prices.changes_since(Some(version)) else { unreachable!() };
    /// assert_eq!(from, version);
    /// assert!(matches!(&changes[..], [Change::Put { .. }, Change::Put { .. }]));
    /// assert!(matches!(prices.changes_since(Some(prices.version())), Changes::NoChange { .. }));
    /// # Ok(()) }
    /// ```
    pub fn changes_since(&self, since: Option<u64>) -> Changes<W::Key, W::Value> {
        self.inner.sync(since).into()
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> Stats {
        self.inner.stats.snapshot(self.inner.bucket.len())
    }

    /// The settings this instance runs with, after the cascade.
    pub fn settings(&self) -> &Settings {
        &self.inner.settings
    }

    /// Writes the dump file now (it is otherwise written after changes, debounced, and on
    /// shutdown). A failure leaves the previous dump intact.
    pub async fn dump(&self) -> Result<(), Error> {
        dump::write(&self.inner).await
    }

    /// Waits until the first refresh cycle after the start has finished, and returns its
    /// report: for a worker with a bulk load, its first `load_all` (on a cold start the bucket
    /// is empty, or holds only the seed, until then); after a warm start, the revalidation of
    /// the entries that were stale in the dump. [`Builder::start`] does not wait for it.
    ///
    /// On a follower of a shared bucket (feature `redis`), which never refreshes, it waits
    /// until the copy has caught up with the shared store, and the report is empty.
    ///
    /// Returns at once once that cycle is done. The cycle may have failed (see the report's
    /// `failed`): the worker retries with backoff, and `ready` does not wait for a success.
    ///
    /// # Errors
    ///
    /// [`Error::ShutDown`] if the worker stopped before the cycle finished.
    pub async fn ready(&self) -> Result<RefreshReport, Error> {
        let mut first = self.inner.first_cycle.subscribe();
        tokio::select! {
            biased;
            Ok(report) = first.wait_for(Option::is_some) => Ok(report.clone().unwrap_or_default()),
            _ = self.inner.cancel.cancelled() => Err(Error::ShutDown {
                bucket: self.inner.settings.bucket.clone(),
            }),
        }
    }

    /// How this instance started: warm from its dump (how many entries), or cold and why.
    pub fn started(&self) -> &StartKind {
        self.inner
            .start
            .get()
            .unwrap_or(&StartKind::Cold(ColdStart::NoFile))
    }

    /// The worker's own state: the value it was started with.
    pub fn state(&self) -> &W {
        &self.inner.state
    }

    /// Stops refreshing, waits for in-flight loads (up to the shutdown timeout), and writes the
    /// final dump. Reads from the bucket still work afterwards; misses no longer load.
    /// Every call returns once that is done: a second call, or one made at the same time,
    /// waits for the first; if the first was dropped part-way, the next one finishes it.
    ///
    /// # Errors
    ///
    /// [`Error::DumpWrite`] if the final dump could not be written (every call says so): the
    /// previous dump file is left as it was, so the changes since it are not on disk.
    pub async fn shutdown(&self) -> Result<(), Error> {
        let inner = &self.inner;
        let failure = inner.shut_down.get_or_init(|| shut_down(inner)).await;
        match failure {
            Some(failure) => Err(failure.error()),
            None => Ok(()),
        }
    }
}

/// Stops the background work, waits for loads (up to the shutdown timeout) and writes the
/// final dump. Run to the end once, by the first `shutdown` that is not dropped part-way.
async fn shut_down<W: CacheWorker>(inner: &Arc<Inner<W>>) -> Option<DumpFailure> {
    inner.running.store(false, Ordering::Release);
    let bucket = inner.bucket_name();
    tracing::info!(bucket, "shutting down");
    inner.cancel.cancel();
    let deadline = tokio::time::Instant::now() + inner.settings.shutdown_timeout;
    inner.loads.close();
    if tokio::time::timeout_at(deadline, inner.loads.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            bucket,
            timeout = ?inner.settings.shutdown_timeout,
            "loads still running at the shutdown timeout; writing the final dump without them"
        );
    }
    let mut tasks = inner.background.lock().await;
    while let Some(task) = tasks.last_mut() {
        // Popped only once joined or given up on: a shutdown dropped here leaves it to the next.
        let _ = tokio::time::timeout_at(deadline, task).await;
        tasks.pop();
    }
    drop(tasks);
    // Logged and counted inside; the previous dump stays.
    let failure = dump::write(inner)
        .await
        .err()
        .and_then(|e| DumpFailure::of(&e));
    inner.dump_file_lock.lock().take();
    // Logged and counted inside. The store is written after the dump: a store shared with
    // other nodes hears of this one's last changes once they are safe on disk too.
    let _ = persist::write(inner).await;
    // After the final dump and store write, which the publisher (joined above) did not see.
    #[cfg(feature = "metrics")]
    crate::metrics::publish(inner);
    crate::versions::log::ended(inner.current_version());
    inner.closed.cancel();
    tracing::info!(bucket, final_dump_failed = failure.is_some(), "shut down");
    failure
}

/// Configures and starts a [`Worker`]. Settings cascade, lowest first: defaults < the
/// `#[cache_worker]` attribute (through `T::builder` and `T::start`) < environment variables
/// `CACHE_WORKER_<BUCKET>_<SETTING>` < the builder's methods. A variable for a setting the
/// builder's methods set is not read.
///
/// | setting | default | environment |
/// |---|---|---|
/// | [`bucket`](Builder::bucket) | the type's name, lowercased (the attribute requires one) | — |
/// | [`file`](Builder::file) | none (memory only) | `.._FILE` (`off` for none) |
/// | [`refresh`](Builder::refresh) | 15 min | `.._REFRESH` (`off` or `0` disables) |
/// | [`load_timeout`](Builder::load_timeout) | 30 s | `.._LOAD_TIMEOUT` |
/// | [`concurrency`](Builder::concurrency) | 16 | `.._CONCURRENCY` |
/// | [`schema`](Builder::schema) | 0 | `.._SCHEMA` |
/// | [`dump_interval`](Builder::dump_interval) | 5 s | `.._DUMP_INTERVAL` |
/// | [`cache_enabled`](Builder::cache_enabled) | true | `.._CACHE_ENABLED` |
/// | [`shutdown_timeout`](Builder::shutdown_timeout) | 10 s | `.._SHUTDOWN_TIMEOUT` |
/// | [`event_capacity`](Builder::event_capacity) | 1024 | `.._EVENT_CAPACITY` |
/// | [`retry_backoff`](Builder::retry_backoff) | 1 s doubling to 5 min | `.._RETRY_MIN`, `.._RETRY_MAX` |
/// | [`delta_threshold`](Builder::delta_threshold) | 10 000 changes | `.._DELTA_THRESHOLD` (0 keeps none: every client behind gets the full bucket) |
/// | [`delta_ttl`](Builder::delta_ttl) | 1 h | `.._DELTA_TTL` |
/// | [`max_entries`](Builder::max_entries) | none (no bound) | `.._MAX_ENTRIES` (`none` for no bound) |
/// | [`not_found_ttl`](Builder::not_found_ttl) | none (not remembered) | `.._NOT_FOUND_TTL` (`off` for none) |
///
/// Durations in the environment are written as `"90s"`, `"15m"`, `"1h"`, `"1h30m"`. Every
/// duration is at most [`Settings::MAX_DURATION`]; a setting out of its range, from any layer,
/// makes [`start`](Builder::start) fail with [`Error::InvalidConfig`] or
/// [`Error::InvalidSetting`] naming it.
#[must_use = "a builder does nothing until `.start().await`"]
pub struct Builder<W: CacheWorker> {
    state: W,
    /// The attribute's layer, or a ready-made worker's defaults.
    preset: Layer,
    explicit: Layer,
    store: Option<Arc<dyn DynStore<W::Key, W::Value>>>,
}

impl<W: CacheWorker> Builder<W> {
    /// The bucket's name: in logs, dump headers and environment variable names.
    pub fn bucket(mut self, name: impl Into<String>) -> Self {
        self.explicit.bucket = Some(name.into());
        self
    }

    /// Persist the bucket in this dump file: restored at start, written after changes and on
    /// shutdown.
    pub fn file(mut self, path: impl Into<PathBuf>) -> Self {
        self.explicit.file = Some(Some(path.into()));
        self
    }

    /// Persist the bucket through `store` too (see [`store`](crate::store)): the worker
    /// starts warm from it if it holds live entries (else from the dump file, if there is
    /// one), writes each batch of changes to it after its
    /// [`write_delay`](crate::store::Store::write_delay), and once more at shutdown.
    ///
    /// `store(FileStore::new(path))` is [`file(path)`](Builder::file). A store set here wins
    /// over `CACHE_WORKER_<BUCKET>_REDIS_URL`.
    pub fn store(mut self, store: impl Store<W::Key, W::Value>) -> Self {
        if let Some(file) = (&store as &dyn std::any::Any).downcast_ref::<FileStore>() {
            self.explicit.file = Some(Some(file.path().to_owned()));
        } else {
            self.store = Some(Arc::new(store));
        }
        self
    }

    /// Keep the bucket in memory only, whatever the attribute or environment say.
    pub fn no_file(mut self) -> Self {
        self.explicit.file = Some(None);
        self
    }

    /// Reload every entry this often, measured from the end of one cycle to the start of the
    /// next. `Duration::ZERO` disables periodic refresh.
    pub fn refresh(mut self, every: Duration) -> Self {
        self.explicit.refresh = Some((!every.is_zero()).then_some(every));
        self
    }

    /// How long one load may take.
    pub fn load_timeout(mut self, timeout: Duration) -> Self {
        self.explicit.load_timeout = Some(timeout);
        self
    }

    /// How many loads a refresh runs at once (from 1 to [`Settings::MAX_CONCURRENCY`]).
    pub fn concurrency(mut self, loads: usize) -> Self {
        self.explicit.concurrency = Some(loads);
        self
    }

    /// The version of the value type in dump files: bump it when the value type changes, so
    /// that an old dump is refused rather than misread.
    pub fn schema(mut self, version: u32) -> Self {
        self.explicit.schema = Some(version);
        self
    }

    /// At most one dump per this interval after writes.
    pub fn dump_interval(mut self, interval: Duration) -> Self {
        self.explicit.dump_interval = Some(interval);
        self
    }

    /// `false` bypasses the bucket: every get/fetch calls the loader (concurrent calls for one
    /// key still share a load) and nothing is stored.
    pub fn cache_enabled(mut self, enabled: bool) -> Self {
        self.explicit.cache_enabled = Some(enabled);
        self
    }

    /// How long `shutdown` waits for in-flight loads.
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.explicit.shutdown_timeout = Some(timeout);
        self
    }

    /// How many events a subscriber may fall behind before it gets `Event::Lagged`: exactly
    /// this many (from 1 to [`Settings::MAX_EVENT_CAPACITY`]).
    pub fn event_capacity(mut self, events: usize) -> Self {
        self.explicit.event_capacity = Some(events);
        self
    }

    /// How many changes the version log keeps for [`Worker::changes_since`] (default
    /// [`Settings::DEFAULT_DELTA_THRESHOLD`], at most [`Settings::MAX_DELTA_THRESHOLD`]): a
    /// client further behind gets the full bucket. 0 keeps none. The log holds each change's
    /// key and two `Arc`s of values, never a copy of the bucket.
    pub fn delta_threshold(mut self, changes: usize) -> Self {
        self.explicit.delta_threshold = Some(changes);
        self
    }

    /// How long the version log keeps a change (default [`Settings::DEFAULT_DELTA_TTL`]): a
    /// client that missed a change older than that (the first change after its version)
    /// gets the full bucket; a client with no change to miss gets `NoChange`, however old.
    pub fn delta_ttl(mut self, age: Duration) -> Self {
        self.explicit.delta_ttl = Some(age);
        self
    }

    /// The most entries the bucket holds (default: no bound; from 1 to
    /// [`Settings::MAX_ENTRIES`]). A write that takes it over evicts the entry least worth
    /// keeping by S3-FIFO: a key read since it came in stays before one that was not, and a
    /// flood of keys read once passes through a small queue (a tenth of the bound) without
    /// displacing the keys that are read. An evicted entry is a change like any other:
    /// versioned, logged, written to the dump and the store, and sent as
    /// [`Event::Removed`](crate::Event::Removed) with [`RemovalCause::Evicted`](crate::RemovalCause::Evicted);
    /// [`Stats::evicted`](crate::Stats::evicted) counts them. Keys remembered as not found
    /// ([`not_found_ttl`](Self::not_found_ttl)) count against the bound too, up to a tenth of
    /// it.
    ///
    /// On a shared bucket (feature `redis`) the leader evicts and its followers follow. A
    /// bulk loader (`load_all`) that returns more than the bound fills the bucket and the
    /// excess is evicted at once.
    pub fn max_entries(mut self, entries: usize) -> Self {
        self.explicit.max_entries = Some(Some(entries));
        self
    }

    /// How long a key the loader said does not exist (`Ok(None)` on a miss) is remembered as
    /// such (default: not at all): reads of it within that time answer "not found"
    /// ([`FetchError::NotFound`](crate::FetchError::NotFound), `None` from `get`) without calling the loader, so a flood of
    /// reads of a missing id reaches upstream once per key and period. Counted by
    /// [`Stats::not_found_hits`](crate::Stats::not_found_hits). A remembered key is forgotten
    /// when its time is up, when it gets a value (`insert`, a load, a refresh), or on
    /// `invalidate`; it is not an entry (no event, no version, not in dumps or stores). With
    /// [`max_entries`](Self::max_entries), at most a tenth of the bound is remembered (the
    /// oldest are forgotten first); without, as many as are within their time.
    pub fn not_found_ttl(mut self, ttl: Duration) -> Self {
        self.explicit.not_found_ttl = Some(Some(ttl));
        self
    }

    /// The first and the longest delay between retries of a failed reload.
    pub fn retry_backoff(mut self, first: Duration, max: Duration) -> Self {
        self.explicit.retry_min = Some(first);
        self.explicit.retry_max = Some(max);
        self
    }

    #[doc(hidden)]
    pub fn attributes(mut self, attributes: &'static Attributes) -> Self {
        self.preset = attributes.layer();
        self
    }

    /// The preset layer, for the ready-made workers' defaults (overridable by the environment).
    #[cfg_attr(not(feature = "vista"), allow(dead_code))]
    pub(crate) fn preset(mut self, apply: impl FnOnce(&mut Layer)) -> Self {
        apply(&mut self.preset);
        self
    }

    /// The settings after the cascade, reading the process environment.
    fn settings(&self) -> Result<Settings, Error> {
        let bucket = self
            .explicit
            .bucket
            .clone()
            .or_else(|| self.preset.bucket.clone())
            .unwrap_or_else(default_bucket::<W>);
        let mut settings = Settings::defaults(bucket);
        self.preset.apply(&mut settings);
        Layer::from_env(&settings.bucket, &self.explicit, |name| {
            std::env::var(name).ok()
        })?
        .apply(&mut settings);
        self.explicit.apply(&mut settings);
        if !settings.cache_enabled && settings.file.is_some() {
            // Nothing is stored, so a dump would only be an empty one that makes the next
            // start with the cache on count as warm and skip its seed.
            tracing::info!(
                bucket = settings.bucket,
                "cache disabled: the dump file is not used"
            );
            settings.file = None;
        }
        settings.validate()?;
        Ok(settings)
    }

    /// Starts the worker: takes the dump file's lock (creating its folder), restores the dump
    /// (a warm start) or seeds a cold one, starts the refresher and the dump writer, and
    /// returns. The bucket then holds the dump's entries or the seed; the first refresh cycle
    /// (a bulk worker's first `load_all`) runs in the background: await
    /// [`Worker::ready`] to wait for it.
    ///
    /// # Errors
    ///
    /// A setting out of range ([`Error::InvalidConfig`], [`Error::InvalidSetting`]), a dump
    /// file another running worker uses ([`Error::DumpInUse`]) or whose folder cannot be
    /// created ([`Error::DumpFile`]), or a seed that aborts ([`Error::SeedAborted`]).
    pub async fn start(self) -> Result<Worker<W>, Error> {
        let settings = self.settings()?;
        let store = match self.store {
            Some(store) => Some(store),
            None => store_from_env::<W>(&settings.bucket).await?,
        };
        let inner = Arc::new(Inner::new(self.state, settings, store));
        dump::prepare(&inner)?;
        let start = match persist::restore(&inner).await {
            Some(warm) => warm,
            None => dump::restore(&inner).await,
        };
        match &start {
            StartKind::Warm { restored, .. } => {
                inner
                    .stats
                    .restored
                    .store(*restored as u64, Ordering::Relaxed);
                // A dump of a larger bound, or of none: the excess goes before anyone reads.
                inner.enforce_bound();
            }
            StartKind::Cold(_) if inner.settings.cache_enabled => seed(&inner).await?,
            StartKind::Cold(_) => {}
        }
        inner.running.store(true, Ordering::Release);
        let supervisor = refresh::supervise(inner.clone());
        let writer = dump::spawn_writer(inner.clone());
        let pruner = crate::versions::spawn_pruner(inner.clone());
        let store_writer = persist::spawn_writer(inner.clone());
        let mut background = inner.background.lock().await;
        background.extend([supervisor, writer, pruner, store_writer]);
        #[cfg(feature = "metrics")]
        background.push(crate::metrics::spawn_publisher(inner.clone()));
        #[cfg(feature = "redis")]
        if let Some(shared) = inner.store.as_ref().and_then(|p| p.store.shared()) {
            background.extend(crate::redis::spawn(inner.clone(), shared));
        }
        drop(background);
        tracing::info!(
            bucket = inner.bucket_name(),
            entries = inner.bucket.len(),
            warm = start.is_warm(),
            "started"
        );
        let _ = inner.start.set(start);
        let alive = Arc::new(Alive {
            cancel: inner.cancel.clone(),
            dump_file_lock: inner.dump_file_lock.clone(),
            version: inner.log.taken_handle(),
        });
        Ok(Worker {
            inner,
            _alive: alive,
        })
    }
}

/// The store `CACHE_WORKER_<BUCKET>_REDIS_URL` names, if it is set.
async fn store_from_env<W: CacheWorker>(
    bucket: &str,
) -> Result<Option<Arc<dyn DynStore<W::Key, W::Value>>>, Error> {
    let variable = Settings::env_var(bucket, "REDIS_URL");
    let Ok(url) = std::env::var(&variable) else {
        return Ok(None);
    };
    #[cfg(feature = "redis")]
    {
        let store =
            crate::redis::RedisStore::connect(&url)
                .await
                .map_err(|e| Error::InvalidSetting {
                    variable: variable.clone(),
                    value: crate::redis::redact(&url),
                    reason: e.to_string(),
                })?;
        Ok(Some(Arc::new(store)))
    }
    #[cfg(not(feature = "redis"))]
    {
        Err(Error::InvalidSetting {
            variable,
            value: if url.contains('@') {
                "(a URL with credentials, not shown)".to_owned()
            } else {
                url
            },
            reason: "cache-worker was built without its `redis` feature".to_owned(),
        })
    }
}

fn default_bucket<W>() -> String {
    let name = std::any::type_name::<W>();
    let name = name.split('<').next().unwrap_or(name);
    name.rsplit("::")
        .next()
        .unwrap_or(name)
        .to_ascii_lowercase()
}

/// Runs the worker's `seed` on a cold start, isolated like a load.
async fn seed<W: CacheWorker>(inner: &Arc<Inner<W>>) -> Result<(), Error> {
    let bucket = inner.bucket_name();
    let timeout = inner.settings.load_timeout;
    let seeded =
        tokio::time::timeout(timeout, AssertUnwindSafe(inner.state.seed()).catch_unwind()).await;
    match seeded {
        Ok(Ok(Ok(entries))) => {
            if !entries.is_empty() {
                tracing::info!(bucket, entries = entries.len(), "seeded a cold start");
            }
            for (key, value) in entries {
                inner.store(key, Arc::new(value), Source::Insert);
            }
            Ok(())
        }
        Ok(Ok(Err(SeedError::Skip(error)))) => {
            tracing::warn!(bucket, error = %error, "seeding failed; starting empty");
            Ok(())
        }
        Ok(Ok(Err(SeedError::Abort(error)))) => {
            tracing::error!(bucket, error = %error, "seeding aborted the start");
            Err(Error::SeedAborted {
                bucket: bucket.to_owned(),
                source: Box::new(error),
            })
        }
        Ok(Err(payload)) => {
            let message = crate::error::panic_message(&*payload);
            tracing::error!(bucket, panic = %message, "seeding panicked; starting empty");
            Ok(())
        }
        Err(_) => {
            tracing::warn!(bucket, ?timeout, "seeding timed out; starting empty");
            Ok(())
        }
    }
}
