//! The Vista demo: sessions, cinemas and films kept warm from a Vista Connect server.
//!
//! With no configuration it starts the fake Vista server in live mode (it sells seats and
//! cancels sessions on its own), starts the three workers with their dumps under the system's
//! temporary directory, lists the next sessions, and prints seat changes and removals as they
//! happen. A second run starts warm from the dumps.
//!
//! While it watches it also serves the live page (`cache_worker_examples::live`) on loopback:
//! open the URL it prints to see the next sessions update themselves as seats sell. Beside it,
//! `/metrics` serves the three workers' counters, gauges and histograms in the Prometheus text
//! format (`cache_worker_examples::prometheus`).
//!
//! ```text
//! cargo run --example vista                     # cold: loads from the fake server
//! cargo run --example vista                     # warm: restored from the dumps
//! VISTA_DEMO_SECS=600 cargo run --example vista # watch (and serve the page) longer (default 20 s)
//! VISTA_DEMO_PORT=8080 cargo run --example vista  # the page on a fixed port (default: any free one)
//! VISTA_API_URL=https://vista.example:8080/WSVistaWebClient/ VISTA_API_TOKEN=... \
//!     cargo run --example vista                 # a real Vista server instead of the fake
//! ```

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use cache_worker::vista::testing::FakeVista;
use cache_worker::vista::{Cinemas, Feed, Films, Session, Sessions, VistaClient, VistaWorker};
use cache_worker::{Event, StartKind, Worker};
use cache_worker_examples::{live, prometheus};
use futures_util::StreamExt;
use jiff::Timestamp;
use jiff::tz::TimeZone;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How long the sessions collection is trusted before a full reload (the worker's default).
const SESSIONS_TTL: Duration = Duration::from_secs(3600);
/// How often the demo asks for a full reload of the sessions while it watches the fake.
const DEMO_RELOAD: Duration = Duration::from_secs(5);

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "error".into()),
        )
        .with_target(false)
        .compact()
        .init();

    let watch = Duration::from_secs(
        std::env::var("VISTA_DEMO_SECS")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(20),
    );
    let port: u16 = match std::env::var("VISTA_DEMO_PORT") {
        Ok(port) => port
            .trim()
            .parse()
            .map_err(|_| format!("VISTA_DEMO_PORT={port:?} is not a port number"))?,
        Err(_) => 0,
    };
    // Before the workers start, so that it hears of every load.
    let metrics = prometheus::install()?;
    let dir = std::env::temp_dir().join("cache-worker-vista-demo");
    // The workers create this directory at start if it is missing.

    // A real server if configured, else the fake one in live mode.
    let real = std::env::var_os("VISTA_API_URL").is_some()
        && std::env::var_os("VISTA_API_TOKEN").is_some();
    let (client, fake) = if real {
        let client = VistaClient::from_env()?;
        println!("Vista server: {} (from VISTA_API_URL)", client.base_url());
        (client, None)
    } else {
        let fake = FakeVista::builder()
            .live(Duration::from_secs(1))
            .start()
            .await?;
        let client = VistaClient::new(fake.base_url(), fake.token())?
            .with_time_zone(fake.time_zone().clone());
        println!(
            "Vista server: the fake at {} (live mode: sells seats, cancels sessions)",
            fake.base_url()
        );
        (client, Some(fake))
    };
    let tz = client.time_zone().clone();
    println!("dump dir:     {}\n", dir.display());

    let cinemas = start(Cinemas::new(client.clone()), &dir).await?;
    let films = start(Films::new(client.clone()), &dir).await?;
    let sessions = start(Sessions::new(client), &dir).await?;

    // The live page, served from now until the end of the watch: it fills in as the workers load.
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port)).await?;
    let addr = listener.local_addr()?;
    println!("live page:    http://{addr}/");
    println!("metrics:      http://{addr}/metrics\n");
    let app = live::app(sessions.clone(), cinemas.clone(), films.clone())
        .merge(prometheus::router(metrics));
    let page = tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app).await {
            println!("the live page stopped: {error}");
        }
    });
    let warm = [
        cinemas.stats().restored,
        films.stats().restored,
        sessions.stats().restored,
    ]
    .iter()
    .all(|&n| n > 0);

    // The first load: cold, wait for each collection's first bulk load; warm, the dumps
    // already answer, so revalidate against upstream once and show what changed.
    let began = Instant::now();
    if warm {
        let (c, f, s) = tokio::join!(
            cinemas.refresh_all(),
            films.refresh_all(),
            sessions.refresh_all()
        );
        for (name, report) in [("cinemas", c?), ("films", f?), ("sessions", s?)] {
            println!(
                "revalidated {name:<8} +{} ~{} -{} ={} ({} failed)",
                report.inserted, report.updated, report.removed, report.unchanged, report.failed
            );
        }
    } else {
        let limit = Duration::from_secs(60);
        wait_loaded(&cinemas, limit).await;
        wait_loaded(&films, limit).await;
        wait_loaded(&sessions, limit).await;
    }
    println!(
        "loaded: {} cinemas, {} films, {} sessions ({} in {})\n",
        cinemas.len(),
        films.len(),
        sessions.len(),
        if warm { "revalidated" } else { "first load" },
        ms(began.elapsed()),
    );

    // The next upcoming sessions.
    let now = Timestamp::now();
    let mut upcoming: Vec<_> = sessions
        .keys()
        .iter()
        .filter_map(|id| sessions.peek(id))
        .filter(|s| s.starts_at(&tz).is_ok_and(|t| t >= now))
        .collect();
    upcoming.sort_by(|a, b| (a.showtime, &a.id).cmp(&(b.showtime, &b.id)));
    println!("next sessions:");
    for s in upcoming.iter().take(5) {
        let poll = s
            .poll_interval(now, &tz, SESSIONS_TTL)
            .map_or_else(|| "with the hourly reload".to_owned(), secs);
        println!(
            "  {}  {:<28} {:<22} {:>3} seats  poll {}",
            s.showtime.strftime("%a %H:%M"),
            clip(&film_title(&films, s), 28),
            clip(&cinema_name(&cinemas, s), 22),
            s.seats_available,
            poll,
        );
    }

    // Watch the changes as they happen.
    println!(
        "\nwatching for {} (the live page too; Ctrl-C stops):",
        secs(watch)
    );
    let mut events = sessions.subscribe();
    let deadline = tokio::time::Instant::now() + watch;
    let mut reload =
        tokio::time::interval_at(tokio::time::Instant::now() + DEMO_RELOAD, DEMO_RELOAD);
    let (mut changes, mut removals) = (0_u32, 0_u32);
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(deadline) => break,
            _ = tokio::signal::ctrl_c() => break,
            // With the fake, ask for a full reload now and then, so that sessions far from
            // their showtime (polled every minute or less often) show their changes too.
            _ = reload.tick(), if fake.is_some() => {
                let sessions = sessions.clone();
                tokio::spawn(async move { sessions.refresh_all().await });
            }
            event = events.next() => match event {
                Some(Event::Updated { value, previous, .. }) => {
                    if value.seats_available != previous.seats_available {
                        changes += 1;
                        println!(
                            "  {}  seats    {:<11} {}: {} → {}",
                            clock(&tz),
                            value.id,
                            describe(&films, &cinemas, &value),
                            previous.seats_available,
                            value.seats_available,
                        );
                    }
                }
                Some(Event::Removed { value, cause, .. }) => {
                    removals += 1;
                    println!(
                        "  {}  removed  {:<11} {} ({cause:?})",
                        clock(&tz),
                        value.id,
                        describe(&films, &cinemas, &value),
                    );
                }
                Some(Event::Lagged { missed }) => println!("  (missed {missed} events)"),
                Some(_) => {}
                None => break,
            },
        }
    }
    println!("{changes} seat changes, {removals} removals\n");
    // Its event streams never end on their own: stop the page (and `/metrics`), then the workers.
    page.abort();

    // Final dumps, then the counters of the sessions worker.
    let began = Instant::now();
    let (c, f, s) = tokio::join!(cinemas.shutdown(), films.shutdown(), sessions.shutdown());
    c.and(f).and(s)?;
    println!("shut down, dumps written in {}", ms(began.elapsed()));
    let st = sessions.stats();
    println!(
        "sessions stats: {} entries, {} restored, {} loads ({} bulk, {} errors), \
         {} inserted, {} updated, {} unchanged, {} removed, {} expired, {} dumps",
        st.entries,
        st.restored,
        st.loads,
        st.bulk_loads,
        st.load_errors,
        st.inserted,
        st.updated,
        st.unchanged,
        st.removed,
        st.expired,
        st.dump_writes,
    );
    drop(fake);
    Ok(())
}

/// Starts one worker with its dump in `dir`, and says how it started.
async fn start<F: Feed>(
    worker: VistaWorker<F>,
    dir: &Path,
) -> Result<Worker<VistaWorker<F>>, BoxError> {
    let began = Instant::now();
    let worker = worker.dump_dir(dir).start().await?;
    let took = ms(began.elapsed());
    match worker.started() {
        StartKind::Warm { restored, .. } => println!(
            "{:<8} started warm in {took}: {restored} restored from {}.dump",
            F::BUCKET,
            F::BUCKET
        ),
        StartKind::Cold(why) => println!("{:<8} started cold in {took} ({why})", F::BUCKET),
        other => println!("{:<8} started in {took}: {other:?}", F::BUCKET),
    }
    Ok(worker)
}

/// Waits, at most `limit`, for the worker's first bulk load.
async fn wait_loaded<F: Feed>(worker: &Worker<VistaWorker<F>>, limit: Duration) {
    match tokio::time::timeout(limit, worker.ready()).await {
        Err(_) => println!(
            "{}: no answer from upstream after {}",
            F::BUCKET,
            secs(limit)
        ),
        Ok(Ok(report)) if report.failed > 0 => {
            println!("{}: the first load failed (see the log)", F::BUCKET);
        }
        Ok(Ok(_)) => {}
        Ok(Err(e)) => println!("{}: {e}", F::BUCKET),
    }
}

fn film_title(films: &Worker<Films>, s: &Session) -> String {
    films
        .peek(&s.film_id)
        .map_or_else(|| s.film_id.clone(), |f| f.title.clone())
}

fn cinema_name(cinemas: &Worker<Cinemas>, s: &Session) -> String {
    cinemas
        .peek(&s.cinema_id)
        .map_or_else(|| format!("cinema {}", s.cinema_id), |c| c.name.clone())
}

/// "Rocketman, Delphi Lux, Tue 14:05".
fn describe(films: &Worker<Films>, cinemas: &Worker<Cinemas>, s: &Session) -> String {
    format!(
        "{}, {}, {}",
        clip(&film_title(films, s), 28),
        cinema_name(cinemas, s),
        s.showtime.strftime("%a %H:%M")
    )
}

fn clip(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        text.to_owned()
    } else {
        let cut: String = text.chars().take(width - 1).collect();
        format!("{cut}…")
    }
}

fn clock(tz: &TimeZone) -> String {
    Timestamp::now()
        .to_zoned(tz.clone())
        .strftime("%H:%M:%S")
        .to_string()
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn secs(d: Duration) -> String {
    format!("{} s", d.as_secs())
}
