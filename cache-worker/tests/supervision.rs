//! A crash of the refresher itself: the supervisor restarts it and the bucket is untouched.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use cache_worker::{CacheWorker, Worker};
use serde::{Deserialize, Serialize};

/// A value whose comparison panics on demand: user code running inside the refresher.
#[derive(Debug, Serialize, Deserialize)]
struct Touchy(u64);

static EQ_PANICS: AtomicBool = AtomicBool::new(false);

impl PartialEq for Touchy {
    fn eq(&self, other: &Self) -> bool {
        assert!(!EQ_PANICS.load(Ordering::SeqCst), "comparison exploded");
        self.0 == other.0
    }
}

struct Source;

impl CacheWorker for Source {
    type Key = u64;
    type Value = Touchy;
    type Error = std::io::Error;

    async fn load(&self, key: &u64) -> Result<Option<Touchy>, std::io::Error> {
        Ok(Some(Touchy(*key)))
    }
}

#[tokio::test(start_paused = true)]
async fn a_panicking_refresher_is_restarted_and_the_bucket_survives() {
    let w = Worker::builder(Source)
        .bucket("touchy")
        .refresh(Duration::ZERO)
        .retry_backoff(Duration::from_secs(1), Duration::from_secs(10))
        .start()
        .await
        .expect("start");
    for k in 0..5 {
        w.fetch(&k).await.expect("load");
    }

    EQ_PANICS.store(true, Ordering::SeqCst);
    let crashed = w.refresh_all().await;
    assert!(
        crashed.is_err(),
        "the cycle died with the refresher: {crashed:?}"
    );
    EQ_PANICS.store(false, Ordering::SeqCst);

    assert_eq!(w.len(), 5, "the bucket is untouched");
    assert_eq!(w.peek(&3).map(|v| v.0), Some(3));

    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(w.stats().refresher_restarts, 1);
    let report = w
        .refresh_all()
        .await
        .expect("the restarted refresher runs cycles");
    assert_eq!(report.unchanged, 5);
}
