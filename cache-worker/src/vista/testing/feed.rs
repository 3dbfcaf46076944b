//! The recorded feed, moved in time, and the rows the fake can serve broken.

use std::io;
use std::time::Duration;

use jiff::tz::TimeZone;
use jiff::{RoundMode, SignedDuration, Timestamp, Unit, civil};
use serde_json::{Map, Value};

use super::Route;

pub(super) const CINEMAS_JSON: &str = include_str!("../../../fixtures/vista/Cinemas.json");
pub(super) const FILMS_JSON: &str = include_str!("../../../fixtures/vista/GetScheduledFilms.json");
pub(super) const SESSIONS_JSON: &str = include_str!("../../../fixtures/vista/Sessions.json");

/// A show before this hour belongs to the previous business day (moved shows are given
/// business dates by this rule).
const BUSINESS_DAY_STARTS: SignedDuration = SignedDuration::from_hours(6);

/// One OData collection: its metadata URL and its rows.
#[derive(Clone)]
pub(super) struct Collection {
    pub(super) metadata: String,
    pub(super) rows: Vec<Map<String, Value>>,
}

pub(super) fn row_id(row: &Map<String, Value>) -> Option<&str> {
    row.get("ID").and_then(Value::as_str)
}

pub(super) fn find<'a>(rows: &'a [Map<String, Value>], id: &str) -> Option<&'a Map<String, Value>> {
    rows.iter().find(|row| row_id(row) == Some(id))
}

pub(super) fn set_seats(rows: &mut [Map<String, Value>], id: &str, seats: u32) -> bool {
    match rows.iter_mut().find(|row| row_id(row) == Some(id)) {
        Some(row) => {
            row.insert("SeatsAvailable".to_owned(), Value::from(seats));
            true
        }
        None => false,
    }
}

fn invalid_data(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

/// Reads a recorded answer.
pub(super) fn load(json: &str) -> io::Result<Collection> {
    #[derive(serde::Deserialize)]
    struct Envelope {
        #[serde(rename = "odata.metadata")]
        metadata: String,
        value: Vec<Map<String, Value>>,
    }
    let envelope: Envelope = serde_json::from_str(json)
        .map_err(|e| invalid_data(format!("recorded Vista answer: {e}")))?;
    Ok(Collection {
        metadata: envelope.metadata,
        rows: envelope.value,
    })
}

/// Moves the showtimes so that the earliest starts `first_show_in` from `now` (see
/// [`FakeVista`](super::FakeVista)); returns the moved sessions and the shift.
pub(super) fn shift_sessions(
    mut sessions: Collection,
    time_zone: &TimeZone,
    now: Timestamp,
    first_show_in: Duration,
) -> io::Result<(Collection, SignedDuration)> {
    let showtime = |row: &Map<String, Value>| -> io::Result<civil::DateTime> {
        let raw = row
            .get("Showtime")
            .and_then(Value::as_str)
            .unwrap_or_default();
        raw.parse()
            .map_err(|e| invalid_data(format!("recorded Showtime {raw:?}: {e}")))
    };
    let Some(earliest) = sessions
        .rows
        .iter()
        .map(showtime)
        .collect::<io::Result<Vec<_>>>()?
        .into_iter()
        .min()
    else {
        return Ok((sessions, SignedDuration::ZERO));
    };
    let out_of_range = |e: jiff::Error| invalid_data(format!("moving the showtimes: {e}"));
    let first_show_in = SignedDuration::try_from(first_show_in).map_err(out_of_range)?;
    let target = time_zone
        .to_datetime(now)
        .checked_add(first_show_in)
        .and_then(|t| {
            t.round(
                civil::DateTimeRound::new()
                    .smallest(Unit::Minute)
                    .mode(RoundMode::Ceil),
            )
        })
        .map_err(out_of_range)?;
    let shift = target.duration_since(earliest);
    for row in &mut sessions.rows {
        let moved = showtime(row)?.checked_add(shift).map_err(out_of_range)?;
        set_showtime_of(row, moved).map_err(out_of_range)?;
    }
    Ok((sessions, shift))
}

/// Sets a session row's showtime and the business date that follows from it (a show before
/// 6 AM belongs to the previous day).
pub(super) fn set_showtime_of(
    row: &mut Map<String, Value>,
    showtime: civil::DateTime,
) -> Result<(), jiff::Error> {
    let business_date = showtime.checked_sub(BUSINESS_DAY_STARTS)?.date();
    row.insert("Showtime".to_owned(), Value::from(showtime.to_string()));
    row.insert(
        "SessionBusinessDate".to_owned(),
        Value::from(format!("{business_date}T00:00:00")),
    );
    Ok(())
}

/// A row in the shape of `route`'s rows that the client cannot read.
pub(super) fn bad_row_of(route: Route) -> Map<String, Value> {
    let row = match route {
        Route::Cinemas => serde_json::json!({ "ID": "not-a-number", "Name": "Broken" }),
        Route::Films => serde_json::json!({
            "ID": "1001-42", "ScheduledFilmId": 42, "CinemaId": "1001",
            "Title": "Broken", "Rating": "FSK 12"
        }),
        Route::Sessions => serde_json::json!({
            "ID": "9999-1", "CinemaId": "9999", "ScheduledFilmId": "HO00000001",
            "SessionId": "1", "Showtime": "not a time", "SessionBusinessDate": "2019-04-23T00:00:00",
            "ScreenName": "Kino 0", "SeatsAvailable": 10, "SessionAttributesNames": []
        }),
    };
    match row {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}
