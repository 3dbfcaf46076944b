//! The live mode: a box office that sells seats and cancels sessions on its own.

use std::sync::Arc;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp, civil};
use serde_json::Value;
use tokio::task::JoinHandle;

use super::feed::{find, row_id, set_seats};
use super::server::{FakeState, lock};

/// How many of the next sessions the live mode changes.
const LIVE_CANDIDATES: usize = 24;

/// Runs the live mode every `period` until the task is aborted.
pub(super) fn spawn(state: Arc<FakeState>, period: Duration) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(period.max(Duration::from_millis(10)));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        let mut rng = XorShift(0x5EED_CAFE_F00D_D00D);
        for tick in 1_u64.. {
            ticker.tick().await;
            live_tick(&state, &mut rng, tick % 4 == 0);
        }
    })
}

/// One step of the live mode.
fn live_tick(state: &FakeState, rng: &mut XorShift, drop_one: bool) {
    let now = state.time_zone.to_datetime(Timestamp::now());
    let started_long_ago = now
        .checked_sub(SignedDuration::from_mins(20))
        .unwrap_or(now);
    let mut sessions = lock(&state.sessions);
    let mut upcoming: Vec<(civil::DateTime, String)> = sessions
        .rows
        .iter()
        .filter_map(|row| {
            let showtime: civil::DateTime = row.get("Showtime")?.as_str()?.parse().ok()?;
            (showtime > started_long_ago).then(|| Some((showtime, row_id(row)?.to_owned())))?
        })
        .collect();
    upcoming.sort();
    upcoming.truncate(LIVE_CANDIDATES);
    if upcoming.is_empty() {
        return;
    }
    for _ in 0..2 {
        let (_, id) = &upcoming[rng.below(upcoming.len())];
        let Some(seats) = find(&sessions.rows, id)
            .and_then(|row| row.get("SeatsAvailable"))
            .and_then(Value::as_u64)
        else {
            continue;
        };
        let sold = 1 + rng.below(4) as u64;
        let left = u32::try_from(seats.saturating_sub(sold)).unwrap_or(0);
        if u64::from(left) != seats {
            set_seats(&mut sessions.rows, id, left);
            tracing::info!(id = %id, seats = left, "fake Vista (live): seats sold");
        }
    }
    if drop_one {
        let (_, id) = &upcoming[rng.below(upcoming.len())];
        sessions.rows.retain(|row| row_id(row) != Some(id.as_str()));
        tracing::info!(id = %id, "fake Vista (live): session dropped");
    }
}

/// A tiny deterministic generator, enough to pick sessions.
struct XorShift(u64);

impl XorShift {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}
