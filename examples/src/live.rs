//! The live page of the Vista demo: the next sessions, kept current in the browser from the
//! workers' change streams.
//!
//! [`app`] nests [`cache_worker::http::router`] of each worker under `/api/sessions`,
//! `/api/cinemas` and `/api/films`, and serves at `/` one page (`live.html`, embedded in the
//! binary: plain HTML, CSS and JavaScript, no build step). The page opens an `EventSource` on
//! each worker's `/events`, keeps a copy of each bucket (a `full` event replaces it, a `change`
//! puts, removes or merge-patches one entry) and shows the upcoming sessions, sorted by
//! showtime. After a drop it resumes from the version it holds, so it catches up without a
//! gap and without a reload.
//!
//! ```no_run
//! # async fn demo(
//! #     sessions: cache_worker::Worker<cache_worker::vista::Sessions>,
//! #     cinemas: cache_worker::Worker<cache_worker::vista::Cinemas>,
//! #     films: cache_worker::Worker<cache_worker::vista::Films>,
//! # ) -> std::io::Result<()> {
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! let app = cache_worker_examples::live::app(sessions, cinemas, films);
//! axum::serve(listener, app).await
//! # }
//! ```

use axum::Router;
use axum::response::Html;
use axum::routing::get;
use cache_worker::Worker;
use cache_worker::http::router;
use cache_worker::vista::jiff::Timestamp;
use cache_worker::vista::jiff::tz::TimeZone;
use cache_worker::vista::{Cinemas, Films, Sessions};

/// The page, with two placeholders filled in by [`page`].
const PAGE: &str = include_str!("live.html");

/// The router of the live page: the page at `/`, and the three workers' sync APIs (snapshot
/// and delta at `/api/<bucket>`, Server-Sent Events at `/api/<bucket>/events`).
///
/// The page reads showtimes, which are the cinema's naive local times, in the time zone of the
/// sessions' client ([`VistaClient::time_zone`]) to tell which sessions are still to come.
///
/// [`VistaClient::time_zone`]: cache_worker::vista::VistaClient::time_zone
pub fn app(sessions: Worker<Sessions>, cinemas: Worker<Cinemas>, films: Worker<Films>) -> Router {
    let page = Html(page(sessions.state().client().time_zone()));
    Router::new()
        .route("/", get(move || async move { page }))
        .nest("/api/sessions", router(sessions))
        .nest("/api/cinemas", router(cinemas))
        .nest("/api/films", router(films))
}

/// The page for cinemas in `tz`: its IANA name where known (the browser follows the zone's
/// daylight-saving rules itself), and always its offset from UTC now, for a zone the browser
/// cannot name (a POSIX `TZ` string).
fn page(tz: &TimeZone) -> String {
    let offset = tz.to_offset(Timestamp::now()).seconds();
    PAGE.replace("__TIME_ZONE__", tz.iana_name().unwrap_or(""))
        .replace("__UTC_OFFSET__", &offset.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_names_the_time_zone() {
        let berlin = TimeZone::posix("CET-1CEST,M3.5.0,M10.5.0/3").expect("a valid TZ string");
        let html = page(&berlin);
        assert!(
            html.contains(r#"data-time-zone="""#),
            "no IANA name for a POSIX zone"
        );
        let offset = berlin.to_offset(Timestamp::now()).seconds();
        assert!(html.contains(&format!(r#"data-utc-offset="{offset}""#)));
        assert!(!html.contains("__"), "every placeholder is filled");

        let utc = page(&TimeZone::UTC);
        assert!(utc.contains(r#"data-time-zone="UTC""#) && utc.contains(r#"data-utc-offset="0""#));
    }
}
