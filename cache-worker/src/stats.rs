//! Counters: hot ones striped across cache lines so reads scale with cores.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use crossbeam_utils::CachePadded;

pub(crate) const STRIPES: usize = 16;

/// A counter that many threads bump at once without sharing a cache line.
#[derive(Default)]
pub(crate) struct Striped([CachePadded<AtomicU64>; STRIPES]);

impl Striped {
    #[inline]
    pub(crate) fn incr(&self) {
        self.0[stripe()].fetch_add(1, Relaxed);
    }

    pub(crate) fn sum(&self) -> u64 {
        self.0.iter().map(|c| c.load(Relaxed)).sum()
    }
}

/// This thread's stripe: threads take them in turn as they first ask.
#[inline]
pub(crate) fn stripe() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static STRIPE: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    STRIPE.with(|s| {
        let mut i = s.get();
        if i == usize::MAX {
            i = NEXT.fetch_add(1, Relaxed) % STRIPES;
            s.set(i);
        }
        i
    })
}

/// The live counters of one worker.
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) hits: Striped,
    pub(crate) misses: Striped,
    pub(crate) loads: AtomicU64,
    pub(crate) load_errors: AtomicU64,
    pub(crate) panics: AtomicU64,
    pub(crate) timeouts: AtomicU64,
    pub(crate) not_found: AtomicU64,
    pub(crate) coalesced: AtomicU64,
    pub(crate) refresh_cycles: AtomicU64,
    pub(crate) bulk_loads: AtomicU64,
    pub(crate) inserted: Striped,
    pub(crate) updated: Striped,
    pub(crate) unchanged: Striped,
    pub(crate) removed: Striped,
    pub(crate) expired: Striped,
    pub(crate) refresh_failures: AtomicU64,
    pub(crate) refresher_restarts: AtomicU64,
    pub(crate) dump_writes: AtomicU64,
    pub(crate) dump_write_micros: AtomicU64,
    pub(crate) last_dump_micros: AtomicU64,
    pub(crate) dump_failures: AtomicU64,
    pub(crate) restored: AtomicU64,
    pub(crate) store_writes: AtomicU64,
    pub(crate) store_failures: AtomicU64,
    pub(crate) store_undecodable: AtomicU64,
    pub(crate) evicted: Striped,
    pub(crate) not_found_hits: AtomicU64,
}

pub(crate) fn bump(c: &AtomicU64) {
    c.fetch_add(1, Relaxed);
}

impl Counters {
    pub(crate) fn snapshot(&self, entries: usize) -> Stats {
        let get = |c: &AtomicU64| c.load(Relaxed);
        Stats {
            entries,
            hits: self.hits.sum(),
            misses: self.misses.sum(),
            loads: get(&self.loads),
            load_errors: get(&self.load_errors),
            panics: get(&self.panics),
            timeouts: get(&self.timeouts),
            not_found: get(&self.not_found),
            coalesced: get(&self.coalesced),
            refresh_cycles: get(&self.refresh_cycles),
            bulk_loads: get(&self.bulk_loads),
            inserted: self.inserted.sum(),
            updated: self.updated.sum(),
            unchanged: self.unchanged.sum(),
            removed: self.removed.sum(),
            expired: self.expired.sum(),
            refresh_failures: get(&self.refresh_failures),
            refresher_restarts: get(&self.refresher_restarts),
            dump_writes: get(&self.dump_writes),
            dump_write_time: Duration::from_micros(get(&self.dump_write_micros)),
            last_dump_duration: Duration::from_micros(get(&self.last_dump_micros)),
            dump_failures: get(&self.dump_failures),
            restored: get(&self.restored),
            store_writes: get(&self.store_writes),
            store_failures: get(&self.store_failures),
            store_undecodable: get(&self.store_undecodable),
            evicted: self.evicted.sum(),
            not_found_hits: get(&self.not_found_hits),
        }
    }
}

/// A snapshot of a worker's counters, from [`Worker::stats`](crate::Worker::stats).
///
/// Every counter counts from the start of this instance.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Entries in the bucket now.
    pub entries: usize,
    /// Reads (`get`, `fetch`, `peek`) answered from the bucket.
    pub hits: u64,
    /// Reads that found nothing in the bucket.
    pub misses: u64,
    /// Calls of the loader (`load` and `load_all`), whatever their outcome.
    pub loads: u64,
    /// Loads that returned `Err`.
    pub load_errors: u64,
    /// Loads that panicked.
    pub panics: u64,
    /// Loads that passed the load timeout.
    pub timeouts: u64,
    /// Loads that answered `Ok(None)`: the key does not exist upstream.
    pub not_found: u64,
    /// Readers that waited on a load another reader had started, instead of loading again.
    pub coalesced: u64,
    /// Finished full refresh cycles (periodic, at start, or from `refresh_all`).
    pub refresh_cycles: u64,
    /// Successful bulk loads (`load_all`).
    pub bulk_loads: u64,
    /// Entries added (`Inserted` events).
    pub inserted: u64,
    /// Entries whose value changed (`Updated` events).
    pub updated: u64,
    /// Reloads or writes that gave a value equal to the stored one.
    pub unchanged: u64,
    /// Entries removed because upstream no longer has them, or invalidated.
    pub removed: u64,
    /// Entries removed because they expired.
    pub expired: u64,
    /// Reloads during refresh that failed (the old value was kept).
    pub refresh_failures: u64,
    /// Times the supervisor restarted a crashed refresher.
    pub refresher_restarts: u64,
    /// Dump files written.
    pub dump_writes: u64,
    /// Total time spent writing dump files.
    pub dump_write_time: Duration,
    /// Time the last dump write took.
    pub last_dump_duration: Duration,
    /// Dump writes that failed (the previous dump was kept).
    pub dump_failures: u64,
    /// Entries restored from the dump file or the store at start.
    pub restored: u64,
    /// Batches written to the bucket's [`Store`](crate::store::Store).
    pub store_writes: u64,
    /// Store writes that failed (retried with a snapshot).
    pub store_failures: u64,
    /// Entries or changes read from a shared store that did not decode as this worker's key
    /// and value types (another schema, or garbage): skipped, never served.
    pub store_undecodable: u64,
    /// Entries evicted because the bucket was at its bound
    /// ([`Builder::max_entries`](crate::Builder::max_entries)).
    pub evicted: u64,
    /// Reads answered "not found" without a load, because the loader had said so of the key
    /// within [`Builder::not_found_ttl`](crate::Builder::not_found_ttl).
    pub not_found_hits: u64,
}
