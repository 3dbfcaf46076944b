//! The read path against its floor and its peers, side by side: a `peek` hit, a raw
//! `DashMap<K, Arc<V>>` get + `Arc` clone, moka's and quick_cache's sync `get`, and an async
//! `get` hit. `cargo bench -p cache-worker --bench read`.
#![allow(missing_docs, clippy::unwrap_used)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use cache_worker::{CacheWorker, Worker};
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use dashmap::DashMap;

struct Nothing;

impl CacheWorker for Nothing {
    type Key = String;
    type Value = [u64; 8];
    type Error = std::io::Error;

    async fn load(&self, _: &String) -> Result<Option<[u64; 8]>, std::io::Error> {
        Ok(None)
    }
}

const ENTRIES: usize = 100_000;
const BATCH: usize = 1024;

fn keys() -> (Vec<String>, Vec<usize>) {
    let keys: Vec<String> = (0..ENTRIES)
        .map(|i| format!("1001-{}", 10_000 + i))
        .collect();
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    let order = (0..BATCH)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % ENTRIES as u64) as usize
        })
        .collect();
    (keys, order)
}

fn reads(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (keys, order) = keys();
    let raw: DashMap<String, Arc<[u64; 8]>> = DashMap::new();
    let moka = moka::sync::Cache::<String, Arc<[u64; 8]>>::new(ENTRIES as u64 * 2);
    let quick = quick_cache::sync::Cache::<String, Arc<[u64; 8]>>::new(ENTRIES * 2);
    let worker = rt
        .block_on(
            Worker::builder(Nothing)
                .bucket("bench")
                .refresh(Duration::ZERO)
                .start(),
        )
        .unwrap();
    for (i, k) in keys.iter().enumerate() {
        let v = Arc::new([i as u64; 8]);
        raw.insert(k.clone(), v.clone());
        moka.insert(k.clone(), v.clone());
        quick.insert(k.clone(), v.clone());
        worker.insert(k.clone(), v);
    }
    moka.run_pending_tasks();
    let batch: Vec<&str> = order.iter().map(|&i| keys[i].as_str()).collect();
    let owned: Vec<&String> = order.iter().map(|&i| &keys[i]).collect();

    let mut g = c.benchmark_group(format!("hit x{BATCH}"));
    g.bench_function("raw dashmap get + arc clone", |b| {
        b.iter(|| {
            for k in &batch {
                black_box(raw.get(*k).map(|e| e.value().clone()));
            }
        })
    });
    g.bench_function("cache-worker peek", |b| {
        b.iter(|| {
            for k in &batch {
                black_box(worker.peek(*k));
            }
        })
    });
    g.bench_function("moka sync get", |b| {
        b.iter(|| {
            for k in &batch {
                black_box(moka.get(*k));
            }
        })
    });
    g.bench_function("quick_cache sync get", |b| {
        b.iter(|| {
            for k in &batch {
                black_box(quick.get(*k));
            }
        })
    });
    g.bench_function("cache-worker async get", |b| {
        b.iter_batched(
            || (),
            |()| {
                rt.block_on(async {
                    for k in &owned {
                        black_box(worker.get(k).await);
                    }
                })
            },
            BatchSize::SmallInput,
        )
    });
    g.bench_function("raw dashmap get in the same async loop", |b| {
        b.iter_batched(
            || (),
            |()| {
                rt.block_on(async {
                    for k in &batch {
                        black_box(raw.get(*k).map(|e| e.value().clone()));
                    }
                })
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, reads);
criterion_main!(benches);
