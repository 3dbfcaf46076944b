//! The Redis tier in one process: several workers of one bucket, each with its own
//! `RedisStore` (its own node), over one real `redis-server`, checked against what the
//! `cache_worker::redis` module docs promise: one leader refreshes, its changes reach every
//! follower at its versions, followers' writes and misses go through the leader, a take-over
//! after a shutdown or behind the leader's back (fencing), outages with and without Redis's
//! data, warm starts from Redis or from the dump file, values that do not decode, passwords,
//! and the environment override.
#![cfg(feature = "redis")]

mod common;

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::time::Duration;

use cache_worker::__redis_protocol::{Conn, DEFAULT_RESPONSE_TIMEOUT, Keys, Record, Ship, Shipped};
use cache_worker::redis::RedisStore;
use cache_worker::store::Store;
use cache_worker::{Changes, Event, Settings, Worker};
use common::cluster::{
    CONVERGE, LEASE, all_converged, changes, contents, converged, converged_with_redis, held_by,
    leader, leads, lease_holder, node_builder, node_name, nodes, on_every_node, redis_entries,
    redis_key, redis_version, store,
};
use common::redis::RedisServer;
use common::{
    Reply, Upstream, builder, drain, drain_within, eventually_within, key, map, spawn_fetch,
    temp_dump, within,
};
use tokio::time::Instant;

/// `k0 → 0` … `k{n-1} → n-1`.
fn numbered(n: u64) -> HashMap<String, u64> {
    (0..n).map(|i| (format!("k{i}"), i)).collect()
}

/// A `Full` answer's version and entries, sorted (the order of a map is no promise).
fn full(changes: Changes<String, u64>) -> (u64, Vec<(String, u64)>) {
    let Changes::Full { version, entries } = changes else {
        panic!("not a Full answer: {changes:?}");
    };
    let mut entries: Vec<(String, u64)> = entries.into_iter().map(|(k, v)| (k, *v)).collect();
    entries.sort();
    (version, entries)
}

/// The bytes of a `String` key as the shared store encodes it (bincode's standard
/// configuration: a one-byte length, then the bytes), as text for `cli`.
fn encoded_key(k: &str) -> String {
    assert!(k.len() < 251, "a one-byte length");
    let mut bytes = vec![k.len() as u8];
    bytes.extend_from_slice(k.as_bytes());
    String::from_utf8(bytes).expect("an ASCII key")
}

// ---- One leader ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_node_holds_the_lease_and_only_it_refreshes() {
    let server = RedisServer::start().await;
    let up = Upstream::new();
    up.set_collection(&[("a", 1), ("b", 2)]);
    let period = Duration::from_millis(300);
    let nodes = nodes(&up, &server, "lease", 3, |b| b.refresh(period)).await;
    assert_eq!(
        lease_holder(&server, "lease").await,
        Some(node_name("lease", 0)),
        "the first node leads"
    );
    let (_, entries) = all_converged(&nodes).await;
    assert_eq!(
        entries,
        map(&[("a", 1), ("b", 2)]),
        "the leader's bulk load, everywhere"
    );

    let window = Duration::from_secs(2);
    let before = up.bulk_loads.load(Ordering::SeqCst);
    tokio::time::sleep(window).await;
    let during = up.bulk_loads.load(Ordering::SeqCst) - before;
    // One node refreshing every 300 ms makes at most 7 cycles in 2 s; three would make ~20.
    assert!(
        (2..=8).contains(&during),
        "{during} bulk loads in {window:?} with a {period:?} refresh: one node's, not three's"
    );
    assert_eq!(
        lease_holder(&server, "lease").await,
        Some(node_name("lease", 0)),
        "the lease stayed where it was"
    );
    assert!(
        nodes[0].stats().refresh_cycles > 0,
        "the leader refreshes: {:?}",
        nodes[0].stats()
    );
    for (i, follower) in nodes.iter().enumerate().skip(1) {
        assert_eq!(
            follower.stats().refresh_cycles,
            0,
            "follower {i} never refreshes"
        );
        assert_eq!(
            follower.refresh_all().await.expect("refresh_all").reloaded,
            0,
            "refresh_all on follower {i} leaves it to the leader"
        );
    }
}

// ---- The leader's changes ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leaders_changes_reach_every_follower_at_its_versions() {
    let server = RedisServer::start().await;
    let up = Upstream::with_values(&[("x", 7), ("a", 1), ("b", 2), ("c", 3)]);
    let nodes = nodes(&up, &server, "changes", 3, |b| b).await;
    let (v0, _) = all_converged(&nodes).await;
    let mut streams: Vec<_> = nodes.iter().map(Worker::subscribe).collect();
    let leader = &nodes[0];

    leader.insert(key("x"), 7);
    for k in ["a", "b", "c"] {
        leader.fetch(&key(k)).await.expect("the leader loads");
    }
    leader.invalidate("b");
    up.set_value("a", 10);
    let report = leader.refresh_all().await.expect("refresh");
    assert_eq!(
        report.updated, 1,
        "the refresh picked up a's new value: {report:?}"
    );

    let (version, entries) =
        converged_with_redis(&server, "changes", &nodes.iter().collect::<Vec<_>>()).await;
    assert_eq!(entries, map(&[("x", 7), ("a", 10), ("c", 3)]));
    assert_eq!(version, v0 + 6, "six changes, each one version");
    // Three misses and the refresh of x, a and c: all on the leader.
    assert_eq!(up.total_loads(), 6, "the followers loaded nothing");

    let leader_changes = changes(&drain_within(&mut streams[0], Duration::from_millis(100)).await);
    assert_eq!(
        leader_changes.iter().map(|c| c.3).collect::<Vec<_>>(),
        (v0 + 1..=version).collect::<Vec<_>>(),
        "the leader's events: {leader_changes:?}"
    );
    for (i, stream) in streams.iter_mut().enumerate().skip(1) {
        let events = drain(stream).await;
        assert!(
            !events.iter().any(|e| matches!(e, Event::Resynced { .. })),
            "follower {i} followed the log, never resynced: {events:?}"
        );
        assert_eq!(
            changes(&events),
            leader_changes,
            "follower {i} got the leader's events, at its versions"
        );
    }

    let mid = v0 + 3;
    for (i, node) in nodes.iter().enumerate() {
        assert_eq!(node.version(), version, "node {i}'s version");
        assert_eq!(
            node.changes_since(Some(v0)),
            leader.changes_since(Some(v0)),
            "node {i} answers a client at {v0} as the leader does"
        );
        assert_eq!(
            node.changes_since(Some(mid)),
            leader.changes_since(Some(mid)),
            "node {i} answers a client at {mid} as the leader does"
        );
        assert_eq!(
            node.changes_since(Some(version)),
            Changes::NoChange { version },
            "node {i} is current"
        );
        assert_eq!(
            full(node.changes_since(None)),
            full(leader.changes_since(None)),
            "node {i}'s full answer"
        );
    }
    assert!(
        matches!(leader.changes_since(Some(v0)), Changes::Delta { .. }),
        "a client at {v0} gets a delta"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_followers_insert_and_invalidate_go_through_the_leader_to_every_node() {
    let server = RedisServer::start().await;
    let up = Upstream::new();
    let nodes = nodes(&up, &server, "forward", 3, |b| b).await;
    let all: Vec<&Worker<Upstream>> = nodes.iter().collect();
    let (v0, _) = converged(&all).await;
    let mut leader_events = nodes[0].subscribe();

    nodes[1].insert(key("d"), 4);
    on_every_node(&all, "d reaches every node", |n| {
        n.peek("d").as_deref() == Some(&4)
    })
    .await;
    let (v1, entries) = converged(&all).await;
    assert_eq!(
        entries,
        map(&[("d", 4)]),
        "d on every node, the sender's too"
    );
    assert_eq!(v1, v0 + 1, "one change");

    assert_eq!(
        nodes[2].invalidate("d").as_deref(),
        Some(&4),
        "invalidate answers the value it removes"
    );
    on_every_node(&all, "d leaves every node", |n| n.peek("d").is_none()).await;
    let (v2, entries) = converged(&all).await;
    assert!(entries.is_empty(), "d is gone everywhere: {entries:?}");
    assert_eq!(v2, v0 + 2, "one more change");

    let events = changes(&drain(&mut leader_events).await);
    assert_eq!(
        events,
        [
            ("inserted", key("d"), 4, v0 + 1),
            ("removed", key("d"), 4, v0 + 2)
        ],
        "the leader made both changes"
    );
}

// ---- Misses ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_missed_on_three_nodes_at_once_is_loaded_once() {
    let server = RedisServer::start().await;
    let up = Upstream::with_values(&[("m", 9)]);
    let nodes = nodes(&up, &server, "misses", 3, |b| b).await;
    up.set_delay(Duration::from_millis(300));

    let fetches: Vec<_> = nodes.iter().map(|n| spawn_fetch(n, "m")).collect();
    for (i, fetch) in fetches.into_iter().enumerate() {
        let value = within(CONVERGE, "a fetch", fetch).await.expect("join");
        let value = value.unwrap_or_else(|e| panic!("node {i} failed: {e}"));
        assert_eq!(*value, 9, "node {i} gets the value");
    }
    assert_eq!(up.loads_of("m"), 1, "one load across the cluster");
    let (_, entries) = all_converged(&nodes).await;
    assert_eq!(entries, map(&[("m", 9)]), "stored once, on every node");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_claim_holders_load_fails_the_others_load_at_once() {
    let server = RedisServer::start().await;
    let up = Upstream::new();
    let nodes = nodes(&up, &server, "claims", 3, |b| b).await;
    up.set_delay(Duration::from_millis(300));
    up.set("f", Reply::Fail("upstream hiccup"));
    let first_load = up.hold("f");

    let fetches: Vec<_> = nodes.iter().map(|n| spawn_fetch(n, "f")).collect();
    within(CONVERGE, "the first load", first_load.entered()).await;
    up.set_value("f", 5);
    first_load.release();
    // The claim lasts the load timeout (30 s) and a second: the others must not wait for it.
    let released = Instant::now();
    let mut failed = 0;
    for (i, fetch) in fetches.into_iter().enumerate() {
        match within(Duration::from_secs(3), "a fetch after the failure", fetch)
            .await
            .expect("join")
        {
            Ok(value) => assert_eq!(*value, 5, "node {i} gets the second load's value"),
            Err(error) => {
                failed += 1;
                assert!(
                    error.to_string().contains("upstream hiccup"),
                    "node {i} failed with its own load's error: {error}"
                );
            }
        }
    }
    let waited = released.elapsed();
    assert_eq!(failed, 1, "only the claim holder's fetch failed");
    assert_eq!(
        up.loads_of("f"),
        2,
        "the failed load, then one more for the other two"
    );
    assert!(
        waited < Duration::from_secs(3),
        "the others loaded after {waited:?}, not at the claim's end"
    );
}

// ---- Take-overs ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_leader_shuts_down_another_leads_within_the_lease() {
    let server = RedisServer::start().await;
    let up = Upstream::new();
    let nodes = nodes(&up, &server, "handover", 3, |b| b).await;
    nodes[0].insert(key("a"), 1);
    let (v0, _) = all_converged(&nodes).await;

    nodes[0].shutdown().await.expect("shutdown");
    let shut = Instant::now();
    let rest = &nodes[1..];
    // Over all three: the lease names nodes by their index among them.
    let new = leader(&server, "handover", &nodes).await;
    assert_ne!(new, 0, "the node that shut down leads");
    let took = shut.elapsed();
    assert!(
        took < LEASE,
        "node {new} led {took:?} after the shutdown, not within the {LEASE:?} lease (the \
         leader releases it)"
    );
    let others: Vec<&Worker<Upstream>> = rest.iter().collect();
    // The lease is taken before the new leader writes its whole copy, on its own line of
    // versions, which the follower resyncs at: the change below comes after that.
    let moved = Instant::now();
    let (v1, entries) = loop {
        let (v1, entries) = converged_with_redis(&server, "handover", &others).await;
        if v1 != v0 {
            break (v1, entries);
        }
        assert!(
            moved.elapsed() < CONVERGE,
            "the new leader never wrote its copy at a version of its own (still {v0})"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(entries, map(&[("a", 1)]), "the bucket as it was");

    let follower = if new == 1 { &nodes[2] } else { &nodes[1] };
    let mut events = follower.subscribe();
    nodes[new].insert(key("b"), 2);
    let (v2, entries) = converged_with_redis(&server, "handover", &others).await;
    assert_eq!(
        entries,
        map(&[("a", 1), ("b", 2)]),
        "the new leader's change, everywhere"
    );
    let seen = drain(&mut events).await;
    assert_eq!(
        changes(&seen),
        [("inserted", key("b"), 2, v2)],
        "the follower got the new leader's change as an event (after {v1}): {seen:?}"
    );
    assert_eq!(
        nodes[new].stats().store_failures,
        0,
        "the new leader's first write went through"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_lease_was_taken_is_fenced_steps_down_and_resyncs() {
    let server = RedisServer::start().await;
    let up = Upstream::with_values(&[("a", 1)]);
    let bucket = "fenced";
    // One node: no other may take the lease between the test's DEL and its acquisition.
    let nodes = nodes(&up, &server, bucket, 1, |b| {
        b.refresh(Duration::from_millis(200))
    })
    .await;
    let node = &nodes[0];
    node.fetch(&key("a")).await.expect("fetch");
    leads(&server, bucket, &nodes, 0).await;
    let before = (
        redis_version(&server, bucket).await,
        redis_entries(&server, bucket).await,
    );
    let mut events = node.subscribe();

    let keys = Keys::new(bucket);
    let intruder = Conn::connect(&server.url(), DEFAULT_RESPONSE_TIMEOUT)
        .await
        .expect("connect");
    server.cli(&["DEL", keys.lease()]).await;
    let token = intruder
        .acquire_lease(&keys, "intruder", Duration::from_secs(4))
        .await
        .expect("acquire")
        .expect("the lease was free");
    node.insert(key("x"), 1);

    until_refused(node).await;
    assert_eq!(
        (
            redis_version(&server, bucket).await,
            redis_entries(&server, bucket).await
        ),
        before,
        "the refused change did not land in Redis"
    );
    assert_eq!(
        server
            .cli(&["HEXISTS", keys.entries(), &encoded_key("x")])
            .await,
        "0",
        "x is not in Redis"
    );
    common::until(CONVERGE, "the resync to Redis's copy", || {
        (node.peek("x").is_none() && node.version() == before.0).then_some(())
    })
    .await;
    assert_eq!(contents(node), map(&[("a", 1)]), "Redis's copy");
    let seen = drain_within(&mut events, Duration::from_millis(50)).await;
    assert!(
        seen.iter()
            .any(|e| matches!(e, Event::Resynced { count: 1, version } if *version == before.0)),
        "subscribers hear of the resync: {seen:?}"
    );

    let loads = up.loads_of("a");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        up.loads_of("a"),
        loads,
        "no refresh (every 200 ms) once it stepped down"
    );
    assert_eq!(
        lease_holder(&server, bucket).await.as_deref(),
        Some("intruder"),
        "the node did not take the lease back"
    );
    assert_eq!(intruder.fence(&keys).await.expect("fence"), token);

    // The intruder goes: the node leads and refreshes again.
    server.cli(&["DEL", keys.lease()]).await;
    held_by(&server, bucket, &node_name(bucket, 0)).await;
    let resumed = eventually_within(CONVERGE, || up.loads_of("a") > loads).await;
    assert!(resumed, "the node refreshes again once it leads");
}

/// Waits until `node` counts a refused store write.
async fn until_refused(node: &Worker<Upstream>) {
    common::until(CONVERGE, "a refused write", || {
        (node.stats().store_failures > 0).then_some(())
    })
    .await;
}

// ---- Outages ----

/// Three nodes holding `k0..k9`, converged and written to Redis.
async fn ten_keys(server: &RedisServer, bucket: &str, up: &Upstream) -> Vec<Worker<Upstream>> {
    let nodes = nodes(up, server, bucket, 3, |b| b).await;
    for (k, v) in numbered(10) {
        nodes[0].insert(k, v);
    }
    let (_, entries) =
        converged_with_redis(server, bucket, &nodes.iter().collect::<Vec<_>>()).await;
    assert_eq!(entries, numbered(10));
    nodes
}

/// Every node serves every key.
fn every_node_serves(nodes: &[Worker<Upstream>], expected: &HashMap<String, u64>) {
    for (i, node) in nodes.iter().enumerate() {
        for (k, v) in expected {
            assert_eq!(
                node.peek(k).as_deref(),
                Some(v),
                "node {i} serves {k} while Redis is down"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_empty_gets_the_leaders_copy_and_every_node_converges() {
    let mut server = RedisServer::start().await;
    let up = Upstream::new();
    let bucket = "lost";
    let nodes = ten_keys(&server, bucket, &up).await;

    server.kill();
    every_node_serves(&nodes, &numbered(10));
    // Past the lease: the leader has stopped leading by now.
    tokio::time::sleep(LEASE + Duration::from_millis(300)).await;
    every_node_serves(&nodes, &numbered(10));

    server.restart().await;
    let all: Vec<&Worker<Upstream>> = nodes.iter().collect();
    let (_, entries) = converged_with_redis(&server, bucket, &all).await;
    assert_eq!(entries, numbered(10), "every node has every key");
    assert_eq!(
        redis_entries(&server, bucket).await,
        10,
        "the leader wrote its copy back"
    );
    let i = leader(&server, bucket, &nodes).await;
    nodes[i].insert(key("after"), 11);
    let (_, entries) = converged_with_redis(&server, bucket, &all).await;
    assert_eq!(entries.get("after"), Some(&11), "changes flow again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_redis_keeps_the_bucket_across_a_restart_and_every_node_converges() {
    let mut server = RedisServer::start_persistent().await;
    let up = Upstream::new();
    let bucket = "kept";
    let nodes = ten_keys(&server, bucket, &up).await;
    let version = redis_version(&server, bucket).await;

    // A short outage, within the lease.
    server.kill();
    every_node_serves(&nodes, &numbered(10));
    server.restart().await;
    assert_eq!(
        (
            redis_version(&server, bucket).await,
            redis_entries(&server, bucket).await
        ),
        (version, 10),
        "the data survived the restart"
    );
    let all: Vec<&Worker<Upstream>> = nodes.iter().collect();
    let (_, entries) = converged_with_redis(&server, bucket, &all).await;
    assert_eq!(entries, numbered(10));
    let i = leader(&server, bucket, &nodes).await;
    nodes[i].insert(key("after"), 11);
    let (_, entries) = converged_with_redis(&server, bucket, &all).await;
    assert_eq!(entries.get("after"), Some(&11), "changes flow again");
}

// ---- Warm starts ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_started_against_a_populated_redis_is_warm_at_the_leaders_version() {
    let server = RedisServer::start().await;
    let up = Upstream::new();
    let bucket = "warm";
    let mut nodes = nodes(&up, &server, bucket, 1, |b| b).await;
    for (k, v) in numbered(5) {
        nodes[0].insert(k, v);
    }
    converged_with_redis(&server, bucket, &[&nodes[0]]).await;

    let late = node_builder(&up, &server, bucket, 1)
        .await
        .start()
        .await
        .expect("start");
    assert!(late.started().is_warm(), "warm: {:?}", late.started());
    assert_eq!(
        late.version(),
        nodes[0].version(),
        "at the leader's version"
    );
    assert_eq!(contents(&late), numbered(5), "with its entries");
    assert_eq!(up.total_loads(), 0, "nothing loaded");
    nodes.push(late);
    nodes[0].insert(key("k5"), 5);
    let (_, entries) = all_converged(&nodes).await;
    assert_eq!(entries, numbered(6), "and it follows from there");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_started_while_redis_is_down_is_warm_from_its_dump_and_catches_up() {
    let mut server = RedisServer::start_persistent().await;
    let up = Upstream::new();
    let bucket = "dumped";
    let (_dir, file) = temp_dump("dumped.dump");
    let leader_node = nodes(&up, &server, bucket, 1, |b| b).await.remove(0);
    let earlier = node_builder(&up, &server, bucket, 1)
        .await
        .file(&file)
        .start()
        .await
        .expect("start the earlier run");
    for (k, v) in numbered(5) {
        leader_node.insert(k, v);
    }
    converged(&[&leader_node, &earlier]).await;
    earlier.shutdown().await.expect("shutdown: the final dump");
    drop(earlier);
    leader_node.insert(key("k5"), 5);
    converged_with_redis(&server, bucket, &[&leader_node]).await;

    server.kill();
    let store = store(&server.url(), &node_name(bucket, 1)).await;
    let again = builder(&up, bucket)
        .store(store)
        .file(&file)
        .start()
        .await
        .expect("a start while Redis is down");
    assert!(
        again.started().is_warm(),
        "warm from the dump: {:?}",
        again.started()
    );
    assert_eq!(contents(&again), numbered(5), "what the dump holds");

    server.restart().await;
    let (_, entries) = converged_with_redis(&server, bucket, &[&leader_node, &again]).await;
    assert_eq!(entries, numbered(6), "caught up with Redis");
}

// ---- Values that do not decode ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_in_redis_that_do_not_decode_are_skipped_at_the_start_and_counted() {
    let server = RedisServer::start().await;
    let up = Upstream::new();
    let bucket = "garbage";
    let nodes = nodes(&up, &server, bucket, 1, |b| b).await;
    nodes[0].insert(key("good"), 1);
    converged_with_redis(&server, bucket, &[&nodes[0]]).await;
    let entries = redis_key(bucket, "entries");
    server
        .cli(&["HSET", &entries, &encoded_key("bad"), "not an entry"])
        .await;
    server.cli(&["HSET", &entries, "\u{7f}", "not a key"]).await;

    let late = node_builder(&up, &server, bucket, 1)
        .await
        .start()
        .await
        .expect("start");
    assert!(late.started().is_warm(), "warm from the good entry");
    assert_eq!(late.peek("bad"), None, "never served");
    assert_eq!(contents(&late), map(&[("good", 1)]));
    common::until(CONVERGE, "the skipped entries counted", || {
        (late.stats().store_undecodable == 2).then_some(())
    })
    .await;
    nodes[0].insert(key("more"), 2);
    let (_, entries) = converged(&[&nodes[0], &late]).await;
    assert_eq!(entries, map(&[("good", 1), ("more", 2)]), "it follows on");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_in_the_log_that_does_not_decode_drops_the_key_on_every_node() {
    let server = RedisServer::start().await;
    let up = Upstream::new();
    let bucket = "bad-log";
    let nodes = nodes(&up, &server, bucket, 3, |b| b).await;
    nodes[0].insert(key("x"), 1);
    nodes[0].insert(key("z"), 3);
    let all: Vec<&Worker<Upstream>> = nodes.iter().collect();
    let (v, _) = converged_with_redis(&server, bucket, &all).await;

    // A writer of another schema takes the fence (node 0's lease then runs out) and logs a
    // change of x whose entry this worker's types cannot decode.
    let keys = Keys::new(bucket);
    let writer = Conn::connect(&server.url(), DEFAULT_RESPONSE_TIMEOUT)
        .await
        .expect("connect");
    let fence = server.cli(&["INCR", keys.fence()]).await;
    let token: u64 = fence.parse().expect("INCR answers the new fence");
    let garbage = Record {
        key: encoded_key("x").into_bytes(),
        entry: Some(b"an entry of schema 7".to_vec()),
        version: v + 1,
    };
    let shipped = writer
        .ship(
            &keys,
            token,
            Ship::Delta {
                from: v,
                records: &[garbage],
            },
            1000,
        )
        .await
        .expect("ship");
    assert_eq!(shipped, Shipped::Done { version: v + 1 });

    // Followers apply it from the log; node 0, fenced, resyncs from Redis's copy.
    on_every_node(&all, "every node drops x and counts it", |n| {
        n.peek("x").is_none() && n.version() == v + 1 && n.stats().store_undecodable == 1
    })
    .await;
    for (i, node) in nodes.iter().enumerate() {
        assert_eq!(contents(node), map(&[("z", 3)]), "node {i} keeps the rest");
    }

    // Once a node of this worker leads again, changes flow as before.
    let after = Instant::now() + CONVERGE;
    while server.cli(&["GET", keys.fence()]).await == fence {
        assert!(
            Instant::now() < after,
            "no node leads again after the writer"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let i = leader(&server, bucket, &nodes).await;
    nodes[i].insert(key("y"), 2);
    let (_, entries) = converged_with_redis(&server, bucket, &all).await;
    assert_eq!(
        entries,
        map(&[("y", 2), ("z", 3)]),
        "the new leader's change, everywhere"
    );
}

// ---- Passwords ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_never_shows_in_debug_output_or_errors() {
    let server = RedisServer::start_with(&["--requirepass", "s3cret"]).await;
    assert!(
        server.url().contains("s3cret"),
        "the URL carries the password"
    );
    let store = RedisStore::connect(&server.url())
        .await
        .expect("connect with the password");
    let debug = format!("{store:?}");
    assert!(debug.contains("***"), "redacted: {debug}");
    assert!(!debug.contains("s3cret"), "no password in {debug}");
    let described = Store::<String, u64>::describe(&store);
    assert!(!described.contains("s3cret"), "no password in {described}");

    let up = Upstream::new();
    let node = builder(&up, "secret")
        .store(store.node_name("secret-0").lease(LEASE))
        .start()
        .await
        .expect("start");
    node.insert(key("a"), 1);
    common::until(CONVERGE, "the write", || {
        (node.stats().store_writes > 0).then_some(())
    })
    .await;

    let wrong = format!("redis://:wr0ngpass@127.0.0.1:{}/", server.port());
    let error = RedisStore::connect(&wrong)
        .await
        .expect_err("a wrong password is refused");
    let shown = format!("{error}");
    assert!(!shown.contains("wr0ngpass"), "no password in {shown}");
    assert!(!shown.contains("s3cret"), "no password in {shown}");
    let debug = format!("{error:?}");
    assert!(!debug.contains("wr0ngpass"), "no password in {debug}");
}

// ---- The environment ----

const ENV_CHILD: &str = "CACHE_WORKER_REDIS_TIER_ENV_CHILD";
const ENV_BUCKET: &str = "env-redis";

/// Runs only as the child of the test below, with `CACHE_WORKER_ENV_REDIS_REDIS_URL` set:
/// a worker with no store of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn env_child() {
    if std::env::var(ENV_CHILD).is_err() {
        return;
    }
    let up = Upstream::new();
    let w = builder(&up, ENV_BUCKET).start().await.expect("start");
    w.insert(key("a"), 1);
    w.insert(key("b"), 2);
    common::until(CONVERGE, "the store written", || {
        (w.stats().store_writes > 0).then_some(())
    })
    .await;
    w.shutdown().await.expect("shutdown");
    println!("ENV CHILD OK");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_url_from_the_environment_makes_the_bucket_shared() {
    let server = RedisServer::start().await;
    // The environment is process-wide: the worker runs in a child with the variable set.
    let output = tokio::process::Command::new(std::env::current_exe().expect("the test binary"))
        .args(["env_child", "--exact", "--nocapture", "--test-threads=1"])
        .env(ENV_CHILD, "1")
        .env(Settings::env_var(ENV_BUCKET, "REDIS_URL"), server.url())
        .stdin(Stdio::null())
        .output()
        .await
        .expect("the child runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("ENV CHILD OK"),
        "the child: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        redis_entries(&server, ENV_BUCKET).await,
        2,
        "the worker's entries are in Redis"
    );
    assert_ne!(
        redis_version(&server, ENV_BUCKET).await,
        0,
        "with its version"
    );
}
