//! A node's task for its bucket on Redis: it follows the change log, or leads (holds the
//! lease, applies the writes other nodes send), and sends this node's own writes to the
//! leader. The bucket side of it (applying a change, resyncing) is `store::shared`.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::Shared;
use super::protocol::{Conn, Keys, ProtocolError, Tail, Tailed};
use crate::bucket::Entry;
use crate::codec;
use crate::inner::{Inner, Key, Value};
use crate::refresh::{Command, RefreshReport};
use crate::stats::bump;
use crate::store::shared::Forward;
use crate::{CacheWorker, FetchError};

/// The first byte of a forwarded entry: what the follower did.
const PUT: u8 = 0;
const LOADED: u8 = 1;

/// Starts the node's task for the bucket of `inner`.
pub(crate) fn spawn<W: CacheWorker>(
    inner: Arc<Inner<W>>,
    shared: Shared,
) -> Vec<tokio::task::JoinHandle<()>> {
    let bucket = inner.bucket_name().to_owned();
    shared.register(&bucket, inner.settings.delta_threshold);
    let taken = inner
        .cluster
        .as_ref()
        .and_then(|link| link.forwarded.lock().take());
    let mut tasks = Vec::new();
    if let Some(forwarded) = taken {
        tasks.push(tokio::spawn(forward(
            inner.clone(),
            shared.clone(),
            forwarded,
        )));
    }
    tasks.push(tokio::spawn(async move {
        let mut node = Node {
            keys: Keys::new(&bucket),
            inner,
            shared,
            tail: None,
            token: 0,
            renewed: Instant::now(),
            commands_after: String::from("0-0"),
            failures: 0,
        };
        node.run().await;
    }));
    tasks
}

struct Node<W: CacheWorker> {
    inner: Arc<Inner<W>>,
    shared: Shared,
    keys: Keys,
    tail: Option<Tail>,
    /// The fencing token while leading; 0 while following.
    token: u64,
    /// When the lease was last taken or renewed.
    renewed: Instant,
    /// The last forwarded write applied, while leading.
    commands_after: String,
    /// Redis failures in a row, for the retry delay.
    failures: u32,
}

impl<W: CacheWorker> Node<W> {
    fn bucket(&self) -> &str {
        self.inner.bucket_name()
    }

    /// A third of the lease: how often the leader renews it, and a follower tries for it.
    fn beat(&self) -> Duration {
        self.shared.lease() / 3
    }

    async fn run(&mut self) {
        let undecodable = self.shared.take_undecodable();
        self.inner
            .stats
            .store_undecodable
            .fetch_add(undecodable, std::sync::atomic::Ordering::Relaxed);
        let mut next_try = Instant::now();
        loop {
            if self.inner.cancel.is_cancelled() {
                break;
            }
            let result = if self.token == 0 {
                self.follow(&mut next_try).await
            } else {
                self.lead().await
            };
            match result {
                Ok(()) => self.failures = 0,
                Err(error) => {
                    self.failures += 1;
                    // The blocking connection may hold a half-read reply: a new one next time.
                    self.tail = None;
                    let delay = self
                        .inner
                        .settings
                        .retry_delay(self.failures)
                        .min(self.beat());
                    if self.failures == 1 {
                        tracing::warn!(bucket = self.bucket(), url = self.shared.redacted(), %error, "Redis failed; serving the local copy and retrying");
                    } else {
                        tracing::debug!(bucket = self.bucket(), %error, failures = self.failures, "Redis still failing");
                    }
                    if self.token != 0 && self.renewed.elapsed() >= self.shared.lease() {
                        // The lease has run out in Redis's eyes: another node may lead.
                        tracing::warn!(
                            bucket = self.bucket(),
                            "the lease ran out while Redis was unreachable; no longer refreshing"
                        );
                        self.step_down(false).await;
                    }
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = self.inner.cancel.cancelled() => break,
                    }
                }
            }
        }
        if self.token != 0 {
            // The last changes (of loads the shutdown waits for, too) go to Redis while this
            // node still holds the fence; the shutdown's own final write comes after the
            // lease is released, when only the leader's writes are taken.
            let _ = tokio::time::timeout(
                self.inner.settings.shutdown_timeout,
                self.inner.loads.wait(),
            )
            .await;
            let _ = crate::store::persist::write(&self.inner).await;
        }
        if self.token != 0
            && let Some(conn) = self.shared.connected()
        {
            // Another node takes over at once, instead of after the lease.
            let _ = conn
                .release_lease(&self.keys, self.shared.node(), self.token)
                .await;
            self.shared.set_token(self.bucket(), 0);
        }
    }

    async fn conn(&self) -> Result<Conn, ProtocolError> {
        self.shared.conn().await.cloned()
    }

    fn tail(&mut self, conn: &Conn) -> &mut Tail {
        self.tail.get_or_insert_with(|| conn.tail(&self.keys))
    }

    /// One round of following: try for the lease when it is time, else apply what the log
    /// has after this copy's version (waiting for it up to a beat).
    async fn follow(&mut self, next_try: &mut Instant) -> Result<(), ProtocolError> {
        let conn = self.conn().await?;
        if Instant::now() >= *next_try {
            *next_try = Instant::now() + self.beat();
            if let Some(token) = conn
                .acquire_lease(&self.keys, self.shared.node(), self.shared.lease())
                .await?
            {
                return self.take_over(&conn, token).await;
            }
        }
        let after = self.inner.current_version();
        let wait = next_try.saturating_duration_since(Instant::now());
        match self.tail(&conn).next(after, wait).await? {
            Tailed::Changes(records) => {
                let mut prev = after;
                for record in records {
                    if !self.apply(&record, prev) {
                        return self.resync(&conn).await;
                    }
                    prev = record.version;
                }
            }
            Tailed::Gap => self.resync(&conn).await?,
            Tailed::Idle => self.ready(),
        }
        Ok(())
    }

    /// Applies one change of the log; `false` if it cannot be (this copy is not where it
    /// follows on, or its key does not decode): the caller resyncs.
    fn apply(&self, record: &super::protocol::Record, prev: u64) -> bool {
        let schema = self.inner.settings.schema;
        let Some(key) = codec::decode_key::<Key<W>>(&record.key) else {
            bump(&self.inner.stats.store_undecodable);
            return false;
        };
        let entry = match &record.entry {
            Some(bytes) => match codec::decode_entry::<Value<W>>(schema, bytes) {
                Some(entry) => Some(entry),
                None => {
                    // Never served: this copy drops the key instead.
                    bump(&self.inner.stats.store_undecodable);
                    None
                }
            },
            None => None,
        };
        self.inner.apply_remote(key, entry, record.version, prev)
    }

    /// Replaces this copy with Redis's, unless Redis holds nothing (then this copy is kept:
    /// the leader writes its own there).
    async fn resync(&mut self, conn: &Conn) -> Result<(), ProtocolError> {
        let (version, raw) = conn.snapshot(&self.keys).await?;
        if version == 0 && raw.is_empty() {
            self.ready();
            return Ok(());
        }
        let (entries, undecodable) =
            super::decode_all::<Key<W>, Value<W>>(self.inner.settings.schema, raw);
        self.inner
            .stats
            .store_undecodable
            .fetch_add(undecodable, std::sync::atomic::Ordering::Relaxed);
        let now = self.inner.clock.now_ms();
        let live: Vec<(Key<W>, Entry<Value<W>>)> = entries
            .into_iter()
            .filter(|(_, e)| !e.expired(now))
            .collect();
        self.inner.resync(version, live);
        self.ready();
        Ok(())
    }

    /// Answers `Worker::ready` once this follower's copy is current.
    fn ready(&self) {
        self.inner.first_cycle.send_if_modified(|first| {
            let unset = first.is_none();
            if unset {
                *first = Some(RefreshReport::default());
            }
            unset
        });
    }

    /// Becomes the leader with fencing token `token`.
    async fn take_over(&mut self, conn: &Conn, token: u64) -> Result<(), ProtocolError> {
        self.renewed = Instant::now();
        let version = conn.version(&self.keys).await?;
        if version != 0 && version != self.inner.current_version() {
            // Redis's copy is the bucket's: this one catches up before it leads.
            self.resync(conn).await?;
        }
        // Everything read from Redis is read before the token is taken: from there on nothing
        // can fail, so a node never holds the token without leading.
        let commands_after = conn.commands_done(&self.keys).await?;
        let last_cycle = conn.cycle(&self.keys).await?;
        let due = match (self.inner.settings.refresh, last_cycle) {
            (Some(period), Some(last_ms)) => Some(
                self.inner
                    .clock
                    .instant_at(crate::clock::add_ms(last_ms, period)),
            ),
            _ => None,
        };
        self.commands_after = commands_after;
        // Versions go on from this node's clock (and never below Redis's), so a change an
        // earlier leader made and could not write never shares a version with one of ours.
        let start = crate::versions::log::clock_seed().max(version);
        self.inner
            .adopt_version(start, (version != 0).then_some(version));
        if let Some(persisting) = &self.inner.store {
            // The next write is the whole copy, at the version this node goes on from: so
            // Redis, and every follower (which resyncs at the reset it marks), moves to this
            // leader's line at once, whether or not the bucket changes. A leader change costs
            // one full write and one resync per follower.
            *persisting.written.lock() = None;
        }
        // The token before the write below: a store write without it is a follower's, which
        // writes nothing and would count the copy as written.
        self.token = token;
        self.shared.set_token(self.bucket(), token);
        if let Some(persisting) = &self.inner.store {
            persisting.mark_dirty();
        }
        if let Some(link) = &self.inner.cluster {
            link.set_leading(true);
        }
        let _ = self.inner.commands.send(Command::Lead { due });
        tracing::info!(
            bucket = self.bucket(),
            node = self.shared.node(),
            token,
            version = start,
            "leading: this node refreshes the bucket"
        );
        if due.is_some() {
            // The bucket was loaded by an earlier leader; with no cycle yet, `ready` waits
            // for this node's first one, as on a single node.
            self.ready();
        }
        Ok(())
    }

    /// Stops leading; with `resync`, this copy is replaced by Redis's (its changes since the
    /// last write to Redis were refused).
    async fn step_down(&mut self, resync: bool) {
        tracing::warn!(
            bucket = self.bucket(),
            node = self.shared.node(),
            token = self.token,
            "no longer leading: following the leader"
        );
        self.token = 0;
        self.shared.set_token(self.bucket(), 0);
        if let Some(link) = &self.inner.cluster {
            link.set_leading(false);
        }
        let _ = self.inner.commands.send(Command::Follow);
        if resync && let Ok(conn) = self.conn().await {
            let _ = self.resync(&conn).await;
        }
    }

    /// One round of leading: renew the lease when it is time, and apply the writes other
    /// nodes sent meanwhile.
    async fn lead(&mut self) -> Result<(), ProtocolError> {
        if self.shared.token(self.bucket()) != self.token {
            // A write to Redis was fenced: another node holds the lease.
            self.step_down(true).await;
            return Ok(());
        }
        let conn = self.conn().await?;
        if self.renewed.elapsed() >= self.beat() {
            let renewed = conn
                .renew_lease(
                    &self.keys,
                    self.shared.node(),
                    self.token,
                    self.shared.lease(),
                )
                .await?;
            if !renewed {
                self.step_down(true).await;
                return Ok(());
            }
            self.renewed = Instant::now();
            if let Some(link) = &self.inner.cluster {
                let last = link.last_cycle_ms();
                if last != 0 {
                    conn.set_cycle(&self.keys, self.token, last).await?;
                }
            }
        }
        let wait = self
            .beat()
            .saturating_sub(self.renewed.elapsed())
            .max(Duration::from_millis(10));
        let keys = self.keys.clone();
        let after = self.commands_after.clone();
        let commands = self.tail(&conn).commands(&keys, &after, wait).await?;
        let Some(last) = commands.last().map(|c| c.id.clone()) else {
            return Ok(());
        };
        let schema = self.inner.settings.schema;
        for command in commands {
            let Some(key) = codec::decode_key::<Key<W>>(&command.key) else {
                bump(&self.inner.stats.store_undecodable);
                continue;
            };
            match command.entry.as_deref().map(|b| b.split_first()) {
                None => {
                    self.inner.invalidate(&key);
                }
                Some(Some((&kind, bytes))) => {
                    let Some(entry) = codec::decode_entry::<Value<W>>(schema, bytes) else {
                        bump(&self.inner.stats.store_undecodable);
                        continue;
                    };
                    if kind == LOADED {
                        let fresh = std::sync::atomic::AtomicBool::new(false);
                        self.inner.store_loaded(key, entry.value, &fresh);
                    } else {
                        self.inner
                            .store(key, entry.value, crate::inner::Source::Insert);
                    }
                }
                Some(None) => bump(&self.inner.stats.store_undecodable),
            }
        }
        conn.set_commands_done(&self.keys, self.token, &last)
            .await?;
        self.commands_after = last;
        Ok(())
    }
}

/// Sends a follower's writes to the leader, in order, retrying while Redis is down (a write
/// made while no node can take it is kept until one can).
async fn forward<W: CacheWorker>(
    inner: Arc<Inner<W>>,
    shared: Shared,
    mut forwarded: tokio::sync::mpsc::UnboundedReceiver<Forward<Key<W>, Value<W>>>,
) {
    let keys = Keys::new(inner.bucket_name());
    let schema = inner.settings.schema;
    loop {
        let write = tokio::select! {
            write = forwarded.recv() => match write {
                Some(write) => write,
                None => return,
            },
            () = inner.cancel.cancelled() => return,
        };
        let (key, entry) = match write {
            Forward::Put { key, value } => (key, Some((PUT, value))),
            Forward::Loaded { key, value } => (key, Some((LOADED, value))),
            Forward::Invalidate { key } => (key, None),
        };
        let Ok(key_bytes) = codec::encode_key(&key) else {
            continue;
        };
        let entry_bytes = match entry {
            Some((kind, value)) => {
                let entry = inner.entry_now(&key, value);
                match codec::encode_entry(schema, &entry) {
                    Ok(bytes) => {
                        let mut tagged = Vec::with_capacity(bytes.len() + 1);
                        tagged.push(kind);
                        tagged.extend_from_slice(&bytes);
                        Some(tagged)
                    }
                    Err(_) => continue,
                }
            }
            None => None,
        };
        let mut attempt = 0;
        loop {
            let sent = match shared.conn().await {
                Ok(conn) => {
                    conn.forward(&keys, shared.node(), &key_bytes, entry_bytes.as_deref())
                        .await
                }
                Err(e) => Err(e),
            };
            match sent {
                Ok(()) => break,
                Err(error) => {
                    attempt += 1;
                    if attempt == 1 {
                        tracing::warn!(bucket = inner.bucket_name(), %error, "could not send a write to the leader; retrying");
                    }
                    tokio::select! {
                        () = tokio::time::sleep(inner.settings.retry_delay(attempt).min(Duration::from_secs(2))) => {}
                        () = inner.cancel.cancelled() => return,
                    }
                }
            }
        }
    }
}

/// A value for a miss: from a load of this node, or from another node's.
pub(crate) enum Miss<V> {
    /// Loaded here: store it (a follower sends it to the leader).
    Loaded(V),
    /// Another node loaded it; it is in this node's map already.
    Arrived(Arc<V>),
    /// Upstream has no such key.
    NotFound,
}

/// Loads a missed key once across the cluster: the first node to claim it loads it; the
/// others wait for its change, and load themselves only if the claim ends without one (its
/// holder died, failed or timed out). Without Redis, this node loads alone.
pub(crate) async fn load_for_miss<W: CacheWorker>(
    inner: &Inner<W>,
    key: &Key<W>,
) -> Result<Miss<Value<W>>, FetchError> {
    let shared = inner
        .store
        .as_ref()
        .and_then(|p| p.store.shared())
        .filter(|_| inner.cluster.is_some());
    let (Some(shared), Ok(key_bytes)) = (shared, codec::encode_key(key)) else {
        return load_here(inner, key).await;
    };
    let Some(conn) = shared.connected().cloned() else {
        return load_here(inner, key).await;
    };
    let keys = Keys::new(inner.bucket_name());
    let ttl = inner.settings.load_timeout + Duration::from_secs(1);
    let deadline = Instant::now() + ttl;
    loop {
        match conn.claim(&keys, &key_bytes, shared.node(), ttl).await {
            Ok(true) => {
                let loaded = load_here(inner, key).await;
                if !matches!(loaded, Ok(Miss::Loaded(_))) {
                    // The others load for themselves now, instead of at the claim's end.
                    let _ = conn.release_claim(&keys, &key_bytes, shared.node()).await;
                }
                return loaded;
            }
            Ok(false) => {}
            // Redis is down: this node loads alone.
            Err(_) => return load_here(inner, key).await,
        }
        // Another node is loading it: wait for its change to reach this map.
        loop {
            if let Some(value) = inner.bucket.peek(key) {
                bump(&inner.stats.coalesced);
                return Ok(Miss::Arrived(value));
            }
            if Instant::now() >= deadline {
                return load_here(inner, key).await;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
            match conn.claimed(&keys, &key_bytes).await {
                Ok(true) => {}
                // Released (it failed) or expired: claim it again, or find the value.
                Ok(false) => break,
                Err(_) => return load_here(inner, key).await,
            }
        }
        if let Some(value) = inner.bucket.peek(key) {
            return Ok(Miss::Arrived(value));
        }
    }
}

async fn load_here<W: CacheWorker>(
    inner: &Inner<W>,
    key: &Key<W>,
) -> Result<Miss<Value<W>>, FetchError> {
    Ok(match crate::load::load_one(inner, key).await? {
        Some(value) => Miss::Loaded(value),
        None => Miss::NotFound,
    })
}
