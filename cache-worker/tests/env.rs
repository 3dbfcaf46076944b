//! The settings cascade with real environment variables. The environment is process-wide, so
//! each case runs this test binary again as a child with the variables set.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use cache_worker::{CacheWorker, Worker};

struct Nothing;

impl CacheWorker for Nothing {
    type Key = u32;
    type Value = u32;
    type Error = std::io::Error;

    async fn load(&self, _: &u32) -> Result<Option<u32>, std::io::Error> {
        Ok(None)
    }
}

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
    let started = Worker::builder(Nothing)
        .bucket("env-test")
        .refresh(Duration::from_secs(7))
        .start()
        .await;
    match case.as_str() {
        "cascade" => {
            let w = started.expect("valid environment");
            let s = w.settings();
            assert_eq!(s.file, Some(PathBuf::from("/nonexistent-dir/env.dump")));
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

#[test]
fn environment_overrides_defaults_and_the_builder_overrides_the_environment() {
    let out = run_child(
        "cascade",
        &[
            ("CACHE_WORKER_ENV_TEST_FILE", "/nonexistent-dir/env.dump"),
            ("CACHE_WORKER_ENV_TEST_LOAD_TIMEOUT", "2s"),
            ("CACHE_WORKER_ENV_TEST_CONCURRENCY", "3"),
            ("CACHE_WORKER_ENV_TEST_REFRESH", "1h"),
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
fn an_invalid_environment_value_is_a_start_error_naming_it() {
    let out = run_child("invalid", &[("CACHE_WORKER_ENV_TEST_LOAD_TIMEOUT", "soon")]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("START ERROR")
            && stdout.contains("CACHE_WORKER_ENV_TEST_LOAD_TIMEOUT")
            && stdout.contains("\"soon\""),
        "{stdout}"
    );
}
