//! A bucket shared by several nodes through one store (feature `redis`): one node leads (it
//! refreshes, and its changes are the bucket's), the others follow (they apply the leader's
//! changes to their own map, with the leader's versions, and send their own writes to it).
//!
//! This is the node-side half, which knows the bucket and nothing of Redis: a node's role,
//! how a follower applies a change or a whole copy, and where its writes go instead of its map.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

use tokio::sync::mpsc;

use crate::CacheWorker;
use crate::bucket::{Change, Entry, Hasher, Map};
use crate::events::{Event, RemovalCause};
use crate::inner::{Inner, Key, Source, Value};
use crate::refresh::Command;

/// A write a follower sends to the leader instead of making it.
pub(crate) enum Forward<K, V> {
    /// `insert`, or a seed.
    Put { key: K, value: Arc<V> },
    /// A value this node loaded on a miss: stored by the leader unless the key has one.
    Loaded { key: K, value: Arc<V> },
    /// `invalidate`.
    Invalidate { key: K },
}

const FOLLOWING: u8 = 0;
const LEADING: u8 = 1;

/// A node's link to the other nodes of its bucket.
pub(crate) struct Link<K, V> {
    role: AtomicU8,
    /// When this node's last full refresh cycle finished (ms since the epoch; 0: none yet),
    /// for the next leader's schedule.
    last_cycle: AtomicU64,
    forward: mpsc::UnboundedSender<Forward<K, V>>,
    /// The other end, taken by the node's task.
    pub(crate) forwarded: parking_lot::Mutex<Option<mpsc::UnboundedReceiver<Forward<K, V>>>>,
}

impl<K, V> Link<K, V> {
    /// A node starts as a follower: it leads once it holds the lease.
    pub(crate) fn new() -> Self {
        let (forward, forwarded) = mpsc::unbounded_channel();
        Link {
            role: AtomicU8::new(FOLLOWING),
            last_cycle: AtomicU64::new(0),
            forward,
            forwarded: parking_lot::Mutex::new(Some(forwarded)),
        }
    }

    pub(crate) fn leading(&self) -> bool {
        self.role.load(Ordering::Acquire) == LEADING
    }

    pub(crate) fn set_leading(&self, leading: bool) {
        let role = if leading { LEADING } else { FOLLOWING };
        self.role.store(role, Ordering::Release);
    }

    pub(crate) fn last_cycle_ms(&self) -> u64 {
        self.last_cycle.load(Ordering::Relaxed)
    }

    pub(crate) fn cycle_finished(&self, at_ms: u64) {
        self.last_cycle.store(at_ms, Ordering::Relaxed);
    }

    /// Sends a write to the leader (through the node's task).
    pub(crate) fn forward(&self, write: Forward<K, V>) {
        // The task is gone only after shutdown, when writes no longer matter.
        let _ = self.forward.send(write);
    }
}

impl<W: CacheWorker> Inner<W> {
    /// The link of a follower: its writes go to the leader, not into its map.
    pub(crate) fn follower(&self) -> Option<&Link<Key<W>, Value<W>>> {
        self.cluster.as_ref().filter(|link| !link.leading())
    }

    /// Whether this node refreshes: it is alone, or it leads.
    pub(crate) fn refreshes(&self) -> bool {
        self.cluster.as_ref().is_none_or(|link| link.leading())
    }

    /// Applies a change the leader made at `version`, right after `prev`, as this node's own:
    /// the map, the version log (at the leader's version) and the events. `false` if this
    /// copy is not at `prev`: the caller must resync.
    pub(crate) fn apply_remote(
        &self,
        key: Key<W>,
        entry: Option<Entry<Value<W>>>,
        version: u64,
        prev: u64,
    ) -> bool {
        let now = self.clock.now_ms();
        let mut log = self.write_order.lock();
        if log.version() != prev || version <= prev {
            return false;
        }
        if version != prev + 1 {
            // A new leader's first change: it went on from its own clock.
            log.rebase(version - 1, Some(prev));
        }
        match entry {
            Some(entry) => {
                let value = entry.value.clone();
                let at = entry.loaded_at;
                let change = match self.bucket.store(key.clone(), entry) {
                    // Expiry is the leader's: the removal would have come as its own change.
                    Change::AfterExpiry { expired } => Change::Updated { previous: expired },
                    change => change,
                };
                if let Change::Unchanged = change {
                    // Still the leader's version: this copy moves with it.
                    log.append(&key, Some(value.clone()), Some(value.clone()), at);
                }
                self.after_change(
                    &mut log,
                    at,
                    key.clone(),
                    value.clone(),
                    change,
                    Source::Remote,
                );
                drop(log);
                self.schedule(&key, &value);
            }
            None => match self.bucket.remove(&key) {
                Some((key, old)) => {
                    self.after_remove(&mut log, now, key, old.value, RemovalCause::Gone);
                }
                None => {
                    // Nothing here to remove: only the version moves.
                    log.append(&key, None, None, now);
                }
            },
        }
        true
    }

    /// Replaces the whole bucket with a copy at `version` from the shared store, and goes on
    /// at that version. Subscribers get one [`Event::Resynced`].
    pub(crate) fn resync(&self, version: u64, entries: Vec<(Key<W>, Entry<Value<W>>)>) {
        let map = Map::with_capacity_and_hasher(entries.len(), Hasher::default());
        for (key, entry) in entries {
            map.insert(key, entry);
        }
        let count = map.len();
        let mut log = self.write_order.lock();
        self.bucket.restore(map);
        log.rebase(version, None);
        self.emit(|| Event::Resynced { count, version });
        drop(log);
        tracing::info!(
            bucket = self.bucket_name(),
            entries = count,
            version,
            "resynced from the shared store"
        );
        // Timers follow the new entries on the leader; a follower has none.
        let _ = self.commands.send(Command::Rebuild);
    }

    /// Moves this copy to `version` (the shared store's), keeping its entries: after a warm
    /// start from the store, whose entries are this copy.
    pub(crate) fn adopt_version(&self, version: u64, alias: Option<u64>) {
        self.write_order.lock().rebase(version, alias);
    }
}
