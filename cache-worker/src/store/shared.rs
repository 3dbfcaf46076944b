//! A bucket shared by several nodes through one store (feature `redis`): one node leads (it
//! refreshes, and its changes are the bucket's), the others follow (they apply the leader's
//! changes to their own map, with the leader's versions, and send their own writes to it).
//!
//! This is the node-side half, which knows the bucket and nothing of Redis: a node's role,
//! how a follower applies a change or a whole copy, and where its writes go instead of its map.

use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

use tokio::sync::mpsc;

use crate::CacheWorker;
use crate::bucket::{Change, Entry, Record, new_map};
use crate::events::{Event, RemovalCause};
use crate::inner::{Inner, Key, Source, Value};
use crate::refresh::Command;
use crate::versions::log::ChangeLog;

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
        if self.log().version() != prev || version <= prev {
            return false;
        }
        let now = self.clock.now_ms();
        let at = entry.as_ref().map_or(now, |e| e.loaded_at);
        let leader = FromLeader {
            inner: self,
            at,
            version,
            prev,
            in_order: Cell::new(true),
        };
        match entry {
            Some(entry) => {
                let value = entry.value.clone();
                let schedule = self.timed(&key, &value).then(|| key.clone());
                self.bucket.store(key, entry, &leader);
                if let Some(key) = schedule {
                    self.schedule(key);
                }
            }
            None => {
                if self
                    .bucket
                    .remove(&key, |_| RemovalCause::Gone, &leader)
                    .is_none()
                {
                    // Nothing here to remove: only the version moves.
                    let mut log = self.log();
                    if leader.next(&mut log) {
                        let _ = log.append(&key, None, None, now);
                    }
                }
            }
        }
        leader.in_order.get()
    }

    /// Replaces the whole bucket with a copy at `version` from the shared store, and goes on
    /// at that version. Subscribers get one [`Event::Resynced`].
    pub(crate) fn resync(&self, version: u64, entries: Vec<(Key<W>, Entry<Value<W>>)>) {
        let map = new_map(entries.len());
        for (key, entry) in entries {
            map.insert(key, entry);
        }
        let count = map.len();
        self.bucket.restore(map, || {
            let mut log = self.log();
            log.rebase(version, None);
            self.emit(|| Event::Resynced { count, version });
        });
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
        self.log().rebase(version, alias);
    }
}

/// What a follower records of a change the leader made at `version`, right after `prev`:
/// reported by the write, with the key's lock held, like a change of its own.
struct FromLeader<'a, W: CacheWorker> {
    inner: &'a Inner<W>,
    /// When the change was made (ms).
    at: u64,
    version: u64,
    prev: u64,
    /// Cleared if the log was no longer at `prev` when the change came to it.
    in_order: Cell<bool>,
}

impl<W: CacheWorker> FromLeader<'_, W> {
    /// Whether the log is at `prev`; it then goes on so that its next version is `version`
    /// (a new leader's first change goes on from its own clock).
    fn next(&self, log: &mut ChangeLog<Key<W>, Value<W>>) -> bool {
        if log.version() != self.prev {
            self.in_order.set(false);
            return false;
        }
        if self.version != self.prev + 1 {
            log.rebase(self.version - 1, Some(self.prev));
        }
        true
    }
}

impl<W: CacheWorker> Record<Key<W>, Value<W>> for FromLeader<'_, W> {
    fn stored(&self, key: &Key<W>, value: &Arc<Value<W>>, change: &Change<Value<W>>) {
        // Expiry is the leader's: the removal would have come as its own change.
        let updated;
        let change = match change {
            Change::AfterExpiry { expired } => {
                updated = Change::Updated {
                    previous: expired.clone(),
                };
                &updated
            }
            change => change,
        };
        self.inner.count_stored(key, change, Source::Remote);
        let mut log = self.inner.log();
        if !self.next(&mut log) {
            return;
        }
        if let Change::Unchanged = change {
            // Still the leader's version: this copy moves with it.
            let _ = log.append(key, Some(value.clone()), Some(value.clone()), self.at);
        }
        let displaced = self.inner.log_stored(&mut log, self.at, key, value, change);
        drop(log);
        drop(displaced);
        self.inner.mark_dirty();
    }

    fn removed(&self, key: &Key<W>, value: &Arc<Value<W>>, cause: RemovalCause) {
        self.inner.count_removed(key, cause);
        let mut log = self.inner.log();
        if self.next(&mut log) {
            let displaced = self.inner.log_removed(&mut log, self.at, key, value, cause);
            drop(log);
            drop(displaced);
            self.inner.mark_dirty();
        }
    }
}
