//! Each program in `cache-worker/tests/ui/pass/` compiles (as a binary of this package) and runs
//! to a successful exit. The compile-fail cases stay in `cache-worker/tests/ui.rs` (trybuild).
//!
//! Each runs in a temporary directory of its own, since some write their dump file relative to
//! the working directory.

use std::process::Command;

fn run(name: &str, exe: &str) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let output = Command::new(exe)
        .current_dir(dir.path())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {name} ({exe}): {e}"));
    assert!(
        output.status.success(),
        "tests/ui/pass/{name}.rs exited with {}\n--- stdout\n{}\n--- stderr\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
}

#[test]
fn crate_path() {
    run("crate_path", env!("CARGO_BIN_EXE_crate_path"));
}

#[test]
fn every_key() {
    run("every_key", env!("CARGO_BIN_EXE_every_key"));
}

#[test]
fn shadowed_names() {
    run("shadowed_names", env!("CARGO_BIN_EXE_shadowed_names"));
}

#[test]
fn spec_user_story() {
    run("spec_user_story", env!("CARGO_BIN_EXE_spec_user_story"));
}

#[test]
fn visibility_and_no_warnings() {
    run(
        "visibility_and_no_warnings",
        env!("CARGO_BIN_EXE_visibility_and_no_warnings"),
    );
}
