//! The delta-sync rows (issue #13): a delta against a full snapshot, in time and in bytes over
//! HTTP; the cost of the version log on a write; SSE fan-out to a thousand clients.

use std::hint::black_box;
use std::time::{Duration, Instant};

use cache_worker::{Changes, Worker};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{Bench, Row, bench_worker, best_ns, fill, key, session, started};

/// How far behind the client of the delta rows is.
const BEHIND: usize = 100;

pub(super) fn sync(rows: &mut Vec<Row>, rt: &tokio::runtime::Runtime, n: usize) {
    let w = started(rt, bench_worker(Duration::ZERO), |b| b.bucket("sync"));
    fill(&w, n);
    let since = w.version();
    for i in 0..BEHIND {
        let mut changed = session(i * 7);
        changed.seats_available += 1;
        w.insert(key(i * 7), changed);
    }
    assert!(matches!(
        w.changes_since(Some(since)),
        Changes::Delta { .. }
    ));

    let rounds = 7;
    let (mut t_delta, mut t_full) = (f64::INFINITY, f64::INFINITY);
    for _ in 0..rounds {
        t_delta = t_delta.min(best_ns(1, 100, || {
            for _ in 0..100 {
                black_box(w.changes_since(Some(since)));
            }
        }));
        t_full = t_full.min(best_ns(1, 1, || {
            black_box(w.changes_since(None));
        }));
    }
    let ratio = t_delta / t_full;
    rows.push(Row {
        target: "`changes_since`, a client 100 versions behind a 100k bucket: `Delta` vs `Full`",
        ours: format!("{:.1} µs", t_delta / 1e3),
        peer: format!("{:.2} ms", t_full / 1e6),
        ratio,
        goal: "≤ 0.02",
        met: ratio <= 0.02,
    });

    let (delta_bytes, delta_ns, full_bytes, full_ns) = rt.block_on(over_http(&w, since));
    let ratio = delta_bytes as f64 / full_bytes as f64;
    rows.push(Row {
        target: "HTTP `GET /?since=V` 100 versions behind vs `GET /`: bytes",
        ours: format!("{:.1} KiB", delta_bytes as f64 / 1024.0),
        peer: format!("{:.1} MiB", full_bytes as f64 / 1048576.0),
        ratio,
        goal: "≤ 0.02",
        met: ratio <= 0.02,
    });
    let ratio = delta_ns / full_ns;
    rows.push(Row {
        target: "HTTP `GET /?since=V` 100 versions behind vs `GET /`: time on loopback",
        ours: format!("{:.2} ms", delta_ns / 1e6),
        peer: format!("{:.1} ms", full_ns / 1e6),
        ratio,
        goal: "≤ 0.02",
        met: ratio <= 0.02,
    });
    rt.block_on(w.shutdown()).unwrap();
    fan_out(rows, rt);
}

/// Bytes and best time of the delta and of the full answer, fetched over loopback.
async fn over_http(w: &Worker<Bench>, since: u64) -> (usize, f64, usize, f64) {
    let (addr, server) = serve(w.clone()).await;
    let (mut delta, mut full) = ((0, f64::INFINITY), (0, f64::INFINITY));
    for _ in 0..5 {
        let t = Instant::now();
        let bytes = get(addr, &format!("/?since={since}")).await;
        delta = (bytes.len(), delta.1.min(t.elapsed().as_nanos() as f64));
        assert!(bytes.starts_with(b"{\"kind\":\"delta\""), "a delta");
        let t = Instant::now();
        let bytes = get(addr, "/").await;
        full = (bytes.len(), full.1.min(t.elapsed().as_nanos() as f64));
    }
    server.abort();
    (delta.0, delta.1, full.0, full.1)
}

/// Serves the worker's router on a free loopback port.
async fn serve(w: Worker<Bench>) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = cache_worker::http::router(w);
    let server = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (addr, server)
}

/// The body of `GET path`, over a connection of its own (HTTP/1.0: the body ends at close).
async fn get(addr: std::net::SocketAddr, path: &str) -> Vec<u8> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.0\r\nHost: bench\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let body = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(0, |at| at + 4);
    response.split_off(body)
}

/// A write's cost with the log on (the default threshold) and off (`delta_threshold(0)`):
/// updates of existing keys with a changed value, values prebuilt.
pub(super) fn log_cost(rows: &mut Vec<Row>, rt: &tokio::runtime::Runtime, n: usize) {
    let on = started(rt, bench_worker(Duration::ZERO), |b| b.bucket("log-on"));
    let off = started(rt, bench_worker(Duration::ZERO), |b| {
        b.bucket("log-off").delta_threshold(0)
    });
    fill(&on, n);
    fill(&off, n);
    let ops = n.min(100_000);
    let values: Vec<_> = (0..2)
        .map(|round| {
            (0..ops)
                .map(|i| {
                    let mut s = session(i);
                    s.seats_available += 1 + round;
                    (key(i), std::sync::Arc::new(s))
                })
                .collect::<Vec<_>>()
        })
        .collect();
    let (mut t_on, mut t_off) = (f64::INFINITY, f64::INFINITY);
    let rounds: usize = std::env::var("CACHE_WORKER_BENCH_LOG_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(10);
    for round in 0..rounds {
        let batch = &values[round % 2];
        t_off = t_off.min(best_ns(1, ops, || {
            for (k, v) in batch {
                off.insert(k.clone(), v.clone());
            }
        }));
        t_on = t_on.min(best_ns(1, ops, || {
            for (k, v) in batch {
                on.insert(k.clone(), v.clone());
            }
        }));
    }
    let ratio = t_on / t_off;
    rows.push(Row {
        target: "a change (insert of a changed value) with the version log on vs off",
        ours: format!("{t_on:.0} ns"),
        peer: format!("{t_off:.0} ns"),
        ratio,
        goal: "≤ 1.1",
        met: ratio <= 1.1,
    });
    rt.block_on(async {
        on.shutdown().await.unwrap();
        off.shutdown().await.unwrap();
    });
}

/// How many SSE clients the fan-out row connects.
const CLIENTS: usize = 1000;
/// How many changes it times.
const CHANGES: usize = 50;

/// 1000 SSE clients on loopback: from `insert` to the last client's receipt.
fn fan_out(rows: &mut Vec<Row>, rt: &tokio::runtime::Runtime) {
    let w = started(rt, bench_worker(Duration::ZERO), |b| {
        b.bucket("fan-out").event_capacity(4096)
    });
    fill(&w, 1000);
    let (last, each) = rt.block_on(async {
        let (addr, server) = serve(w.clone()).await;
        let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel::<(u64, Instant)>();
        let mut clients = Vec::new();
        for _ in 0..CLIENTS {
            let seen = seen_tx.clone();
            let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            stream
                .write_all(
                    b"GET /events HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\n\r\n",
                )
                .await
                .unwrap();
            clients.push(tokio::spawn(async move {
                let mut buf = vec![0u8; 1 << 16];
                let mut pending = Vec::new();
                loop {
                    let Ok(n) = stream.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    let at = Instant::now();
                    pending.extend_from_slice(&buf[..n]);
                    // Every `id: V` line that arrived in this read.
                    while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                        let line: Vec<u8> = pending.drain(..=end).collect();
                        if let Some(id) = line.strip_prefix(b"id: ") {
                            let id = String::from_utf8_lossy(id);
                            if let Ok(version) = id.trim().parse() {
                                let _ = seen.send((version, at));
                            }
                        }
                    }
                }
            }));
        }
        drop(seen_tx);
        // Let every client get its first `full` before the changes are timed.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        while seen_rx.try_recv().is_ok() {}
        let mut sent = std::collections::HashMap::new();
        for i in 0..CHANGES {
            let mut s = session(i);
            s.seats_available += 1000;
            let t = Instant::now();
            w.insert(key(i), s);
            sent.insert(w.version(), t);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut last: std::collections::HashMap<u64, (usize, Duration)> = Default::default();
        let mut each = Vec::new();
        while let Ok((version, at)) = seen_rx.try_recv() {
            if let Some(t) = sent.get(&version) {
                let latency = at.duration_since(*t);
                each.push(latency);
                let slot = last.entry(version).or_insert((0, Duration::ZERO));
                slot.0 += 1;
                slot.1 = slot.1.max(latency);
            }
        }
        server.abort();
        for c in clients {
            c.abort();
        }
        let complete: Vec<Duration> = last
            .values()
            .filter(|(count, _)| *count == CLIENTS)
            .map(|(_, latest)| *latest)
            .collect();
        assert_eq!(
            complete.len(),
            CHANGES,
            "every change reached every client ({} of {CHANGES} did)",
            complete.len()
        );
        (complete, each)
    });
    let pct = |mut v: Vec<Duration>, p: f64| {
        v.sort();
        v[((v.len() - 1) as f64 * p).round() as usize]
    };
    let (p50, p99) = (pct(last.clone(), 0.5), pct(last, 0.99));
    let each_p99 = pct(each, 0.99);
    rows.push(Row {
        target: "1000 SSE clients on loopback: `insert` → the last client's receipt, p50 / p99 (ratio: p99 / 50 ms)",
        ours: format!(
            "{:.1} / {:.1} ms",
            p50.as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3
        ),
        peer: format!("50 ms (one client's p99: {:.1} ms)", each_p99.as_secs_f64() * 1e3),
        ratio: p99.as_secs_f64() / 0.050,
        goal: "p99 ≤ 50 ms",
        met: p99 <= Duration::from_millis(50),
    });
    rt.block_on(w.shutdown()).unwrap();
}
