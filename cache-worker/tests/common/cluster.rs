//! Nodes of one shared bucket over one real `redis-server` (feature `redis`): several workers
//! in this process, each with a `RedisStore` of its own (its own node, its own connection),
//! and what the tests ask of them together: which one leads, what Redis holds, and whether
//! they all agree.

use std::collections::HashMap;
use std::time::Duration;

use cache_worker::redis::RedisStore;
use cache_worker::{Builder, Event, Worker};

use super::redis::RedisServer;
use super::started::builder;
use super::upstream::Upstream;
use super::wait::{eventually_within, until};

/// The leader's lease in these tests: short, so that a take-over fits in a test. The leader
/// renews it, and a follower tries for it, every third of it.
pub const LEASE: Duration = Duration::from_millis(900);

/// How long the nodes may take to agree after a change, a take-over or an outage.
pub const CONVERGE: Duration = Duration::from_secs(5);

/// The name of node `i` of `bucket`: what the lease holds while it leads.
pub fn node_name(bucket: &str, i: usize) -> String {
    format!("{bucket}-{i}")
}

/// A store of its own for node `name`, with the test lease.
pub async fn store(url: &str, name: &str) -> RedisStore {
    RedisStore::connect(url)
        .await
        .expect("connect to the test redis-server")
        .node_name(name)
        .lease(LEASE)
}

/// Node `i` of `bucket` over `up`, not started: no periodic refresh and no dump file unless
/// the test adds them.
pub async fn node_builder(
    up: &Upstream,
    server: &RedisServer,
    bucket: &str,
    i: usize,
) -> Builder<Upstream> {
    builder(up, bucket).store(store(&server.url(), &node_name(bucket, i)).await)
}

/// `n` nodes of `bucket`, each set up by `configure`: node 0 first, once it leads (and has
/// written its copy to Redis), then the others. So node 0 is the leader.
pub async fn nodes(
    up: &Upstream,
    server: &RedisServer,
    bucket: &str,
    n: usize,
    configure: impl Fn(Builder<Upstream>) -> Builder<Upstream>,
) -> Vec<Worker<Upstream>> {
    let mut nodes = Vec::with_capacity(n);
    for i in 0..n {
        let node = configure(node_builder(up, server, bucket, i).await)
            .start()
            .await
            .expect("start a node");
        nodes.push(node);
        if i == 0 {
            leads(server, bucket, &nodes, 0).await;
        }
    }
    nodes
}

/// `cw:{bucket}:<name>`.
pub fn redis_key(bucket: &str, name: &str) -> String {
    format!("cw:{{{bucket}}}:{name}")
}

/// The node holding the lease, as Redis says; `None` if none does.
pub async fn lease_holder(server: &RedisServer, bucket: &str) -> Option<String> {
    let holder = server.cli(&["GET", &redis_key(bucket, "lease")]).await;
    (holder != "(nil)").then_some(holder)
}

/// The bucket's version in Redis (0 if it has none).
pub async fn redis_version(server: &RedisServer, bucket: &str) -> u64 {
    let version = server.cli(&["GET", &redis_key(bucket, "version")]).await;
    if version == "(nil)" {
        return 0;
    }
    version
        .parse()
        .unwrap_or_else(|_| panic!("the version in Redis is a number: {version:?}"))
}

/// How many entries Redis holds for the bucket.
pub async fn redis_entries(server: &RedisServer, bucket: &str) -> usize {
    let count = server.cli(&["HLEN", &redis_key(bucket, "entries")]).await;
    count
        .parse()
        .unwrap_or_else(|_| panic!("HLEN answers a number: {count:?}"))
}

/// Waits until node `i` of `nodes` leads: it holds the lease, and Redis is at its version
/// (its copy is written). Fails the test after [`CONVERGE`].
pub async fn leads(server: &RedisServer, bucket: &str, nodes: &[Worker<Upstream>], i: usize) {
    let name = node_name(bucket, i);
    let deadline = tokio::time::Instant::now() + CONVERGE;
    loop {
        let holder = lease_holder(server, bucket).await;
        let version = redis_version(server, bucket).await;
        if holder.as_deref() == Some(name.as_str()) && version == nodes[i].version() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "node {name} does not lead within {CONVERGE:?}: the lease is {holder:?}, Redis is at \
             version {version}, the node at {}",
            nodes[i].version()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until node `name` holds the lease.
pub async fn held_by(server: &RedisServer, bucket: &str, name: &str) {
    let deadline = tokio::time::Instant::now() + CONVERGE;
    loop {
        let holder = lease_holder(server, bucket).await;
        if holder.as_deref() == Some(name) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} does not take the lease of {bucket} within {CONVERGE:?}: it is {holder:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until some node of `nodes` holds the lease, and returns its index.
pub async fn leader(server: &RedisServer, bucket: &str, nodes: &[Worker<Upstream>]) -> usize {
    let deadline = tokio::time::Instant::now() + CONVERGE;
    loop {
        let holder = lease_holder(server, bucket).await;
        if let Some(i) = (0..nodes.len()).find(|&i| holder == Some(node_name(bucket, i))) {
            return i;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no node of {bucket} leads within {CONVERGE:?}: the lease is {holder:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub use super::started::contents;

/// Each node's version and entries.
fn states(nodes: &[&Worker<Upstream>]) -> Vec<(u64, HashMap<String, u64>)> {
    nodes.iter().map(|n| (n.version(), contents(n))).collect()
}

/// Whether every node is at one version with the same entries.
pub fn agree(nodes: &[&Worker<Upstream>]) -> bool {
    let states = states(nodes);
    states.windows(2).all(|pair| pair[0] == pair[1])
}

/// Waits until every node is at one version with the same entries, and returns them; fails
/// the test with each node's state if they do not agree within [`CONVERGE`].
pub async fn converged(nodes: &[&Worker<Upstream>]) -> (u64, HashMap<String, u64>) {
    if !eventually_within(CONVERGE, || agree(nodes)).await {
        panic!(
            "the nodes do not agree within {CONVERGE:?}: {:#?}",
            states(nodes)
        );
    }
    states(nodes).swap_remove(0)
}

/// [`converged`] over all of `nodes`.
pub async fn all_converged(nodes: &[Worker<Upstream>]) -> (u64, HashMap<String, u64>) {
    converged(&nodes.iter().collect::<Vec<_>>()).await
}

/// Waits until every node is at the bucket's version in Redis, and agrees; returns the state.
pub async fn converged_with_redis(
    server: &RedisServer,
    bucket: &str,
    nodes: &[&Worker<Upstream>],
) -> (u64, HashMap<String, u64>) {
    let deadline = tokio::time::Instant::now() + CONVERGE;
    loop {
        let version = redis_version(server, bucket).await;
        if agree(nodes) && nodes[0].version() == version {
            return states(nodes).swap_remove(0);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the nodes do not agree with Redis (version {version}) within {CONVERGE:?}: {:#?}",
            states(nodes)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A change event as `(kind, key, value, version)`, the removal's cause left out (a follower
/// learns of a removal from the change log, which does not carry its cause); `None` for what
/// is not a change of an entry.
pub fn change(event: &Event<String, u64>) -> Option<(&'static str, String, u64, u64)> {
    match event {
        Event::Inserted {
            key,
            value,
            version,
        } => Some(("inserted", key.clone(), **value, *version)),
        Event::Updated {
            key,
            value,
            version,
            ..
        } => Some(("updated", key.clone(), **value, *version)),
        Event::Removed {
            key,
            value,
            version,
            ..
        } => Some(("removed", key.clone(), **value, *version)),
        _ => None,
    }
}

/// The change events of `events`, as [`change`] shows them.
pub fn changes(events: &[Event<String, u64>]) -> Vec<(&'static str, String, u64, u64)> {
    events.iter().filter_map(change).collect()
}

/// Waits until `check` holds for every node, failing the test with `what` after [`CONVERGE`].
pub async fn on_every_node(
    nodes: &[&Worker<Upstream>],
    what: &str,
    check: impl Fn(&Worker<Upstream>) -> bool,
) {
    until(CONVERGE, what, || {
        nodes.iter().all(|n| check(n)).then_some(())
    })
    .await;
}
