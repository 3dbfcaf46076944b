//! The bucket: a concurrent map whose whole contents can be replaced at once.
//!
//! Readers load the current map through an [`ArcSwap`] and look up one key: no lock is shared
//! between readers, and a bulk reload swaps the map in one step, so readers see the old or the
//! new collection, never a mix. Writers share a gate that a bulk swap takes alone, so no write
//! lands in a map that is being replaced.

use std::borrow::Borrow;
use std::hash::Hash;
use std::sync::Arc;

use arc_swap::ArcSwap;
use dashmap::DashMap;
use dashmap::mapref::entry::Entry as MapEntry;
use parking_lot::RwLock;

/// The hasher of the bucket: foldhash, seeded per process.
///
/// Fast on short keys; its per-process random seed makes precomputed hash-flooding inputs
/// useless, though it is not a cryptographic defence against an attacker who can time lookups.
pub(crate) type Hasher = foldhash::fast::RandomState;

/// `expires_at` of an entry that never expires.
pub(crate) const NEVER: u64 = u64::MAX;

/// One value and when it was loaded (milliseconds since the Unix epoch, from the worker's clock).
pub(crate) struct Entry<V> {
    pub(crate) value: Arc<V>,
    pub(crate) loaded_at: u64,
    pub(crate) expires_at: u64,
}

impl<V> Clone for Entry<V> {
    fn clone(&self) -> Self {
        Entry {
            value: self.value.clone(),
            loaded_at: self.loaded_at,
            expires_at: self.expires_at,
        }
    }
}

pub(crate) type Map<K, V> = DashMap<K, Entry<V>, Hasher>;

/// What a write did to the bucket.
pub(crate) enum Change<V> {
    Inserted,
    Updated {
        previous: Arc<V>,
    },
    /// The value equals the stored one: only the load time moved.
    Unchanged,
}

/// The difference a bulk replacement made.
pub(crate) struct Diff<K, V> {
    pub(crate) changes: Vec<(K, Arc<V>, Change<V>)>,
    pub(crate) removed: Vec<(K, Arc<V>)>,
}

pub(crate) struct Bucket<K, V> {
    map: ArcSwap<Map<K, V>>,
    writers: RwLock<()>,
}

impl<K: Eq + Hash + Clone, V: PartialEq> Bucket<K, V> {
    pub(crate) fn new() -> Self {
        Bucket {
            map: ArcSwap::from_pointee(Map::with_hasher(Hasher::default())),
            writers: RwLock::new(()),
        }
    }

    /// Replaces the contents without a diff (restoring a dump before anyone reads).
    pub(crate) fn restore(&self, map: Map<K, V>) {
        let _gate = self.writers.write();
        self.map.store(Arc::new(map));
    }

    #[inline]
    pub(crate) fn peek<Q>(&self, key: &Q) -> Option<Arc<V>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.map.load().get(key).map(|e| e.value.clone())
    }

    pub(crate) fn entry<Q>(&self, key: &Q) -> Option<Entry<V>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.map.load().get(key).map(|e| e.clone())
    }

    pub(crate) fn len(&self) -> usize {
        self.map.load().len()
    }

    pub(crate) fn keys(&self) -> Vec<K> {
        self.map.load().iter().map(|e| e.key().clone()).collect()
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
    pub(crate) fn store(&self, key: K, entry: Entry<V>) -> Change<V> {
        let _gate = self.writers.read();
        let map = self.map.load();
        match map.entry(key) {
            MapEntry::Occupied(mut o) => Self::replace(o.get_mut(), entry),
            MapEntry::Vacant(v) => {
                v.insert(entry);
                Change::Inserted
            }
        }
    }

    /// Like [`store`](Self::store), but only if the key still holds `basis`, the value a reload
    /// started from: a reload must not bring back a key that was removed while it ran, nor
    /// overwrite a value written while it ran.
    pub(crate) fn store_existing(
        &self,
        key: &K,
        entry: Entry<V>,
        basis: &Arc<V>,
    ) -> Option<Change<V>> {
        let _gate = self.writers.read();
        let map = self.map.load();
        let mut slot = map.get_mut(key)?;
        if !Arc::ptr_eq(&slot.value, basis) {
            return None;
        }
        Some(Self::replace(&mut slot, entry))
    }

    /// Inserts only if the key is absent: a load that began on a miss must not overwrite a
    /// value written while it ran.
    pub(crate) fn store_vacant(&self, key: K, entry: Entry<V>) -> Option<Change<V>> {
        let _gate = self.writers.read();
        let map = self.map.load();
        match map.entry(key) {
            MapEntry::Occupied(_) => None,
            MapEntry::Vacant(v) => {
                v.insert(entry);
                Some(Change::Inserted)
            }
        }
    }

    /// Removes the entry if it still holds `basis` (see [`store_existing`](Self::store_existing)).
    pub(crate) fn remove_same(&self, key: &K, basis: &Arc<V>) -> Option<(K, Entry<V>)> {
        let _gate = self.writers.read();
        self.map
            .load()
            .remove_if(key, |_, e| Arc::ptr_eq(&e.value, basis))
    }

    fn replace(slot: &mut Entry<V>, mut entry: Entry<V>) -> Change<V> {
        if *slot.value == *entry.value {
            entry.value = slot.value.clone();
            *slot = entry;
            Change::Unchanged
        } else {
            let previous = std::mem::replace(slot, entry).value;
            Change::Updated { previous }
        }
    }

    pub(crate) fn remove<Q>(&self, key: &Q) -> Option<(K, Entry<V>)>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let _gate = self.writers.read();
        self.map.load().remove(key)
    }

    /// Removes the entry if its expiry is at or before `now`.
    pub(crate) fn remove_expired(&self, key: &K, now: u64) -> Option<Entry<V>> {
        let _gate = self.writers.read();
        self.map
            .load()
            .remove_if(key, |_, e| e.expires_at <= now)
            .map(|(_, e)| e)
    }

    /// Replaces the whole contents in one step and returns what changed. Values equal to the
    /// stored ones keep their `Arc`. If the collection names a key twice, the first one wins.
    pub(crate) fn replace_all(&self, entries: Vec<(K, Entry<V>)>) -> Diff<K, V> {
        let gate = self.writers.write();
        let old = self.map.load_full();
        let new = Map::with_capacity_and_hasher(entries.len(), Hasher::default());
        let mut changes = Vec::new();
        for (key, mut entry) in entries {
            if new.contains_key(&key) {
                continue;
            }
            let change = match old.get(&key) {
                Some(prev) if *prev.value == *entry.value => {
                    entry.value = prev.value.clone();
                    Change::Unchanged
                }
                Some(prev) => Change::Updated {
                    previous: prev.value.clone(),
                },
                None => Change::Inserted,
            };
            let value = entry.value.clone();
            new.insert(key.clone(), entry);
            changes.push((key, value, change));
        }
        let removed = old
            .iter()
            .filter(|e| !new.contains_key(e.key()))
            .map(|e| (e.key().clone(), e.value.clone()))
            .collect();
        self.map.store(Arc::new(new));
        drop(gate);
        Diff { changes, removed }
    }
}
