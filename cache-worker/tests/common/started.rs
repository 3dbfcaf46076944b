//! Workers started the way most tests start them (over the scripted [`Upstream`] or a loader of
//! the test's own).

use std::sync::Arc;
use std::time::Duration;

use cache_worker::{Builder, CacheWorker, Error, FetchError, RefreshReport, Worker};
use tokio::task::JoinHandle;

use super::upstream::Upstream;

/// A worker of `bucket` over `up` with no periodic refresh and no dump file: the test adds
/// what it needs (a later `.refresh(..)` replaces this one).
pub fn builder<W: CacheWorker + Clone>(up: &W, bucket: &str) -> Builder<W> {
    Worker::builder(up.clone())
        .bucket(bucket)
        .refresh(Duration::ZERO)
}

/// [`builder`], started.
pub async fn started<W: CacheWorker + Clone>(up: &W, bucket: &str) -> Worker<W> {
    builder(up, bucket).start().await.expect("start")
}

/// [`builder`] with what `configure` sets, started.
pub async fn started_with<W: CacheWorker + Clone>(
    up: &W,
    bucket: &str,
    configure: impl FnOnce(Builder<W>) -> Builder<W>,
) -> Worker<W> {
    configure(builder(up, bucket)).start().await.expect("start")
}

/// `worker.fetch(key)` on a task of its own.
pub fn spawn_fetch(
    worker: &Worker<Upstream>,
    key: &str,
) -> JoinHandle<Result<Arc<u64>, FetchError>> {
    let (worker, key) = (worker.clone(), key.to_owned());
    tokio::spawn(async move { worker.fetch(&key).await })
}

/// `worker.refresh_all()` on a task of its own.
pub fn spawn_refresh_all<W: CacheWorker>(
    worker: &Worker<W>,
) -> JoinHandle<Result<RefreshReport, Error>> {
    let worker = worker.clone();
    tokio::spawn(async move { worker.refresh_all().await })
}

/// What the worker holds now, as a plain map.
pub fn contents(worker: &Worker<Upstream>) -> std::collections::HashMap<String, u64> {
    worker
        .keys()
        .into_iter()
        .filter_map(|k| worker.peek(&k).map(|v| (k, *v)))
        .collect()
}

/// `(key, value)` pairs as the map [`contents`] gives.
pub fn map(pairs: &[(&str, u64)]) -> std::collections::HashMap<String, u64> {
    pairs
        .iter()
        .map(|&(k, v)| (super::upstream::key(k), v))
        .collect()
}
