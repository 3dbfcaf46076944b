#![cfg(feature = "vista-testing")]
//! The fake Vista server itself, spoken to over raw HTTP.

use std::net::SocketAddr;
use std::time::Duration;

use cache_worker::vista::testing::{FakeVista, Route};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// `GET path` with an optional token; returns the status and the body.
async fn get(addr: SocketAddr, path: &str, token: Option<&str>) -> std::io::Result<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let token = token
        .map(|t| format!("connectapitoken: {t}\r\n"))
        .unwrap_or_default();
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{token}Connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await?;
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok((status, body.to_owned()))
}

const SESSIONS: &str = "/WSVistaWebClient/OData.svc/Sessions";

#[tokio::test]
async fn filter_and_select_on_sessions() -> TestResult {
    let fake = FakeVista::start().await;
    let path = format!("{SESSIONS}?$filter=ID%20eq%20%271001-17024%27&$select=ID,SeatsAvailable");
    let (status, body) = get(fake.addr(), &path, Some(fake.token())).await?;
    assert_eq!(status, 200, "{body}");
    let json: Value = serde_json::from_str(&body)?;
    let rows = json["value"].as_array().ok_or("value is a list")?;
    assert_eq!(rows.len(), 1);
    let keys: Vec<&str> = rows[0]
        .as_object()
        .ok_or("a row")?
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys, ["ID", "SeatsAvailable"]);
    assert_eq!(rows[0]["ID"], "1001-17024");
    assert!(
        json["odata.metadata"]
            .as_str()
            .is_some_and(|m| m.ends_with("#Sessions"))
    );

    // `+` for a space and a literal `$` work as well.
    let path = format!("{SESSIONS}?%24filter=ID+eq+'1001-17024'");
    let (status, body) = get(fake.addr(), &path, Some(fake.token())).await?;
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&body)?["value"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );

    let path = format!("{SESSIONS}?$filter=ID%20eq%20%27nope%27");
    let (_, body) = get(fake.addr(), &path, Some(fake.token())).await?;
    assert_eq!(
        serde_json::from_str::<Value>(&body)?["value"],
        serde_json::json!([])
    );
    Ok(())
}

#[tokio::test]
async fn unsupported_queries_are_400() -> TestResult {
    let fake = FakeVista::start().await;
    for (query, said) in [
        ("$select=ID,Nope", "Nope"),
        ("$filter=SeatsAvailable%20gt%205", "unsupported $filter"),
    ] {
        let path = format!("{SESSIONS}?{query}");
        let (status, body) = get(fake.addr(), &path, Some(fake.token())).await?;
        assert_eq!(status, 400, "{query}");
        assert!(body.contains(said), "{query}: {body}");
    }
    Ok(())
}

#[tokio::test]
async fn tokens_are_checked_and_requests_counted() -> TestResult {
    let fake = FakeVista::builder().token("sesame").start().await?;
    assert_eq!(fake.token(), "sesame");
    let cinemas = "/WSVistaWebClient/OData.svc/Cinemas";
    assert_eq!(get(fake.addr(), cinemas, None).await?.0, 401);
    assert_eq!(get(fake.addr(), cinemas, Some("wrong")).await?.0, 401);
    assert_eq!(get(fake.addr(), cinemas, Some("sesame")).await?.0, 200);
    assert_eq!(
        get(
            fake.addr(),
            "/WSVistaWebClient/OData.svc/Films",
            Some("sesame")
        )
        .await?
        .0,
        404
    );
    assert_eq!(fake.requests(Route::Cinemas), 3);
    assert_eq!(fake.total_requests(), 3, "unknown routes are not counted");
    fake.reset_requests();
    assert_eq!(fake.total_requests(), 0);
    Ok(())
}

#[tokio::test]
async fn failures_count_down_and_clear() -> TestResult {
    let fake = FakeVista::start().await;
    let films = "/WSVistaWebClient/OData.svc/GetScheduledFilms";
    fake.fail_next(2);
    assert_eq!(get(fake.addr(), films, Some(fake.token())).await?.0, 500);
    assert_eq!(get(fake.addr(), SESSIONS, Some(fake.token())).await?.0, 500);
    assert_eq!(get(fake.addr(), films, Some(fake.token())).await?.0, 200);
    fake.fail_until_cleared();
    for _ in 0..3 {
        assert_eq!(get(fake.addr(), films, Some(fake.token())).await?.0, 500);
    }
    fake.clear_failures();
    assert_eq!(get(fake.addr(), films, Some(fake.token())).await?.0, 200);
    Ok(())
}

#[tokio::test]
async fn knobs_change_what_is_served() -> TestResult {
    let fake = FakeVista::start().await;
    let ids = fake.session_ids();
    assert_eq!(ids.len(), 362);
    assert!(fake.set_seats(&ids[0], 7));
    assert_eq!(fake.seats(&ids[0]), Some(7));
    assert!(!fake.set_seats("1-1", 7));
    assert!(fake.remove_session(&ids[0]));
    assert!(!fake.remove_session(&ids[0]));
    assert_eq!(fake.seats(&ids[0]), None);
    assert_eq!(fake.session_ids().len(), 361);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn live_mode_sells_seats_and_drops_sessions() -> TestResult {
    let fake = FakeVista::start().await;
    let seats = |fake: &FakeVista| -> u64 {
        fake.session_ids()
            .iter()
            .filter_map(|id| fake.seats(id))
            .map(u64::from)
            .sum()
    };
    let before = seats(&fake);
    fake.start_live(Duration::from_secs(3));
    // The paused clock runs the four ticks at once.
    tokio::time::sleep(Duration::from_millis(12_500)).await;
    fake.stop_live();
    assert_eq!(
        fake.session_ids().len(),
        361,
        "one session dropped on the fourth tick"
    );
    assert!(seats(&fake) < before, "seats were sold");
    let after = seats(&fake);
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(seats(&fake), after, "stopped");
    Ok(())
}
