//! [`MemoryStore`]: a bucket kept in this process's memory only.

use std::any::Any;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Arc;

use parking_lot::Mutex;

use super::{Batch, BucketId, Snapshot, Store, StoreError, Stored};

/// A store in this process's memory: nothing is written outside the process.
///
/// Clones share one memory. A worker started over a `MemoryStore` that an earlier worker of
/// the same bucket and schema wrote to (in this process) starts warm from what it wrote, as it
/// would from a dump file; a new `MemoryStore` starts every worker cold. Useful in tests, and
/// as the simplest example of a [`Store`].
///
/// ```
/// # use cache_worker::{CacheWorker, Worker, store::MemoryStore};
/// # struct Squares;
/// # impl CacheWorker for Squares {
/// #     type Key = u64; type Value = u64; type Error = std::io::Error;
/// #     async fn load(&self, key: &u64) -> Result<Option<u64>, std::io::Error> { Ok(Some(key * key)) }
/// # }
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), cache_worker::Error> {
/// let memory = MemoryStore::new();
/// let first = Worker::builder(Squares).bucket("squares").store(memory.clone()).start().await?;
/// first.fetch(&12).await.unwrap();
/// first.shutdown().await?; // the final write
///
/// let second = Worker::builder(Squares).bucket("squares").store(memory).start().await?;
/// assert!(second.started().is_warm());
/// assert_eq!(second.peek(&12).as_deref(), Some(&144));
/// # Ok(()) }
/// ```
#[derive(Clone, Default)]
pub struct MemoryStore {
    /// Per bucket name: a `Table<K, V>`.
    tables: Arc<Mutex<HashMap<String, Box<dyn Any + Send>>>>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("buckets", &self.tables.lock().len())
            .finish()
    }
}

/// One bucket in memory.
struct Table<K, V> {
    schema: u32,
    version: u64,
    entries: HashMap<K, Stored<V>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        MemoryStore::default()
    }
}

impl<K, V> Store<K, V> for MemoryStore
where
    K: Clone + Eq + Hash + Send + Sync + 'static,
    V: Send + Sync + 'static,
{
    async fn load(&self, bucket: &BucketId) -> Result<Option<Snapshot<K, V>>, StoreError> {
        let tables = self.tables.lock();
        let Some(table) = tables.get(&bucket.name) else {
            return Ok(None);
        };
        let Some(table) = table.downcast_ref::<Table<K, V>>() else {
            return Err(StoreError::new(format!(
                "bucket {:?} is stored in this MemoryStore with other key or value types",
                bucket.name
            )));
        };
        if table.schema != bucket.schema {
            return Ok(None);
        }
        Ok(Some(Snapshot {
            version: Some(table.version),
            exact: true,
            entries: table
                .entries
                .iter()
                .map(|(k, s)| (k.clone(), s.clone()))
                .collect(),
        }))
    }

    async fn write(&self, bucket: &BucketId, batch: Batch<K, V>) -> Result<(), StoreError> {
        let mut tables = self.tables.lock();
        let slot = tables.entry(bucket.name.clone()).or_insert_with(|| {
            Box::new(Table::<K, V> {
                schema: bucket.schema,
                version: 0,
                entries: HashMap::new(),
            })
        });
        if !slot.is::<Table<K, V>>()
            || slot
                .downcast_ref::<Table<K, V>>()
                .is_some_and(|t| t.schema != bucket.schema)
        {
            // Another type or schema under this name: the newer writer's table replaces it.
            *slot = Box::new(Table::<K, V> {
                schema: bucket.schema,
                version: 0,
                entries: HashMap::new(),
            });
        }
        let Some(table) = slot.downcast_mut::<Table<K, V>>() else {
            return Err(StoreError::new("MemoryStore: table of another type"));
        };
        let version = batch.version();
        if table.version > version {
            // Never an older version over a newer one.
            return Ok(());
        }
        match batch {
            Batch::Snapshot { entries, .. } => {
                table.entries = entries.into_iter().collect();
            }
            Batch::Changes { changes, .. } => {
                for change in changes {
                    match change.entry {
                        Some(stored) => {
                            table.entries.insert(change.key, stored);
                        }
                        None => {
                            table.entries.remove(&change.key);
                        }
                    }
                }
            }
        }
        table.version = version;
        Ok(())
    }

    async fn reset(&self, bucket: &BucketId) -> Result<(), StoreError> {
        self.tables.lock().remove(&bucket.name);
        Ok(())
    }

    fn describe(&self) -> String {
        "memory".to_owned()
    }
}
