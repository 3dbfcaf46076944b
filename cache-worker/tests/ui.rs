//! Compile-time behaviour of `#[cache_worker]`: each file in `tests/ui/fail` is one mistake,
//! with the compiler's answer in the `.stderr` beside it (regenerate with
//! `TRYBUILD=overwrite cargo test -p cache-worker --test ui`, then read the diff);
//! each file in `tests/ui/pass` must compile and run.

#[test]
fn ui() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("tests/ui/fail/*.rs");
    cases.pass("tests/ui/pass/*.rs");
}
