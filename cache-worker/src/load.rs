//! Calling the loader: isolated from panics and hangs, and coalesced so that concurrent misses
//! of one key share one load.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use dashmap::mapref::entry::Entry as MapEntry;
use futures_util::FutureExt;

use crate::error::panic_message;
use crate::inner::{InFlight, Inner, Key, Value};
use crate::stats::bump;
use crate::{CacheWorker, FetchError};

/// Runs one call of the loader with the load timeout, catching a panic, counting and tracing
/// the outcome. `what` names the call in traces ("load", "load_all").
pub(crate) async fn isolate<W: CacheWorker, T>(
    inner: &Inner<W>,
    what: &'static str,
    key: Option<&Key<W>>,
    call: impl Future<Output = Result<Option<T>, W::Error>>,
) -> Result<Option<T>, FetchError> {
    let bucket = inner.bucket_name();
    let timeout = inner.settings.load_timeout;
    let started = Instant::now();
    let outcome = tokio::time::timeout(timeout, AssertUnwindSafe(call).catch_unwind()).await;
    let elapsed = started.elapsed();
    #[cfg(feature = "metrics")]
    crate::metrics::loader_call(bucket, what, &outcome, elapsed);
    match outcome {
        Ok(Ok(Ok(value))) => {
            tracing::debug!(bucket, key = ?key, ?elapsed, "{what} done");
            Ok(value)
        }
        Ok(Ok(Err(error))) => {
            bump(&inner.stats.load_errors);
            tracing::warn!(bucket, key = ?key, ?elapsed, error = %error, "{what} failed");
            Err(FetchError::Load(Arc::new(error)))
        }
        Ok(Err(payload)) => {
            bump(&inner.stats.panics);
            let message = panic_message(&*payload);
            tracing::error!(bucket, key = ?key, panic = %message, "{what} panicked");
            Err(FetchError::Panicked(message))
        }
        Err(_) => {
            bump(&inner.stats.timeouts);
            tracing::warn!(bucket, key = ?key, ?timeout, "{what} timed out");
            Err(FetchError::Timeout(timeout))
        }
    }
}

/// One isolated call of `load(key)`.
pub(crate) async fn load_one<W: CacheWorker>(
    inner: &Inner<W>,
    key: &Key<W>,
) -> Result<Option<Value<W>>, FetchError> {
    bump(&inner.stats.loads);
    let result = isolate(inner, "load", Some(key), inner.state.load(key)).await;
    if let Ok(None) = result {
        bump(&inner.stats.not_found);
        tracing::debug!(bucket = inner.bucket_name(), key = ?key, "not found upstream");
    }
    result
}

/// A read that loads on a miss: the hit path, then a coalesced load.
pub(crate) async fn fetch<W: CacheWorker>(
    inner: &Arc<Inner<W>>,
    key: &Key<W>,
) -> Result<Arc<Value<W>>, FetchError> {
    let cached = inner.settings.cache_enabled;
    if cached {
        if let Some(value) = inner.bucket.peek(key) {
            inner.stats.hits.incr();
            return Ok(value);
        }
        inner.stats.misses.incr();
        if let Some(absent) = &inner.absent
            && absent.contains(key, inner.clock.now_ms())
        {
            bump(&inner.stats.not_found_hits);
            return Err(FetchError::NotFound);
        }
    }
    if !inner.is_running() {
        return Err(FetchError::NotStarted);
    }
    let flight = match inner.flights.entry(key.clone()) {
        MapEntry::Occupied(o) => {
            bump(&inner.stats.coalesced);
            o.get().flight.clone()
        }
        MapEntry::Vacant(v) => {
            // A load of this key may have finished between the miss and taking this slot.
            if cached && let Some(value) = inner.bucket.peek(key) {
                return Ok(value);
            }
            let in_flight = spawn_load(inner.clone(), key.clone());
            let flight = in_flight.flight.clone();
            v.insert(in_flight);
            flight
        }
    };
    flight.await
}

/// Starts a load on its own task, so that no waiter's cancellation cancels it, and returns a
/// future every waiter can share.
fn spawn_load<W: CacheWorker>(inner: Arc<Inner<W>>, key: Key<W>) -> InFlight<Value<W>> {
    let stale = Arc::new(AtomicBool::new(false));
    let task = inner.loads.spawn({
        let inner = inner.clone();
        let stale = stale.clone();
        async move {
            // Dropped after the store, or while unwinding: the key never stays stuck in flight.
            let _landing = Landing {
                inner: &*inner,
                key: &key,
                stale: &stale,
            };
            #[cfg(feature = "redis")]
            let loaded = match crate::redis::load_for_miss(&inner, &key).await {
                Ok(crate::redis::Miss::Loaded(value)) => Ok(Some(value)),
                Ok(crate::redis::Miss::Arrived(value)) => return Ok(value),
                Ok(crate::redis::Miss::NotFound) => Ok(None),
                Err(error) => Err(error),
            };
            #[cfg(not(feature = "redis"))]
            let loaded = load_one(&inner, &key).await;
            match loaded {
                Ok(Some(value)) => {
                    let value = Arc::new(value);
                    if inner.settings.cache_enabled {
                        // Unless the key got a value while this loaded: that write is newer.
                        inner.store_loaded(key.clone(), value.clone(), &stale);
                    }
                    Ok(value)
                }
                Ok(None) => {
                    inner.remember_absent(&key, &stale);
                    Err(FetchError::NotFound)
                }
                Err(error) => Err(error),
            }
        }
    });
    let flight = async move {
        match task.await {
            Ok(result) => result,
            Err(join) if join.is_panic() => {
                Err(FetchError::Panicked(panic_message(&*join.into_panic())))
            }
            // The runtime is shutting down.
            Err(_) => Err(FetchError::NotStarted),
        }
    }
    .boxed()
    .shared();
    InFlight { flight, stale }
}

/// Ends a flight: a later miss of the key finds the stored value or starts a new load.
struct Landing<'a, W: CacheWorker> {
    inner: &'a Inner<W>,
    key: &'a Key<W>,
    /// This flight's own flag, which tells it from a newer flight of the key started after an
    /// invalidate detached this one.
    stale: &'a Arc<AtomicBool>,
}

impl<W: CacheWorker> Drop for Landing<'_, W> {
    fn drop(&mut self) {
        self.inner
            .flights
            .remove_if(self.key, |_, f| Arc::ptr_eq(&f.stale, self.stale));
    }
}
