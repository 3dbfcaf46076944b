//! How a worker uses its [`Store`](super::Store): the warm start from it, and the writer that
//! sends it each batch of changes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use tokio::sync::Notify;

use super::{Batch, BucketId, DynStore, Snapshot, Stored, Written};
use crate::CacheWorker;
use crate::bucket::{Entry, Map, NEVER, new_map};
use crate::codec::DumpVersion;
use crate::inner::{Inner, Key, Value};
use crate::start::StartKind;
use crate::stats::bump;

/// A worker's store and what the worker knows of it.
pub(crate) struct Persisting<K, V> {
    pub(crate) store: Arc<dyn DynStore<K, V>>,
    pub(crate) id: BucketId,
    /// Set by every change, cleared by the writer when it takes a batch.
    pub(crate) dirty: AtomicBool,
    pub(crate) wanted: Notify,
    /// The version the store holds, as far as this run knows: the next batch holds the changes
    /// after it. `None` before the first write and after a failed one: the next is a snapshot.
    pub(crate) written: parking_lot::Mutex<Option<u64>>,
    /// One write at a time, in version order.
    pub(crate) writing: tokio::sync::Mutex<()>,
    /// Failed writes in a row, for the retry delay.
    failures: parking_lot::Mutex<u32>,
}

impl<K, V> Persisting<K, V> {
    pub(crate) fn new(store: Arc<dyn DynStore<K, V>>, id: BucketId) -> Self {
        Persisting {
            store,
            id,
            dirty: AtomicBool::new(false),
            wanted: Notify::new(),
            written: parking_lot::Mutex::new(None),
            writing: tokio::sync::Mutex::new(()),
            failures: parking_lot::Mutex::new(0),
        }
    }

    pub(crate) fn mark_dirty(&self) {
        self.dirty.store(true, Ordering::Release);
        self.wanted.notify_one();
    }
}

/// The entry of a stored one, as the bucket keeps it.
pub(crate) fn entry<V>(stored: Stored<V>) -> Entry<V> {
    Entry {
        value: stored.value,
        loaded_at: stored.loaded_at_ms,
        expires_at: stored.expires_at_ms.unwrap_or(NEVER),
        stamp: 0,
        meta: crate::bound::Meta::new(),
    }
}

/// A bucket entry as a store keeps it.
pub(crate) fn stored<V>(entry: &Entry<V>) -> Stored<V> {
    Stored {
        value: entry.value.clone(),
        loaded_at_ms: entry.loaded_at,
        expires_at_ms: (entry.expires_at != NEVER).then_some(entry.expires_at),
    }
}

/// Restores the bucket from its store, if it has one that holds live entries; `None` sends the
/// start on to the dump file (or a cold start).
pub(crate) async fn restore<W: CacheWorker>(inner: &Inner<W>) -> Option<StartKind> {
    let persisting = inner.store.as_ref()?;
    let bucket = inner.bucket_name();
    let started = Instant::now();
    let loaded = persisting.store.load(&persisting.id).await;
    let store = persisting.store.describe();
    let snapshot = match loaded {
        Ok(Some(snapshot)) => snapshot,
        Ok(None) => {
            tracing::info!(bucket, store, "the store holds nothing for this bucket");
            return None;
        }
        Err(error) => {
            tracing::warn!(bucket, store, %error, "could not load from the store; starting without it");
            return None;
        }
    };
    let (restored, expired) = restore_snapshot(inner, snapshot);
    if restored == 0 {
        tracing::info!(bucket, store, expired, "the store holds no live entry");
        return None;
    }
    tracing::info!(bucket, store, entries = restored, expired, elapsed = ?started.elapsed(), "warm start from the store");
    Some(StartKind::Warm { restored, expired })
}

/// How many parts, each on a thread of its own, `n` entries from a store are decoded or
/// inserted in: one per core, with at least 16 384 entries each.
pub(crate) fn parts_for(n: usize) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (n / 16_384).clamp(1, cores)
}

/// Puts a snapshot's live entries in the bucket (before anyone reads) and goes on from its
/// version; returns how many were restored and how many had expired.
pub(crate) fn restore_snapshot<W: CacheWorker>(
    inner: &Inner<W>,
    snapshot: Snapshot<Key<W>, Value<W>>,
) -> (usize, usize) {
    let now = inner.clock.now_ms();
    let map = new_map(snapshot.entries.len());
    // A large snapshot fills the (concurrent) map from the cores there are.
    let mut entries = snapshot.entries;
    let parts = parts_for(entries.len());
    let per_part = entries.len().div_ceil(parts);
    let mut split = Vec::with_capacity(parts);
    while entries.len() > per_part {
        split.push(entries.split_off(entries.len() - per_part));
    }
    split.push(entries);
    let fill = |part: Vec<(Key<W>, Stored<Value<W>>)>| {
        let mut expired = Vec::new();
        for (key, stored) in part {
            let entry = entry(stored);
            if entry.expired(now) {
                expired.push((key, entry.value));
            } else {
                map.insert(key, entry);
            }
        }
        expired
    };
    let expired: Vec<_> = if split.len() == 1 {
        split.into_iter().flat_map(fill).collect()
    } else {
        std::thread::scope(|s| {
            let running: Vec<_> = split
                .into_iter()
                .map(|part| s.spawn(|| fill(part)))
                .collect();
            running
                .into_iter()
                .flat_map(|t| t.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                .collect()
        })
    };
    let restored = map.len();
    let count = expired.len();
    inner.bucket.restore(map, || {});
    let version = DumpVersion {
        version: snapshot.version.unwrap_or(0),
        exact: snapshot.exact && snapshot.version.is_some(),
    };
    if let Some(persisting) = &inner.store {
        // The store holds the bucket at that version: the next batch is the changes after it.
        *persisting.written.lock() = version.exact.then_some(version.version);
    }
    #[cfg(feature = "redis")]
    if inner.cluster.is_some() {
        // A shared bucket's versions are the cluster's: this copy is at the store's, and its
        // expired entries are the leader's to remove.
        inner.adopt_version(version.version, None);
        return (restored, count);
    }
    crate::dump::continue_versions(inner, version, expired);
    (restored, count)
}

/// What the store needs to be current: the changes since the version it holds, or the whole
/// bucket if that is unknown or no longer retained.
pub(crate) fn batch<W: CacheWorker>(
    inner: &Inner<W>,
    written: Option<u64>,
) -> Batch<Key<W>, Value<W>> {
    if let Some(from) = written {
        let now = inner.clock.now_ms();
        let log = inner.log();
        // Copied out first: nothing that holds the log waits for a lock of the bucket.
        let records: Option<(u64, Vec<_>)> = log.records_since(from, now).map(|records| {
            let copied = records
                .map(|r| (r.version, r.key.clone(), r.value.clone(), r.at_ms))
                .collect();
            (log.version(), copied)
        });
        drop(log);
        if let Some((version, records)) = records {
            let map = inner.bucket.current();
            let changes = records
                .into_iter()
                .map(|(version, key, value, at_ms)| Written {
                    version,
                    entry: value.map(|value| stored_as(&map, &key, value, at_ms)),
                    key,
                })
                .collect();
            return Batch::Changes {
                from,
                version,
                changes,
            };
        }
    }
    let (version, entries) = inner.snapshot();
    let map = inner.bucket.current();
    let entries = entries
        .into_iter()
        .map(|(key, value)| {
            let stored = stored_as(&map, &key, value, inner.clock.now_ms());
            (key, stored)
        })
        .collect();
    Batch::Snapshot { version, entries }
}

/// `value` of `key` as a store keeps it: with the load time and expiry of the bucket's entry
/// if that entry still holds it; else (it changed again since, and a later change or the next
/// batch carries what it is now) loaded at `at_ms`, with no expiry.
fn stored_as<K: Eq + std::hash::Hash, V>(
    map: &Map<K, V>,
    key: &K,
    value: Arc<V>,
    at_ms: u64,
) -> Stored<V> {
    match map.get(key) {
        Some(e) if Arc::ptr_eq(&e.value, &value) => stored(&e),
        _ => Stored {
            value,
            loaded_at_ms: at_ms,
            expires_at_ms: None,
        },
    }
}

/// Writes what changed to the store now; a failure is logged, counted, and makes the next
/// write a snapshot, retried after the write delay (longer after each failure in a row).
pub(crate) async fn write<W: CacheWorker>(inner: &Inner<W>) -> Result<(), super::StoreError> {
    let Some(persisting) = &inner.store else {
        return Ok(());
    };
    let _one_at_a_time = persisting.writing.lock().await;
    persisting.dirty.store(false, Ordering::Release);
    let written = *persisting.written.lock();
    let batch = batch(inner, written);
    let version = batch.version();
    if written == Some(version) {
        return Ok(());
    }
    #[cfg(feature = "redis")]
    if matches!(&batch, Batch::Changes { changes, .. } if changes.is_empty())
        && persisting.store.shared().is_some()
    {
        // No change since the shared store's version, only this node's numbering moved on
        // (a take-over's jump to its clock). Redis moves its version only with a change, so
        // it stays at `written`, and the next batch goes on from there (the version log
        // answers for it as for this run's start).
        return Ok(());
    }
    let (kind, count) = match &batch {
        Batch::Snapshot { entries, .. } => ("snapshot", entries.len()),
        Batch::Changes { changes, .. } => ("changes", changes.len()),
    };
    let started = Instant::now();
    let bucket = inner.bucket_name();
    match persisting.store.write(&persisting.id, batch).await {
        Ok(()) => {
            bump(&inner.stats.store_writes);
            *persisting.written.lock() = Some(version);
            *persisting.failures.lock() = 0;
            tracing::debug!(bucket, kind, count, version, elapsed = ?started.elapsed(), "store written");
            Ok(())
        }
        Err(error) => {
            bump(&inner.stats.store_failures);
            *persisting.written.lock() = None;
            *persisting.failures.lock() += 1;
            persisting.mark_dirty();
            tracing::error!(bucket, store = persisting.store.describe(), %error, "store write failed; the next write sends a snapshot");
            Err(error)
        }
    }
}

/// Writes to the store after changes, at most once per write delay, until the worker stops.
pub(crate) fn spawn_writer<W: CacheWorker>(inner: Arc<Inner<W>>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let Some(persisting) = &inner.store else {
            return;
        };
        let delay = persisting
            .store
            .write_delay()
            .unwrap_or(inner.settings.dump_interval);
        let mut last: Option<tokio::time::Instant> = None;
        loop {
            tokio::select! {
                _ = persisting.wanted.notified() => {}
                _ = inner.cancel.cancelled() => return,
            }
            if let Some(at) = last {
                let failures = *persisting.failures.lock();
                let wait = if failures == 0 {
                    delay
                } else {
                    delay.max(inner.settings.retry_delay(failures))
                };
                // A store that wants every change at once (a shared one) skips the timer.
                if at + wait > tokio::time::Instant::now() {
                    tokio::select! {
                        _ = tokio::time::sleep_until(at + wait) => {}
                        _ = inner.cancel.cancelled() => return,
                    }
                }
            }
            if persisting.dirty.load(Ordering::Acquire) {
                let _ = write(&inner).await;
                last = Some(tokio::time::Instant::now());
            }
        }
    })
}

/// A new bucket's store, if it has one.
pub(crate) fn persisting<W: CacheWorker>(
    store: Option<Arc<dyn DynStore<Key<W>, Value<W>>>>,
    settings: &crate::Settings,
) -> Option<Persisting<Key<W>, Value<W>>> {
    store.map(|store| Persisting::new(store, BucketId::new(&*settings.bucket, settings.schema)))
}
