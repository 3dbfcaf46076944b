//! The Vista demo's `/metrics`: the workers' series (feature `metrics` of cache-worker) in the
//! Prometheus text format, through the recorder of `metrics-exporter-prometheus`.
//!
//! [`install`] makes that recorder the process's, before the workers start; [`router`] serves
//! its rendering at `GET /metrics`, to merge next to the live page.
//!
//! ```no_run
//! # async fn demo(
//! #     sessions: cache_worker::Worker<cache_worker::vista::Sessions>,
//! #     cinemas: cache_worker::Worker<cache_worker::vista::Cinemas>,
//! #     films: cache_worker::Worker<cache_worker::vista::Films>,
//! # ) -> Result<(), Box<dyn std::error::Error>> {
//! use cache_worker_examples::{live, prometheus};
//!
//! let metrics = prometheus::install()?;
//! // ... start the workers ...
//! let app = live::app(sessions, cinemas, films).merge(prometheus::router(metrics));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! axum::serve(listener, app).await?;
//! # Ok(()) }
//! ```

use std::time::Duration;

use axum::Router;
use axum::http::header::CONTENT_TYPE;
use axum::routing::get;
use metrics_exporter_prometheus::{BuildError, PrometheusBuilder, PrometheusHandle};

/// The upper bounds of the histograms' buckets, in seconds: from a fast local load to a slow
/// upstream, so that the durations render as Prometheus histograms (summable across
/// instances) rather than as the exporter's default summaries.
const SECONDS: &[f64] = &[
    0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// How often the recorder's raw histogram samples are folded into its buckets between scrapes.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Installs a Prometheus recorder as the process's `metrics` recorder and returns the handle
/// that renders it. Call it before starting the workers, inside the tokio runtime: it spawns
/// the recorder's upkeep there (without it, samples recorded while nobody scrapes pile up).
///
/// # Errors
///
/// Another recorder was installed already.
///
/// # Panics
///
/// Outside a tokio runtime.
pub fn install() -> Result<PrometheusHandle, BuildError> {
    let handle = PrometheusBuilder::new()
        .set_buckets(SECONDS)?
        .install_recorder()?;
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(UPKEEP_EVERY);
        loop {
            every.tick().await;
            upkeep.run_upkeep();
        }
    });
    Ok(handle)
}

/// `GET /metrics`: what `handle`'s recorder holds, in the Prometheus text format.
pub fn router(handle: PrometheusHandle) -> Router {
    Router::new().route(
        "/metrics",
        get(move || {
            let text = handle.render();
            async move {
                (
                    [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
                    text,
                )
            }
        }),
    )
}
