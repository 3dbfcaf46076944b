//! How often one session's free seats are polled: more often the nearer its showtime.

use std::time::Duration;

/// Sessions that started this long ago are never polled again (and expire).
const EXPIRED_AFTER_SECS: i64 = 1200;
/// Within this many seconds of the showtime, either side, a session is polled every 10 s.
const CLOSE_SECS: i64 = 600;
/// The poll interval close to the showtime.
const CLOSE_INTERVAL: Duration = Duration::from_secs(10);
/// The shortest interval outside the close window.
const BASE_SECS: u64 = 60;

/// How long to wait before polling a session on its own, given the seconds until its showtime
/// (negative once it has started) and the TTL of the sessions collection (its full reload
/// interval). `None` means no individual poll.
///
/// In order, with `s = secs_until_showtime`:
///
/// | `s` | result |
/// |---|---|
/// | `s <= -1200` | `None`: never again (the session has expired) |
/// | `s >= ttl` | `None`: the next full reload covers it |
/// | `-600 < s <= 600` | 10 s |
/// | otherwise | `trunc(60 + (s - 600)² / (2 · ttl))` s |
///
/// The last line is taken literally, also for negative `s`: a session 601 s after its start is
/// `1201` s from the `600` mark, so it waits `60 + 1201² / 7200 = 260` s. With `ttl` = 3600 s:
///
/// ```
/// use std::time::Duration;
/// use cache_worker::vista::poll_interval;
///
/// let ttl = Duration::from_secs(3600);
/// assert_eq!(poll_interval(601, ttl), Some(Duration::from_secs(60)));
/// assert_eq!(poll_interval(1800, ttl), Some(Duration::from_secs(260)));
/// assert_eq!(poll_interval(3599, ttl), Some(Duration::from_secs(1309)));
/// assert_eq!(poll_interval(300, ttl), Some(Duration::from_secs(10)));
/// assert_eq!(poll_interval(-601, ttl), Some(Duration::from_secs(260)));
/// assert_eq!(poll_interval(3600, ttl), None);
/// assert_eq!(poll_interval(-1200, ttl), None);
/// ```
///
/// `ttl` counts with its sub-second part. A zero `ttl` leaves the formula without a finite
/// value, so it gives `None` there (the `10 s` window still applies).
#[must_use]
pub fn poll_interval(secs_until_showtime: i64, ttl: Duration) -> Option<Duration> {
    let s = secs_until_showtime;
    if s <= -EXPIRED_AFTER_SECS {
        return None;
    }
    // s >= ttl, compared exactly (ttl may have a fractional part).
    if s >= 0 && u128::from(s.unsigned_abs()) * 1_000_000_000 >= ttl.as_nanos() {
        return None;
    }
    if -CLOSE_SECS < s && s <= CLOSE_SECS {
        return Some(CLOSE_INTERVAL);
    }
    if ttl.is_zero() {
        return None;
    }
    // Here -1200 < s < ttl, so |s - 600| < max(ttl, 1800) and nothing below overflows for any
    // ttl short of ~10^14 years; the fallback keeps it total beyond that.
    let distance = u128::from((s - CLOSE_SECS).unsigned_abs());
    let squared = distance * distance;
    let extra = match squared.checked_mul(1_000_000_000) {
        Some(scaled) => scaled / (2 * ttl.as_nanos()),
        None => squared / (2 * u128::from(ttl.as_secs())),
    };
    let extra = u64::try_from(extra).unwrap_or(u64::MAX - BASE_SECS);
    Some(Duration::from_secs(BASE_SECS + extra))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    fn secs(s: u64) -> Option<Duration> {
        Some(Duration::from_secs(s))
    }

    #[test]
    fn the_spec_table() {
        for (s, expected) in [
            (601, 60),
            (900, 72),
            (1200, 110),
            (1800, 260),
            (2400, 510),
            (3000, 860),
            (3599, 1309),
            (-601, 260),
            (-1199, 509),
        ] {
            assert_eq!(poll_interval(s, HOUR), secs(expected), "s = {s}");
        }
    }

    #[test]
    fn boundaries() {
        assert_eq!(poll_interval(-1200, HOUR), None);
        assert_eq!(poll_interval(-1201, HOUR), None);
        assert_eq!(poll_interval(i64::MIN, HOUR), None);
        assert_eq!(poll_interval(3600, HOUR), None);
        assert_eq!(poll_interval(i64::MAX, HOUR), None);
        assert_eq!(poll_interval(600, HOUR), secs(10));
        assert_eq!(poll_interval(0, HOUR), secs(10));
        assert_eq!(poll_interval(-599, HOUR), secs(10));
        // -600 is outside the open lower bound: 60 + 1200² / 7200 = 260.
        assert_eq!(poll_interval(-600, HOUR), secs(260));
    }

    #[test]
    fn ttl_decides_before_the_close_window() {
        let ttl = Duration::from_secs(300);
        assert_eq!(poll_interval(300, ttl), None);
        assert_eq!(poll_interval(299, ttl), secs(10));
        // A fractional ttl is compared exactly.
        assert_eq!(poll_interval(300, Duration::from_millis(300_500)), secs(10));
    }

    #[test]
    fn zero_and_huge_ttls_do_not_panic() {
        assert_eq!(poll_interval(-700, Duration::ZERO), None);
        assert_eq!(poll_interval(0, Duration::ZERO), None);
        assert_eq!(poll_interval(-10, Duration::ZERO), secs(10));
        assert!(poll_interval(i64::MAX - 1, Duration::MAX).is_some());
        assert_eq!(poll_interval(-1199, Duration::MAX), secs(60));
    }

    #[test]
    fn grows_with_distance_from_the_showtime() {
        let mut last = Duration::ZERO;
        for s in 601..3600 {
            let interval = poll_interval(s, HOUR).expect("polled");
            assert!(interval >= last, "s = {s}");
            last = interval;
        }
    }
}
