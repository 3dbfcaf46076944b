//! The process-wide instance behind the associated functions that `#[cache_worker]` generates.

use std::borrow::Borrow;
use std::hash::Hash;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwapOption;

use crate::config::Attributes;
use crate::{CacheWorker, Error, EventStream, FetchError, RefreshReport, Stats, Worker};

/// One process-wide worker of type `W`, empty until started. Not for direct use: the
/// attribute generates one per annotated type.
#[doc(hidden)]
pub struct Slot<W: CacheWorker> {
    current: ArcSwapOption<Worker<W>>,
    /// Taken from the start of `start` until `shutdown`: a second start is refused.
    taken: AtomicBool,
}

impl<W: CacheWorker> Default for Slot<W> {
    fn default() -> Self {
        Self::new()
    }
}

impl<W: CacheWorker> Slot<W> {
    /// An empty slot.
    pub const fn new() -> Self {
        Slot {
            current: ArcSwapOption::const_empty(),
            taken: AtomicBool::new(false),
        }
    }

    /// Starts the process-wide worker; refused while one is running.
    pub async fn start(
        &'static self,
        state: W,
        attributes: &'static Attributes,
    ) -> Result<Worker<W>, Error> {
        if self
            .taken
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return Err(Error::AlreadyStarted {
                bucket: attributes.bucket.to_owned(),
            });
        }
        match Worker::builder(state).attributes(attributes).start().await {
            Ok(worker) => {
                self.current.store(Some(Arc::new(worker.clone())));
                Ok(worker)
            }
            Err(error) => {
                self.taken.store(false, Ordering::Release);
                Err(error)
            }
        }
    }

    /// The running worker's handle.
    pub fn worker(&self) -> Option<Worker<W>> {
        self.current.load_full().map(|w| (*w).clone())
    }

    /// See [`Worker::get`]; `None` when not started.
    pub async fn get(&self, key: &W::Key) -> Option<Arc<W::Value>> {
        let worker = self.current.load_full()?;
        worker.get(key).await
    }

    /// See [`Worker::fetch`]; [`FetchError::NotStarted`] when not started.
    pub async fn fetch(&self, key: &W::Key) -> Result<Arc<W::Value>, FetchError> {
        let worker = self.current.load_full().ok_or(FetchError::NotStarted)?;
        worker.fetch(key).await
    }

    /// See [`Worker::peek`]; `None` when not started.
    #[inline]
    pub fn peek<Q>(&self, key: &Q) -> Option<Arc<W::Value>>
    where
        W::Key: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.current.load().as_ref()?.peek(key)
    }

    /// See [`Worker::insert`]; ignored when not started.
    pub fn insert(&self, key: W::Key, value: W::Value) {
        if let Some(worker) = self.current.load().as_ref() {
            worker.insert(key, value);
        }
    }

    /// See [`Worker::invalidate`].
    pub fn invalidate<Q>(&self, key: &Q) -> Option<Arc<W::Value>>
    where
        W::Key: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.current.load().as_ref()?.invalidate(key)
    }

    /// See [`Worker::keys`]; empty when not started.
    pub fn keys(&self) -> Vec<W::Key> {
        self.current
            .load()
            .as_ref()
            .map(|w| w.keys())
            .unwrap_or_default()
    }

    /// See [`Worker::len`]; 0 when not started.
    pub fn len(&self) -> usize {
        self.current.load().as_ref().map_or(0, |w| w.len())
    }

    /// See [`Worker::is_empty`].
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// See [`Worker::subscribe`]; a stream that ends at once when not started.
    pub fn subscribe(&self) -> EventStream<W::Key, W::Value> {
        self.current
            .load()
            .as_ref()
            .map_or_else(EventStream::ended, |w| w.subscribe())
    }

    /// See [`Worker::stats`]; all zero when not started.
    pub fn stats(&self) -> Stats {
        self.current
            .load()
            .as_ref()
            .map(|w| w.stats())
            .unwrap_or_default()
    }

    /// See [`Worker::refresh_all`]; [`Error::NotStarted`] when not started.
    pub async fn refresh_all(&self) -> Result<RefreshReport, Error> {
        let worker = self.current.load_full().ok_or_else(|| Error::NotStarted {
            bucket: std::any::type_name::<W>().to_owned(),
        })?;
        worker.refresh_all().await
    }

    /// See [`Worker::shutdown`]; afterwards the slot can be started again.
    pub async fn shutdown(&self) {
        if let Some(worker) = self.current.swap(None) {
            worker.shutdown().await;
            self.taken.store(false, Ordering::Release);
        }
    }
}
