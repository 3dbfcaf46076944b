//! The Redis protocol of a shared bucket, byte for byte: the keys, the Lua scripts that change
//! them atomically, and the stream reads. Not generic over the bucket's types: keys and entries
//! are the bytes that the layer above encodes, and nothing here looks inside them.
//!
//! # Keys
//!
//! Every key of bucket `b` starts with `cw:{b}:`, so that one hash tag puts the whole bucket in
//! one slot and its scripts also run on Redis Cluster:
//!
//! | key | type | holds |
//! |---|---|---|
//! | `cw:{b}:entries` | hash | field = key bytes, value = entry bytes |
//! | `cw:{b}:version` | string | the bucket's version, decimal (absent = 0) |
//! | `cw:{b}:log` | stream | one entry per change, ID `<version>-0`: `p` (the version before it), `k` (key), `e` (entry; absent for a removal); or a reset marker, `p` and `reset` = `1` |
//! | `cw:{b}:lease` | string | the leader's node id, with a `PX` ttl |
//! | `cw:{b}:fence` | string | incremented at each lease acquisition: the fencing token |
//! | `cw:{b}:claim:<key>` | string | a node's short claim on a miss |
//! | `cw:{b}:cmd` | stream | writes forwarded to the leader: `k`, `e` (absent = invalidate), `n` (the sender) |
//! | `cw:{b}:cmd_done` | string | the last `cmd` ID the leader applied |
//!
//! Every write of the leader goes through [`Conn::ship`], one script that checks the fencing
//! token first, so a leader whose lease expired while it was paused cannot write after another
//! node took over.

use std::fmt;
use std::sync::LazyLock;
use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use ::redis::{AsyncConnectionConfig, Client, ConnectionAddr, IntoConnectionInfo, Script, Value};

/// How long a command on [`Conn`] may wait for its reply unless [`Conn::connect`] is told
/// otherwise. Longer than redis-rs' 500 ms, which a full ship of a large bucket can exceed.
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);

/// How long one connection attempt may take: a Redis that is down fails a call within a few
/// attempts instead of hanging it.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// How many times the [`ConnectionManager`] retries a lost connection before a call fails (it
/// tries again on the next call).
const RECONNECT_RETRIES: usize = 2;

/// The most stream entries one [`Tail::next`] or [`Tail::commands`] returns.
const READ_COUNT: usize = 1000;

/// The approximate cap of the `cmd` stream.
const COMMANDS_CAP: usize = 100_000;

/// What went wrong talking to Redis. Its `Display` names the operation and the key; it never
/// contains a password (URLs in it are [redacted](Conn::redacted)).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// The URL does not parse as a Redis URL (`redis://`, `rediss://`, `redis+unix://`).
    #[error("invalid Redis URL {url}: {reason}")]
    InvalidUrl {
        /// The URL, redacted.
        url: String,
        /// Why it was refused.
        reason: String,
    },
    /// The first connection failed.
    #[error("cannot connect to Redis at {url}: {source}{hint}")]
    Connect {
        /// The URL, redacted.
        url: String,
        /// What redis-rs reported.
        #[source]
        source: ::redis::RedisError,
        /// A likely cause where the error suggests one (TLS to a plain port or the reverse),
        /// as ` (...)`; empty otherwise.
        hint: &'static str,
    },
    /// A command failed: the connection is down, or Redis answered with an error.
    #[error("Redis failed {op} on {key}: {source}")]
    Redis {
        /// What was being done (`"shipping"`, `"reading the log"`, ...).
        op: &'static str,
        /// The Redis key (the bucket's prefix for operations on several keys).
        key: String,
        /// What redis-rs reported.
        #[source]
        source: ::redis::RedisError,
    },
    /// Redis did not answer a blocking read within its block time plus the response timeout.
    #[error("Redis did not answer {op} on {key} within {after:?}")]
    Timeout {
        /// What was being done.
        op: &'static str,
        /// The Redis key.
        key: String,
        /// How long the call waited.
        after: Duration,
    },
    /// Redis answered something this protocol never writes: a key of another program, or a
    /// different version of this crate.
    #[error("protocol violation in {key} while {op}: {detail}")]
    Protocol {
        /// What was being done.
        op: &'static str,
        /// The Redis key.
        key: String,
        /// What was wrong.
        detail: String,
    },
    /// The caller passed something the protocol cannot store (versions out of order, a zero
    /// ttl, a malformed stream ID); nothing was sent.
    #[error("invalid {what}: {detail}")]
    Invalid {
        /// The argument.
        what: &'static str,
        /// What was wrong.
        detail: String,
    },
}

impl ProtocolError {
    /// A closure wrapping a redis-rs error of `op` on `key`.
    fn redis(op: &'static str, key: &str) -> impl FnOnce(::redis::RedisError) -> ProtocolError {
        let key = key.to_owned();
        move |source| ProtocolError::Redis { op, key, source }
    }

    /// A [`ProtocolError::Protocol`]: Redis answered `detail` to `op` on `key`.
    fn protocol(op: &'static str, key: &str, detail: impl Into<String>) -> ProtocolError {
        ProtocolError::Protocol {
            op,
            key: key.to_owned(),
            detail: detail.into(),
        }
    }

    /// A [`ProtocolError::Invalid`]: the caller's `what` is wrong.
    fn invalid(what: &'static str, detail: impl Into<String>) -> ProtocolError {
        ProtocolError::Invalid {
            what,
            detail: detail.into(),
        }
    }
}

/// A parsed, checked Redis URL, before any connection.
#[derive(Clone)]
pub struct ConnInfo {
    info: ::redis::ConnectionInfo,
    redacted: String,
}

impl ConnInfo {
    /// The URL with its password replaced by `***`.
    pub fn redacted(&self) -> &str {
        &self.redacted
    }

    /// Whether the URL asks for TLS (`rediss://`).
    pub fn is_tls(&self) -> bool {
        matches!(self.info.addr(), ConnectionAddr::TcpTls { .. })
    }

    /// The database number (`redis://host/2` → 2).
    pub fn db(&self) -> i64 {
        self.info.redis_settings().db()
    }
}

impl fmt::Debug for ConnInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnInfo")
            .field("url", &self.redacted)
            .finish()
    }
}

/// A connection to the Redis of a shared tier: a [`ConnectionManager`] (multiplexed, reconnects
/// by itself) for the commands, and the [`Client`] for the dedicated connections of blocking
/// reads ([`Conn::tail`]). Cheap to clone.
#[derive(Clone)]
pub struct Conn {
    manager: ConnectionManager,
    client: Client,
    redacted: String,
    response_timeout: Duration,
}

impl fmt::Debug for Conn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Conn")
            .field("url", &self.redacted)
            .field("response_timeout", &self.response_timeout)
            .finish()
    }
}

impl Conn {
    /// Checks `url` without connecting.
    ///
    /// ```
    /// # use cache_worker::__redis_protocol::Conn;
    /// let info = Conn::parse("redis://app:s3cret@cache.internal:6379/2").unwrap();
    /// assert_eq!(info.redacted(), "redis://app:***@cache.internal:6379/2");
    /// assert_eq!(info.db(), 2);
    /// assert!(Conn::parse("http://cache.internal").is_err());
    /// ```
    pub fn parse(url: &str) -> Result<ConnInfo, ProtocolError> {
        let redacted = redact(url);
        let info = url
            .into_connection_info()
            .map_err(|e| ProtocolError::InvalidUrl {
                url: redacted.clone(),
                reason: e.to_string(),
            })?;
        Ok(ConnInfo { info, redacted })
    }

    /// Connects to `url`, failing if it does not parse or if the first connection fails.
    /// Every command then waits at most `response_timeout` for its reply
    /// ([`DEFAULT_RESPONSE_TIMEOUT`] is a good default); a lost connection is re-established in
    /// the background, the calls in between failing.
    ///
    /// A `rediss://` URL verifies the server against the system's roots; see
    /// [`Conn::connect_with_ca`] for a private CA.
    pub async fn connect(url: &str, response_timeout: Duration) -> Result<Conn, ProtocolError> {
        let info = Conn::parse(url)?;
        if info.is_tls() {
            install_crypto_provider();
        }
        let client = Client::open(info.info.clone()).map_err(|e| ProtocolError::InvalidUrl {
            url: info.redacted.clone(),
            reason: e.to_string(),
        })?;
        Conn::with_client(client, info, response_timeout).await
    }

    /// [`Conn::connect`] to a `rediss://` URL whose server certificate is signed by the CA in
    /// `ca_pem` (PEM, one or more certificates) instead of one of the system's roots.
    pub async fn connect_with_ca(
        url: &str,
        response_timeout: Duration,
        ca_pem: &[u8],
    ) -> Result<Conn, ProtocolError> {
        let info = Conn::parse(url)?;
        if !info.is_tls() {
            return Err(ProtocolError::InvalidUrl {
                url: info.redacted,
                reason: "a CA certificate needs a rediss:// URL".to_owned(),
            });
        }
        install_crypto_provider();
        let certificates = ::redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(ca_pem.to_vec()),
        };
        let client = Client::build_with_tls(info.info.clone(), certificates).map_err(|e| {
            ProtocolError::InvalidUrl {
                url: info.redacted.clone(),
                reason: e.to_string(),
            }
        })?;
        Conn::with_client(client, info, response_timeout).await
    }

    /// The manager over `client`, once Redis answered a PING through it.
    async fn with_client(
        client: Client,
        info: ConnInfo,
        response_timeout: Duration,
    ) -> Result<Conn, ProtocolError> {
        let tls = info.is_tls();
        let redacted = info.redacted;
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(response_timeout))
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_number_of_retries(RECONNECT_RETRIES)
            .set_min_delay(Duration::from_millis(100))
            .set_max_delay(Duration::from_secs(1));
        let connect_err = |source: ::redis::RedisError| {
            let hint = if tls && source.is_timeout() {
                " (no answer to the TLS handshake: is it a TLS port? a plain one needs redis://)"
            } else if !tls && source.is_connection_dropped() && !source.is_connection_refusal() {
                " (the server closed the connection: a TLS port needs rediss://)"
            } else {
                ""
            };
            ProtocolError::Connect {
                url: redacted.clone(),
                source,
                hint,
            }
        };
        let mut manager = client
            .get_connection_manager_with_config(config)
            .await
            .map_err(connect_err)?;
        // A server that requires a password accepts the connection and refuses its first
        // command: ask one, so that a missing or wrong password fails here.
        ::redis::cmd("PING")
            .query_async::<()>(&mut manager)
            .await
            .map_err(connect_err)?;
        Ok(Conn {
            manager,
            client,
            redacted,
            response_timeout,
        })
    }

    /// The URL with any password replaced by `***` (the username kept), for logs.
    pub fn redacted(&self) -> &str {
        &self.redacted
    }

    /// A handle on the manager for one call (a clone shares its connection).
    fn con(&self) -> ConnectionManager {
        self.manager.clone()
    }

    /// Takes the lease of the bucket for `node` if nobody holds it, and returns the new fencing
    /// token; `None` if it is held, also by `node` itself (which keeps it with
    /// [`Conn::renew_lease`]).
    pub async fn acquire_lease(
        &self,
        keys: &Keys,
        node: &str,
        ttl: Duration,
    ) -> Result<Option<u64>, ProtocolError> {
        let ttl = millis("lease ttl", ttl)?;
        ACQUIRE
            .key(&keys.lease)
            .key(&keys.fence)
            .arg(node)
            .arg(ttl)
            .invoke_async(&mut self.con())
            .await
            .map_err(ProtocolError::redis("acquiring the lease", &keys.lease))
    }

    /// Extends the lease by `ttl` if `node` holds it under `token`; `false` if it expired or
    /// another acquisition happened since.
    pub async fn renew_lease(
        &self,
        keys: &Keys,
        node: &str,
        token: u64,
        ttl: Duration,
    ) -> Result<bool, ProtocolError> {
        let ttl = millis("lease ttl", ttl)?;
        RENEW
            .key(&keys.lease)
            .key(&keys.fence)
            .arg(node)
            .arg(token)
            .arg(ttl)
            .invoke_async(&mut self.con())
            .await
            .map_err(ProtocolError::redis("renewing the lease", &keys.lease))
    }

    /// Gives the lease up if `node` holds it under `token`, so that another node need not wait
    /// for its ttl; does nothing otherwise.
    pub async fn release_lease(
        &self,
        keys: &Keys,
        node: &str,
        token: u64,
    ) -> Result<(), ProtocolError> {
        let _: i64 = RELEASE
            .key(&keys.lease)
            .key(&keys.fence)
            .arg(node)
            .arg(token)
            .invoke_async(&mut self.con())
            .await
            .map_err(ProtocolError::redis("releasing the lease", &keys.lease))?;
        Ok(())
    }

    /// Writes changes under the fencing `token`, in one script (all or nothing): a
    /// [`Ship::Delta`] applies its records in order and logs each; a [`Ship::Full`] replaces the
    /// whole bucket and logs a reset marker. The log is then trimmed to about `cap` entries (at
    /// least `cap`, and at least one; Redis trims whole stream nodes).
    ///
    /// Nothing is written if `token` is no longer the bucket's fence ([`Shipped::Fenced`]), or
    /// if a delta's `from` is not Redis's version ([`Shipped::Behind`]).
    ///
    /// The whole ship is one command, bound by the response timeout: a full ship of 100k
    /// entries of 200 bytes takes about 0.3 s (release build, loopback). A ship whose reply
    /// times out may still have been applied: the next delta then finds Redis ahead
    /// ([`Shipped::Behind`]), and a full ship is idempotent.
    pub async fn ship(
        &self,
        keys: &Keys,
        token: u64,
        ship: Ship<'_>,
        cap: usize,
    ) -> Result<Shipped, ProtocolError> {
        let mut invocation = SHIP.prepare_invoke();
        invocation
            .key(&keys.fence)
            .key(&keys.version)
            .key(&keys.entries)
            .key(&keys.log)
            .arg(token)
            .arg(cap.max(1));
        match ship {
            Ship::Delta { from, records } => {
                check_order(from, records)?;
                invocation.arg("delta").arg(from);
                for record in records {
                    invocation.arg(record.version);
                    match &record.entry {
                        Some(entry) => invocation.arg("put").arg(&record.key).arg(entry),
                        None => invocation.arg("del").arg(&record.key).arg(""),
                    };
                }
            }
            Ship::Full { version, entries } => {
                if version == 0 {
                    return Err(ProtocolError::invalid(
                        "full ship",
                        "its version must be at least 1 (stream IDs start at 1-0)",
                    ));
                }
                invocation.arg("full").arg(version);
                for (key, entry) in entries {
                    invocation.arg(key).arg(entry);
                }
            }
        }
        let reply: Vec<String> = invocation
            .invoke_async(&mut self.con())
            .await
            .map_err(ProtocolError::redis("shipping", &keys.prefix))?;
        let op = "shipping";
        let number = |s: &str| {
            s.parse::<u64>().map_err(|_| {
                ProtocolError::protocol(op, &keys.prefix, format!("not a number: {s:?}"))
            })
        };
        match reply.as_slice() {
            [kind, n] if kind == "done" => Ok(Shipped::Done {
                version: number(n)?,
            }),
            [kind, n] if kind == "fenced" => Ok(Shipped::Fenced { fence: number(n)? }),
            [kind, n] if kind == "behind" => Ok(Shipped::Behind {
                version: number(n)?,
            }),
            other => Err(ProtocolError::protocol(
                op,
                &keys.prefix,
                format!("the script answered {other:?}"),
            )),
        }
    }

    /// The bucket's version and all its entries, read atomically (`MULTI`/`EXEC`), so that the
    /// entries are exactly those of that version. Redis serves nothing else meanwhile: about
    /// 0.1 s for 100k entries of 200 bytes.
    pub async fn snapshot(
        &self,
        keys: &Keys,
    ) -> Result<(u64, Vec<(Vec<u8>, Vec<u8>)>), ProtocolError> {
        let op = "reading a snapshot";
        let (version, entries): (Option<Vec<u8>>, Value) = ::redis::pipe()
            .atomic()
            .cmd("GET")
            .arg(&keys.version)
            .cmd("HGETALL")
            .arg(&keys.entries)
            .query_async(&mut self.con())
            .await
            .map_err(ProtocolError::redis(op, &keys.prefix))?;
        let version = parse_version(op, &keys.version, version)?;
        let pairs = match entries {
            Value::Map(pairs) => pairs,
            Value::Array(flat) if flat.len() % 2 == 0 => {
                let mut pairs = Vec::with_capacity(flat.len() / 2);
                let mut flat = flat.into_iter();
                while let (Some(k), Some(v)) = (flat.next(), flat.next()) {
                    pairs.push((k, v));
                }
                pairs
            }
            other => {
                return Err(ProtocolError::protocol(
                    op,
                    &keys.entries,
                    format!("HGETALL answered {other:?}"),
                ));
            }
        };
        pairs
            .into_iter()
            .map(|(k, v)| match (k, v) {
                (Value::BulkString(k), Value::BulkString(v)) => Ok((k, v)),
                (k, v) => Err(ProtocolError::protocol(
                    op,
                    &keys.entries,
                    format!("a field that is not bytes: {k:?} => {v:?}"),
                )),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(|entries| (version, entries))
    }

    /// The bucket's version (0 if it was never written).
    pub async fn version(&self, keys: &Keys) -> Result<u64, ProtocolError> {
        let op = "reading the version";
        let version: Option<Vec<u8>> = ::redis::cmd("GET")
            .arg(&keys.version)
            .query_async(&mut self.con())
            .await
            .map_err(ProtocolError::redis(op, &keys.version))?;
        parse_version(op, &keys.version, version)
    }

    /// The bucket's fencing token: how many times its lease was acquired (0 if never).
    pub async fn fence(&self, keys: &Keys) -> Result<u64, ProtocolError> {
        let op = "reading the fence";
        let fence: Option<Vec<u8>> = ::redis::cmd("GET")
            .arg(&keys.fence)
            .query_async(&mut self.con())
            .await
            .map_err(ProtocolError::redis(op, &keys.fence))?;
        parse_version(op, &keys.fence, fence)
    }

    /// The node holding the lease, if any.
    pub async fn lease_holder(&self, keys: &Keys) -> Result<Option<String>, ProtocolError> {
        ::redis::cmd("GET")
            .arg(&keys.lease)
            .query_async(&mut self.con())
            .await
            .map_err(ProtocolError::redis("reading the lease", &keys.lease))
    }

    /// A reader of the bucket's log and command stream on a connection of its own, made on its
    /// first call.
    pub fn tail(&self, keys: &Keys) -> Tail {
        Tail {
            client: self.client.clone(),
            keys: keys.clone(),
            response_timeout: self.response_timeout,
            con: None,
        }
    }

    /// Claims the load of `key` for `node` for `ttl`, so that other nodes wait for it instead of
    /// loading it too; `false` if another claim holds it.
    pub async fn claim(
        &self,
        keys: &Keys,
        key: &[u8],
        node: &str,
        ttl: Duration,
    ) -> Result<bool, ProtocolError> {
        let claim = keys.claim(key);
        let ttl = millis("claim ttl", ttl)?;
        let reply: Value = ::redis::cmd("SET")
            .arg(&claim)
            .arg(node)
            .arg("NX")
            .arg("PX")
            .arg(ttl)
            .query_async(&mut self.con())
            .await
            .map_err(ProtocolError::redis("claiming", &keys.claim_name(key)))?;
        match reply {
            Value::Okay | Value::SimpleString(_) => Ok(true),
            Value::Nil => Ok(false),
            other => Err(ProtocolError::protocol(
                "claiming",
                &keys.claim_name(key),
                format!("SET NX answered {other:?}"),
            )),
        }
    }

    /// Drops `node`'s claim on `key`; a claim that expired and was taken by another node stays.
    pub async fn release_claim(
        &self,
        keys: &Keys,
        key: &[u8],
        node: &str,
    ) -> Result<(), ProtocolError> {
        let _: i64 = RELEASE_CLAIM
            .key(keys.claim(key))
            .arg(node)
            .invoke_async(&mut self.con())
            .await
            .map_err(ProtocolError::redis(
                "releasing a claim",
                &keys.claim_name(key),
            ))?;
        Ok(())
    }

    /// Whether some node claims `key`.
    pub async fn claimed(&self, keys: &Keys, key: &[u8]) -> Result<bool, ProtocolError> {
        ::redis::cmd("EXISTS")
            .arg(keys.claim(key))
            .query_async(&mut self.con())
            .await
            .map_err(ProtocolError::redis(
                "reading a claim",
                &keys.claim_name(key),
            ))
    }

    /// Forwards a write to the leader: `entry` for `key`, or `None` to invalidate it.
    pub async fn forward(
        &self,
        keys: &Keys,
        node: &str,
        key: &[u8],
        entry: Option<&[u8]>,
    ) -> Result<(), ProtocolError> {
        let mut xadd = ::redis::cmd("XADD");
        xadd.arg(&keys.cmd)
            .arg("MAXLEN")
            .arg("~")
            .arg(COMMANDS_CAP)
            .arg("*")
            .arg("k")
            .arg(key);
        if let Some(entry) = entry {
            xadd.arg("e").arg(entry);
        }
        xadd.arg("n").arg(node);
        let _: Value = xadd
            .query_async(&mut self.con())
            .await
            .map_err(ProtocolError::redis("forwarding a write", &keys.cmd))?;
        Ok(())
    }

    /// The ID of the last forwarded write the leader applied (`"0-0"` if none).
    pub async fn commands_done(&self, keys: &Keys) -> Result<String, ProtocolError> {
        let done: Option<String> = ::redis::cmd("GET")
            .arg(&keys.cmd_done)
            .query_async(&mut self.con())
            .await
            .map_err(ProtocolError::redis("reading cmd_done", &keys.cmd_done))?;
        Ok(done.unwrap_or_else(|| "0-0".to_owned()))
    }

    /// Records that the leader holding `token` applied the forwarded writes up to `id`; `false`
    /// if `token` is no longer the fence. Never moves backwards: an `id` at or before the
    /// recorded one leaves it (and answers `true`).
    pub async fn set_commands_done(
        &self,
        keys: &Keys,
        token: u64,
        id: &str,
    ) -> Result<bool, ProtocolError> {
        if parse_stream_id(id).is_none() {
            return Err(ProtocolError::invalid(
                "stream ID",
                format!("{id:?} is not <ms>-<seq>"),
            ));
        }
        SET_COMMANDS_DONE
            .key(&keys.fence)
            .key(&keys.cmd_done)
            .arg(token)
            .arg(id)
            .invoke_async(&mut self.con())
            .await
            .map_err(ProtocolError::redis("writing cmd_done", &keys.cmd_done))
    }
}

/// The Redis keys of one bucket, all under `cw:{<bucket>}:` (one hash tag, one cluster slot).
///
/// ```
/// # use cache_worker::__redis_protocol::Keys;
/// assert_eq!(Keys::new("prices").prefix(), "cw:{prices}:");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
    entries: String,
    version: String,
    log: String,
    lease: String,
    fence: String,
    cmd: String,
    cmd_done: String,
}

impl Keys {
    /// The keys of `bucket` (a non-empty name: `cw:{}:` would be no hash tag, and spread the
    /// bucket over the slots of a cluster).
    pub fn new(bucket: &str) -> Keys {
        let prefix = format!("cw:{{{bucket}}}:");
        let key = |name: &str| format!("{prefix}{name}");
        Keys {
            entries: key("entries"),
            version: key("version"),
            log: key("log"),
            lease: key("lease"),
            fence: key("fence"),
            cmd: key("cmd"),
            cmd_done: key("cmd_done"),
            prefix,
        }
    }

    /// `cw:{<bucket>}:`, the start of every key of the bucket.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The hash of the entries.
    pub fn entries(&self) -> &str {
        &self.entries
    }

    /// The version.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The stream of changes.
    pub fn log(&self) -> &str {
        &self.log
    }

    /// The lease.
    pub fn lease(&self) -> &str {
        &self.lease
    }

    /// The fencing counter.
    pub fn fence(&self) -> &str {
        &self.fence
    }

    /// The stream of forwarded writes.
    pub fn cmd(&self) -> &str {
        &self.cmd
    }

    /// The last forwarded write applied.
    pub fn cmd_done(&self) -> &str {
        &self.cmd_done
    }

    /// The claim key of `key`: the prefix, `claim:`, then the key's bytes as they are.
    pub fn claim(&self, key: &[u8]) -> Vec<u8> {
        let mut claim = Vec::with_capacity(self.prefix.len() + 6 + key.len());
        claim.extend_from_slice(self.prefix.as_bytes());
        claim.extend_from_slice(b"claim:");
        claim.extend_from_slice(key);
        claim
    }

    /// The claim key of `key` as text, for errors.
    fn claim_name(&self, key: &[u8]) -> String {
        String::from_utf8_lossy(&self.claim(key)).into_owned()
    }
}

/// One change in the log: `key` set to `entry` (`None`: removed) at `version`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The key's bytes.
    pub key: Vec<u8>,
    /// The entry's bytes; `None` for a removal.
    pub entry: Option<Vec<u8>>,
    /// The bucket's version after this change.
    pub version: u64,
}

/// What [`Conn::ship`] writes.
#[derive(Debug, Clone, Copy)]
pub enum Ship<'a> {
    /// Changes on top of version `from`, their versions strictly increasing and above `from`.
    Delta {
        /// The version the changes apply to: Redis's version must be this one.
        from: u64,
        /// The changes, in order.
        records: &'a [Record],
    },
    /// The whole bucket at `version` (at least 1), replacing whatever Redis holds.
    Full {
        /// The bucket's version.
        version: u64,
        /// Every entry as `(key, entry)`.
        entries: &'a [(Vec<u8>, Vec<u8>)],
    },
}

/// What [`Conn::ship`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shipped {
    /// Written: Redis is at `version`.
    Done {
        /// The bucket's version in Redis now.
        version: u64,
    },
    /// Nothing written: the token is not the fence any more (another node acquired the lease).
    Fenced {
        /// The current fence (0 if the lease was never acquired, e.g. after Redis lost it all).
        fence: u64,
    },
    /// Nothing written: a delta's `from` is not Redis's version.
    Behind {
        /// Redis's version.
        version: u64,
    },
}

/// What [`Tail::next`] read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tailed {
    /// Changes following `after`, contiguous: the first's predecessor is `after`, and each
    /// following one's is the record before it.
    Changes(Vec<Record>),
    /// The log cannot bring a reader at `after` up to date: its successor was trimmed, the
    /// bucket was reset (a full ship), or Redis is behind `after` (it lost its data). Resync
    /// from [`Conn::snapshot`].
    Gap,
    /// No change within the block time.
    Idle,
}

/// A forwarded write read from the `cmd` stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// Its stream ID, for [`Tail::commands`]' `after` and [`Conn::set_commands_done`].
    pub id: String,
    /// The node that sent it.
    pub node: String,
    /// The key's bytes.
    pub key: Vec<u8>,
    /// The entry's bytes; `None` to invalidate the key.
    pub entry: Option<Vec<u8>>,
}

/// A blocking reader of a bucket's streams, on a connection of its own (the
/// [`ConnectionManager`]'s response timeout would cut an `XREAD BLOCK` short). After an error
/// the connection is dropped and the next call makes a new one.
pub struct Tail {
    client: Client,
    keys: Keys,
    response_timeout: Duration,
    con: Option<MultiplexedConnection>,
}

impl fmt::Debug for Tail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tail")
            .field("log", &self.keys.log)
            .field("connected", &self.con.is_some())
            .finish()
    }
}

impl Tail {
    /// Waits up to `block` for the changes after version `after`, and returns up to 1000 of
    /// them. A zero `block` does not wait.
    pub async fn next(&mut self, after: u64, block: Duration) -> Result<Tailed, ProtocolError> {
        let op = "reading the log";
        let log = self.keys.log.clone();
        let reply = self.xread(op, &log, &format!("{after}-0"), block).await?;
        if reply.is_empty() {
            // No entry after `after`: either the reader is current, or Redis is behind it (it
            // lost its data, or a full ship reset it to a lower version), which no entry will
            // ever announce.
            let mut get = ::redis::cmd("GET");
            get.arg(&self.keys.version);
            let version_key = self.keys.version.clone();
            let version = self.call(op, &version_key, Duration::ZERO, &get).await?;
            let version = parse_version(op, &version_key, version)?;
            return Ok(if version < after {
                Tailed::Gap
            } else {
                Tailed::Idle
            });
        }
        let mut records = Vec::with_capacity(reply.len());
        let mut prev = after;
        for entry in reply {
            let version = log_version(op, &log, &entry.id)?;
            let mut fields = Fields(entry.map);
            let p = match fields.take("p") {
                Some(p) => parse_number(op, &log, &p)?,
                None => return Err(ProtocolError::protocol(op, &log, "an entry without p")),
            };
            if p != prev || fields.take("reset").is_some() {
                break;
            }
            let Some(key) = fields.take("k") else {
                return Err(ProtocolError::protocol(op, &log, "an entry without k"));
            };
            records.push(Record {
                key,
                entry: fields.take("e"),
                version,
            });
            prev = version;
        }
        // The contiguous part now; what broke it is the first entry of the next call, a Gap.
        Ok(if records.is_empty() {
            Tailed::Gap
        } else {
            Tailed::Changes(records)
        })
    }

    /// Waits up to `block` for the writes forwarded after stream ID `after` (`"0-0"`: from the
    /// start), and returns up to 1000 of them. A zero `block` does not wait.
    pub async fn commands(
        &mut self,
        keys: &Keys,
        after: &str,
        block: Duration,
    ) -> Result<Vec<Command>, ProtocolError> {
        let op = "reading forwarded writes";
        if parse_stream_id(after).is_none() {
            return Err(ProtocolError::invalid(
                "stream ID",
                format!("{after:?} is not <ms>-<seq>"),
            ));
        }
        let reply = self.xread(op, &keys.cmd, after, block).await?;
        reply
            .into_iter()
            .map(|entry| {
                let mut fields = Fields(entry.map);
                let key = fields.take("k");
                let node = fields.take("n").map(String::from_utf8);
                match (key, node) {
                    (Some(key), Some(Ok(node))) => Ok(Command {
                        id: entry.id,
                        node,
                        key,
                        entry: fields.take("e"),
                    }),
                    _ => Err(ProtocolError::protocol(
                        op,
                        &keys.cmd,
                        format!("entry {} lacks k or a UTF-8 n", entry.id),
                    )),
                }
            })
            .collect()
    }

    /// `XREAD COUNT 1000 [BLOCK ms] STREAMS stream after`: the entries of `stream`, none if
    /// the block time passed.
    async fn xread(
        &mut self,
        op: &'static str,
        stream: &str,
        after: &str,
        block: Duration,
    ) -> Result<Vec<::redis::streams::StreamId>, ProtocolError> {
        let mut xread = ::redis::cmd("XREAD");
        xread.arg("COUNT").arg(READ_COUNT);
        // BLOCK 0 would wait forever.
        let ms = block.as_millis();
        if ms > 0 {
            xread
                .arg("BLOCK")
                .arg(u64::try_from(ms).unwrap_or(u64::MAX));
        }
        xread.arg("STREAMS").arg(stream).arg(after);
        let reply: Option<::redis::streams::StreamReadReply> =
            self.call(op, stream, block, &xread).await?;
        Ok(reply
            .into_iter()
            .flat_map(|r| r.keys)
            .filter(|k| k.key == stream)
            .flat_map(|k| k.ids)
            .collect())
    }

    /// Runs `cmd` on the tail's connection (made first if there is none), waiting at most
    /// `block` plus the response timeout; drops the connection on any failure.
    async fn call<T: ::redis::FromRedisValue>(
        &mut self,
        op: &'static str,
        key: &str,
        block: Duration,
        cmd: &::redis::Cmd,
    ) -> Result<T, ProtocolError> {
        let after = block + self.response_timeout;
        let result = tokio::time::timeout(after, async {
            let con = match &mut self.con {
                Some(con) => con,
                None => {
                    let config = AsyncConnectionConfig::new()
                        .set_connection_timeout(Some(CONNECT_TIMEOUT))
                        .set_response_timeout(None);
                    let con = self
                        .client
                        .get_multiplexed_async_connection_with_config(&config)
                        .await?;
                    self.con.insert(con)
                }
            };
            cmd.query_async(con).await
        })
        .await;
        match result {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => {
                self.con = None;
                Err(ProtocolError::redis(op, key)(e))
            }
            Err(_) => {
                self.con = None;
                Err(ProtocolError::Timeout {
                    op,
                    key: key.to_owned(),
                    after,
                })
            }
        }
    }
}

/// A stream entry's fields, taken out one by one.
struct Fields(std::collections::HashMap<String, Value>);

impl Fields {
    /// The bytes of field `name`, if present.
    fn take(&mut self, name: &str) -> Option<Vec<u8>> {
        match self.0.remove(name)? {
            Value::BulkString(bytes) => Some(bytes),
            Value::SimpleString(s) => Some(s.into_bytes()),
            _ => None,
        }
    }
}

/// Rustls needs a process-wide crypto provider to make a client configuration; the crate's is
/// *ring*. An application that installed one first keeps its own.
fn install_crypto_provider() {
    let _already_installed = ::rustls::crypto::ring::default_provider().install_default();
}

/// `ttl` in whole milliseconds, refusing zero (which `PX` refuses too).
fn millis(what: &'static str, ttl: Duration) -> Result<u64, ProtocolError> {
    match u64::try_from(ttl.as_millis()) {
        Ok(0) => Err(ProtocolError::invalid(what, "must be at least 1 ms")),
        Ok(ms) => Ok(ms),
        Err(_) => Err(ProtocolError::invalid(what, format!("{ttl:?} is too long"))),
    }
}

/// Checks that `records` follow `from` with strictly increasing versions.
fn check_order(from: u64, records: &[Record]) -> Result<(), ProtocolError> {
    let mut prev = from;
    for record in records {
        if record.version <= prev {
            return Err(ProtocolError::invalid(
                "delta ship",
                format!(
                    "record version {} does not follow {prev} (versions must increase from `from`)",
                    record.version
                ),
            ));
        }
        prev = record.version;
    }
    Ok(())
}

/// A decimal counter stored at `key`, absent = 0.
fn parse_version(
    op: &'static str,
    key: &str,
    value: Option<Vec<u8>>,
) -> Result<u64, ProtocolError> {
    match value {
        None => Ok(0),
        Some(bytes) => parse_number(op, key, &bytes),
    }
}

/// A decimal `u64` read from `key`.
fn parse_number(op: &'static str, key: &str, bytes: &[u8]) -> Result<u64, ProtocolError> {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            ProtocolError::protocol(
                op,
                key,
                format!("{:?} is not a number", String::from_utf8_lossy(bytes)),
            )
        })
}

/// The version of a log entry, from its ID `<version>-0`.
fn log_version(op: &'static str, log: &str, id: &str) -> Result<u64, ProtocolError> {
    match parse_stream_id(id) {
        Some((version, 0)) => Ok(version),
        _ => Err(ProtocolError::protocol(
            op,
            log,
            format!("entry ID {id:?} is not <version>-0"),
        )),
    }
}

/// `<ms>-<seq>` as numbers.
fn parse_stream_id(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

/// `url` with the password of its user info (`scheme://user:password@host`) and of its query
/// (`?pass=...`, `?password=...`, as unix-socket URLs carry it) replaced by `***`. Works on any
/// text, so that a URL that does not parse can still be shown.
pub fn redact(url: &str) -> String {
    let (head, rest) = match url.find("://") {
        Some(at) => url.split_at(at + 3),
        // Not a URL: whatever comes before an '@' may be a password.
        None => match url.rfind('@') {
            Some(at) => return format!("***{}", &url[at..]),
            None => return url.to_owned(),
        },
    };
    let mut out = String::with_capacity(url.len());
    out.push_str(head);
    // The user info ends at the last '@' before the path; an '@' is not valid in a host.
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let rest = match rest[..authority_end].rfind('@') {
        Some(at) => {
            let userinfo = &rest[..at];
            match userinfo.split_once(':') {
                Some((user, _password)) => {
                    out.push_str(user);
                    out.push_str(":***");
                }
                None => out.push_str(userinfo),
            }
            &rest[at..]
        }
        _ => rest,
    };
    let (before_query, query) = match rest.split_once('?') {
        Some((before, query)) => (before, Some(query)),
        None => (rest, None),
    };
    out.push_str(before_query);
    if let Some(query) = query {
        let (query, fragment) = match query.split_once('#') {
            Some((query, fragment)) => (query, Some(fragment)),
            None => (query, None),
        };
        out.push('?');
        for (i, pair) in query.split('&').enumerate() {
            if i > 0 {
                out.push('&');
            }
            match pair.split_once('=') {
                Some((name, _)) if name == "pass" || name == "password" => {
                    out.push_str(name);
                    out.push_str("=***");
                }
                _ => out.push_str(pair),
            }
        }
        if let Some(fragment) = fragment {
            out.push('#');
            out.push_str(fragment);
        }
    }
    out
}

/// The Lua helpers of the scripts below. Versions and IDs are compared as canonical decimal
/// strings (shorter is smaller, then bytewise), because Lua's numbers are doubles and lose
/// precision above 2^53.
const LUA_HELPERS: &str = r#"
local function dec_lt(a, b)
  if #a ~= #b then return #a < #b end
  return a < b
end
local function dec_le(a, b)
  return a == b or dec_lt(a, b)
end
-- The ms part of a stream's last generated ID (trimming keeps it), or nil without the stream.
local function last_ms(stream)
  if redis.call('EXISTS', stream) == 0 then return nil end
  local info = redis.call('XINFO', 'STREAM', stream)
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then
      return string.match(info[i + 1], '^(%d+)%-')
    end
  end
  return nil
end
"#;

/// KEYS: lease, fence. ARGV: node, ttl ms. The new fencing token, or nil if the lease is held.
static ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return redis.call('INCR', KEYS[2])
end
return false
"#,
    )
});

/// KEYS: lease, fence. ARGV: node, token, ttl ms. 1 if renewed.
static RENEW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('GET', KEYS[1]) == ARGV[1] and redis.call('GET', KEYS[2]) == ARGV[2] then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return 1
end
return 0
"#,
    )
});

/// KEYS: lease, fence. ARGV: node, token. 1 if released.
static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('GET', KEYS[1]) == ARGV[1] and redis.call('GET', KEYS[2]) == ARGV[2] then
  return redis.call('DEL', KEYS[1])
end
return 0
"#,
    )
});

/// KEYS: claim. ARGV: node. 1 if released.
static RELEASE_CLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"#,
    )
});

/// KEYS: fence, cmd_done. ARGV: token, id. 1 unless fenced; never moves cmd_done backwards.
static SET_COMMANDS_DONE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r#"{LUA_HELPERS}
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local current = redis.call('GET', KEYS[2])
if current then
  local cm, cs = string.match(current, '^(%d+)%-(%d+)$')
  local nm, ns = string.match(ARGV[2], '^(%d+)%-(%d+)$')
  if cm and (dec_lt(nm, cm) or (nm == cm and dec_le(ns, cs))) then return 1 end
end
redis.call('SET', KEYS[2], ARGV[2])
return 1
"#
    ))
});

/// KEYS: fence, version, entries, log. ARGV: token, cap, then
/// - `delta`, from, and per record: version, `put`|`del`, key, entry (empty for `del`);
/// - `full`, version, and per entry: key, entry.
///
/// Answers `{'done', version}`, `{'fenced', fence}` or `{'behind', version}`. Every check comes
/// before the first write: a script that fails halfway keeps its writes.
static SHIP: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r#"{LUA_HELPERS}
local fence = redis.call('GET', KEYS[1])
if fence ~= ARGV[1] then return {{'fenced', fence or '0'}} end
local current = redis.call('GET', KEYS[2]) or '0'
if ARGV[3] == 'delta' then
  local from = ARGV[4]
  if current ~= from then return {{'behind', current}} end
  if #ARGV < 5 then return {{'done', current}} end
  local top = last_ms(KEYS[4])
  if top and dec_le(ARGV[5], top) then
    return redis.error_reply('the log of ' .. KEYS[4] .. ' reaches ' .. top .. ', past version ' .. current)
  end
  local prev = from
  for i = 5, #ARGV, 4 do
    local v, k = ARGV[i], ARGV[i + 2]
    if ARGV[i + 1] == 'put' then
      redis.call('HSET', KEYS[3], k, ARGV[i + 3])
      redis.call('XADD', KEYS[4], v .. '-0', 'p', prev, 'k', k, 'e', ARGV[i + 3])
    else
      redis.call('HDEL', KEYS[3], k)
      redis.call('XADD', KEYS[4], v .. '-0', 'p', prev, 'k', k)
    end
    prev = v
  end
  redis.call('SET', KEYS[2], prev)
  redis.call('XTRIM', KEYS[4], 'MAXLEN', '~', ARGV[2])
  return {{'done', prev}}
end
local version = ARGV[4]
-- UNLINK: the old hash (possibly 100k fields) is freed off the main thread.
redis.call('UNLINK', KEYS[3])
-- HSET in chunks of 1000 fields: unpack() is bounded by Lua's C stack.
for i = 5, #ARGV, 2000 do
  redis.call('HSET', KEYS[3], unpack(ARGV, i, math.min(i + 1999, #ARGV)))
end
-- A version at or below the log's top (Redis kept a log that the leader's history does not
-- continue): a new log, whose IDs start over.
local top = last_ms(KEYS[4])
if top and dec_le(version, top) then redis.call('DEL', KEYS[4]) end
redis.call('XADD', KEYS[4], version .. '-0', 'p', current, 'reset', '1')
redis.call('SET', KEYS[2], version)
redis.call('XTRIM', KEYS[4], 'MAXLEN', '~', ARGV[2])
return {{'done', version}}
"#
    ))
});

/// The bucket's schedule and its reset: what the node task needs beyond the log.
impl Conn {
    /// When the bucket's last full refresh cycle finished (ms since the Unix epoch), as the
    /// leader last told; `None` if never.
    pub async fn cycle(&self, keys: &Keys) -> Result<Option<u64>, ProtocolError> {
        let key = keys.cycle();
        let op = "reading the last cycle";
        let at: Option<Vec<u8>> = ::redis::cmd("GET")
            .arg(&key)
            .query_async(&mut self.con())
            .await
            .map_err(ProtocolError::redis(op, &key))?;
        at.map(|bytes| parse_number(op, &key, &bytes)).transpose()
    }

    /// Records when the leader holding `token` finished its last full cycle; `false` if
    /// `token` is no longer the fence.
    pub async fn set_cycle(
        &self,
        keys: &Keys,
        token: u64,
        at_ms: u64,
    ) -> Result<bool, ProtocolError> {
        let key = keys.cycle();
        SET_CYCLE
            .key(&keys.fence)
            .key(&key)
            .arg(token)
            .arg(at_ms)
            .invoke_async(&mut self.con())
            .await
            .map_err(ProtocolError::redis("writing the last cycle", &key))
    }

    /// Forgets the bucket: its entries, version, log, forwarded writes and schedule. The
    /// fence is kept, so that a leader from before cannot write after the reset.
    pub async fn reset(&self, keys: &Keys) -> Result<(), ProtocolError> {
        ::redis::cmd("DEL")
            .arg(&keys.entries)
            .arg(&keys.version)
            .arg(&keys.log)
            .arg(&keys.cmd)
            .arg(&keys.cmd_done)
            .arg(keys.cycle())
            .query_async::<()>(&mut self.con())
            .await
            .map_err(ProtocolError::redis("resetting the bucket", keys.prefix()))
    }
}

impl Keys {
    /// `cw:{b}:cycle`: when the last full cycle finished.
    fn cycle(&self) -> String {
        format!("{}cycle", self.prefix)
    }
}

/// KEYS: fence, cycle; ARGV: token, ms. Writes the cycle time if the token is the fence.
static SET_CYCLE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[2], ARGV[2])
return 1
",
    )
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords_only() {
        let cases = [
            ("redis://127.0.0.1:6379/", "redis://127.0.0.1:6379/"),
            ("redis://:s3cret@h:1/", "redis://:***@h:1/"),
            ("redis://app:s3cret@h:1/0", "redis://app:***@h:1/0"),
            ("rediss://app:p@ss:w0rd@h", "rediss://app:***@h"),
            ("redis://app@h/", "redis://app@h/"),
            ("redis://h/?protocol=resp3", "redis://h/?protocol=resp3"),
            (
                "redis+unix:///run/r.sock?db=1&pass=s3cret",
                "redis+unix:///run/r.sock?db=1&pass=***",
            ),
            (
                "unix:///r.sock?password=x#f",
                "unix:///r.sock?password=***#f",
            ),
            ("not a url", "not a url"),
            ("redis//:s3cret@h", "***@h"),
        ];
        for (url, redacted) in cases {
            assert_eq!(redact(url), redacted, "{url}");
        }
    }

    #[test]
    fn orders_delta_records() {
        let record = |version| Record {
            key: b"k".to_vec(),
            entry: None,
            version,
        };
        assert!(check_order(3, &[record(4), record(6)]).is_ok());
        assert!(check_order(3, &[record(3)]).is_err());
        assert!(check_order(3, &[record(5), record(5)]).is_err());
        assert!(check_order(3, &[]).is_ok());
    }

    #[test]
    fn parses_stream_ids() {
        assert_eq!(parse_stream_id("12-0"), Some((12, 0)));
        assert_eq!(parse_stream_id("0-0"), Some((0, 0)));
        assert_eq!(parse_stream_id("12"), None);
        assert_eq!(parse_stream_id("a-0"), None);
    }
}
