//! [`FileStore`]: the dump file.

use std::hash::Hash;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{Batch, BucketId, Snapshot, Store, StoreError, Stored, persist};
use crate::codec::{DecodeError, DumpVersion, ReadError};
use crate::dump;

/// The dump file: one atomic, checksummed snapshot of the bucket on disk.
///
/// `Builder::store(FileStore::new(path))` is [`Builder::file(path)`](crate::Builder::file):
/// the worker then writes the file straight from its map (readers never wait), takes the
/// file's lock, and tells why a start was cold ([`ColdStart`](crate::ColdStart)). Used as a
/// [`Store`] on its own (inside a store of yours, say), it reads and writes the same format:
/// a batch of changes is applied to the file's snapshot and the whole file is written again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileStore {
    path: PathBuf,
}

impl FileStore {
    /// The dump file at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        FileStore { path: path.into() }
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl<K, V> Store<K, V> for FileStore
where
    K: Serialize + DeserializeOwned + Clone + Eq + Hash + Send + Sync + 'static,
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    async fn load(&self, bucket: &BucketId) -> Result<Option<Snapshot<K, V>>, StoreError> {
        let path = self.path.clone();
        let bucket = bucket.clone();
        blocking(move || read(&path, &bucket)).await
    }

    async fn write(&self, bucket: &BucketId, batch: Batch<K, V>) -> Result<(), StoreError> {
        let path = self.path.clone();
        let bucket = bucket.clone();
        blocking(move || {
            let (version, entries) = match batch {
                Batch::Snapshot { version, entries } => (version, entries),
                Batch::Changes {
                    version, changes, ..
                } => {
                    let mut entries: std::collections::HashMap<K, Stored<V>> =
                        read(&path, &bucket)?
                            .map(|s| s.entries.into_iter().collect())
                            .unwrap_or_default();
                    for change in changes {
                        match change.entry {
                            Some(stored) => entries.insert(change.key, stored),
                            None => entries.remove(&change.key),
                        };
                    }
                    (version, entries.into_iter().collect())
                }
            };
            dump::replace_file(&path, &bucket.name, bucket.schema, |records, _| {
                for (key, stored) in &entries {
                    records.push(key, &persist::entry(stored.clone()))?;
                }
                records.set_version(DumpVersion {
                    version,
                    exact: true,
                });
                Ok(entries.len() as u64)
            })?;
            Ok(())
        })
        .await
    }

    async fn reset(&self, _bucket: &BucketId) -> Result<(), StoreError> {
        match tokio::fs::remove_file(&self.path).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    fn describe(&self) -> String {
        format!("file {}", self.path.display())
    }
}

/// The file's snapshot; `None` if there is no file.
fn read<K, V>(path: &Path, bucket: &BucketId) -> Result<Option<Snapshot<K, V>>, StoreError>
where
    K: DeserializeOwned + Eq + Hash + Send + Sync,
    V: DeserializeOwned + Send + Sync,
{
    match dump::read_file::<K, V>(path, &bucket.name, bucket.schema, 0) {
        Ok(read) => Ok(Some(Snapshot {
            version: (read.version.version != 0).then_some(read.version.version),
            exact: read.version.exact,
            entries: read
                .map
                .into_iter()
                .map(|(key, entry)| (key, persist::stored(&entry)))
                .collect(),
        })),
        Err(ReadError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(ReadError::Io(e)) => Err(e.into()),
        Err(ReadError::Decode(DecodeError::Foreign { bucket, schema })) => {
            Err(StoreError::new(format!(
                "{} is a dump of bucket {bucket:?} schema {schema}",
                path.display()
            )))
        }
        Err(ReadError::Decode(DecodeError::Corrupt(why))) => Err(StoreError::new(format!(
            "{} is damaged: {why}",
            path.display()
        ))),
    }
}

/// Runs file work on a blocking thread.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|join| Err(StoreError::new(format!("file store thread: {join}"))))
}
