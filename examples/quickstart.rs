//! A worker started with the builder: the first run loads from a (pretend) slow upstream and
//! writes a dump; the second run starts warm from it and answers before loading anything.
//!
//! ```text
//! cargo run --example quickstart      # cold: loads, then dumps
//! cargo run --example quickstart      # warm: restored from quickstart.dump
//! ```

use std::time::{Duration, Instant};

use cache_worker::{CacheWorker, Worker};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Widget {
    name: String,
    price_cents: u32,
}

#[derive(Debug, thiserror::Error)]
#[error("upstream unavailable")]
struct ApiError;

/// Pretends to be a slow HTTP API: 200 ms per widget.
struct WidgetStore;

impl CacheWorker for WidgetStore {
    type Key = String;
    type Value = Widget;
    type Error = ApiError;

    async fn load(&self, id: &String) -> Result<Option<Widget>, ApiError> {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let n: u32 = id.trim_start_matches("w-").parse().map_err(|_| ApiError)?;
        Ok(Some(Widget {
            name: format!("widget {n}"),
            price_cents: 100 + n * 25,
        }))
    }
}

#[tokio::main]
async fn main() -> Result<(), cache_worker::Error> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let dump = std::env::temp_dir().join("cache-worker-quickstart.dump");

    let started = Instant::now();
    let widgets = Worker::builder(WidgetStore)
        .bucket("widgets")
        .file(&dump)
        .refresh(Duration::from_secs(15 * 60))
        .start()
        .await?;
    let restored = widgets.stats().restored;
    if restored > 0 {
        println!(
            "warm start: {restored} widgets restored from {} in {:?}",
            dump.display(),
            started.elapsed()
        );
    } else {
        println!("cold start: no dump at {} yet", dump.display());
    }

    let ids: Vec<String> = (1..=5).map(|i| format!("w-{i}")).collect();
    let reading = Instant::now();
    let reads = futures_util::future::join_all(ids.iter().map(|id| widgets.fetch(id))).await;
    for (id, widget) in ids.iter().zip(reads) {
        match widget {
            Ok(w) => println!("  {id}: {} at {} cents", w.name, w.price_cents),
            Err(e) => println!("  {id}: {e}"),
        }
    }
    println!("read 5 widgets in {:?}", reading.elapsed());

    let stats = widgets.stats();
    println!(
        "stats: {} hits, {} misses, {} loads, {} restored",
        stats.hits, stats.misses, stats.loads, stats.restored
    );
    widgets.shutdown().await?;
    println!(
        "dump written to {} ({} writes); run me again for a warm start",
        dump.display(),
        widgets.stats().dump_writes
    );
    Ok(())
}
