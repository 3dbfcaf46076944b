//! The attribute's settings and its process-wide instance before the start (issue #12, items
//! 1, 3 and 6): `T::builder` starts from the attribute, `refresh = "off"` declares a worker
//! without periodic refresh, and before `start` each generated function works or says it
//! cannot.
//!
//! Each test uses its own worker type: the process-wide instance is one per type.

mod common;

use std::time::Duration;

use cache_worker::{CacheWorker, Change, Changes, Error, Event, Worker, cache_worker};
use futures_util::StreamExt;

use common::{Upstream, UpstreamError, key, within};

/// Declares a worker type over [`Upstream`] with the given attribute.
macro_rules! worker {
    (#[$attr:meta] $ty:ident) => {
        #[$attr]
        struct $ty(Upstream);

        impl CacheWorker for $ty {
            type Key = String;
            type Value = u64;
            type Error = UpstreamError;

            async fn load(&self, key: &String) -> Result<Option<u64>, UpstreamError> {
                self.0.load(key).await
            }
        }
    };
}

worker!(
    #[cache_worker(bucket = "via-builder", refresh = "7m", concurrency = 3, schema = 4)]
    ViaBuilder
);
worker!(
    #[cache_worker(bucket = "no-refresh", refresh = "off")]
    NoRefresh
);
worker!(
    #[cache_worker(bucket = "early", refresh = "off")]
    Early
);
worker!(
    #[cache_worker(
        bucket = "synced",
        refresh = "off",
        delta_threshold = 2,
        delta_ttl = "10m"
    )]
    Synced
);

#[tokio::test]
async fn t_builder_starts_from_the_attribute_and_the_builder_wins() {
    let worker = ViaBuilder(Upstream::new())
        .builder()
        .bucket("via-builder-eu")
        .concurrency(5)
        .start()
        .await
        .expect("start");
    let s = worker.settings();
    assert_eq!(s.bucket, "via-builder-eu", "the builder's bucket");
    assert_eq!(s.concurrency, 5, "the builder wins over the attribute");
    assert_eq!(
        s.refresh,
        Some(Duration::from_secs(7 * 60)),
        "the attribute's"
    );
    assert_eq!(s.schema, 4, "the attribute's");
    // An instance of its own: the process-wide one is not started.
    assert!(ViaBuilder::worker().is_none());
    worker.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn worker_builder_cannot_see_the_attribute_and_starts_from_the_defaults() {
    let worker = Worker::builder(ViaBuilder(Upstream::new()))
        .start()
        .await
        .expect("start");
    let s = worker.settings();
    assert_eq!(s.bucket, "viabuilder", "the type's name, lower-cased");
    assert_eq!(s.refresh, Some(Duration::from_secs(15 * 60)), "the default");
    assert_eq!((s.concurrency, s.schema), (16, 0), "the defaults");
    worker.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn refresh_off_in_the_attribute_means_no_periodic_refresh() {
    let worker = NoRefresh(Upstream::new()).start().await.expect("start");
    assert_eq!(worker.settings().refresh, None);
    NoRefresh::shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn before_the_start_each_function_works_or_says_so() {
    assert!(matches!(
        Early::insert(key("a"), 1),
        Err(Error::NotStarted { ref bucket }) if bucket == "early"
    ));
    assert!(matches!(
        Early::refresh_all().await,
        Err(Error::NotStarted { ref bucket }) if bucket == "early"
    ));
    assert_eq!(Early::version(), 0);
    assert_eq!(
        Early::changes_since(None),
        Changes::Full {
            version: 0,
            entries: Vec::new()
        }
    );
    // A subscription made before the start follows the worker once it starts.
    let mut events = Early::subscribe();
    Early(Upstream::new()).start().await.expect("start");
    Early::insert(key("a"), 1).expect("started");
    let first = within(Duration::from_secs(5), "the first event", events.next()).await;
    assert_eq!(
        first,
        Some(Event::Inserted {
            key: key("a"),
            value: 1.into(),
            version: Early::version(),
        })
    );
    Early::shutdown().await.expect("shutdown");
    assert_eq!(
        within(Duration::from_secs(5), "the end", events.next()).await,
        None,
        "it ends with the worker"
    );
}

#[tokio::test]
async fn delta_settings_in_the_attribute_and_sync_through_the_type() {
    Synced(Upstream::new()).start().await.expect("start");
    let s = Synced::worker().expect("started").settings().clone();
    assert_eq!(s.delta_threshold, 2);
    assert_eq!(s.delta_ttl, Duration::from_secs(600));
    let v0 = Synced::version();
    Synced::insert(key("a"), 1).expect("started");
    assert_eq!(Synced::version(), v0 + 1);
    assert_eq!(
        Synced::changes_since(Some(v0)),
        Changes::Delta {
            from: v0,
            version: v0 + 1,
            changes: vec![Change::Put {
                key: key("a"),
                value: 1.into()
            }],
        }
    );
    Synced::insert(key("b"), 2).expect("started");
    Synced::insert(key("c"), 3).expect("started");
    // Two changes retained: v0 is too old now.
    assert!(matches!(
        Synced::changes_since(Some(v0)),
        Changes::Full { version, ref entries } if version == v0 + 3 && entries.len() == 3
    ));
    Synced::shutdown().await.expect("shutdown");
}
