//! Shutdown while loads, refresh cycles and dumps are in flight, on tokio's paused clock and
//! with real dump files in temporary directories: what it waits for, what it gives up on, what
//! reaches the disk, and what a caller that shuts down twice, or drops a shutdown part-way,
//! gets.

mod common;

use std::path::Path;
use std::time::Duration;

use cache_worker::{FetchError, Worker};
use common::{
    Reply, Upstream, builder, key, on_disk, poll_once, settle, spawn_fetch, spawn_refresh_all,
    started, started_with, temp_dump, until,
};
use futures_util::StreamExt;
use tokio::time::Instant;

/// A worker on `file` with no periodic refresh, and a dump writer that, after its first dump,
/// waits an hour before the next: what reaches the disk after that is the shutdown's doing.
async fn on_file(up: &Upstream, bucket: &str, file: &Path) -> Worker<Upstream> {
    builder(up, bucket)
        .file(file)
        .dump_interval(Duration::from_secs(3600))
        .shutdown_timeout(Duration::from_secs(5))
        .start()
        .await
        .expect("start")
}

/// Waits (bounded) until the background writer has written its first dump.
async fn first_dump_written(worker: &Worker<Upstream>) {
    until(Duration::from_secs(10), "the first dump", || {
        (worker.stats().dump_writes >= 1).then_some(())
    })
    .await;
}

/// Shuts `worker` down; how long that took.
async fn timed_shutdown(worker: &Worker<Upstream>) -> Duration {
    let began = Instant::now();
    worker.shutdown().await.expect("shutdown");
    began.elapsed()
}

/// Shutdown while loads, the background writer and an explicit dump are in flight: it waits
/// for the loads, and the final dump holds everything stored before it, including the writes
/// made after the in-flight dump took its copy. The restart is warm with all of it.
#[tokio::test(start_paused = true)]
async fn shutdown_with_loads_and_dumps_in_flight_loses_nothing() {
    let (_dir, file) = temp_dump("busy.dump");
    let up = Upstream::new();
    for i in 0..20 {
        up.set_value(&format!("slow{i}"), 1_000 + i);
    }
    let worker = on_file(&up, "busy", &file).await;
    for i in 0..5_000 {
        worker.insert(format!("k{i}"), i);
    }
    up.set_delay(Duration::from_secs(2));
    let fetches: Vec<_> = (0..20)
        .map(|i| {
            let worker = worker.clone();
            tokio::spawn(async move { worker.fetch(&format!("slow{i}")).await })
        })
        .collect();
    settle().await;
    let dump = tokio::spawn({
        let worker = worker.clone();
        async move { worker.dump().await }
    });
    tokio::task::yield_now().await;
    for i in 5_000..6_000 {
        worker.insert(format!("k{i}"), i);
    }
    let waited = timed_shutdown(&worker).await;
    assert!(
        waited >= Duration::from_millis(1_900) && waited < Duration::from_secs(5),
        "shutdown waited {waited:?} for 2 s loads (timeout 5 s)"
    );
    for (i, fetch) in fetches.into_iter().enumerate() {
        let value = fetch
            .await
            .expect("no waiter panics")
            .expect("the load finished");
        assert_eq!(*value, 1_000 + i as u64);
    }
    dump.await.expect("join").expect("the explicit dump");
    assert_eq!(worker.stats().dump_failures, 0);
    drop(worker);

    let restored = on_disk("busy", &file).await;
    assert_eq!(
        restored.len(),
        6_020,
        "a warm start with every stored value"
    );
    for i in 0..6_000 {
        assert_eq!(restored.get(&format!("k{i}")), Some(&i), "k{i}");
    }
    for i in 0..20 {
        assert_eq!(
            restored.get(&format!("slow{i}")),
            Some(&(1_000 + i)),
            "slow{i}"
        );
    }
}

/// A hung load does not hold shutdown past its timeout: the final dump is written without it,
/// a refresh cycle in flight ends with `ShutDown`, and the hung fetch still ends at the load
/// timeout.
#[tokio::test(start_paused = true)]
async fn shutdown_gives_up_on_a_hung_load_at_the_shutdown_timeout() {
    let (_dir, file) = temp_dump("hung.dump");
    let up = Upstream::new();
    up.set("hung", Reply::Hang);
    let load_timeout = Duration::from_secs(3600);
    let worker = started_with(&up, "hung", |b| {
        b.file(&file)
            .load_timeout(load_timeout)
            .shutdown_timeout(Duration::from_secs(5))
    })
    .await;
    for i in 0..100 {
        up.set_value(&format!("k{i}"), i);
        worker.insert(format!("k{i}"), i);
    }
    up.set("k0", Reply::Hang);
    let fetch = spawn_fetch(&worker, "hung");
    let cycle = spawn_refresh_all(&worker);
    settle().await;
    assert_eq!(up.loads_of("hung"), 1);
    assert_eq!(up.loads_of("k0"), 1, "the cycle is stuck on k0");

    let waited = timed_shutdown(&worker).await;
    assert!(
        waited >= Duration::from_secs(5) && waited < Duration::from_secs(6),
        "shutdown took {waited:?} with a 5 s shutdown timeout"
    );
    let cycle = cycle.await.expect("join");
    assert!(
        matches!(cycle, Err(cache_worker::Error::ShutDown { .. })),
        "{cycle:?}"
    );
    let fetched = fetch.await.expect("join");
    assert!(
        matches!(fetched, Err(FetchError::Timeout(d)) if d == load_timeout),
        "{fetched:?}"
    );
    drop(worker);

    let restored = on_disk("hung", &file).await;
    assert_eq!(restored.len(), 100);
    assert_eq!(restored.get("k0"), Some(&0), "the hung reload kept k0");
}

/// A worker on a file that has dumped `a`, then got `b` (not yet on disk: the writer waits an
/// hour), with a 3 s load in flight.
async fn shutdown_scene(file: &Path) -> (Upstream, Worker<Upstream>) {
    let up = Upstream::with_values(&[("slow", 3)]);
    let worker = on_file(&up, "scene", file).await;
    worker.insert(key("a"), 1);
    first_dump_written(&worker).await;
    worker.insert(key("b"), 2);
    up.set_delay(Duration::from_secs(3));
    spawn_fetch(&worker, "slow");
    settle().await;
    assert_eq!(up.loads_of("slow"), 1);
    (up, worker)
}

/// Two shutdowns at once (say, a signal handler and the main task): neither returns before
/// the final dump is on disk, or a process that exits when one returns loses the last writes.
#[tokio::test(start_paused = true)]
async fn concurrent_shutdowns_both_return_after_the_final_dump() {
    let (_dir, file) = temp_dump("scene.dump");
    let (_up, worker) = shutdown_scene(&file).await;
    let first = tokio::spawn({
        let worker = worker.clone();
        async move { worker.shutdown().await }
    });
    settle().await;
    assert!(!first.is_finished(), "the first waits for the 3 s load");
    worker.shutdown().await.expect("shutdown");
    let restored = on_disk("scene", &file).await;
    assert_eq!(
        restored.get("b"),
        Some(&2),
        "the second shutdown returned before the final dump was written"
    );
    first.await.expect("join").expect("the first shutdown");
}

/// A shutdown future dropped part-way (say, under the caller's own timeout): calling shutdown
/// again completes it, final dump included.
#[tokio::test(start_paused = true)]
async fn a_shutdown_dropped_part_way_is_completed_by_the_next_call() {
    let (_dir, file) = temp_dump("scene.dump");
    let (_up, worker) = shutdown_scene(&file).await;
    {
        let mut first = Box::pin(worker.shutdown());
        assert!(
            poll_once(first.as_mut()).is_pending(),
            "waiting for the load"
        );
    }
    tokio::time::timeout(Duration::from_secs(60), worker.shutdown())
        .await
        .expect("the second shutdown returns")
        .expect("and its final dump is written");
    let restored = on_disk("scene", &file).await;
    assert_eq!(
        restored.get("b"),
        Some(&2),
        "after a dropped shutdown, shutting down again wrote no final dump"
    );
}

/// `EventStream`'s documentation: "The stream ends when the worker is dropped or shut down."
/// After a shutdown a subscriber gets the events sent before it, then the end.
#[tokio::test(start_paused = true)]
async fn a_subscriber_stream_ends_at_shutdown() {
    let up = Upstream::new();
    let worker = started(&up, "stream-end").await;
    let mut events = worker.subscribe();
    worker.insert(key("a"), 1);
    worker.insert(key("b"), 2);
    worker.shutdown().await.expect("shutdown");
    let mut seen = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(60), events.next()).await {
            Ok(Some(event)) => seen.push(event),
            Ok(None) => break,
            Err(_) => panic!("the stream did not end at shutdown (after {seen:?})"),
        }
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
}
