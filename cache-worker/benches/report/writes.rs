//! The write path's rows (issue #16): `Worker::insert` of changed values on 1 and 2 threads
//! against a raw `DashMap` and moka, and a 75% read / 25% write mix on 2 threads (Caffeine's
//! standard mix) against the raw map.
//!
//! Every write updates an existing key with a value that differs from the stored one (two
//! prebuilt value sets, taken in turn by the rounds), so each is a versioned change with its
//! event and log record; each thread writes its own share of the keys (`i % threads == t`),
//! in its own random order, so that two threads never write one key with one value. The
//! rounds interleave the peers, and each figure is the median of its rounds.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;

use super::{Row, Session, bench_worker, key, session, started, together, xorshift_indexes_from};

/// Rounds per figure; the median is reported.
const ROUNDS: usize = 5;
/// Passes over the plan in one round, the value sets taken in turn (even: a round's first
/// pass changes what the last pass of the round before left).
const PASSES: usize = 4;
/// Reads per write in the mix: 75% / 25%.
const READS_PER_WRITE: usize = 3;

/// One operation of a thread: write `index` (with the pass's value) or read it.
#[derive(Clone, Copy)]
struct Op {
    index: u32,
    write: bool,
}

/// What each peer does with an operation: the key, and the value of this round.
type Apply<'a> = dyn Fn(&String, &Arc<Session>, bool) + Sync + 'a;

pub(super) fn writes(rows: &mut Vec<Row>, rt: &tokio::runtime::Runtime, n: usize) {
    let keys: Vec<String> = (0..n).map(key).collect();
    // Two value sets that differ from each other and from the fill in every entry.
    let values: Vec<Vec<Arc<Session>>> = (1..=2)
        .map(|change| {
            (0..n)
                .map(|i| {
                    let mut s = session(i);
                    s.seats_available += change;
                    Arc::new(s)
                })
                .collect()
        })
        .collect();
    let w = started(rt, bench_worker(Duration::ZERO), |b| b.bucket("writes"));
    let raw: DashMap<String, Arc<Session>> = DashMap::new();
    // The worker's map has 64 shards, DashMap's default 4 per core (8 here): the same map
    // with 64, for what the shards alone give.
    let sharded: DashMap<String, Arc<Session>> = DashMap::with_shard_amount(64);
    let moka: moka::sync::Cache<String, Arc<Session>> = moka::sync::Cache::new(n as u64 * 2);
    for (i, k) in keys.iter().enumerate() {
        let v = Arc::new(session(i));
        w.insert(k.clone(), v.clone());
        raw.insert(k.clone(), v.clone());
        sharded.insert(k.clone(), v.clone());
        moka.insert(k.clone(), v);
    }
    moka.run_pending_tasks();

    let ours = |k: &String, v: &Arc<Session>, write: bool| {
        if write {
            w.insert(k.clone(), v.clone());
        } else {
            black_box(w.peek(k.as_str()));
        }
    };
    let theirs = |k: &String, v: &Arc<Session>, write: bool| {
        if write {
            raw.insert(k.clone(), v.clone());
        } else {
            black_box(raw.get(k.as_str()).map(|e| e.value().clone()));
        }
    };
    let shardeds = |k: &String, v: &Arc<Session>, write: bool| {
        if write {
            sharded.insert(k.clone(), v.clone());
        } else {
            black_box(sharded.get(k.as_str()).map(|e| e.value().clone()));
        }
    };
    let mokas = |k: &String, v: &Arc<Session>, write: bool| {
        if write {
            moka.insert(k.clone(), v.clone());
        } else {
            black_box(moka.get(k.as_str()));
        }
    };

    let (one, two, mix) = (plan(n, 1, 0), plan(n, 2, 0), plan(n, 2, READS_PER_WRITE));
    let passes: Vec<&[Arc<Session>]> = (0..PASSES).map(|p| values[p % 2].as_slice()).collect();
    let mut figures: [Vec<f64>; 9] = Default::default();
    for _ in 0..ROUNDS {
        let peers: [(&[Vec<Op>], &Apply<'_>); 9] = [
            (&one, &ours),
            (&one, &theirs),
            (&one, &mokas),
            (&two, &ours),
            (&two, &theirs),
            (&two, &shardeds),
            (&two, &mokas),
            (&mix, &ours),
            (&mix, &theirs),
        ];
        for (figure, (plan, apply)) in figures.iter_mut().zip(peers) {
            figure.push(per_second(&keys, &passes, plan, apply));
        }
        // Moka's writes land in its maintenance queue: drained between rounds, untimed.
        moka.run_pending_tasks();
    }
    let [
        one_w,
        one_raw,
        one_moka,
        two_w,
        two_raw,
        two_sharded,
        two_moka,
        mix_w,
        mix_raw,
    ] = figures.map(median);
    let m = |x: f64| format!("{:.2} M/s", x / 1e6);
    rows.push(Row {
        target: "insert (a changed value), 1 thread: worker vs raw DashMap (info)",
        ours: m(one_w),
        peer: m(one_raw),
        ratio: one_w / one_raw,
        goal: "(reference)",
        met: true,
    });
    rows.push(Row {
        target: "insert, 1 thread: worker vs moka `sync::Cache::insert` (info)",
        ours: m(one_w),
        peer: m(one_moka),
        ratio: one_w / one_moka,
        goal: "(reference)",
        met: true,
    });
    rows.push(Row {
        target: "raw DashMap insert, 2 threads vs 1 (the machine's own scaling, info)",
        ours: m(two_raw),
        peer: m(one_raw),
        ratio: two_raw / one_raw,
        goal: "(reference)",
        met: true,
    });
    rows.push(Row {
        target: "insert, 2 threads vs the worker's 1-thread rate",
        ours: m(two_w),
        peer: m(one_w),
        ratio: two_w / one_w,
        goal: "≥ 1.3×",
        met: two_w / one_w >= 1.3,
    });
    rows.push(Row {
        target: "insert, 2 threads: worker vs raw DashMap",
        ours: m(two_w),
        peer: m(two_raw),
        ratio: two_w / two_raw,
        goal: "≥ 0.5×",
        met: two_w / two_raw >= 0.5,
    });
    rows.push(Row {
        target: "insert, 2 threads: worker vs raw DashMap with 64 shards, as the worker's (info)",
        ours: m(two_w),
        peer: m(two_sharded),
        ratio: two_w / two_sharded,
        goal: "(reference)",
        met: true,
    });
    rows.push(Row {
        target: "insert, 2 threads: worker vs moka (info)",
        ours: m(two_w),
        peer: m(two_moka),
        ratio: two_w / two_moka,
        goal: "(reference)",
        met: true,
    });
    rows.push(Row {
        target: "75% peek / 25% insert, 2 threads: worker vs raw DashMap",
        ours: m(mix_w),
        peer: m(mix_raw),
        ratio: mix_w / mix_raw,
        goal: "≥ 0.7×",
        met: mix_w / mix_raw >= 0.7,
    });
    rt.block_on(w.shutdown()).unwrap();
}

/// Each thread's operations: a write of each key of its own share of the `n` keys
/// (`i % threads == t`) once, in a random order, each followed by `reads` reads of random keys.
fn plan(n: usize, threads: usize, reads: usize) -> Vec<Vec<Op>> {
    (0..threads)
        .map(|t| {
            let mut share: Vec<usize> = (t..n).step_by(threads).collect();
            let seed = 0xA076_1D64_78BD_642F ^ (t as u64 + 1);
            let randoms = xorshift_indexes_from(seed, n, share.len() * (reads + 1));
            let (swaps, picks) = randoms.split_at(share.len());
            // Fisher–Yates, from the generator's numbers.
            for i in (1..share.len()).rev() {
                share.swap(i, swaps[i] % (i + 1));
            }
            let mut picks = picks.iter();
            let mut ops = Vec::with_capacity(share.len() * (reads + 1));
            for &index in &share {
                ops.push(Op {
                    index: index as u32,
                    write: true,
                });
                for &read in picks.by_ref().take(reads) {
                    ops.push(Op {
                        index: read as u32,
                        write: false,
                    });
                }
            }
            ops
        })
        .collect()
}

/// Operations per second of `apply` on one thread per plan, the threads started together,
/// each going through its plan once per pass with that pass's values.
fn per_second(
    keys: &[String],
    passes: &[&[Arc<Session>]],
    plan: &[Vec<Op>],
    apply: &Apply<'_>,
) -> f64 {
    let elapsed = together(plan, |ops: &Vec<Op>| {
        for values in passes {
            for op in ops {
                let i = op.index as usize;
                apply(&keys[i], &values[i], op.write);
            }
        }
    });
    let ops: usize = plan.iter().map(Vec::len).sum();
    (ops * passes.len()) as f64 / elapsed.as_secs_f64()
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}
