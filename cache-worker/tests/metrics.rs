//! Feature `metrics` as a scraper sees it: a Prometheus recorder installed once for this test
//! binary, its rendering served by axum on loopback and scraped over HTTP with reqwest, every
//! series compared with what the test made the worker do and with `Worker::stats`.

mod common;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::LazyLock;
use std::time::Duration;

use cache_worker::{FetchError, Stats, Worker};
use common::{Reply, Upstream, started_with, until};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::task::JoinHandle;

/// The process's one recorder: installed by the first test that needs it.
static RECORDER: LazyLock<PrometheusHandle> = LazyLock::new(|| {
    PrometheusBuilder::new()
        .install_recorder()
        .expect("the only recorder installed in this test binary")
});

/// How long the periodic publisher may take to show a value: a bound against hanging (it
/// publishes every second), not a timing claim.
const PUBLISHED_WITHIN: Duration = Duration::from_secs(5);

/// Each counter of `Stats`, by the series name the README lists for it.
fn counters(s: &Stats) -> Vec<(&'static str, u64)> {
    vec![
        ("cache_worker_hits_total", s.hits),
        ("cache_worker_misses_total", s.misses),
        ("cache_worker_loads_total", s.loads),
        ("cache_worker_load_errors_total", s.load_errors),
        ("cache_worker_panics_total", s.panics),
        ("cache_worker_timeouts_total", s.timeouts),
        ("cache_worker_not_found_total", s.not_found),
        ("cache_worker_coalesced_total", s.coalesced),
        ("cache_worker_refresh_cycles_total", s.refresh_cycles),
        ("cache_worker_bulk_loads_total", s.bulk_loads),
        ("cache_worker_inserted_total", s.inserted),
        ("cache_worker_updated_total", s.updated),
        ("cache_worker_unchanged_total", s.unchanged),
        ("cache_worker_removed_total", s.removed),
        ("cache_worker_expired_total", s.expired),
        ("cache_worker_refresh_failures_total", s.refresh_failures),
        (
            "cache_worker_refresher_restarts_total",
            s.refresher_restarts,
        ),
        ("cache_worker_dump_writes_total", s.dump_writes),
        ("cache_worker_dump_failures_total", s.dump_failures),
        ("cache_worker_restored_total", s.restored),
        ("cache_worker_store_writes_total", s.store_writes),
        ("cache_worker_store_failures_total", s.store_failures),
        ("cache_worker_store_undecodable_total", s.store_undecodable),
        ("cache_worker_evicted_total", s.evicted),
        ("cache_worker_not_found_hits_total", s.not_found_hits),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrape_shows_every_counter_and_what_each_loader_call_took() {
    let endpoint = Endpoint::start().await;
    let dir = tempfile::tempdir().expect("a temp dir");
    let file = dir.path().join("prices.dump");
    let up = Upstream::with_values(&[("a", 1), ("b", 2), ("c", 3)]);
    up.set("gone", Reply::Missing);
    up.set("broken", Reply::Fail("upstream down"));
    up.set("boom", Reply::Panic("a bug in the loader"));
    up.set("slow", Reply::Hang);
    let bucket = "metrics_prices";
    let worker = started_with(&up, bucket, |b| {
        b.file(&file)
            .load_timeout(Duration::from_millis(200))
            // The writer dumps once after the first change, then not for an hour: every other
            // dump is the test's own.
            .dump_interval(Duration::from_secs(3600))
    })
    .await;

    // Three loads that find a value, then one of each other outcome: 7 misses, 7 loads.
    for key in ["a", "b", "c"] {
        worker.fetch(&key.to_owned()).await.expect("a value");
    }
    until(PUBLISHED_WITHIN, "the writer's first dump", || {
        (worker.stats().dump_writes == 1).then_some(())
    })
    .await;
    let failed = async |key: &str| worker.fetch(&key.to_owned()).await.expect_err(key);
    assert!(matches!(failed("gone").await, FetchError::NotFound));
    assert!(matches!(failed("broken").await, FetchError::Load(_)));
    assert!(matches!(failed("boom").await, FetchError::Panicked(_)));
    assert!(matches!(failed("slow").await, FetchError::Timeout(_)));
    // 30 hits and 5 misses, none of which reaches the recorder as it happens.
    for _ in 0..10 {
        for key in ["a", "b", "c"] {
            assert!(worker.peek(key).is_some());
        }
    }
    for _ in 0..5 {
        assert!(worker.peek("nope").is_none());
    }
    // One refresh cycle: three reloads, one of them a change.
    up.set_value("a", 10);
    let report = worker.refresh_all().await.expect("a refresh cycle");
    assert_eq!((report.reloaded, report.updated), (3, 1), "{report:?}");
    worker.dump().await.expect("a dump");

    let stats = worker.stats();
    // `Stats` is non-exhaustive: built from its default, field by field.
    let mut expected = Stats::default();
    (expected.entries, expected.hits, expected.misses) = (3, 30, 3 + 4 + 5);
    (expected.loads, expected.load_errors, expected.panics) = (3 + 4 + 3, 1, 1);
    (
        expected.timeouts,
        expected.not_found,
        expected.refresh_cycles,
    ) = (1, 1, 1);
    (expected.inserted, expected.updated, expected.unchanged) = (3, 1, 2);
    expected.dump_writes = 2;
    expected.dump_write_time = stats.dump_write_time;
    expected.last_dump_duration = stats.last_dump_duration;
    assert_eq!(stats, expected, "the worker counted what the test did");

    // The periodic publisher: every counter of `Stats` appears, equal to it.
    let scrape = endpoint
        .scrape_until("every counter equals Worker::stats", |scrape| {
            scrape.differences(bucket, &counters(&stats))
        })
        .await;
    let labels = [("bucket", bucket)];
    assert_eq!(scrape.value("cache_worker_entries", &labels), Some(3.0));
    assert_eq!(
        scrape.value("cache_worker_last_dump_duration_seconds", &labels),
        Some(stats.last_dump_duration.as_secs_f64())
    );
    let size = std::fs::metadata(&file).expect("the dump file").len();
    assert_eq!(
        scrape.value("cache_worker_dump_bytes", &labels),
        Some(size as f64),
        "the size of the dump file on disk"
    );

    // One latency sample per loader call, by call and outcome; none for the `load_all` of a
    // worker that has no bulk load.
    let loads = |outcome: &str| {
        let labels = [("bucket", bucket), ("call", "load"), ("outcome", outcome)];
        scrape.value("cache_worker_load_duration_seconds_count", &labels)
    };
    let by_outcome = ["ok", "not_found", "error", "panic", "timeout"].map(loads);
    assert_eq!(
        by_outcome,
        [Some(6.0), Some(1.0), Some(1.0), Some(1.0), Some(1.0)],
        "ok, not_found, error, panic, timeout"
    );
    assert_eq!(
        by_outcome.iter().flatten().sum::<f64>(),
        stats.loads as f64,
        "as many samples as Stats::loads"
    );
    assert!(
        scrape
            .series
            .iter()
            .all(|s| !(s.label("bucket") == Some(bucket) && s.label("call") == Some("load_all"))),
        "no load_all sample: this worker has no bulk load"
    );
    let timed_out = [("bucket", bucket), ("call", "load"), ("outcome", "timeout")];
    let waited = scrape
        .value("cache_worker_load_duration_seconds_sum", &timed_out)
        .expect("the timed-out load's duration");
    assert!(
        waited >= 0.2,
        "the timed-out load ran to the timeout: {waited} s"
    );
    assert_eq!(
        scrape.value("cache_worker_refresh_duration_seconds_count", &labels),
        Some(stats.refresh_cycles as f64)
    );
    assert_eq!(
        scrape.value("cache_worker_dump_duration_seconds_count", &labels),
        Some(stats.dump_writes as f64)
    );
    let descriptions = scrape.text.lines().filter(|l| l.starts_with("# HELP "));
    assert!(
        descriptions
            .clone()
            .any(|l| l.starts_with("# HELP cache_worker_hits_total Reads")),
        "counters are described: {:?}",
        descriptions.collect::<Vec<_>>()
    );

    // On demand: exact at once, without waiting for the next second.
    for _ in 0..5 {
        worker.peek("a");
    }
    worker.publish_metrics();
    let scrape = endpoint.scrape().await;
    assert_eq!(scrape.value("cache_worker_hits_total", &labels), Some(35.0));

    // The shutdown publishes once more, after its final dump.
    worker.shutdown().await.expect("shutdown");
    let stats = worker.stats();
    assert_eq!(stats.dump_writes, 3, "the final dump");
    let scrape = endpoint.scrape().await;
    assert_eq!(
        scrape.differences(bucket, &counters(&stats)),
        Vec::<String>::new()
    );
    let size = std::fs::metadata(&file).expect("the final dump file").len();
    assert_eq!(
        scrape.value("cache_worker_dump_bytes", &labels),
        Some(size as f64)
    );
    assert_eq!(
        scrape.value("cache_worker_dump_duration_seconds_count", &labels),
        Some(3.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_are_told_apart_by_their_bucket_label() {
    let endpoint = Endpoint::start().await;
    let up = Upstream::with_values(&[("x", 1)]);
    let first: Worker<Upstream> = started_with(&up, "metrics_first", |b| b).await;
    let second: Worker<Upstream> = started_with(&up, "metrics_second", |b| b).await;
    first.fetch(&"x".to_owned()).await.expect("a value");
    for _ in 0..4 {
        first.peek("x");
    }
    for _ in 0..2 {
        second.peek("x");
    }
    let scrape = endpoint
        .scrape_until("both buckets' counters", |scrape| {
            let mut differences = scrape.differences("metrics_first", &counters(&first.stats()));
            differences.extend(scrape.differences("metrics_second", &counters(&second.stats())));
            differences
        })
        .await;
    let hits = |bucket| scrape.value("cache_worker_hits_total", &[("bucket", bucket)]);
    assert_eq!(hits("metrics_first"), Some(4.0));
    assert_eq!(hits("metrics_second"), Some(0.0));
    let misses = |bucket| scrape.value("cache_worker_misses_total", &[("bucket", bucket)]);
    assert_eq!(misses("metrics_first"), Some(1.0));
    assert_eq!(misses("metrics_second"), Some(2.0));
    first.shutdown().await.expect("shutdown");
    second.shutdown().await.expect("shutdown");
}

/// `GET /metrics` of a server on `127.0.0.1` rendering [`RECORDER`], served until dropped.
struct Endpoint {
    url: String,
    client: reqwest::Client,
    task: JoinHandle<()>,
}

impl Endpoint {
    async fn start() -> Endpoint {
        let handle = RECORDER.clone();
        let app = axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || async move { handle.render() }),
        );
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind a loopback port");
        let url = format!(
            "http://{}/metrics",
            listener.local_addr().expect("its address")
        );
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("serve");
        });
        // Only needed when another feature built reqwest with rustls but no provider; a second
        // install (by another test) is refused, which is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::new();
        Endpoint { url, client, task }
    }

    async fn scrape(&self) -> Scrape {
        let response = self
            .client
            .get(&self.url)
            .send()
            .await
            .expect("GET /metrics");
        assert!(response.status().is_success(), "{}", response.status());
        Scrape::parse(response.text().await.expect("a text body"))
    }

    /// Scrapes until `differences` finds none, for at most [`PUBLISHED_WITHIN`]; fails with
    /// the last differences.
    async fn scrape_until(
        &self,
        what: &str,
        differences: impl Fn(&Scrape) -> Vec<String>,
    ) -> Scrape {
        let deadline = tokio::time::Instant::now() + PUBLISHED_WITHIN;
        loop {
            let scrape = self.scrape().await;
            let left = differences(&scrape);
            if left.is_empty() {
                return scrape;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!("{what}: not published within {PUBLISHED_WITHIN:?}; still {left:#?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One sample line of the Prometheus text format.
#[derive(Debug)]
struct Series {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

impl Series {
    fn label(&self, key: &str) -> Option<&str> {
        self.labels.get(key).map(String::as_str)
    }
}

/// A scrape: its text and its samples.
struct Scrape {
    text: String,
    series: Vec<Series>,
}

impl Scrape {
    /// Reads the text format: `name{key="value",...} value` or `name value` per sample line.
    /// The label values here are bucket names and outcomes, which need no unescaping.
    fn parse(text: String) -> Scrape {
        let series = text
            .lines()
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .map(|line| {
                let (head, value) = line.rsplit_once(' ').expect("a sample: series and value");
                let value = value
                    .parse()
                    .unwrap_or_else(|_| panic!("a number in {line:?}"));
                let (name, labels) = match head.split_once('{') {
                    None => (head, BTreeMap::new()),
                    Some((name, labels)) => {
                        let labels = labels.strip_suffix('}').expect("labels end with }");
                        let labels = labels
                            .split(',')
                            .filter(|pair| !pair.is_empty())
                            .map(|pair| {
                                let (key, value) = pair.split_once('=').expect("key=\"value\"");
                                (key.to_owned(), value.trim_matches('"').to_owned())
                            })
                            .collect();
                        (name, labels)
                    }
                };
                Series {
                    name: name.to_owned(),
                    labels,
                    value,
                }
            })
            .collect();
        Scrape { text, series }
    }

    /// The value of the sample named `name` with exactly these labels.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let wanted: BTreeMap<String, String> = labels
            .iter()
            .map(|&(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        self.series
            .iter()
            .find(|s| s.name == name && s.labels == wanted)
            .map(|s| s.value)
    }

    /// Where the bucket's counters differ from `expected`, one line each.
    fn differences(&self, bucket: &str, expected: &[(&str, u64)]) -> Vec<String> {
        expected
            .iter()
            .filter_map(|&(name, want)| {
                let got = self.value(name, &[("bucket", bucket)]);
                (got != Some(want as f64))
                    .then(|| format!("{name}{{bucket={bucket:?}}}: scraped {got:?}, stats {want}"))
            })
            .collect()
    }
}
