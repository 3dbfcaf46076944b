//! The live page of the Vista demo in a real browser: headless Chromium, driven over WebDriver
//! (`chromedriver`, started here on a free port) with `fantoccini`.
//!
//! The fake Vista server is not in live mode: the test makes every change upstream itself and
//! refreshes the sessions worker, so each change reaches the page through the SSE stream. The
//! page is served through a TCP proxy of the test's own, which drops every open connection on
//! demand (the server side dropping the stream) and then either resets new connections (the
//! browser's EventSource retries by itself, with `Last-Event-ID`) or answers them with a 503
//! (EventSource gives up, and the page must retry by itself, with `?since=`).
//!
//! Needs Debian's `chromium` and `chromium-driver`; without them the test fails and says how to
//! install them (`scripts/test` does).

use std::net::{Ipv4Addr, SocketAddr};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use cache_worker::Worker;
use cache_worker::vista::jiff::tz::TimeZone;
use cache_worker::vista::jiff::{Timestamp, ToSpan};
use cache_worker::vista::testing::FakeVista;
use cache_worker::vista::{Cinemas, Films, Session, Sessions, VistaClient};
use cache_worker_examples::live;
use fantoccini::{Client, ClientBuilder};
use futures_util::FutureExt;
use hyper_util::client::legacy::connect::HttpConnector;
use serde::Deserialize;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tokio::sync::watch;

/// How long the page may take to show a change: a bound against hanging, not a timing claim
/// (the browser retries a dropped stream after 3 s, the page its own after 1 to 4 s).
const LIMIT: Duration = Duration::from_secs(15);

/// The flags that run this machine's Chromium headless and quiet (plus the profile folder).
const CHROMIUM_FLAGS: [&str; 9] = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1000,860",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_page_follows_the_sessions_and_resumes_after_a_drop() {
    // First, before anything else is started: the browser, or a failure that says what to install.
    let browser = Browser::start().await;

    // Cinemas in Berlin, a browser in UTC (the zone chromedriver is started in): the page must
    // read the showtimes as Berlin wall-clock times.
    let berlin = TimeZone::get("Europe/Berlin").expect("tzdata has Europe/Berlin");
    let fake = FakeVista::builder()
        .time_zone(berlin.clone())
        .start()
        .await
        .expect("the fake Vista server starts");
    // A show that began two minutes ago: the worker holds it (until 20 minutes after its
    // start), the page must not show it.
    let begun = fake.session_ids()[10].clone();
    let two_minutes_ago = Timestamp::now()
        .to_zoned(berlin.clone())
        .checked_sub(2.minutes())
        .expect("now minus two minutes")
        .datetime();
    assert!(fake.set_showtime(&begun, two_minutes_ago));

    let client = VistaClient::new(fake.base_url(), fake.token())
        .expect("a client of the fake")
        .with_time_zone(berlin);
    let workers = Workers {
        sessions: Sessions::new(client.clone())
            .start()
            .await
            .expect("sessions"),
        cinemas: Cinemas::new(client.clone()).start().await.expect("cinemas"),
        films: Films::new(client).start().await.expect("films"),
    };
    for report in [
        workers.sessions.refresh_all().await,
        workers.cinemas.refresh_all().await,
        workers.films.refresh_all().await,
    ] {
        let report = report.expect("a refresh cycle");
        assert!(report.bulk && report.failed == 0, "{report:?}");
    }
    assert!(
        workers.sessions.peek(&begun).is_some(),
        "the begun show is still held"
    );

    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .expect("a port for the app");
    let app_addr = listener.local_addr().expect("the app's address");
    let app = live::app(
        workers.sessions.clone(),
        workers.cinemas.clone(),
        workers.films.clone(),
    );
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let proxy = Proxy::start(app_addr).await;

    // The browser is closed whatever happens in the scenario.
    let outcome = AssertUnwindSafe(scenario(
        browser.client.clone(),
        proxy,
        fake,
        workers,
        begun,
    ))
    .catch_unwind()
    .await;
    browser.close().await;
    server.abort();
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// The three workers the page shows.
struct Workers {
    sessions: Worker<Sessions>,
    cinemas: Worker<Cinemas>,
    films: Worker<Films>,
}

async fn scenario(page: Client, proxy: Proxy, fake: FakeVista, workers: Workers, begun: String) {
    let sessions = &workers.sessions;
    page.goto(&format!("http://{}/", proxy.addr))
        .await
        .expect("the page opens");

    // (a) The upcoming sessions, in order, each with the film, cinema and seats the workers hold.
    let shown = eventually(
        "the page shows the workers' upcoming sessions",
        async || {
            let state = PageState::read(&page).await;
            let expected = expected_rows(&workers);
            match first_difference(&state.rows, &expected) {
                None if state.status == "live" => Ok(state),
                None => Err(format!("status {:?}", state.status)),
                Some(difference) => Err(difference),
            }
        },
    )
    .await;
    assert!(shown.rows.len() > 300, "{} rows", shown.rows.len());
    assert!(
        shown.rows.iter().all(|row| row.id != begun),
        "a begun show is not listed"
    );
    assert!(
        shown.rows.iter().all(|row| !row.flash),
        "nothing flashes before a change"
    );
    page.execute("window.testMarker = 'loaded once'", vec![])
        .await
        .expect("a marker in the page");
    let origin = shown.origin;

    // (b) A seat change upstream shows in its row, flashing, without a reload.
    let first = shown.rows[0].id.clone();
    let seats = change_seats(&fake, sessions, &first).await;
    let state = eventually("the changed seats show", async || {
        let state = PageState::read(&page).await;
        let row = state.row(&first);
        match row.map(|row| row.seats.as_str()) {
            Some(text) if text == seats.to_string() => Ok(state),
            other => Err(format!("seats of {first}: {other:?}")),
        }
    })
    .await;
    let flashing: Vec<&str> = state
        .rows
        .iter()
        .filter(|row| row.flash)
        .map(|row| row.id.as_str())
        .collect();
    assert_eq!(flashing, [first.as_str()], "only the changed seats flash");
    state.assert_same_page(origin);
    eventually("the page is at the worker's version", async || {
        PageState::read(&page).await.at_version(sessions)
    })
    .await;

    // (c) The server side drops the streams; while the page is away a session's seats change
    // and another is cancelled. The browser reconnects by itself and the page catches up.
    proxy.set(Mode::Reset);
    eventually("the page sees the drop", async || {
        PageState::read(&page).await.status_is("reconnecting")
    })
    .await;
    let version = sessions.version();
    let (second, cancelled) = (shown.rows[1].id.clone(), shown.rows[2].id.clone());
    assert!(fake.remove_session(&cancelled));
    let seats = change_seats(&fake, sessions, &second).await;
    assert!(
        sessions.peek(&cancelled).is_none(),
        "the refresh removed the cancelled show"
    );
    proxy.set(Mode::Up);
    let state = eventually("the page catches up after the drop", async || {
        let state = PageState::read(&page).await;
        let seen = state.row(&second).map(|row| row.seats.clone());
        if seen != Some(seats.to_string()) {
            return Err(format!("seats of {second}: {seen:?}"));
        }
        if state.row(&cancelled).is_some() {
            return Err(format!("{cancelled} is still listed"));
        }
        state.status_is("live")?;
        state.at_version(sessions)?;
        Ok(state)
    })
    .await;
    state.assert_same_page(origin);
    assert_eq!(
        first_difference(&state.rows, &expected_rows(&workers)),
        None
    );
    let resumed = proxy.requests_to("/api/sessions/events");
    assert!(
        resumed
            .iter()
            .any(|head| head.contains(&format!("last-event-id: {version}"))),
        "the browser resumed the stream from version {version}: {resumed:#?}"
    );

    // (d) The streams drop and new ones get a 503: EventSource gives up, the page retries by
    // itself from its version.
    let version = sessions.version();
    proxy.set(Mode::Unavailable);
    eventually("the page's stream is refused", async || {
        match proxy.refused_to("/api/sessions/events") {
            0 => Err("no refused request yet".to_owned()),
            _ => PageState::read(&page).await.status_is("reconnecting"),
        }
    })
    .await;
    let fourth = shown.rows[3].id.clone();
    let seats = change_seats(&fake, sessions, &fourth).await;
    proxy.set(Mode::Up);
    let state = eventually("the page catches up after refusals", async || {
        let state = PageState::read(&page).await;
        let seen = state.row(&fourth).map(|row| row.seats.clone());
        if seen != Some(seats.to_string()) {
            return Err(format!("seats of {fourth}: {seen:?}"));
        }
        state.status_is("live")?;
        state.at_version(sessions)?;
        Ok(state)
    })
    .await;
    state.assert_same_page(origin);
    let retried = proxy.requests_to(&format!("/api/sessions/events?since={version}"));
    assert!(
        !retried.is_empty(),
        "the page retried from version {version}"
    );

    let png = page.screenshot().await.expect("a screenshot");
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("live-page.png");
    std::fs::write(&path, &png).expect("the screenshot is saved");
    std::fs::copy(&path, "/tmp/live-page.png").expect("the screenshot is copied to /tmp");
    println!(
        "screenshot: {} (copied to /tmp/live-page.png)",
        path.display()
    );

    // (e) A show moved to start in five seconds is listed, then leaves the table once its
    // showtime has passed, with no change to tell the page so.
    let soon = shown.rows[4].id.clone();
    let in_five_seconds = Timestamp::now()
        .to_zoned(sessions.state().client().time_zone().clone())
        .checked_add(5.seconds())
        .expect("now plus five seconds")
        .datetime();
    assert!(fake.set_showtime(&soon, in_five_seconds));
    sessions.refresh_all().await.expect("a refresh cycle");
    let starts = sessions
        .peek(&soon)
        .expect("the moved show is held")
        .showtime;
    assert_eq!(starts, in_five_seconds);
    eventually("the moved show is listed first", async || {
        let state = PageState::read(&page).await;
        match state.rows.first() {
            Some(row) if row.id == soon => Ok(()),
            row => Err(format!("first row {row:?}")),
        }
    })
    .await;
    let state = eventually("the show leaves the table once it has begun", async || {
        let state = PageState::read(&page).await;
        match state.row(&soon) {
            Some(row) => Err(format!("{row:?} still listed")),
            None => Ok(state),
        }
    })
    .await;
    assert!(
        Timestamp::now()
            >= sessions
                .peek(&soon)
                .expect("still held")
                .starts_at(sessions.state().client().time_zone())
                .expect("a start"),
        "not before its showtime"
    );
    assert_eq!(
        first_difference(&state.rows, &expected_rows(&workers)),
        None
    );
    state.assert_same_page(origin);
}

/// Sets new free seats for session `id` upstream, refreshes the sessions and checks the worker
/// has them; gives the new count.
async fn change_seats(fake: &FakeVista, sessions: &Worker<Sessions>, id: &str) -> u32 {
    let old = sessions
        .peek(id)
        .expect("the session is held")
        .seats_available;
    let new = if old >= 7 { old - 7 } else { old + 7 };
    assert!(fake.set_seats(id, new));
    sessions.refresh_all().await.expect("a refresh cycle");
    assert_eq!(sessions.peek(id).map(|s| s.seats_available), Some(new));
    new
}

/// One row of the table as the page shows it.
#[derive(Clone, Debug, Deserialize, PartialEq)]
struct Row {
    id: String,
    time: String,
    film: String,
    cinema: String,
    seats: String,
    #[serde(default)]
    flash: bool,
}

/// What a test reads from the page.
#[derive(Debug, Deserialize)]
struct PageState {
    rows: Vec<Row>,
    status: String,
    version: String,
    /// The marker set after the first load: gone if the page was reloaded.
    marker: Option<String>,
    /// `performance.timeOrigin`: the start of this document's navigation.
    origin: f64,
}

const READ_PAGE: &str = r##"
    const text = (tr, selector) => tr.querySelector(selector).textContent;
    const rows = Array.from(document.querySelectorAll("#sessions tr[data-session]"), (tr) => ({
        id: tr.dataset.session,
        time: `${text(tr, ".day")} ${text(tr, ".clock")}`,
        film: text(tr, ".film .title"),
        cinema: text(tr, ".cinema .name"),
        seats: text(tr, ".seats"),
        flash: tr.querySelector(".seats").classList.contains("flash"),
    }));
    return {
        rows,
        status: document.getElementById("status").textContent,
        version: document.getElementById("sessions").dataset.version,
        marker: window.testMarker ?? null,
        origin: performance.timeOrigin,
    };
"##;

impl PageState {
    async fn read(page: &Client) -> PageState {
        let value = page
            .execute(READ_PAGE, vec![])
            .await
            .expect("the page answers a script");
        serde_json::from_value(value).expect("the script's answer has the expected shape")
    }

    fn row(&self, id: &str) -> Option<&Row> {
        self.rows.iter().find(|row| row.id == id)
    }

    fn status_is(&self, status: &str) -> Result<(), String> {
        if self.status == status {
            Ok(())
        } else {
            Err(format!("status {:?}", self.status))
        }
    }

    fn at_version(&self, sessions: &Worker<Sessions>) -> Result<(), String> {
        let version = sessions.version().to_string();
        if self.version == version {
            Ok(())
        } else {
            Err(format!(
                "page at version {:?}, worker at {version}",
                self.version
            ))
        }
    }

    /// The document is the one first loaded: no reload, no navigation.
    fn assert_same_page(&self, origin: f64) {
        assert_eq!(
            self.marker.as_deref(),
            Some("loaded once"),
            "the page was reloaded"
        );
        assert!(
            (self.origin - origin).abs() < f64::EPSILON,
            "the page navigated"
        );
    }
}

/// The rows the page should show now: the upcoming sessions the worker holds, by showtime.
fn expected_rows(workers: &Workers) -> Vec<Row> {
    let tz = workers.sessions.state().client().time_zone().clone();
    let now = Timestamp::now();
    let mut upcoming: Vec<_> = workers
        .sessions
        .keys()
        .iter()
        .filter_map(|id| workers.sessions.peek(id))
        .filter(|s| s.starts_at(&tz).is_ok_and(|start| start >= now))
        .collect();
    upcoming.sort_by(|a, b| (a.showtime, &a.id).cmp(&(b.showtime, &b.id)));
    upcoming.iter().map(|s| row_of(workers, s)).collect()
}

fn row_of(workers: &Workers, s: &Session) -> Row {
    Row {
        id: s.id.clone(),
        time: s.showtime.strftime("%a %H:%M").to_string(),
        film: workers
            .films
            .peek(&s.film_id)
            .expect("the session's film")
            .title
            .clone(),
        cinema: workers
            .cinemas
            .peek(&s.cinema_id)
            .expect("the session's cinema")
            .name
            .clone(),
        seats: s.seats_available.to_string(),
        flash: false,
    }
}

/// Where the page's rows differ from the expected ones (the flash aside), if anywhere.
fn first_difference(shown: &[Row], expected: &[Row]) -> Option<String> {
    let same = |a: &Row, b: &Row| {
        Row {
            flash: false,
            ..a.clone()
        } == *b
    };
    if let Some(i) = (0..shown.len().min(expected.len())).find(|&i| !same(&shown[i], &expected[i]))
    {
        return Some(format!(
            "row {i}: page {:?}, workers {:?}",
            shown[i], expected[i]
        ));
    }
    (shown.len() != expected.len()).then(|| {
        format!(
            "{} rows on the page, {} upcoming sessions",
            shown.len(),
            expected.len()
        )
    })
}

/// Runs `check` every 100 ms until it succeeds, for at most [`LIMIT`]; panics with what it
/// saw last.
async fn eventually<T>(what: &str, mut check: impl AsyncFnMut() -> Result<T, String>) -> T {
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        match check().await {
            Ok(value) => return value,
            Err(last) if tokio::time::Instant::now() >= deadline => {
                panic!("{what}: not within {LIMIT:?}; last seen: {last}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Headless Chromium under a chromedriver of its own.
struct Browser {
    client: Client,
    driver: Child,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn start() -> Browser {
        let chromium = on_path("chromium").unwrap_or_else(|| missing("chromium"));
        let chromedriver = on_path("chromedriver").unwrap_or_else(|| missing("chromedriver"));
        let profile = tempfile::tempdir().expect("a profile folder");
        let port = free_port().await;
        let driver = Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .env("TZ", "UTC")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", chromedriver.display()));

        let mut args: Vec<String> = CHROMIUM_FLAGS.iter().map(|&flag| flag.to_owned()).collect();
        args.push(format!("--user-data-dir={}", profile.path().display()));
        let capabilities = json!({
            "goog:chromeOptions": { "binary": chromium, "args": args },
        });
        let serde_json::Value::Object(capabilities) = capabilities else {
            unreachable!("an object literal")
        };
        let url = format!("http://127.0.0.1:{port}");
        // chromedriver takes a moment to listen.
        let client = eventually("chromedriver starts a headless Chromium", async || {
            ClientBuilder::new(HttpConnector::new())
                .capabilities(capabilities.clone())
                .connect(&url)
                .await
                .map_err(|e| e.to_string())
        })
        .await;
        Browser {
            client,
            driver,
            _profile: profile,
        }
    }

    /// Ends the browser session (Chromium quits), then chromedriver.
    async fn close(mut self) {
        if let Err(error) = self.client.clone().close().await {
            eprintln!("closing the browser: {error}");
        }
        let _ = self.driver.kill().await;
    }
}

fn missing(name: &str) -> ! {
    panic!(
        "`{name}` is not on PATH: this test drives a real browser; install it with \
         `apt-get install chromium chromium-driver` (scripts/test does)"
    )
}

fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|file| file.is_file())
}

async fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .expect("a free port");
    listener.local_addr().expect("its address").port()
}

/// What the proxy does with connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Relays them to the app.
    Up,
    /// Closes each new one at once, with no answer (a network error to the browser).
    Reset,
    /// Answers each new one with a 503.
    Unavailable,
}

/// A TCP proxy in front of the app that records each request's head and, on
/// [`set`](Proxy::set), drops every open connection.
struct Proxy {
    addr: SocketAddr,
    mode: watch::Sender<Mode>,
    /// Moves on each drop; every relay ends when it does.
    drops: watch::Sender<u64>,
    /// Request heads (lower-cased), each with whether it was refused.
    requests: Arc<Mutex<Vec<(String, bool)>>>,
}

impl Proxy {
    async fn start(backend: SocketAddr) -> Proxy {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("a port for the proxy");
        let proxy = Proxy {
            addr: listener.local_addr().expect("the proxy's address"),
            mode: watch::Sender::new(Mode::Up),
            drops: watch::Sender::new(0),
            requests: Arc::default(),
        };
        let (mode, drops, requests) = (
            proxy.mode.subscribe(),
            proxy.drops.clone(),
            Arc::clone(&proxy.requests),
        );
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let requests = Arc::clone(&requests);
                match *mode.borrow() {
                    Mode::Up => {
                        tokio::spawn(relay(client, backend, drops.subscribe(), requests));
                    }
                    Mode::Reset => drop(client),
                    Mode::Unavailable => {
                        tokio::spawn(refuse(client, requests));
                    }
                }
            }
        });
        proxy
    }

    /// Switches the mode; any mode but `Up` first drops every open connection.
    fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
        if mode != Mode::Up {
            self.drops.send_modify(|n| *n += 1);
        }
        lock(&self.requests).clear();
    }

    /// The heads of relayed requests (since the last `set`) whose request line names `target`.
    fn requests_to(&self, target: &str) -> Vec<String> {
        let line = format!("get {} ", target.to_lowercase());
        lock(&self.requests)
            .iter()
            .filter(|(head, refused)| !refused && head.starts_with(&line))
            .map(|(head, _)| head.clone())
            .collect()
    }

    /// How many requests for `path` (with any query) were answered 503 since the last `set`.
    fn refused_to(&self, path: &str) -> usize {
        let (exact, query) = (format!("get {path} "), format!("get {path}?"));
        lock(&self.requests)
            .iter()
            .filter(|(head, refused)| {
                *refused && (head.starts_with(&exact) || head.starts_with(&query))
            })
            .count()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Reads the head of the request that opens a connection (what arrived with it, at most 8 KiB).
async fn read_head(client: &mut TcpStream) -> Vec<u8> {
    let mut head = Vec::new();
    let mut buf = [0_u8; 8192];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < buf.len() {
        match client.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    head
}

fn record(requests: &Mutex<Vec<(String, bool)>>, head: &[u8], refused: bool) {
    lock(requests).push((String::from_utf8_lossy(head).to_lowercase(), refused));
}

async fn relay(
    mut client: TcpStream,
    backend: SocketAddr,
    mut drops: watch::Receiver<u64>,
    requests: Arc<Mutex<Vec<(String, bool)>>>,
) {
    let Ok(mut server) = TcpStream::connect(backend).await else {
        return;
    };
    let relayed = async {
        // The first request's head, recorded; later requests on a kept-alive connection are
        // relayed unseen (the event streams each open a connection of their own).
        let head = read_head(&mut client).await;
        record(&requests, &head, false);
        server.write_all(&head).await?;
        tokio::io::copy_bidirectional(&mut client, &mut server).await
    };
    tokio::select! {
        _ = relayed => {}
        _ = drops.changed() => {}
    }
}

async fn refuse(mut client: TcpStream, requests: Arc<Mutex<Vec<(String, bool)>>>) {
    let head = read_head(&mut client).await;
    record(&requests, &head, true);
    let answer = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\n\
                   content-length: 12\r\nconnection: close\r\n\r\nunavailable\n";
    if client.write_all(answer).await.is_ok() {
        let _ = client.shutdown().await;
    }
}
