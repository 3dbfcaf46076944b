//! The Vista Connect cinema API: a client, the cached models, and the polling rule.
//!
//! A cinema website must show showtimes and free seats at once, while the ticketing server is
//! slow and rate-limited. This module talks to that server:
//!
//! - [`VistaClient`] reads the three OData collections — [`cinemas`](VistaClient::cinemas),
//!   [`films`](VistaClient::films), [`sessions`](VistaClient::sessions) — and one
//!   [`session`](VistaClient::session) by id, with a timeout, retries and back-off.
//! - [`Session`], [`Cinema`] and [`Film`] are the cached values, built from Vista's rows by the
//!   mapping rules of [`film_title`], [`film_rating`], [`session_version`] and
//!   [`parse_session_id`]. An unreadable row is skipped and counted in [`Parsed::skipped`].
//! - [`poll_interval`] says how often one session's free seats are polled: every 10 s around
//!   its showtime, rarer further away.
//! - [`testing::FakeVista`] is a fake server with the recorded feed of a Berlin cinema group.
//!
//! Showtimes are naive local times of the cinema; [`Session::starts_at`] places them in a
//! [`jiff::tz::TimeZone`] ([`VistaClient::time_zone`], by default the system's).
//!
//! The API takes and returns [`jiff`] types (`civil::DateTime`, `Timestamp`, `tz::TimeZone`,
//! `jiff::Error`); they are re-exported as [`vista::jiff`](jiff), so a caller needs no `jiff`
//! dependency of its own, nor one whose version must match this crate's:
//!
//! ```
//! use cache_worker::vista::jiff::{civil, tz::TimeZone};
//!
//! let berlin = TimeZone::posix("CET-1CEST,M3.5.0,M10.5.0/3")?;
//! let showtime = civil::date(2025, 6, 1).at(20, 15, 0, 0);
//! assert_eq!(showtime.to_zoned(berlin)?.timestamp().to_string(), "2025-06-01T18:15:00Z");
//! # Ok::<(), cache_worker::vista::jiff::Error>(())
//! ```

mod client;
mod error;
mod model;
mod poll;
#[cfg(feature = "vista-testing")]
#[cfg_attr(docsrs, doc(cfg(feature = "vista-testing")))]
pub mod testing;
mod workers;

/// The date and time library of the Vista API, re-exported so that its types can be named
/// (and its version matched) without a dependency of your own.
#[doc(inline)]
pub use jiff;

pub use client::VistaClient;
pub use error::VistaError;
pub use model::{
    Cinema, Film, Parsed, Session, film_rating, film_title, parse_cinemas, parse_films,
    parse_session_id, parse_sessions, session_version,
};
pub use poll::poll_interval;
pub use workers::{
    CinemaFeed, Cinemas, Feed, FilmFeed, Films, SESSION_EXPIRY, SessionFeed, Sessions, VistaWorker,
};
