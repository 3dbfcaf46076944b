//! `cache-worker-dump inspect` (feature `cli`) on dumps written by real workers, on damaged and
//! foreign copies of them, on a missing file, and on the same dump in the older formats 2 and
//! 1: what it prints and how it exits (0 valid, 1 not a valid dump, 2 usage or I/O).

mod common;
#[path = "../fuzz/src/model.rs"]
mod model;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::{Upstream, dumping, temp_dump, write_dump};

/// Runs the tool with `args`.
fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cache-worker-dump"))
        .args(args)
        .output()
        .expect("run cache-worker-dump")
}

/// Runs `inspect` on `file`: its exit code, standard output and standard error.
fn inspect(file: &Path) -> (i32, String, String) {
    let out = run(&["inspect", file.to_str().expect("a UTF-8 path")]);
    (
        out.status.code().expect("exited"),
        String::from_utf8(out.stdout).expect("UTF-8 output"),
        String::from_utf8(out.stderr).expect("UTF-8 errors"),
    )
}

/// Asserts that `file` is refused as not a valid dump: exit 1, nothing on standard output, one
/// line on standard error naming the file and holding `why`.
fn assert_invalid(file: &Path, why: &str) {
    let (code, stdout, stderr) = inspect(file);
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert_eq!(stdout, "");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr:?}");
    let line = format!("cache-worker-dump: {}: not a valid dump: ", file.display());
    assert!(stderr.starts_with(&line), "{stderr:?}");
    assert!(stderr.contains(why), "{why:?} in {stderr:?}");
}

/// The line of `report` that starts with `field` (e.g. `entries:`), without it.
fn field<'a>(report: &'a str, field: &str) -> &'a str {
    report
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .unwrap_or_else(|| panic!("no {field} line in\n{report}"))
        .trim()
}

#[tokio::test]
async fn a_dump_written_by_a_worker_is_valid_and_summed_up() {
    let (_dir, file) = temp_dump("cli.dump");
    // k0..k4 → 0..4, never expiring: keys of 3 bytes, values of 1.
    write_dump(&file, "cli", 5).await;
    let (code, report, stderr) = inspect(&file);
    assert_eq!(code, 0, "{report}{stderr}");
    assert_eq!(stderr, "");
    assert_eq!(
        report.lines().next(),
        Some(format!("{}: a valid cache-worker dump", file.display()).as_str())
    );
    assert_eq!(field(&report, "format:"), "3");
    assert_eq!(field(&report, "bucket:"), "cli");
    assert_eq!(field(&report, "schema:"), "0");
    assert_eq!(field(&report, "entries:"), "5");
    // The final dump of a shutdown, with nothing written during it: exact.
    assert!(
        field(&report, "version:").ends_with("(exact: the bucket at that version)"),
        "{report}"
    );
    let len = std::fs::metadata(&file).expect("the dump").len();
    assert!(
        field(&report, "size:").starts_with(&format!("{len} bytes, body ")),
        "{report}"
    );
    assert!(field(&report, "size:").ends_with("length and checksum ok"));
    assert!(field(&report, "ages:").starts_with("min "), "{report}");
    assert_eq!(field(&report, "expiry:"), "none of the 5 entries expires");
    assert_eq!(
        field(&report, "keys:"),
        "15 bytes in all; min 3 B, p50 3 B, p90 3 B, p99 3 B, max 3 B"
    );
    assert_eq!(
        field(&report, "values:"),
        "5 bytes in all; min 1 B, p50 1 B, p90 1 B, p99 1 B, max 1 B"
    );
}

#[tokio::test]
async fn entries_that_expire_are_counted_with_when() {
    let (_dir, file) = temp_dump("expiring.dump");
    let up = Upstream::new();
    *up.expire_after.lock() = Some(Duration::from_secs(2 * 3600));
    let w = dumping(&up, "expiring", &file)
        .start()
        .await
        .expect("start");
    for i in 0..3 {
        w.insert(format!("k{i}"), i);
    }
    w.shutdown().await.expect("shutdown");
    let (code, report, stderr) = inspect(&file);
    assert_eq!(code, 0, "{report}{stderr}");
    // Two hours after they were loaded, a moment ago: in 1h 59m 59s or so.
    let expiry = field(&report, "expiry:");
    assert!(
        expiry.starts_with("3 of 3 entries expire; 0 had expired; the rest in min 1h 59m"),
        "{report}"
    );
}

#[tokio::test]
async fn a_truncated_or_bit_flipped_copy_is_not_a_valid_dump() {
    let (dir, file) = temp_dump("good.dump");
    let good = write_dump(&file, "cli", 50).await;
    let bad = dir.path().join("bad.dump");

    std::fs::write(&bad, &good[..good.len() - 1]).expect("write");
    assert_invalid(&bad, "(a torn write?)");
    std::fs::write(&bad, &good[..20]).expect("write");
    assert_invalid(&bad, "shorter than a dump header");

    let mut flipped = good.clone();
    let middle = flipped.len() - 100;
    flipped[middle] ^= 0x04;
    std::fs::write(&bad, &flipped).expect("write");
    assert_invalid(&bad, "checksum mismatch");
}

#[test]
fn a_foreign_file_or_an_unknown_format_is_not_a_valid_dump() {
    let (_dir, file) = temp_dump("foreign.txt");
    std::fs::write(
        &file,
        "a text file, not a dump, and long enough for a header\n",
    )
    .expect("w");
    assert_invalid(&file, "not a cache-worker dump (bad magic)");

    let mut future = b"CWDUMP\0\n".to_vec();
    future.extend_from_slice(&9u32.to_le_bytes());
    future.extend_from_slice(&[0; 40]);
    std::fs::write(&file, &future).expect("write");
    assert_invalid(
        &file,
        "dump format version 9, this build reads formats 1 to 3",
    );
}

#[test]
fn a_missing_file_or_a_wrong_command_line_is_exit_2() {
    let (_dir, file) = temp_dump("missing.dump");
    let (code, stdout, stderr) = inspect(&file);
    assert_eq!(code, 2, "{stdout}{stderr}");
    assert_eq!(stdout, "");
    assert!(
        stderr.starts_with(&format!(
            "cache-worker-dump: {}: cannot read it: ",
            file.display()
        )),
        "{stderr:?}"
    );

    for args in [
        &[][..],
        &["inspect"],
        &["inspect", "a", "b"],
        &["look", "a"],
    ] {
        let out = run(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(!out.stderr.is_empty(), "{args:?}: a usage message");
    }
    assert_eq!(run(&["--help"]).status.code(), Some(0));
}

#[tokio::test]
async fn a_dump_in_format_2_or_1_gets_its_header_and_checksum_checked() {
    let (dir, file) = temp_dump("three.dump");
    let three = write_dump(&file, "old", 7).await;
    let older = dir.path().join("older.dump");
    for (format, bytes) in [
        (
            2,
            model::to_format_2(&three).expect("a whole format-3 dump"),
        ),
        (
            1,
            model::to_format_1(&three).expect("a whole format-3 dump"),
        ),
    ] {
        std::fs::write(&older, &bytes).expect("write");
        let (code, report, stderr) = inspect(&older);
        assert_eq!(code, 0, "format {format}: {report}{stderr}");
        assert_eq!(field(&report, "format:"), format.to_string());
        assert_eq!(field(&report, "bucket:"), "old");
        assert_eq!(field(&report, "entries:"), "7");
        assert!(field(&report, "size:").ends_with("length and checksum ok"));
        assert_eq!(
            field(&report, "records:"),
            format!("ages, expiries and sizes need format 3; this dump is format {format}")
        );
        assert!(!report.contains("ages:"), "{report}");

        let mut flipped = bytes.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        std::fs::write(&older, &flipped).expect("write");
        assert_invalid(&older, "checksum mismatch");
    }
}
