//! Behaviour through `#[cache_worker]`: the user story of SPEC §1, the not-started and
//! started-twice cases, and the attribute's settings reaching the running worker.
//!
//! Each test uses its own worker type: the process-wide instance is one per type, so tests
//! that run in parallel never share one. The dump round trip through the attribute's `file`
//! lives in `macro_dump.rs`, its own test binary, because it changes the working directory.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cache_worker::{CacheWorker, Error, Event, FetchError, RemovalCause, Worker, cache_worker};
use futures_util::StreamExt;

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct Widget {
    name: String,
    price_cents: u32,
}

fn widget(name: &str, price_cents: u32) -> Widget {
    Widget {
        name: name.to_owned(),
        price_cents,
    }
}

/// The upstream API of the story: a fixed catalogue, and a count of the calls it got.
#[derive(Clone, Default)]
struct ApiClient {
    widgets: Arc<HashMap<String, Widget>>,
    calls: Arc<AtomicUsize>,
}

impl ApiClient {
    fn new() -> Self {
        let widgets = [
            ("w-1".to_owned(), widget("Sprocket", 250)),
            ("w-2".to_owned(), widget("Gear", 990)),
        ];
        ApiClient {
            widgets: Arc::new(widgets.into_iter().collect()),
            calls: Arc::default(),
        }
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    async fn widget(&self, id: &str) -> Result<Option<Widget>, ApiError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if id == "broken" {
            return Err(ApiError("upstream said 503".to_owned()));
        }
        Ok(self.widgets.get(id).cloned())
    }
}

#[derive(Debug)]
struct ApiError(String);

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ApiError {}

/// One loader for every worker type of this file: the types differ only in their attribute.
macro_rules! widget_worker {
    ($ty:ident) => {
        impl CacheWorker for $ty {
            type Key = String;
            type Value = Widget;
            type Error = ApiError;

            async fn load(&self, key: &String) -> Result<Option<Widget>, ApiError> {
                self.api.widget(key).await
            }
        }
    };
}

#[cache_worker(bucket = "widgets", refresh = "15m")]
struct WidgetStore {
    api: ApiClient,
}
widget_worker!(WidgetStore);

#[tokio::test]
async fn the_user_story() {
    let api = ApiClient::new();
    let worker = WidgetStore { api: api.clone() }
        .start()
        .await
        .expect("first start");
    assert_eq!(worker.settings().bucket, "widgets");
    assert_eq!(
        worker.settings().refresh,
        Some(Duration::from_secs(15 * 60))
    );

    let w: Option<Arc<Widget>> = WidgetStore::get(&"w-1".to_string()).await;
    assert_eq!(w.as_deref(), Some(&widget("Sprocket", 250)));
    let r: Result<Arc<Widget>, FetchError> = WidgetStore::fetch(&"w-2".to_string()).await;
    assert_eq!(r.expect("w-2 exists").as_ref(), &widget("Gear", 990));
    assert_eq!(api.calls(), 2);

    // Hits are answered from the bucket, without calling upstream.
    assert_eq!(
        WidgetStore::get(&"w-1".to_string()).await.as_deref(),
        Some(&widget("Sprocket", 250))
    );
    assert_eq!(
        WidgetStore::peek("w-2").as_deref(),
        Some(&widget("Gear", 990))
    );
    assert_eq!(api.calls(), 2);
    assert_eq!(WidgetStore::len(), 2);
    let mut keys = WidgetStore::keys();
    keys.sort();
    assert_eq!(keys, ["w-1", "w-2"]);

    // A key upstream does not have, and a failing upstream: nothing stored, the reason told.
    assert!(matches!(
        WidgetStore::fetch(&"w-404".to_string()).await,
        Err(FetchError::NotFound)
    ));
    match WidgetStore::fetch(&"broken".to_string()).await {
        Err(error @ FetchError::Load(_)) => {
            assert!(error.to_string().contains("upstream said 503"), "{error}");
        }
        other => panic!("expected FetchError::Load, got {other:?}"),
    }
    assert_eq!(WidgetStore::get(&"broken".to_string()).await, None);
    assert_eq!(WidgetStore::peek("w-404"), None);
    assert_eq!(WidgetStore::len(), 2);

    // Direct writes and removals, seen by subscribers.
    let mut events = WidgetStore::subscribe();
    let v0 = WidgetStore::version();
    WidgetStore::insert("w-3".to_string(), widget("Cog", 15)).expect("started");
    assert_eq!(
        WidgetStore::peek("w-3").as_deref(),
        Some(&widget("Cog", 15))
    );
    assert_eq!(
        WidgetStore::invalidate("w-3").as_deref(),
        Some(&widget("Cog", 15))
    );
    assert_eq!(WidgetStore::peek("w-3"), None);
    assert_eq!(
        events.next().await,
        Some(Event::Inserted {
            key: "w-3".to_string(),
            value: Arc::new(widget("Cog", 15)),
            version: v0 + 1,
        })
    );
    assert_eq!(
        events.next().await,
        Some(Event::Removed {
            key: "w-3".to_string(),
            cause: RemovalCause::Invalidated,
            value: Arc::new(widget("Cog", 15)),
            version: v0 + 2,
        })
    );

    // A full refresh reloads the two known keys.
    let calls_before = api.calls();
    let report = WidgetStore::refresh_all()
        .await
        .expect("refresh while running");
    assert_eq!(report.reloaded, 2);
    assert_eq!(report.entries, 2);
    assert_eq!(api.calls(), calls_before + 2);

    let stats = WidgetStore::stats();
    assert_eq!(stats.entries, 2);
    assert!(stats.hits >= 2, "{stats:?}");

    // The handle from `start` and the one from `worker()` reach the same instance.
    let handle = WidgetStore::worker().expect("running");
    handle.insert("w-5".to_string(), widget("Axle", 70));
    assert_eq!(
        WidgetStore::peek("w-5").as_deref(),
        Some(&widget("Axle", 70))
    );
    assert_eq!(worker.len(), 3);

    WidgetStore::shutdown().await.expect("shutdown");
    assert!(WidgetStore::worker().is_none());
    assert!(matches!(
        WidgetStore::fetch(&"w-1".to_string()).await,
        Err(FetchError::NotStarted)
    ));
    assert_eq!(WidgetStore::peek("w-1"), None);
}

#[cache_worker(bucket = "never_started")]
struct NeverStarted {
    api: ApiClient,
}
widget_worker!(NeverStarted);

#[tokio::test]
async fn before_start_reads_answer_not_started_and_nothing_panics() {
    let key = "w-1".to_string();
    assert!(matches!(
        NeverStarted::fetch(&key).await,
        Err(FetchError::NotStarted)
    ));
    assert_eq!(NeverStarted::get(&key).await, None);
    assert_eq!(NeverStarted::peek("w-1"), None);
    assert!(NeverStarted::worker().is_none());
    assert_eq!(NeverStarted::len(), 0);
    assert!(NeverStarted::keys().is_empty());
    assert!(matches!(
        NeverStarted::insert(key.clone(), widget("Refused", 0)),
        Err(Error::NotStarted { ref bucket }) if bucket == "never_started"
    ));
    assert_eq!(NeverStarted::peek("w-1"), None);
    assert_eq!(NeverStarted::invalidate("w-1"), None);
    assert_eq!(NeverStarted::stats().entries, 0);
    assert!(matches!(
        NeverStarted::refresh_all().await,
        Err(Error::NotStarted { ref bucket }) if bucket == "never_started"
    ));
    // A subscription waits for the start (`macro_settings.rs` follows one through it).
    let mut events = NeverStarted::subscribe();
    assert!(common::poll_once(std::pin::pin!(events.next())).is_pending());
    NeverStarted::shutdown()
        .await
        .expect("not running: nothing to do");
}

#[cache_worker(bucket = "twice")]
struct Twice {
    api: ApiClient,
}
widget_worker!(Twice);

#[tokio::test]
async fn starting_twice_is_an_error_and_starting_after_shutdown_works() {
    let api = ApiClient::new();
    Twice { api: api.clone() }
        .start()
        .await
        .expect("first start");
    assert!(Twice::get(&"w-1".to_string()).await.is_some());

    let second = Twice { api: api.clone() }.start().await;
    assert!(
        matches!(&second, Err(Error::AlreadyStarted { bucket }) if bucket == "twice"),
        "{second:?}"
    );
    // The refused start left the running instance alone.
    assert_eq!(
        Twice::peek("w-1").as_deref(),
        Some(&widget("Sprocket", 250))
    );

    Twice::shutdown().await.expect("shutdown");
    assert!(matches!(
        Twice::fetch(&"w-1".to_string()).await,
        Err(FetchError::NotStarted)
    ));

    // A new instance: no dump file, so it starts empty and loads again.
    Twice { api: api.clone() }
        .start()
        .await
        .expect("start after shutdown");
    assert_eq!(Twice::peek("w-1"), None);
    assert_eq!(
        Twice::fetch(&"w-2".to_string())
            .await
            .expect("w-2")
            .as_ref(),
        &widget("Gear", 990)
    );
    Twice::shutdown().await.expect("shutdown");
}

#[cache_worker(
    bucket = "every_key",
    refresh = "1h30m",
    load_timeout = "2s",
    concurrency = 4,
    schema = 7,
    dump_interval = "250ms",
    cache_enabled = false
)]
struct EveryKey {
    api: ApiClient,
}
widget_worker!(EveryKey);

#[tokio::test]
async fn the_attribute_settings_reach_the_running_worker() {
    let api = ApiClient::new();
    let worker = EveryKey { api: api.clone() }.start().await.expect("start");
    let settings = worker.settings();
    assert_eq!(settings.bucket, "every_key");
    assert_eq!(settings.file, None);
    assert_eq!(settings.refresh, Some(Duration::from_secs(90 * 60)));
    assert_eq!(settings.load_timeout, Duration::from_secs(2));
    assert_eq!(settings.concurrency, 4);
    assert_eq!(settings.schema, 7);
    assert_eq!(settings.dump_interval, Duration::from_millis(250));
    assert!(!settings.cache_enabled);

    // cache_enabled = false: every read loads, nothing is kept.
    for _ in 0..3 {
        assert!(EveryKey::get(&"w-1".to_string()).await.is_some());
    }
    assert_eq!(api.calls(), 3);
    assert_eq!(EveryKey::peek("w-1"), None);
    assert_eq!(EveryKey::len(), 0);
    EveryKey::shutdown().await.expect("shutdown");
}

#[cache_worker(bucket = "shared_type")]
struct SharedType {
    api: ApiClient,
}
widget_worker!(SharedType);

#[tokio::test]
async fn a_builder_instance_is_independent_of_the_process_wide_one() {
    let own = Worker::builder(SharedType {
        api: ApiClient::new(),
    })
    .bucket("shared_type_own")
    .start()
    .await
    .expect("builder start");
    own.insert("w-9".to_string(), widget("Own", 1));

    // The process-wide instance is not running, and does not see the builder's entries.
    assert!(SharedType::worker().is_none());
    assert_eq!(SharedType::peek("w-9"), None);

    SharedType {
        api: ApiClient::new(),
    }
    .start()
    .await
    .expect("process-wide start");
    SharedType::insert("w-8".to_string(), widget("Global", 2)).expect("started");
    assert_eq!(SharedType::peek("w-9"), None);
    assert_eq!(own.peek("w-8"), None);
    assert_eq!(own.peek("w-9").as_deref(), Some(&widget("Own", 1)));

    SharedType::shutdown().await.expect("shutdown");
    own.shutdown().await.expect("shutdown");
}
