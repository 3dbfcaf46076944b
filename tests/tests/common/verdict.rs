//! The checks of a test, gathered: a test that finds one broken promise still checks the
//! others, and fails once with all of them (the cluster's logs printed after).

/// The failed checks of a test so far.
#[derive(Debug, Default)]
#[must_use = "a verdict fails the test only when finished"]
pub struct Verdict {
    failed: Vec<String>,
}

impl Verdict {
    pub fn new() -> Verdict {
        Verdict::default()
    }

    /// Records `what` as failed unless `ok`.
    pub fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            self.failed.push(what());
        }
    }

    /// Records the error of `result`, if any, and gives its value.
    pub fn ok<T>(&mut self, result: Result<T, String>) -> Option<T> {
        result.map_err(|e| self.failed.push(e)).ok()
    }

    /// Panics with every failed check, if any.
    pub fn finish(self) {
        assert!(
            self.failed.is_empty(),
            "{} check(s) failed:\n- {}",
            self.failed.len(),
            self.failed.join("\n- ")
        );
    }
}
