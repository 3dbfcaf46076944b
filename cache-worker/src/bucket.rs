//! The bucket: a concurrent map whose whole contents can be replaced at once.
//!
//! Readers load the current map through an [`ArcSwap`] and look up one key: no lock is shared
//! between readers, and a bulk reload swaps the map in one step, so readers see the old or the
//! new collection, never a mix. Writers share a gate that a bulk swap takes alone, so no write
//! lands in a map that is being replaced; the gate is striped by thread, so that writers on
//! different threads share no cache line in it.
//!
//! Every write reports what it did to a [`Record`] while it still holds its key's lock: what
//! is recorded of the writes of one key (their versions, their events) follows their order.
//!
//! An entry past its expiry is gone for readers at once, whether or not the refresher's timer
//! has removed it yet: reads skip it, and a write to its key reports the expiry first.

use std::borrow::Borrow;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hash};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};

use arc_swap::ArcSwap;
use crossbeam_utils::CachePadded;
use dashmap::DashMap;
use dashmap::mapref::entry::Entry as MapEntry;
use dashmap::mapref::multiple::RefMulti;
use parking_lot::{Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::bound::{Bound, Evicted, Meta};
use crate::clock::Clock;
use crate::events::RemovalCause;
use crate::prefetch::prefetch_serialized;

/// The hasher of the bucket: foldhash, seeded per process.
///
/// Fast on short keys; its per-process random seed makes precomputed hash-flooding inputs
/// useless, though it is not a cryptographic defence against an attacker who can time lookups.
pub(crate) type Hasher = foldhash::fast::RandomState;

/// `expires_at` of an entry that never expires.
pub(crate) const NEVER: u64 = u64::MAX;

/// How many entries ahead of the one it copies [`Bucket::keys`] prefetches a key.
const KEYS_AHEAD: usize = 8;

/// How many stripes the writers' gate has: a thread takes the one of its counter stripe.
const GATE_STRIPES: usize = 16;

/// What the bucket's writes report, each while it holds the lock of its key: so what is
/// recorded follows the order of the writes of each key. A bulk swap reports its changes
/// with the gate held alone, so no single write is recorded among them.
pub(crate) trait Record<K, V> {
    /// `value` was stored for `key`; `change` is what that did.
    fn stored(&self, key: &K, value: &Arc<V>, change: &Change<V>);
    /// `key`'s entry, holding `value`, is removed for `cause`.
    fn removed(&self, key: &K, value: &Arc<V>, cause: RemovalCause);
}

/// The gate writers share and a bulk swap takes alone: one lock per stripe; a writer takes
/// its thread's, a swap every one (in order, so two swaps do not deadlock).
struct Gate([CachePadded<RwLock<()>>; GATE_STRIPES]);

impl Gate {
    fn new() -> Self {
        Gate(std::array::from_fn(|_| CachePadded::new(RwLock::new(()))))
    }

    #[inline]
    fn shared(&self) -> RwLockReadGuard<'_, ()> {
        self.0[crate::stats::stripe() % GATE_STRIPES].read()
    }

    fn exclusive(&self) -> [RwLockWriteGuard<'_, ()>; GATE_STRIPES] {
        std::array::from_fn(|i| self.0[i].write())
    }
}

/// Every write of a bucket held off, until it is dropped (see [`Bucket::hold_writes`]).
pub(crate) struct WritesHeld<'a>(#[allow(dead_code)] [RwLockWriteGuard<'a, ()>; GATE_STRIPES]);

/// One value and when it was loaded (milliseconds since the Unix epoch, from the worker's clock).
pub(crate) struct Entry<V> {
    pub(crate) value: Arc<V>,
    pub(crate) loaded_at: u64,
    pub(crate) expires_at: u64,
    /// Which write stored it: the bucket's write count at that write. Every write takes a new
    /// one, even of a value equal to the stored one (which keeps the stored `Arc`), so a reload
    /// can tell that its key was written while it ran. Not kept in dumps: restored entries have
    /// 0, older than any write of this run.
    pub(crate) stamp: u64,
    /// The bound's reads and admission of the key (only a bounded bucket keeps them).
    pub(crate) meta: Meta,
}

impl<V> Entry<V> {
    /// Whether the entry is past its expiry at `now`.
    #[inline]
    pub(crate) fn expired(&self, now: u64) -> bool {
        self.expires_at <= now
    }
}

impl<V> Clone for Entry<V> {
    fn clone(&self) -> Self {
        Entry {
            value: self.value.clone(),
            loaded_at: self.loaded_at,
            expires_at: self.expires_at,
            stamp: self.stamp,
            meta: self.meta.clone(),
        }
    }
}

pub(crate) type Map<K, V> = DashMap<K, Entry<V>, Hasher>;

/// How many shards (each with its own lock) a bucket's map has. DashMap's default is four per
/// core (8 here); a write holds its shard's lock while it takes its version and queues its
/// change, so with few shards two writers meet on one lock often enough to park there. Reads
/// cost the same with any number.
const SHARDS: usize = 64;

/// An empty map with room for `capacity` entries.
pub(crate) fn new_map<K: Eq + std::hash::Hash, V>(capacity: usize) -> Map<K, V> {
    Map::with_capacity_and_hasher_and_shard_amount(capacity, Hasher::default(), SHARDS)
}

/// What a write did to the bucket.
pub(crate) enum Change<V> {
    Inserted,
    Updated {
        previous: Arc<V>,
    },
    /// The value equals the stored one: only the load time moved.
    Unchanged,
    /// The key held an entry past its expiry that the refresher had not removed yet: it expired,
    /// then the new value was inserted.
    AfterExpiry {
        expired: Arc<V>,
    },
}

/// The difference a bulk replacement made.
pub(crate) struct Diff<K, V> {
    pub(crate) changes: Vec<(K, Arc<V>, Change<V>)>,
    pub(crate) removed: Vec<(K, Arc<V>, RemovalCause)>,
}

/// A bulk load in flight: the bucket notes every removal from here on, so that the swap can
/// tell the keys written or removed after the load began (they keep what those writes made).
/// Dropping it, swapped or not, stops the noting once no other bulk load runs.
pub(crate) struct BulkLoad<'a, K, V> {
    bucket: &'a Bucket<K, V>,
    /// The write count when the load began: entries and removals stamped after it are newer
    /// than anything the load read.
    began: u64,
}

impl<K, V> Drop for BulkLoad<'_, K, V> {
    fn drop(&mut self) {
        if self.bucket.bulk_loads.fetch_sub(1, SeqCst) == 1 {
            self.bucket.removals.lock().clear();
        }
    }
}

pub(crate) struct Bucket<K, V> {
    map: ArcSwap<Map<K, V>>,
    writers: Gate,
    clock: Clock,
    /// Writes so far; each one stamps what it stores with the next number.
    writes: AtomicU64,
    /// Bulk loads in flight; while there is one, removals are noted in `removals`.
    bulk_loads: AtomicUsize,
    /// Keys removed (or invalidated while absent) during a bulk load: the hash of the key and
    /// the stamp of its last removal. A hash, not the key, because `invalidate` takes a
    /// borrowed key; two keys of one hash only make a bulk swap leave one more key to the next
    /// reload.
    removals: Mutex<HashMap<u64, u64>>,
    /// Hashes the keys in `removals`: one seed for the bucket's life, whatever map is current.
    removal_hasher: Hasher,
    /// The eviction policy of a bounded bucket (`max_entries`).
    bound: Option<Bound<K>>,
}

impl<K: Eq + Hash + Clone, V: PartialEq> Bucket<K, V> {
    pub(crate) fn new(clock: Clock, max_entries: Option<usize>) -> Self {
        Bucket {
            bound: max_entries.map(Bound::new),
            map: ArcSwap::from_pointee(new_map(0)),
            writers: Gate::new(),
            clock,
            writes: AtomicU64::new(0),
            bulk_loads: AtomicUsize::new(0),
            removals: Mutex::new(HashMap::new()),
            removal_hasher: Hasher::default(),
        }
    }

    fn stamp(&self) -> u64 {
        self.writes.fetch_add(1, SeqCst) + 1
    }

    /// Whether `entry` is past its expiry now. Entries that never expire cost one comparison;
    /// only expiring ones read the clock.
    #[inline]
    fn expired_now(&self, entry: &Entry<V>) -> bool {
        entry.expires_at != NEVER && entry.expired(self.clock.now_ms())
    }

    /// Notes a removal of `key`, with a stamp of its own, while a bulk load runs.
    fn note_removal<Q: Hash + ?Sized>(&self, key: &Q) {
        if self.bulk_loads.load(SeqCst) > 0 {
            let hash = self.removal_hasher.hash_one(key);
            let stamp = self.stamp();
            self.removals.lock().insert(hash, stamp);
        }
    }

    /// Replaces the contents without a diff (restoring a dump before anyone reads, or a
    /// follower's copy from its shared store), and runs `then` before any write can follow.
    pub(crate) fn restore(&self, map: Map<K, V>, then: impl FnOnce()) {
        let _gate = self.writers.exclusive();
        if let Some(bound) = &self.bound {
            bound.rebuild(&map, self.stamp(), |_| true);
        }
        self.map.store(Arc::new(map));
        then();
    }

    /// Holds every write off while it lives (readers go on).
    pub(crate) fn hold_writes(&self) -> WritesHeld<'_> {
        WritesHeld(self.writers.exclusive())
    }

    /// The bound, if the bucket has one.
    pub(crate) fn bound(&self) -> Option<&Bound<K>> {
        self.bound.as_ref()
    }

    /// Evicts one entry if the bucket holds more than its bound less `reserve` (see
    /// [`Bound::evict`]).
    pub(crate) fn evict_one(
        &self,
        reserve: usize,
        now: u64,
        record: &impl Record<K, V>,
    ) -> Option<Evicted<K, V>> {
        let bound = self.bound.as_ref()?;
        let _gate = self.writers.shared();
        let map = self.map.load();
        let evicted = bound.evict(&map, reserve, now, record)?;
        self.note_removal(&evicted.0);
        Some(evicted)
    }

    /// Notes a key inserted with `stamp` for the bound, if there is one.
    fn admit(&self, key: Option<K>, stamp: u64, map: &Map<K, V>) {
        if let (Some(bound), Some(key)) = (&self.bound, key) {
            bound.admit(key, stamp, map);
        }
    }

    /// A copy of the key for the bound to queue, if there is one.
    fn for_bound(&self, key: &K) -> Option<K> {
        self.bound.as_ref().map(|_| key.clone())
    }

    /// Notes a removal for the bound, if there is one.
    fn forget<T>(&self, removed: Option<T>) -> Option<T> {
        if removed.is_some()
            && let Some(bound) = &self.bound
        {
            bound.forget();
        }
        removed
    }

    /// The value of `key`, unless it is absent or past its expiry.
    #[inline]
    pub(crate) fn peek<Q>(&self, key: &Q) -> Option<Arc<V>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let map = self.map.load();
        let entry = map.get(key)?;
        if self.expired_now(&entry) {
            return None;
        }
        if self.bound.is_some() {
            entry.meta.touch();
        }
        Some(entry.value.clone())
    }

    /// The stored entry, expired or not (the refresher's view).
    pub(crate) fn entry<Q>(&self, key: &Q) -> Option<Entry<V>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.map.load().get(key).map(|e| e.clone())
    }

    /// The stored key and entry, expired or not.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn entry_with_key<Q>(&self, key: &Q) -> Option<(K, Entry<V>)>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.map
            .load()
            .get(key)
            .map(|e| (e.key().clone(), e.value().clone()))
    }

    /// The stamp of the key's entry, unless it is absent or past its expiry: the basis a reload
    /// compares with before it stores.
    pub(crate) fn stamp_of(&self, key: &K) -> Option<u64> {
        let map = self.map.load();
        let entry = map.get(key)?;
        (!self.expired_now(&entry)).then_some(entry.stamp)
    }

    /// How many entries are stored, counting any past their expiry that the refresher has not
    /// removed yet.
    pub(crate) fn len(&self) -> usize {
        self.map.load().len()
    }

    /// The keys of the entries that have not expired.
    ///
    /// The map is visited in hash order, so every key's own buffer (a `String`'s bytes) is a
    /// cache miss: each is prefetched [`KEYS_AHEAD`] entries before it is cloned. A refresh
    /// cycle starts no load before this returns.
    pub(crate) fn keys(&self) -> Vec<K>
    where
        K: serde::Serialize,
    {
        let map = self.map.load();
        let mut keys = Vec::with_capacity(map.len());
        let mut take = |e: &RefMulti<'_, K, Entry<V>>| {
            if !self.expired_now(e.value()) {
                keys.push(e.key().clone());
            }
        };
        let mut ahead = VecDeque::with_capacity(KEYS_AHEAD + 1);
        for e in map.iter() {
            prefetch_serialized(e.key());
            ahead.push_back(e);
            if ahead.len() > KEYS_AHEAD
                && let Some(e) = ahead.pop_front()
            {
                take(&e);
            }
        }
        ahead.iter().for_each(take);
        keys
    }

    /// Visits every entry in place, shard by shard, under each shard's read lock: `visit` must
    /// not write to the bucket.
    pub(crate) fn for_each(&self, mut visit: impl FnMut(&K, &Entry<V>)) {
        for e in self.map.load().iter() {
            visit(e.key(), e.value());
        }
    }

    /// The map as it is now; a bulk reload after this swaps in another and leaves it be.
    pub(crate) fn current(&self) -> Arc<Map<K, V>> {
        self.map.load_full()
    }

    /// Inserts or replaces; an equal value keeps the stored `Arc` and only moves the load time.
    pub(crate) fn store(
        &self,
        key: K,
        mut entry: Entry<V>,
        record: &impl Record<K, V>,
    ) -> Change<V> {
        let _gate = self.writers.shared();
        let map = self.map.load();
        let queued = self.for_bound(&key);
        let stamp = self.stamp();
        entry.stamp = stamp;
        match map.entry(key) {
            MapEntry::Occupied(mut o) => {
                let change = Self::replace(o.get_mut(), entry);
                record.stored(o.key(), &o.get().value, &change);
                return change;
            }
            MapEntry::Vacant(v) => {
                entry.meta = Meta::admitted(stamp);
                let stored = v.insert(entry);
                record.stored(stored.key(), &stored.value, &Change::Inserted);
            }
        }
        self.admit(queued, stamp, &map);
        Change::Inserted
    }

    /// Like [`store`](Self::store), but only if the key's entry is still the one of write
    /// `basis`, the one a reload started from, and has not expired: a reload must not bring
    /// back a key that was removed or expired while it ran, nor overwrite a write made while
    /// it ran (even of an equal value).
    pub(crate) fn store_existing(
        &self,
        key: &K,
        mut entry: Entry<V>,
        basis: u64,
        record: &impl Record<K, V>,
    ) -> Option<Change<V>> {
        let _gate = self.writers.shared();
        let map = self.map.load();
        let mut slot = map.get_mut(key)?;
        if slot.stamp != basis || slot.expired(entry.loaded_at) {
            return None;
        }
        entry.stamp = self.stamp();
        let change = Self::replace(&mut slot, entry);
        record.stored(slot.key(), &slot.value, &change);
        Some(change)
    }

    /// Inserts only if the key is absent (or past its expiry) and `stale` is not set when its
    /// lock is taken: a load that began on a miss must not overwrite a value written while it
    /// ran, nor store after an invalidate of its key (which sets `stale` before it removes).
    pub(crate) fn store_vacant(
        &self,
        key: K,
        mut entry: Entry<V>,
        stale: &AtomicBool,
        record: &impl Record<K, V>,
    ) -> Option<Change<V>> {
        let _gate = self.writers.shared();
        let map = self.map.load();
        let queued = self.for_bound(&key);
        let slot = map.entry(key);
        if stale.load(SeqCst) {
            return None;
        }
        let stamp = match slot {
            MapEntry::Occupied(mut o) if o.get().expired(entry.loaded_at) => {
                entry.stamp = self.stamp();
                let change = Self::replace(o.get_mut(), entry);
                record.stored(o.key(), &o.get().value, &change);
                return Some(change);
            }
            MapEntry::Occupied(_) => return None,
            MapEntry::Vacant(v) => {
                entry.stamp = self.stamp();
                entry.meta = Meta::admitted(entry.stamp);
                let stamp = entry.stamp;
                let stored = v.insert(entry);
                record.stored(stored.key(), &stored.value, &Change::Inserted);
                stamp
            }
        };
        self.admit(queued, stamp, &map);
        Some(Change::Inserted)
    }

    /// Runs `then` with the key's lock held if the key is absent or past its expiry at `now`:
    /// no write of the key comes between what it finds and what `then` does.
    pub(crate) fn if_vacant(&self, key: K, now: u64, then: impl FnOnce(K)) {
        let map = self.map.load();
        match map.entry(key) {
            MapEntry::Occupied(o) if o.get().expired(now) => then(o.key().clone()),
            MapEntry::Occupied(_) => {}
            MapEntry::Vacant(v) => then(v.into_key()),
        }
    }

    /// Removes the entry if it is still the one of write `basis` and has not expired by `now`
    /// (see [`store_existing`](Self::store_existing)).
    pub(crate) fn remove_same(
        &self,
        key: &K,
        basis: u64,
        now: u64,
        record: &impl Record<K, V>,
    ) -> Option<(K, Entry<V>)> {
        self.remove_if(
            key,
            |e| (e.stamp == basis && !e.expired(now)).then_some(RemovalCause::Gone),
            record,
        )
    }

    /// Replaces the entry in `slot` (its stamp already set): an expired one is reported as
    /// such, an equal value keeps the stored `Arc`.
    fn replace(slot: &mut Entry<V>, mut entry: Entry<V>) -> Change<V> {
        // The same admission of the key, with the reads it had.
        entry.meta = slot.meta.clone();
        if slot.expired(entry.loaded_at) {
            let expired = std::mem::replace(slot, entry).value;
            Change::AfterExpiry { expired }
        } else if *slot.value == *entry.value {
            entry.value = slot.value.clone();
            *slot = entry;
            Change::Unchanged
        } else {
            let previous = std::mem::replace(slot, entry).value;
            Change::Updated { previous }
        }
    }

    /// Removes the key whatever it holds (an invalidate), for the cause `cause` gives its
    /// entry. Noted for a bulk load in flight even when the key is absent: the load may have
    /// read it before the change the invalidate announces.
    pub(crate) fn remove<Q>(
        &self,
        key: &Q,
        cause: impl FnOnce(&Entry<V>) -> RemovalCause,
        record: &impl Record<K, V>,
    ) -> Option<(K, Entry<V>)>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let _gate = self.writers.shared();
        let map = self.map.load();
        let removed = self.forget(map.remove_if(key, |k, e| {
            record.removed(k, &e.value, cause(e));
            true
        }));
        self.note_removal(key);
        removed
    }

    /// Removes the entry if its expiry is at or before `now`.
    pub(crate) fn remove_expired(
        &self,
        key: &K,
        now: u64,
        record: &impl Record<K, V>,
    ) -> Option<Entry<V>> {
        self.remove_if(
            key,
            |e| e.expired(now).then_some(RemovalCause::Expired),
            record,
        )
        .map(|(_, e)| e)
    }

    /// Removes the entry if `cause` gives it a cause.
    fn remove_if(
        &self,
        key: &K,
        cause: impl FnOnce(&Entry<V>) -> Option<RemovalCause>,
        record: &impl Record<K, V>,
    ) -> Option<(K, Entry<V>)> {
        let _gate = self.writers.shared();
        let map = self.map.load();
        let removed = self.forget(map.remove_if(key, |k, e| match cause(e) {
            Some(cause) => {
                record.removed(k, &e.value, cause);
                true
            }
            None => false,
        }))?;
        self.note_removal(key);
        Some(removed)
    }

    /// Marks the start of a bulk load: its swap must know what was written after it began.
    pub(crate) fn bulk_load(&self) -> BulkLoad<'_, K, V> {
        self.bulk_loads.fetch_add(1, SeqCst);
        BulkLoad {
            bucket: self,
            began: self.writes.load(SeqCst),
        }
    }

    /// Replaces the whole contents in one step with a collection that `load` read, and returns
    /// what changed. Values equal to the stored ones keep their `Arc`. If the collection names
    /// a key twice, the first one wins.
    ///
    /// A key written or removed after the load began keeps what that write made: the
    /// collection is older than it. Entries past their expiry at `now` are reported expired.
    /// Every change is reported to `record` before any other write can follow.
    pub(crate) fn replace_all(
        &self,
        load: BulkLoad<'_, K, V>,
        entries: Vec<(K, Entry<V>)>,
        now: u64,
        record: &impl Record<K, V>,
    ) -> Diff<K, V> {
        let gate = self.writers.exclusive();
        let began = load.began;
        let old = self.map.load_full();
        let removals = self.removals.lock();
        let removed_since = |key: &K| {
            !removals.is_empty()
                && removals
                    .get(&self.removal_hasher.hash_one(key))
                    .is_some_and(|&stamp| stamp > began)
        };
        let stamp = self.stamp();
        // A bounded bucket takes no more of the collection than its bound: the keys it holds
        // first, then new ones while there is room. The rest never enter (a read of one
        // loads it), so a collection larger than the bound does not churn through it.
        let (entries, room) = match &self.bound {
            Some(bound) if entries.len() > bound.max() => {
                let (mut held, new): (Vec<_>, Vec<_>) = entries
                    .into_iter()
                    .partition(|(key, _)| old.contains_key(key));
                held.extend(new);
                (held, bound.max())
            }
            _ => (entries, usize::MAX),
        };
        let new = new_map(entries.len().min(room));
        let mut changes = Vec::new();
        for (key, mut entry) in entries {
            if new.contains_key(&key) {
                continue;
            }
            let prev = old.get(&key);
            if prev.is_none() && new.len() >= room {
                continue;
            }
            let change = match &prev {
                // Written after the load began: kept as it is, below.
                Some(prev) if prev.stamp > began => continue,
                None if removed_since(&key) => continue,
                Some(prev) if prev.expired(now) => Change::AfterExpiry {
                    expired: prev.value.clone(),
                },
                Some(prev) if *prev.value == *entry.value => {
                    entry.value = prev.value.clone();
                    Change::Unchanged
                }
                Some(prev) => Change::Updated {
                    previous: prev.value.clone(),
                },
                None => Change::Inserted,
            };
            if let Some(prev) = &prev {
                entry.meta = prev.meta.clone();
            }
            drop(prev);
            entry.stamp = stamp;
            let value = entry.value.clone();
            new.insert(key.clone(), entry);
            changes.push((key, value, change));
        }
        drop(removals);
        let mut removed = Vec::new();
        for e in old.iter() {
            if new.contains_key(e.key()) {
                continue;
            }
            if e.stamp > began {
                new.insert(e.key().clone(), e.value().clone());
                continue;
            }
            let cause = if e.expired(now) {
                RemovalCause::Expired
            } else {
                RemovalCause::Gone
            };
            removed.push((e.key().clone(), e.value.clone(), cause));
        }
        if let Some(bound) = &self.bound {
            bound.rebuild(&new, stamp, |key| old.contains_key(key));
        }
        self.map.store(Arc::new(new));
        for (key, value, change) in &changes {
            record.stored(key, value, change);
        }
        for (key, value, cause) in &removed {
            record.removed(key, value, *cause);
        }
        drop(gate);
        drop(load);
        Diff { changes, removed }
    }
}
