//! How a worker started: warm from its dump, or cold, and why.

use std::fmt;
use std::path::PathBuf;

/// How an instance started, from [`Worker::started`](crate::Worker::started).
///
/// A start is warm only if its dump gave at least one live entry: a dump that holds none (an
/// empty bucket was dumped, or every entry expired while the process was down) is a cold
/// start, so [`seed`](crate::CacheWorker::seed) runs and a worker with a bulk load loads first.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StartKind {
    /// The bucket was restored from the dump file.
    Warm {
        /// Live entries restored.
        restored: usize,
        /// Entries of the dump left out because they had expired.
        expired: usize,
    },
    /// Nothing came from a dump file; the reason says why.
    Cold(ColdStart),
}

impl StartKind {
    /// Whether the bucket came from the dump file.
    pub fn is_warm(&self) -> bool {
        matches!(self, StartKind::Warm { .. })
    }
}

/// Why a start was cold.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ColdStart {
    /// No dump file is configured, or the cache is disabled.
    NoFile,
    /// The dump file does not exist (yet).
    NotFound,
    /// The dump file holds no live entry.
    NoLiveEntries {
        /// Entries it held that had expired.
        expired: usize,
    },
    /// The dump file could not be read.
    Unreadable {
        /// The I/O error.
        error: String,
    },
    /// The dump file is of another bucket or another schema version, and was left as it is.
    Foreign {
        /// The bucket named in the file.
        bucket: String,
        /// The schema version named in the file.
        schema: u32,
    },
    /// The dump file is damaged (or its records do not decode as this value type) and was
    /// moved aside.
    Damaged {
        /// What is wrong with it.
        reason: String,
        /// Where it was moved (`<file>.corrupt`).
        moved_to: PathBuf,
    },
}

impl fmt::Display for ColdStart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ColdStart::NoFile => f.write_str("no dump file is configured"),
            ColdStart::NotFound => f.write_str("the dump file does not exist yet"),
            ColdStart::NoLiveEntries { expired: 0 } => f.write_str("the dump file holds no entry"),
            ColdStart::NoLiveEntries { expired } => {
                write!(f, "every entry of the dump file had expired ({expired})")
            }
            ColdStart::Unreadable { error } => write!(f, "the dump file is unreadable: {error}"),
            ColdStart::Foreign { bucket, schema } => write!(
                f,
                "the dump file is of bucket {bucket:?} schema {schema}, not this worker's"
            ),
            ColdStart::Damaged { reason, moved_to } => write!(
                f,
                "the dump file is damaged ({reason}) and was moved to {}",
                moved_to.display()
            ),
        }
    }
}
