//! The trait a user implements: how to load one key, and the optional hooks.

use std::fmt::Debug;
use std::future::Future;
use std::hash::Hash;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// A cache worker: the one thing a user writes is how to [`load`](CacheWorker::load) a key.
///
/// Everything else — the bucket, coalescing, panic isolation, background refresh, dumps,
/// events and stats — comes from [`Worker`](crate::Worker), either through the
/// [`#[cache_worker]`](crate::cache_worker) attribute or through
/// [`Worker::builder`](crate::Worker::builder).
///
/// ```
/// use cache_worker::CacheWorker;
///
/// struct Squares;
///
/// impl CacheWorker for Squares {
///     type Key = u64;
///     type Value = u64;
///     type Error = std::io::Error;
///
///     async fn load(&self, key: &u64) -> Result<Option<u64>, std::io::Error> {
///         Ok(Some(key * key))
///     }
/// }
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is a cache worker but does not implement `CacheWorker`",
    label = "this type needs `impl CacheWorker for {Self}`",
    note = "add `impl cache_worker::CacheWorker for {Self} {{ type Key = ..; type Value = ..; type Error = ..; async fn load(&self, key: &Self::Key) -> Result<Option<Self::Value>, Self::Error> {{ .. }} }}`"
)]
pub trait CacheWorker: Send + Sync + Sized + 'static {
    /// The key of an entry. `Debug` is used in logs and tracing fields.
    type Key: Eq + Hash + Clone + Debug + Serialize + DeserializeOwned + Send + Sync + 'static;
    /// The value of an entry. `PartialEq` tells a real change from a reload of the same value:
    /// writing an equal value emits no event.
    type Value: PartialEq + Serialize + DeserializeOwned + Send + Sync + 'static;
    /// The error of a failed load; its `Display` reaches readers in
    /// [`FetchError::Load`](crate::FetchError::Load).
    type Error: std::error::Error + Send + Sync + 'static;

    /// Loads one key from upstream.
    ///
    /// `Ok(Some(value))` is the value; `Ok(None)` means the key does not exist upstream (a fetch
    /// answers [`FetchError::NotFound`](crate::FetchError::NotFound), a refresh removes the entry
    /// with [`RemovalCause::Gone`](crate::RemovalCause::Gone)); `Err` is a failure: nothing is
    /// stored, and a refresh keeps the old value.
    ///
    /// A panic or a load that passes the load timeout is caught and reported like an error.
    ///
    /// # Panics
    ///
    /// A caught panic ([`FetchError::Panicked`](crate::FetchError::Panicked), the worker keeps
    /// running) still passes through the process's panic hook, as every panic does before it
    /// unwinds: with the default hook its message, and with `RUST_BACKTRACE=1` a backtrace, is
    /// printed on stderr. This crate leaves the hook alone, since it belongs to the application.
    /// To have panics reported through `tracing` instead, install a hook at the start of
    /// `main` (this needs `tracing` among your dependencies):
    ///
    /// ```
    /// use std::backtrace::Backtrace;
    /// use std::panic::PanicHookInfo;
    ///
    /// fn panic_to_tracing(info: &PanicHookInfo<'_>) {
    ///     let payload = info.payload();
    ///     let message = (payload.downcast_ref::<&str>().copied())
    ///         .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
    ///         .unwrap_or("(a non-string payload)");
    ///     let location = info.location().map(ToString::to_string).unwrap_or_default();
    ///     // `capture` honours RUST_BACKTRACE / RUST_LIB_BACKTRACE, as the default hook does.
    ///     let backtrace = Backtrace::capture();
    ///     tracing::error!(%location, %backtrace, "panicked: {message}");
    /// }
    ///
    /// std::panic::set_hook(Box::new(panic_to_tracing));
    /// # let _ = std::panic::take_hook();
    /// ```
    ///
    /// The hook sees every panic of the process, not only those of loads.
    fn load(
        &self,
        key: &Self::Key,
    ) -> impl Future<Output = Result<Option<Self::Value>, Self::Error>> + Send;

    /// Loads the whole collection in one call, for sources that answer that way.
    ///
    /// `None` (the default) means this worker has no bulk load: a refresh cycle reloads every
    /// known key with [`load`](CacheWorker::load). `Some(Ok(entries))` replaces the bucket's
    /// contents at once — readers see the old or the new collection, never a mix — and the
    /// difference is emitted as `Inserted` / `Updated` / `Removed { cause: Gone }` events,
    /// followed by one `FullReload`. `Some(Err(_))` keeps the old contents.
    ///
    /// The collection is what upstream held when the call began: a key written (`insert`, a
    /// load) or removed (`invalidate`, expiry) while it ran keeps what that write made, and
    /// every other key follows the collection.
    ///
    /// A worker with a bulk load runs its first cycle right after a cold start.
    fn load_all(&self) -> impl Future<Output = Option<Result<Entries<Self>, Self::Error>>> + Send {
        async { None }
    }

    /// Seeds the bucket on a cold start: whenever the dump file is absent, refused, damaged or
    /// gives no live entry (see [`StartKind`](crate::StartKind)); never after a dump gave one.
    ///
    /// `Err(SeedError::Skip(_))` — what `?` gives — is logged and the start goes on with an
    /// empty bucket; `Err(SeedError::Abort(_))` makes `start()` fail with
    /// [`Error::SeedAborted`](crate::Error::SeedAborted).
    fn seed(&self) -> impl Future<Output = Result<Entries<Self>, SeedError<Self::Error>>> + Send {
        async { Ok(Vec::new()) }
    }

    /// How long after it was loaded this entry should be reloaded on its own schedule.
    ///
    /// `None` (the default) leaves the entry to the worker's periodic refresh cycle. Called
    /// each time the entry is stored or reloaded; the timer is kept in one queue for the whole
    /// bucket, not a task per key. Like [`expire_after`](CacheWorker::expire_after), it should
    /// be a quick, pure function of the value: it may run while the bucket is being visited, so
    /// it must not write to this worker.
    fn refresh_after(&self, key: &Self::Key, value: &Self::Value) -> Option<Duration> {
        let _ = (key, value);
        None
    }

    /// How long after it was loaded this entry expires and is removed
    /// (`Removed { cause: Expired }`).
    ///
    /// `None` (the default) means never. The deadline is fixed when the value is stored and is
    /// kept in dump files, so a restart does not extend it. From the deadline on, reads treat
    /// the key as absent (`peek` gives `None`, `get`/`fetch` load again) even if the refresher
    /// has not removed it yet; its `Removed { cause: Expired }` comes when it is removed, or
    /// just before the next write of the key.
    fn expire_after(&self, key: &Self::Key, value: &Self::Value) -> Option<Duration> {
        let _ = (key, value);
        None
    }
}

/// A whole collection of a worker's entries, as [`CacheWorker::load_all`] and
/// [`CacheWorker::seed`] return it.
pub type Entries<W> = Vec<(<W as CacheWorker>::Key, <W as CacheWorker>::Value)>;

/// How seeding a cold start failed: see [`CacheWorker::seed`].
#[derive(Debug)]
pub enum SeedError<E> {
    /// Log the error and start with an empty bucket. `?` on the worker's error gives this.
    Skip(E),
    /// Stop the start: `start()` returns [`Error::SeedAborted`](crate::Error::SeedAborted).
    Abort(E),
}

impl<E> From<E> for SeedError<E> {
    fn from(error: E) -> Self {
        SeedError::Skip(error)
    }
}
