//! The state one worker instance shares between its handles and its background tasks, and the
//! one place where the bucket changes: every write goes through here so that events, stats,
//! dumps and schedules follow every change the same way.

use std::cell::Cell;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use futures_util::future::{BoxFuture, Shared};
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::bound::absent::Absent;
use crate::bucket::{Bucket, Change, Entry, Hasher, NEVER, Record};
use crate::clock::{Clock, add_ms};
use crate::config::Settings;
use crate::events::{Event, EventStream, Events, RemovalCause};
use crate::refresh::Command;
use crate::stats::Counters;
use crate::store::DynStore;
use crate::store::persist::{self, Persisting};
#[cfg(feature = "redis")]
use crate::versions::log::Displaced;
use crate::versions::log::{ChangeLog, Record as LogRecord, VersionLog};
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
    /// The version log. A write takes its change's version and queues it while it still holds
    /// its key's lock (see [`Recorder`]); whoever locks the log next moves the queued changes
    /// in and sends their events, in version order (see [`log`](Self::log)): so versions, the
    /// log and the events follow one order, which is that of each key's writes. Whoever holds
    /// its lock takes no lock of the bucket.
    pub(crate) log: VersionLog<Key<W>, Value<W>>,
    /// Orders an invalidate against a load that found its key absent (`not_found_ttl`): the
    /// key is remembered as absent before the invalidate or not at all.
    absent_order: parking_lot::Mutex<()>,
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
            log: VersionLog::new(log),
            absent_order: parking_lot::Mutex::new(()),
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

    /// Records the writes made at `at` (ms) from `source`: what a write of the bucket reports
    /// to while it holds its key's lock.
    pub(crate) fn recorder(&self, at: u64, source: Source) -> Recorder<'_, W> {
        Recorder {
            inner: self,
            at,
            source,
            last: Cell::new(None),
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
        let schedule = self.timed(&key, &value).then(|| key.clone());
        let change = self.bucket.store(key, entry, &self.recorder(at, source));
        if matches!(change, Change::Inserted) {
            self.evict_over_bound(at);
        }
        if let Some(key) = schedule {
            self.schedule(key);
        }
    }

    /// Stores a value loaded on a miss, unless the key got a value or was invalidated while it
    /// loaded (`stale`): that write is newer.
    pub(crate) fn store_loaded(&self, key: Key<W>, value: Arc<Value<W>>, stale: &AtomicBool) {
        #[cfg(feature = "redis")]
        if let Some(link) = self.follower() {
            if !stale.load(Ordering::SeqCst) {
                link.forward(crate::store::shared::Forward::Loaded { key, value });
            }
            return;
        }
        let entry = self.entry_now(&key, value.clone());
        let at = entry.loaded_at;
        let schedule = self.timed(&key, &value).then(|| key.clone());
        let recorder = self.recorder(at, Source::Load);
        let Some(change) = self.bucket.store_vacant(key, entry, stale, &recorder) else {
            return;
        };
        if matches!(change, Change::Inserted) {
            self.evict_over_bound(at);
        }
        if let Some(key) = schedule {
            self.schedule(key);
        }
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
        let recorder = self.recorder(at, Source::Refresh);
        let change = self.bucket.store_existing(&key, entry, basis, &recorder)?;
        if self.timed(&key, &value) {
            self.schedule(key);
        }
        Some(!matches!(change, Change::Unchanged))
    }

    /// Removes a key a reload found gone upstream, unless it was written meanwhile.
    pub(crate) fn remove_reloaded(&self, key: &Key<W>, basis: u64) -> bool {
        let now = self.clock.now_ms();
        let recorder = self.recorder(now, Source::Refresh);
        self.bucket
            .remove_same(key, basis, now, &recorder)
            .is_some()
    }

    /// Removes the key if its expiry is at or before `now`.
    pub(crate) fn remove_expired(&self, key: &Key<W>, now: u64) -> bool {
        let recorder = self.recorder(now, Source::Refresh);
        self.bucket.remove_expired(key, now, &recorder).is_some()
    }

    /// Counts and traces a change of `key`, and forgets the key as absent if it is in the
    /// bucket now: what a change costs before the log. Called with the key's lock held; the
    /// dump and the store are marked dirty once the change has its version.
    pub(crate) fn count_stored(&self, key: &Key<W>, change: &Change<Value<W>>, source: Source) {
        let bucket = self.bucket_name();
        match change {
            Change::Unchanged => {
                self.stats.unchanged.incr();
                tracing::debug!(bucket, key = ?key, ?source, "{bucket}.unchanged");
            }
            Change::Updated { .. } => {
                self.stats.updated.incr();
                tracing::debug!(bucket, key = ?key, ?source, "{bucket}.updated");
            }
            Change::Inserted | Change::AfterExpiry { .. } => {
                if let Change::AfterExpiry { .. } = change {
                    self.count_removed(key, RemovalCause::Expired);
                }
                self.stats.inserted.incr();
                if let Some(absent) = &self.absent {
                    absent.forget(key);
                }
                tracing::debug!(bucket, key = ?key, ?source, "{bucket}.inserted");
            }
        }
    }

    /// Logs a change of `key` to `value` made at `at` (ms) at the log's next version, and emits
    /// its event (an expiry first, for [`Change::AfterExpiry`]; nothing for
    /// [`Change::Unchanged`]): a follower's record of its leader's change, with the key's lock
    /// and the log held (see [`ChangeLog::append`]).
    #[cfg(feature = "redis")]
    pub(crate) fn log_stored(
        &self,
        log: &mut ChangeLog<Key<W>, Value<W>>,
        at: u64,
        key: &Key<W>,
        value: &Arc<Value<W>>,
        change: &Change<Value<W>>,
    ) -> [Displaced<Key<W>, Value<W>>; 2] {
        let mut expired_displaced = Displaced::none();
        let previous = match change {
            Change::Unchanged => return [Displaced::none(), Displaced::none()],
            Change::Inserted => None,
            Change::Updated { previous } => Some(previous),
            Change::AfterExpiry { expired } => {
                expired_displaced = self.log_removed(log, at, key, expired, RemovalCause::Expired);
                None
            }
        };
        let (version, displaced) = log.append(key, Some(value.clone()), previous.cloned(), at);
        self.emit(|| match previous {
            None => Event::Inserted {
                key: key.clone(),
                value: value.clone(),
                version,
            },
            Some(previous) => Event::Updated {
                key: key.clone(),
                value: value.clone(),
                previous: previous.clone(),
                version,
            },
        });
        [displaced, expired_displaced]
    }

    /// Counts and traces the removal of `key` (see [`count_stored`](Self::count_stored)).
    pub(crate) fn count_removed(&self, key: &Key<W>, cause: RemovalCause) {
        match cause {
            RemovalCause::Expired => self.stats.expired.incr(),
            RemovalCause::Evicted => self.stats.evicted.incr(),
            _ => self.stats.removed.incr(),
        }
        let bucket = self.bucket_name();
        tracing::debug!(bucket, key = ?key, ?cause, "{bucket}.removed");
    }

    /// Versions and logs the removal of `key`, which held `value`, and emits its event (see
    /// [`log_stored`](Self::log_stored)).
    #[cfg(feature = "redis")]
    pub(crate) fn log_removed(
        &self,
        log: &mut ChangeLog<Key<W>, Value<W>>,
        at: u64,
        key: &Key<W>,
        value: &Arc<Value<W>>,
        cause: RemovalCause,
    ) -> Displaced<Key<W>, Value<W>> {
        let (version, displaced) = log.append(key, None, Some(value.clone()), at);
        self.emit(|| Event::Removed {
            key: key.clone(),
            cause,
            value: value.clone(),
            version,
        });
        displaced
    }

    /// Removes the key, and detaches a load of it in flight: its waiters still get its value,
    /// but it is not stored, and the next read loads again.
    pub(crate) fn invalidate<Q>(&self, key: &Q) -> Option<Arc<Value<W>>>
    where
        Key<W>: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        let now = self.clock.now_ms();
        {
            let _absent = self.absent.as_ref().map(|_| self.absent_order.lock());
            if let Some((_, in_flight)) = self.flights.remove(key) {
                // Set before the key's lock is taken below: a load that stores after it, under
                // that lock, sees it.
                in_flight.stale.store(true, Ordering::SeqCst);
            }
            if let Some(absent) = &self.absent {
                absent.forget(key);
            }
        }
        #[cfg(feature = "redis")]
        if let Some(link) = self.follower() {
            // The leader removes it, and this copy with it when its change comes.
            let (key, entry) = self.bucket.entry_with_key(key)?;
            link.forward(crate::store::shared::Forward::Invalidate { key });
            return (!entry.expired(now)).then_some(entry.value);
        }
        let cause = |entry: &Entry<Value<W>>| {
            if entry.expired(now) {
                RemovalCause::Expired
            } else {
                RemovalCause::Invalidated
            }
        };
        let (_, entry) = self
            .bucket
            .remove(key, cause, &self.recorder(now, Source::Insert))?;
        // Gone already for readers if it had expired: what it had is not handed back.
        (!entry.expired(now)).then_some(entry.value)
    }

    /// Evicts entries while the bucket holds more than its bound (less the keys remembered as
    /// not found), each a removal with [`RemovalCause::Evicted`] (or `Expired`, for one past
    /// its expiry). Called after a write that inserted, with no lock held.
    pub(crate) fn evict_over_bound(&self, now: u64) {
        if self.bucket.bound().is_none() {
            return;
        }
        let reserve = self.absent.as_ref().map_or(0, Absent::len);
        let recorder = self.recorder(now, Source::Insert);
        while self.bucket.evict_one(reserve, now, &recorder).is_some() {}
    }

    /// Remembers a key the loader said does not exist, if `not_found_ttl` is set: it counts
    /// against the bound, which may evict.
    pub(crate) fn remember_absent(&self, key: &Key<W>, stale: &AtomicBool) {
        let Some(absent) = &self.absent else {
            return;
        };
        let now = self.clock.now_ms();
        {
            let _order = self.absent_order.lock();
            // Invalidated, or given a value, while it loaded: that is newer than what it said.
            // Under the key's lock: a write of the key is before (and found) or after (and
            // forgets it).
            self.bucket.if_vacant(key.clone(), now, |key| {
                if !stale.load(Ordering::SeqCst) {
                    absent.remember(key, now);
                }
            });
        }
        self.evict_over_bound(now);
    }

    /// Evicts down to the bound after a start restored more than it.
    pub(crate) fn enforce_bound(&self) {
        if self.bucket.bound().is_some() && self.refreshes() {
            self.evict_over_bound(self.clock.now_ms());
        }
    }

    /// Whether the entry has its own refresh interval or expiry: the refresher must know of it.
    pub(crate) fn timed(&self, key: &Key<W>, value: &Value<W>) -> bool {
        self.refresh_after(key, value).is_some() || self.expire_after(key, value).is_some()
    }

    /// Tells the refresher about an entry with its own refresh interval or expiry.
    pub(crate) fn schedule(&self, key: Key<W>) {
        // The refresher is gone only after shutdown, when schedules no longer matter.
        let _ = self.commands.send(Command::Schedule(key));
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
    /// `log` held.
    pub(crate) fn emit(&self, event: impl FnOnce() -> Event<Key<W>, Value<W>>) {
        self.events.send(event);
    }

    /// Whether this node refreshes its bucket: always, unless it follows the leader of a
    /// shared one.
    #[cfg(not(feature = "redis"))]
    pub(crate) fn refreshes(&self) -> bool {
        true
    }

    /// Marks the dump (and the store) as behind the bucket. Called with the changed key's lock
    /// held: the dump writer clears the mark before it reads the map, so a write that finds it
    /// still set is one the dump will read (and leaves the cache line unwritten).
    pub(crate) fn mark_dirty(&self) {
        if self.settings.file.is_some() && !self.dirty.load(Ordering::SeqCst) {
            self.dirty.store(true, Ordering::SeqCst);
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

/// What a write reports to while it holds its key's lock: counts the change, then takes its
/// version and queues it for the log (see [`VersionLog`]). Dropped once the write has let its
/// key's lock go, it moves what is queued into the log (see [`Inner::publish`]): so no write
/// waits for a key's lock while another moves the log on, however long that takes.
pub(crate) struct Recorder<'a, W: CacheWorker> {
    inner: &'a Inner<W>,
    /// When the change was made (ms).
    at: u64,
    source: Source,
    /// The version of the last change queued through it, and how many records its stripe
    /// held then: what to publish when it is dropped.
    last: Cell<Option<(u64, usize)>>,
}

impl<W: CacheWorker> Recorder<'_, W> {
    fn queue(
        &self,
        key: &Key<W>,
        value: Option<Arc<Value<W>>>,
        before: Option<Arc<Value<W>>>,
        cause: Option<RemovalCause>,
    ) {
        let (version, queued) = self.inner.log.queue(key, value, before, self.at, cause);
        // After the version is taken: a store's batch that finds the mark reads the log
        // after it, so it has the change.
        self.inner.mark_dirty();
        let mut queued = queued;
        if VersionLog::<Key<W>, Value<W>>::due(queued) == Some(true) {
            // A stripe this full (a bulk swap's changes) is moved in before it grows more.
            self.inner.publish(version, queued);
            queued = 0;
        }
        self.last.set(Some((version, queued)));
    }
}

impl<W: CacheWorker> Drop for Recorder<'_, W> {
    fn drop(&mut self) {
        if let Some((version, queued)) = self.last.take() {
            self.inner.publish(version, queued);
        }
    }
}

impl<W: CacheWorker> Record<Key<W>, Value<W>> for Recorder<'_, W> {
    fn stored(&self, key: &Key<W>, value: &Arc<Value<W>>, change: &Change<Value<W>>) {
        self.inner.count_stored(key, change, self.source);
        let previous = match change {
            Change::Unchanged => return,
            Change::Inserted => None,
            Change::Updated { previous } => Some(previous.clone()),
            Change::AfterExpiry { expired } => {
                let expired = Some(expired.clone());
                self.queue(key, None, expired, Some(RemovalCause::Expired));
                None
            }
        };
        self.queue(key, Some(value.clone()), previous, None);
    }

    fn removed(&self, key: &Key<W>, value: &Arc<Value<W>>, cause: RemovalCause) {
        self.inner.count_removed(key, cause);
        self.queue(key, None, Some(value.clone()), Some(cause));
    }
}

impl<W: CacheWorker> Inner<W> {
    /// The version log, once every change given a version before this call is in it and has
    /// had its event sent: what every reader of the changes takes.
    pub(crate) fn log(&self) -> parking_lot::MutexGuard<'_, ChangeLog<Key<W>, Value<W>>> {
        self.log
            .caught_up(|record, cause| self.emit_record(record, cause))
    }

    /// Moves the queued changes into the log after a write of `version` queued its own (its
    /// stripe then holding `queued`): at once while anyone listens for events, so that they
    /// get it before the write returns; otherwise in batches, whenever a stripe fills. Called
    /// once the write has let its key's lock go (by [`Recorder`]'s drop), except for a full
    /// stripe.
    fn publish(&self, version: u64, queued: usize) {
        // Read after the write queued its change: a subscriber that comes after this read
        // moves it into the log itself (see `subscribe`).
        if self.events.listening() {
            let backoff = crossbeam_utils::Backoff::new();
            while self.log.published() < version {
                match self.log.try_lock() {
                    Some(mut log) => self.absorb_unlock(&mut log),
                    None => backoff.snooze(),
                }
            }
        } else if let Some(wait) = VersionLog::<Key<W>, Value<W>>::due(queued) {
            let log = if wait {
                Some(self.log.lock())
            } else {
                self.log.try_lock()
            };
            if let Some(mut log) = log {
                self.absorb_unlock(&mut log);
            }
        }
    }

    /// Moves the queued changes into the log, then lets it go, and drops what they pushed out.
    fn absorb_unlock(&self, log: &mut parking_lot::MutexGuard<'_, ChangeLog<Key<W>, Value<W>>>) {
        let displaced = self
            .log
            .absorb(log, |record, cause| self.emit_record(record, cause));
        parking_lot::MutexGuard::unlocked(log, || drop(displaced));
    }

    /// Sends the event of a change the log takes in (none for a record without one: a
    /// follower's record of a version with nothing to change).
    fn emit_record(&self, record: &LogRecord<Key<W>, Value<W>>, cause: Option<RemovalCause>) {
        let version = record.version;
        match (&record.value, &record.before, cause) {
            (Some(value), None, _) => self.emit(|| Event::Inserted {
                key: record.key.clone(),
                value: value.clone(),
                version,
            }),
            (Some(value), Some(previous), _) => self.emit(|| Event::Updated {
                key: record.key.clone(),
                value: value.clone(),
                previous: previous.clone(),
                version,
            }),
            (None, Some(value), Some(cause)) => self.emit(|| Event::Removed {
                key: record.key.clone(),
                cause,
                value: value.clone(),
                version,
            }),
            _ => {}
        }
    }

    /// A new subscription. A change queued before it is moved into the log (its event sent to
    /// no one new) before it subscribes; one that a write queued while it subscribed, which
    /// may have found no one listening, is moved in (and sent to it) right after.
    pub(crate) fn subscribe(&self) -> EventStream<Key<W>, Value<W>> {
        drop(self.log());
        let stream = self.events.subscribe(self.closed.clone());
        drop(self.log());
        stream
    }
}
