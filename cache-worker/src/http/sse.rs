//! `GET /events`: the bucket's changes as Server-Sent Events, from a catch-up to the live ones.
//!
//! The stream subscribes to the worker's events before it computes the catch-up, so that every
//! change after the catch-up's version is in its queue; live events at or below the version
//! the client is at are skipped. A change whose version does not follow the client's (a gap,
//! or a `Lagged`) is answered with a catch-up from the client's version, like a reconnect.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use axum::response::sse::{Event as SseEvent, KeepAlive};
use futures_core::Stream;
use futures_util::StreamExt;

use super::json;
use crate::events::Event;
use crate::inner::{Key, Value};
use crate::versions::Synced;
use crate::{CacheWorker, EventStream, Worker};

/// How often a comment goes out on an idle stream, so that proxies keep it open.
pub(crate) const KEEP_ALIVE: Duration = Duration::from_secs(15);

pub(crate) fn keep_alive() -> KeepAlive {
    KeepAlive::new().interval(KEEP_ALIVE).text("keep-alive")
}

/// How many live changes, as JSON, the streams of one router share.
const RENDERED: usize = 4096;

/// The JSON of the latest live changes, by version, shared by every stream of one router: a
/// change is written (and its patch computed) once, not once per client.
#[derive(Default)]
pub(crate) struct Renders {
    recent: parking_lot::Mutex<VecDeque<(u64, Arc<str>)>>,
}

impl Renders {
    fn find(recent: &VecDeque<(u64, Arc<str>)>, version: u64) -> Result<Arc<str>, usize> {
        recent
            .binary_search_by_key(&version, |(v, _)| *v)
            .map(|at| recent[at].1.clone())
    }

    /// The JSON of the change at `version`, rendered by `render` if no stream has yet. Rendered
    /// without the lock, so that streams never wait on one another's serialization.
    fn get_or_render(
        &self,
        version: u64,
        render: impl FnOnce() -> serde_json::Result<String>,
    ) -> serde_json::Result<Arc<str>> {
        if let Ok(hit) = Self::find(&self.recent.lock(), version) {
            return Ok(hit);
        }
        let data: Arc<str> = render()?.into();
        let mut recent = self.recent.lock();
        match Self::find(&recent, version) {
            Ok(hit) => Ok(hit),
            Err(at) => {
                recent.insert(at, (version, data.clone()));
                if recent.len() > RENDERED {
                    recent.pop_front();
                }
                Ok(data)
            }
        }
    }
}

/// One client's stream: its own event queue, what is still to be sent before the next live
/// event, and the version the client's copy is at once it has applied everything sent.
pub(crate) struct Feed<W: CacheWorker> {
    worker: Worker<W>,
    renders: Arc<Renders>,
    events: EventStream<Key<W>, Value<W>>,
    queued: VecDeque<SseEvent>,
    at: u64,
}

impl<W: CacheWorker> Feed<W> {
    /// Subscribes, then queues what a client at `since` needs (`None`: the whole bucket).
    pub(crate) fn start(
        worker: Worker<W>,
        renders: Arc<Renders>,
        since: Option<u64>,
    ) -> serde_json::Result<Self> {
        let events = worker.subscribe();
        let mut feed = Feed {
            worker,
            renders,
            events,
            queued: VecDeque::new(),
            at: 0,
        };
        feed.catch_up(since)?;
        Ok(feed)
    }

    /// The SSE events, ending when the worker shuts down, or with an error (logged) if a key
    /// or a value cannot be serialized.
    pub(crate) fn into_stream(self) -> impl Stream<Item = serde_json::Result<SseEvent>> + Send {
        futures_util::stream::unfold(Some(self), |feed| async move {
            let mut feed = feed?;
            match feed.next().await? {
                Ok(event) => Some((Ok(event), Some(feed))),
                Err(error) => {
                    tracing::error!(
                        bucket = feed.worker.inner.bucket_name(),
                        %error,
                        "an SSE client's stream ends: a change cannot be written as JSON"
                    );
                    Some((Err(error), None))
                }
            }
        })
    }

    /// Queues what a client at `since` needs to be current.
    ///
    /// A delta's changes go out one event each, as whole values (never patches), each with the
    /// version of that key's last change as its id, and the last one with the delta's version.
    /// The changes come in the order of those versions, so a client that reconnects with the id
    /// of any one of them gets, from there, the changes it has not seen. A patch would be
    /// against the value at that version, which such a client may not hold.
    fn catch_up(&mut self, since: Option<u64>) -> serde_json::Result<()> {
        let synced = self.worker.inner.sync(since);
        self.queue_synced(synced)
    }

    fn queue_synced(&mut self, synced: Synced<Key<W>, Value<W>>) -> serde_json::Result<()> {
        match synced {
            Synced::Full { version, entries } => {
                let data = json::full(version, &entries)?;
                self.queued.push_back(
                    SseEvent::default()
                        .event("full")
                        .id(version.to_string())
                        .data(data),
                );
                self.at = version;
            }
            Synced::Delta {
                version, changes, ..
            } => {
                let last = changes.len().saturating_sub(1);
                for (i, merged) in changes.iter().enumerate() {
                    let change = match &merged.value {
                        Some(value) => json::Change::value(&merged.key, &**value)?,
                        None => json::Change::removed(&merged.key),
                    };
                    let id = if i == last { version } else { merged.version };
                    self.queue_change(id, &change)?;
                }
                self.at = version;
            }
            Synced::NoChange { version } => self.at = version,
        }
        Ok(())
    }

    fn queue_change(
        &mut self,
        id: u64,
        change: &json::Change<'_, Key<W>>,
    ) -> serde_json::Result<()> {
        let data = serde_json::to_string(change)?;
        self.queue_data(id, &data);
        Ok(())
    }

    fn queue_data(&mut self, id: u64, data: &str) {
        self.queued.push_back(
            SseEvent::default()
                .event("change")
                .id(id.to_string())
                .data(data),
        );
    }

    /// The next SSE event; `None` once the worker has shut down.
    async fn next(&mut self) -> Option<serde_json::Result<SseEvent>> {
        loop {
            if let Some(event) = self.queued.pop_front() {
                return Some(Ok(event));
            }
            let event = self.events.next().await?;
            if let Err(error) = self.live(event) {
                return Some(Err(error));
            }
        }
    }

    /// Queues what a live event means for the client (often nothing).
    fn live(&mut self, event: Event<Key<W>, Value<W>>) -> serde_json::Result<()> {
        let version = match &event {
            Event::Inserted { version, .. }
            | Event::Updated { version, .. }
            | Event::Removed { version, .. } => *version,
            // Its changes came as their own events.
            Event::FullReload { .. } => return Ok(()),
            Event::Resynced { version, .. } => {
                if *version == self.at {
                    return Ok(());
                }
                return self.catch_up(Some(self.at));
            }
            Event::Lagged { missed } => {
                let synced = self.worker.inner.sync(Some(self.at));
                if let Synced::NoChange { .. } = synced {
                    // What was dropped had come before a catch-up, which covered it.
                    return Ok(());
                }
                tracing::info!(
                    bucket = self.worker.inner.bucket_name(),
                    missed,
                    at = self.at,
                    "an SSE client fell behind; catching it up"
                );
                self.queued.push_back(SseEvent::default().comment(format!(
                    "lagged: this stream fell behind and missed {missed} events; catching up"
                )));
                return self.queue_synced(synced);
            }
        };
        if version <= self.at {
            // Already in the catch-up.
            return Ok(());
        }
        if version != self.at + 1 {
            // Never expected (a lag is reported as such), but never a gap either.
            tracing::warn!(
                bucket = self.worker.inner.bucket_name(),
                version,
                at = self.at,
                "an SSE client's events skipped versions; catching it up"
            );
            return self.catch_up(Some(self.at));
        }
        let data = self.renders.get_or_render(version, || {
            let change = match &event {
                Event::Inserted { key, value, .. } => json::Change::value(key, &**value)?,
                Event::Updated {
                    key,
                    value,
                    previous,
                    ..
                } => json::Change::put(key, Some(&**previous), &**value)?,
                Event::Removed { key, .. } => json::Change::removed(key),
                Event::FullReload { .. } | Event::Lagged { .. } | Event::Resynced { .. } => {
                    unreachable!("returned above")
                }
            };
            serde_json::to_string(&change)
        })?;
        self.queue_data(version, &data);
        self.at = version;
        Ok(())
    }
}
