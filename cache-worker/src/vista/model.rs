//! The cached values — [`Session`], [`Cinema`], [`Film`] — and the mapping rules that turn the
//! rows of Vista's OData answers into them.
//!
//! The stored types are plain serde structs (they go through bincode in dump files); the OData
//! rows are read through private `*Row` structs, one row at a time, so that one unreadable row
//! is skipped and counted instead of failing the whole feed.

use std::collections::HashMap;
use std::time::Duration;

use jiff::tz::TimeZone;
use jiff::{Timestamp, civil};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::error::VistaError;

/// A cinema, from `OData.svc/Cinemas`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cinema {
    /// Vista's `ID`, a string of digits read as a number (`"1001"` → `1001`).
    pub id: u32,
    /// Vista's `Name`, as given.
    pub name: String,
}

/// A film, from `OData.svc/GetScheduledFilms`.
///
/// Vista answers one row per film *and cinema*; [`parse_films`] merges them into one `Film` per
/// `ScheduledFilmId`, keeping the title and rating of the first row and the ids of every cinema.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Film {
    /// Vista's `ScheduledFilmId`, such as `"HO00000720"`.
    pub id: String,
    /// Vista's `Title` after the article rule of [`film_title`]:
    /// `"Schule auf dem Zauberberg, Die"` → `"Die Schule auf dem Zauberberg"`.
    pub title: String,
    /// Vista's `Rating` (`"FSK 12"`), or `None` where it is unknown (`"FSK unbek."`, empty or
    /// missing); see [`film_rating`].
    pub rating: Option<String>,
    /// The cinemas that schedule this film, ascending, without duplicates.
    pub cinema_ids: Vec<u32>,
}

/// A session (one showing of a film), from `OData.svc/Sessions`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// Vista's `ID`, `"<CinemaId>-<SessionId>"` such as `"1001-17024"`: the cache key.
    pub id: String,
    /// The cinema, from `CinemaId` (which must agree with the first part of `id`).
    pub cinema_id: u32,
    /// The session number within its cinema, the second part of `id`.
    pub session_id: u32,
    /// The film's `ScheduledFilmId`: the key of a [`Film`].
    pub film_id: String,
    /// When it starts, as the cinema's naive local wall-clock time (Vista sends no zone). See
    /// [`Session::starts_at`] for the instant.
    pub showtime: civil::DateTime,
    /// The business day it belongs to: the date part of `SessionBusinessDate`. A show at 1 AM
    /// belongs to the day before.
    pub business_date: civil::Date,
    /// Vista's `ScreenName`, such as `"Kino 2"` (empty if missing).
    pub screen_name: String,
    /// Free seats, Vista's `SeatsAvailable`.
    pub seats_available: u32,
    /// The language version, the highest-priority attribute (see [`session_version`]):
    /// `"OmU"`, `"OV"`, `"OmUeng"` or `""`.
    pub version: String,
    /// All of Vista's `SessionAttributesNames`, as given.
    pub attributes: Vec<String>,
}

impl Session {
    /// The instant the session starts: its naive [`showtime`](Session::showtime) read in the
    /// cinema's time zone `tz`.
    ///
    /// Daylight-saving changes use jiff's *compatible* disambiguation (as RFC 5545 and
    /// `java.time` do): a wall time that does not exist (in the spring-forward gap, such as 02:30
    /// on the last Sunday of March in Berlin) is moved forward by the length of the gap (03:30
    /// summer time); a wall time that exists twice (in the autumn fold) is the earlier of the
    /// two, so a session is polled too early rather than too late.
    ///
    /// # Errors
    ///
    /// Only for dates at the very ends of jiff's supported range (years ±9999).
    ///
    /// ```
    /// # use cache_worker::vista::Session;
    /// # let session = Session {
    /// #     id: "1001-1".into(), cinema_id: 1001, session_id: 1, film_id: "HO1".into(),
    /// #     showtime: jiff::civil::date(2025, 3, 30).at(2, 30, 0, 0),
    /// #     business_date: jiff::civil::date(2025, 3, 29), screen_name: String::new(),
    /// #     seats_available: 10, version: String::new(), attributes: vec![],
    /// # };
    /// let berlin = jiff::tz::TimeZone::posix("CET-1CEST,M3.5.0,M10.5.0/3")?;
    /// // 02:30 does not exist that night: the show starts at 03:30 summer time (01:30 UTC).
    /// assert_eq!(session.starts_at(&berlin)?.to_string(), "2025-03-30T01:30:00Z");
    /// # Ok::<(), jiff::Error>(())
    /// ```
    pub fn starts_at(&self, tz: &TimeZone) -> Result<Timestamp, jiff::Error> {
        tz.to_ambiguous_timestamp(self.showtime).compatible()
    }

    /// Seconds from `now` until the session starts (negative once it has started), with the
    /// showtime read in `tz` as [`starts_at`](Session::starts_at) does. Truncated toward zero.
    ///
    /// A showtime that cannot be placed in time (years ±9999) saturates to `i64::MAX` or
    /// `i64::MIN`.
    #[must_use]
    pub fn secs_until_showtime(&self, now: Timestamp, tz: &TimeZone) -> i64 {
        match self.starts_at(tz) {
            Ok(start) => start.duration_since(now).as_secs(),
            Err(_) if self.showtime.year() > 0 => i64::MAX,
            Err(_) => i64::MIN,
        }
    }

    /// When this session should be polled next on its own: [`poll_interval`] of
    /// [`secs_until_showtime`](Session::secs_until_showtime). `None` means no individual poll.
    ///
    /// [`poll_interval`]: crate::vista::poll_interval
    #[must_use]
    pub fn poll_interval(&self, now: Timestamp, tz: &TimeZone, ttl: Duration) -> Option<Duration> {
        super::poll::poll_interval(self.secs_until_showtime(now, tz), ttl)
    }
}

/// The rows of one answer that could be read, and how many could not.
///
/// An unreadable row is skipped and logged (`tracing` warning with the collection, the row's
/// position and the reason); the rest of the feed is kept.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Parsed<T> {
    /// The rows that were read, in the order of the answer.
    pub items: Vec<T>,
    /// How many rows were skipped.
    pub skipped: usize,
}

/// Moves a trailing article of a film title to the front, as Vista's titles are sorted by
/// their main word.
///
/// The articles are the, der, die, das, a, ein and eine, matched case-insensitively after the
/// *last* comma; the article keeps its spelling. Anything else is left as it is (surrounding
/// whitespace trimmed).
///
/// ```
/// use cache_worker::vista::film_title;
///
/// assert_eq!(film_title("Schule auf dem Zauberberg, Die"), "Die Schule auf dem Zauberberg");
/// assert_eq!(film_title("Foo,     The"), "The Foo");
/// assert_eq!(film_title("A, Whole, lotta, commas"), "A, Whole, lotta, commas");
/// ```
#[must_use]
pub fn film_title(raw: &str) -> String {
    const ARTICLES: [&str; 7] = ["the", "der", "die", "das", "a", "ein", "eine"];
    let raw = raw.trim();
    if let Some((rest, tail)) = raw.rsplit_once(',') {
        let article = tail.trim();
        let rest = rest.trim_end();
        if !rest.is_empty() && ARTICLES.iter().any(|a| a.eq_ignore_ascii_case(article)) {
            return format!("{article} {rest}");
        }
    }
    raw.to_owned()
}

/// A film's rating: `"FSK unbek."` ("unknown"), an empty or a missing rating are `None`;
/// anything else is kept as given (`"FSK 12"`).
///
/// ```
/// use cache_worker::vista::film_rating;
///
/// assert_eq!(film_rating(Some("FSK 12")).as_deref(), Some("FSK 12"));
/// assert_eq!(film_rating(Some("FSK unbek.")), None);
/// ```
#[must_use]
pub fn film_rating(raw: Option<&str>) -> Option<String> {
    match raw {
        None => None,
        Some(rating) if rating.trim().is_empty() || rating.trim() == "FSK unbek." => None,
        Some(rating) => Some(rating.to_owned()),
    }
}

/// A session's language version: its highest-priority attribute, `OmU` > `OV` > `OmUeng`,
/// or `""` if it has none of them.
///
/// ```
/// use cache_worker::vista::session_version;
///
/// assert_eq!(session_version(&["OV", "OmU"]), "OmU");
/// assert_eq!(session_version(&["something_else", "OV"]), "OV");
/// assert_eq!(session_version::<&str>(&[]), "");
/// ```
#[must_use]
pub fn session_version<S: AsRef<str>>(attributes: &[S]) -> &'static str {
    const PRIORITY: [&str; 3] = ["OmU", "OV", "OmUeng"];
    PRIORITY
        .into_iter()
        .find(|version| attributes.iter().any(|a| a.as_ref().trim() == *version))
        .unwrap_or("")
}

/// Splits a session id `"<CinemaId>-<SessionId>"` into its two numbers.
///
/// Both parts must be non-empty ASCII digits that fit a `u32`; anything else is `None`.
///
/// ```
/// use cache_worker::vista::parse_session_id;
///
/// assert_eq!(parse_session_id("1001-17024"), Some((1001, 17024)));
/// assert_eq!(parse_session_id("1001"), None);
/// ```
#[must_use]
pub fn parse_session_id(id: &str) -> Option<(u32, u32)> {
    let (cinema, session) = id.split_once('-')?;
    Some((parse_digits(cinema)?, parse_digits(session)?))
}

/// A string of ASCII digits as a `u32` (no sign, no spaces).
fn parse_digits(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Reads an `OData.svc/Cinemas` answer.
///
/// # Errors
///
/// [`VistaError::Json`] if the answer is not `{"value": [...]}`; single bad rows are skipped.
pub fn parse_cinemas(json: &[u8]) -> Result<Parsed<Cinema>, VistaError> {
    Ok(collect(
        "Cinemas",
        parse_rows(json, "Cinemas", CinemaRow::into_cinema)?,
    ))
}

/// Reads an `OData.svc/GetScheduledFilms` answer, merging the rows of one film (one per
/// cinema) into one [`Film`].
///
/// # Errors
///
/// [`VistaError::Json`] if the answer is not `{"value": [...]}`; single bad rows are skipped.
pub fn parse_films(json: &[u8]) -> Result<Parsed<Film>, VistaError> {
    let rows = collect(
        "GetScheduledFilms",
        parse_rows(json, "GetScheduledFilms", FilmRow::into_film)?,
    );
    let mut films: Vec<Film> = Vec::with_capacity(rows.items.len());
    let mut index: HashMap<String, usize> = HashMap::with_capacity(rows.items.len());
    for film in rows.items {
        match index.get(&film.id) {
            Some(&i) => films[i].cinema_ids.extend(film.cinema_ids),
            None => {
                index.insert(film.id.clone(), films.len());
                films.push(film);
            }
        }
    }
    for film in &mut films {
        film.cinema_ids.sort_unstable();
        film.cinema_ids.dedup();
    }
    Ok(Parsed {
        items: films,
        skipped: rows.skipped,
    })
}

/// Reads an `OData.svc/Sessions` answer.
///
/// # Errors
///
/// [`VistaError::Json`] if the answer is not `{"value": [...]}`; single bad rows are skipped.
pub fn parse_sessions(json: &[u8]) -> Result<Parsed<Session>, VistaError> {
    Ok(collect(
        "Sessions",
        parse_rows(json, "Sessions", SessionRow::into_session)?,
    ))
}

/// Reads the answer to `Sessions?$filter=ID eq '<id>'`: the session, `None` if the answer has
/// no row with that id, or an error if its row cannot be read (an unreadable row is not proof
/// that the session is gone).
pub(crate) fn parse_one_session(json: &[u8], id: &str) -> Result<Option<Session>, VistaError> {
    let mut unreadable = None;
    for row in parse_rows(json, "Sessions", SessionRow::into_session)? {
        match row {
            Ok(session) if session.id == id => return Ok(Some(session)),
            Ok(_) => {}
            Err(reason) => unreadable = Some(reason),
        }
    }
    match unreadable {
        Some(reason) => Err(VistaError::InvalidRow {
            collection: "Sessions",
            reason,
        }),
        None => Ok(None),
    }
}

/// The OData envelope; rows stay raw so each is read on its own.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    value: Vec<&'a RawValue>,
}

/// Reads each row of an answer, keeping why a row failed.
fn parse_rows<R, T>(
    json: &[u8],
    collection: &'static str,
    map: fn(R) -> Result<T, String>,
) -> Result<Vec<Result<T, String>>, VistaError>
where
    R: DeserializeOwned,
{
    // Some .NET servers start their answers with a UTF-8 byte-order mark.
    let json = json.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(json);
    let envelope: Envelope<'_> =
        serde_json::from_slice(json).map_err(|source| VistaError::Json { collection, source })?;
    Ok(envelope
        .value
        .into_iter()
        .map(|raw| {
            serde_json::from_str::<R>(raw.get())
                .map_err(|e| e.to_string())
                .and_then(map)
        })
        .collect())
}

/// Keeps the rows that were read; logs and counts the rest.
fn collect<T>(collection: &'static str, rows: Vec<Result<T, String>>) -> Parsed<T> {
    let mut parsed = Parsed {
        items: Vec::with_capacity(rows.len()),
        skipped: 0,
    };
    for (row, result) in rows.into_iter().enumerate() {
        match result {
            Ok(item) => parsed.items.push(item),
            Err(reason) => {
                parsed.skipped += 1;
                tracing::warn!(collection, row, %reason, "skipping an unreadable Vista row");
            }
        }
    }
    parsed
}

/// A row of `OData.svc/Cinemas`, as sent.
#[derive(Deserialize)]
struct CinemaRow {
    #[serde(rename = "ID")]
    id: String,
    #[serde(rename = "Name")]
    name: String,
}

impl CinemaRow {
    fn into_cinema(self) -> Result<Cinema, String> {
        let id = parse_digits(&self.id)
            .ok_or_else(|| format!("cinema ID {:?} is not a number", self.id))?;
        Ok(Cinema {
            id,
            name: self.name,
        })
    }
}

/// A row of `OData.svc/GetScheduledFilms`, as sent.
#[derive(Deserialize)]
struct FilmRow {
    #[serde(rename = "ScheduledFilmId")]
    id: String,
    #[serde(rename = "Title")]
    title: String,
    #[serde(rename = "Rating", default)]
    rating: Option<String>,
    #[serde(rename = "CinemaId", default)]
    cinema_id: Option<String>,
}

impl FilmRow {
    fn into_film(self) -> Result<Film, String> {
        if self.id.trim().is_empty() {
            return Err("film with an empty ScheduledFilmId".to_owned());
        }
        let cinema_ids = match self.cinema_id.as_deref() {
            None => Vec::new(),
            Some(raw) => vec![
                parse_digits(raw)
                    .ok_or_else(|| format!("film {}: CinemaId {raw:?} is not a number", self.id))?,
            ],
        };
        Ok(Film {
            title: film_title(&self.title),
            rating: film_rating(self.rating.as_deref()),
            id: self.id,
            cinema_ids,
        })
    }
}

/// A row of `OData.svc/Sessions`, as sent (only the fields used).
#[derive(Deserialize)]
struct SessionRow {
    #[serde(rename = "ID")]
    id: String,
    #[serde(rename = "CinemaId")]
    cinema_id: String,
    #[serde(rename = "ScheduledFilmId")]
    film_id: String,
    #[serde(rename = "Showtime")]
    showtime: String,
    #[serde(rename = "SessionBusinessDate")]
    business_date: String,
    #[serde(rename = "ScreenName", default)]
    screen_name: Option<String>,
    #[serde(rename = "SeatsAvailable")]
    seats_available: u32,
    #[serde(rename = "SessionAttributesNames", default)]
    attributes: Option<Vec<String>>,
}

impl SessionRow {
    fn into_session(self) -> Result<Session, String> {
        let id = self.id;
        let (id_cinema, session_id) = parse_session_id(&id)
            .ok_or_else(|| format!("session ID {id:?} is not \"<CinemaId>-<SessionId>\""))?;
        let cinema_id = parse_digits(&self.cinema_id).ok_or_else(|| {
            format!(
                "session {id}: CinemaId {:?} is not a number",
                self.cinema_id
            )
        })?;
        if cinema_id != id_cinema {
            return Err(format!(
                "session {id}: CinemaId {cinema_id} does not match its ID"
            ));
        }
        // An offset, if a server sends one, is ignored: the wall-clock time is what the cinema
        // shows. `Z` is refused by jiff, since it would make the time UTC, not local.
        let showtime: civil::DateTime = self
            .showtime
            .parse()
            .map_err(|e| format!("session {id}: Showtime {:?}: {e}", self.showtime))?;
        // `civil::Date` parses the date part of a date-time ("2019-04-23T00:00:00").
        let business_date: civil::Date = self.business_date.parse().map_err(|e| {
            format!(
                "session {id}: SessionBusinessDate {:?}: {e}",
                self.business_date
            )
        })?;
        let attributes = self.attributes.unwrap_or_default();
        Ok(Session {
            cinema_id,
            session_id,
            film_id: self.film_id,
            showtime,
            business_date,
            screen_name: self.screen_name.unwrap_or_default(),
            seats_available: self.seats_available,
            version: session_version(&attributes).to_owned(),
            attributes,
            id,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn article_moves_to_the_front() {
        for (raw, expected) in [
            (
                "Schule auf dem Zauberberg, Die",
                "Die Schule auf dem Zauberberg",
            ),
            ("Foo,     The", "The Foo"),
            ("A, Whole, lotta, commas", "A, Whole, lotta, commas"),
            ("Gauner & Gentleman, Ein", "Ein Gauner & Gentleman"),
            ("Boot, Das", "Das Boot"),
            ("Untergang, Der", "Der Untergang"),
            (
                "Frau mit Vergangenheit, Eine",
                "Eine Frau mit Vergangenheit",
            ),
            ("Star is Born, A", "A Star is Born"),
            ("Foo, the", "the Foo"),
            ("Foo, THE", "THE Foo"),
            ("Foo, dIe", "dIe Foo"),
            ("Foo,The", "The Foo"),
            ("Foo , Die ", "Die Foo"),
            ("Eins, zwei, Die", "Die Eins, zwei"),
            (
                "Wie ich lernte, bei mir selbst Kind zu sein",
                "Wie ich lernte, bei mir selbst Kind zu sein",
            ),
            (
                "Blown Away - Music, Miles and Magic",
                "Blown Away - Music, Miles and Magic",
            ),
            ("Foo, Theory", "Foo, Theory"),
            ("Foo, Dieb", "Foo, Dieb"),
            ("Foo, An", "Foo, An"),
            (", Die", ", Die"),
            ("Die", "Die"),
            ("", ""),
        ] {
            assert_eq!(film_title(raw), expected, "title {raw:?}");
        }
    }

    #[test]
    fn unknown_rating_is_none() {
        assert_eq!(film_rating(Some("FSK unbek.")), None);
        assert_eq!(film_rating(Some("")), None);
        assert_eq!(film_rating(None), None);
        assert_eq!(film_rating(Some("FSK 12")), Some("FSK 12".to_owned()));
        assert_eq!(film_rating(Some("FSK 0")), Some("FSK 0".to_owned()));
        assert_eq!(
            film_rating(Some("fsk unbekannt")),
            Some("fsk unbekannt".to_owned())
        );
    }

    #[test]
    fn version_is_the_highest_priority_attribute() {
        assert_eq!(session_version(&["OV", "OmU"]), "OmU");
        assert_eq!(session_version(&["OmU", "OmUeng"]), "OmU");
        assert_eq!(session_version(&["something_else", "OV"]), "OV");
        assert_eq!(session_version::<&str>(&[]), "");
        assert_eq!(session_version(&["OmUeng", "OV"]), "OV");
        assert_eq!(session_version(&["OmUeng"]), "OmUeng");
        assert_eq!(session_version(&["3D", "Dolby Atmos"]), "");
        assert_eq!(session_version(&["omu"]), "");
        assert_eq!(session_version(&[String::from("OmU")]), "OmU");
    }

    #[test]
    fn session_ids() {
        assert_eq!(parse_session_id("1001-17024"), Some((1001, 17024)));
        assert_eq!(parse_session_id("0-0"), Some((0, 0)));
        assert_eq!(parse_session_id("4294967295-1"), Some((u32::MAX, 1)));
        for bad in [
            "",
            "-",
            "1001",
            "1001-",
            "-17024",
            "1001-17024-1",
            "1001_17024",
            "abc-17024",
            "1001-x",
            "+1001-17024",
            "1001-+17024",
            " 1001-17024",
            "1001-17024 ",
            "4294967296-1",
            "1001--17024",
            "١٠٠١-17024",
        ] {
            assert_eq!(parse_session_id(bad), None, "id {bad:?}");
        }
    }
}
