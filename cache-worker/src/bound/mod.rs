//! A memory bound: at most `max_entries` entries in the bucket, the others evicted by
//! S3-FIFO; and the memory of keys the loader said do not exist ([`absent`]).
//!
//! **Why S3-FIFO** (Yang et al., "FIFO queues are all you need for cache eviction", SOSP 2023):
//! - a hit costs one relaxed load of the entry's counter, and a store the first three times
//!   only: no lock, no queue to reorder, no buffer to drain, so a bounded `peek` stays as
//!   fast as an unbounded one (LRU needs a lock or a read buffer per hit, W-TinyLFU a sketch
//!   update and a read buffer);
//! - it resists scans and floods: a new key enters a small queue (a tenth of the bound) and
//!   leaves from there unless it was read again, so a flood of one-time keys never displaces
//!   the keys that are read (the main queue);
//! - a key evicted from the small queue is remembered by its hash in a ghost queue, and goes
//!   to the main queue when it comes back: a key read again after a while is not a one-timer;
//! - its hit ratio on web and Zipf traces is on par with W-TinyLFU's (the report bench
//!   compares it with moka's on a Zipf(0.9) trace).
//!
//! Eviction runs on the writer that went over the bound, with the evicted key's lock held, so
//! an evicted entry is a change like any other: versioned, logged, and sent as
//! `Removed { cause: Evicted }`.

pub(crate) mod absent;

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hash};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use parking_lot::Mutex;

use crate::bucket::{Entry, Hasher, Map, Record};
use crate::events::RemovalCause;

/// The part of the bound an entry carries: how often it was read (0 to 3) in the low two bits,
/// and which admission of its key it is in the rest (what tells a queued key from a key that
/// was removed and came back since).
pub(crate) struct Meta(AtomicU64);

const FREQ: u64 = 0b11;

impl Meta {
    pub(crate) const fn new() -> Self {
        Meta(AtomicU64::new(0))
    }

    pub(crate) fn admitted(id: u64) -> Self {
        Meta(AtomicU64::new(id << 2))
    }

    fn id(&self) -> u64 {
        self.0.load(Relaxed) >> 2
    }

    fn freq(&self) -> u64 {
        self.0.load(Relaxed) & FREQ
    }

    /// Counts a read. Readers share the entry, so two may count one; a lost count only makes
    /// the key a little colder.
    #[inline]
    pub(crate) fn touch(&self) {
        let m = self.0.load(Relaxed);
        if m & FREQ != FREQ {
            self.0.store(m + 1, Relaxed);
        }
    }

    fn cool(&self) {
        let m = self.0.load(Relaxed);
        if m & FREQ != 0 {
            self.0.store(m - 1, Relaxed);
        }
    }

    fn set_id(&self, id: u64) {
        let m = self.0.load(Relaxed);
        self.0.store((id << 2) | (m & FREQ), Relaxed);
    }
}

impl Clone for Meta {
    fn clone(&self) -> Self {
        Meta(AtomicU64::new(self.0.load(Relaxed)))
    }
}

impl Default for Meta {
    fn default() -> Self {
        Meta::new()
    }
}

/// The eviction policy of a bounded bucket. The bucket calls it: [`admit`](Bound::admit) for
/// each key it inserts, [`forget`](Bound::forget) for each entry it removes, and
/// [`evict`](Bound::evict) for a victim while it holds more entries than the bound allows.
pub(crate) struct Bound<K> {
    max: usize,
    small_max: usize,
    queues: Mutex<Queues<K>>,
    hasher: Hasher,
}

struct Queues<K> {
    /// New keys, oldest first, with their admission id.
    small: VecDeque<(K, u64)>,
    /// Keys read while in `small`, or back from the ghost queue.
    main: VecDeque<(K, u64)>,
    /// Hashes of keys evicted from `small`, oldest first, each with the number it was queued
    /// as; `ghosts` holds the live ones (a hash that came back is removed from it, and its
    /// place in `ghost` is dropped when it comes to the front).
    ghost: VecDeque<(u64, u64)>,
    ghosts: HashMap<u64, u64>,
    ghosted: u64,
    /// Entries in the bucket, as admitted and forgotten.
    resident: usize,
}

/// What [`Bound::evict`] removed: the key and its entry.
pub(crate) type Evicted<K, V> = (K, Entry<V>);

impl<K: Eq + Hash + Clone> Bound<K> {
    pub(crate) fn new(max: usize) -> Self {
        Bound {
            max,
            small_max: (max / 10).max(1),
            queues: Mutex::new(Queues {
                small: VecDeque::new(),
                main: VecDeque::new(),
                ghost: VecDeque::new(),
                ghosts: HashMap::new(),
                ghosted: 0,
                resident: 0,
            }),
            hasher: Hasher::default(),
        }
    }

    /// Notes a key just inserted as admission `id` (its entry carries it). Called without a
    /// lock on the map's shards.
    pub(crate) fn admit<V>(&self, key: K, id: u64, map: &Map<K, V>) {
        let hash = self.hasher.hash_one(&key);
        let mut q = self.queues.lock();
        q.resident += 1;
        if q.ghosts.remove(&hash).is_some() {
            // Back after it was evicted as a one-timer: it is read again, so it is not one.
            q.main.push_back((key, id));
        } else {
            q.small.push_back((key, id));
        }
        // Keys removed otherwise than by eviction stay queued until they are met: drop them
        // once the queues hold twice what the bucket may.
        if q.small.len() + q.main.len() > 2 * self.max + 1024 {
            let live = |(k, id): &(K, u64)| map.get(k).is_some_and(|e| e.meta.id() == *id);
            q.small.retain(live);
            q.main.retain(live);
        }
    }

    /// The most entries the bucket may hold.
    pub(crate) fn max(&self) -> usize {
        self.max
    }

    /// Notes that an entry left the bucket otherwise than by [`evict`](Self::evict).
    pub(crate) fn forget(&self) {
        let mut q = self.queues.lock();
        q.resident = q.resident.saturating_sub(1);
    }

    /// Starts over from the whole contents of `map` (a restore, a bulk swap): every entry gets
    /// admission `id`. `kept` tells the keys that were in the bucket before (they go to the
    /// main queue, with the reads they had; new ones to the small queue).
    pub(crate) fn rebuild<V>(&self, map: &Map<K, V>, id: u64, kept: impl Fn(&K) -> bool) {
        let mut q = self.queues.lock();
        q.small.clear();
        q.main.clear();
        q.resident = 0;
        for e in map.iter() {
            e.value().meta.set_id(id);
            let queued = (e.key().clone(), id);
            if kept(e.key()) {
                q.main.push_back(queued);
            } else {
                q.small.push_back(queued);
            }
            q.resident += 1;
        }
    }

    /// Removes one entry from `map` if the bucket holds more than the bound less `reserve`
    /// (room kept for what else counts against it), and returns it: the next S3-FIFO victim.
    /// An entry past its expiry at `now` met on the way is the victim at once. The caller
    /// holds the bucket's write gate; the removal is reported to `record` under the victim's
    /// lock.
    pub(crate) fn evict<V>(
        &self,
        map: &Map<K, V>,
        reserve: usize,
        now: u64,
        record: &impl Record<K, V>,
    ) -> Option<Evicted<K, V>> {
        let max = self.max.saturating_sub(reserve).max(1);
        let mut q = self.queues.lock();
        while q.resident > max {
            let from_small = q.small.len() >= self.small_max || q.main.is_empty();
            let Some((key, id)) = (if from_small {
                q.small.pop_front()
            } else {
                q.main.pop_front()
            }) else {
                // Nothing queued is left: the count went astray (it cannot, but a bound that
                // stops evicting is better than a loop that never ends).
                tracing::error!(
                    resident = q.resident,
                    "the bound's queues are empty; eviction stops"
                );
                q.resident = map.len();
                return None;
            };
            let freq = match map.get(&key) {
                Some(e) if e.meta.id() == id => {
                    if e.expired(now) {
                        0
                    } else {
                        let freq = e.meta.freq();
                        if freq > 0 && !from_small {
                            e.meta.cool();
                        }
                        freq
                    }
                }
                // Removed, or removed and admitted again: not this queue entry's any more.
                _ => continue,
            };
            if freq > 0 {
                // Read while queued: small → main, or once more round main.
                q.main.push_back((key, id));
                continue;
            }
            let victim = |k: &K, e: &Entry<V>| {
                let ours = e.meta.id() == id;
                if ours {
                    let cause = if e.expired(now) {
                        RemovalCause::Expired
                    } else {
                        RemovalCause::Evicted
                    };
                    record.removed(k, &e.value, cause);
                }
                ours
            };
            let Some(removed) = map.remove_if(&key, victim) else {
                continue;
            };
            q.resident -= 1;
            if from_small {
                let hash = self.hasher.hash_one(&removed.0);
                q.ghosted += 1;
                let seq = q.ghosted;
                q.ghost.push_back((hash, seq));
                q.ghosts.insert(hash, seq);
                // As many as the main queue holds.
                let ghost_max = (self.max - self.small_max.min(self.max)).max(1);
                while q.ghost.len() > ghost_max {
                    let Some((old, seq)) = q.ghost.pop_front() else {
                        break;
                    };
                    if q.ghosts.get(&old) == Some(&seq) {
                        q.ghosts.remove(&old);
                    }
                }
            }
            return Some(removed);
        }
        None
    }
}
