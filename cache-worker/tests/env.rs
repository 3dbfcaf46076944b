//! The settings cascade with real environment variables. The environment is process-wide, so
//! each case runs this test binary again as a child with the variables set.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use cache_worker::Worker;
use common::Nothing;

const CHILD: &str = "CACHE_WORKER_ENV_TEST_CHILD";

fn run_child(case: &str, vars: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::new(std::env::current_exe().expect("test binary"));
    cmd.args(["child", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, case);
    for (k, v) in vars {
        cmd.env(k, v);
    }
    cmd.output().expect("child runs")
}

/// Runs only as a child: starts a worker under the given environment and checks the case.
#[tokio::test]
async fn child() {
    let Ok(case) = std::env::var(CHILD) else {
        return;
    };
    let started = Worker::builder(Nothing::<u32, u32>::default())
        .bucket("env-test")
        .refresh(Duration::from_secs(7))
        .start()
        .await;
    match case.as_str() {
        "cascade" => {
            let w = started.expect("valid environment");
            let s = w.settings();
            let file = std::env::var("CACHE_WORKER_ENV_TEST_FILE").expect("set by the parent");
            assert_eq!(s.file, Some(PathBuf::from(file)));
            assert_eq!(s.load_timeout, Duration::from_secs(2));
            assert_eq!(s.concurrency, 3);
            // The builder beats the environment.
            assert_eq!(s.refresh, Some(Duration::from_secs(7)));
            println!("CASCADE OK");
        }
        "invalid" => {
            let err = started.expect_err("invalid environment");
            println!("START ERROR: {err}");
        }
        other => panic!("unknown case {other}"),
    }
}

/// Runs the `cascade` case with `refresh` set to `refresh` in the environment (the child's
/// builder sets its own, which wins).
fn cascade(refresh: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("env.dump");
    let out = run_child(
        "cascade",
        &[
            (
                "CACHE_WORKER_ENV_TEST_FILE",
                file.to_str().expect("UTF-8 path"),
            ),
            ("CACHE_WORKER_ENV_TEST_LOAD_TIMEOUT", "2s"),
            ("CACHE_WORKER_ENV_TEST_CONCURRENCY", "3"),
            ("CACHE_WORKER_ENV_TEST_REFRESH", refresh),
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("CASCADE OK"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn environment_overrides_defaults_and_the_builder_overrides_the_environment() {
    cascade("1h");
}

#[test]
fn a_bad_variable_for_a_setting_the_builder_sets_is_not_read() {
    cascade("1 hour please");
}

/// Runs the `invalid` case with `vars` and returns what the child printed of the start error.
fn start_error(vars: &[(&str, &str)]) -> String {
    let out = run_child("invalid", vars);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("START ERROR"), "{stdout}");
    stdout
}

#[test]
fn an_out_of_range_environment_value_is_a_start_error_naming_it_and_the_range() {
    for (setting, value, range) in [
        ("CONCURRENCY", "18446744073709551615", "from 1 to 65536"),
        ("CONCURRENCY", "0", "from 1 to 65536"),
        ("EVENT_CAPACITY", "1099511627776", "from 1 to 1048576"),
        ("SHUTDOWN_TIMEOUT", "100000000y", "at most 3650 days"),
    ] {
        let variable = format!("CACHE_WORKER_ENV_TEST_{setting}");
        let stdout = start_error(&[(&variable, value)]);
        assert!(
            stdout.contains(&variable) && stdout.contains(value) && stdout.contains(range),
            "{stdout}"
        );
    }
}

#[test]
fn an_invalid_environment_value_is_a_start_error_naming_it() {
    let stdout = start_error(&[("CACHE_WORKER_ENV_TEST_LOAD_TIMEOUT", "soon")]);
    assert!(
        stdout.contains("CACHE_WORKER_ENV_TEST_LOAD_TIMEOUT") && stdout.contains("\"soon\""),
        "{stdout}"
    );
}
