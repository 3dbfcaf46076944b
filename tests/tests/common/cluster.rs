//! A cluster: a fake Vista, a real Redis and N `cluster-node` processes over them, with the
//! reader running against every node that is up. Dropped, it kills every process; dropped
//! while a test panics, it prints every node's log first.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use cache_worker::vista::testing::FakeVista;
use jiff::tz::TimeZone;
use rustix::process::Signal;
use serde::Deserialize;
use serde_json::Value;
use tempfile::TempDir;

use super::node::{Node, NodeArgs};
use super::reader::{Reader, Reads, Targets};
use super::redis::RedisServer;

/// The buckets every node serves, each under `/<bucket>`.
pub const BUCKETS: [&str; 3] = ["sessions", "cinemas", "films"];

/// How long the first start may take to serve entries on every node.
const SERVING_WITHIN: Duration = Duration::from_secs(30);
/// The pause between two looks at the nodes while waiting for them.
const POLL: Duration = Duration::from_millis(50);

/// Settings of a [`Cluster`] before it starts.
#[must_use]
pub struct ClusterBuilder {
    nodes: usize,
    lease: Duration,
    refresh: Duration,
    persistent: bool,
    first_show_in: Duration,
}

impl ClusterBuilder {
    /// How many nodes (default 3).
    pub fn nodes(mut self, nodes: usize) -> Self {
        self.nodes = nodes;
        self
    }

    /// The leader's lease (default 900 ms).
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// The refresh period of every bucket (default 2 s).
    pub fn refresh(mut self, refresh: Duration) -> Self {
        self.refresh = refresh;
        self
    }

    /// A Redis whose data survives a SIGKILL ([`RedisServer::start_persistent`]); default: none.
    pub fn persistent(mut self) -> Self {
        self.persistent = true;
        self
    }

    /// How far ahead the fake's first show is (default 5 minutes: the leader polls the seats
    /// of the sessions within the hour on their own, through the Sessions route). Beyond an
    /// hour, the Sessions route sees the full reloads alone.
    pub fn first_show_in(mut self, first_show_in: Duration) -> Self {
        self.first_show_in = first_show_in;
        self
    }

    /// Starts the fake Vista, Redis, then the nodes one after the other (each warm from Redis
    /// but the first), and returns once every node serves entries in every bucket; the reader
    /// starts then.
    pub async fn start(self) -> Cluster {
        // Only needed because cache-worker's `vista` builds reqwest with rustls and no
        // provider; a second install (by another test of the process) is refused, which is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let time_zone = "Europe/Berlin";
        let fake = FakeVista::builder()
            .time_zone(TimeZone::get(time_zone).expect("the Europe/Berlin zone"))
            .first_show_in(self.first_show_in)
            .start()
            .await
            .expect("start the fake Vista");
        let redis = if self.persistent {
            RedisServer::start_persistent().await
        } else {
            RedisServer::start().await
        };
        let args = NodeArgs {
            redis: redis.url(),
            vista: fake.base_url().to_owned(),
            token: fake.token().to_owned(),
            time_zone: time_zone.to_owned(),
            lease: self.lease,
            refresh: self.refresh,
        };
        let logs = TempDir::with_prefix("cluster-logs-").expect("a temp dir for the logs");
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .expect("an HTTP client");
        let targets = Targets::default();
        let reader = Reader::spawn(client.clone(), targets.clone());
        let mut cluster = Cluster {
            nodes: (0..self.nodes)
                .map(|i| Node::new(&format!("n{i}"), logs.path()))
                .collect(),
            fake,
            redis,
            args,
            client,
            targets,
            reader,
            counts: Counts::default(),
            _logs: logs,
        };
        let deadline = Instant::now() + SERVING_WITHIN;
        for node in 0..self.nodes {
            cluster.nodes[node].spawn(&cluster.args).await;
            cluster.wait_serving(node, deadline).await;
        }
        for node in 0..self.nodes {
            cluster.set_target(node);
        }
        cluster
    }
}

/// Fake Vista, Redis, nodes, reader: see the [module](self) docs.
pub struct Cluster {
    /// The upstream, to change its data and count its requests.
    pub fake: FakeVista,
    /// The shared Redis; [`Cluster::kill_redis`] and [`Cluster::restart_redis`] count.
    pub redis: RedisServer,
    // Before `_logs`: the processes go before their log dir.
    nodes: Vec<Node>,
    args: NodeArgs,
    client: reqwest::Client,
    targets: Targets,
    reader: Reader,
    counts: Counts,
    _logs: TempDir,
}

/// What the tests did to the cluster, for the figures.
#[derive(Default)]
struct Counts {
    kills: u32,
    pauses: u32,
    terminations: u32,
    restarts: u32,
    redis_kills: u32,
}

/// A node's `/status`.
#[derive(Clone, Debug, Deserialize)]
pub struct Status {
    pub node: String,
    pub buckets: BTreeMap<String, BucketStatus>,
}

impl Status {
    pub fn bucket(&self, bucket: &str) -> &BucketStatus {
        self.buckets
            .get(bucket)
            .unwrap_or_else(|| panic!("{} has no bucket {bucket:?}: {self:?}", self.node))
    }
}

/// One bucket in a node's `/status`.
#[derive(Clone, Debug, Deserialize)]
pub struct BucketStatus {
    pub version: u64,
    pub entries: u64,
    pub warm: bool,
    pub started: String,
    pub loads: u64,
    pub refresh_cycles: u64,
    pub store_writes: u64,
    pub store_failures: u64,
    pub store_undecodable: u64,
}

/// A bucket as one node serves it (`GET /<bucket>`): its version, and its entries by the
/// JSON text of their keys.
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    pub version: u64,
    pub entries: BTreeMap<String, Value>,
}

impl Snapshot {
    fn parse(json: &Value) -> Option<Snapshot> {
        let version = json.get("version")?.as_u64()?;
        let entries = json
            .get("entries")?
            .as_array()?
            .iter()
            .map(|e| Some((e.get("key")?.to_string(), e.get("value")?.clone())))
            .collect::<Option<_>>()?;
        Some(Snapshot { version, entries })
    }

    /// The value of the entry whose key is the JSON string `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.entries.get(&Value::from(key).to_string())
    }
}

impl Cluster {
    /// 3 nodes, a lease of 900 ms, a refresh of 2 s, a Redis without persistence.
    pub fn builder() -> ClusterBuilder {
        ClusterBuilder {
            nodes: 3,
            lease: Duration::from_millis(900),
            refresh: Duration::from_secs(2),
            persistent: false,
            first_show_in: Duration::from_secs(5 * 60),
        }
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn lease(&self) -> Duration {
        self.args.lease
    }

    /// How often the leader renews its lease, and a follower tries for it: a third of it.
    pub fn beat(&self) -> Duration {
        self.args.lease / 3
    }

    pub fn refresh(&self) -> Duration {
        self.args.refresh
    }

    pub fn name(&self, node: usize) -> &str {
        &self.nodes[node].name
    }

    /// The nodes that run and are not paused.
    pub fn up(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].is_running() && !self.nodes[i].paused)
            .collect()
    }

    /// `http://127.0.0.1:PORT<path>` of a running node.
    pub fn url(&self, node: usize, path: &str) -> String {
        let addr = self.nodes[node]
            .addr
            .unwrap_or_else(|| panic!("{} is not running", self.nodes[node].name));
        format!("http://{addr}{path}")
    }

    async fn get_json(&self, node: usize, path: &str) -> Result<Value, String> {
        let response = self
            .client
            .get(self.url(node, path))
            .send()
            .await
            .map_err(|e| format!("GET {path} of {}: {e}", self.name(node)))?;
        let status = response.status();
        if status != reqwest::StatusCode::OK {
            return Err(format!("GET {path} of {}: {status}", self.name(node)));
        }
        response
            .json()
            .await
            .map_err(|e| format!("GET {path} of {}: not JSON: {e}", self.name(node)))
    }

    /// A node's `/status`.
    pub async fn status(&self, node: usize) -> Status {
        let json = self
            .get_json(node, "/status")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        serde_json::from_value(json.clone())
            .unwrap_or_else(|e| panic!("/status of {} ({e}): {json}", self.name(node)))
    }

    /// A node's `GET /<bucket>`: `{"kind":"full","version":N,"entries":[…]}`.
    pub async fn bucket_json(&self, node: usize, bucket: &str) -> Value {
        self.get_json(node, &format!("/{bucket}"))
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Cluster::bucket_json`], parsed.
    pub async fn snapshot(&self, node: usize, bucket: &str) -> Snapshot {
        let json = self.bucket_json(node, bucket).await;
        Snapshot::parse(&json).unwrap_or_else(|| {
            panic!(
                "/{bucket} of {} is not a full answer: {json}",
                self.name(node)
            )
        })
    }

    /// The free seats of a session as a node serves it, and the node's version.
    pub async fn seats(&self, node: usize, session: &str) -> (Option<u64>, u64) {
        let snapshot = self.snapshot(node, "sessions").await;
        let seats = snapshot
            .get(session)
            .and_then(|s| s.get("seats_available"))
            .and_then(Value::as_u64);
        (seats, snapshot.version)
    }

    /// SIGKILL: the node is gone at once, lease and all.
    pub async fn kill(&mut self, node: usize) {
        self.targets.set(node, None);
        self.nodes[node].kill().await;
        self.counts.kills += 1;
    }

    /// SIGSTOP: the node keeps its sockets and answers nothing.
    pub fn pause(&mut self, node: usize) {
        self.targets.set(node, None);
        self.nodes[node].signal(Signal::STOP);
        self.nodes[node].paused = true;
        self.counts.pauses += 1;
    }

    /// SIGCONT after [`Cluster::pause`].
    pub fn resume(&mut self, node: usize) {
        self.nodes[node].signal(Signal::CONT);
        self.nodes[node].paused = false;
        self.set_target(node);
    }

    /// SIGTERM, and waits for the node to exit; panics unless it exits with success.
    pub async fn terminate(&mut self, node: usize) {
        self.targets.set(node, None);
        let status = self.nodes[node].terminate().await;
        assert!(
            status.success(),
            "{} exited with {status} after SIGTERM; its log ends:\n{}",
            self.name(node),
            self.nodes[node].log_tail(40)
        );
        self.counts.terminations += 1;
    }

    /// Starts a node again (killed first if it runs), with its name and dump dir; it is read
    /// from as soon as it prints `listening`.
    pub async fn restart(&mut self, node: usize) {
        if self.nodes[node].is_running() {
            self.kill(node).await;
        }
        self.nodes[node].spawn(&self.args).await;
        self.set_target(node);
        self.counts.restarts += 1;
    }

    /// SIGKILL to Redis ([`RedisServer::kill`]).
    pub fn kill_redis(&mut self) {
        self.redis.kill();
        self.counts.redis_kills += 1;
    }

    /// Redis again on its port ([`RedisServer::restart`]): with its data if it is persistent.
    pub async fn restart_redis(&mut self) {
        self.redis.restart().await;
    }

    /// The node whose name the lease of `bucket` holds in Redis, if any.
    pub async fn leader(&self, bucket: &str) -> Option<usize> {
        let holder = self
            .redis
            .cli(&["GET", &format!("cw:{{{bucket}}}:lease")])
            .await;
        if holder == "(nil)" {
            return None;
        }
        let node = self.nodes.iter().position(|n| n.name == holder);
        Some(node.unwrap_or_else(|| panic!("the lease of {bucket} holds {holder:?}, no node")))
    }

    /// Waits until the lease of `bucket` is held by a node other than `not`; returns it and
    /// how long that took.
    pub async fn leader_other_than(
        &self,
        bucket: &str,
        not: usize,
        within: Duration,
    ) -> Option<(usize, Duration)> {
        let start = Instant::now();
        loop {
            if let Some(node) = self.leader(bucket).await
                && node != not
            {
                return Some((node, start.elapsed()));
            }
            if start.elapsed() > within {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A Redis key of `bucket`: `cw:{<bucket>}:<name>`.
    pub fn redis_key(bucket: &str, name: &str) -> String {
        format!("cw:{{{bucket}}}:{name}")
    }

    /// Waits until every node that is up serves each bucket at one version with equal
    /// entries; returns the versions by bucket. Panics after `within` with what differs.
    pub async fn converged(&self, within: Duration) -> BTreeMap<&'static str, u64> {
        self.try_converged(within)
            .await
            .unwrap_or_else(|difference| panic!("{difference}"))
    }

    /// [`Cluster::converged`], with what differs after `within` as the error.
    pub async fn try_converged(
        &self,
        within: Duration,
    ) -> Result<BTreeMap<&'static str, u64>, String> {
        let start = Instant::now();
        loop {
            let last = match self.compare().await {
                Ok(versions) => return Ok(versions),
                Err(difference) => difference,
            };
            if start.elapsed() > within {
                return Err(format!(
                    "the nodes did not converge within {within:?}: {last}"
                ));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The versions if every node that is up serves the same buckets, else what differs.
    async fn compare(&self) -> Result<BTreeMap<&'static str, u64>, String> {
        let up = self.up();
        let mut versions = BTreeMap::new();
        for bucket in BUCKETS {
            let mut snapshots = Vec::new();
            for &node in &up {
                let json = self.get_json(node, &format!("/{bucket}")).await?;
                let snapshot = Snapshot::parse(&json)
                    .ok_or_else(|| format!("/{bucket} of {}: {json}", self.name(node)))?;
                snapshots.push((node, snapshot));
            }
            let Some((a, reference)) = snapshots.first() else {
                continue;
            };
            if snapshots.iter().any(|(_, s)| s != reference) {
                let each: Vec<String> = snapshots
                    .iter()
                    .map(|(node, s)| {
                        let differ = s
                            .entries
                            .iter()
                            .filter(|(k, v)| reference.entries.get(*k) != Some(v))
                            .map(|(k, _)| k)
                            .chain(
                                reference
                                    .entries
                                    .keys()
                                    .filter(|k| !s.entries.contains_key(*k)),
                            )
                            .count();
                        format!(
                            "{} at version {} with {} entries ({differ} differ from {}'s)",
                            self.name(*node),
                            s.version,
                            s.entries.len(),
                            self.name(*a)
                        )
                    })
                    .collect();
                return Err(format!("{bucket}: {}", each.join(", ")));
            }
            versions.insert(bucket, reference.version);
        }
        Ok(versions)
    }

    /// Waits until every node that is up serves `session` with `seats` free seats, all at one
    /// version; returns how long that took, or `None` if they did not within `within`.
    pub async fn seen_everywhere(
        &self,
        session: &str,
        seats: u32,
        within: Duration,
    ) -> Option<Duration> {
        let start = Instant::now();
        loop {
            let mut seen = Vec::new();
            for node in self.up() {
                seen.push(self.seats(node, session).await);
            }
            let at_one_version = seen.windows(2).all(|w| w[0].1 == w[1].1);
            if at_one_version && seen.iter().all(|(s, _)| *s == Some(u64::from(seats))) {
                return Some(start.elapsed());
            }
            if start.elapsed() > within {
                eprintln!(
                    "lost: {session} with {seats} seats not on every node within {within:?}: \
                     (seats, version) by node up {:?}: {seen:?}",
                    self.up()
                );
                return None;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Sets the seats of a session upstream to a number it did not have; returns the number.
    pub fn change_seats(&self, session: &str) -> u32 {
        let before = self
            .fake
            .seats(session)
            .unwrap_or_else(|| panic!("the fake serves no session {session}"));
        let seats = if before >= 500 { 1 } else { before + 17 };
        assert!(self.fake.set_seats(session, seats));
        seats
    }

    /// The reads of the reader so far.
    pub fn reads(&self) -> Reads {
        self.reader.reads()
    }

    /// The first failed reads, with their node and reason.
    pub fn read_failures(&self) -> Vec<String> {
        self.reader.failures()
    }

    /// A node's log, every start of it.
    pub fn log(&self, node: usize) -> String {
        self.nodes[node].log()
    }

    /// One line of figures for RELIABILITY.md: what was done, what was checked, the reads,
    /// and the store's failed writes and undecodable entries on each node that is up.
    pub async fn figures(&self, test: &str, changes: u32, lost: u32, extra: &str) -> String {
        let Counts {
            kills,
            pauses,
            terminations,
            restarts,
            redis_kills,
        } = self.counts;
        let Reads { served, failed } = self.reads();
        let mut store = Vec::new();
        for node in self.up() {
            let status = self.status(node).await;
            let (failures, undecodable) = status.buckets.values().fold((0, 0), |(f, u), b| {
                (f + b.store_failures, u + b.store_undecodable)
            });
            store.push(format!("{}:{failures}/{undecodable}", status.node));
        }
        format!(
            "figures {test}: nodes={} kills={kills} pauses={pauses} terminations={terminations} \
             restarts={restarts} redis_kills={redis_kills} changes={changes} lost={lost} \
             reads_served={served} reads_failed={failed} store_failed/undecodable={} {extra}",
            self.nodes.len(),
            store.join(",")
        )
    }

    fn set_target(&self, node: usize) {
        self.targets.set(node, Some(self.url(node, "/sessions")));
    }

    /// Waits until a node serves at least one entry in every bucket.
    async fn wait_serving(&self, node: usize, deadline: Instant) {
        loop {
            let mut missing = None;
            for bucket in BUCKETS {
                match self.get_json(node, &format!("/{bucket}")).await {
                    Ok(json) if Snapshot::parse(&json).is_some_and(|s| !s.entries.is_empty()) => {}
                    Ok(json) => missing = Some(format!("/{bucket}: {json}")),
                    Err(e) => missing = Some(e),
                }
            }
            let Some(missing) = missing else {
                return;
            };
            assert!(
                Instant::now() < deadline,
                "{} serves no entries within {SERVING_WITHIN:?}: {missing}",
                self.name(node)
            );
            tokio::time::sleep(POLL).await;
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for node in &self.nodes {
                eprintln!("===== log of {} (last 150 lines)", node.name);
                eprintln!("{}", node.log_tail(150));
            }
            eprintln!(
                "===== reads: {:?}, failed: {:?}",
                self.reads(),
                self.read_failures()
            );
        }
    }
}
