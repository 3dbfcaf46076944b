//! Stores without Redis, through the public API: a worker restarted over a `MemoryStore`, the
//! batches a store of the test's own is given (a snapshot first, then every change in version
//! order, unmerged), a store that fails its writes or its load, and `FileStore` both through
//! the builder and through the `Store` trait.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cache_worker::Error;
use cache_worker::store::{
    Batch, BucketId, FileStore, MemoryStore, Snapshot, Store, StoreError, Stored, Written,
};
use common::{
    Upstream, builder, contents, key, map, now_ms, on_disk, settle, temp_dump, until, write_dump,
};
use parking_lot::Mutex;

/// An upstream whose cold start seeds `pairs`.
fn seeded(pairs: &[(&str, u64)]) -> Upstream {
    Upstream::with_seed(Some(Ok(pairs.iter().map(|&(k, v)| (key(k), v)).collect())))
}

/// A write as [`Recording`] keeps it: its batch, and whether it failed.
type Attempt = (Batch<String, u64>, bool);

/// A store that keeps every batch it is given (the failed ones too, marked), holds nothing to
/// load, and fails the first `fail_first` writes.
#[derive(Clone, Default)]
struct Recording {
    /// Each write's batch, and whether it failed.
    writes: Arc<Mutex<Vec<Attempt>>>,
    fail_first: usize,
    attempts: Arc<AtomicUsize>,
}

impl Recording {
    fn failing_first(n: usize) -> Self {
        Recording {
            fail_first: n,
            ..Recording::default()
        }
    }

    /// How many batches were written (successfully).
    fn written(&self) -> usize {
        self.writes
            .lock()
            .iter()
            .filter(|(_, failed)| !failed)
            .count()
    }

    fn attempts(&self) -> usize {
        self.attempts.load(Ordering::SeqCst)
    }

    /// The successful batches, applied in order to an empty copy, as a store would apply them.
    fn replayed(&self) -> HashMap<String, u64> {
        let mut copy = HashMap::new();
        for (batch, failed) in self.writes.lock().iter() {
            if *failed {
                continue;
            }
            match batch {
                Batch::Snapshot { entries, .. } => {
                    copy = entries.iter().map(|(k, s)| (k.clone(), *s.value)).collect();
                }
                Batch::Changes { changes, .. } => {
                    for change in changes {
                        match &change.entry {
                            Some(stored) => copy.insert(change.key.clone(), *stored.value),
                            None => copy.remove(&change.key),
                        };
                    }
                }
            }
        }
        copy
    }
}

impl Store<String, u64> for Recording {
    async fn load(&self, _: &BucketId) -> Result<Option<Snapshot<String, u64>>, StoreError> {
        Ok(None)
    }

    async fn write(&self, _: &BucketId, batch: Batch<String, u64>) -> Result<(), StoreError> {
        let attempt = self.attempts.fetch_add(1, Ordering::SeqCst);
        let fail = attempt < self.fail_first;
        self.writes.lock().push((batch, fail));
        if fail {
            Err(StoreError::new(format!("write {} refused", attempt + 1)))
        } else {
            Ok(())
        }
    }

    async fn reset(&self, _: &BucketId) -> Result<(), StoreError> {
        self.writes.lock().clear();
        Ok(())
    }
}

/// A store whose load always fails (and whose writes succeed, keeping nothing).
struct Unloadable;

impl Store<String, u64> for Unloadable {
    async fn load(&self, _: &BucketId) -> Result<Option<Snapshot<String, u64>>, StoreError> {
        Err(StoreError::new("the database is down"))
    }

    async fn write(&self, _: &BucketId, _: Batch<String, u64>) -> Result<(), StoreError> {
        Ok(())
    }

    async fn reset(&self, _: &BucketId) -> Result<(), StoreError> {
        Ok(())
    }
}

/// The key and value of each change, in order (`None`: a removal).
fn changed(changes: &[Written<String, u64>]) -> Vec<(String, Option<u64>)> {
    changes
        .iter()
        .map(|c| (c.key.clone(), c.entry.as_ref().map(|s| *s.value)))
        .collect()
}

/// Checks that a `Changes` batch follows the batch written before it: it starts at that one's
/// version, its changes' versions go up by one from there and end at its own version.
fn check_follows(previous: u64, batch: &Batch<String, u64>) {
    let Batch::Changes {
        from,
        version,
        changes,
    } = batch
    else {
        panic!("a later batch is a Changes batch: {batch:?}");
    };
    assert_eq!(*from, previous, "a batch starts where the one before ended");
    let versions: Vec<u64> = changes.iter().map(|c| c.version).collect();
    let expected: Vec<u64> = (previous + 1..=*version).collect();
    assert_eq!(versions, expected, "contiguous versions up to the batch's");
}

// ---- MemoryStore ----

#[tokio::test(start_paused = true)]
async fn a_worker_restarted_over_the_same_memory_store_is_warm_with_its_entries() {
    let up = Upstream::with_values(&[("loaded", 7)]);
    let memory = MemoryStore::new();
    let first = builder(&up, "memory")
        .store(memory.clone())
        .start()
        .await
        .expect("start");
    first.insert(key("a"), 1);
    first.insert(key("b"), 2);
    assert_eq!(*first.fetch(&key("loaded")).await.expect("fetch"), 7);
    let before = contents(&first);
    first.shutdown().await.expect("shutdown");
    let last_version = first.version();
    drop(first);

    let second = builder(&up, "memory")
        .store(memory.clone())
        .start()
        .await
        .expect("second start");
    assert!(
        second.started().is_warm(),
        "warm from the store: {:?}",
        second.started()
    );
    assert_eq!(contents(&second), before, "the same entries");
    assert_eq!(up.total_loads(), 1, "nothing loaded again");
    assert!(
        !matches!(
            second.changes_since(Some(last_version)),
            cache_worker::Changes::Full { .. }
        ),
        "a client at the first run's last version is where the second starts"
    );
    second.shutdown().await.expect("shutdown");
}

#[tokio::test(start_paused = true)]
async fn a_new_memory_store_or_another_schema_starts_cold() {
    let up = Upstream::new();
    let memory = MemoryStore::new();
    let first = builder(&up, "memory-cold")
        .store(memory.clone())
        .start()
        .await
        .expect("start");
    first.insert(key("a"), 1);
    first.shutdown().await.expect("shutdown");
    drop(first);

    let fresh = builder(&up, "memory-cold")
        .store(MemoryStore::new())
        .start()
        .await
        .expect("start on a new store");
    assert!(!fresh.started().is_warm(), "a new MemoryStore is empty");
    assert!(fresh.is_empty(), "nothing restored: {:?}", contents(&fresh));
    fresh.shutdown().await.expect("shutdown");

    let other_schema = builder(&up, "memory-cold")
        .store(memory.clone())
        .schema(1)
        .start()
        .await
        .expect("start with schema 1");
    assert!(
        !other_schema.started().is_warm(),
        "values of schema 0 are not handed to schema 1"
    );
    assert!(other_schema.is_empty(), "nothing restored");
    other_schema.shutdown().await.expect("shutdown");

    let other_bucket = builder(&up, "memory-other")
        .store(memory)
        .start()
        .await
        .expect("start of another bucket");
    assert!(
        !other_bucket.started().is_warm(),
        "another bucket's entries are not this one's"
    );
    other_bucket.shutdown().await.expect("shutdown");
}

// ---- The batches a store is given ----

#[tokio::test(start_paused = true)]
async fn the_first_batch_is_a_snapshot_of_every_entry_with_its_load_time_and_expiry() {
    let up = seeded(&[("a", 1), ("b", 2), ("c", 3)]);
    *up.expire_after.lock() = Some(Duration::from_secs(60));
    let store = Recording::default();
    let before_ms = now_ms();
    let w = builder(&up, "snapshot")
        .store(store.clone())
        .start()
        .await
        .expect("start");
    let after_ms = now_ms();
    until(Duration::from_secs(10), "the first write", || {
        (store.written() == 1).then_some(())
    })
    .await;
    {
        let writes = store.writes.lock();
        let Batch::Snapshot { version, entries } = &writes[0].0 else {
            panic!("the first batch is a snapshot: {:?}", writes[0]);
        };
        assert_eq!(
            *version,
            w.version(),
            "the snapshot is at the bucket's version"
        );
        let mut entries: Vec<&(String, Stored<u64>)> = entries.iter().collect();
        entries.sort_by(|x, y| x.0.cmp(&y.0));
        let values: Vec<(&str, u64)> = entries
            .iter()
            .map(|(k, s)| (k.as_str(), *s.value))
            .collect();
        assert_eq!(values, [("a", 1), ("b", 2), ("c", 3)], "every entry");
        for (k, stored) in entries {
            assert!(
                (before_ms..=after_ms).contains(&stored.loaded_at_ms),
                "{k} was loaded at the start ({before_ms}..={after_ms}), not {}",
                stored.loaded_at_ms
            );
            assert_eq!(
                stored.expires_at_ms,
                Some(stored.loaded_at_ms + 60_000),
                "{k} expires a minute after its load"
            );
        }
    }
    w.shutdown().await.expect("shutdown");
}

#[tokio::test(start_paused = true)]
async fn later_batches_carry_every_change_since_the_last_in_version_order_unmerged() {
    let up = seeded(&[("a", 1), ("b", 2)]);
    let store = Recording::default();
    let w = builder(&up, "changes")
        .store(store.clone())
        .dump_interval(Duration::from_secs(1))
        .start()
        .await
        .expect("start");
    until(Duration::from_secs(10), "the first write", || {
        (store.written() == 1).then_some(())
    })
    .await;
    let first = store.writes.lock()[0].0.version();

    w.insert(key("a"), 10);
    w.insert(key("a"), 11);
    w.invalidate("b");
    w.insert(key("d"), 4);
    until(Duration::from_secs(10), "the second write", || {
        (store.written() == 2).then_some(())
    })
    .await;
    let second = {
        let writes = store.writes.lock();
        let batch = &writes[1].0;
        check_follows(first, batch);
        let Batch::Changes { changes, .. } = batch else {
            unreachable!("checked above")
        };
        assert_eq!(
            changed(changes),
            [
                (key("a"), Some(10)),
                (key("a"), Some(11)),
                (key("b"), None),
                (key("d"), Some(4)),
            ],
            "each change in order, a twice, b's removal without an entry"
        );
        assert_eq!(batch.version(), w.version(), "up to the bucket's version");
        batch.version()
    };

    w.insert(key("e"), 5);
    settle().await;
    assert_eq!(
        store.written(),
        2,
        "the next write waits for the write delay"
    );
    w.shutdown().await.expect("shutdown");
    let writes = store.writes.lock();
    assert_eq!(writes.len(), 3, "the shutdown wrote once more: {writes:?}");
    check_follows(second, &writes[2].0);
    let Batch::Changes { changes, .. } = &writes[2].0 else {
        unreachable!("checked above")
    };
    assert_eq!(
        changed(changes),
        [(key("e"), Some(5))],
        "the last change, at shutdown"
    );
    assert!(
        writes
            .windows(2)
            .all(|w| w[0].0.version() < w[1].0.version()),
        "batches in version order: {writes:?}"
    );
    drop(writes);
    assert_eq!(
        store.replayed(),
        contents(&w),
        "the store's copy is the bucket"
    );
}

#[tokio::test(start_paused = true)]
async fn failed_writes_are_retried_without_a_new_change_and_the_next_is_a_snapshot() {
    let up = seeded(&[("a", 1), ("b", 2)]);
    let store = Recording::failing_first(3);
    let w = builder(&up, "failing")
        .store(store.clone())
        .dump_interval(Duration::from_millis(100))
        .retry_backoff(Duration::from_millis(100), Duration::from_millis(400))
        .start()
        .await
        .expect("start");
    until(Duration::from_secs(10), "the first failure", || {
        (store.attempts() == 1).then_some(())
    })
    .await;
    // A change between the failures: the snapshot after them carries it too.
    w.insert(key("c"), 3);
    until(Duration::from_secs(60), "a write that succeeds", || {
        (store.written() == 1).then_some(())
    })
    .await;
    assert_eq!(
        store.attempts(),
        4,
        "three failures, then the write that worked"
    );
    {
        let writes = store.writes.lock();
        let (batch, failed) = &writes[3];
        assert!(!failed, "the fourth write succeeded");
        let Batch::Snapshot { version, entries } = batch else {
            panic!("the first write after a failure is a snapshot: {batch:?}");
        };
        assert_eq!(*version, w.version(), "at the bucket's version");
        let entries: HashMap<String, u64> =
            entries.iter().map(|(k, s)| (k.clone(), *s.value)).collect();
        assert_eq!(entries, map(&[("a", 1), ("b", 2), ("c", 3)]), "everything");
    }
    let stats = w.stats();
    assert_eq!(stats.store_failures, 3, "each failure counted");
    assert_eq!(stats.store_writes, 1, "one write succeeded");

    // Once written, the worker goes on with changes again.
    w.insert(key("d"), 4);
    until(Duration::from_secs(10), "the write of d", || {
        (store.written() == 2).then_some(())
    })
    .await;
    let snapshot = store.writes.lock()[3].0.version();
    check_follows(snapshot, &store.writes.lock()[4].0);
    assert_eq!(store.replayed(), contents(&w), "nothing lost");
    w.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn a_store_that_cannot_load_leaves_the_start_to_the_dump_file() {
    let (_dir, file) = temp_dump("unloadable.dump");
    write_dump(&file, "unloadable", 3).await;
    let up = Upstream::new();
    let w = builder(&up, "unloadable")
        .file(&file)
        .store(Unloadable)
        .start()
        .await
        .expect("start");
    assert!(
        w.started().is_warm(),
        "warm from the dump file: {:?}",
        w.started()
    );
    assert_eq!(contents(&w), map(&[("k0", 0), ("k1", 1), ("k2", 2)]));
    w.shutdown().await.expect("shutdown");

    let (_dir, none) = temp_dump("none.dump");
    let cold = builder(&up, "unloadable")
        .file(&none)
        .store(Unloadable)
        .start()
        .await
        .expect("start without a dump");
    assert!(!cold.started().is_warm(), "no dump file: a cold start");
    cold.shutdown().await.expect("shutdown");
}

// ---- FileStore ----

#[tokio::test]
async fn a_file_store_given_to_the_builder_is_the_dump_file() {
    let (_dir, file) = temp_dump("file-store.dump");
    let up = Upstream::new();
    let first = builder(&up, "file-store")
        .store(FileStore::new(&file))
        .start()
        .await
        .expect("start");
    first.insert(key("a"), 1);
    first.insert(key("b"), 2);

    let second = builder(&up, "file-store")
        .store(FileStore::new(&file))
        .start()
        .await;
    assert!(
        matches!(&second, Err(Error::DumpInUse { path, .. }) if *path == file),
        "a second worker on the file is refused: {second:?}"
    );

    first.shutdown().await.expect("shutdown");
    assert_eq!(
        on_disk("file-store", &file).await,
        map(&[("a", 1), ("b", 2)]),
        "the dump written at shutdown"
    );
    drop(first);

    let again = builder(&up, "file-store")
        .store(FileStore::new(&file))
        .start()
        .await
        .expect("start again");
    assert!(
        again.started().is_warm(),
        "warm from the file: {:?}",
        again.started()
    );
    assert_eq!(contents(&again), map(&[("a", 1), ("b", 2)]));
    again.shutdown().await.expect("shutdown");
}

fn stored(value: u64, loaded_at_ms: u64, expires_at_ms: Option<u64>) -> Stored<u64> {
    Stored {
        value: Arc::new(value),
        loaded_at_ms,
        expires_at_ms,
    }
}

#[tokio::test]
async fn a_file_store_through_the_trait_applies_a_snapshot_then_changes() {
    let (_dir, file) = temp_dump("direct.dump");
    let files = FileStore::new(&file);
    let bucket = BucketId::new("direct", 0);
    let now = now_ms();
    let later = now + 3_600_000;
    assert_eq!(
        Store::<String, u64>::load(&files, &bucket)
            .await
            .expect("load"),
        None,
        "no file: nothing stored"
    );

    Store::<String, u64>::write(
        &files,
        &bucket,
        Batch::Snapshot {
            version: 10,
            entries: vec![
                (key("a"), stored(1, now, None)),
                (key("b"), stored(2, now, None)),
            ],
        },
    )
    .await
    .expect("write a snapshot");
    Store::<String, u64>::write(
        &files,
        &bucket,
        Batch::Changes {
            from: 10,
            version: 13,
            changes: vec![
                Written {
                    version: 11,
                    key: key("c"),
                    entry: Some(stored(3, now + 1, Some(later))),
                },
                Written {
                    version: 12,
                    key: key("a"),
                    entry: None,
                },
                Written {
                    version: 13,
                    key: key("b"),
                    entry: Some(stored(20, now + 2, None)),
                },
            ],
        },
    )
    .await
    .expect("write changes");

    let loaded: Snapshot<String, u64> = Store::load(&files, &bucket)
        .await
        .expect("load")
        .expect("a snapshot");
    assert_eq!(loaded.version, Some(13), "at the last change's version");
    assert!(loaded.exact, "the entries are the bucket at that version");
    let mut entries = loaded.entries;
    entries.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(
        entries,
        [
            (key("b"), stored(20, now + 2, None)),
            (key("c"), stored(3, now + 1, Some(later))),
        ],
        "the changes applied to the snapshot, with load times and expiry"
    );

    let other_schema = Store::<String, u64>::load(&files, &BucketId::new("direct", 1)).await;
    assert!(
        other_schema.is_err(),
        "a file of schema 0 is not handed to schema 1: {other_schema:?}"
    );

    Store::<String, u64>::reset(&files, &bucket)
        .await
        .expect("reset");
    assert!(!file.exists(), "reset removes the file");
    assert_eq!(
        Store::<String, u64>::load(&files, &bucket)
            .await
            .expect("load"),
        None,
        "nothing stored after the reset"
    );
}
