//! Compile-time behaviour of `#[cache_worker]`: each file in `tests/ui/fail` is one mistake,
//! with the compiler's answer in the `.stderr` beside it (regenerate with
//! `TRYBUILD=overwrite cargo test -p cache-worker --all-features --test ui`, then read the diff);
//! each file in `tests/ui/pass` must compile and run.
//!
//! The compiler's hints list the crate's own `CacheWorker` impls, which depend on the enabled
//! features, so the snapshots are taken with `--all-features` (the README's test command) and
//! the test runs only then.
#![cfg(all(feature = "vista", feature = "vista-testing"))]

#[test]
fn ui() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("tests/ui/fail/*.rs");
    cases.pass("tests/ui/pass/*.rs");
}
