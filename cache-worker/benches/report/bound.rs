//! The memory bound's rows (issue #15): `peek` on a bounded bucket against a raw `DashMap`, and
//! the hit ratio of its S3-FIFO eviction against moka's W-TinyLFU on a Zipf(0.9) trace at the
//! same capacity.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;

use super::{
    Row, bench_worker, best_ns, key, session, started, xorshift_indexes, xorshift_indexes_from,
};

/// The skew of the trace: Zipf(0.9), as in Caffeine's and the S3-FIFO paper's synthetic traces.
const SKEW: f64 = 0.9;

pub(super) fn bound(rows: &mut Vec<Row>, rt: &tokio::runtime::Runtime, n: usize) {
    peek(rows, rt, n);
    hit_ratio(rows, rt, n);
}

/// `peek` hits on a bucket full to its bound (every hit counts a read for the policy) against a
/// raw map holding the same `Arc`s, read in the same random order.
fn peek(rows: &mut Vec<Row>, rt: &tokio::runtime::Runtime, n: usize) {
    let keys: Vec<String> = (0..n).map(key).collect();
    let order = xorshift_indexes(n, 200_000);
    let lookups: Vec<&str> = order.iter().map(|&i| keys[i].as_str()).collect();
    let raw: DashMap<String, Arc<super::Session>> = DashMap::new();
    let w = started(rt, bench_worker(Duration::ZERO), |b| {
        b.bucket("bounded-reads").max_entries(n)
    });
    for (i, k) in keys.iter().enumerate() {
        let v = Arc::new(session(i));
        w.insert(k.clone(), v.clone());
        raw.insert(k.clone(), v);
    }
    assert_eq!(w.len(), n, "full to its bound, nothing evicted");
    let ops = lookups.len();
    let (mut t_raw, mut t_peek) = (f64::INFINITY, f64::INFINITY);
    for _ in 0..7 {
        t_raw = t_raw.min(best_ns(1, ops, || {
            for k in &lookups {
                black_box(raw.get(*k).map(|e| e.value().clone()));
            }
        }));
        t_peek = t_peek.min(best_ns(1, ops, || {
            for k in &lookups {
                black_box(w.peek(*k));
            }
        }));
    }
    rows.push(Row {
        target: "peek hit on a bounded bucket (`max_entries`, full) vs raw DashMap get + Arc clone",
        ours: format!("{t_peek:.1} ns"),
        peer: format!("{t_raw:.1} ns"),
        ratio: t_peek / t_raw,
        goal: "≤ 1.2×",
        met: t_peek / t_raw <= 1.2,
    });
    rt.block_on(w.shutdown()).unwrap();
}

/// A trace of `len` reads of `universe` keys, key `i` read with probability ∝ 1 / (i+1)^SKEW,
/// drawn by inverse transform over the cumulative weights.
fn zipf_trace(universe: usize, len: usize) -> Vec<usize> {
    let mut cumulative = Vec::with_capacity(universe);
    let mut sum = 0.0;
    for i in 0..universe {
        sum += 1.0 / ((i + 1) as f64).powf(SKEW);
        cumulative.push(sum);
    }
    const SCALE: usize = 1 << 30;
    xorshift_indexes_from(0x5EED_2F1F, SCALE, len)
        .into_iter()
        .map(|u| {
            let target = (u as f64 + 0.5) / SCALE as f64 * sum;
            cumulative
                .partition_point(|&c| c < target)
                .min(universe - 1)
        })
        .collect()
}

/// The hit ratio of a read-through cache of `capacity` over a Zipf trace: a read that misses
/// inserts the key. The worker and moka see the same trace; moka's pending maintenance is run
/// as it would be by its own writes.
fn hit_ratio(rows: &mut Vec<Row>, rt: &tokio::runtime::Runtime, n: usize) {
    let universe = n;
    let capacity = n / 10;
    let trace = zipf_trace(universe, 20 * n);
    let keys: Vec<String> = (0..universe).map(key).collect();
    let value = Arc::new(session(0));

    let w = started(rt, bench_worker(Duration::ZERO), |b| {
        b.bucket("bounded-zipf")
            .max_entries(capacity)
            .delta_threshold(0)
    });
    let mut ours = 0usize;
    for &i in &trace {
        if w.peek(keys[i].as_str()).is_some() {
            ours += 1;
        } else {
            w.insert(keys[i].clone(), value.clone());
        }
    }
    assert!(w.len() <= capacity);
    rt.block_on(w.shutdown()).unwrap();

    let moka = moka::sync::Cache::<String, Arc<super::Session>>::new(capacity as u64);
    let mut theirs = 0usize;
    for &i in &trace {
        if moka.get(keys[i].as_str()).is_some() {
            theirs += 1;
        } else {
            moka.insert(keys[i].clone(), value.clone());
        }
    }
    let pct = |hits: usize| 100.0 * hits as f64 / trace.len() as f64;
    let (ours, theirs) = (pct(ours), pct(theirs));
    rows.push(Row {
        target: "hit ratio, Zipf(0.9) trace over 100k keys, capacity 10k: S3-FIFO (`max_entries`) vs moka 0.12 (W-TinyLFU)",
        ours: format!("{ours:.1} %"),
        peer: format!("{theirs:.1} %"),
        ratio: ours / theirs,
        goal: "≥ moka − 2 points",
        met: ours >= theirs - 2.0,
    });
}
