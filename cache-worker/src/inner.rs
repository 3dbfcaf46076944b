//! The state one worker instance shares between its handles and its background tasks, and the
//! one place where the bucket changes: every write goes through here so that events, stats,
//! dumps and schedules follow every change the same way.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use futures_util::future::{BoxFuture, Shared};
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::bound::absent::Absent;
use crate::bucket::{Bucket, Change, Entry, Hasher, NEVER};
use crate::clock::{Clock, add_ms};
use crate::config::Settings;
use crate::events::{Event, Events, RemovalCause};
use crate::refresh::Command;
use crate::stats::{Counters, bump};
use crate::store::DynStore;
use crate::store::persist::{self, Persisting};
use crate::versions::log::ChangeLog;
use crate::{CacheWorker, FetchError};

pub(crate) type Key<W> = <W as CacheWorker>::Key;
pub(crate) type Value<W> = <W as CacheWorker>::Value;
pub(crate) type Flight<V> = Shared<BoxFuture<'static, Result<Arc<V>, FetchError>>>;

/// A load in flight for a miss: the future its waiters share, and a flag an invalidate sets
/// when it lands while the load runs.
pub(crate) struct InFlight<V> {
    pub(crate) flight: Flight<V>,
    /// Set by an invalidate of the key: the load may have read upstream before the change
    /// the invalidate announces, so its value is handed to its waiters but not stored.
    pub(crate) stale: Arc<AtomicBool>,
}

pub(crate) struct Inner<W: CacheWorker> {
    pub(crate) state: W,
    pub(crate) settings: Settings,
    pub(crate) bucket: Bucket<Key<W>, Value<W>>,
    /// Keys the loader said do not exist, while `not_found_ttl` remembers them.
    pub(crate) absent: Option<Absent<Key<W>>>,
    /// Loads in flight, one per key: later misses of the key wait on the same one.
    pub(crate) flights: DashMap<Key<W>, InFlight<Value<W>>, Hasher>,
    pub(crate) stats: Counters,
    pub(crate) events: Events<Key<W>, Value<W>>,
    pub(crate) clock: Clock,
    pub(crate) commands: mpsc::UnboundedSender<Command<Key<W>>>,
    pub(crate) command_rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<Command<Key<W>>>>,
    /// Bounds the loads that refreshes run at once.
    pub(crate) limiter: Semaphore,
    /// False before start and after shutdown: misses cannot load.
    pub(crate) running: AtomicBool,
    /// Stops the refresher and the dump writer.
    pub(crate) cancel: CancellationToken,
    /// The spawned loads, so that shutdown can wait for them.
    pub(crate) loads: TaskTracker,
    /// The version log, and the write order: held from a change to the bucket until it is
    /// versioned, logged and its event sent, so that versions, the log and the events follow
    /// the order the changes were made in.
    pub(crate) write_order: parking_lot::Mutex<ChangeLog<Key<W>, Value<W>>>,
    /// The current version, readable without `write_order`.
    pub(crate) version: Arc<AtomicU64>,
    /// Set by every change, cleared by the dump writer.
    pub(crate) dirty: AtomicBool,
    pub(crate) dump_wanted: Notify,
    /// One dump write at a time.
    pub(crate) dump_lock: tokio::sync::Mutex<()>,
    /// Set once a shutdown has finished, final dump included; later callers wait for it.
    /// Holds the final dump's failure, if it failed, for every caller of `shutdown`.
    pub(crate) shut_down: tokio::sync::OnceCell<Option<crate::error::DumpFailure>>,
    /// Cancelled once a shutdown has finished: subscribers' streams end.
    pub(crate) closed: CancellationToken,
    /// The refresher's supervisor and the dump writer, joined on shutdown. An async lock, held
    /// while they are joined, so that a shutdown dropped part-way leaves the rest to the next.
    pub(crate) background: tokio::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// How the start went; set once it has.
    pub(crate) start: std::sync::OnceLock<crate::StartKind>,
    /// The report of the first refresh cycle after the start, once it has finished.
    pub(crate) first_cycle: tokio::sync::watch::Sender<Option<crate::RefreshReport>>,
    /// The advisory lock on the dump file (`<file>.lock`), held while a user handle lives and
    /// until the final dump is written; the OS drops it if the process dies.
    pub(crate) dump_file_lock: Arc<parking_lot::Mutex<Option<std::fs::File>>>,
    /// The bucket's [`Store`](crate::store::Store), if it has one besides its dump file.
    pub(crate) store: Option<Persisting<Key<W>, Value<W>>>,
    /// The link to the other nodes of a shared bucket (feature `redis`).
    #[cfg(feature = "redis")]
    pub(crate) cluster: Option<crate::store::shared::Link<Key<W>, Value<W>>>,
}

/// Where a write came from, for tracing.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Source {
    Load,
    Refresh,
    Insert,
    /// A change another node made to a shared bucket.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    Remote,
}

impl<W: CacheWorker> Inner<W> {
    pub(crate) fn new(
        state: W,
        settings: Settings,
        store: Option<Arc<dyn DynStore<Key<W>, Value<W>>>>,
    ) -> Self {
        let (commands, command_rx) = mpsc::unbounded_channel();
        let clock = Clock::new();
        let log = ChangeLog::new(settings.delta_threshold, settings.delta_ttl);
        Inner {
            state,
            bucket: Bucket::new(clock, settings.max_entries),
            absent: settings
                .not_found_ttl
                .filter(|_| settings.cache_enabled)
                .map(|ttl| {
                    let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
                    // Their share of a bound: a tenth of it.
                    Absent::new(ttl_ms, settings.max_entries.map(|max| (max / 10).max(1)))
                }),
            flights: DashMap::with_hasher(Hasher::default()),
            stats: Counters::default(),
            events: Events::new(settings.event_capacity),
            clock,
            commands,
            command_rx: tokio::sync::Mutex::new(command_rx),
            limiter: Semaphore::new(settings.concurrency),
            running: AtomicBool::new(false),
            cancel: CancellationToken::new(),
            loads: TaskTracker::new(),
            version: log.published(),
            write_order: parking_lot::Mutex::new(log),
            dirty: AtomicBool::new(false),
            dump_wanted: Notify::new(),
            dump_lock: tokio::sync::Mutex::new(()),
            shut_down: tokio::sync::OnceCell::new(),
            closed: CancellationToken::new(),
            background: tokio::sync::Mutex::new(Vec::new()),
            start: std::sync::OnceLock::new(),
            first_cycle: tokio::sync::watch::Sender::new(None),
            dump_file_lock: Arc::default(),
            #[cfg(feature = "redis")]
            cluster: store
                .as_ref()
                .and_then(|s| s.shared())
                .map(|_| crate::store::shared::Link::new()),
            store: persist::persisting::<W>(store, &settings),
            settings,
        }
    }

    pub(crate) fn bucket_name(&self) -> &str {
        &self.settings.bucket
    }

    pub(crate) fn is_running(&self) -> bool {
        self.running.load(Ordering::Acquire)
    }

    /// A new entry for `value` loaded now, with its expiry from the worker.
    pub(crate) fn entry_now(&self, key: &Key<W>, value: Arc<Value<W>>) -> Entry<Value<W>> {
        let now = self.clock.now_ms();
        let expires_at = self
            .expire_after(key, &value)
            .map_or(NEVER, |d| add_ms(now, d));
        Entry {
            value,
            loaded_at: now,
            expires_at,
            stamp: 0,
            meta: crate::bound::Meta::new(),
        }
    }

    /// Stores a value (inserting the key if needed) and reports the change.
    pub(crate) fn store(&self, key: Key<W>, value: Arc<Value<W>>, source: Source) {
        #[cfg(feature = "redis")]
        if let Some(link) = self.follower() {
            link.forward(crate::store::shared::Forward::Put { key, value });
            return;
        }
        let entry = self.entry_now(&key, value.clone());
        let at = entry.loaded_at;
        let mut order = self.write_order.lock();
        let change = self.bucket.store(key.clone(), entry);
        let inserted = matches!(change, Change::Inserted);
        self.after_change(&mut order, at, key.clone(), value.clone(), change, source);
        if inserted {
            self.evict_over_bound(&mut order, at);
        }
        drop(order);
        self.schedule(&key, &value);
    }

    /// Stores a value loaded on a miss, unless the key got a value or was invalidated while it
    /// loaded (`stale`): that write is newer.
    pub(crate) fn store_loaded(&self, key: Key<W>, value: Arc<Value<W>>, stale: &AtomicBool) {
        #[cfg(feature = "redis")]
        if let Some(link) = self.follower() {
            if !stale.load(Ordering::Relaxed) {
                link.forward(crate::store::shared::Forward::Loaded { key, value });
            }
            return;
        }
        let entry = self.entry_now(&key, value.clone());
        let at = entry.loaded_at;
        let mut order = self.write_order.lock();
        if stale.load(Ordering::Relaxed) {
            return;
        }
        let Some(change) = self.bucket.store_vacant(key.clone(), entry) else {
            return;
        };
        let inserted = matches!(change, Change::Inserted);
        self.after_change(
            &mut order,
            at,
            key.clone(),
            value.clone(),
            change,
            Source::Load,
        );
        if inserted {
            self.evict_over_bound(&mut order, at);
        }
        drop(order);
        self.schedule(&key, &value);
    }

    /// Stores a reloaded value only if the key still holds the entry of write `basis`, the one
    /// the reload started from; `None` if it was removed, expired or written meanwhile.
    pub(crate) fn store_reloaded(
        &self,
        key: Key<W>,
        value: Arc<Value<W>>,
        basis: u64,
    ) -> Option<bool> {
        let entry = self.entry_now(&key, value.clone());
        let at = entry.loaded_at;
        let mut order = self.write_order.lock();
        let change = self.bucket.store_existing(&key, entry, basis)?;
        let changed = !matches!(change, Change::Unchanged);
        self.after_change(
            &mut order,
            at,
            key.clone(),
            value.clone(),
            change,
            Source::Refresh,
        );
        drop(order);
        self.schedule(&key, &value);
        Some(changed)
    }

    /// Removes a key a reload found gone upstream, unless it was written meanwhile.
    pub(crate) fn remove_reloaded(&self, key: &Key<W>, basis: u64) -> bool {
        let now = self.clock.now_ms();
        let mut order = self.write_order.lock();
        let Some((key, entry)) = self.bucket.remove_same(key, basis, now) else {
            return false;
        };
        self.after_remove(&mut order, now, key, entry.value, RemovalCause::Gone);
        true
    }

    /// Removes the key if its expiry is at or before `now`.
    pub(crate) fn remove_expired(&self, key: &Key<W>, now: u64) -> bool {
        let mut order = self.write_order.lock();
        let Some(entry) = self.bucket.remove_expired(key, now) else {
            return false;
        };
        self.after_remove(
            &mut order,
            now,
            key.clone(),
            entry.value,
            RemovalCause::Expired,
        );
        true
    }

    /// Counts, traces, marks the dump dirty, versions and logs one change (made at `at`, ms)
    /// and emits its event. Called with `write_order` held (`log` is what it guards); the
    /// caller then calls [`schedule`](Self::schedule) without it.
    pub(crate) fn after_change(
        &self,
        log: &mut ChangeLog<Key<W>, Value<W>>,
        at: u64,
        key: Key<W>,
        value: Arc<Value<W>>,
        change: Change<Value<W>>,
        source: Source,
    ) {
        let bucket = self.bucket_name();
        match change {
            Change::Unchanged => {
                bump(&self.stats.unchanged);
                tracing::debug!(bucket, key = ?key, ?source, "{bucket}.unchanged");
            }
            Change::Inserted => {
                bump(&self.stats.inserted);
                if let Some(absent) = &self.absent {
                    absent.forget(&key);
                }
                tracing::debug!(bucket, key = ?key, ?source, "{bucket}.inserted");
                self.mark_dirty();
                let version = log.append(&key, Some(value.clone()), None, at);
                self.emit(|| Event::Inserted {
                    key,
                    value,
                    version,
                });
            }
            Change::Updated { previous } => {
                bump(&self.stats.updated);
                tracing::debug!(bucket, key = ?key, ?source, "{bucket}.updated");
                self.mark_dirty();
                let version = log.append(&key, Some(value.clone()), Some(previous.clone()), at);
                self.emit(|| Event::Updated {
                    key,
                    value,
                    previous,
                    version,
                });
            }
            Change::AfterExpiry { expired } => {
                self.after_remove(log, at, key.clone(), expired, RemovalCause::Expired);
                self.after_change(log, at, key, value, Change::Inserted, source);
            }
        }
    }

    /// Reports, versions and logs the removal of an entry (see [`after_change`](Self::after_change)).
    pub(crate) fn after_remove(
        &self,
        log: &mut ChangeLog<Key<W>, Value<W>>,
        at: u64,
        key: Key<W>,
        value: Arc<Value<W>>,
        cause: RemovalCause,
    ) {
        match cause {
            RemovalCause::Expired => bump(&self.stats.expired),
            RemovalCause::Evicted => bump(&self.stats.evicted),
            _ => bump(&self.stats.removed),
        }
        let bucket = self.bucket_name();
        tracing::debug!(bucket, key = ?key, ?cause, "{bucket}.removed");
        self.mark_dirty();
        let version = log.append(&key, None, Some(value.clone()), at);
        self.emit(|| Event::Removed {
            key,
            cause,
            value,
            version,
        });
    }

    /// Removes the key, and detaches a load of it in flight: its waiters still get its value,
    /// but it is not stored, and the next read loads again.
    pub(crate) fn invalidate<Q>(&self, key: &Q) -> Option<Arc<Value<W>>>
    where
        Key<W>: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        let now = self.clock.now_ms();
        let mut order = self.write_order.lock();
        if let Some((_, in_flight)) = self.flights.remove(key) {
            // Read under `write_order` by the load before it stores.
            in_flight.stale.store(true, Ordering::Relaxed);
        }
        if let Some(absent) = &self.absent {
            absent.forget(key);
        }
        #[cfg(feature = "redis")]
        if let Some(link) = self.follower() {
            // The leader removes it, and this copy with it when its change comes.
            let (key, entry) = self.bucket.entry_with_key(key)?;
            link.forward(crate::store::shared::Forward::Invalidate { key });
            return (!entry.expired(now)).then_some(entry.value);
        }
        let (key, entry) = self.bucket.remove(key)?;
        if entry.expired(now) {
            // Gone already for readers: what it had is not handed back.
            self.after_remove(&mut order, now, key, entry.value, RemovalCause::Expired);
            return None;
        }
        self.after_remove(
            &mut order,
            now,
            key,
            entry.value.clone(),
            RemovalCause::Invalidated,
        );
        Some(entry.value)
    }

    /// Evicts entries while the bucket holds more than its bound (less the keys remembered as
    /// not found), each a removal with [`RemovalCause::Evicted`] (or `Expired`, for one past
    /// its expiry). Called with `write_order` held (`log`) after a write that inserted.
    pub(crate) fn evict_over_bound(&self, log: &mut ChangeLog<Key<W>, Value<W>>, now: u64) {
        if self.bucket.bound().is_none() {
            return;
        }
        let reserve = self.absent.as_ref().map_or(0, Absent::len);
        while let Some((key, entry)) = self.bucket.evict_one(reserve, now) {
            let cause = if entry.expired(now) {
                RemovalCause::Expired
            } else {
                RemovalCause::Evicted
            };
            self.after_remove(log, now, key, entry.value, cause);
        }
    }

    /// Remembers a key the loader said does not exist, if `not_found_ttl` is set: it counts
    /// against the bound, which may evict.
    pub(crate) fn remember_absent(&self, key: &Key<W>, stale: &AtomicBool) {
        let Some(absent) = &self.absent else {
            return;
        };
        let now = self.clock.now_ms();
        let mut order = self.write_order.lock();
        // Invalidated, or given a value, while it loaded: that is newer than what it said.
        if stale.load(Ordering::Relaxed) || self.bucket.stamp_of(key).is_some() {
            return;
        }
        absent.remember(key.clone(), now);
        self.evict_over_bound(&mut order, now);
    }

    /// Evicts down to the bound after a start restored more than it.
    pub(crate) fn enforce_bound(&self) {
        if self.bucket.bound().is_some() && self.refreshes() {
            let now = self.clock.now_ms();
            let mut order = self.write_order.lock();
            self.evict_over_bound(&mut order, now);
        }
    }

    /// Tells the refresher about an entry with its own refresh interval or expiry.
    pub(crate) fn schedule(&self, key: &Key<W>, value: &Value<W>) {
        let timed =
            self.refresh_after(key, value).is_some() || self.expire_after(key, value).is_some();
        if timed {
            // The refresher is gone only after shutdown, when schedules no longer matter.
            let _ = self.commands.send(Command::Schedule(key.clone()));
        }
    }

    /// The worker's `refresh_after` hook; a panic in it is logged and means "no own interval".
    pub(crate) fn refresh_after(&self, key: &Key<W>, value: &Value<W>) -> Option<Duration> {
        self.hook("refresh_after", key, || {
            self.state.refresh_after(key, value)
        })
    }

    /// The worker's `expire_after` hook; a panic in it is logged and means "never expires".
    pub(crate) fn expire_after(&self, key: &Key<W>, value: &Value<W>) -> Option<Duration> {
        self.hook("expire_after", key, || self.state.expire_after(key, value))
    }

    fn hook(
        &self,
        name: &'static str,
        key: &Key<W>,
        call: impl FnOnce() -> Option<Duration>,
    ) -> Option<Duration> {
        std::panic::catch_unwind(AssertUnwindSafe(call)).unwrap_or_else(|payload| {
            let message = crate::error::panic_message(&*payload);
            tracing::error!(bucket = self.bucket_name(), key = ?key, panic = %message, "{name} panicked; ignored");
            None
        })
    }

    /// Sends an event if anyone listens; building it costs nothing otherwise. Called with
    /// `write_order` held.
    pub(crate) fn emit(&self, event: impl FnOnce() -> Event<Key<W>, Value<W>>) {
        self.events.send(event);
    }

    /// Whether this node refreshes its bucket: always, unless it follows the leader of a
    /// shared one.
    #[cfg(not(feature = "redis"))]
    pub(crate) fn refreshes(&self) -> bool {
        true
    }

    pub(crate) fn mark_dirty(&self) {
        if self.settings.file.is_some() {
            self.dirty.store(true, Ordering::Release);
            self.dump_wanted.notify_one();
        }
        if let Some(store) = &self.store {
            // A follower never writes its shared store: its copy is the store's.
            #[cfg(feature = "redis")]
            if self.follower().is_some() {
                return;
            }
            store.mark_dirty();
        }
    }
}
