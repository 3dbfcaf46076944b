#![cfg(feature = "vista-testing")]
//! The three Vista workers end to end against the fake server, through the public worker API
//! only: loading, seat changes (bulk and per-session poll), removals, outages, a wrong token
//! and a warm start from the dump files.

mod common;

use std::path::Path;
use std::time::Duration;

use cache_worker::vista::testing::FakeVista;
use cache_worker::vista::{Cinemas, Films, SESSION_EXPIRY, Session, Sessions, VistaClient};
use cache_worker::{Event, FetchError, RemovalCause, Worker};
use common::vista::{CINEMAS, FILMS, SESSIONS, by_showtime, client};
use futures_util::StreamExt;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// The three workers of `fake`, each dumping in its directory, started (not yet loaded).
async fn start_three(
    fake: &FakeVista,
    dirs: [&Path; 3],
) -> Result<(Worker<Cinemas>, Worker<Films>, Worker<Sessions>), cache_worker::Error> {
    Ok((
        Cinemas::new(client(fake)).dump_dir(dirs[0]).start().await?,
        Films::new(client(fake)).dump_dir(dirs[1]).start().await?,
        Sessions::new(client(fake))
            .dump_dir(dirs[2])
            .start()
            .await?,
    ))
}

/// A fake server, and a Sessions worker of it dumping in a temp dir (kept while it lives), its
/// collection loaded.
async fn loaded_sessions()
-> Result<(FakeVista, tempfile::TempDir, Worker<Sessions>), Box<dyn std::error::Error>> {
    let fake = FakeVista::start().await;
    let dir = tempfile::tempdir()?;
    let sessions = Sessions::new(client(&fake))
        .dump_dir(dir.path())
        .start()
        .await?;
    sessions.refresh_all().await?;
    Ok((fake, dir, sessions))
}

/// The first event about `id` that `pick` accepts, waiting at most `limit` (a bound against
/// hanging, not a timing assertion).
async fn next_event<S, T>(
    events: &mut S,
    limit: Duration,
    mut pick: impl FnMut(&Event<String, Session>) -> Option<T>,
) -> Option<T>
where
    S: futures_util::Stream<Item = Event<String, Session>> + Unpin,
{
    tokio::time::timeout(limit, async {
        while let Some(event) = events.next().await {
            if let Some(found) = pick(&event) {
                return Some(found);
            }
        }
        None
    })
    .await
    .ok()
    .flatten()
}

/// Waits (at most `limit`) for the `Removed` event of session `id`, and checks it is gone from
/// `sessions`, which held `count` sessions. Gives the cause.
async fn removed<S>(
    (sessions, count): (&Worker<Sessions>, usize),
    events: &mut S,
    limit: Duration,
    id: &str,
) -> RemovalCause
where
    S: futures_util::Stream<Item = Event<String, Session>> + Unpin,
{
    let cause = next_event(events, limit, |event| match event {
        Event::Removed { key, cause, .. } if key == id => Some(*cause),
        _ => None,
    })
    .await
    .expect("a Removed event for the session");
    assert!(sessions.peek(id).is_none());
    assert_eq!(sessions.len(), count - 1);
    cause
}

/// The session that starts last: it is never polled on its own within a test (its poll
/// interval is `None` or minutes), so only a bulk reload sees its changes.
fn latest_session(sessions: &Worker<Sessions>) -> String {
    by_showtime(sessions)
        .pop()
        .map(|s| s.id.clone())
        .expect("sessions are loaded")
}

#[tokio::test(flavor = "multi_thread")]
async fn all_three_load_and_map() -> TestResult {
    let fake = FakeVista::start().await;
    let dirs = [
        tempfile::tempdir()?,
        tempfile::tempdir()?,
        tempfile::tempdir()?,
    ];
    let (cinemas, films, sessions) =
        start_three(&fake, [dirs[0].path(), dirs[1].path(), dirs[2].path()]).await?;

    // A refresh cycle of our own: when it returns, the collection has been loaded whole.
    let report = cinemas.refresh_all().await?;
    assert!(report.bulk && report.failed == 0, "{report:?}");
    let report = films.refresh_all().await?;
    assert!(report.bulk && report.failed == 0, "{report:?}");
    let report = sessions.refresh_all().await?;
    assert!(report.bulk && report.failed == 0, "{report:?}");

    assert_eq!(cinemas.len(), CINEMAS);
    assert_eq!(films.len(), FILMS);
    // The first show is minutes away, so nothing has expired.
    assert_eq!(sessions.len(), SESSIONS);
    assert_eq!(sessions.len(), fake.session_ids().len());

    let delphi = cinemas.peek(&1001).expect("cinema 1001");
    assert_eq!(delphi.name, "Delphi Lux");

    // The article rule and a known rating.
    let film = films.peek("HO00000727").expect("film HO00000727");
    assert_eq!(film.title, "Ein Gauner & Gentleman");
    assert_eq!(film.rating.as_deref(), Some("FSK 6"));
    // "FSK unbek." is an unknown rating.
    let film = films.peek("HO00000890").expect("film HO00000890");
    assert_eq!(film.title, "Rocketman");
    assert_eq!(film.rating, None);

    // Every session points at a film and a cinema that are loaded.
    for id in sessions.keys() {
        let session = sessions.peek(&id).expect("a listed key");
        assert_eq!(session.id, id);
        assert_eq!(fake.seats(&id), Some(session.seats_available));
        assert!(cinemas.peek(&session.cinema_id).is_some(), "{session:?}");
        assert!(films.peek(&session.film_id).is_some(), "{session:?}");
    }
    let session = sessions.peek("1001-17024").expect("session 1001-17024");
    assert_eq!(session.cinema_id, 1001);
    assert_eq!(session.film_id, "HO00000823");

    for worker_stats in [cinemas.stats(), films.stats(), sessions.stats()] {
        assert_eq!(worker_stats.restored, 0, "a cold start");
        assert!(worker_stats.bulk_loads >= 1, "{worker_stats:?}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn seat_change_after_a_bulk_reload_is_an_update() -> TestResult {
    let (fake, _dir, sessions) = loaded_sessions().await?;
    let id = &latest_session(&sessions);
    let before = sessions.peek(id).expect("loaded").seats_available;
    let seats = before + 7;

    let mut events = sessions.subscribe();
    assert!(fake.set_seats(id, seats));
    let report = sessions.refresh_all().await?;
    assert!(report.bulk, "{report:?}");
    assert_eq!(report.failed, 0, "{report:?}");
    assert!(report.updated >= 1, "{report:?}");

    let (old, new) = next_event(&mut events, Duration::from_secs(10), |event| match event {
        Event::Updated {
            key,
            value,
            previous,
            ..
        } if key == id => Some((previous.seats_available, value.seats_available)),
        _ => None,
    })
    .await
    .expect("an Updated event for the session");
    assert_eq!((old, new), (before, seats));
    assert_eq!(
        sessions.peek(id).expect("still there").seats_available,
        seats
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn seat_change_close_to_the_showtime_is_polled() -> TestResult {
    let (fake, _dir, sessions) = loaded_sessions().await?;

    // The earliest show starts about 5 minutes from now: it is polled every 10 s.
    let tz = fake.time_zone().clone();
    let now = jiff::Timestamp::now();
    let earliest = by_showtime(&sessions).into_iter().next().expect("sessions");
    assert_eq!(
        earliest.poll_interval(now, &tz, Duration::from_secs(3600)),
        Some(Duration::from_secs(10)),
        "{earliest:?}"
    );
    let bulk_loads = sessions.stats().bulk_loads;

    let mut events = sessions.subscribe();
    let seats = earliest.seats_available + 11;
    assert!(fake.set_seats(&earliest.id, seats));
    // No refresh_all: the session's own poll (every 10 s) must see it. The limit only keeps a
    // broken poll from hanging the test.
    let new = next_event(&mut events, Duration::from_secs(30), |event| match event {
        Event::Updated { key, value, .. } if *key == earliest.id => Some(value.seats_available),
        _ => None,
    })
    .await
    .expect("the per-session poll reported the seat change");
    assert_eq!(new, seats);
    assert_eq!(
        sessions.stats().bulk_loads,
        bulk_loads,
        "seen by the per-session poll, not by a bulk reload"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn removed_upstream_is_gone() -> TestResult {
    let (fake, _dir, sessions) = loaded_sessions().await?;
    let (count, id) = (sessions.len(), &latest_session(&sessions));
    assert!(sessions.peek(id).is_some());

    let mut events = sessions.subscribe();
    assert!(fake.remove_session(id));
    let report = sessions.refresh_all().await?;
    assert_eq!(report.removed, 1, "{report:?}");

    let cause = removed((&sessions, count), &mut events, Duration::from_secs(10), id).await;
    assert_eq!(cause, RemovalCause::Gone);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_expires_twenty_minutes_after_its_showtime() -> TestResult {
    let (fake, _dir, sessions) = loaded_sessions().await?;
    let (count, id) = (sessions.len(), &latest_session(&sessions));

    // Reschedule it so that it started 20 minutes minus 2 seconds ago: it expires in 2 s.
    let started = fake
        .time_zone()
        .to_datetime(jiff::Timestamp::now())
        .checked_sub(SESSION_EXPIRY)?
        .checked_add(Duration::from_secs(2))?
        .round(jiff::Unit::Second)?;
    assert!(fake.set_showtime(id, started));
    let mut events = sessions.subscribe();
    let report = sessions.refresh_all().await?;
    assert_eq!(report.updated, 1, "{report:?}");
    assert_eq!(sessions.peek(id).expect("still there").showtime, started);

    let cause = removed((&sessions, count), &mut events, Duration::from_secs(30), id).await;
    assert_eq!(cause, RemovalCause::Expired);
    assert!(sessions.stats().expired >= 1);

    // Vista still lists it, but a reload does not bring an expired session back.
    assert!(fake.session_ids().contains(id));
    let report = sessions.refresh_all().await?;
    assert_eq!(report.failed, 0, "{report:?}");
    assert!(
        sessions.peek(id).is_none(),
        "{report:?} {:?}",
        sessions.peek(id)
    );
    assert_eq!(sessions.len(), count - 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_outage_removes_nothing_and_recovers() -> TestResult {
    let (fake, _dir, sessions) = loaded_sessions().await?;
    let (count, id) = (sessions.len(), &latest_session(&sessions));
    let seats = sessions.peek(id).expect("loaded").seats_available;

    fake.fail_until_cleared();
    let report = sessions.refresh_all().await?;
    assert_eq!(report.failed, 1, "{report:?}");
    assert_eq!(report.removed, 0, "{report:?}");
    assert_eq!(sessions.len(), count, "nothing removed during the outage");
    // Reads are still served from memory.
    assert_eq!(sessions.peek(id).expect("kept").seats_available, seats);
    assert_eq!(
        sessions.get(id).await.map(|s| s.seats_available),
        Some(seats)
    );
    assert!(sessions.stats().load_errors >= 1);

    fake.clear_failures();
    assert!(fake.set_seats(id, seats + 3));
    let report = sessions.refresh_all().await?;
    assert_eq!(report.failed, 0, "{report:?}");
    assert!(report.bulk, "{report:?}");
    assert_eq!(sessions.len(), count);
    assert_eq!(sessions.peek(id).expect("kept").seats_available, seats + 3);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_token_is_an_error_that_names_the_token() -> TestResult {
    let fake = FakeVista::start().await;
    let dir = tempfile::tempdir()?;
    let client = VistaClient::new(fake.base_url(), "not-the-token")?.with_attempts(1);
    let sessions = Sessions::new(client).dump_dir(dir.path()).start().await?;

    let report = sessions.refresh_all().await?;
    assert_eq!(report.failed, 1, "{report:?}");
    assert!(sessions.is_empty());

    match sessions.fetch(&"1001-17024".to_owned()).await {
        Err(FetchError::Load(error)) => {
            let message = error.to_string();
            assert!(message.contains("token"), "{message}");
            assert!(message.contains("401"), "{message}");
        }
        other => panic!("expected FetchError::Load, got {other:?}"),
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn restarts_warm_from_the_dump_dir() -> TestResult {
    let fake = FakeVista::start().await;
    let dir = tempfile::tempdir()?;

    let (cinemas, films, sessions) = start_three(&fake, [dir.path(); 3]).await?;
    cinemas.refresh_all().await?;
    films.refresh_all().await?;
    sessions.refresh_all().await?;
    let counts = [cinemas.len(), films.len(), sessions.len()];
    assert_eq!(counts, [CINEMAS, FILMS, SESSIONS]);
    cinemas.shutdown().await.expect("shutdown");
    films.shutdown().await.expect("shutdown");
    sessions.shutdown().await.expect("shutdown");
    drop((cinemas, films, sessions));
    for file in ["cinemas.dump", "films.dump", "sessions.dump"] {
        assert!(dir.path().join(file).is_file(), "{file} written");
    }

    // Served from the dumps at once, before anything is loaded, even with upstream down.
    fake.fail_until_cleared();
    let (cinemas, films, sessions) = start_three(&fake, [dir.path(); 3]).await?;
    let restored = [
        cinemas.stats().restored,
        films.stats().restored,
        sessions.stats().restored,
    ];
    assert_eq!(restored, counts.map(|n| n as u64));
    assert_eq!(
        cinemas.peek(&1001).map(|c| c.name.clone()).as_deref(),
        Some("Delphi Lux")
    );
    assert!(sessions.peek("1001-17024").is_some());
    fake.clear_failures();
    Ok(())
}
