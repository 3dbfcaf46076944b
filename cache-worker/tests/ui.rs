//! Compile-time behaviour of `#[cache_worker]`: each file in `tests/ui/fail` is one mistake,
//! with the compiler's answer in the `.stderr` beside it (regenerate with
//! `TRYBUILD=overwrite cargo test -p cache-worker --all-features --test ui`, then read the diff).
//!
//! The compiler's hints list the crate's own `CacheWorker` impls, which depend on the enabled
//! features, so the snapshots are taken with `--all-features` (the README's test command) and
//! the test runs only then.
//!
//! Only compile-fail cases belong here: trybuild then checks them all with one `cargo check`
//! (`--keep-going`), where a single pass case makes it `cargo build` and run the cases one at a
//! time, each also paying for a full build of this crate and its dependencies in trybuild's own
//! target directory. The programs that must compile and run, `tests/ui/pass/*.rs`, are binaries
//! of the workspace's `tests/ui-pass` package, built with the rest of the workspace and run by
//! its `tests/run.rs`.
#![cfg(all(feature = "vista", feature = "vista-testing"))]

#[test]
fn ui() {
    trybuild::TestCases::new().compile_fail("tests/ui/fail/*.rs");
}
