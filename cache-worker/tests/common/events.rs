//! Reading a worker's events in tests.

use std::collections::HashMap;
use std::fmt::Debug;
use std::hash::Hash;
use std::sync::Arc;
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
            Event::Inserted {
                key: k, value: v, ..
            }
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

/// A copy of a bucket made by replaying its events, each checked against the copy: an
/// `Inserted` of a key the copy does not hold, an `Updated` that names the value it replaces,
/// a `Removed` the value it removes; and the versions: each change one after the one before
/// it (unless events were lost in a `Lagged`), a `FullReload` at the last change's.
pub struct Replica<K, V> {
    pub copy: HashMap<K, Arc<V>>,
    pub entry_events: u64,
    pub full_reloads: u64,
    pub lagged: u64,
    /// The version of the last change seen; `None` before the first and after a lag.
    pub version: Option<u64>,
}

impl<K, V> Default for Replica<K, V> {
    fn default() -> Self {
        Replica {
            copy: HashMap::new(),
            entry_events: 0,
            full_reloads: 0,
            lagged: 0,
            version: None,
        }
    }
}

impl<K, V> Replica<K, V> {
    /// Checks that a change at `version` follows the last one seen.
    fn next_version(&mut self, version: u64, what: &str) -> Result<(), String> {
        let expected = self.version.map(|v| v + 1);
        self.version = Some(version);
        match expected {
            Some(expected) if expected != version => Err(format!(
                "{what} at version {version}, after a change at {}",
                expected - 1
            )),
            _ => Ok(()),
        }
    }
}

impl<K: Eq + Hash + Debug, V: PartialEq + Debug> Replica<K, V> {
    /// Applies `event` to the copy; says how it does not follow from the copy, if it does not.
    pub fn apply(&mut self, event: Event<K, V>) -> Result<(), String> {
        match event {
            Event::Inserted {
                key,
                value,
                version,
            } => {
                self.entry_events += 1;
                let what = format!("Inserted({key:?}, {value:?})");
                self.next_version(version, &what)?;
                match self.copy.insert(key, value) {
                    Some(held) => Err(format!("{what} while the copy held {held:?}")),
                    None => Ok(()),
                }
            }
            Event::Updated {
                key,
                value,
                previous,
                version,
            } => {
                self.entry_events += 1;
                let what = format!("Updated({key:?}, {value:?} replacing {previous:?})");
                self.next_version(version, &what)?;
                let held = self.copy.insert(key, value);
                follows(what, held, &previous)
            }
            Event::Removed {
                key,
                value,
                version,
                ..
            } => {
                self.entry_events += 1;
                let what = format!("Removed({key:?}, {value:?})");
                self.next_version(version, &what)?;
                let held = self.copy.remove(&key);
                follows(what, held, &value)
            }
            Event::FullReload { version, .. } => {
                self.full_reloads += 1;
                match self.version {
                    Some(last) if last != version => Err(format!(
                        "FullReload at version {version}, after a change at {last}"
                    )),
                    _ => Ok(()),
                }
            }
            Event::Lagged { missed } => {
                self.lagged += missed;
                self.version = None;
                Ok(())
            }
            other => Err(format!("unknown event {other:?}")),
        }
    }
}

/// `what` follows from the copy if the copy `held` `expected`.
fn follows<V: PartialEq + Debug>(
    what: String,
    held: Option<Arc<V>>,
    expected: &Arc<V>,
) -> Result<(), String> {
    if held.as_ref() == Some(expected) {
        Ok(())
    } else {
        Err(format!("{what} while the copy held {held:?}"))
    }
}

/// Checks that the versions of `events` follow one another (each change one after the one
/// before, a `FullReload` at the last change's), and returns the events with every version
/// set to 0: for comparing with expected events whose order is not fixed.
pub fn consecutive<K: Clone + Debug, V: Debug>(events: &[Event<K, V>]) -> Vec<Event<K, V>> {
    let mut last: Option<u64> = None;
    events
        .iter()
        .map(|event| {
            let mut event = event.clone();
            match &mut event {
                Event::Inserted { version, .. }
                | Event::Updated { version, .. }
                | Event::Removed { version, .. } => {
                    if let Some(last) = last {
                        assert_eq!(*version, last + 1, "versions do not follow: {events:?}");
                    }
                    last = Some(*version);
                    *version = 0;
                }
                Event::FullReload { version, .. } => {
                    if let Some(last) = last {
                        assert_eq!(*version, last, "FullReload after {last}: {events:?}");
                    }
                    *version = 0;
                }
                Event::Lagged { .. } => last = None,
                _ => {}
            }
            event
        })
        .collect()
}
