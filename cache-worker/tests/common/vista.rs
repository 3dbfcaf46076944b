//! The Vista workers against the fake Vista server (feature `vista-testing`).

use std::sync::Arc;
use std::time::Duration;

use cache_worker::Worker;
use cache_worker::vista::testing::FakeVista;
use cache_worker::vista::{Session, Sessions, VistaClient};

/// Entries in the recorded feed.
pub const CINEMAS: usize = 13;
pub const FILMS: usize = 54;
pub const SESSIONS: usize = 362;

/// A client of `fake` that does not retry on its own: each failed request is one failed load,
/// reported at once, and the fake's request counts show the refresher's schedule.
pub fn client(fake: &FakeVista) -> VistaClient {
    VistaClient::new(fake.base_url(), fake.token())
        .expect("a valid client")
        .with_attempts(1)
        .with_time_zone(fake.time_zone().clone())
}

/// A fake whose shows all start at least 3 hours from now: no session is polled on its own,
/// so each route sees the bulk reloads and nothing else.
pub async fn far_fake() -> FakeVista {
    FakeVista::builder()
        .first_show_in(Duration::from_secs(3 * 3600))
        .start()
        .await
        .expect("the fake Vista server starts")
}

/// The sessions, earliest show first.
pub fn by_showtime(sessions: &Worker<Sessions>) -> Vec<Arc<Session>> {
    let mut all: Vec<_> = sessions
        .keys()
        .into_iter()
        .filter_map(|id| sessions.peek(&id))
        .collect();
    all.sort_by(|a, b| (a.showtime, &a.id).cmp(&(b.showtime, &b.id)));
    all
}
