#![cfg(feature = "vista-testing")]
//! `VistaClient` end to end against the fake Vista server.

use std::time::Duration;

use cache_worker::vista::testing::{FakeVista, Route};
use cache_worker::vista::{VistaClient, VistaError};
use jiff::Timestamp;
use jiff::tz::TimeZone;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn berlin() -> TimeZone {
    TimeZone::posix("CET-1CEST,M3.5.0,M10.5.0/3").expect("a valid POSIX time zone")
}

/// A fixed "now" (a summer evening in Berlin), so that every showtime is known.
fn now() -> Timestamp {
    "2025-06-14T16:02:30Z".parse().expect("a valid timestamp")
}

async fn fake() -> FakeVista {
    FakeVista::builder()
        .time_zone(berlin())
        .now(now())
        .start()
        .await
        .expect("the fake starts")
}

/// A client with no wait between attempts, so that retries cost no time.
fn client(fake: &FakeVista) -> VistaClient {
    VistaClient::new(fake.base_url(), fake.token())
        .expect("a valid client")
        .with_time_zone(berlin())
        .with_backoff(Duration::ZERO)
}

#[tokio::test]
async fn all_three_collections_parse() -> TestResult {
    let fake = fake().await;
    let client = client(&fake);

    let cinemas = client.cinemas().await?;
    assert_eq!((cinemas.items.len(), cinemas.skipped), (13, 0));
    assert_eq!(cinemas.items[1].name, "Babylon");

    let films = client.films().await?;
    assert_eq!((films.items.len(), films.skipped), (54, 0));
    assert!(
        films
            .items
            .iter()
            .any(|f| f.title == "Ein Gauner & Gentleman")
    );

    let sessions = client.sessions().await?;
    assert_eq!((sessions.items.len(), sessions.skipped), (362, 0));
    assert_eq!(
        (
            fake.requests(Route::Cinemas),
            fake.requests(Route::Films),
            fake.requests(Route::Sessions)
        ),
        (1, 1, 1)
    );
    Ok(())
}

#[tokio::test]
async fn showtimes_are_moved_to_start_minutes_from_now() -> TestResult {
    let fake = fake().await;
    let client = client(&fake);
    let sessions = client.sessions().await?.items;

    // 18:02:30 local + 5 minutes, rounded up to the minute: the first show is at 18:08.
    let earliest = sessions
        .iter()
        .map(|s| s.showtime)
        .min()
        .ok_or("sessions")?;
    assert_eq!(earliest, jiff::civil::date(2025, 6, 14).at(18, 8, 0, 0));
    let secs = sessions
        .iter()
        .map(|s| s.secs_until_showtime(now(), client.time_zone()))
        .min()
        .ok_or("sessions")?;
    assert_eq!(secs, 330);

    // Spacing is kept: the recorded first show was 2019-04-23 13:20, 1001-17024 at 21:00, so
    // it moves to 7 h 40 min after 18:08, past midnight, on the previous business day.
    let first = sessions
        .iter()
        .find(|s| s.id == "1001-17024")
        .ok_or("1001-17024")?;
    assert_eq!(
        first.showtime,
        jiff::civil::date(2025, 6, 15).at(1, 48, 0, 0)
    );
    assert_eq!(first.business_date, jiff::civil::date(2025, 6, 14));

    // Business dates follow a 6 AM cut-off: a show moved past midnight belongs to the day before.
    for session in &sessions {
        let expected = (session.showtime - jiff::SignedDuration::from_hours(6)).date();
        assert_eq!(session.business_date, expected, "{}", session.id);
    }
    assert!(
        sessions
            .iter()
            .any(|s| s.showtime.date() != s.business_date)
    );
    Ok(())
}

#[tokio::test]
async fn one_session_by_id() -> TestResult {
    let fake = fake().await;
    let client = client(&fake);

    let session = client
        .session("1001-17024")
        .await?
        .ok_or("1001-17024 is served")?;
    assert_eq!((session.cinema_id, session.session_id), (1001, 17024));
    assert_eq!(session.film_id, "HO00000823");
    assert_eq!(session.screen_name, "Kino 2");
    assert_eq!(Some(session.seats_available), fake.seats("1001-17024"));
    assert_eq!(Some(session.showtime), fake.showtime("1001-17024"));

    assert!(fake.set_seats("1001-17024", 3));
    let session = client.session("1001-17024").await?.ok_or("still served")?;
    assert_eq!(session.seats_available, 3);

    assert!(fake.remove_session("1001-17024"));
    assert_eq!(client.session("1001-17024").await?, None);
    assert_eq!(client.sessions().await?.items.len(), 361);
    assert_eq!(fake.requests(Route::Sessions), 4);
    Ok(())
}

#[tokio::test]
async fn a_missing_session_is_none() -> TestResult {
    let fake = fake().await;
    let client = client(&fake);
    assert_eq!(client.session("1001-1").await?, None);
    assert_eq!(fake.requests(Route::Sessions), 1);

    // An id that cannot exist is answered without a request; a quote cannot break the filter.
    assert_eq!(client.session("not an id").await?, None);
    assert_eq!(client.session("1001-1' or ID ne '").await?, None);
    assert_eq!(fake.requests(Route::Sessions), 1);
    Ok(())
}

#[tokio::test]
async fn a_wrong_token_is_a_clear_error() -> TestResult {
    let fake = fake().await;
    let client = VistaClient::new(fake.base_url(), "wrong-token")?.with_backoff(Duration::ZERO);
    let error = client.cinemas().await.expect_err("refused");
    assert!(
        matches!(&error, VistaError::Unauthorized { status: 401, body } if body.contains("connectapitoken")),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(
        message.contains("connectapitoken") && message.contains("VISTA_API_TOKEN"),
        "{message}"
    );
    // Not retried: another attempt cannot help.
    assert_eq!(fake.requests(Route::Cinemas), 1);
    Ok(())
}

#[tokio::test]
async fn a_server_error_carries_status_and_body_after_the_retries() -> TestResult {
    let fake = fake().await;
    let client = client(&fake);
    fake.fail_until_cleared();
    match client.films().await {
        Err(VistaError::Server { status: 500, body }) => {
            assert_eq!(body, "fake Vista: injected failure (HTTP 500)");
        }
        other => panic!("expected a server error, got {other:?}"),
    }
    assert_eq!(fake.requests(Route::Films), 3, "three attempts by default");

    let one_attempt = client.clone().with_attempts(1);
    assert!(matches!(
        one_attempt.films().await,
        Err(VistaError::Server { .. })
    ));
    assert_eq!(fake.requests(Route::Films), 4);

    fake.clear_failures();
    assert_eq!(client.films().await?.items.len(), 54);
    Ok(())
}

#[tokio::test]
async fn retries_hide_a_short_outage() -> TestResult {
    let fake = fake().await;
    let client = client(&fake);
    fake.fail_next(2);
    assert_eq!(client.cinemas().await?.items.len(), 13);
    assert_eq!(fake.requests(Route::Cinemas), 3);
    // The outage is over.
    assert_eq!(client.cinemas().await?.items.len(), 13);
    assert_eq!(fake.requests(Route::Cinemas), 4);

    // 429 is retried like a 5xx.
    fake.fail_with(429, Some(1));
    assert_eq!(client.cinemas().await?.items.len(), 13);
    assert_eq!(fake.requests(Route::Cinemas), 6);
    Ok(())
}

#[tokio::test]
async fn other_statuses_are_errors_and_not_retried() -> TestResult {
    let fake = fake().await;
    let client = client(&fake);
    fake.fail_with(404, None);
    match client.sessions().await {
        Err(VistaError::Status { status: 404, body }) => assert!(body.contains("HTTP 404")),
        other => panic!("expected a status error, got {other:?}"),
    }
    assert_eq!(fake.requests(Route::Sessions), 1);

    fake.fail_with(403, None);
    let error = client.sessions().await.expect_err("forbidden");
    assert!(
        matches!(error, VistaError::Unauthorized { status: 403, .. }),
        "{error:?}"
    );
    assert_eq!(error.status(), Some(403));
    Ok(())
}

#[tokio::test]
async fn a_wrong_base_url_is_a_404() -> TestResult {
    let fake = fake().await;
    let base = fake.base_url().replace("WSVistaWebClient", "Elsewhere");
    let client = VistaClient::new(&base, fake.token())?;
    let error = client.cinemas().await.expect_err("not found");
    assert_eq!(error.status(), Some(404), "{error:?}");
    Ok(())
}

#[tokio::test]
async fn malformed_json_is_an_error() -> TestResult {
    let fake = fake().await;
    let client = client(&fake);
    fake.serve_malformed_json(true);
    for result in [
        client.cinemas().await.map(|_| ()),
        client.films().await.map(|_| ()),
        client.sessions().await.map(|_| ()),
        client.session("1001-17024").await.map(|_| ()),
    ] {
        assert!(matches!(result, Err(VistaError::Json { .. })), "{result:?}");
    }
    assert_eq!(fake.total_requests(), 4, "malformed JSON is not retried");
    fake.serve_malformed_json(false);
    assert_eq!(client.cinemas().await?.items.len(), 13);
    Ok(())
}

#[tokio::test]
async fn a_bad_row_is_skipped_and_counted() -> TestResult {
    let fake = fake().await;
    let client = client(&fake);
    fake.serve_bad_row(true);

    let cinemas = client.cinemas().await?;
    assert_eq!((cinemas.items.len(), cinemas.skipped), (13, 1));
    let films = client.films().await?;
    assert_eq!((films.items.len(), films.skipped), (54, 1));
    let sessions = client.sessions().await?;
    assert_eq!((sessions.items.len(), sessions.skipped), (362, 1));

    // Asked for alone, an unreadable row is an error, not a sign that the session is gone.
    let error = client.session("9999-1").await.expect_err("unreadable");
    assert!(
        matches!(
            error,
            VistaError::InvalidRow {
                collection: "Sessions",
                ..
            }
        ),
        "{error:?}"
    );
    assert!(client.session("1001-17024").await?.is_some());
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_slow_server_times_out_and_is_retried() -> TestResult {
    // The clock is paused: tokio jumps to the client's 1 s timeout at once, long before the
    // fake's 1 h latency, so this neither waits nor depends on the machine's speed.
    let fake = fake().await;
    let client = client(&fake)
        .with_timeout(Duration::from_secs(1))
        .with_attempts(2);
    fake.set_latency(Duration::from_secs(3600));
    let error = client.cinemas().await.expect_err("timed out");
    assert!(error.is_timeout(), "{error:?}");
    assert!(
        error.to_string().contains("could not get an answer"),
        "{error}"
    );
    assert!(fake.requests(Route::Cinemas) <= 2);
    Ok(())
}

#[tokio::test]
async fn a_refused_connection_is_an_http_error() -> TestResult {
    // A port that was just free: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let client = VistaClient::new(&format!("http://127.0.0.1:{port}/WSVistaWebClient/"), "t")?
        .with_backoff(Duration::ZERO);
    let error = client.cinemas().await.expect_err("refused");
    assert!(
        matches!(error, VistaError::Http(_)) && !error.is_timeout(),
        "{error:?}"
    );
    assert_eq!(error.status(), None);
    Ok(())
}
