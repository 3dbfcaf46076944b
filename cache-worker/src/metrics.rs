//! Publishing a worker's counters through the [`metrics`](::metrics) facade (feature
//! `metrics`): whichever recorder the application installs (Prometheus, StatsD, OpenTelemetry,
//! ...) gets every series, labelled `bucket`.
//!
//! Reads pay nothing: hits and misses stay the striped counters of [`Stats`], and nothing calls
//! the recorder per read. Instead a publisher task per worker copies a [`Stats`] snapshot into
//! the recorder every second (counters with `Counter::absolute`, gauges with `Gauge::set`), and
//! once more when the worker stops, after its final dump. The histograms are recorded where
//! their event happens (a loader call, a refresh cycle, a dump write), which is never per read.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ::metrics::{
    Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
};
use tokio::time::MissedTickBehavior;

use crate::inner::Inner;
use crate::{CacheWorker, Stats, Worker};

/// How often a worker's publisher copies its counters into the recorder.
const PUBLISH_EVERY: Duration = Duration::from_secs(1);

/// A counter of [`Stats`]: its series name, its description, and how to read it.
type CounterRow = (&'static str, &'static str, fn(&Stats) -> u64);

/// Every counter of [`Stats`], each published as `cache_worker_<field>_total`. A new counter
/// is one row here.
// One line a row, so that the table reads as one.
#[rustfmt::skip]
const COUNTERS: &[CounterRow] = &[
    ("cache_worker_hits_total", "Reads (get, fetch, peek) answered from the bucket.", |s| s.hits),
    ("cache_worker_misses_total", "Reads that found nothing in the bucket.", |s| s.misses),
    ("cache_worker_loads_total", "Calls of the loader (load and load_all), whatever their outcome.", |s| s.loads),
    ("cache_worker_load_errors_total", "Loads that returned Err.", |s| s.load_errors),
    ("cache_worker_panics_total", "Loads that panicked.", |s| s.panics),
    ("cache_worker_timeouts_total", "Loads that passed the load timeout.", |s| s.timeouts),
    ("cache_worker_not_found_total", "Loads that answered Ok(None): the key does not exist upstream.", |s| s.not_found),
    ("cache_worker_coalesced_total", "Readers that waited on a load another reader had started.", |s| s.coalesced),
    ("cache_worker_refresh_cycles_total", "Finished full refresh cycles.", |s| s.refresh_cycles),
    ("cache_worker_bulk_loads_total", "Successful bulk loads (load_all).", |s| s.bulk_loads),
    ("cache_worker_inserted_total", "Entries added.", |s| s.inserted),
    ("cache_worker_updated_total", "Entries whose value changed.", |s| s.updated),
    ("cache_worker_unchanged_total", "Reloads or writes that gave a value equal to the stored one.", |s| s.unchanged),
    ("cache_worker_removed_total", "Entries removed because upstream no longer has them, or invalidated.", |s| s.removed),
    ("cache_worker_expired_total", "Entries removed because they expired.", |s| s.expired),
    ("cache_worker_refresh_failures_total", "Reloads during refresh that failed (the old value was kept).", |s| s.refresh_failures),
    ("cache_worker_refresher_restarts_total", "Times the supervisor restarted a crashed refresher.", |s| s.refresher_restarts),
    ("cache_worker_dump_writes_total", "Dump files written.", |s| s.dump_writes),
    ("cache_worker_dump_failures_total", "Dump writes that failed (the previous dump was kept).", |s| s.dump_failures),
    ("cache_worker_restored_total", "Entries restored from the dump file or the store at start.", |s| s.restored),
    ("cache_worker_store_writes_total", "Batches written to the bucket's store.", |s| s.store_writes),
    ("cache_worker_store_failures_total", "Store writes that failed (retried with a snapshot).", |s| s.store_failures),
    ("cache_worker_store_undecodable_total", "Entries or changes read from a shared store that did not decode.", |s| s.store_undecodable),
    ("cache_worker_evicted_total", "Entries evicted because the bucket was at its bound (max_entries).", |s| s.evicted),
    ("cache_worker_not_found_hits_total", "Reads answered not found without a load, within not_found_ttl.", |s| s.not_found_hits),
];

/// A gauge read from [`Stats`]: its series name, description, unit, and how to read it.
type GaugeRow = (&'static str, &'static str, Unit, fn(&Stats) -> f64);

/// The gauges read from [`Stats`].
#[rustfmt::skip]
const GAUGES: &[GaugeRow] = &[
    ("cache_worker_entries", "Entries in the bucket now.", Unit::Count, |s| s.entries as f64),
    ("cache_worker_last_dump_duration_seconds", "Time the last dump write took.", Unit::Seconds, |s| s.last_dump_duration.as_secs_f64()),
];

/// Set after each dump write, not from [`Stats`].
const DUMP_BYTES: &str = "cache_worker_dump_bytes";
const LOAD_DURATION: &str = "cache_worker_load_duration_seconds";
const REFRESH_DURATION: &str = "cache_worker_refresh_duration_seconds";
const DUMP_DURATION: &str = "cache_worker_dump_duration_seconds";

/// Registers every series' description and unit with the recorder installed now. Called by
/// each worker's publisher as it starts, so that a recorder installed after an earlier worker
/// started still gets them; exporters keep the first description of a name.
fn describe() {
    for &(name, description, _) in COUNTERS {
        describe_counter!(name, Unit::Count, description);
    }
    for &(name, description, unit, _) in GAUGES {
        describe_gauge!(name, unit, description);
    }
    describe_gauge!(
        DUMP_BYTES,
        Unit::Bytes,
        "Size of the last dump file written."
    );
    describe_histogram!(
        LOAD_DURATION,
        Unit::Seconds,
        "Duration of each loader call, by call (load, load_all) and outcome (ok, not_found, error, panic, timeout)."
    );
    describe_histogram!(
        REFRESH_DURATION,
        Unit::Seconds,
        "Duration of each full refresh cycle."
    );
    describe_histogram!(
        DUMP_DURATION,
        Unit::Seconds,
        "Duration of each successful dump write."
    );
}

/// Copies a snapshot of the worker's counters and gauges into the recorder. The handles are
/// looked up on every publication (a few dozen map lookups a second), so a recorder installed
/// after the worker started is published to from then on.
pub(crate) fn publish<W: CacheWorker>(inner: &Inner<W>) {
    let stats = inner.stats.snapshot(inner.bucket.len());
    let bucket = inner.bucket_name();
    for &(name, _, value) in COUNTERS {
        counter!(name, "bucket" => bucket.to_owned()).absolute(value(&stats));
    }
    for &(name, _, _, value) in GAUGES {
        gauge!(name, "bucket" => bucket.to_owned()).set(value(&stats));
    }
}

/// Publishes every [`PUBLISH_EVERY`] from the start until the worker stops, then once more.
/// The shutdown publishes a last time after the final dump.
pub(crate) fn spawn_publisher<W: CacheWorker>(inner: Arc<Inner<W>>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        describe();
        let mut every = tokio::time::interval(PUBLISH_EVERY);
        every.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = every.tick() => publish(&inner),
                _ = inner.cancel.cancelled() => break,
            }
        }
        publish(&inner);
    })
}

/// Records one loader call's duration, from the outcome `load::isolate` saw.
pub(crate) fn loader_call<T, E, P, X>(
    bucket: &str,
    call: &'static str,
    outcome: &Result<Result<Result<Option<T>, E>, P>, X>,
    elapsed: Duration,
) {
    let outcome = match outcome {
        Ok(Ok(Ok(Some(_)))) => "ok",
        // A worker without a bulk load: `load_all` was not a call upstream, and `Stats::loads`
        // does not count it either.
        Ok(Ok(Ok(None))) if call == "load_all" => return,
        Ok(Ok(Ok(None))) => "not_found",
        Ok(Ok(Err(_))) => "error",
        Ok(Err(_)) => "panic",
        Err(_) => "timeout",
    };
    histogram!(
        LOAD_DURATION,
        "bucket" => bucket.to_owned(),
        "call" => call,
        "outcome" => outcome
    )
    .record(elapsed.as_secs_f64());
}

/// Records a finished (counted) refresh cycle's duration.
pub(crate) fn refresh_cycle(bucket: &str, duration: Duration) {
    histogram!(REFRESH_DURATION, "bucket" => bucket.to_owned()).record(duration.as_secs_f64());
}

/// Records a dump write that succeeded: its duration, and the size of the file it left. The
/// writer still holds the dump lock, and the file lock keeps other instances off the path, so
/// the file is the one just written. One `stat`, after a write that fsynced the file.
pub(crate) fn dump_written(bucket: &str, path: &Path, elapsed: Duration) {
    histogram!(DUMP_DURATION, "bucket" => bucket.to_owned()).record(elapsed.as_secs_f64());
    match std::fs::metadata(path) {
        Ok(meta) => gauge!(DUMP_BYTES, "bucket" => bucket.to_owned()).set(meta.len() as f64),
        Err(error) => {
            tracing::debug!(bucket, path = %path.display(), %error, "no size for the dump just written");
        }
    }
}

impl<W: CacheWorker> Worker<W> {
    /// Copies this worker's counters and gauges into the installed [`metrics`](::metrics)
    /// recorder now (feature `metrics`).
    ///
    /// A worker publishes them every second on its own, and once more when it shuts down, so
    /// this is only needed to export exact values at a moment of your choosing: before
    /// rendering a scrape, say, or in a test. The histograms are recorded as their events
    /// happen and need no publishing.
    ///
    /// ```
    /// # use cache_worker::{CacheWorker, Worker};
    /// # struct Squares;
    /// # impl CacheWorker for Squares {
    /// #     type Key = u64; type Value = u64; type Error = std::io::Error;
    /// #     async fn load(&self, key: &u64) -> Result<Option<u64>, std::io::Error> { Ok(Some(key * key)) }
    /// # }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), cache_worker::Error> {
    /// let squares = Worker::builder(Squares).bucket("squares").start().await?;
    /// squares.peek(&3); // counted in a striped counter, not sent to the recorder
    /// squares.publish_metrics(); // cache_worker_misses_total{bucket="squares"} is 1 now
    /// # squares.shutdown().await }
    /// ```
    #[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
    pub fn publish_metrics(&self) {
        publish(&self.inner);
    }
}
