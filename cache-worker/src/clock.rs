//! One time base per worker: wall-clock milliseconds (kept in dump files) that advance with
//! tokio's clock, so that schedules and expiry follow tokio's paused clock in tests.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

#[derive(Clone, Copy, Debug)]
pub(crate) struct Clock {
    base_instant: Instant,
    base_ms: u64,
}

impl Clock {
    pub(crate) fn new() -> Self {
        let base_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        Clock {
            base_instant: Instant::now(),
            base_ms,
        }
    }

    /// Milliseconds since the Unix epoch.
    pub(crate) fn now_ms(&self) -> u64 {
        self.base_ms + self.base_instant.elapsed().as_millis() as u64
    }

    /// The tokio instant of a wall-clock time; times in the past give now.
    pub(crate) fn instant_at(&self, ms: u64) -> Instant {
        let now_ms = self.now_ms();
        Instant::now() + Duration::from_millis(ms.saturating_sub(now_ms))
    }
}

pub(crate) fn add_ms(ms: u64, d: Duration) -> u64 {
    ms.saturating_add(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
