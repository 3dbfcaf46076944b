//! Change events, delivered to every subscriber.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_core::Stream;
use tokio::sync::broadcast;
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
}

/// A change in a worker's bucket. Writing a value equal to the stored one is no change and
/// emits nothing.
#[derive(Debug, PartialEq)]
#[non_exhaustive]
pub enum Event<K, V> {
    /// A key that was not in the bucket now has a value.
    Inserted {
        /// The key.
        key: K,
        /// Its value.
        value: Arc<V>,
    },
    /// A key's value changed.
    Updated {
        /// The key.
        key: K,
        /// The new value.
        value: Arc<V>,
        /// The value it replaced.
        previous: Arc<V>,
    },
    /// A key left the bucket.
    Removed {
        /// The key.
        key: K,
        /// Why.
        cause: RemovalCause,
        /// The value it had.
        value: Arc<V>,
    },
    /// A whole-collection reload or a full refresh cycle finished; `count` entries are in the
    /// bucket now. The changes it made came before it as their own events.
    FullReload {
        /// The number of entries after the reload.
        count: usize,
    },
    /// This subscriber fell behind by more than the event capacity and `missed` events were
    /// dropped for it. Read the bucket again (`keys`, `peek`) if you keep a copy.
    Lagged {
        /// How many events this subscriber missed.
        missed: u64,
    },
}

// Not derived: values are shared through `Arc`, so `V` need not be `Clone`.
impl<K: Clone, V> Clone for Event<K, V> {
    fn clone(&self) -> Self {
        match self {
            Event::Inserted { key, value } => Event::Inserted {
                key: key.clone(),
                value: value.clone(),
            },
            Event::Updated {
                key,
                value,
                previous,
            } => Event::Updated {
                key: key.clone(),
                value: value.clone(),
                previous: previous.clone(),
            },
            Event::Removed { key, cause, value } => Event::Removed {
                key: key.clone(),
                cause: *cause,
                value: value.clone(),
            },
            Event::FullReload { count } => Event::FullReload { count: *count },
            Event::Lagged { missed } => Event::Lagged { missed: *missed },
        }
    }
}

/// The stream of [`Event`]s from [`Worker::subscribe`](crate::Worker::subscribe).
///
/// Each subscriber has its own queue of `event_capacity` events (a setting; 1024 by default).
/// A subscriber that falls further behind is not waited for: it gets one
/// [`Event::Lagged`] with the number of events it missed, then the newest events. The stream
/// ends when the worker is dropped or shut down.
pub struct EventStream<K, V> {
    inner: Option<BroadcastStream<Event<K, V>>>,
    /// Ready once the worker has shut down: the stream ends when it has nothing queued.
    closed: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
}

impl<K: Clone + Send + 'static, V: Send + Sync + 'static> EventStream<K, V> {
    pub(crate) fn new(
        receiver: broadcast::Receiver<Event<K, V>>,
        closed: CancellationToken,
    ) -> Self {
        EventStream {
            inner: Some(BroadcastStream::new(receiver)),
            closed: Some(Box::pin(closed.cancelled_owned())),
        }
    }

    /// A stream that ends at once: what a process-wide worker that is not running gives.
    pub(crate) fn ended() -> Self {
        EventStream {
            inner: None,
            closed: None,
        }
    }
}

impl<K: Clone + Send + 'static, V: Send + Sync + 'static> Stream for EventStream<K, V> {
    type Item = Event<K, V>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(inner).poll_next(cx) {
            Poll::Ready(Some(Ok(event))) => Poll::Ready(Some(event)),
            Poll::Ready(Some(Err(BroadcastStreamRecvError::Lagged(missed)))) => {
                Poll::Ready(Some(Event::Lagged { missed }))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                let closed = self
                    .closed
                    .as_mut()
                    .is_some_and(|closed| closed.as_mut().poll(cx).is_ready());
                if closed {
                    self.inner = None;
                    Poll::Ready(None)
                } else {
                    Poll::Pending
                }
            }
        }
    }
}

impl<K, V> std::fmt::Debug for EventStream<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventStream")
            .field("ended", &self.inner.is_none())
            .finish()
    }
}
