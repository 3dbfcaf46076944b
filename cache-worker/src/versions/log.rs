//! The version log: the bucket's current version and the changes retained for delta sync.
//!
//! A write takes its change's version from one counter while it still holds its key's lock in
//! the map, so versions follow the order of each key's changes, and queues the change's record
//! in its thread's stripe of [`VersionLog`]. Whoever next locks the log (a reader, a write that
//! filled its stripe, every write while someone listens for events) first moves the queued
//! records into it, in version order, as far as they run without a gap, and sends their events
//! in that order: so the retained changes are contiguous, the events carry consecutive
//! versions, and writes of different keys take no lock in common. A reader waits for the
//! records of every version given out when it came (each is queued under its stripe's lock,
//! right after its version is taken), so it sees its own writes. Nothing that holds the log's
//! lock waits for a lock of the map.
//!
//! Versions are seeded from the wall clock at every start: the first version of a run is at
//! least the start time in microseconds since the Unix epoch, and each change adds one. Within
//! a process, a run also starts after the last version of every run of it that ended (a
//! worker shut down or dropped), however fast that one changed. Across processes, a run would
//! have to make more than a million changes a second, on average over its whole life, to issue
//! a version that a later run's seed does not pass (unless the system clock is set back).
//! They stay below 2^53, exact in JavaScript's numbers, until the year 2255.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crossbeam_utils::CachePadded;
use parking_lot::{Mutex, MutexGuard};
use serde::Serialize;

use crate::events::RemovalCause;
use crate::prefetch::{prefetch, prefetch_arc, prefetch_serialized};
use crate::stats::{STRIPES, stripe};

/// How many records a stripe queues before the write that queued the last one moves them
/// into the log (if the log is free; at [`STRIPE_FULL`] it waits for it).
const STRIPE_BATCH: usize = 64;
const STRIPE_FULL: usize = 4096;

/// How many writes ahead [`ChangeLog::prefetch_next_oldest`] prefetches a record, and its
/// key and values.
const FAR: usize = 16;
const NEAR: usize = 8;

/// One change as the log keeps it.
pub(crate) struct Record<K, V> {
    pub(crate) version: u64,
    /// When it was made (the worker's clock, ms), for `delta_ttl`.
    pub(crate) at_ms: u64,
    pub(crate) key: K,
    /// The value after the change; `None` for a removal.
    pub(crate) value: Option<Arc<V>>,
    /// The value before it; `None` if the key was absent.
    pub(crate) before: Option<Arc<V>>,
}

/// The records an append or a catch-up pushed out of the log (or, if nothing is retained, the
/// ones it took in): dropped by whoever holds them, after the log's lock. The last reference
/// to an old value frees it, which no other write should wait for.
#[must_use = "dropped after the log's lock is released"]
pub(crate) struct Displaced<K, V> {
    _one: Option<Record<K, V>>,
    _many: Vec<Record<K, V>>,
}

impl<K, V> Displaced<K, V> {
    pub(crate) fn none() -> Self {
        Displaced {
            _one: None,
            _many: Vec::new(),
        }
    }
}

/// A change whose version is taken, queued for the log.
pub(crate) struct Pending<K, V> {
    record: Record<K, V>,
    /// Why it was removed, if this is a removal: for its event.
    cause: Option<RemovalCause>,
}

/// The queues of changes on their way into the log, one per thread stripe, each on its own
/// cache line.
type Stripes<K, V> = [CachePadded<Mutex<Vec<Pending<K, V>>>>; STRIPES];

/// The log, and the counter and queues of the writes on their way into it (see the module's
/// documentation).
pub(crate) struct VersionLog<K, V> {
    /// The last version given out, to a change that may still be queued.
    taken: Arc<CachePadded<AtomicU64>>,
    /// The log's `published`.
    published: Arc<AtomicU64>,
    stripes: Stripes<K, V>,
    log: Mutex<ChangeLog<K, V>>,
}

impl<K: Clone + Eq + Hash + Serialize, V> VersionLog<K, V> {
    pub(crate) fn new(log: ChangeLog<K, V>) -> Self {
        VersionLog {
            taken: log.taken.clone(),
            published: log.published.clone(),
            stripes: std::array::from_fn(|_| CachePadded::new(Mutex::new(Vec::new()))),
            log: Mutex::new(log),
        }
    }

    /// The last version given out: every change up to it is in the map, and its record is in
    /// the log or on its way.
    pub(crate) fn taken(&self) -> u64 {
        self.taken.load(Ordering::SeqCst)
    }

    /// `taken`, shared: what outlives the worker to mark where its run ended.
    pub(crate) fn taken_handle(&self) -> Arc<CachePadded<AtomicU64>> {
        self.taken.clone()
    }

    /// The last version whose change, and every one before it, is in the log.
    pub(crate) fn published(&self) -> u64 {
        self.published.load(Ordering::Acquire)
    }

    /// Takes the next version for a change made at `at_ms` and queues its record. Called with
    /// the key's lock held, so that the versions of a key follow its writes; the version is
    /// taken under the stripe's lock, so that a reader that waits for it finds it queued once
    /// it gets that lock. Returns the version and how many records the stripe now holds.
    pub(crate) fn queue(
        &self,
        key: &K,
        value: Option<Arc<V>>,
        before: Option<Arc<V>>,
        at_ms: u64,
        cause: Option<RemovalCause>,
    ) -> (u64, usize) {
        let mut record = Record {
            version: 0,
            at_ms,
            key: key.clone(),
            value,
            before,
        };
        let mut queue = self.stripes[stripe()].lock();
        record.version = self.taken.fetch_add(1, Ordering::SeqCst) + 1;
        let version = record.version;
        queue.push(Pending { record, cause });
        (version, queue.len())
    }

    /// Whether a write whose stripe holds `queued` records should move them into the log now:
    /// `Some(true)` waiting for its lock, `Some(false)` only if it is free.
    pub(crate) fn due(queued: usize) -> Option<bool> {
        (queued >= STRIPE_BATCH).then_some(queued >= STRIPE_FULL)
    }

    /// The log as it is, queued changes left where they are: for what only moves it to another
    /// version (which no queued change may be waiting for) or drops old changes.
    pub(crate) fn lock_as_is(&self) -> MutexGuard<'_, ChangeLog<K, V>> {
        self.log.lock()
    }

    pub(crate) fn try_lock(&self) -> Option<MutexGuard<'_, ChangeLog<K, V>>> {
        self.log.try_lock()
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, ChangeLog<K, V>> {
        self.log.lock()
    }

    /// Moves the queued records into `log` (see [`ChangeLog::absorb`]).
    pub(crate) fn absorb(
        &self,
        log: &mut ChangeLog<K, V>,
        sent: impl FnMut(&Record<K, V>, Option<RemovalCause>),
    ) -> Displaced<K, V> {
        log.absorb(&self.stripes, sent)
    }

    /// The log, once every change given a version before this call is in it (its events sent
    /// through `sent`): what every reader of the changes takes.
    pub(crate) fn caught_up(
        &self,
        mut sent: impl FnMut(&Record<K, V>, Option<RemovalCause>),
    ) -> MutexGuard<'_, ChangeLog<K, V>> {
        let target = self.taken();
        let mut log = self.log.lock();
        let backoff = crossbeam_utils::Backoff::new();
        loop {
            let displaced = log.absorb(&self.stripes, &mut sent);
            // A move to another version (a follower's rebase) sets both: then nothing is due.
            if log.version >= target.min(self.taken()) {
                drop(displaced);
                return log;
            }
            // A version taken whose record its writer is queueing right now.
            MutexGuard::unlocked(&mut log, || {
                drop(displaced);
                backoff.snooze();
            });
        }
    }
}

/// One key's changes since a version, merged: its value then and its value now.
pub(crate) struct Merged<K, V> {
    pub(crate) key: K,
    /// The value now; `None` if it was removed.
    pub(crate) value: Option<Arc<V>>,
    /// The value a client at the version it was merged from holds; `None` if it had none.
    pub(crate) before: Option<Arc<V>>,
    /// The version of the key's last change: the SSE catch-up's event ids (feature `http`).
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    pub(crate) version: u64,
}

/// The version a start seeds its log from: the wall clock in microseconds since the Unix epoch.
pub(crate) fn clock_seed() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// The highest version of any log of this process that has ended: a new log starts after it,
/// so that a worker started again in the same process never reuses a version of the one
/// before, even one that changed faster than the clock.
static ENDED: AtomicU64 = AtomicU64::new(0);

/// Versions at or above this (2^53) are not ones a run gives: a dump that claims one is
/// treated as of no known version.
const MAX_VERSION: u64 = 1 << 53;

/// Where a new log starts: after the clock, and after every log of this process that ended.
fn seed() -> u64 {
    clock_seed().max(ENDED.load(Ordering::SeqCst).saturating_add(1))
}

/// Marks the end of a run that reached `version` (a shutdown; a dropped log does it too).
pub(crate) fn ended(version: u64) {
    ENDED.fetch_max(version.min(MAX_VERSION), Ordering::SeqCst);
}

pub(crate) struct ChangeLog<K, V> {
    /// The version of the last change (or the seed).
    version: u64,
    /// Every change after `floor`, up to `version`, is in `records`, oldest first:
    /// `records[i].version == floor + 1 + i`.
    floor: u64,
    /// The version, in the run that wrote the dump this one started from, of the state at
    /// `start`: a client at it is where this run started.
    alias: Option<u64>,
    /// The version this run started at.
    start: u64,
    records: VecDeque<Record<K, V>>,
    threshold: usize,
    ttl_ms: u64,
    /// `version`, readable without the lock.
    published: Arc<AtomicU64>,
    /// The last version given out (see [`VersionLog`]): at `version` unless changes are queued.
    taken: Arc<CachePadded<AtomicU64>>,
    /// Changes taken in from the queues that wait for an earlier one still queued, in version
    /// order.
    held: Vec<Pending<K, V>>,
}

impl<K: Clone + Eq + Hash + Serialize, V> ChangeLog<K, V> {
    pub(crate) fn new(threshold: usize, ttl: Duration) -> Self {
        let seed = seed();
        ChangeLog {
            version: seed,
            floor: seed,
            alias: None,
            start: seed,
            records: VecDeque::new(),
            threshold,
            ttl_ms: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
            published: Arc::new(AtomicU64::new(seed)),
            taken: Arc::new(CachePadded::new(AtomicU64::new(seed))),
            held: Vec::new(),
        }
    }

    /// Goes on at `version`: nothing may be queued, and no write may be taking a version.
    fn set_version(&mut self, version: u64) {
        debug_assert!(self.held.is_empty(), "moved with changes queued");
        self.version = version;
        self.published.store(version, Ordering::Release);
        self.taken.store(version, Ordering::SeqCst);
    }

    pub(crate) fn version(&self) -> u64 {
        self.version
    }

    /// Starts this run's versions after a warm start from a dump written at `dumped`: at the
    /// clock seed, or after the dump's version if that is later. If the dump is exact (its
    /// entries are the bucket at `dumped`), a client at `dumped` is at this run's start.
    pub(crate) fn restored(&mut self, dumped: u64, exact: bool) {
        debug_assert!(self.records.is_empty(), "restored before any change");
        if dumped >= MAX_VERSION {
            // A hostile or damaged header (under a good checksum): no version of ours.
            return;
        }
        let start = self.version.max(dumped);
        self.set_version(start);
        self.floor = start;
        self.start = start;
        self.alias = (exact && dumped < start).then_some(dumped);
    }

    /// Goes on at `version`, a version given by another node of a shared bucket (whose copy
    /// this one now is), dropping every retained change: a client behind it gets the full
    /// bucket, except one at `alias`, which is at `version` too.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn rebase(&mut self, version: u64, alias: Option<u64>) {
        self.set_version(version);
        self.floor = version;
        self.start = version;
        self.alias = alias.filter(|&a| a != version);
        self.records.clear();
    }

    /// Records one change, made at `now_ms`, and returns its version: for a node whose changes
    /// come in one at a time (a follower's, from its leader) or with writes held off, so that
    /// none is queued. Writes queue theirs instead ([`VersionLog::queue`]).
    pub(crate) fn append(
        &mut self,
        key: &K,
        value: Option<Arc<V>>,
        before: Option<Arc<V>>,
        now_ms: u64,
    ) -> (u64, Displaced<K, V>) {
        let version = self.version + 1;
        let displaced = self.place(Record {
            version,
            at_ms: now_ms,
            key: key.clone(),
            value,
            before,
        });
        self.set_version(version);
        (
            version,
            Displaced {
                _one: displaced,
                _many: Vec::new(),
            },
        )
    }

    /// Moves the records queued in `stripes` into the log, in version order, as far as they
    /// run without a gap (the rest wait in `held` for the one still queued), and calls `sent`
    /// with each, in that order. Once the log holds `delta_threshold` changes, each pushes
    /// out the oldest.
    fn absorb(
        &mut self,
        stripes: &Stripes<K, V>,
        mut sent: impl FnMut(&Record<K, V>, Option<RemovalCause>),
    ) -> Displaced<K, V> {
        for stripe in stripes {
            let mut queue = stripe.lock();
            if !queue.is_empty() {
                self.held.append(&mut queue);
            }
        }
        if self.held.is_empty() {
            return Displaced::none();
        }
        // Runs already in order (each stripe's): a merge, not a sort.
        self.held.sort_by_key(|p| p.record.version);
        let mut held = std::mem::take(&mut self.held);
        let ready = held
            .iter()
            .zip(self.version + 1..)
            .take_while(|(p, next)| p.record.version == *next)
            .count();
        let mut out = Vec::with_capacity(ready);
        for Pending { record, cause } in held.drain(..ready) {
            sent(&record, cause);
            out.extend(self.place(record));
        }
        self.held = held;
        self.published.store(self.version, Ordering::Release);
        Displaced {
            _one: None,
            _many: out,
        }
    }

    /// Puts the record of the next version at the end, and returns the one it pushes out.
    fn place(&mut self, record: Record<K, V>) -> Option<Record<K, V>> {
        debug_assert_eq!(
            record.version,
            self.version + 1,
            "the version log has a gap"
        );
        self.version = record.version;
        if self.threshold == 0 {
            self.floor = self.version;
            return Some(record);
        }
        let mut out = None;
        if self.records.len() == self.threshold
            && let Some(oldest) = self.records.pop_front()
        {
            if self.records.capacity() > self.threshold {
                // A ring of exactly `threshold` slots: the record pushed below then goes into
                // the slot just popped, which is in cache, not into a cold spare one.
                self.records.shrink_to(self.threshold);
            }
            self.prefetch_next_oldest();
            self.floor = oldest.version;
            out = Some(oldest);
        }
        self.records.push_back(record);
        out
    }

    /// Starts loading what the writes after this one will push out and drop: the record that
    /// goes [`FAR`] writes from now, and the key and values of the one that goes [`NEAR`]
    /// writes from now (its record is in cache by then). The oldest records were written
    /// thousands of writes ago and their values are scattered, so each is a few cache misses,
    /// which this overlaps with the writes in between instead of paying them all at once.
    #[inline]
    fn prefetch_next_oldest(&self) {
        if let Some(far) = self.records.get(FAR) {
            prefetch(far);
        }
        if let Some(near) = self.records.get(NEAR) {
            prefetch_serialized(&near.key);
            if let Some(value) = &near.value {
                prefetch_arc(value);
            }
            if let Some(before) = &near.before {
                prefetch_arc(before);
            }
        }
    }

    /// Drops the changes older than `delta_ttl`; run in the background, so that no write pays
    /// for a long run of them at once.
    pub(crate) fn prune(&mut self, now_ms: u64) {
        while let Some(oldest) = self.records.front() {
            if !self.too_old(oldest, now_ms) {
                break;
            }
            self.floor = oldest.version;
            self.records.pop_front();
        }
        if self.records.is_empty() {
            // Shrinks the ring after a burst; its capacity would otherwise stay at the peak.
            self.records.shrink_to(64);
        }
    }

    fn too_old(&self, record: &Record<K, V>, now_ms: u64) -> bool {
        record.at_ms.saturating_add(self.ttl_ms) < now_ms
    }

    /// The changes after `since`, merged, if the log can tell them: `since` must be a version
    /// of this run (or the alias of its start), not older than what is retained, not ahead.
    /// `None` means the client needs the whole bucket.
    pub(crate) fn since(&self, since: u64, now_ms: u64) -> Option<Vec<Merged<K, V>>> {
        let skip = self.retained(since, now_ms)?;
        Some(merge(self.records.range(skip..)))
    }

    /// Each change after `since`, unmerged, oldest first, if the log holds them all (as
    /// [`since`](Self::since) decides): what a store is written with.
    pub(crate) fn records_since(
        &self,
        since: u64,
        now_ms: u64,
    ) -> Option<impl Iterator<Item = &Record<K, V>>> {
        let skip = self.retained(since, now_ms)?;
        Some(self.records.range(skip..))
    }

    /// Where the changes after `since` start in `records`, if every one is there.
    fn retained(&self, since: u64, now_ms: u64) -> Option<usize> {
        let since = if Some(since) == self.alias {
            self.start
        } else {
            since
        };
        if since < self.floor || since > self.version || since < self.start {
            return None;
        }
        let skip = usize::try_from(since - self.floor).ok()?;
        // Contiguity: by construction, but never answer a delta with a hole in it.
        if self.records.len() as u64 != self.version - self.floor {
            debug_assert!(false, "the version log has a gap");
            return None;
        }
        if let Some(first) = self.records.get(skip)
            && (first.version != since + 1 || self.too_old(first, now_ms))
        {
            return None;
        }
        Some(skip)
    }
}

impl<K, V> Drop for ChangeLog<K, V> {
    fn drop(&mut self) {
        ended(self.version.max(self.taken.load(Ordering::SeqCst)));
    }
}

/// Merges a run of records: one per key, its last value, the value before its first change,
/// in the order of their last changes. A key that was absent before and is absent after is
/// left out.
fn merge<'a, K: Clone + Eq + Hash + 'a, V: 'a>(
    records: impl Iterator<Item = &'a Record<K, V>>,
) -> Vec<Merged<K, V>> {
    let mut out: Vec<Option<Merged<K, V>>> = Vec::new();
    let mut at: HashMap<&K, usize> = HashMap::new();
    for record in records {
        let before = match at.insert(&record.key, out.len()) {
            Some(earlier) => out[earlier].take().and_then(|m| m.before),
            None => record.before.clone(),
        };
        out.push(Some(Merged {
            key: record.key.clone(),
            value: record.value.clone(),
            before,
            version: record.version,
        }));
    }
    out.into_iter()
        .flatten()
        .filter(|m| m.value.is_some() || m.before.is_some())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(threshold: usize) -> ChangeLog<&'static str, u32> {
        ChangeLog::new(threshold, Duration::from_secs(60))
    }

    fn put(
        log: &mut ChangeLog<&'static str, u32>,
        key: &'static str,
        before: Option<u32>,
        value: u32,
    ) -> u64 {
        log.append(&key, Some(Arc::new(value)), before.map(Arc::new), 0)
            .0
    }

    fn shown(
        merged: &[Merged<&'static str, u32>],
    ) -> Vec<(&'static str, Option<u32>, Option<u32>)> {
        merged
            .iter()
            .map(|m| {
                (
                    m.key,
                    m.before.as_deref().copied(),
                    m.value.as_deref().copied(),
                )
            })
            .collect()
    }

    #[test]
    fn a_key_changed_twice_merges_to_its_first_before_and_last_value() {
        let mut l = log(10);
        let v0 = l.version();
        put(&mut l, "a", None, 1);
        let v1 = l.version();
        put(&mut l, "a", Some(1), 2);
        put(&mut l, "b", None, 7);
        put(&mut l, "a", Some(2), 3);
        assert_eq!(
            shown(&l.since(v1, 0).expect("retained")),
            [("b", None, Some(7)), ("a", Some(1), Some(3))]
        );
        assert_eq!(
            shown(&l.since(v0, 0).expect("retained")),
            [("b", None, Some(7)), ("a", None, Some(3))]
        );
    }

    #[test]
    fn inserted_then_removed_inside_the_window_is_nothing() {
        let mut l = log(10);
        let v0 = l.version();
        put(&mut l, "a", None, 1);
        let _ = l.append(&"a", None, Some(Arc::new(1)), 0);
        assert!(l.since(v0, 0).expect("retained").is_empty());
    }

    #[test]
    fn removed_then_added_again_is_a_put() {
        let mut l = log(10);
        put(&mut l, "a", None, 1);
        let v1 = l.version();
        let _ = l.append(&"a", None, Some(Arc::new(1)), 0);
        put(&mut l, "a", None, 2);
        assert_eq!(
            shown(&l.since(v1, 0).expect("retained")),
            [("a", Some(1), Some(2))]
        );
    }

    #[test]
    fn the_threshold_keeps_the_newest_changes() {
        let mut l = log(3);
        let versions: Vec<u64> = (0..6).map(|i| put(&mut l, "k", Some(i), i + 1)).collect();
        // Retained: the last three (v4..v6 of the six); a client at v3 gets them, at v2 not.
        assert!(l.since(versions[1], 0).is_none());
        assert_eq!(
            shown(&l.since(versions[2], 0).expect("v3")),
            [("k", Some(3), Some(6))]
        );
        assert!(l.since(versions[5], 0).expect("now").is_empty());
        assert!(l.since(versions[5] + 1, 0).is_none(), "ahead of the bucket");
    }

    #[test]
    fn the_age_limit_drops_old_changes_and_answers_full_for_them() {
        let mut l: ChangeLog<&str, u32> = ChangeLog::new(10, Duration::from_millis(100));
        let v0 = l.version();
        let _ = l.append(&"a", Some(Arc::new(1)), None, 1_000);
        let v1 = l.version();
        let _ = l.append(&"b", Some(Arc::new(2)), None, 1_150);
        assert!(l.since(v0, 1_200).is_none(), "its first change is too old");
        assert_eq!(l.since(v1, 1_200).expect("young enough").len(), 1);
        l.prune(1_200);
        assert!(l.since(v0, 1_200).is_none());
        assert_eq!(l.since(v1, 1_200).expect("kept").len(), 1);
    }

    #[test]
    fn no_threshold_keeps_nothing() {
        let mut l = log(0);
        let v0 = l.version();
        put(&mut l, "a", None, 1);
        assert!(l.since(v0, 0).is_none());
        assert!(l.since(l.version(), 0).expect("current").is_empty());
    }

    #[test]
    fn after_an_exact_restore_the_dumped_version_is_the_start() {
        let mut l = log(10);
        let dumped = l.version() - 1_000;
        l.restored(dumped, true);
        put(&mut l, "a", None, 1);
        assert_eq!(
            shown(&l.since(dumped, 0).expect("alias")),
            [("a", None, Some(1))]
        );
        assert!(
            l.since(dumped + 1, 0).is_none(),
            "a version of the run that wrote the dump"
        );
        let mut inexact = log(10);
        inexact.restored(dumped, false);
        assert!(inexact.since(dumped, 0).is_none());
    }

    #[test]
    fn a_dump_from_ahead_of_the_clock_continues_after_it() {
        let mut l = log(10);
        let ahead = l.version() + 1_000_000;
        l.restored(ahead, true);
        assert_eq!(l.version(), ahead);
        assert!(l.since(ahead, 0).expect("the same state").is_empty());
    }
}
