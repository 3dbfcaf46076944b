//! Where a bucket is kept besides memory: the [`Store`] a bucket is persisted through.
//!
//! A worker always serves reads from its own map. A store is what the map is written to, in
//! batches of versioned changes, and what it is loaded from at the start:
//!
//! - [`FileStore`]: the dump file, an atomic checksummed snapshot on disk (what
//!   [`Builder::file`](crate::Builder::file) sets up);
//! - [`MemoryStore`]: nothing persisted outside the process; a second worker started over
//!   the same `MemoryStore` starts warm from what the first wrote;
//! - `redis::RedisStore` (feature `redis`): a bucket shared by several nodes;
//! - your own, through [`Builder::store`](crate::Builder::store): implement the three methods
//!   of [`Store`] (the example on it is a complete one).
//!
//! # What a store is given
//!
//! The worker writes to its store after changes, at most once per
//! [`write_delay`](Store::write_delay) (by default the worker's `dump_interval`), one batch
//! at a time, in version order, and once more at shutdown:
//!
//! - the first batch of a run, and the first after a failed write, is a
//!   [`Batch::Snapshot`]: every live entry, which replaces whatever the store holds;
//! - every later one is a [`Batch::Changes`]: each change since the last batch written, in
//!   version order, unmerged (a key changed twice is in it twice), with each entry's load time
//!   and expiry. If the version log no longer holds them all (more than `delta_threshold`
//!   changes between two writes), a snapshot is written instead.
//!
//! So a store never sees an older version after a newer one, and a failed write loses
//! nothing: the next batch carries everything again.

mod file;
mod memory;
pub(crate) mod persist;
#[cfg(feature = "redis")]
pub(crate) mod shared;

pub use file::FileStore;
pub use memory::MemoryStore;

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;

/// A bucket's persistence: written in batches of versioned changes, loaded at the start.
///
/// Methods are `async` and take `&self`: keep connections and state inside, behind whatever
/// synchronization they need (the worker never calls two `write`s at once, but `load` and
/// `reset` may come from other tasks).
///
/// A store for a table in some database, in full (the table here is a `BTreeMap`):
///
/// ```
/// use std::collections::BTreeMap;
/// use std::sync::Mutex;
/// use cache_worker::store::{Batch, BucketId, Snapshot, Store, StoreError, Stored};
///
/// #[derive(Default)]
/// struct TableStore {
///     // (bucket, key) → entry, and the version of each bucket.
///     rows: Mutex<BTreeMap<(String, String), Stored<u32>>>,
///     versions: Mutex<BTreeMap<String, u64>>,
/// }
///
/// impl Store<String, u32> for TableStore {
///     async fn load(&self, bucket: &BucketId) -> Result<Option<Snapshot<String, u32>>, StoreError> {
///         let Some(&version) = self.versions.lock().unwrap().get(&bucket.name) else {
///             return Ok(None); // nothing stored yet: a cold start
///         };
///         let entries = self.rows.lock().unwrap().iter()
///             .filter(|((b, _), _)| *b == bucket.name)
///             .map(|((_, key), stored)| (key.clone(), stored.clone()))
///             .collect();
///         Ok(Some(Snapshot { version: Some(version), exact: true, entries }))
///     }
///
///     async fn write(&self, bucket: &BucketId, batch: Batch<String, u32>) -> Result<(), StoreError> {
///         let mut rows = self.rows.lock().unwrap();
///         let mut versions = self.versions.lock().unwrap();
///         // Never let an older batch overwrite a newer one (the worker sends them in order,
///         // but a store shared by two processes may not get them so).
///         let version = batch.version();
///         if versions.get(&bucket.name).is_some_and(|&v| v >= version) {
///             return Ok(());
///         }
///         match batch {
///             Batch::Snapshot { entries, .. } => {
///                 rows.retain(|(b, _), _| *b != bucket.name);
///                 for (key, stored) in entries {
///                     rows.insert((bucket.name.clone(), key), stored);
///                 }
///             }
///             Batch::Changes { changes, .. } => {
///                 for change in changes {
///                     let row = (bucket.name.clone(), change.key);
///                     match change.entry {
///                         Some(stored) => { rows.insert(row, stored); }
///                         None => { rows.remove(&row); }
///                     }
///                 }
///             }
///         }
///         versions.insert(bucket.name.clone(), version);
///         Ok(())
///     }
///
///     async fn reset(&self, bucket: &BucketId) -> Result<(), StoreError> {
///         self.rows.lock().unwrap().retain(|(b, _), _| *b != bucket.name);
///         self.versions.lock().unwrap().remove(&bucket.name);
///         Ok(())
///     }
/// }
/// ```
///
/// (A real table would write the rows and the version in one transaction.)
pub trait Store<K, V>: Send + Sync + 'static {
    /// Everything stored for `bucket`, at the start. `Ok(None)` if nothing is (a cold start);
    /// an error makes the worker start from its dump file, if it has one, or cold.
    fn load(
        &self,
        bucket: &BucketId,
    ) -> impl Future<Output = Result<Option<Snapshot<K, V>>, StoreError>> + Send;

    /// Persists one batch. On an error the worker retries after its write delay, with a
    /// [`Batch::Snapshot`], so nothing is lost.
    fn write(
        &self,
        bucket: &BucketId,
        batch: Batch<K, V>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Forgets everything stored for `bucket`.
    fn reset(&self, bucket: &BucketId) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// How long after a change the worker writes (it batches the changes made meanwhile);
    /// `None`, the default, is the worker's `dump_interval`.
    fn write_delay(&self) -> Option<Duration> {
        None
    }

    /// What the store is, for logs: never a secret (no password).
    fn describe(&self) -> String {
        std::any::type_name::<Self>().to_owned()
    }

    /// The shared tier behind the store, if it is one. Not a public API.
    #[doc(hidden)]
    #[cfg(feature = "redis")]
    fn __shared(&self) -> Option<crate::redis::Shared> {
        None
    }
}

/// Which bucket a store call is for: its name and its schema version.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct BucketId {
    /// The bucket's name.
    pub name: String,
    /// The schema version of its values ([`Builder::schema`](crate::Builder::schema)): a
    /// store must not hand back values written with another.
    pub schema: u32,
}

impl BucketId {
    /// The bucket `name` at schema version `schema`.
    pub fn new(name: impl Into<String>, schema: u32) -> Self {
        BucketId {
            name: name.into(),
            schema,
        }
    }
}

/// One entry as a store keeps it: its value, when it was loaded, and when it expires.
#[derive(Debug, PartialEq)]
pub struct Stored<V> {
    /// The value.
    pub value: Arc<V>,
    /// When it was loaded, in milliseconds since the Unix epoch: an entry older than the
    /// refresh interval is revalidated after a warm start.
    pub loaded_at_ms: u64,
    /// When it expires, in milliseconds since the Unix epoch; `None` if never.
    pub expires_at_ms: Option<u64>,
}

// Not derived: values are shared through `Arc`, so `V` need not be `Clone`.
impl<V> Clone for Stored<V> {
    fn clone(&self) -> Self {
        Stored {
            value: self.value.clone(),
            loaded_at_ms: self.loaded_at_ms,
            expires_at_ms: self.expires_at_ms,
        }
    }
}

/// One change in a [`Batch::Changes`].
#[derive(Debug, PartialEq)]
pub struct Written<K, V> {
    /// The version this change gave the bucket.
    pub version: u64,
    /// The key that changed.
    pub key: K,
    /// Its entry after the change; `None` if it was removed.
    pub entry: Option<Stored<V>>,
}

/// What the worker hands [`Store::write`].
#[derive(Debug, PartialEq)]
pub enum Batch<K, V> {
    /// The whole bucket at `version`: it replaces everything the store holds for the bucket.
    Snapshot {
        /// The version the entries are at.
        version: u64,
        /// Every live entry.
        entries: Vec<(K, Stored<V>)>,
    },
    /// The changes after version `from` (the last batch written) up to `version`, each one,
    /// in version order: applied in order to the store's copy at `from`, they give the bucket
    /// at `version`.
    Changes {
        /// The version of the last batch written.
        from: u64,
        /// The version of the last change.
        version: u64,
        /// The changes, oldest first.
        changes: Vec<Written<K, V>>,
    },
}

impl<K, V> Batch<K, V> {
    /// The version the store is at once it has written this batch.
    pub fn version(&self) -> u64 {
        match self {
            Batch::Snapshot { version, .. } | Batch::Changes { version, .. } => *version,
        }
    }
}

/// What [`Store::load`] found.
#[derive(Debug, PartialEq)]
pub struct Snapshot<K, V> {
    /// The bucket's version the entries are at, if known: the run goes on after it, and (if
    /// `exact`) a client at that version is where the run starts.
    pub version: Option<u64>,
    /// The entries are the bucket at exactly `version` (no change was made while they were
    /// written).
    pub exact: bool,
    /// The entries; those already expired are left out by the worker.
    pub entries: Vec<(K, Stored<V>)>,
}

/// Why a store call failed: any error, with what the store says about it.
pub struct StoreError(Box<dyn std::error::Error + Send + Sync>);

impl StoreError {
    /// Wraps the store's own error.
    pub fn new(error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        StoreError(error.into())
    }
}

impl fmt::Debug for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

impl From<std::io::Error> for StoreError {
    fn from(error: std::io::Error) -> Self {
        StoreError::new(error)
    }
}

/// [`Store`] with boxed futures, so that a worker can hold any store behind one pointer.
pub(crate) trait DynStore<K, V>: Send + Sync {
    fn load<'a>(
        &'a self,
        bucket: &'a BucketId,
    ) -> BoxFuture<'a, Result<Option<Snapshot<K, V>>, StoreError>>;
    fn write<'a>(
        &'a self,
        bucket: &'a BucketId,
        batch: Batch<K, V>,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
    #[allow(dead_code)]
    fn reset<'a>(&'a self, bucket: &'a BucketId) -> BoxFuture<'a, Result<(), StoreError>>;
    fn write_delay(&self) -> Option<Duration>;
    fn describe(&self) -> String;
    #[cfg(feature = "redis")]
    fn shared(&self) -> Option<crate::redis::Shared>;
}

impl<K, V, S> DynStore<K, V> for S
where
    S: Store<K, V>,
    K: Send + 'static,
    V: Send + Sync + 'static,
{
    fn load<'a>(
        &'a self,
        bucket: &'a BucketId,
    ) -> BoxFuture<'a, Result<Option<Snapshot<K, V>>, StoreError>> {
        Box::pin(Store::load(self, bucket))
    }

    fn write<'a>(
        &'a self,
        bucket: &'a BucketId,
        batch: Batch<K, V>,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(Store::write(self, bucket, batch))
    }

    fn reset<'a>(&'a self, bucket: &'a BucketId) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(Store::reset(self, bucket))
    }

    fn write_delay(&self) -> Option<Duration> {
        Store::write_delay(self)
    }

    fn describe(&self) -> String {
        Store::describe(self)
    }

    #[cfg(feature = "redis")]
    fn shared(&self) -> Option<crate::redis::Shared> {
        Store::__shared(self)
    }
}
