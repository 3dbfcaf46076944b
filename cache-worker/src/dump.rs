//! Dump files on disk: atomic writes off the read path, and the warm start.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::SyncSender;
use std::time::Instant;

use parking_lot::Mutex;
use serde::Serialize;

use crate::CacheWorker;
use crate::Error;
use crate::bucket::{Entry, Hasher, Map, new_map};
use crate::codec::{self, Block, DecodeError, DumpVersion, ReadError, Sealed};
use crate::inner::{Inner, Key, Value};
use crate::prefetch::{prefetch, prefetch_serialized};
use crate::start::{ColdStart, StartKind};
use crate::stats::bump;

/// Writes the bucket to its dump file now. Readers never wait: the records are encoded straight
/// from the map, on as many threads as the machine has cores, each entry while its shard's read
/// lock is held (readers share it; only a writer to that shard waits), with nothing copied out
/// but into the blocks being written (see [`write_file`]).
pub(crate) async fn write<W: CacheWorker>(inner: &Arc<Inner<W>>) -> Result<(), Error> {
    let Some(path) = inner.settings.file.clone() else {
        return Ok(());
    };
    let _one_at_a_time = inner.dump_lock.lock().await;
    // Changes from here on mark the bucket dirty again and get the next dump.
    inner.dirty.store(false, Ordering::Release);
    // The records are the bucket at this version if no change is made while they are written:
    // every change up to it is in the map, and the version read after them, under the write
    // order, counts every change they may show.
    let before = inner.current_version();
    let map = inner.bucket.current();
    let bucket = inner.settings.bucket.clone();
    let schema = inner.settings.schema;
    let started = Instant::now();
    let target = path.clone();
    let versions = inner.clone();
    let version_now = move || {
        let version = versions.log().version();
        DumpVersion {
            version,
            exact: version == before,
        }
    };
    let written = tokio::task::spawn_blocking(move || {
        write_file(&target, &bucket, schema, &map, version_now)
    })
    .await
    .unwrap_or_else(|join| Err(io::Error::other(format!("dump writer crashed: {join}"))));
    let elapsed = started.elapsed();
    let bucket = inner.bucket_name();
    match written {
        Ok(count) => {
            let micros = elapsed.as_micros() as u64;
            bump(&inner.stats.dump_writes);
            inner
                .stats
                .dump_write_micros
                .fetch_add(micros, Ordering::Relaxed);
            inner
                .stats
                .last_dump_micros
                .store(micros, Ordering::Relaxed);
            #[cfg(feature = "metrics")]
            crate::metrics::dump_written(bucket, &path, elapsed);
            tracing::info!(bucket, path = %path.display(), entries = count, ?elapsed, "dump written");
            Ok(())
        }
        Err(source) => {
            bump(&inner.stats.dump_failures);
            inner.dirty.store(true, Ordering::Release);
            tracing::error!(bucket, path = %path.display(), error = %source, "dump write failed; the previous dump is kept");
            Err(Error::DumpWrite { path, source })
        }
    }
}

/// Temp file in the same directory, fsync, rename over the dump, fsync the directory: a crash
/// at any moment leaves the previous dump or the new one, never a mix. Returns the number of
/// records written.
///
/// The records are encoded on `available_parallelism` scoped threads (fewer for a small map)
/// that share one iterator over the map: each takes [`ENCODE_BATCH`] entries from it at a time
/// and encodes them into its own block, and hands each block it fills (about 1 MiB,
/// checksummed on that thread) over a channel of one block a thread to this thread, which
/// writes blocks in the order they come (the order of records in a dump means nothing) and
/// combines their checksums. Every
/// [`FLUSH_EVERY`] bytes written, a helper thread starts the file's writeback (`sync_data`), so
/// that the fsync at the end waits for the last part only. Memory: at most three blocks a
/// thread (the one it fills, one it waits to send, one in the channel), and one being written.
fn write_file<K, V>(
    path: &Path,
    bucket: &str,
    schema: u32,
    map: &Map<K, V>,
    version_now: impl FnOnce() -> DumpVersion,
) -> io::Result<u64>
where
    K: Serialize + Eq + std::hash::Hash + Send + Sync,
    V: Serialize + Send + Sync,
{
    replace_file(path, bucket, schema, |records, file| {
        // A thread a core, but none without a batch of entries to take.
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        let threads = cores.min(map.len().div_ceil(ENCODE_BATCH)).max(1);
        // Dropped before `version_now`: even when it is exhausted, the iterator holds the last
        // shard's read lock, which a write holding the version order may be waiting for.
        let shared = Shared {
            entries: Mutex::new(map.iter()),
            spares: Mutex::new(Vec::new()),
        };
        let count = std::thread::scope(|scope| {
            // Writeback of what is written so far, started while the encoders go on, so that
            // the fsync at the end waits for the last part only. Its errors fail the dump: a
            // writeback error is reported once, maybe here rather than to that fsync.
            let (flush, flushes) = std::sync::mpsc::sync_channel::<()>(1);
            let flusher = scope.spawn(move || flushes.iter().try_for_each(|()| file.sync_data()));
            // Room for a block a thread: an encoder that fills one while the writer is busy
            // with another's goes on (without it, the write took 10-20 ms more on two cores).
            let (blocks, sealed) = std::sync::mpsc::sync_channel(threads);
            let encoders: Vec<_> = (0..threads)
                .map(|_| {
                    let blocks = blocks.clone();
                    let shared = &shared;
                    scope.spawn(move || encode(shared, &blocks))
                })
                .collect();
            drop(blocks);
            let mut count = 0;
            let mut failed = None;
            let (mut written, mut flushed) = (0, 0);
            for block in sealed.iter() {
                let appended = block.and_then(|block| {
                    count += block.count();
                    written += block.bytes().len();
                    records.append(block)
                });
                if written - flushed >= FLUSH_EVERY {
                    // Never waits: a writeback still running takes this one's place.
                    let _ = flush.try_send(());
                    flushed = written;
                }
                match appended {
                    Ok(buffer) => shared.spares.lock().push(buffer),
                    Err(e) => {
                        // Dropping the receiver stops the encoders at their next block.
                        failed = Some(e);
                        break;
                    }
                }
            }
            drop(sealed);
            drop(flush);
            // Every encoder is joined, whether or not one before it panicked.
            let panicked = encoders
                .into_iter()
                .map(|encoder| encoder.join())
                .filter(Result::is_err)
                .count()
                > 0;
            let flushed = flusher
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("the dump's writeback thread panicked")));
            match (failed, flushed) {
                (Some(e), _) | (None, Err(e)) => Err(e),
                (None, Ok(())) if panicked => {
                    Err(io::Error::other("a dump encoder thread panicked"))
                }
                (None, Ok(())) => Ok(count),
            }
        });
        drop(shared);
        let count = count?;
        records.set_version(version_now());
        Ok(count)
    })
}

/// How many bytes a dump write writes between two starts of writeback.
const FLUSH_EVERY: usize = 16 << 20;

/// How many entries an encoder thread takes from the map's iterator at a time.
const ENCODE_BATCH: usize = 1024;

/// The map's entries, shard by shard, as the encoder threads take them.
type MapIter<'a, K, V> = dashmap::iter::Iter<'a, K, Entry<V>, Hasher, Map<K, V>>;

/// What the encoder threads of one dump write share.
struct Shared<'a, K, V> {
    entries: Mutex<MapIter<'a, K, V>>,
    /// Buffers of blocks written, for the next blocks.
    spares: Mutex<Vec<Vec<u8>>>,
}

/// One encoder thread of [`write_file`]: takes entries from the shared iterator until it ends,
/// encodes them into blocks and sends each full one, then the last, to `blocks`. Stops early if
/// the writer has stopped receiving or an entry does not encode (sent as the error).
fn encode<K, V>(shared: &Shared<'_, K, V>, blocks: &SyncSender<io::Result<Sealed>>)
where
    K: Serialize + Eq + std::hash::Hash,
    V: Serialize,
{
    let mut batch = Vec::with_capacity(ENCODE_BATCH);
    let mut block = Block::new();
    loop {
        {
            let mut entries = shared.entries.lock();
            // Each reference holds its shard's read lock through one counter, which the
            // iterator increments: dropped under the lock, the counter is only ever touched
            // by one thread at a time.
            batch.clear();
            batch.extend(entries.by_ref().take(ENCODE_BATCH));
        }
        if batch.is_empty() {
            break;
        }
        // The map is visited in hash order, so every value is a cache miss, and so is every
        // string in it; the entries themselves are spread over the shard's table, a page
        // every few dozen. Three stages ahead of the entry being encoded: the entry's slot in
        // the table SLOT_AHEAD entries ahead, its value's allocation LOOKAHEAD ahead, and
        // halfway there a walk of it for its strings (see `prefetch`). A batch starts with
        // the first entries' stages at once.
        for e in batch.iter().take(SLOT_AHEAD) {
            prefetch(e.key());
            prefetch(e.value());
        }
        for e in batch.iter().take(LOOKAHEAD) {
            prefetch(&*e.value().value);
        }
        for e in batch.iter().take(LOOKAHEAD / 2) {
            prefetch_serialized(e.key());
            prefetch_serialized(&*e.value().value);
        }
        for (i, e) in batch.iter().enumerate() {
            if let Some(slot) = batch.get(i + SLOT_AHEAD) {
                prefetch(slot.key());
                prefetch(slot.value());
            }
            if let Some(ahead) = batch.get(i + LOOKAHEAD) {
                prefetch(&*ahead.value().value);
            }
            if let Some(half) = batch.get(i + LOOKAHEAD / 2) {
                prefetch_serialized(half.key());
                prefetch_serialized(&*half.value().value);
            }
            if let Err(error) = block.push(e.key(), e.value()) {
                let _ = blocks.send(Err(error));
                return;
            }
            if block.is_full() {
                let next = shared.spares.lock().pop().unwrap_or_default();
                if blocks.send(Ok(block.seal(next))).is_err() {
                    return;
                }
            }
        }
    }
    if !block.is_empty() {
        let _ = blocks.send(Ok(block.seal(Vec::new())));
    }
}

/// Writes a dump file whose records `fill` pushes (returning how many), atomically (see
/// [`write_file`]). `fill` also gets the file, to start its writeback early.
pub(crate) fn replace_file(
    path: &Path,
    bucket: &str,
    schema: u32,
    fill: impl FnOnce(&mut codec::Records<&File>, &File) -> io::Result<u64>,
) -> io::Result<u64> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::other("the dump path has no file name"))?;
    // Unique per write: two workers of one process may share a dump file.
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut tmp_name = temp_prefix(name);
    tmp_name.push(format!(
        "{}.{}",
        std::process::id(),
        WRITES.fetch_add(1, Ordering::Relaxed)
    ));
    let tmp = dir.join(tmp_name);
    let result = (|| {
        let file = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        let mut count = 0;
        codec::write(&file, bucket, schema, |records| {
            count = fill(records, &file)?;
            Ok(())
        })?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()?;
        Ok(count)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// How many entries ahead of the one being encoded a dump encoder prefetches its value.
const LOOKAHEAD: usize = 16;
/// How many entries ahead of the one being encoded a dump encoder prefetches its slot in the
/// map's table (which holds the key's and the value's pointers).
const SLOT_AHEAD: usize = 2 * LOOKAHEAD;

/// `.<file name>.tmp.`: the start of every temp file of a dump.
fn temp_prefix(name: &std::ffi::OsStr) -> std::ffi::OsString {
    let mut prefix = std::ffi::OsString::from(".");
    prefix.push(name);
    prefix.push(".tmp.");
    prefix
}

/// Removes temp files that a killed writer left beside the dump. Only old ones: a young one
/// may belong to another process writing right now.
fn remove_stale_temp_files(path: &Path) {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return;
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let prefix = temp_prefix(name);
    let prefix = prefix.as_encoded_bytes();
    let Ok(listing) = fs::read_dir(dir) else {
        return;
    };
    for entry in listing.flatten() {
        let stale = entry
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().is_ok_and(|age| age.as_secs() > 60));
        if stale && entry.file_name().as_encoded_bytes().starts_with(prefix) {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// Restores the bucket from its dump file. A start is warm only if the dump gave at least one
/// live entry; otherwise this says why it is cold. Never fails the start.
pub(crate) async fn restore<W: CacheWorker>(inner: &Inner<W>) -> StartKind {
    let Some(path) = inner.settings.file.clone() else {
        return StartKind::Cold(ColdStart::NoFile);
    };
    let bucket = inner.settings.bucket.clone();
    let schema = inner.settings.schema;
    let started = Instant::now();
    let target = path.clone();
    let now = inner.clock.now_ms();
    let read = tokio::task::spawn_blocking(move || {
        remove_stale_temp_files(&target);
        read_file::<Key<W>, Value<W>>(&target, &bucket, schema, now)
    })
    .await
    .unwrap_or_else(|join| {
        Err(ReadError::Io(io::Error::other(format!(
            "dump reader crashed: {join}"
        ))))
    });
    let bucket = inner.bucket_name();
    let schema = inner.settings.schema;
    let shown = path.display();
    let cold = match read {
        Ok(read) => {
            let restored = read.map.len();
            let expired = read.expired;
            inner.bucket.restore(read.map, || {});
            continue_versions(inner, read.version, read.expired_entries);
            if restored == 0 {
                ColdStart::NoLiveEntries { expired }
            } else {
                tracing::info!(bucket, path = %shown, entries = restored, expired, elapsed = ?started.elapsed(), "warm start from dump");
                return StartKind::Warm { restored, expired };
            }
        }
        Err(ReadError::Io(e)) if e.kind() == io::ErrorKind::NotFound => ColdStart::NotFound,
        Err(ReadError::Io(e)) => ColdStart::Unreadable {
            error: e.to_string(),
        },
        Err(ReadError::Decode(DecodeError::Foreign {
            bucket: theirs,
            schema: their_schema,
        })) => {
            tracing::warn!(
                bucket,
                path = %shown,
                "dump file is of bucket {theirs:?} schema {their_schema}, this worker is bucket {bucket:?} schema {schema}: refused; cold start"
            );
            ColdStart::Foreign {
                bucket: theirs,
                schema: their_schema,
            }
        }
        Err(ReadError::Decode(DecodeError::Corrupt(why))) => {
            let aside = corrupt_path(&path);
            let moved = fs::rename(&path, &aside);
            tracing::warn!(
                bucket,
                path = %shown,
                reason = %why,
                moved_to = %aside.display(),
                moved = moved.is_ok(),
                "dump file is damaged; cold start"
            );
            ColdStart::Damaged {
                reason: why.to_string(),
                moved_to: aside,
            }
        }
    };
    match &cold {
        ColdStart::Foreign { .. } | ColdStart::Damaged { .. } => {}
        ColdStart::Unreadable { .. } => {
            tracing::warn!(bucket, path = %shown, reason = %cold, "cold start");
        }
        _ => tracing::info!(bucket, path = %shown, reason = %cold, "cold start"),
    }
    StartKind::Cold(cold)
}

/// Goes on from the version the dump was written at (see [`ChangeLog::restored`]), and logs
/// the removal of each entry that expired since, as a change after it: a client that synced
/// with the run that wrote an exact dump then gets a delta that removes them.
///
/// [`ChangeLog::restored`]: crate::versions::log::ChangeLog::restored
pub(crate) fn continue_versions<W: CacheWorker>(
    inner: &Inner<W>,
    dumped: DumpVersion,
    expired: Vec<(Key<W>, Arc<Value<W>>)>,
) {
    let now = inner.clock.now_ms();
    let mut log = inner.log();
    log.restored(dumped.version, dumped.exact);
    if dumped.exact {
        for (key, value) in expired {
            let _ = log.append(&key, None, Some(value), now);
        }
    }
}

/// A dump as read: its live entries, how many expired since it was written (and, if the dump
/// is exact, which: for the log), and its version.
pub(crate) struct Read<K, V> {
    pub(crate) map: Map<K, V>,
    pub(crate) expired: usize,
    pub(crate) expired_entries: Vec<(K, Arc<V>)>,
    pub(crate) version: DumpVersion,
}

/// Records handed from the decoding thread to the inserting one at a time.
const BATCH: usize = 4096;

/// Decodes the dump into a presized map, leaving out entries that expired by `now`; returns the
/// map, the expired entries left out (their values only if the dump is exact, for the log)
/// and the dump's version.
///
/// Two threads share the work: this one decodes records into batches, a scoped one inserts them
/// (hashing and probing the map), so a warm start on a multi-core machine takes about as long
/// as the decoding alone. At most a few batches are in flight, so memory stays at the map's.
pub(crate) fn read_file<K, V>(
    path: &Path,
    bucket: &str,
    schema: u32,
    now: u64,
) -> Result<Read<K, V>, ReadError>
where
    K: serde::de::DeserializeOwned + Eq + std::hash::Hash + Send + Sync,
    V: serde::de::DeserializeOwned + Send + Sync,
{
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    let mut expired = 0;
    let mut expired_entries = Vec::new();
    // Set by the decoder from the header, read by it for each record after.
    let version = std::cell::Cell::new(DumpVersion::default());
    let map = std::thread::scope(|scope| {
        let (batches, incoming) = std::sync::mpsc::sync_channel::<Vec<(K, Entry<V>)>>(4);
        let (sizes, size) = std::sync::mpsc::sync_channel::<usize>(1);
        let inserter = scope.spawn(move || {
            let map = new_map(size.recv().unwrap_or(0));
            for batch in incoming {
                for (key, entry) in batch {
                    map.insert(key, entry);
                }
            }
            map
        });
        let decoded = codec::read_into(
            &mut file,
            len,
            bucket,
            schema,
            |count, dumped| {
                version.set(dumped);
                let _ = sizes.send(count);
                Vec::with_capacity(BATCH)
            },
            |batch, key, entry| {
                if entry.expires_at <= now {
                    expired += 1;
                    if version.get().exact {
                        expired_entries.push((key, entry.value));
                    }
                    return;
                }
                batch.push((key, entry));
                if batch.len() == BATCH {
                    let full = std::mem::replace(batch, Vec::with_capacity(BATCH));
                    // The inserter only stops early by panicking, which is reported below.
                    let _ = batches.send(full);
                }
            },
        );
        drop(sizes);
        let last = match decoded {
            Ok(last) => last,
            Err(e) => {
                drop(batches);
                // What was inserted is dropped with the thread's map.
                let _ = inserter.join();
                return Err(e);
            }
        };
        let _ = batches.send(last);
        drop(batches);
        inserter
            .join()
            .map_err(|_| ReadError::Io(io::Error::other("the thread inserting the dump panicked")))
    })?;
    Ok(Read {
        map,
        expired,
        expired_entries,
        version: version.get(),
    })
}

/// Makes the dump file usable by this instance alone before the start reads it: creates its
/// folder, and takes the advisory lock on `<file>.lock` (the dump itself is replaced by every
/// write, so it cannot carry the lock). The lock lives in `inner.dump_file_lock` until the
/// final dump, or until the last user handle is dropped; the OS releases it if the process
/// dies, so a crash never leaves a stale lock.
pub(crate) fn prepare<W: CacheWorker>(inner: &Inner<W>) -> Result<(), Error> {
    let Some(path) = inner.settings.file.clone() else {
        return Ok(());
    };
    let failed = |source| Error::DumpFile {
        path: path.clone(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(failed)?;
    }
    let lock = lock_path(&path);
    // Made if missing, then held open read-only: a lock needs no write access, and a file open
    // for writing would keep the file system from being remounted read-only.
    let opened = match OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock)
    {
        Ok(_) => File::open(&lock),
        // In a read-only folder: the lock file of an earlier run, if there is one.
        Err(error) => File::open(&lock).map_err(|_| error),
    };
    let file = match opened {
        Ok(file) => file,
        Err(error)
            if matches!(
                error.kind(),
                io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem
            ) =>
        {
            // Nobody can write a dump there, so no instance's dump can replace another's.
            tracing::warn!(
                bucket = inner.bucket_name(),
                path = %path.display(),
                %error,
                "the dump file's folder is read-only: no lock taken, and dumps will fail until it is writable"
            );
            return Ok(());
        }
        Err(error) => return Err(failed(error)),
    };
    match file.try_lock() {
        Ok(()) => {
            *inner.dump_file_lock.lock() = Some(file);
            Ok(())
        }
        Err(fs::TryLockError::WouldBlock) => Err(Error::DumpInUse { path, lock }),
        Err(fs::TryLockError::Error(error)) if error.kind() == io::ErrorKind::Unsupported => {
            // A file system without locks: run as before there was one, and say so.
            tracing::warn!(
                bucket = inner.bucket_name(),
                path = %path.display(),
                %error,
                "the dump file's file system has no locks: another worker on the same file would not be refused"
            );
            Ok(())
        }
        Err(fs::TryLockError::Error(source)) => Err(failed(source)),
    }
}

/// `<file>.lock`, the advisory lock of a dump file.
fn lock_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

/// Where a damaged dump is moved: `<file>.corrupt`.
pub(crate) fn corrupt_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".corrupt");
    PathBuf::from(name)
}

/// Writes a dump after changes, at most once per `dump_interval`, until the worker stops.
pub(crate) fn spawn_writer<W: CacheWorker>(inner: Arc<Inner<W>>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if inner.settings.file.is_none() {
            return;
        }
        let interval = inner.settings.dump_interval;
        let mut last: Option<tokio::time::Instant> = None;
        loop {
            tokio::select! {
                _ = inner.dump_wanted.notified() => {}
                _ = inner.cancel.cancelled() => return,
            }
            if let Some(at) = last {
                tokio::select! {
                    _ = tokio::time::sleep_until(at + interval) => {}
                    _ = inner.cancel.cancelled() => return,
                }
            }
            if inner.dirty.load(Ordering::Acquire) {
                // Failures are logged and counted inside; the next change tries again.
                let _ = write(&inner).await;
                last = Some(tokio::time::Instant::now());
            }
        }
    })
}
