//! The Vista demo's `/metrics` as a scraper sees it: the recorder the demo installs
//! (`prometheus::install`), the demo's router (the live page with `prometheus::router` merged
//! in) on loopback, the three workers over the fake Vista server doing what the demo does
//! (a cold start, the first bulk loads, the listing of the next sessions, the final dumps), and
//! a scrape over HTTP whose series are compared with each worker's `stats()` and dump file.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use cache_worker::vista::jiff::Timestamp;
use cache_worker::vista::testing::FakeVista;
use cache_worker::vista::{Cinemas, Films, Sessions, VistaClient};
use cache_worker::{CacheWorker, Stats, Worker};
use cache_worker_examples::{live, prometheus};

/// How long the workers' publishers (every second) may take to show a value: a bound against
/// hanging, not a timing claim.
const PUBLISHED_WITHIN: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_serves_the_three_buckets_series_at_metrics() {
    // As the demo does: the recorder first, then the workers, cold, with their dumps in a folder.
    let metrics = prometheus::install().expect("the only recorder of this test binary");
    let fake = FakeVista::builder()
        .start()
        .await
        .expect("the fake Vista server starts");
    let client = VistaClient::new(fake.base_url(), fake.token())
        .expect("a client of the fake")
        .with_time_zone(fake.time_zone().clone());
    let dir = tempfile::tempdir().expect("a dump folder");
    let cinemas = Cinemas::new(client.clone())
        .dump_dir(dir.path())
        .start()
        .await
        .expect("cinemas");
    let films = Films::new(client.clone())
        .dump_dir(dir.path())
        .start()
        .await
        .expect("films");
    let sessions = Sessions::new(client)
        .dump_dir(dir.path())
        .start()
        .await
        .expect("sessions");
    for report in [
        cinemas.ready().await,
        films.ready().await,
        sessions.ready().await,
    ] {
        let report = report.expect("the first load");
        assert!(report.bulk && report.failed == 0, "{report:?}");
    }

    // The demo's listing: every session looked up, then the film and cinema of the next five.
    let tz = sessions.state().client().time_zone().clone();
    let now = Timestamp::now();
    let ids = sessions.keys();
    let listed = ids.len() as u64;
    let mut upcoming: Vec<_> = ids
        .iter()
        .filter_map(|id| sessions.peek(id))
        .filter(|s| s.starts_at(&tz).is_ok_and(|t| t >= now))
        .collect();
    upcoming.sort_by(|a, b| (a.showtime, &a.id).cmp(&(b.showtime, &b.id)));
    assert!(upcoming.len() >= 5, "{} upcoming sessions", upcoming.len());
    for s in upcoming.iter().take(5) {
        assert!(films.peek(&s.film_id).is_some(), "the film of {}", s.id);
        assert!(
            cinemas.peek(&s.cinema_id).is_some(),
            "the cinema of {}",
            s.id
        );
    }

    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .expect("a port for the demo's router");
    let base = format!("http://{}", listener.local_addr().expect("its address"));
    let app = live::app(sessions.clone(), cinemas.clone(), films.clone())
        .merge(prometheus::router(metrics));
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    // Only needed because the `vista` feature builds reqwest with rustls but no provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    let page = http.get(format!("{base}/")).send().await.expect("GET /");
    assert!(page.status().is_success(), "the live page is still served");

    // While the demo runs: the publishers show each bucket's first load and the listing's hits.
    let scrape = async || {
        let response = http
            .get(format!("{base}/metrics"))
            .send()
            .await
            .expect("GET /metrics");
        assert!(response.status().is_success(), "{}", response.status());
        let kind = response.headers()[reqwest::header::CONTENT_TYPE].clone();
        assert!(
            kind.to_str().is_ok_and(|k| k.starts_with("text/plain")),
            "{kind:?}"
        );
        Scrape::parse(&response.text().await.expect("a text body"))
    };
    let deadline = tokio::time::Instant::now() + PUBLISHED_WITHIN;
    loop {
        let scrape = scrape().await;
        let mut left = Vec::new();
        left.extend(scrape.differences("cinemas", &cinemas, &[("hits", 5)]));
        left.extend(scrape.differences("films", &films, &[("hits", 5)]));
        left.extend(scrape.differences("sessions", &sessions, &[("hits", listed)]));
        if left.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not published within {PUBLISHED_WITHIN:?}: {left:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The demo's end: the final dumps, published once more as each worker stops.
    let (c, f, s) = tokio::join!(cinemas.shutdown(), films.shutdown(), sessions.shutdown());
    c.and(f).and(s).expect("the final dumps");
    let scrape = scrape().await;
    assert_eq!(
        scrape.differences("cinemas", &cinemas, &[("hits", 5)]),
        Vec::<String>::new()
    );
    assert_eq!(
        scrape.differences("films", &films, &[("hits", 5)]),
        Vec::<String>::new()
    );
    assert_eq!(
        scrape.differences("sessions", &sessions, &[("hits", listed)]),
        Vec::<String>::new()
    );
    scrape.assert_durations_and_dump("cinemas", &cinemas.stats(), dir.path());
    scrape.assert_durations_and_dump("films", &films.stats(), dir.path());
    scrape.assert_durations_and_dump("sessions", &sessions.stats(), dir.path());
    server.abort();
}

/// One sample line of the Prometheus text format.
struct Series {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

struct Scrape(Vec<Series>);

impl Scrape {
    /// Reads the sample lines, `name{key="value",...} value`; the label values here (bucket
    /// names, outcomes, bucket bounds) need no unescaping.
    fn parse(text: &str) -> Scrape {
        let series = text
            .lines()
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .map(|line| {
                let (head, value) = line.rsplit_once(' ').expect("a series and a value");
                let value = value
                    .parse()
                    .unwrap_or_else(|_| panic!("a number in {line:?}"));
                let (name, labels) = head.split_once('{').unwrap_or((head, "}"));
                let labels = labels
                    .strip_suffix('}')
                    .expect("labels end with }")
                    .split(',')
                    .filter(|pair| !pair.is_empty())
                    .map(|pair| {
                        let (key, value) = pair.split_once('=').expect("key=\"value\"");
                        (key.to_owned(), value.trim_matches('"').to_owned())
                    })
                    .collect();
                Series {
                    name: name.to_owned(),
                    labels,
                    value,
                }
            })
            .collect();
        Scrape(series)
    }

    /// The samples named `name` of `bucket` whose other labels include `labels`.
    fn values<'a>(
        &'a self,
        name: &'a str,
        bucket: &'a str,
        labels: &'a [(&str, &str)],
    ) -> impl Iterator<Item = f64> + 'a {
        self.0
            .iter()
            .filter(move |s| {
                s.name == name
                    && s.labels.get("bucket").is_some_and(|b| b == bucket)
                    && labels
                        .iter()
                        .all(|&(k, v)| s.labels.get(k).is_some_and(|l| l == v))
            })
            .map(|s| s.value)
    }

    fn value(&self, name: &str, bucket: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut values = self.values(name, bucket, labels);
        let value = values.next();
        assert!(
            values.next().is_none(),
            "one {name} of {bucket} with {labels:?}"
        );
        value
    }

    /// Where the bucket's published counters and entry count differ from `worker.stats()`
    /// and from the `known` counts of what the test did (by `Stats` field), one line each.
    fn differences<W: CacheWorker>(
        &self,
        bucket: &str,
        worker: &Worker<W>,
        known: &[(&str, u64)],
    ) -> Vec<String> {
        let stats = worker.stats();
        let mut left = Vec::new();
        for (field, count) in known {
            let counted = counters(&stats).into_iter().find(|(f, _)| f == field);
            if counted.map(|(_, n)| n) != Some(*count) {
                left.push(format!(
                    "{bucket}: Stats::{field} is {counted:?}, the test made {count}"
                ));
            }
        }
        let gauge = ("entries", stats.entries as u64);
        for (field, want) in counters(&stats).into_iter().chain([gauge]) {
            let name = if field == "entries" {
                "cache_worker_entries".to_owned()
            } else {
                format!("cache_worker_{field}_total")
            };
            let got = self.value(&name, bucket, &[]);
            if got != Some(want as f64) {
                left.push(format!(
                    "{name}{{bucket={bucket:?}}}: scraped {got:?}, stats {want}"
                ));
            }
        }
        left
    }

    /// One load-duration sample per loader call (each first load a `load_all` that succeeded),
    /// one refresh-duration sample per cycle, one dump-duration sample per dump, rendered as
    /// histograms; the dump size is the file's.
    fn assert_durations_and_dump(&self, bucket: &str, stats: &Stats, dir: &Path) {
        let loads = "cache_worker_load_duration_seconds_count";
        let bulk = [("call", "load_all"), ("outcome", "ok")];
        assert_eq!(
            self.value(loads, bucket, &bulk),
            Some(stats.bulk_loads as f64),
            "{bucket}"
        );
        assert!(stats.bulk_loads >= 1, "{bucket}: {stats:?}");
        let samples: f64 = self.values(loads, bucket, &[]).sum();
        assert_eq!(
            samples, stats.loads as f64,
            "{bucket}: a sample per loader call"
        );
        let every = [("le", "+Inf")];
        let buckets = "cache_worker_load_duration_seconds_bucket";
        assert_eq!(
            self.values(buckets, bucket, &every).sum::<f64>(),
            samples,
            "{bucket}: rendered as a histogram"
        );
        assert_eq!(
            self.value("cache_worker_refresh_duration_seconds_count", bucket, &[]),
            Some(stats.refresh_cycles as f64),
            "{bucket}"
        );
        assert_eq!(
            self.value("cache_worker_dump_duration_seconds_count", bucket, &[]),
            Some(stats.dump_writes as f64),
            "{bucket}"
        );
        let file = dir.join(format!("{bucket}.dump"));
        let size = std::fs::metadata(&file).expect("the dump file").len();
        assert_eq!(
            self.value("cache_worker_dump_bytes", bucket, &[]),
            Some(size as f64),
            "{}",
            file.display()
        );
    }
}

/// Each counter of `Stats` by its field name, which names its series
/// (`cache_worker_<field>_total`).
fn counters(s: &Stats) -> Vec<(&'static str, u64)> {
    vec![
        ("hits", s.hits),
        ("misses", s.misses),
        ("loads", s.loads),
        ("load_errors", s.load_errors),
        ("panics", s.panics),
        ("timeouts", s.timeouts),
        ("not_found", s.not_found),
        ("coalesced", s.coalesced),
        ("refresh_cycles", s.refresh_cycles),
        ("bulk_loads", s.bulk_loads),
        ("inserted", s.inserted),
        ("updated", s.updated),
        ("unchanged", s.unchanged),
        ("removed", s.removed),
        ("expired", s.expired),
        ("refresh_failures", s.refresh_failures),
        ("refresher_restarts", s.refresher_restarts),
        ("dump_writes", s.dump_writes),
        ("dump_failures", s.dump_failures),
        ("restored", s.restored),
        ("store_writes", s.store_writes),
        ("store_failures", s.store_failures),
        ("store_undecodable", s.store_undecodable),
        ("evicted", s.evicted),
        ("not_found_hits", s.not_found_hits),
    ]
}
