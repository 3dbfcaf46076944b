//! `Sessions`, `Cinemas` and `Films`: one Vista worker, three collections.
//!
//! Each is an ordinary [`CacheWorker`]: its bulk load reads the whole collection, its `load`
//! reads one entry, and the core does the rest (swapping the collection in whole, reporting the
//! difference as events, dumps, stats, stale-if-error). Only [`Sessions`] adds timing: each
//! session's free seats are polled on [`poll_interval`](super::poll_interval)'s schedule and the
//! session expires 20 minutes after its showtime.

use std::future::Future;
use std::hash::Hash;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

use super::{Cinema, Film, Parsed, Session, VistaClient, VistaError};
use crate::{Builder, CacheWorker, Entries, Error, Worker};

/// One Vista collection: how to read it whole and by key. Implemented by [`SessionFeed`],
/// [`CinemaFeed`] and [`FilmFeed`]; the workers are [`VistaWorker`]s over them.
pub trait Feed: Send + Sync + 'static {
    /// The key of an entry.
    type Key: Eq
        + Hash
        + Clone
        + std::fmt::Debug
        + serde::Serialize
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static;
    /// The entry.
    type Value: PartialEq + serde::Serialize + serde::de::DeserializeOwned + Send + Sync + 'static;
    /// The bucket's name, which also names its dump file and environment variables.
    const BUCKET: &'static str;
    /// How often the whole collection is reloaded by default.
    const REFRESH: Duration;

    /// The whole collection.
    fn all(
        client: &VistaClient,
    ) -> impl Future<Output = Result<Parsed<Self::Value>, VistaError>> + Send;

    /// The key of an entry.
    fn key(value: &Self::Value) -> Self::Key;

    /// One entry; `Ok(None)` if upstream no longer has it. By default reads the collection.
    fn one(
        client: &VistaClient,
        key: &Self::Key,
    ) -> impl Future<Output = Result<Option<Self::Value>, VistaError>> + Send {
        async move {
            let all = Self::all(client).await?;
            Ok(all.items.into_iter().find(|v| Self::key(v) == *key))
        }
    }

    /// When an entry is reloaded on its own, after it was loaded; `None`: with the collection.
    fn refresh_after(client: &VistaClient, value: &Self::Value) -> Option<Duration> {
        let _ = (client, value);
        None
    }

    /// When an entry expires, after it was loaded; `None`: never.
    fn expire_after(client: &VistaClient, value: &Self::Value) -> Option<Duration> {
        let _ = (client, value);
        None
    }
}

/// A cache worker over one Vista [`Feed`]. Use the aliases [`Sessions`], [`Cinemas`] and
/// [`Films`].
///
/// ```no_run
/// use cache_worker::vista::{Sessions, VistaClient};
///
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let client = VistaClient::from_env()?;
/// let sessions = Sessions::new(client).dump_dir("/var/cache/vista").start().await?;
/// if let Some(s) = sessions.peek("1001-17024") {
///     println!("{} seats left", s.seats_available);
/// }
/// # Ok(()) }
/// ```
pub struct VistaWorker<F> {
    client: VistaClient,
    dump_dir: Option<PathBuf>,
    skipped: Arc<AtomicU64>,
    _feed: PhantomData<fn() -> F>,
}

/// The sessions of every cinema, by id (`"<CinemaId>-<SessionId>"`): reloaded whole every hour,
/// each session's free seats polled more often the nearer its showtime, removed 20 minutes
/// after it started.
pub type Sessions = VistaWorker<SessionFeed>;
/// The cinemas, by id: reloaded whole every day.
pub type Cinemas = VistaWorker<CinemaFeed>;
/// The scheduled films, by id (`HO00000720`): reloaded whole every hour.
pub type Films = VistaWorker<FilmFeed>;

impl<F: Feed> VistaWorker<F> {
    /// A worker reading through `client`.
    pub fn new(client: VistaClient) -> Self {
        VistaWorker {
            client,
            dump_dir: None,
            skipped: Arc::new(AtomicU64::new(0)),
            _feed: PhantomData,
        }
    }

    /// Keeps the dump file in `dir`, named after the bucket (`sessions.dump`, ...).
    #[must_use]
    pub fn dump_dir(mut self, dir: impl AsRef<Path>) -> Self {
        self.dump_dir = Some(dir.as_ref().to_owned());
        self
    }

    /// The client this worker reads through.
    pub fn client(&self) -> &VistaClient {
        &self.client
    }

    /// Rows of the feed that could not be read and were skipped, since this worker was made.
    pub fn skipped_rows(&self) -> u64 {
        self.skipped.load(Ordering::Relaxed)
    }

    /// A builder with this collection's defaults (bucket, refresh interval, dump file in the
    /// dump directory); environment variables and the builder's methods override them.
    pub fn builder(self) -> Builder<Self> {
        let file = self
            .dump_dir
            .as_ref()
            .map(|dir| dir.join(format!("{}.dump", F::BUCKET)));
        Worker::builder(self).preset(|layer| {
            layer.bucket = Some(F::BUCKET.to_owned());
            layer.refresh = Some(Some(F::REFRESH));
            if let Some(file) = file {
                layer.file = Some(Some(file));
            }
        })
    }

    /// Starts the worker with its defaults; the first reload of the collection runs at once.
    /// The dump directory is created if it does not exist.
    pub async fn start(self) -> Result<Worker<Self>, Error> {
        if let Some(dir) = &self.dump_dir
            && let Err(error) = std::fs::create_dir_all(dir)
        {
            // Not fatal: the worker runs from memory; each failing dump is logged and counted.
            tracing::warn!(bucket = F::BUCKET, dir = %dir.display(), %error, "cannot create the dump directory");
        }
        self.builder().start().await
    }

    fn count_skipped<T>(&self, parsed: &Parsed<T>) {
        if parsed.skipped > 0 {
            self.skipped
                .fetch_add(parsed.skipped as u64, Ordering::Relaxed);
            tracing::warn!(
                bucket = F::BUCKET,
                skipped = parsed.skipped,
                "{}.skipped_rows",
                F::BUCKET
            );
        }
    }
}

impl<F: Feed> CacheWorker for VistaWorker<F> {
    type Key = F::Key;
    type Value = F::Value;
    type Error = VistaError;

    async fn load(&self, key: &F::Key) -> Result<Option<F::Value>, VistaError> {
        F::one(&self.client, key).await
    }

    async fn load_all(&self) -> Option<Result<Entries<Self>, VistaError>> {
        Some(F::all(&self.client).await.map(|parsed| {
            self.count_skipped(&parsed);
            parsed.items.into_iter().map(|v| (F::key(&v), v)).collect()
        }))
    }

    fn refresh_after(&self, _: &F::Key, value: &F::Value) -> Option<Duration> {
        F::refresh_after(&self.client, value)
    }

    fn expire_after(&self, _: &F::Key, value: &F::Value) -> Option<Duration> {
        F::expire_after(&self.client, value)
    }
}

/// How long after its showtime a session is removed.
pub const SESSION_EXPIRY: Duration = Duration::from_secs(20 * 60);

/// The `Sessions` collection.
pub struct SessionFeed;
/// The `Cinemas` collection.
pub struct CinemaFeed;
/// The `GetScheduledFilms` collection.
pub struct FilmFeed;

impl Feed for SessionFeed {
    type Key = String;
    type Value = Session;
    const BUCKET: &'static str = "sessions";
    const REFRESH: Duration = Duration::from_secs(3600);

    async fn all(client: &VistaClient) -> Result<Parsed<Session>, VistaError> {
        client.sessions().await
    }

    fn key(value: &Session) -> String {
        value.id.clone()
    }

    async fn one(client: &VistaClient, key: &String) -> Result<Option<Session>, VistaError> {
        client.session(key).await
    }

    /// The polling rule of [`poll_interval`](super::poll_interval), with the sessions TTL.
    fn refresh_after(client: &VistaClient, session: &Session) -> Option<Duration> {
        session.poll_interval(Timestamp::now(), client.time_zone(), Self::REFRESH)
    }

    /// 20 minutes after the showtime ([`SESSION_EXPIRY`]).
    fn expire_after(client: &VistaClient, session: &Session) -> Option<Duration> {
        let starts = session.starts_at(client.time_zone()).ok()?;
        let left = starts.duration_since(Timestamp::now())
            + SignedDuration::try_from(SESSION_EXPIRY).unwrap_or_default();
        Some(Duration::try_from(left).unwrap_or(Duration::ZERO))
    }
}

impl Feed for CinemaFeed {
    type Key = u32;
    type Value = Cinema;
    const BUCKET: &'static str = "cinemas";
    const REFRESH: Duration = Duration::from_secs(24 * 3600);

    async fn all(client: &VistaClient) -> Result<Parsed<Cinema>, VistaError> {
        client.cinemas().await
    }

    fn key(value: &Cinema) -> u32 {
        value.id
    }
}

impl Feed for FilmFeed {
    type Key = String;
    type Value = Film;
    const BUCKET: &'static str = "films";
    const REFRESH: Duration = Duration::from_secs(3600);

    async fn all(client: &VistaClient) -> Result<Parsed<Film>, VistaError> {
        client.films().await
    }

    fn key(value: &Film) -> String {
        value.id.clone()
    }
}
