//! The version log: the bucket's current version and the changes retained for delta sync.
//!
//! The log is the worker's write order: every change of the bucket is made, versioned, logged
//! and announced with the log's lock held, so versions follow the order of the changes, the
//! retained changes are contiguous by construction, and the events carry the versions in the
//! order they are sent.
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

use serde::Serialize;

use crate::prefetch::{prefetch, prefetch_arc, prefetch_serialized};

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
        }
    }

    /// The current version, shared: readers load it without the lock.
    pub(crate) fn published(&self) -> Arc<AtomicU64> {
        self.published.clone()
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
        self.version = start;
        self.floor = start;
        self.start = start;
        self.alias = (exact && dumped < start).then_some(dumped);
        self.published.store(start, Ordering::Release);
    }

    /// Goes on at `version`, a version given by another node of a shared bucket (whose copy
    /// this one now is), dropping every retained change: a client behind it gets the full
    /// bucket, except one at `alias`, which is at `version` too.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn rebase(&mut self, version: u64, alias: Option<u64>) {
        self.version = version;
        self.floor = version;
        self.start = version;
        self.alias = alias.filter(|&a| a != version);
        self.records.clear();
        self.published.store(version, Ordering::Release);
    }

    /// Records one change, made at `now_ms`, and returns its version. Once the log holds
    /// `delta_threshold` changes, the oldest one's record is reused for the new one (its key's
    /// allocation too, through `clone_from`), so a write at steady state allocates nothing here.
    pub(crate) fn append(
        &mut self,
        key: &K,
        value: Option<Arc<V>>,
        before: Option<Arc<V>>,
        now_ms: u64,
    ) -> u64 {
        self.version += 1;
        let version = self.version;
        if self.threshold == 0 {
            self.floor = version;
        } else if self.records.len() == self.threshold
            && let Some(mut oldest) = self.records.pop_front()
        {
            if self.records.capacity() > self.threshold {
                // A ring of exactly `threshold` slots: the record pushed below then goes into
                // the slot just popped, which is in cache, not into a cold spare one.
                self.records.shrink_to(self.threshold);
            }
            self.prefetch_next_oldest();
            self.floor = oldest.version;
            oldest.version = version;
            oldest.at_ms = now_ms;
            oldest.key.clone_from(key);
            oldest.value = value;
            oldest.before = before;
            self.records.push_back(oldest);
        } else {
            self.records.push_back(Record {
                version,
                at_ms: now_ms,
                key: key.clone(),
                value,
                before,
            });
        }
        self.published.store(version, Ordering::Release);
        version
    }

    /// Starts loading what the writes after this one will reuse or drop: the record that goes
    /// [`FAR`] writes from now, and the key and values of the one that goes [`NEAR`] writes
    /// from now (its record is in cache by then). The oldest records were written thousands of
    /// writes ago and their values are scattered, so each is a few cache misses, which this
    /// overlaps with the writes in between instead of paying them in the write that reuses it.
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
        ended(self.version);
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
        l.append(&"a", None, Some(Arc::new(1)), 0);
        assert!(l.since(v0, 0).expect("retained").is_empty());
    }

    #[test]
    fn removed_then_added_again_is_a_put() {
        let mut l = log(10);
        put(&mut l, "a", None, 1);
        let v1 = l.version();
        l.append(&"a", None, Some(Arc::new(1)), 0);
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
        l.append(&"a", Some(Arc::new(1)), None, 1_000);
        let v1 = l.version();
        l.append(&"b", Some(Arc::new(2)), None, 1_150);
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
