//! Change events, delivered to every subscriber.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};

use futures_core::Stream;
use tokio::sync::{broadcast, oneshot};
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// Why an entry left the bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RemovalCause {
    /// Its expiry ([`CacheWorker::expire_after`](crate::CacheWorker::expire_after)) passed.
    Expired,
    /// The loader said the key no longer exists upstream (`Ok(None)`, or absent from a bulk load).
    Gone,
    /// It was removed with `invalidate`.
    Invalidated,
    /// The bucket was at its bound ([`Builder::max_entries`](crate::Builder::max_entries)) and
    /// it was the entry least worth keeping.
    Evicted,
}

/// A change in a worker's bucket. Writing a value equal to the stored one is no change and
/// emits nothing.
///
/// Every change carries the bucket's `version` it made (see [`Worker::version`](crate::Worker::version)):
/// a subscriber sees versions rise by one from one change to the next unless it lagged.
#[derive(Debug, PartialEq)]
#[non_exhaustive]
pub enum Event<K, V> {
    /// A key that was not in the bucket now has a value.
    Inserted {
        /// The key.
        key: K,
        /// Its value.
        value: Arc<V>,
        /// The bucket's version this change made.
        version: u64,
    },
    /// A key's value changed.
    Updated {
        /// The key.
        key: K,
        /// The new value.
        value: Arc<V>,
        /// The value it replaced.
        previous: Arc<V>,
        /// The bucket's version this change made.
        version: u64,
    },
    /// A key left the bucket.
    Removed {
        /// The key.
        key: K,
        /// Why.
        cause: RemovalCause,
        /// The value it had.
        value: Arc<V>,
        /// The bucket's version this change made.
        version: u64,
    },
    /// A whole-collection reload or a full refresh cycle finished; `count` entries are in the
    /// bucket now. The changes it made came before it as their own events.
    FullReload {
        /// The number of entries after the reload.
        count: usize,
        /// The bucket's version after the reload (the version of its last change).
        version: u64,
    },
    /// This subscriber fell behind by more than the event capacity and `missed` events were
    /// dropped for it. Read the bucket again (`keys`, `peek`) if you keep a copy.
    Lagged {
        /// How many events this subscriber missed.
        missed: u64,
    },
    /// The bucket was replaced whole by a copy from its shared store (feature `redis`): a
    /// node that found a gap in the shared change log, or that stopped leading, resynced. No
    /// per-key events came for it: read the bucket again (or
    /// [`changes_since`](crate::Worker::changes_since) your version) if you keep a copy.
    Resynced {
        /// The number of entries after it.
        count: usize,
        /// The bucket's version after it.
        version: u64,
    },
}

// Not derived: values are shared through `Arc`, so `V` need not be `Clone`.
impl<K: Clone, V> Clone for Event<K, V> {
    fn clone(&self) -> Self {
        match self {
            Event::Inserted {
                key,
                value,
                version,
            } => Event::Inserted {
                key: key.clone(),
                value: value.clone(),
                version: *version,
            },
            Event::Updated {
                key,
                value,
                previous,
                version,
            } => Event::Updated {
                key: key.clone(),
                value: value.clone(),
                previous: previous.clone(),
                version: *version,
            },
            Event::Removed {
                key,
                cause,
                value,
                version,
            } => Event::Removed {
                key: key.clone(),
                cause: *cause,
                value: value.clone(),
                version: *version,
            },
            Event::FullReload { count, version } => Event::FullReload {
                count: *count,
                version: *version,
            },
            Event::Lagged { missed } => Event::Lagged { missed: *missed },
            Event::Resynced { count, version } => Event::Resynced {
                count: *count,
                version: *version,
            },
        }
    }
}

/// An event and its number in the order of sending.
type Numbered<K, V> = (u64, Event<K, V>);

/// The sending side: a broadcast channel, and the count of events sent, by which each
/// subscriber measures how far behind it is.
///
/// tokio's broadcast rounds its capacity up to a power of two; the subscribers themselves hold
/// to the exact `event_capacity` by dropping, as `Lagged`, every event that `capacity` newer
/// events have followed by the time they read it, which is what a ring of exactly that size
/// would have dropped.
pub(crate) struct Events<K, V> {
    sender: broadcast::Sender<Numbered<K, V>>,
    sent: Arc<AtomicU64>,
    capacity: usize,
    /// How many subscriptions are open: what a write reads to know whether anyone listens.
    /// tokio's `receiver_count` takes the channel's lock, which every write would then take.
    listening: Arc<AtomicUsize>,
}

/// One open subscription, counted in [`Events::listening`] for as long as its stream lives.
struct Listening(Arc<AtomicUsize>);

impl Drop for Listening {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl<K: Clone + Send + 'static, V: Send + Sync + 'static> Events<K, V> {
    /// `capacity` is at least 1 and at most [`Settings::MAX_EVENT_CAPACITY`](crate::Settings::MAX_EVENT_CAPACITY).
    pub(crate) fn new(capacity: usize) -> Self {
        let (sender, _) = broadcast::channel(capacity.next_power_of_two());
        Events {
            sender,
            sent: Arc::new(AtomicU64::new(0)),
            capacity,
            listening: Arc::default(),
        }
    }

    /// Sends an event if anyone listens; building it costs nothing otherwise. Called with the
    /// worker's version log held, so that numbers follow the order of sending.
    pub(crate) fn send(&self, event: impl FnOnce() -> Event<K, V>) {
        // Counted before the channel subscribes it: a write that finds no one misses no
        // subscription that was already made.
        if self.listening.load(Ordering::SeqCst) > 0 {
            let number = self.sent.fetch_add(1, Ordering::AcqRel);
            let _ = self.sender.send((number, event()));
        }
    }

    /// Whether any subscription is open.
    pub(crate) fn listening(&self) -> bool {
        self.listening.load(Ordering::SeqCst) > 0
    }

    pub(crate) fn subscribe(&self, closed: CancellationToken) -> EventStream<K, V> {
        self.listening.fetch_add(1, Ordering::SeqCst);
        let listening = Listening(self.listening.clone());
        EventStream {
            attach: None,
            _listening: Some(listening),
            inner: Some(BroadcastStream::new(self.sender.subscribe())),
            closed: Some(Box::pin(closed.cancelled_owned())),
            sent: self.sent.clone(),
            capacity: self.capacity as u64,
            missed: 0,
            held: None,
        }
    }
}

/// The stream of [`Event`]s from [`Worker::subscribe`](crate::Worker::subscribe).
///
/// Each subscriber has its own queue of exactly `event_capacity` events (a setting; 1024 by
/// default). A subscriber that falls further behind is not waited for: the events pushed out
/// of its queue are dropped for it, and it gets one [`Event::Lagged`] with their exact number,
/// then the events still queued. The stream ends when the worker is dropped or shut down.
pub struct EventStream<K, V> {
    /// A subscription made before its worker started: the stream it becomes once it has.
    attach: Option<oneshot::Receiver<EventStream<K, V>>>,
    /// Counts this stream as listening until it is dropped.
    _listening: Option<Listening>,
    inner: Option<BroadcastStream<Numbered<K, V>>>,
    /// Ready once the worker has shut down: the stream ends when it has nothing queued.
    closed: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
    sent: Arc<AtomicU64>,
    capacity: u64,
    /// Events dropped for this subscriber and not yet reported.
    missed: u64,
    /// The event read after a run of dropped ones, given out after their `Lagged`.
    held: Option<Event<K, V>>,
}

impl<K: Clone + Send + 'static, V: Send + Sync + 'static> EventStream<K, V> {
    /// A stream that becomes the one sent on `attach` (or ends, if none is): what a
    /// process-wide worker that is not running yet gives.
    pub(crate) fn attaching(attach: oneshot::Receiver<EventStream<K, V>>) -> Self {
        EventStream {
            attach: Some(attach),
            ..Self::ended()
        }
    }

    /// A stream that ends at once.
    pub(crate) fn ended() -> Self {
        EventStream {
            attach: None,
            _listening: None,
            inner: None,
            closed: None,
            sent: Arc::default(),
            capacity: 1,
            missed: 0,
            held: None,
        }
    }

    /// The `Lagged` owed for the events dropped so far, if any.
    fn lagged(&mut self) -> Option<Event<K, V>> {
        let missed = std::mem::take(&mut self.missed);
        (missed > 0).then_some(Event::Lagged { missed })
    }
}

// No field is pinned: the stream only ever moves its fields, so it is `Unpin` whatever `K` is.
impl<K, V> Unpin for EventStream<K, V> {}

impl<K: Clone + Send + 'static, V: Send + Sync + 'static> Stream for EventStream<K, V> {
    type Item = Event<K, V>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if let Some(attach) = self.attach.as_mut() {
            match Pin::new(attach).poll(cx) {
                Poll::Ready(attached) => *self = attached.unwrap_or_else(|_| Self::ended()),
                Poll::Pending => return Poll::Pending,
            }
        }
        if let Some(event) = self.held.take() {
            return Poll::Ready(Some(event));
        }
        loop {
            let Some(inner) = self.inner.as_mut() else {
                return Poll::Ready(self.lagged());
            };
            match Pin::new(inner).poll_next(cx) {
                Poll::Ready(Some(Ok((number, event)))) => {
                    let newer = self.sent.load(Ordering::Acquire).saturating_sub(number + 1);
                    if newer >= self.capacity {
                        self.missed += 1;
                        continue;
                    }
                    return Poll::Ready(Some(match self.lagged() {
                        Some(lagged) => {
                            self.held = Some(event);
                            lagged
                        }
                        None => event,
                    }));
                }
                Poll::Ready(Some(Err(BroadcastStreamRecvError::Lagged(missed)))) => {
                    self.missed += missed;
                }
                Poll::Ready(None) => {
                    self.inner = None;
                }
                Poll::Pending => {
                    if let Some(lagged) = self.lagged() {
                        return Poll::Ready(Some(lagged));
                    }
                    let closed = self
                        .closed
                        .as_mut()
                        .is_some_and(|closed| closed.as_mut().poll(cx).is_ready());
                    if closed {
                        self.inner = None;
                        return Poll::Ready(None);
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

impl<K, V> std::fmt::Debug for EventStream<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventStream")
            .field("attaching", &self.attach.is_some())
            .field("ended", &(self.attach.is_none() && self.inner.is_none()))
            .finish()
    }
}
