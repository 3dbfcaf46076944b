//! The two error boundaries: [`Error`] for starting, stopping and dumps, [`FetchError`] for reads.

use std::sync::Arc;
use std::time::Duration;

/// Why a worker could not start, or an operation on the worker as a whole failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A setting from the environment could not be parsed. Fix or unset the variable.
    #[error("invalid value {value:?} in environment variable {variable}: {reason}")]
    InvalidSetting {
        /// The environment variable, e.g. `CACHE_WORKER_SESSIONS_REFRESH`.
        variable: String,
        /// The value it held.
        value: String,
        /// What was expected.
        reason: String,
    },
    /// A setting given in code is out of range (for example a concurrency of 0).
    #[error("invalid setting `{setting}` for bucket {bucket:?}: {reason}")]
    InvalidConfig {
        /// The bucket.
        bucket: String,
        /// The setting's name.
        setting: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The worker's `seed` asked to stop the start with [`SeedError::Abort`](crate::SeedError::Abort).
    #[error("seeding bucket {bucket:?} aborted the start: {source}")]
    SeedAborted {
        /// The bucket.
        bucket: String,
        /// The error `seed` returned.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// `start` was called on a process-wide worker that is already running. Call `shutdown` first.
    #[error("the cache worker for bucket {bucket:?} is already started")]
    AlreadyStarted {
        /// The bucket.
        bucket: String,
    },
    /// The process-wide worker was used before `start` or after `shutdown`.
    #[error("the cache worker for bucket {bucket:?} is not started")]
    NotStarted {
        /// The bucket.
        bucket: String,
    },
    /// The worker was shut down, or its background refresher is gone.
    #[error("the cache worker for bucket {bucket:?} is shut down")]
    ShutDown {
        /// The bucket.
        bucket: String,
    },
    /// The dump file's folder could not be created, or its lock file could not be opened.
    #[error("could not prepare dump file {path}: {source}")]
    DumpFile {
        /// The dump file.
        path: std::path::PathBuf,
        /// The I/O failure.
        source: std::io::Error,
    },
    /// Another running worker, in this process or another, uses this dump file: its final dump
    /// would overwrite this one's. Give each instance its own file, or shut the other down
    /// first. The lock is released at shutdown, and by the OS when a process dies.
    #[error(
        "dump file {path} is in use by another running worker (it holds {lock}); give each \
         instance its own file, or shut the other down first"
    )]
    DumpInUse {
        /// The dump file.
        path: std::path::PathBuf,
        /// The lock file beside it.
        lock: std::path::PathBuf,
    },
    /// A dump file could not be written. The previous dump, if any, is left intact.
    #[error("could not write dump file {path}: {source}")]
    DumpWrite {
        /// The dump file.
        path: std::path::PathBuf,
        /// The I/O or encoding failure.
        source: std::io::Error,
    },
}

/// Why a read could not give a value. Cloneable: every waiter of a coalesced load gets the same.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    /// The loader answered `Ok(None)`: the key does not exist upstream.
    #[error("not found upstream")]
    NotFound,
    /// The loader answered `Err`; the error is kept as its source.
    #[error("load failed: {0}")]
    Load(#[source] Arc<dyn std::error::Error + Send + Sync>),
    /// The loader panicked; the panic message is kept.
    #[error("load panicked: {0}")]
    Panicked(Arc<str>),
    /// The loader did not finish within the load timeout.
    #[error("load timed out after {0:?}")]
    Timeout(Duration),
    /// The worker is not started (or was shut down), so nothing can be loaded.
    #[error("the cache worker is not started")]
    NotStarted,
}

/// A failed dump write kept to be told again: `io::Error` is not `Clone`, so each caller gets
/// an error rebuilt from the same OS error number (or kind and message).
#[derive(Debug)]
pub(crate) struct DumpFailure {
    path: std::path::PathBuf,
    os_error: Option<i32>,
    kind: std::io::ErrorKind,
    message: String,
}

impl DumpFailure {
    pub(crate) fn of(error: &Error) -> Option<Self> {
        match error {
            Error::DumpWrite { path, source } => Some(DumpFailure {
                path: path.clone(),
                os_error: source.raw_os_error(),
                kind: source.kind(),
                message: source.to_string(),
            }),
            _ => None,
        }
    }

    pub(crate) fn error(&self) -> Error {
        let source = match self.os_error {
            Some(code) => std::io::Error::from_raw_os_error(code),
            None => std::io::Error::new(self.kind, self.message.clone()),
        };
        Error::DumpWrite {
            path: self.path.clone(),
            source,
        }
    }
}

/// The message of a panic payload, as `std` prints it.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> Arc<str> {
    if let Some(s) = payload.downcast_ref::<&'static str>() {
        Arc::from(*s)
    } else if let Some(s) = payload.downcast_ref::<String>() {
        Arc::from(s.as_str())
    } else {
        Arc::from("Box<dyn Any>")
    }
}
