//! Versions and delta sync: every change of a bucket gets the next version, and a client that
//! holds a copy at version `V` asks for what changed since.
//!
//! The retained changes live in [`log::ChangeLog`]: a write takes its change's version while
//! it holds its key's lock, and the log takes the changes in, and sends their events, in the
//! order of their versions ([`log::VersionLog`]), so versions, the log and the events follow
//! one order, that of each key's writes.

pub(crate) mod log;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use crate::CacheWorker;
use crate::bucket::NEVER;
use crate::inner::{Inner, Key, Value};

/// The answer of [`Worker::changes_since`](crate::Worker::changes_since): how a client at some
/// version brings its copy of the bucket to the current one.
#[derive(Debug, PartialEq)]
pub enum Changes<K, V> {
    /// The whole bucket at `version`: the client replaces its copy. Given when the client has
    /// no version, or one that the bucket cannot answer with a delta (older than what is
    /// retained, from before a cold start or another incarnation, or ahead of the bucket).
    Full {
        /// The version the entries are at.
        version: u64,
        /// Every entry that has not expired, in no particular order.
        entries: Vec<(K, Arc<V>)>,
    },
    /// What changed after version `from` up to `version`: at most one change per key (its
    /// last), in the order of their versions. Applied to a copy at `from`, it gives the bucket
    /// at `version`.
    Delta {
        /// The client's version.
        from: u64,
        /// The version the copy is at once the changes are applied.
        version: u64,
        /// The changes, merged.
        changes: Vec<Change<K, V>>,
    },
    /// The client is at the current version.
    NoChange {
        /// The current version.
        version: u64,
    },
}

impl<K, V> Changes<K, V> {
    /// The version a client is at once it has applied this answer.
    pub fn version(&self) -> u64 {
        match self {
            Changes::Full { version, .. }
            | Changes::Delta { version, .. }
            | Changes::NoChange { version } => *version,
        }
    }
}

/// One key's change in a [`Changes::Delta`].
#[derive(Debug, PartialEq)]
pub enum Change<K, V> {
    /// The key has this value now (it was inserted or updated).
    Put {
        /// The key.
        key: K,
        /// Its value now.
        value: Arc<V>,
    },
    /// The key is no longer in the bucket.
    Removed {
        /// The key.
        key: K,
    },
}

impl<K, V> Change<K, V> {
    /// The key that changed.
    pub fn key(&self) -> &K {
        match self {
            Change::Put { key, .. } | Change::Removed { key } => key,
        }
    }
}

// Not derived: values are shared through `Arc`, so `V` need not be `Clone`.
impl<K: Clone, V> Clone for Change<K, V> {
    fn clone(&self) -> Self {
        match self {
            Change::Put { key, value } => Change::Put {
                key: key.clone(),
                value: value.clone(),
            },
            Change::Removed { key } => Change::Removed { key: key.clone() },
        }
    }
}

impl<K: Clone, V> Clone for Changes<K, V> {
    fn clone(&self) -> Self {
        match self {
            Changes::Full { version, entries } => Changes::Full {
                version: *version,
                entries: entries.clone(),
            },
            Changes::Delta {
                from,
                version,
                changes,
            } => Changes::Delta {
                from: *from,
                version: *version,
                changes: changes.clone(),
            },
            Changes::NoChange { version } => Changes::NoChange { version: *version },
        }
    }
}

/// [`Changes`] as the worker computes them: a delta's changes keep the value a client at `from`
/// holds, so that the HTTP layer can send a patch against it.
pub(crate) enum Synced<K, V> {
    Full {
        version: u64,
        entries: Vec<(K, Arc<V>)>,
    },
    Delta {
        from: u64,
        version: u64,
        changes: Vec<log::Merged<K, V>>,
    },
    NoChange {
        version: u64,
    },
}

impl<K, V> From<Synced<K, V>> for Changes<K, V> {
    fn from(synced: Synced<K, V>) -> Self {
        match synced {
            Synced::Full { version, entries } => Changes::Full { version, entries },
            Synced::Delta {
                from,
                version,
                changes,
            } => Changes::Delta {
                from,
                version,
                changes: changes
                    .into_iter()
                    .map(|m| match m.value {
                        Some(value) => Change::Put { key: m.key, value },
                        None => Change::Removed { key: m.key },
                    })
                    .collect(),
            },
            Synced::NoChange { version } => Changes::NoChange { version },
        }
    }
}

/// The entries of a full snapshot.
type Entries<W> = Vec<(Key<W>, Arc<Value<W>>)>;

/// How many times a full snapshot is read with writes going on before it is read with them
/// held off (which makes writers wait for the whole read).
const SNAPSHOT_ATTEMPTS: usize = 3;

impl<W: CacheWorker> Inner<W> {
    /// The bucket's current version.
    pub(crate) fn current_version(&self) -> u64 {
        self.log.taken()
    }

    /// What a client at `since` needs to be at the current version.
    pub(crate) fn sync(&self, since: Option<u64>) -> Synced<Key<W>, Value<W>> {
        if let Some(since) = since {
            let now = self.clock.now_ms();
            let log = self.log();
            let version = log.version();
            if since == version {
                return Synced::NoChange { version };
            }
            if let Some(changes) = log.since(since, now) {
                return Synced::Delta {
                    from: since,
                    version,
                    changes,
                };
            }
        }
        let (version, entries) = self.snapshot();
        Synced::Full { version, entries }
    }

    /// Every live entry, and the version they are at.
    ///
    /// Read without blocking writers: every change up to the version read first is in the
    /// map (a change is versioned before its key's lock is let go), the walk may see some
    /// later ones, and the version read after it, from the log, counts every change it may
    /// have seen. The changes between the two, from the log,
    /// then bring every key the walk may have seen mid-change to its value at the second.
    /// Without them (not retained), the walk is retried, and at last made with writes held off.
    pub(crate) fn snapshot(&self) -> (u64, Entries<W>) {
        for _ in 0..SNAPSHOT_ATTEMPTS {
            let before = self.current_version();
            let mut entries = self.live_entries();
            let log = self.log();
            let version = log.version();
            if version == before {
                return (version, entries);
            }
            if let Some(changes) = log.since(before, self.clock.now_ms()) {
                drop(log);
                let changed: HashSet<&Key<W>> = changes.iter().map(|m| &m.key).collect();
                entries.retain(|(key, _)| !changed.contains(key));
                entries.extend(
                    changes
                        .iter()
                        .filter_map(|m| Some((m.key.clone(), m.value.clone()?))),
                );
                return (version, entries);
            }
        }
        // Writes held off (readers go on), so the version read is the walk's.
        let _writes = self.bucket.hold_writes();
        let version = self.log().version();
        (version, self.live_entries())
    }

    fn live_entries(&self) -> Entries<W> {
        let now = self.clock.now_ms();
        let mut entries = Vec::with_capacity(self.bucket.len());
        self.bucket.for_each(|key, entry| {
            if entry.expires_at == NEVER || !entry.expired(now) {
                entries.push((key.clone(), entry.value.clone()));
            }
        });
        entries
    }
}

/// Drops the changes older than `delta_ttl` from the log now and then, until the worker
/// stops. Queries never answer from a change older than that whether or not it has been
/// dropped yet: this only gives back the memory.
pub(crate) fn spawn_pruner<W: CacheWorker>(inner: Arc<Inner<W>>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if inner.settings.delta_threshold == 0 {
            return;
        }
        let period = (inner.settings.delta_ttl / 2).clamp(MIN_PRUNE_PERIOD, MAX_PRUNE_PERIOD);
        loop {
            tokio::select! {
                () = tokio::time::sleep(period) => {}
                () = inner.cancel.cancelled() => return,
            }
            let now = inner.clock.now_ms();
            inner.log.lock_as_is().prune(now);
        }
    })
}

const MIN_PRUNE_PERIOD: Duration = Duration::from_secs(1);
const MAX_PRUNE_PERIOD: Duration = Duration::from_secs(600);
