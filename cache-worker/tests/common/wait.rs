//! Waiting in tests: for spawned tasks to run, for a condition, for a future, for a moment of
//! the paused clock. Every wait is bounded: a guard against hangs, never a speed assertion.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// How often the polling waits look again.
pub const POLL: Duration = Duration::from_millis(2);

/// Lets spawned tasks run: yields a few times on the current runtime.
pub async fn settle() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

/// Fails the test if `future` takes longer than `limit`.
pub async fn within<T>(limit: Duration, what: &str, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, future).await {
        Ok(value) => value,
        Err(_) => panic!("{what} did not finish within {limit:?}"),
    }
}

/// Polls `check` until it gives a value, for at most `limit` (else the test fails).
pub async fn until<T>(limit: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    within(limit, what, async {
        loop {
            if let Some(value) = check() {
                return value;
            }
            tokio::time::sleep(POLL).await;
        }
    })
    .await
}

/// Polls `check` for up to `limit`; true as soon as it holds. For a test that asserts on it
/// with its own message.
pub async fn eventually_within(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        tokio::time::sleep(POLL).await;
    }
    check()
}

/// [`eventually_within`] 5 s.
pub async fn eventually(check: impl FnMut() -> bool) -> bool {
    eventually_within(Duration::from_secs(5), check).await
}

/// Moments of a test's timeline, in whole seconds from when it began (on the paused clock,
/// exact).
pub struct Timeline(Instant);

impl Timeline {
    /// A timeline beginning now.
    pub fn begin() -> Self {
        Timeline(Instant::now())
    }

    /// When it began.
    pub fn began(&self) -> Instant {
        self.0
    }

    /// Sleeps until `secs` seconds after it began.
    pub async fn at(&self, secs: u64) {
        tokio::time::sleep_until(self.0 + Duration::from_secs(secs)).await;
    }
}

/// Polls `future` once with a waker that does nothing, as a caller that is about to give up.
pub fn poll_once<F: Future + ?Sized>(future: std::pin::Pin<&mut F>) -> std::task::Poll<F::Output> {
    future.poll(&mut std::task::Context::from_waker(std::task::Waker::noop()))
}
