//! The background refresher: full cycles on the worker's interval, per-entry reloads and
//! expiry on one timer queue, retries with backoff, all under a supervisor that restarts it if
//! it crashes. The refresher keeps no data of its own: its timers are rebuilt from the bucket
//! on every (re)start, so a crash loses nothing.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::{FutureExt, stream};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::time::{DelayQueue, delay_queue};

use crate::bucket::{BulkLoad, Entry, NEVER};
use crate::clock::add_ms;
use crate::events::{Event, RemovalCause};
use crate::inner::{Inner, Key, Source, Value};
use crate::load::{isolate, load_one};
use crate::stats::bump;
use crate::{CacheWorker, bucket::Change};

/// What the handles ask of the refresher.
pub(crate) enum Command<K> {
    /// Reschedule this key's timers from its stored entry.
    Schedule(K),
    /// Run a full cycle now and report it.
    RefreshNow(oneshot::Sender<RefreshReport>),
    /// The bucket was replaced whole: rebuild every timer from it.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    Rebuild,
    /// This node leads its shared bucket now: refresh, with the next full cycle at `due`
    /// (`None`: the start's revalidation of stale entries, now).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    Lead { due: Option<Instant> },
    /// This node follows now: the leader refreshes, this one does nothing of it.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    Follow,
}

/// What one full refresh cycle did, from [`Worker::refresh_all`](crate::Worker::refresh_all).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RefreshReport {
    /// The cycle used the worker's bulk load.
    pub bulk: bool,
    /// Loads that gave a value.
    pub reloaded: usize,
    /// New keys (bulk loads only).
    pub inserted: usize,
    /// Entries whose value changed.
    pub updated: usize,
    /// Entries reloaded with an equal value.
    pub unchanged: usize,
    /// Entries removed because upstream no longer has them.
    pub removed: usize,
    /// Loads that failed; their entries keep the old value and are retried with backoff.
    pub failed: usize,
    /// Entries in the bucket after the cycle.
    pub entries: usize,
    /// How long the cycle took.
    pub duration: Duration,
}

/// Which entries a cycle reloads.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Scope {
    All,
    /// Entries older than their refresh interval: the revalidation after a warm start.
    Stale,
}

struct Cycle<K> {
    report: RefreshReport,
    /// Keys whose reload failed, to retry with backoff.
    failed: Vec<K>,
    /// The bulk load failed: retry the whole cycle with backoff.
    bulk_failed: bool,
    /// Nothing was due: no cycle is counted or announced.
    skipped: bool,
}

/// How one key's reload ended.
enum Reloaded {
    Changed,
    Unchanged,
    Gone,
    Failed,
    /// The key was removed or written while it reloaded; the result was dropped.
    Vanished,
}

/// Starts the supervisor, which runs the refresher and restarts it with backoff if it panics.
pub(crate) fn supervise<W: CacheWorker>(inner: Arc<Inner<W>>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut restarts = 0;
        loop {
            let started = Instant::now();
            // The start's first cycle runs again if the refresher crashed before it finished,
            // so that `Worker::ready` is answered.
            let startup = inner.first_cycle.borrow().is_none();
            let run = tokio::spawn(Refresher::new(inner.clone()).run(startup));
            match run.await {
                Err(e) if e.is_panic() => {
                    bump(&inner.stats.refresher_restarts);
                    if started.elapsed() > inner.settings.retry_max {
                        restarts = 0;
                    }
                    restarts += 1;
                    let delay = inner.settings.retry_delay(restarts);
                    let message = crate::error::panic_message(&*e.into_panic());
                    tracing::error!(
                        bucket = inner.bucket_name(),
                        panic = %message,
                        ?delay,
                        "refresher panicked; restarting it (the bucket is untouched)"
                    );
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = inner.cancel.cancelled() => return,
                    }
                }
                _ => return,
            }
        }
    })
}

struct Refresher<W: CacheWorker> {
    inner: Arc<Inner<W>>,
    refresh: Timers<Key<W>>,
    expiry: Timers<Key<W>>,
    /// Failed reloads in a row, per key.
    attempts: HashMap<Key<W>, u32>,
    bulk_attempts: u32,
    /// Whether this node refreshes: alone, or leading its shared bucket.
    leading: bool,
}

/// One timer per key in one queue.
struct Timers<K> {
    queue: DelayQueue<K>,
    keys: HashMap<K, delay_queue::Key>,
}

impl<K: Clone + Eq + std::hash::Hash> Timers<K> {
    fn new() -> Self {
        Timers {
            queue: DelayQueue::new(),
            keys: HashMap::new(),
        }
    }

    fn set(&mut self, key: &K, at: Instant) {
        match self.keys.get(key) {
            Some(k) => self.queue.reset_at(k, at),
            None => {
                let k = self.queue.insert_at(key.clone(), at);
                self.keys.insert(key.clone(), k);
            }
        }
    }

    fn clear(&mut self, key: &K) {
        if let Some(k) = self.keys.remove(key) {
            self.queue.remove(&k);
        }
    }

    /// The next key whose timer fired.
    async fn next(&mut self) -> Option<K> {
        let key = self.queue.next().await?.into_inner();
        self.keys.remove(&key);
        Some(key)
    }
}

/// Waits for the optional future; pending forever if there is none.
async fn maybe<F: Future + Unpin>(future: &mut Option<F>) -> F::Output {
    match future {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

impl<W: CacheWorker> Refresher<W> {
    fn new(inner: Arc<Inner<W>>) -> Self {
        Refresher {
            refresh: Timers::new(),
            expiry: Timers::new(),
            attempts: HashMap::new(),
            bulk_attempts: 0,
            leading: inner.refreshes(),
            inner,
        }
    }

    async fn run(mut self, startup: bool) {
        let inner = self.inner.clone();
        let mut commands = inner.command_rx.lock().await;
        // Timers are derived from the bucket, so a restarted refresher loses nothing.
        self.rebuild();
        let period = inner.settings.refresh;
        let mut next_cycle = period.filter(|_| self.leading).map(|p| Instant::now() + p);
        let mut cycle: Option<BoxFuture<'static, Cycle<Key<W>>>> = None;
        let mut waiters: Vec<oneshot::Sender<RefreshReport>> = Vec::new();
        let mut queued: Vec<oneshot::Sender<RefreshReport>> = Vec::new();
        let mut reloads = FuturesUnordered::new();
        if startup && self.leading {
            cycle = Some(run_cycle(inner.clone(), Scope::Stale).boxed());
        }
        loop {
            let cycle_due = async {
                match next_cycle {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = inner.cancel.cancelled() => return,
                done = maybe(&mut cycle) => {
                    cycle = None;
                    next_cycle = self.finish_cycle(done, std::mem::take(&mut waiters));
                    if !queued.is_empty() {
                        waiters = std::mem::take(&mut queued);
                        cycle = Some(run_cycle(inner.clone(), Scope::All).boxed());
                    }
                }
                _ = cycle_due, if cycle.is_none() => {
                    next_cycle = None;
                    cycle = Some(run_cycle(inner.clone(), Scope::All).boxed());
                }
                Some(command) = commands.recv() => match command {
                    Command::Schedule(key) => self.schedule(&key),
                    Command::Rebuild => self.rebuild(),
                    Command::Lead { due } => {
                        self.leading = true;
                        self.rebuild();
                        match due {
                            Some(at) => next_cycle = period.map(|_| at),
                            None if cycle.is_none() => {
                                cycle = Some(run_cycle(inner.clone(), Scope::Stale).boxed());
                            }
                            None => {}
                        }
                    }
                    Command::Follow => {
                        self.leading = false;
                        self.rebuild();
                        // A cycle or reload in flight is dropped with its loads: its results
                        // would be changes of a node that no longer leads.
                        cycle = None;
                        reloads = FuturesUnordered::new();
                        next_cycle = None;
                        for reply in waiters.drain(..).chain(queued.drain(..)) {
                            let _ = reply.send(RefreshReport::default());
                        }
                    }
                    Command::RefreshNow(reply) if !self.leading => {
                        // The leader refreshes a shared bucket.
                        let _ = reply.send(RefreshReport::default());
                    }
                    Command::RefreshNow(reply) if cycle.is_some() => queued.push(reply),
                    Command::RefreshNow(reply) => {
                        waiters.push(reply);
                        cycle = Some(run_cycle(inner.clone(), Scope::All).boxed());
                    }
                },
                Some(key) = self.expiry.next() => self.expire(&key),
                Some(key) = self.refresh.next() => {
                    if inner.bucket.entry(&key).is_some() {
                        let inner = inner.clone();
                        reloads.push(async move {
                            let outcome = reload(&inner, key.clone()).await;
                            (key, outcome)
                        });
                    }
                }
                Some((key, outcome)) = reloads.next() => match outcome {
                    Reloaded::Failed => self.retry(&key),
                    _ => { self.attempts.remove(&key); }
                },
            }
        }
    }

    /// Sets every timer from the bucket, dropping those of keys that are gone; a node that
    /// does not refresh keeps none.
    fn rebuild(&mut self) {
        self.refresh = Timers::new();
        self.expiry = Timers::new();
        if !self.leading {
            return;
        }
        let inner = self.inner.clone();
        inner
            .bucket
            .for_each(|key, entry| self.schedule_entry(key, Some(entry)));
    }

    /// Sets the key's timers from its stored entry (or clears them if it is gone).
    fn schedule(&mut self, key: &Key<W>) {
        if !self.leading {
            return;
        }
        let entry = self.inner.bucket.entry(key);
        self.schedule_entry(key, entry.as_ref());
    }

    fn schedule_entry(&mut self, key: &Key<W>, entry: Option<&Entry<Value<W>>>) {
        let inner = &self.inner;
        let Some(entry) = entry else {
            self.refresh.clear(key);
            self.expiry.clear(key);
            return;
        };
        match inner.refresh_after(key, &entry.value) {
            Some(after) => {
                let at = inner.clock.instant_at(add_ms(entry.loaded_at, after));
                self.refresh.set(key, at);
            }
            None if !self.attempts.contains_key(key) => self.refresh.clear(key),
            None => {}
        }
        if entry.expires_at == NEVER {
            self.expiry.clear(key);
        } else {
            self.expiry
                .set(key, inner.clock.instant_at(entry.expires_at));
        }
    }

    fn retry(&mut self, key: &Key<W>) {
        let attempt = self.attempts.entry(key.clone()).or_insert(0);
        *attempt += 1;
        let delay = self.inner.settings.retry_delay(*attempt);
        tracing::debug!(bucket = self.inner.bucket_name(), key = ?key, attempt = *attempt, ?delay, "reload retry scheduled");
        self.refresh.set(key, Instant::now() + delay);
    }

    fn expire(&mut self, key: &Key<W>) {
        let inner = &self.inner;
        let now = inner.clock.now_ms();
        if inner.remove_expired(key, now) {
            self.attempts.remove(key);
            self.refresh.clear(key);
        } else {
            // Reloaded with a later deadline meanwhile, or the timer fired a hair early.
            self.schedule(key);
        }
    }

    /// Counts and announces a finished cycle, answers its waiters, schedules retries, and
    /// returns when the next periodic cycle is due.
    fn finish_cycle(
        &mut self,
        cycle: Cycle<Key<W>>,
        waiters: Vec<oneshot::Sender<RefreshReport>>,
    ) -> Option<Instant> {
        let inner = self.inner.clone();
        if !cycle.skipped {
            bump(&inner.stats.refresh_cycles);
            #[cfg(feature = "redis")]
            if let Some(link) = &inner.cluster {
                link.cycle_finished(inner.clock.now_ms());
            }
            let r = &cycle.report;
            #[cfg(feature = "metrics")]
            crate::metrics::refresh_cycle(inner.bucket_name(), r.duration);
            tracing::info!(
                bucket = inner.bucket_name(),
                bulk = r.bulk,
                reloaded = r.reloaded,
                inserted = r.inserted,
                updated = r.updated,
                unchanged = r.unchanged,
                removed = r.removed,
                failed = r.failed,
                entries = r.entries,
                duration = ?r.duration,
                "{}.full_reload",
                inner.bucket_name()
            );
            if !cycle.bulk_failed {
                let log = inner.log();
                let version = log.version();
                inner.emit(|| Event::FullReload {
                    count: r.entries,
                    version,
                });
            }
        }
        for reply in waiters {
            let _ = reply.send(cycle.report.clone());
        }
        inner.first_cycle.send_if_modified(|first| {
            let unset = first.is_none();
            if unset {
                *first = Some(cycle.report.clone());
            }
            unset
        });
        if !cycle.bulk_failed {
            // Every key this cycle reloaded is fresh: a later failure of its own reload starts
            // the backoff over at `retry_min`. Keys it could not reload keep their count; keys
            // it removed lose theirs.
            let failed: HashSet<&Key<W>> = cycle.failed.iter().collect();
            self.attempts.retain(|key, _| failed.contains(key));
        }
        for key in &cycle.failed {
            self.retry(key);
        }
        let period = inner.settings.refresh;
        if cycle.bulk_failed {
            self.bulk_attempts += 1;
            let retry = inner.settings.retry_delay(self.bulk_attempts);
            let delay = period.map_or(retry, |p| p.min(retry));
            Some(Instant::now() + delay)
        } else {
            self.bulk_attempts = 0;
            period.map(|p| Instant::now() + p)
        }
    }
}

/// Reloads one key that is in the bucket: stale-if-error, `Ok(None)` removes it.
async fn reload<W: CacheWorker>(inner: &Inner<W>, key: Key<W>) -> Reloaded {
    let Ok(_permit) = inner.limiter.acquire().await else {
        return Reloaded::Vanished;
    };
    // The write this reload revalidates: if the entry is removed, expired or written (even with
    // an equal value) while it runs, the result is older than the bucket and is dropped.
    let Some(basis) = inner.bucket.stamp_of(&key) else {
        return Reloaded::Vanished;
    };
    match load_one(inner, &key).await {
        Ok(Some(value)) => match inner.store_reloaded(key, Arc::new(value), basis) {
            Some(true) => Reloaded::Changed,
            Some(false) => Reloaded::Unchanged,
            None => Reloaded::Vanished,
        },
        Ok(None) if inner.remove_reloaded(&key, basis) => Reloaded::Gone,
        Ok(None) => Reloaded::Vanished,
        Err(_) => {
            bump(&inner.stats.refresh_failures);
            Reloaded::Failed
        }
    }
}

/// One full cycle: the bulk load if the worker has one, else every key (or every stale key).
async fn run_cycle<W: CacheWorker>(inner: Arc<Inner<W>>, scope: Scope) -> Cycle<Key<W>> {
    let started = Instant::now();
    // Writes from here on are newer than what `load_all` reads: its swap leaves them be.
    let bulk_load = inner.bucket.bulk_load();
    let bulk = isolate(&inner, "load_all", None, async {
        inner.state.load_all().await.transpose()
    })
    .await;
    let mut cycle = match bulk {
        Ok(None) => {
            drop(bulk_load);
            reload_keys(&inner, scope).await
        }
        Ok(Some(entries)) => {
            bump(&inner.stats.loads);
            bump(&inner.stats.bulk_loads);
            replace_all(&inner, bulk_load, entries)
        }
        Err(_) => {
            bump(&inner.stats.loads);
            bump(&inner.stats.refresh_failures);
            Cycle {
                report: RefreshReport {
                    bulk: true,
                    failed: 1,
                    ..RefreshReport::default()
                },
                failed: Vec::new(),
                bulk_failed: true,
                skipped: false,
            }
        }
    };
    cycle.report.entries = inner.bucket.len();
    cycle.report.duration = started.elapsed();
    cycle
}

async fn reload_keys<W: CacheWorker>(inner: &Arc<Inner<W>>, scope: Scope) -> Cycle<Key<W>> {
    let keys: Vec<Key<W>> = match scope {
        Scope::All => inner.bucket.keys(),
        Scope::Stale => {
            let now = inner.clock.now_ms();
            let mut stale = Vec::new();
            if let Some(period) = inner.settings.refresh {
                inner.bucket.for_each(|k, e| {
                    // Entries with their own interval are revalidated by their own timers.
                    if now >= add_ms(e.loaded_at, period)
                        && inner.refresh_after(k, &e.value).is_none()
                    {
                        stale.push(k.clone());
                    }
                });
            }
            stale
        }
    };
    let mut cycle = Cycle {
        report: RefreshReport::default(),
        failed: Vec::new(),
        bulk_failed: false,
        skipped: scope == Scope::Stale && keys.is_empty(),
    };
    if scope == Scope::Stale && !keys.is_empty() {
        tracing::info!(
            bucket = inner.bucket_name(),
            stale = keys.len(),
            "revalidating stale entries from the dump"
        );
    }
    let mut results = stream::iter(keys)
        .map(|key| async move {
            let outcome = reload(inner, key.clone()).await;
            (key, outcome)
        })
        .buffer_unordered(inner.settings.concurrency);
    let r = &mut cycle.report;
    while let Some((key, outcome)) = results.next().await {
        match outcome {
            Reloaded::Changed => {
                r.reloaded += 1;
                r.updated += 1;
            }
            Reloaded::Unchanged => {
                r.reloaded += 1;
                r.unchanged += 1;
            }
            Reloaded::Gone => r.removed += 1,
            Reloaded::Failed => {
                r.failed += 1;
                cycle.failed.push(key);
            }
            Reloaded::Vanished => {}
        }
    }
    cycle
}

/// Swaps in a whole collection and reports the difference as events.
fn replace_all<W: CacheWorker>(
    inner: &Inner<W>,
    bulk_load: BulkLoad<'_, Key<W>, Value<W>>,
    entries: Vec<(Key<W>, Value<W>)>,
) -> Cycle<Key<W>> {
    let mut report = RefreshReport {
        bulk: true,
        reloaded: entries.len(),
        ..RefreshReport::default()
    };
    // An entry already past its expiry (`expire_after` gave zero) is not stored: it would only
    // be removed again at once, or, after it expired, come back with every reload. Compared
    // with the entry's own load time, not a `now` read before it, which may be a tick older.
    let entries: Vec<_> = entries
        .into_iter()
        .map(|(key, value)| {
            let entry = inner.entry_now(&key, Arc::new(value));
            (key, entry)
        })
        .filter(|(_, entry)| !entry.expired(entry.loaded_at))
        .collect();
    let now = inner.clock.now_ms();
    let diff = inner.bucket.replace_all(
        bulk_load,
        entries,
        now,
        &inner.recorder(now, Source::Refresh),
    );
    for (key, value, change) in diff.changes {
        match change {
            Change::Inserted | Change::AfterExpiry { .. } => report.inserted += 1,
            Change::Updated { .. } => report.updated += 1,
            Change::Unchanged => report.unchanged += 1,
        }
        if inner.timed(&key, &value) {
            inner.schedule(key);
        }
    }
    report.removed += diff
        .removed
        .iter()
        .filter(|(_, _, cause)| *cause == RemovalCause::Gone)
        .count();
    // A bulk load larger than the bound: the excess goes now, after the swap's own changes.
    inner.evict_over_bound(now);
    Cycle {
        report,
        failed: Vec::new(),
        bulk_failed: false,
        skipped: false,
    }
}
