//! The shared tier on Redis (or Valkey): one bucket kept by several nodes, polled upstream by
//! one of them, read by each from its own map.
//!
//! ```no_run
//! # use cache_worker::{CacheWorker, Worker, redis::RedisStore};
//! # struct Sessions;
//! # impl CacheWorker for Sessions {
//! #     type Key = String; type Value = u32; type Error = std::io::Error;
//! #     async fn load(&self, _: &String) -> Result<Option<u32>, std::io::Error> { Ok(None) }
//! # }
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let redis = RedisStore::connect("redis://:secret@redis.internal:6379/0").await?;
//! let sessions = Worker::builder(Sessions)
//!     .bucket("sessions")
//!     .file("/var/lib/app/sessions.dump") // the start while Redis is down
//!     .store(redis)
//!     .start()
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! # What each node does
//!
//! - **One leader per bucket**: a lease in Redis (`SET NX PX`, renewed every third of its
//!   time, [`RedisStore::lease`], 5 s by default) decides which node refreshes: it runs the
//!   refresh cycles, the bulk loads and the per-entry reloads and expiry, as a single worker
//!   would. Each acquisition increments a fencing token that every write to Redis is checked
//!   against: a leader that lost its lease without knowing it (paused, partitioned) has its
//!   late writes refused, and steps down. When the leader dies, another node takes over within
//!   the lease time, and runs its next cycle when the dead one would have. Its versions go on
//!   from its own clock (so that no change of the old leader that never reached Redis shares
//!   a version with one of its own), and it writes its copy whole at the first one: each
//!   follower reloads the bucket once ([`Event::Resynced`](crate::Event::Resynced)), and a
//!   client behind gets one `Full`.
//! - **The leader's changes are the bucket's**: each one is written to Redis right after it is
//!   made (entries, version, and the change log, a Redis Stream whose IDs are the versions,
//!   trimmed to `delta_threshold`), in one atomic script that checks the fence.
//! - **Followers** read the change log as it grows and apply each change to their own map with
//!   the leader's version: `peek` is a local lookup, events and SSE streams fire as on the
//!   leader, and [`Worker::version`](crate::Worker::version) and
//!   [`Worker::changes_since`](crate::Worker::changes_since) answer alike on every node. A gap
//!   (the log trimmed past this node, Redis emptied, a reconnect after a long outage) makes the
//!   follower load the whole bucket from Redis ([`Event::Resynced`](crate::Event::Resynced)),
//!   never miss a change silently. A follower's own writes (`insert`, `invalidate`, a value it
//!   loaded on a miss) are sent to the leader, and show in its map when the leader's change
//!   comes back (within milliseconds).
//! - **Misses across the cluster**: the first node to miss a key takes a short claim on it in
//!   Redis and loads it; the others wait for its change and load only if the claim's holder
//!   dies or times out (the claim lasts the load timeout and a second).
//! - **Warm start**: a node started against a populated Redis is warm at once, at Redis's
//!   version. If Redis is unreachable, it starts from its dump file (if it has one) and
//!   catches up once Redis is back.
//!
//! # When Redis is down
//!
//! Every node keeps serving its copy: reads never touch Redis. The leader keeps refreshing
//! until its lease would have run out (it cannot know whether another node took over), then
//! no node refreshes until Redis is back: the copies are kept as they are (stale-if-error, as
//! in an outage upstream), and entries with an expiry still expire on reads. Misses are
//! loaded for their readers and not stored. Connections come back by themselves; once Redis
//! answers again a leader is elected, and if Redis came back empty (restarted without
//! persistence) the leader writes its copy to it whole; every node then converges on one
//! state and one version.
//!
//! A value in Redis that does not decode as this worker's types (another schema, garbage) is
//! skipped and counted in [`Stats::store_undecodable`](crate::Stats::store_undecodable),
//! never served.

mod node;
#[doc(hidden)]
pub mod protocol;

pub(crate) use node::{Miss, load_for_miss, spawn};
pub use protocol::redact;

use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::codec;
use crate::store::persist;
use crate::store::{Batch, BucketId, Snapshot, Store, StoreError};
use protocol::{Conn, Keys, ProtocolError, Record, Ship, Shipped};

/// The default lease of the leader: 5 s.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(5);

/// A bucket shared through Redis by several nodes (see the [module](self) docs).
///
/// Cheap to clone; one `RedisStore` (one connection) may serve several buckets, each with
/// its own leader. Its `Debug` and logs show the URL with the password replaced by `***`.
#[derive(Clone)]
pub struct RedisStore {
    shared: Shared,
}

/// Why [`RedisStore::connect`] failed: an invalid URL, or a server that refused this client
/// (a wrong password, say). Never shows a password.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct RedisError(#[from] ProtocolError);

/// The parts of a [`RedisStore`] the worker's node task uses. Not a public API.
#[doc(hidden)]
#[derive(Clone)]
pub struct Shared {
    inner: Arc<SharedInner>,
}

struct SharedInner {
    /// The URL as given, password and all: kept only to connect, never shown.
    url: String,
    redacted: String,
    conn: tokio::sync::OnceCell<Conn>,
    node: String,
    lease: Duration,
    /// What each bucket's node task told: its fencing token while it leads, its stream cap.
    buckets: parking_lot::Mutex<HashMap<String, Registered>>,
    /// Entries of a load that did not decode, for the node task's stats.
    undecodable: AtomicU64,
}

#[derive(Clone, Copy, Default)]
struct Registered {
    /// The fencing token while this node leads the bucket; 0 while it does not.
    token: u64,
    cap: usize,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("url", &self.shared.inner.redacted)
            .field("node", &self.shared.inner.node)
            .field("lease", &self.shared.inner.lease)
            .field("connected", &self.shared.inner.conn.initialized())
            .finish()
    }
}

impl RedisStore {
    /// Connects to the Redis (or Valkey) at `url`: `redis://[user:password@]host[:port][/db]`,
    /// `rediss://...` for TLS (rustls, verified against the system's roots), or
    /// `redis+unix:///path/to/socket`.
    ///
    /// Fails on an invalid URL, or if the server refuses this client (a wrong password). A
    /// server that does not answer is not an error: the node starts from its dump file, and
    /// connects when the server is back.
    pub async fn connect(url: &str) -> Result<RedisStore, RedisError> {
        Conn::parse(url)?;
        let store = RedisStore {
            shared: Shared {
                inner: Arc::new(SharedInner {
                    url: url.to_owned(),
                    redacted: redact(url),
                    conn: tokio::sync::OnceCell::new(),
                    node: default_node_name(),
                    lease: DEFAULT_LEASE,
                    buckets: parking_lot::Mutex::new(HashMap::new()),
                    undecodable: AtomicU64::new(0),
                }),
            },
        };
        match store.shared.conn().await {
            Ok(_) => {}
            Err(error) if unreachable(&error) => {
                tracing::warn!(url = %store.shared.inner.redacted, %error, "Redis is unreachable; connecting when it is back");
            }
            Err(error) => return Err(error.into()),
        }
        Ok(store)
    }

    /// How long the leader's lease lasts (default [`DEFAULT_LEASE`], at least 300 ms): a dead
    /// leader is replaced within it. Set before the store is given to a worker.
    pub fn lease(self, ttl: Duration) -> Self {
        self.with(|s| s.lease = ttl.max(Duration::from_millis(300)))
    }

    /// This node's name in the lease and claims (default: host name, process id and a
    /// random suffix). Two nodes must not share one.
    pub fn node_name(self, name: impl Into<String>) -> Self {
        let name = name.into();
        self.with(|s| s.node = name)
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.shared.inner.node
    }

    fn with(self, change: impl FnOnce(&mut SharedInner)) -> Self {
        let mut inner = match Arc::try_unwrap(self.shared.inner) {
            Ok(inner) => inner,
            Err(shared) => SharedInner {
                url: shared.url.clone(),
                redacted: shared.redacted.clone(),
                conn: shared.conn.clone(),
                node: shared.node.clone(),
                lease: shared.lease,
                buckets: parking_lot::Mutex::new(HashMap::new()),
                undecodable: AtomicU64::new(0),
            },
        };
        change(&mut inner);
        RedisStore {
            shared: Shared {
                inner: Arc::new(inner),
            },
        }
    }
}

/// Whether a failure to connect is the server not answering (retried later), not a refusal.
fn unreachable(error: &ProtocolError) -> bool {
    match error {
        ProtocolError::Connect { source, .. } | ProtocolError::Redis { source, .. } => {
            source.is_io_error()
                || source.is_timeout()
                || source.is_connection_refusal()
                || source.is_connection_dropped()
        }
        ProtocolError::Timeout { .. } => true,
        _ => false,
    }
}

fn default_node_name() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "node".to_owned());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{host}-{}-{nanos:08x}", std::process::id())
}

impl Shared {
    /// The connection, made now if there is none yet (one attempt).
    pub(crate) async fn conn(&self) -> Result<&Conn, ProtocolError> {
        self.inner
            .conn
            .get_or_try_init(|| Conn::connect(&self.inner.url, protocol::DEFAULT_RESPONSE_TIMEOUT))
            .await
    }

    /// The connection if one was made.
    pub(crate) fn connected(&self) -> Option<&Conn> {
        self.inner.conn.get()
    }

    pub(crate) fn node(&self) -> &str {
        &self.inner.node
    }

    pub(crate) fn lease(&self) -> Duration {
        self.inner.lease
    }

    pub(crate) fn redacted(&self) -> &str {
        &self.inner.redacted
    }

    /// Registers a bucket's node task: its log is trimmed to `cap` changes.
    pub(crate) fn register(&self, bucket: &str, cap: usize) {
        self.inner
            .buckets
            .lock()
            .insert(bucket.to_owned(), Registered { token: 0, cap });
    }

    /// The fencing token of this node for `bucket` while it leads it; 0 otherwise.
    pub(crate) fn token(&self, bucket: &str) -> u64 {
        self.inner.buckets.lock().get(bucket).map_or(0, |r| r.token)
    }

    pub(crate) fn set_token(&self, bucket: &str, token: u64) {
        self.inner
            .buckets
            .lock()
            .entry(bucket.to_owned())
            .or_default()
            .token = token;
    }

    fn cap(&self, bucket: &str) -> usize {
        self.inner
            .buckets
            .lock()
            .get(bucket)
            .map_or(1, |r| r.cap.max(1))
    }

    /// Entries that did not decode in loads since the last call.
    pub(crate) fn take_undecodable(&self) -> u64 {
        self.inner.undecodable.swap(0, Ordering::Relaxed)
    }
}

impl<K, V> Store<K, V> for RedisStore
where
    K: Serialize + DeserializeOwned + Clone + Eq + Hash + Send + Sync + 'static,
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    async fn load(&self, bucket: &BucketId) -> Result<Option<Snapshot<K, V>>, StoreError> {
        let conn = self.shared.conn().await.map_err(StoreError::new)?;
        let keys = Keys::new(&bucket.name);
        let (version, raw) = conn.snapshot(&keys).await.map_err(StoreError::new)?;
        if version == 0 && raw.is_empty() {
            return Ok(None);
        }
        let (entries, undecodable) = decode_all::<K, V>(bucket.schema, raw);
        if undecodable > 0 {
            self.shared
                .inner
                .undecodable
                .fetch_add(undecodable, Ordering::Relaxed);
            tracing::warn!(
                bucket = bucket.name,
                undecodable,
                "entries in Redis that do not decode as this worker's types were skipped"
            );
        }
        Ok(Some(Snapshot {
            version: Some(version),
            exact: true,
            entries: entries
                .into_iter()
                .map(|(k, e)| (k, persist::stored(&e)))
                .collect(),
        }))
    }

    async fn write(&self, bucket: &BucketId, batch: Batch<K, V>) -> Result<(), StoreError> {
        let token = self.shared.token(&bucket.name);
        if token == 0 {
            // Only the leader writes; a follower's copy is Redis's.
            return Ok(());
        }
        let conn = self.shared.conn().await.map_err(StoreError::new)?;
        let keys = Keys::new(&bucket.name);
        let cap = self.shared.cap(&bucket.name);
        let encode_err = |e: bincode::error::EncodeError| StoreError::new(e);
        let shipped = match batch {
            Batch::Changes { from, changes, .. } => {
                let mut records = Vec::with_capacity(changes.len());
                for change in changes {
                    let entry = match change.entry {
                        Some(stored) => Some(
                            codec::encode_entry(bucket.schema, &persist::entry(stored))
                                .map_err(encode_err)?,
                        ),
                        None => None,
                    };
                    records.push(Record {
                        key: codec::encode_key(&change.key).map_err(encode_err)?,
                        entry,
                        version: change.version,
                    });
                }
                if records.is_empty() {
                    return Ok(());
                }
                conn.ship(
                    &keys,
                    token,
                    Ship::Delta {
                        from,
                        records: &records,
                    },
                    cap,
                )
                .await
            }
            Batch::Snapshot { version, entries } => {
                let mut encoded = Vec::with_capacity(entries.len());
                for (key, stored) in entries {
                    encoded.push((
                        codec::encode_key(&key).map_err(encode_err)?,
                        codec::encode_entry(bucket.schema, &persist::entry(stored))
                            .map_err(encode_err)?,
                    ));
                }
                conn.ship(
                    &keys,
                    token,
                    Ship::Full {
                        version,
                        entries: &encoded,
                    },
                    cap,
                )
                .await
            }
        };
        match shipped.map_err(StoreError::new)? {
            Shipped::Done { .. } => Ok(()),
            Shipped::Fenced { fence } => {
                // Another node took the lease: this one no longer leads (its task steps down).
                self.shared.set_token(&bucket.name, 0);
                Err(StoreError::new(format!(
                    "fenced: this node's token {token} is not the fence {fence} any more; another node leads bucket {:?}",
                    bucket.name
                )))
            }
            Shipped::Behind { version } => Err(StoreError::new(format!(
                "Redis holds bucket {:?} at version {version}, not at the version this node last wrote: writing it whole",
                bucket.name
            ))),
        }
    }

    async fn reset(&self, bucket: &BucketId) -> Result<(), StoreError> {
        let conn = self.shared.conn().await.map_err(StoreError::new)?;
        conn.reset(&Keys::new(&bucket.name))
            .await
            .map_err(StoreError::new)
    }

    fn write_delay(&self) -> Option<Duration> {
        Some(Duration::ZERO)
    }

    fn describe(&self) -> String {
        format!("redis {}", self.shared.inner.redacted)
    }

    fn __shared(&self) -> Option<Shared> {
        Some(self.shared.clone())
    }
}

/// Decodes entries read from Redis; returns them and how many did not decode. A large
/// snapshot is decoded in parts on the cores there are (a warm start or a resync, before
/// anyone reads this copy).
pub(crate) fn decode_all<K: DeserializeOwned + Send, V: DeserializeOwned + Send + Sync>(
    schema: u32,
    raw: Vec<(Vec<u8>, Vec<u8>)>,
) -> (Vec<(K, crate::bucket::Entry<V>)>, u64) {
    let decode = |part: &[(Vec<u8>, Vec<u8>)]| {
        let mut undecodable = 0;
        let mut entries = Vec::with_capacity(part.len());
        for (key, entry) in part {
            match (codec::decode_key(key), codec::decode_entry(schema, entry)) {
                (Some(key), Some(entry)) => entries.push((key, entry)),
                _ => undecodable += 1,
            }
        }
        (entries, undecodable)
    };
    let parts = crate::store::persist::parts_for(raw.len());
    if parts == 1 {
        return decode(&raw);
    }
    let decoded: Vec<_> = std::thread::scope(|s| {
        let running: Vec<_> = raw
            .chunks(raw.len().div_ceil(parts))
            .map(|part| s.spawn(move || decode(part)))
            .collect();
        running
            .into_iter()
            .map(|t| t.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    let mut entries = Vec::with_capacity(raw.len());
    let mut undecodable = 0;
    for (part, skipped) in decoded {
        entries.extend(part);
        undecodable += skipped;
    }
    (entries, undecodable)
}
