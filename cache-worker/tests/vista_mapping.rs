#![cfg(feature = "vista")]
//! The mapping rules of the original client, on hand-made rows and on the recorded feed.

use cache_worker::vista::{
    Cinema, Film, Session, VistaError, film_title, parse_cinemas, parse_films, parse_sessions,
};
use jiff::civil::date;
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};

const CINEMAS: &str = include_str!("../fixtures/vista/Cinemas.json");
const FILMS: &str = include_str!("../fixtures/vista/GetScheduledFilms.json");
const SESSIONS: &str = include_str!("../fixtures/vista/Sessions.json");

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn berlin() -> TimeZone {
    TimeZone::posix("CET-1CEST,M3.5.0,M10.5.0/3").expect("a valid POSIX time zone")
}

fn session_row(id: &str, seats: &str, showtime: &str) -> String {
    let cinema = id.split('-').next().unwrap_or_default();
    format!(
        r#"{{"ID":"{id}","CinemaId":"{cinema}","ScheduledFilmId":"HO00000823","SessionId":"1",
            "Showtime":"{showtime}","SessionBusinessDate":"2019-04-23T00:00:00",
            "ScreenName":"Kino 2","SeatsAvailable":{seats},"SessionAttributesNames":["OV","OmU"]}}"#
    )
}

fn feed(rows: &[String]) -> String {
    format!(r#"{{"odata.metadata":"x","value":[{}]}}"#, rows.join(","))
}

#[test]
fn a_session_row_maps_to_a_session() -> TestResult {
    let json = feed(&[session_row("1001-17024", "87", "2019-04-23T21:00:00")]);
    let parsed = parse_sessions(json.as_bytes())?;
    assert_eq!(parsed.skipped, 0);
    assert_eq!(
        parsed.items,
        vec![Session {
            id: "1001-17024".into(),
            cinema_id: 1001,
            session_id: 17024,
            film_id: "HO00000823".into(),
            showtime: date(2019, 4, 23).at(21, 0, 0, 0),
            business_date: date(2019, 4, 23),
            screen_name: "Kino 2".into(),
            seats_available: 87,
            version: "OmU".into(),
            attributes: vec!["OV".into(), "OmU".into()],
        }]
    );
    Ok(())
}

#[test]
fn the_business_date_is_the_date_part_even_after_midnight() -> TestResult {
    let row = session_row("1001-5", "3", "2019-04-24T01:00:00");
    let parsed = parse_sessions(feed(&[row]).as_bytes())?;
    assert_eq!(parsed.items[0].showtime, date(2019, 4, 24).at(1, 0, 0, 0));
    assert_eq!(parsed.items[0].business_date, date(2019, 4, 23));
    Ok(())
}

#[test]
fn one_bad_session_row_among_good_ones_is_skipped() -> TestResult {
    let good_before = session_row("1001-1", "10", "2019-04-23T21:00:00");
    let good_after = session_row("1002-2", "20", "2019-04-23T22:00:00");
    let bad_rows = [
        session_row("1001/17024", "10", "2019-04-23T21:00:00"),
        session_row("1001-", "10", "2019-04-23T21:00:00"),
        session_row("1001-3", "-1", "2019-04-23T21:00:00"),
        session_row("1001-3", "\"ten\"", "2019-04-23T21:00:00"),
        session_row("1001-3", "10", "next tuesday"),
        session_row("1001-3", "10", "2019-04-23T21:00:00Z"),
        r#"{"ID":"1001-3","CinemaId":"1002","ScheduledFilmId":"HO1","Showtime":"2019-04-23T21:00:00",
            "SessionBusinessDate":"2019-04-23T00:00:00","SeatsAvailable":1}"#
            .to_owned(),
        r#"{"ID":"1001-3","CinemaId":"1001"}"#.to_owned(),
        "42".to_owned(),
        "null".to_owned(),
        "[]".to_owned(),
    ];
    for bad in bad_rows {
        let json = feed(&[good_before.clone(), bad.clone(), good_after.clone()]);
        let parsed = parse_sessions(json.as_bytes())?;
        assert_eq!(parsed.skipped, 1, "row {bad}");
        let ids: Vec<_> = parsed.items.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["1001-1", "1002-2"], "row {bad}");
    }
    Ok(())
}

#[test]
fn optional_session_fields_may_be_missing_or_null() -> TestResult {
    let json = r#"{"value":[{"ID":"1001-3","CinemaId":"1001","ScheduledFilmId":"HO1",
        "Showtime":"2019-04-23T21:00:00","SessionBusinessDate":"2019-04-23",
        "SeatsAvailable":1,"SessionAttributesNames":null}]}"#;
    let parsed = parse_sessions(json.as_bytes())?;
    assert_eq!(parsed.skipped, 0);
    assert_eq!(parsed.items[0].screen_name, "");
    assert_eq!(parsed.items[0].version, "");
    assert!(parsed.items[0].attributes.is_empty());
    Ok(())
}

#[test]
fn bad_cinema_and_film_rows_are_skipped() -> TestResult {
    let cinemas = r#"{"value":[{"ID":"1001","Name":"Delphi Lux"},{"ID":"x1","Name":"Broken"},
        {"ID":"1002"},{"ID":"1003","Name":"Rollberg"}]}"#;
    let parsed = parse_cinemas(cinemas.as_bytes())?;
    assert_eq!(parsed.skipped, 2);
    assert_eq!(
        parsed.items,
        vec![
            Cinema {
                id: 1001,
                name: "Delphi Lux".into()
            },
            Cinema {
                id: 1003,
                name: "Rollberg".into()
            },
        ]
    );

    let films = r#"{"value":[
        {"ScheduledFilmId":"HO1","CinemaId":"1001","Title":"Boot, Das","Rating":"FSK 12"},
        {"ScheduledFilmId":42,"CinemaId":"1001","Title":"Broken","Rating":"FSK 12"},
        {"ScheduledFilmId":"HO2","CinemaId":"Mitte","Title":"Broken","Rating":"FSK 12"},
        {"ScheduledFilmId":"HO1","CinemaId":"1003","Title":"Other title","Rating":"FSK 16"},
        {"ScheduledFilmId":"HO1","CinemaId":"1002","Title":"Boot, Das","Rating":"FSK 12"},
        {"ScheduledFilmId":"HO3","Title":"Foo,     The","Rating":"FSK unbek."}]}"#;
    let parsed = parse_films(films.as_bytes())?;
    assert_eq!(parsed.skipped, 2);
    assert_eq!(
        parsed.items,
        vec![
            Film {
                id: "HO1".into(),
                title: "Das Boot".into(),
                rating: Some("FSK 12".into()),
                cinema_ids: vec![1001, 1002, 1003],
            },
            Film {
                id: "HO3".into(),
                title: "The Foo".into(),
                rating: None,
                cinema_ids: vec![]
            },
        ]
    );
    Ok(())
}

#[test]
fn malformed_json_is_an_error_not_a_panic() {
    for json in [
        "",
        "not json",
        r#"{"value":["#,
        r#"{"value":[{"ID":"1001","Name":"x"}"#,
        "[]",
        r#"{"novalue":[]}"#,
        r#"{"value":{}}"#,
        r#"{"value":null}"#,
    ] {
        match parse_cinemas(json.as_bytes()) {
            Err(VistaError::Json {
                collection: "Cinemas",
                ..
            }) => {}
            other => panic!("{json:?} gave {other:?}"),
        }
    }
    let error = parse_sessions(b"{").expect_err("malformed");
    assert!(
        error
            .to_string()
            .contains("malformed JSON in the Vista Sessions answer"),
        "{error}"
    );
}

#[test]
fn an_empty_feed_is_empty() -> TestResult {
    let parsed = parse_sessions(br#"{"odata.metadata":"x","value":[]}"#)?;
    assert!(parsed.items.is_empty());
    assert_eq!(parsed.skipped, 0);
    Ok(())
}

#[test]
fn a_byte_order_mark_is_ignored() -> TestResult {
    let parsed = parse_cinemas(
        "\u{feff}{\"value\":[{\"ID\":\"1001\",\"Name\":\"Delphi Lux\"}]}".as_bytes(),
    )?;
    assert_eq!(parsed.items.len(), 1);
    Ok(())
}

#[test]
fn the_recorded_feed_parses_whole() -> TestResult {
    let cinemas = parse_cinemas(CINEMAS.as_bytes())?;
    assert_eq!((cinemas.items.len(), cinemas.skipped), (13, 0));
    assert_eq!(
        cinemas.items[0],
        Cinema {
            id: 1001,
            name: "Delphi Lux".into()
        }
    );

    let films = parse_films(FILMS.as_bytes())?;
    assert_eq!((films.items.len(), films.skipped), (54, 0));
    let total_rows: usize = films.items.iter().map(|f| f.cinema_ids.len()).sum();
    assert_eq!(total_rows, 114, "every row's cinema is kept");
    let gauner = films
        .items
        .iter()
        .find(|f| f.title.contains("Gauner"))
        .ok_or("Gauner & Gentleman is in the feed")?;
    assert_eq!(gauner.title, "Ein Gauner & Gentleman");
    assert!(
        films
            .items
            .iter()
            .all(|f| f.rating.as_deref() != Some("FSK unbek."))
    );
    assert!(films.items.iter().any(|f| f.rating.is_none()));

    let sessions = parse_sessions(SESSIONS.as_bytes())?;
    assert_eq!((sessions.items.len(), sessions.skipped), (362, 0));
    let first = &sessions.items[0];
    assert_eq!(
        (first.id.as_str(), first.cinema_id, first.session_id),
        ("1001-17024", 1001, 17024)
    );
    assert_eq!(first.version, "OmU");
    let count = |v: &str| sessions.items.iter().filter(|s| s.version == v).count();
    // 131 OmU + 18 OmU/OV + 1 OmU/OmUeng/OV; 54 OV; 158 without.
    assert_eq!(
        (count("OmU"), count("OV"), count("OmUeng"), count("")),
        (150, 54, 0, 158)
    );
    Ok(())
}

#[test]
fn models_survive_bincode_as_cache_values() -> TestResult {
    let config = bincode::config::standard();
    let sessions = parse_sessions(SESSIONS.as_bytes())?.items;
    let bytes = bincode::serde::encode_to_vec(&sessions, config)?;
    let (back, _): (Vec<Session>, usize) = bincode::serde::decode_from_slice(&bytes, config)?;
    assert_eq!(back, sessions);

    let films = parse_films(FILMS.as_bytes())?.items;
    let bytes = bincode::serde::encode_to_vec(&films, config)?;
    let (back, _): (Vec<Film>, usize) = bincode::serde::decode_from_slice(&bytes, config)?;
    assert_eq!(back, films);

    let cinemas = parse_cinemas(CINEMAS.as_bytes())?.items;
    let bytes = bincode::serde::encode_to_vec(&cinemas, config)?;
    let (back, _): (Vec<Cinema>, usize) = bincode::serde::decode_from_slice(&bytes, config)?;
    assert_eq!(back, cinemas);
    Ok(())
}

#[test]
fn article_rule_cases_of_the_original_client() {
    assert_eq!(
        film_title("Schule auf dem Zauberberg, Die"),
        "Die Schule auf dem Zauberberg"
    );
    assert_eq!(film_title("Foo,     The"), "The Foo");
    assert_eq!(
        film_title("A, Whole, lotta, commas"),
        "A, Whole, lotta, commas"
    );
}

fn session_at(showtime: jiff::civil::DateTime) -> Session {
    Session {
        id: "1001-1".into(),
        cinema_id: 1001,
        session_id: 1,
        film_id: "HO1".into(),
        showtime,
        business_date: showtime.date(),
        screen_name: String::new(),
        seats_available: 1,
        version: String::new(),
        attributes: vec![],
    }
}

#[test]
fn showtimes_are_local_and_correct_across_daylight_saving() -> TestResult {
    let tz = berlin();
    for (local, utc) in [
        // Winter: UTC+1; summer: UTC+2.
        (date(2019, 1, 10).at(20, 0, 0, 0), "2019-01-10T19:00:00Z"),
        (date(2019, 4, 23).at(21, 0, 0, 0), "2019-04-23T19:00:00Z"),
        // Spring gap: 02:30 does not exist; it is moved forward by the gap to 03:30 CEST.
        (date(2025, 3, 30).at(2, 30, 0, 0), "2025-03-30T01:30:00Z"),
        // Autumn fold: 02:30 exists twice; the earlier one (still CEST) is taken.
        (date(2025, 10, 26).at(2, 30, 0, 0), "2025-10-26T00:30:00Z"),
    ] {
        assert_eq!(
            session_at(local).starts_at(&tz)?,
            utc.parse::<Timestamp>()?,
            "{local}"
        );
    }
    // From midnight to 03:00 on the spring-forward night is 2 real hours, not 3.
    let now: Timestamp = "2025-03-29T23:00:00Z".parse()?;
    let session = session_at(date(2025, 3, 30).at(3, 0, 0, 0));
    assert_eq!(session.secs_until_showtime(now, &tz), 2 * 3600);
    assert_eq!(session.secs_until_showtime(now + 3.hours(), &tz), -3600);
    // And in UTC the same wall time is an hour later.
    assert_eq!(session.secs_until_showtime(now, &TimeZone::UTC), 4 * 3600);
    Ok(())
}

#[test]
fn a_session_knows_its_poll_interval() -> TestResult {
    let tz = berlin();
    let ttl = std::time::Duration::from_secs(3600);
    let session = session_at(date(2019, 4, 23).at(21, 0, 0, 0));
    let start = session.starts_at(&tz)?;
    let interval =
        |secs_before: i64| session.poll_interval(start - secs_before.seconds(), &tz, ttl);
    assert_eq!(interval(1800), Some(std::time::Duration::from_secs(260)));
    assert_eq!(interval(300), Some(std::time::Duration::from_secs(10)));
    assert_eq!(interval(3600), None);
    assert_eq!(interval(-1200), None);
    Ok(())
}
