//! The process-wide instance behind the associated functions that `#[cache_worker]` generates.

use std::borrow::Borrow;
use std::hash::Hash;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwapOption;
use tokio::sync::oneshot;

use crate::config::Attributes;
use crate::{CacheWorker, Changes, Error, EventStream, FetchError, RefreshReport, Stats, Worker};

/// One process-wide worker of type `W`, empty until started. Not for direct use: the
/// attribute generates one per annotated type.
#[doc(hidden)]
pub struct Slot<W: CacheWorker> {
    /// The attribute's bucket, for errors before the start.
    bucket: &'static str,
    current: ArcSwapOption<Worker<W>>,
    /// Taken from the start of `start` until `shutdown`: a second start is refused.
    taken: AtomicBool,
    /// Subscriptions made while no worker is in the slot: each gets its stream when one is put
    /// there, before anyone else can reach it.
    waiting: parking_lot::Mutex<Vec<Subscriber<W>>>,
}

/// Where a subscription made before the start gets its stream.
type Subscriber<W> =
    oneshot::Sender<EventStream<<W as CacheWorker>::Key, <W as CacheWorker>::Value>>;

impl<W: CacheWorker> Slot<W> {
    /// An empty slot for the worker of `bucket`.
    pub const fn new(bucket: &'static str) -> Self {
        Slot {
            bucket,
            current: ArcSwapOption::const_empty(),
            taken: AtomicBool::new(false),
            waiting: parking_lot::const_mutex(Vec::new()),
        }
    }

    fn not_started(&self) -> Error {
        Error::NotStarted {
            bucket: self.bucket.to_owned(),
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
                let mut waiting = self.waiting.lock();
                for subscriber in waiting.drain(..) {
                    let _ = subscriber.send(worker.subscribe());
                }
                self.current.store(Some(Arc::new(worker.clone())));
                drop(waiting);
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

    /// See [`Worker::insert`]; [`Error::NotStarted`] when not started.
    pub fn insert(&self, key: W::Key, value: W::Value) -> Result<(), Error> {
        let current = self.current.load();
        let worker = current.as_ref().ok_or_else(|| self.not_started())?;
        worker.insert(key, value);
        Ok(())
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

    /// See [`Worker::subscribe`]. Before the start, a stream that attaches to the worker once
    /// it is started (the start's own changes, such as its seed, come before that).
    pub fn subscribe(&self) -> EventStream<W::Key, W::Value> {
        let mut waiting = self.waiting.lock();
        if let Some(worker) = self.current.load().as_ref() {
            return worker.subscribe();
        }
        let (subscriber, stream) = oneshot::channel();
        waiting.push(subscriber);
        EventStream::attaching(stream)
    }

    /// See [`Worker::version`]; 0 when not started.
    pub fn version(&self) -> u64 {
        self.current.load().as_ref().map_or(0, |w| w.version())
    }

    /// See [`Worker::changes_since`]; when not started, an empty `Full` at version 0.
    pub fn changes_since(&self, since: Option<u64>) -> Changes<W::Key, W::Value> {
        match self.current.load().as_ref() {
            Some(worker) => worker.changes_since(since),
            None => Changes::Full {
                version: 0,
                entries: Vec::new(),
            },
        }
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
        let worker = self.current.load_full().ok_or_else(|| self.not_started())?;
        worker.refresh_all().await
    }

    /// See [`Worker::shutdown`]; afterwards the slot can be started again. `Ok` when not
    /// running.
    pub async fn shutdown(&self) -> Result<(), Error> {
        let Some(worker) = self.current.swap(None) else {
            return Ok(());
        };
        let shut = worker.shutdown().await;
        self.taken.store(false, Ordering::Release);
        shut
    }
}
