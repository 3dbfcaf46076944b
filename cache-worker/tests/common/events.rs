//! Reading a worker's events in tests.

use std::time::Duration;

use cache_worker::{Event, EventStream};
use futures_util::StreamExt;

/// The events already sent (waiting for none).
pub async fn drain<K, V>(events: &mut EventStream<K, V>) -> Vec<Event<K, V>>
where
    K: Clone + Send + 'static,
    V: Send + Sync + 'static,
{
    drain_within(events, Duration::ZERO).await
}

/// The events that come until `quiet` passes without one.
pub async fn drain_within<K, V>(events: &mut EventStream<K, V>, quiet: Duration) -> Vec<Event<K, V>>
where
    K: Clone + Send + 'static,
    V: Send + Sync + 'static,
{
    let mut seen = Vec::new();
    while let Ok(Some(e)) = tokio::time::timeout(quiet, events.next()).await {
        seen.push(e);
    }
    seen
}

/// The value `key` ends with when `events` are replayed in order.
pub fn replayed<K: PartialEq, V: Clone>(events: &[Event<K, V>], key: &K) -> Option<V> {
    let mut value = None;
    for event in events {
        match event {
            Event::Inserted { key: k, value: v }
            | Event::Updated {
                key: k, value: v, ..
            } if k == key => {
                value = Some((**v).clone());
            }
            Event::Removed { key: k, .. } if k == key => value = None,
            _ => {}
        }
    }
    value
}
