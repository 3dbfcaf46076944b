//! What `start` waits for, and `Worker::ready` for the rest (issue #12, item 5): `start`
//! returns with the dump's entries or the seed in the bucket; the first refresh cycle (a bulk
//! worker's first `load_all`) runs after it, and `ready` waits for that cycle.

mod common;

use cache_worker::Error;

use common::{Upstream, key, started, started_on, temp_dump};

#[tokio::test]
async fn ready_waits_for_the_first_bulk_load_of_a_cold_start() {
    let up = Upstream::new();
    up.set_collection(&[("a", 1), ("b", 2), ("c", 3)]);
    let hold = up.hold_bulk();
    let worker = started(&up, "ready-bulk").await;
    // `start` has returned; the first load_all is held, so the bucket is still empty.
    hold.entered().await;
    assert!(worker.is_empty());
    let ready = tokio::spawn({
        let worker = worker.clone();
        async move { worker.ready().await }
    });
    hold.release();
    let report = ready.await.expect("join").expect("ready");
    assert!(report.bulk);
    assert_eq!((report.inserted, report.entries), (3, 3));
    assert_eq!(worker.len(), 3);
    // Once ready, it stays ready.
    assert_eq!(worker.ready().await.expect("ready").entries, 3);
    worker.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn ready_answers_after_a_warm_start_with_nothing_stale() {
    let (_dir, file) = temp_dump("ready.dump");
    let up = Upstream::new();
    let first = started_on(&up, "ready-warm", &file).await;
    first.insert(key("a"), 1);
    first.shutdown().await.expect("shutdown");
    let worker = started_on(&up, "ready-warm", &file).await;
    assert!(worker.started().is_warm());
    let report = worker.ready().await.expect("ready");
    assert_eq!(report.reloaded, 0, "nothing was stale");
    assert_eq!(worker.peek("a").as_deref(), Some(&1));
    worker.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn ready_fails_if_the_worker_stops_before_its_first_cycle() {
    let up = Upstream::new();
    up.set_collection(&[("a", 1)]);
    let hold = up.hold_bulk();
    let worker = started(&up, "ready-stopped").await;
    hold.entered().await;
    let ready = tokio::spawn({
        let worker = worker.clone();
        async move { worker.ready().await }
    });
    worker.shutdown().await.expect("shutdown");
    let error = ready.await.expect("join").expect_err("stopped first");
    assert!(matches!(error, Error::ShutDown { ref bucket } if bucket == "ready-stopped"));
    hold.release();
}
