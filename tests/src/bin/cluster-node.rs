//! One node of a cluster sharing its Vista workers through Redis: the process the multi-node
//! tests (`tests/cluster.rs`) start several of, kill, pause and restart.
//!
//! ```text
//! cluster-node --name a --redis redis://127.0.0.1:6379/ --vista http://127.0.0.1:PORT/WSVistaWebClient/ \
//!     --token TOKEN --time-zone Europe/Berlin --dump-dir /tmp/a [--lease-ms 900] [--refresh-ms 2000] [--port 0]
//! ```
//!
//! It starts the three Vista workers (sessions, cinemas, films) over one `RedisStore`, with
//! their dumps in the dump directory, prints `listening 127.0.0.1:PORT` once it serves, and
//! serves each bucket's delta sync (`/sessions/`, `/cinemas/`, `/films/`, through
//! `cache_worker::http::router`) and `/status` (JSON: per bucket its version, entries, start
//! and counters). SIGTERM shuts it down cleanly (final dumps; the lease is released).

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use cache_worker::redis::RedisStore;
use cache_worker::vista::{Cinemas, Feed, Films, Sessions, VistaClient, VistaWorker};
use cache_worker::{Stats, Worker, http};
use jiff::tz::TimeZone;
use serde_json::{Value, json};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The command line, `--name value` pairs.
struct Args(HashMap<String, String>);

impl Args {
    fn parse() -> Result<Args, BoxError> {
        let mut args = std::env::args().skip(1);
        let mut map = HashMap::new();
        while let Some(flag) = args.next() {
            let name = flag
                .strip_prefix("--")
                .ok_or_else(|| format!("expected --<option>, got {flag:?}"))?;
            let value = args
                .next()
                .ok_or_else(|| format!("--{name} needs a value"))?;
            map.insert(name.to_owned(), value);
        }
        Ok(Args(map))
    }

    fn get(&self, name: &str) -> Result<&str, BoxError> {
        self.0
            .get(name)
            .map(String::as_str)
            .ok_or_else(|| format!("--{name} is required").into())
    }

    fn millis(&self, name: &str, default: u64) -> Result<Duration, BoxError> {
        let ms = match self.0.get(name) {
            Some(v) => v
                .parse()
                .map_err(|_| format!("--{name}: {v:?} is not a number"))?,
            None => default,
        };
        Ok(Duration::from_millis(ms))
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,cache_worker=info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let args = Args::parse()?;
    let name = args.get("name")?.to_owned();
    let redis = RedisStore::connect(args.get("redis")?)
        .await?
        .node_name(&name)
        .lease(args.millis("lease-ms", 900)?);
    let client = VistaClient::new(args.get("vista")?, args.get("token")?)?
        .with_time_zone(TimeZone::get(args.get("time-zone")?)?);
    let dir = PathBuf::from(args.get("dump-dir")?);
    let refresh = args.millis("refresh-ms", 2000)?;
    let port: u16 = args.0.get("port").map_or(Ok(0), |p| p.parse())?;

    let sessions = start::<_>(Sessions::new(client.clone()), &dir, refresh, &redis).await?;
    let cinemas = start::<_>(Cinemas::new(client.clone()), &dir, refresh, &redis).await?;
    let films = start::<_>(Films::new(client), &dir, refresh, &redis).await?;

    let status = {
        let (sessions, cinemas, films, name) = (
            sessions.clone(),
            cinemas.clone(),
            films.clone(),
            name.clone(),
        );
        move || {
            let (sessions, cinemas, films, name) = (
                sessions.clone(),
                cinemas.clone(),
                films.clone(),
                name.clone(),
            );
            async move {
                axum::Json(json!({
                    "node": name,
                    "buckets": {
                        "sessions": bucket(&sessions),
                        "cinemas": bucket(&cinemas),
                        "films": bucket(&films),
                    }
                }))
            }
        }
    };
    let app = Router::new()
        .nest("/sessions", http::router(sessions.clone()))
        .nest("/cinemas", http::router(cinemas.clone()))
        .nest("/films", http::router(films.clone()))
        .route("/status", get(status));
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port)).await?;
    println!("listening {}", listener.local_addr()?);
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            terminate.recv().await;
        })
        .await?;
    for result in [
        sessions.shutdown().await,
        cinemas.shutdown().await,
        films.shutdown().await,
    ] {
        if let Err(error) = result {
            eprintln!("shutdown: {error}");
        }
    }
    Ok(())
}

/// Starts one Vista worker over the shared store, with its dump in `dir`.
async fn start<F: Feed>(
    worker: VistaWorker<F>,
    dir: &std::path::Path,
    refresh: Duration,
    redis: &RedisStore,
) -> Result<Worker<VistaWorker<F>>, BoxError> {
    Ok(worker
        .dump_dir(dir)
        .builder()
        .refresh(refresh)
        .store(redis.clone())
        .start()
        .await?)
}

/// A bucket's state for `/status`.
fn bucket<W: cache_worker::CacheWorker>(worker: &Worker<W>) -> Value {
    let Stats {
        entries,
        loads,
        store_writes,
        store_failures,
        store_undecodable,
        refresh_cycles,
        ..
    } = worker.stats();
    json!({
        "version": worker.version(),
        "entries": entries,
        "warm": worker.started().is_warm(),
        "started": format!("{:?}", worker.started()),
        "loads": loads,
        "refresh_cycles": refresh_cycles,
        "store_writes": store_writes,
        "store_failures": store_failures,
        "store_undecodable": store_undecodable,
    })
}
