//! The Redis protocol of a shared bucket (feature `redis`) against a real `redis-server`: the
//! lease and its fencing token, delta and full ships, the log as a reader tails it (gaps after a
//! trim, a reset or a lost Redis), blocking reads longer than redis-rs' default timeout, server
//! kills, restarts and pauses, claims, forwarded writes, passwords that never show, and TLS.
#![cfg(feature = "redis")]

mod common;

use std::time::{Duration, Instant};

use cache_worker::__redis_protocol::{
    Conn, DEFAULT_RESPONSE_TIMEOUT, Keys, ProtocolError, Record, Ship, Shipped, Tail, Tailed,
};
use common::redis::RedisServer;

const TTL: Duration = Duration::from_secs(10);
const CAP: usize = 1000;
const NOW: Duration = Duration::ZERO;

fn put(version: u64, key: &str, entry: &str) -> Record {
    Record {
        key: key.as_bytes().to_vec(),
        entry: Some(entry.as_bytes().to_vec()),
        version,
    }
}

fn del(version: u64, key: &str) -> Record {
    Record {
        key: key.as_bytes().to_vec(),
        entry: None,
        version,
    }
}

fn pairs(entries: &[(&str, &str)]) -> Vec<(Vec<u8>, Vec<u8>)> {
    entries
        .iter()
        .map(|(k, e)| (k.as_bytes().to_vec(), e.as_bytes().to_vec()))
        .collect()
}

fn text(entries: &[(&str, &str)]) -> Vec<(String, String)> {
    entries
        .iter()
        .map(|&(k, e)| (k.to_owned(), e.to_owned()))
        .collect()
}

/// A connection to one bucket of a test server, with the fencing token it ships under (0
/// until it leads): the calls of the tests, each failing the test on an error.
struct Node {
    conn: Conn,
    keys: Keys,
    token: u64,
}

impl Node {
    async fn on(server: &RedisServer) -> Node {
        Node::with_timeout(server, DEFAULT_RESPONSE_TIMEOUT).await
    }

    async fn with_timeout(server: &RedisServer, response_timeout: Duration) -> Node {
        let conn = Conn::connect(&server.url(), response_timeout)
            .await
            .expect("connect to the test server");
        Node {
            conn,
            keys: Keys::new("sessions"),
            token: 0,
        }
    }

    /// Takes the lease as node "a".
    async fn lead(mut self) -> Node {
        self.token = self.acquire("a", TTL).await.expect("the lease is free");
        self
    }

    async fn acquire(&self, node: &str, ttl: Duration) -> Option<u64> {
        let acquired = self.conn.acquire_lease(&self.keys, node, ttl).await;
        acquired.expect("acquire the lease")
    }

    async fn renew(&self, node: &str, token: u64) -> bool {
        let renewed = self.conn.renew_lease(&self.keys, node, token, TTL).await;
        renewed.expect("renew the lease")
    }

    async fn holder(&self) -> Option<String> {
        self.conn
            .lease_holder(&self.keys)
            .await
            .expect("lease holder")
    }

    async fn fence(&self) -> u64 {
        self.conn.fence(&self.keys).await.expect("fence")
    }

    async fn ship(&self, token: u64, ship: Ship<'_>, cap: usize) -> Shipped {
        let shipped = self.conn.ship(&self.keys, token, ship, cap).await;
        shipped.expect("ship")
    }

    async fn delta(&self, from: u64, records: &[Record]) -> Shipped {
        self.ship(self.token, Ship::Delta { from, records }, CAP)
            .await
    }

    async fn full(&self, version: u64, entries: &[(&str, &str)]) -> Shipped {
        let entries = pairs(entries);
        let ship = Ship::Full {
            version,
            entries: &entries,
        };
        self.ship(self.token, ship, CAP).await
    }

    /// The snapshot, its entries sorted, as text.
    async fn entries(&self) -> (u64, Vec<(String, String)>) {
        let (version, entries) = self.conn.snapshot(&self.keys).await.expect("snapshot");
        let mut entries: Vec<(String, String)> = entries
            .into_iter()
            .map(|(k, e)| {
                let k = String::from_utf8(k).expect("a text key");
                (k, String::from_utf8(e).expect("a text entry"))
            })
            .collect();
        entries.sort();
        (version, entries)
    }

    fn tail(&self) -> Reader {
        Reader(self.conn.tail(&self.keys))
    }
}

/// A [`Tail`] whose reads fail the test on an error.
struct Reader(Tail);

impl Reader {
    async fn next(&mut self, after: u64, block: Duration) -> Tailed {
        self.0.next(after, block).await.expect("read the log")
    }
}

/// The log as Redis holds it: each entry's ID and its fields in order, as text.
async fn log(server: &RedisServer, keys: &Keys) -> Vec<(String, Vec<(String, String)>)> {
    let client = redis::Client::open(server.url()).expect("the URL");
    let mut con = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let reply: redis::Value = redis::cmd("XRANGE")
        .arg(keys.log())
        .arg("-")
        .arg("+")
        .query_async(&mut con)
        .await
        .expect("XRANGE");
    let redis::Value::Array(items) = reply else {
        panic!("XRANGE answered {reply:?}")
    };
    let string = |v: &redis::Value| match v {
        redis::Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        other => panic!("not a bulk string: {other:?}"),
    };
    items
        .iter()
        .map(|item| match item {
            redis::Value::Array(pair) if pair.len() == 2 => {
                let redis::Value::Array(fields) = &pair[1] else {
                    panic!("fields: {:?}", pair[1])
                };
                let fields = fields
                    .chunks(2)
                    .map(|f| (string(&f[0]), string(&f[1])))
                    .collect();
                (string(&pair[0]), fields)
            }
            other => panic!("an XRANGE item: {other:?}"),
        })
        .collect()
}

fn entry(id: &str, fields: &[(&str, &str)]) -> (String, Vec<(String, String)>) {
    (id.to_owned(), text(fields))
}

/// A forwarded write as a test compares it: node, key, entry.
type Forwarded<'a> = (&'a str, &'a [u8], Option<&'a [u8]>);

/// The value of the first call of `call` that succeeds within 10 s (a reconnection in
/// progress fails the calls before it).
async fn eventually_ok<T, F, Fut>(mut call: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ProtocolError>>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match call().await {
            Ok(value) => return value,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("still failing after 10 s: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lease_goes_to_one_node_and_each_acquisition_takes_the_next_token() {
    let server = RedisServer::start().await;
    let node = Node::on(&server).await;

    assert_eq!(node.fence().await, 0);
    assert_eq!(node.holder().await, None);
    assert_eq!(node.acquire("a", TTL).await, Some(1));
    assert_eq!(node.acquire("b", TTL).await, None);
    assert_eq!(
        node.acquire("a", TTL).await,
        None,
        "a held lease is kept by renewing it, not acquired again"
    );
    assert_eq!(node.holder().await.as_deref(), Some("a"));
    assert_eq!(node.fence().await, 1);

    assert!(node.renew("a", 1).await);
    assert!(!node.renew("b", 1).await);
    assert!(!node.renew("a", 2).await);

    // A release by the wrong node or token does nothing; the holder's frees it at once.
    let (conn, keys) = (&node.conn, &node.keys);
    conn.release_lease(keys, "b", 1).await.expect("release");
    conn.release_lease(keys, "a", 7).await.expect("release");
    assert_eq!(node.holder().await.as_deref(), Some("a"));
    conn.release_lease(keys, "a", 1).await.expect("release");
    assert_eq!(node.holder().await, None);
    assert_eq!(node.acquire("b", TTL).await, Some(2));

    // Another bucket has a lease and a fence of its own.
    let other = Keys::new("films");
    let acquired = conn.acquire_lease(&other, "a", TTL).await;
    assert_eq!(acquired.expect("acquire"), Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_lease_cannot_be_renewed_and_its_holders_late_ship_is_fenced() {
    let server = RedisServer::start().await;
    let node = Node::on(&server).await;
    let a = node.acquire("a", Duration::from_millis(100)).await;
    let a = a.expect("the lease is free");
    let records = [put(1, "k", "a1")];
    let shipped = node
        .ship(
            a,
            Ship::Delta {
                from: 0,
                records: &records,
            },
            CAP,
        )
        .await;
    assert_eq!(shipped, Shipped::Done { version: 1 });

    // "a" is paused past its ttl; "b" takes over.
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert!(!node.renew("a", a).await);
    let b = node.acquire("b", TTL).await.expect("the lease expired");
    assert_eq!(b, a + 1);

    let late = [put(2, "k", "late"), put(3, "other", "late")];
    let shipped = node
        .ship(
            a,
            Ship::Delta {
                from: 1,
                records: &late,
            },
            CAP,
        )
        .await;
    assert_eq!(shipped, Shipped::Fenced { fence: b });
    let full = pairs(&[("k", "late")]);
    let shipped = node
        .ship(
            a,
            Ship::Full {
                version: 9,
                entries: &full,
            },
            CAP,
        )
        .await;
    assert_eq!(shipped, Shipped::Fenced { fence: b });
    assert_eq!(node.entries().await, (1, text(&[("k", "a1")])));
    assert_eq!(log(&server, &node.keys).await.len(), 1, "nothing logged");
    assert!(!node.renew("a", a).await);

    // The new holder writes on top of what "a" shipped in time.
    let records = [put(2, "k", "b2")];
    let shipped = node
        .ship(
            b,
            Ship::Delta {
                from: 1,
                records: &records,
            },
            CAP,
        )
        .await;
    assert_eq!(shipped, Shipped::Done { version: 2 });
    assert_eq!(node.entries().await, (2, text(&[("k", "b2")])));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ship_without_any_lease_is_fenced() {
    let server = RedisServer::start().await;
    let node = Node::on(&server).await;
    for token in [0, 1] {
        let records = [put(1, "k", "v")];
        let shipped = node
            .ship(
                token,
                Ship::Delta {
                    from: 0,
                    records: &records,
                },
                CAP,
            )
            .await;
        assert_eq!(shipped, Shipped::Fenced { fence: 0 });
    }
    let keys = &node.keys;
    let written = ["EXISTS", keys.version(), keys.entries(), keys.log()];
    assert_eq!(server.cli(&written).await, "0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delta_applies_its_records_in_order_and_logs_each_after_its_predecessor() {
    let server = RedisServer::start().await;
    let node = Node::on(&server).await.lead().await;

    let first = [put(1, "a", "a1"), put(2, "b", "b2"), put(3, "a", "a3")];
    assert_eq!(node.delta(0, &first).await, Shipped::Done { version: 3 });
    // Versions may skip (a change the leader does not ship); removals carry no `e`.
    let second = [del(5, "b"), put(6, "c", "")];
    assert_eq!(node.delta(3, &second).await, Shipped::Done { version: 6 });

    let version = node.conn.version(&node.keys).await.expect("version");
    assert_eq!(version, 6);
    assert_eq!(server.cli(&["GET", node.keys.version()]).await, "6");
    assert_eq!(node.entries().await, (6, text(&[("a", "a3"), ("c", "")])));
    let expected = vec![
        entry("1-0", &[("p", "0"), ("k", "a"), ("e", "a1")]),
        entry("2-0", &[("p", "1"), ("k", "b"), ("e", "b2")]),
        entry("3-0", &[("p", "2"), ("k", "a"), ("e", "a3")]),
        entry("5-0", &[("p", "3"), ("k", "b")]),
        entry("6-0", &[("p", "5"), ("k", "c"), ("e", "")]),
    ];
    assert_eq!(log(&server, &node.keys).await, expected);

    // An empty delta at the right version writes nothing and answers the version.
    assert_eq!(node.delta(6, &[]).await, Shipped::Done { version: 6 });
    assert_eq!(log(&server, &node.keys).await, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delta_from_another_version_is_behind_and_writes_nothing() {
    let server = RedisServer::start().await;
    let node = Node::on(&server).await.lead().await;
    node.delta(0, &[put(1, "a", "a1"), put(2, "b", "b2")]).await;

    for from in [0, 1, 3] {
        let shipped = node.delta(from, &[put(from + 1, "a", "x")]).await;
        assert_eq!(shipped, Shipped::Behind { version: 2 }, "from {from}");
    }
    assert_eq!(node.entries().await, (2, text(&[("a", "a1"), ("b", "b2")])));
    assert_eq!(log(&server, &node.keys).await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_out_of_order_are_refused_before_anything_is_sent() {
    let server = RedisServer::start().await;
    let node = Node::on(&server).await.lead().await;
    let (conn, keys, token) = (&node.conn, &node.keys, node.token);
    let cases: [(u64, Vec<Record>); 3] = [
        (0, vec![put(2, "a", "x"), put(2, "b", "y")]),
        (0, vec![put(3, "a", "x"), put(1, "b", "y")]),
        (5, vec![put(5, "a", "x")]),
    ];
    for (from, records) in cases {
        let ship = Ship::Delta {
            from,
            records: &records,
        };
        let error = conn.ship(keys, token, ship, CAP).await;
        let error = error.expect_err("records out of order");
        assert!(matches!(error, ProtocolError::Invalid { .. }), "{error}");
        assert!(error.to_string().contains("does not follow"), "{error}");
    }
    let ship = Ship::Full {
        version: 0,
        entries: &[],
    };
    let error = conn.ship(keys, token, ship, CAP).await;
    let error = error.expect_err("a full ship at version 0");
    assert!(matches!(error, ProtocolError::Invalid { .. }), "{error}");
    let written = ["EXISTS", keys.version(), keys.entries(), keys.log()];
    assert_eq!(server.cli(&written).await, "0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_ship_replaces_everything_and_logs_a_reset() {
    let server = RedisServer::start().await;
    let node = Node::on(&server).await.lead().await;
    node.delta(
        0,
        &[put(1, "a", "a1"), put(2, "b", "b2"), put(3, "gone", "x")],
    )
    .await;

    let shipped = node.full(10, &[("a", "A"), ("c", "C")]).await;
    assert_eq!(shipped, Shipped::Done { version: 10 });
    assert_eq!(node.entries().await, (10, text(&[("a", "A"), ("c", "C")])));
    let logged = log(&server, &node.keys).await;
    assert_eq!(logged.len(), 4);
    assert_eq!(logged[3], entry("10-0", &[("p", "3"), ("reset", "1")]));

    // A delta continues from the full ship's version.
    assert_eq!(
        node.delta(10, &[del(11, "c")]).await,
        Shipped::Done { version: 11 }
    );

    // A full ship at or below the log's top (a leader whose history restarted lower) starts a
    // new log: stream IDs only grow.
    assert_eq!(node.full(4, &[]).await, Shipped::Done { version: 4 });
    assert_eq!(node.entries().await, (4, vec![]));
    let logged = log(&server, &node.keys).await;
    assert_eq!(logged, vec![entry("4-0", &[("p", "11"), ("reset", "1")])]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_ship_of_100k_entries_and_its_snapshot() {
    let server = RedisServer::start().await;
    // A debug build on a loaded machine may take seconds to pack 20 MB: this test is about
    // what arrives, not how fast (its times are printed).
    let node = Node::with_timeout(&server, Duration::from_secs(30)).await;
    let node = node.lead().await;
    let full: Vec<(Vec<u8>, Vec<u8>)> = (0..100_000u32)
        .map(|i| {
            let mut entry = vec![b'.'; 200];
            entry[..4].copy_from_slice(&i.to_be_bytes());
            (format!("key-{i:06}").into_bytes(), entry)
        })
        .collect();

    let began = Instant::now();
    let ship = Ship::Full {
        version: 7,
        entries: &full,
    };
    let shipped = node.ship(node.token, ship, CAP).await;
    let shipping = began.elapsed();
    assert_eq!(shipped, Shipped::Done { version: 7 });

    let began = Instant::now();
    let snapshot = node.conn.snapshot(&node.keys).await;
    let reading = began.elapsed();
    let (version, mut snapshot) = snapshot.expect("snapshot");
    println!("100k x 200 B: full ship {shipping:?}, snapshot {reading:?}");

    assert_eq!(version, 7);
    snapshot.sort();
    assert_eq!(snapshot.len(), full.len());
    assert!(
        snapshot == full,
        "the snapshot differs from what was shipped"
    );
    assert_eq!(server.cli(&["HLEN", node.keys.entries()]).await, "100000");

    // A small full ship replaces the large one.
    node.full(8, &[("only", "one")]).await;
    assert_eq!(node.entries().await, (8, text(&[("only", "one")])));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tail_reads_changes_contiguously_across_ships() {
    let server = RedisServer::start().await;
    let node = Node::on(&server).await.lead().await;
    let mut tail = node.tail();

    assert_eq!(tail.next(0, NOW).await, Tailed::Idle);
    node.delta(0, &[put(1, "a", "a1"), put(2, "b", "b2")]).await;
    node.delta(2, &[del(4, "a")]).await;

    let all = vec![put(1, "a", "a1"), put(2, "b", "b2"), del(4, "a")];
    assert_eq!(tail.next(0, NOW).await, Tailed::Changes(all.clone()));
    assert_eq!(tail.next(1, NOW).await, Tailed::Changes(all[1..].to_vec()));
    assert_eq!(tail.next(2, NOW).await, Tailed::Changes(all[2..].to_vec()));
    assert_eq!(tail.next(4, NOW).await, Tailed::Idle);
    // A reader at a version that skipped (3 was never shipped) is not a contiguous reader.
    assert_eq!(tail.next(3, NOW).await, Tailed::Gap);

    // More than one read's worth (1000) comes in pieces, each contiguous.
    let many: Vec<Record> = (5..=2504).map(|v| put(v, "n", &v.to_string())).collect();
    let ship = Ship::Delta {
        from: 4,
        records: &many,
    };
    node.ship(node.token, ship, 10_000).await;
    let mut after = 4;
    let mut read = Vec::new();
    while let Tailed::Changes(records) = tail.next(after, NOW).await {
        assert!(records.len() <= 1000);
        after = records.last().expect("a record").version;
        read.extend(records);
    }
    assert_eq!(read, many);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tail_reports_a_gap_after_a_trim() {
    let server = RedisServer::start().await;
    let node = Node::on(&server).await.lead().await;
    for v in 1..=300 {
        let records = [put(v, "k", &v.to_string())];
        let ship = Ship::Delta {
            from: v - 1,
            records: &records,
        };
        node.ship(node.token, ship, 10).await;
    }
    let retained = server.cli(&["XLEN", node.keys.log()]).await;
    let retained: usize = retained.parse().expect("XLEN is a number");
    assert!((10..300).contains(&retained), "{retained} entries retained");

    let mut tail = node.tail();
    assert_eq!(tail.next(0, NOW).await, Tailed::Gap);
    assert_eq!(tail.next(1, NOW).await, Tailed::Gap);
    let last = vec![put(300, "k", "300")];
    assert_eq!(tail.next(299, NOW).await, Tailed::Changes(last));

    // A cap of 0 keeps at least the last entry.
    let records = [put(301, "k", "x")];
    let ship = Ship::Delta {
        from: 300,
        records: &records,
    };
    node.ship(node.token, ship, 0).await;
    assert_eq!(tail.next(300, NOW).await, Tailed::Changes(records.to_vec()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tail_reports_a_gap_at_a_reset_and_when_redis_is_behind() {
    let server = RedisServer::start().await;
    let node = Node::on(&server).await.lead().await;
    node.delta(0, &[put(1, "a", "a1"), put(2, "b", "b2")]).await;
    node.full(3, &[("z", "z")]).await;

    let mut tail = node.tail();
    // The changes before the reset first, then the gap it is.
    assert_eq!(
        tail.next(1, NOW).await,
        Tailed::Changes(vec![put(2, "b", "b2")])
    );
    assert_eq!(tail.next(2, NOW).await, Tailed::Gap);
    // A reader resynced from the snapshot continues after it.
    assert_eq!(node.entries().await.0, 3);
    assert_eq!(tail.next(3, NOW).await, Tailed::Idle);

    // Redis behind the reader (it lost its data, or the leader's history restarted lower):
    // no entry will ever come after the reader's version.
    assert_eq!(tail.next(50, NOW).await, Tailed::Gap);
    let mut never_written = Reader(node.conn.tail(&Keys::new("never-written")));
    assert_eq!(never_written.next(0, NOW).await, Tailed::Idle);
    assert_eq!(never_written.next(1, NOW).await, Tailed::Gap);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocking_read_outlasts_the_default_response_timeout() {
    let server = RedisServer::start().await;
    // The commands' timeout is short; the tail's blocking read is not cut by it.
    let node = Node::with_timeout(&server, Duration::from_millis(500)).await;
    let node = node.lead().await;
    let mut tail = node.tail();
    let block = Duration::from_millis(1500);

    let began = Instant::now();
    assert_eq!(tail.next(0, block).await, Tailed::Idle);
    let idle = began.elapsed();
    assert!(
        idle >= Duration::from_millis(1400),
        "returned after {idle:?}"
    );

    let (writer, keys, token) = (node.conn.clone(), node.keys.clone(), node.token);
    let ship = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let records = [put(1, "a", "a1")];
        let ship = Ship::Delta {
            from: 0,
            records: &records,
        };
        writer.ship(&keys, token, ship, CAP).await
    });
    let began = Instant::now();
    let read = tail.next(0, block).await;
    assert_eq!(read, Tailed::Changes(vec![put(1, "a", "a1")]));
    assert!(began.elapsed() >= Duration::from_millis(900));
    let shipped = ship.await.expect("the ship task").expect("ship");
    assert_eq!(shipped, Shipped::Done { version: 1 });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tail_and_the_commands_work_again_after_redis_is_killed_and_restarted() {
    let mut server = RedisServer::start().await;
    let node = Node::on(&server).await.lead().await;
    node.delta(0, &[put(1, "a", "a1")]).await;
    let mut tail = node.tail();
    assert_eq!(tail.next(1, NOW).await, Tailed::Idle);

    server.kill();
    let short = Duration::from_millis(200);
    let error = tail.0.next(1, short).await.expect_err("Redis is down");
    assert!(matches!(error, ProtocolError::Redis { .. }), "{error}");
    assert!(node.conn.version(&node.keys).await.is_err());
    // Still down: the tail's next call tries a new connection, and fails fast.
    let began = Instant::now();
    assert!(tail.0.next(1, short).await.is_err());
    assert!(
        began.elapsed() < Duration::from_secs(3),
        "{:?}",
        began.elapsed()
    );

    server.restart().await;
    // The manager reconnects in the background: calls fail until it has.
    let version = eventually_ok(|| node.conn.version(&node.keys)).await;
    assert_eq!(version, 0, "a server without persistence restarts empty");
    // Redis lost what the reader had: the tail says so instead of waiting forever.
    assert_eq!(tail.next(1, NOW).await, Tailed::Gap);

    // The scripts' cache was emptied by the restart: each is loaded again on its first call.
    let node = node.lead().await;
    assert_eq!(node.token, 1, "the fence was lost too");
    assert!(node.renew("a", node.token).await);
    assert_eq!(
        node.full(5, &[("b", "b")]).await,
        Shipped::Done { version: 5 }
    );
    node.delta(5, &[put(6, "c", "c")]).await;
    assert_eq!(
        tail.next(5, NOW).await,
        Tailed::Changes(vec![put(6, "c", "c")])
    );
    let (conn, keys) = (&node.conn, &node.keys);
    assert!(conn.claim(keys, b"k", "a", TTL).await.expect("claim"));
    conn.release_claim(keys, b"k", "a").await.expect("release");
    let done = conn.set_commands_done(keys, node.token, "1-0").await;
    assert!(done.expect("set cmd_done"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_flushed_from_redis_are_loaded_again() {
    let server = RedisServer::start().await;
    let node = Node::on(&server).await.lead().await;
    assert_eq!(server.cli(&["SCRIPT", "FLUSH"]).await, "OK");
    assert_eq!(
        node.delta(0, &[put(1, "a", "a")]).await,
        Shipped::Done { version: 1 }
    );
    assert!(node.renew("a", node.token).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_redis_keeps_the_bucket_across_a_kill_and_a_plain_one_loses_it() {
    for persistent in [true, false] {
        let mut server = if persistent {
            RedisServer::start_persistent().await
        } else {
            RedisServer::start().await
        };
        let node = Node::on(&server).await.lead().await;
        node.full(3, &[("a", "a"), ("b", "b")]).await;
        node.delta(3, &[del(4, "a")]).await;
        let pid = server.pid();

        server.kill();
        server.restart().await;
        assert_ne!(server.pid(), pid);
        let after = Node::on(&server).await;
        if persistent {
            assert_eq!(after.entries().await, (4, text(&[("b", "b")])));
            assert_eq!(after.fence().await, node.token);
            assert_eq!(after.holder().await.as_deref(), Some("a"));
            assert_eq!(log(&server, &after.keys).await.len(), 2);
            let read = after.tail().next(3, NOW).await;
            assert_eq!(read, Tailed::Changes(vec![del(4, "a")]));
        } else {
            assert_eq!(after.entries().await, (0, vec![]));
            assert_eq!(after.fence().await, 0);
            assert_eq!(server.cli(&["DBSIZE"]).await, "0");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_redis_fails_calls_within_the_response_timeout() {
    let server = RedisServer::start().await;
    let node = Node::with_timeout(&server, Duration::from_millis(300)).await;
    let mut tail = node.tail();
    assert_eq!(tail.next(0, NOW).await, Tailed::Idle);

    server.pause();
    let began = Instant::now();
    let error = node.conn.version(&node.keys).await;
    let error = error.expect_err("Redis is paused");
    assert!(
        began.elapsed() < Duration::from_secs(2),
        "{:?}",
        began.elapsed()
    );
    assert!(
        error.to_string().contains("cw:{sessions}:version"),
        "{error}"
    );
    let began = Instant::now();
    let error = tail.0.next(0, Duration::from_millis(200)).await;
    let error = error.expect_err("Redis is paused");
    assert!(matches!(error, ProtocolError::Timeout { .. }), "{error}");
    assert!(
        began.elapsed() < Duration::from_secs(2),
        "{:?}",
        began.elapsed()
    );

    server.resume();
    assert_eq!(eventually_ok(|| node.conn.version(&node.keys)).await, 0);
    assert_eq!(tail.next(0, NOW).await, Tailed::Idle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_are_exclusive_released_by_their_owner_and_expire() {
    let server = RedisServer::start().await;
    let node = Node::on(&server).await;
    let (conn, keys) = (&node.conn, &node.keys);
    let claim = async |node: &str, ttl: Duration| {
        let claimed = conn.claim(keys, &[0xff, 0x00, b':', 0x80], node, ttl).await;
        claimed.expect("claim")
    };
    let release = async |node: &str| {
        let released = conn
            .release_claim(keys, &[0xff, 0x00, b':', 0x80], node)
            .await;
        released.expect("release a claim");
    };
    let claimed = async |key: &[u8]| conn.claimed(keys, key).await.expect("claimed");
    // Keys are bytes, not text.
    let key: &[u8] = &[0xff, 0x00, b':', 0x80];

    assert!(!claimed(key).await);
    assert!(claim("a", TTL).await);
    assert!(!claim("b", TTL).await);
    assert!(!claim("a", TTL).await);
    assert!(claimed(key).await);
    assert!(!claimed(b"another").await);

    release("b").await;
    assert!(claimed(key).await, "only its owner releases a claim");
    release("a").await;
    assert!(!claimed(key).await);

    assert!(claim("a", Duration::from_millis(100)).await);
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert!(!claimed(key).await);
    assert!(claim("b", TTL).await);
    // "a"'s late release leaves "b"'s claim.
    release("a").await;
    assert!(claimed(key).await);

    let mut claim_key = b"cw:{sessions}:claim:".to_vec();
    claim_key.extend_from_slice(key);
    assert_eq!(keys.claim(key), claim_key);
    assert_eq!(server.cli(&["DBSIZE"]).await, "1");

    let error = conn.claim(keys, b"k", "a", Duration::ZERO).await;
    let error = error.expect_err("a zero ttl");
    assert!(matches!(error, ProtocolError::Invalid { .. }), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_writes_reach_the_leader_in_order_and_cmd_done_is_fenced() {
    let server = RedisServer::start().await;
    let node = Node::on(&server).await.lead().await;
    let (conn, keys, token) = (&node.conn, &node.keys, node.token);
    let mut tail = conn.tail(keys);
    let done = async || conn.commands_done(keys).await.expect("cmd_done");
    let set_done = async |token: u64, id: &str| {
        let set = conn.set_commands_done(keys, token, id).await;
        set.expect("set cmd_done")
    };
    let forward = async |node: &str, key: &[u8], entry: Option<&[u8]>| {
        let forwarded = conn.forward(keys, node, key, entry).await;
        forwarded.expect("forward");
    };

    assert_eq!(done().await, "0-0");
    let read = tail.commands(keys, "0-0", NOW).await;
    assert!(read.expect("read commands").is_empty());
    forward("b", b"k1", Some(b"e1")).await;
    forward("c", b"k2", None).await;
    forward("b", b"k1", Some(b"")).await;

    let commands = tail.commands(keys, "0-0", NOW).await;
    let commands = commands.expect("read commands");
    let seen: Vec<_> = commands
        .iter()
        .map(|c| (c.node.as_str(), c.key.as_slice(), c.entry.as_deref()))
        .collect();
    let expected: [Forwarded<'_>; 3] = [
        ("b", b"k1", Some(b"e1")),
        ("c", b"k2", None),
        ("b", b"k1", Some(b"")),
    ];
    assert_eq!(seen, expected);
    let after_first = tail.commands(keys, &commands[0].id, NOW).await;
    assert_eq!(after_first.expect("read commands"), commands[1..]);
    let last = &commands[2].id;
    let after_last = tail.commands(keys, last, NOW).await;
    assert!(after_last.expect("read commands").is_empty());

    // A leader blocked on the stream wakes for a forwarded write.
    let (sender, sender_keys) = (conn.clone(), keys.clone());
    let forwarding = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        sender.forward(&sender_keys, "d", b"k3", Some(b"e3")).await
    });
    let woken = tail.commands(keys, last, Duration::from_secs(5)).await;
    let woken = woken.expect("read commands");
    forwarding
        .await
        .expect("the forward task")
        .expect("forward");
    assert_eq!(woken.len(), 1);
    assert_eq!(woken[0].node, "d");
    assert_eq!(woken[0].key, b"k3");

    assert!(set_done(token, &commands[1].id).await);
    assert_eq!(done().await, commands[1].id);
    // Never backwards.
    assert!(set_done(token, &commands[0].id).await);
    assert_eq!(done().await, commands[1].id);
    // Fenced: a former leader's progress is not recorded.
    assert!(!set_done(token + 1, last).await);
    assert_eq!(done().await, commands[1].id);
    assert!(set_done(token, last).await);
    assert_eq!(done().await, *last);

    let error = conn.set_commands_done(keys, token, "last").await;
    let error = error.expect_err("not a stream ID");
    assert!(matches!(error, ProtocolError::Invalid { .. }), "{error}");
    let error = tail.commands(keys, "x", NOW).await;
    let error = error.expect_err("not a stream ID");
    assert!(matches!(error, ProtocolError::Invalid { .. }), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_never_shows_in_urls_or_errors() {
    let server = RedisServer::start_with(&["--requirepass", "s3cret"]).await;
    let port = server.port();
    let url = format!("redis://:s3cret@127.0.0.1:{port}/");
    assert_eq!(server.url(), url);
    let node = Node::on(&server).await.lead().await;
    assert_eq!(node.token, 1);
    let conn = &node.conn;
    assert_eq!(conn.redacted(), format!("redis://:***@127.0.0.1:{port}/"));
    assert!(!format!("{conn:?}").contains("s3cret"), "{conn:?}");

    let with_user = format!("redis://default:s3cret@127.0.0.1:{port}/");
    let conn = Conn::connect(&with_user, DEFAULT_RESPONSE_TIMEOUT).await;
    let conn = conn.expect("connect as the default user");
    let redacted = format!("redis://default:***@127.0.0.1:{port}/");
    assert_eq!(conn.redacted(), redacted);

    for wrong in [
        format!("redis://:wrong-pass@127.0.0.1:{port}/"),
        format!("redis://app:wrong-pass@127.0.0.1:{port}/"),
    ] {
        let error = Conn::connect(&wrong, DEFAULT_RESPONSE_TIMEOUT).await;
        let error = error.expect_err("a wrong password");
        let shown = format!("{error} / {error:?}");
        assert!(matches!(error, ProtocolError::Connect { .. }), "{shown}");
        assert!(!shown.contains("wrong-pass"), "{shown}");
        assert!(shown.contains(":***@127.0.0.1"), "{shown}");
    }
    let no_password = format!("redis://127.0.0.1:{port}/");
    let error = Conn::connect(&no_password, DEFAULT_RESPONSE_TIMEOUT).await;
    let error = error.expect_err("no password");
    assert!(error.to_string().contains("NOAUTH"), "{error}");

    // Invalid URLs are shown redacted too.
    for invalid in [
        "redis://:s3cret@127.0.0.1:99999/",
        "redis://:s3cret@127.0.0.1/notadb",
        "http://:s3cret@host/",
    ] {
        let error = Conn::parse(invalid).expect_err("an invalid URL");
        let shown = format!("{error} / {error:?}");
        assert!(matches!(error, ProtocolError::InvalidUrl { .. }), "{shown}");
        assert!(!shown.contains("s3cret"), "{shown}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_is_down_fails_the_connection_fast() {
    let mut server = RedisServer::start().await;
    let url = server.url();
    server.kill();
    let began = Instant::now();
    let error = Conn::connect(&url, DEFAULT_RESPONSE_TIMEOUT).await;
    let error = error.expect_err("nothing listens");
    assert!(
        began.elapsed() < Duration::from_secs(3),
        "{:?}",
        began.elapsed()
    );
    assert!(matches!(error, ProtocolError::Connect { .. }), "{error}");
    assert!(error.to_string().contains(&url), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_verifies_the_server_against_its_ca() {
    let (server, tls) = RedisServer::start_tls().await;
    let tls_port = server.tls_port().expect("a TLS port");
    let info = Conn::parse(&server.tls_url()).expect("parse");
    assert!(info.is_tls());
    assert!(!Conn::parse(&server.url()).expect("parse").is_tls());
    let timeout = DEFAULT_RESPONSE_TIMEOUT;

    let conn = Conn::connect_with_ca(&server.tls_url(), timeout, &tls.ca_pem).await;
    let node = Node {
        conn: conn.expect("connect over TLS"),
        keys: Keys::new("sessions"),
        token: 0,
    };
    let node = node.lead().await;
    node.full(2, &[("a", "a")]).await;
    assert_eq!(node.entries().await, (2, text(&[("a", "a")])));
    // The tail's dedicated connection is TLS too.
    let read = node.tail().next(2, Duration::from_millis(100)).await;
    assert_eq!(read, Tailed::Idle);
    // What went over TLS is what the plain port sees.
    assert_eq!(server.cli(&["GET", node.keys.version()]).await, "2");
    // The certificate also names 127.0.0.1.
    let by_ip = format!("rediss://127.0.0.1:{tls_port}/");
    let conn = Conn::connect_with_ca(&by_ip, timeout, &tls.ca_pem).await;
    let conn = conn.expect("connect over TLS by IP");
    assert_eq!(conn.version(&node.keys).await.expect("version"), 2);

    // The system's roots do not know the test CA.
    let error = Conn::connect(&server.tls_url(), timeout).await;
    let error = error.expect_err("an unknown CA");
    assert!(matches!(error, ProtocolError::Connect { .. }), "{error}");
    assert!(error.to_string().contains("UnknownIssuer"), "{error}");

    // TLS to a plain port, and plain TCP to the TLS port, fail saying what is likely wrong.
    let began = Instant::now();
    let plain_as_tls = format!("rediss://localhost:{}/", server.port());
    let error = Conn::connect_with_ca(&plain_as_tls, timeout, &tls.ca_pem).await;
    let error = error.expect_err("TLS to a plain port");
    assert!(
        began.elapsed() < Duration::from_secs(6),
        "{:?}",
        began.elapsed()
    );
    assert!(matches!(error, ProtocolError::Connect { .. }), "{error}");
    assert!(error.to_string().contains("is it a TLS port?"), "{error}");
    let tls_as_plain = format!("redis://127.0.0.1:{tls_port}/");
    let error = Conn::connect(&tls_as_plain, timeout).await;
    let error = error.expect_err("plain TCP to a TLS port");
    assert!(matches!(error, ProtocolError::Connect { .. }), "{error}");
    let shown = error.to_string();
    assert!(shown.contains("a TLS port needs rediss://"), "{shown}");

    // A CA needs a rediss:// URL.
    let error = Conn::connect_with_ca(&server.url(), timeout, &tls.ca_pem).await;
    let error = error.expect_err("a CA with redis://");
    assert!(matches!(error, ProtocolError::InvalidUrl { .. }), "{error}");
}
