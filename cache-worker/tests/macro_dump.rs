//! The dump round trip through the attribute's `file`: a worker shut down writes its bucket,
//! and the next start of the same type restores it without asking upstream.
//!
//! A test binary of its own, with a single test: the attribute's path is relative, so the test
//! moves the process into a temporary directory first, and nothing else may run meanwhile.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use cache_worker::{CacheWorker, cache_worker};

#[cache_worker(bucket = "macro_dump", file = "macro_dump.dump", refresh = "1h")]
struct Squares {
    /// While set, every load fails: values seen then can only have come from the dump.
    upstream_down: Arc<AtomicBool>,
    loads: Arc<AtomicUsize>,
}

#[derive(Debug)]
struct Down;

impl std::fmt::Display for Down {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("upstream is down")
    }
}

impl std::error::Error for Down {}

impl CacheWorker for Squares {
    type Key = u64;
    type Value = u64;
    type Error = Down;

    async fn load(&self, key: &u64) -> Result<Option<u64>, Down> {
        self.loads.fetch_add(1, Ordering::SeqCst);
        if self.upstream_down.load(Ordering::SeqCst) {
            return Err(Down);
        }
        Ok(Some(key * key))
    }
}

#[tokio::test]
async fn a_dump_written_at_shutdown_warms_the_next_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::env::set_current_dir(dir.path()).expect("cd into the tempdir");

    let loads = Arc::new(AtomicUsize::new(0));
    let worker = Squares {
        upstream_down: Arc::new(AtomicBool::new(false)),
        loads: loads.clone(),
    }
    .start()
    .await
    .expect("cold start");
    assert_eq!(
        worker.settings().file.as_deref(),
        Some(std::path::Path::new("macro_dump.dump"))
    );
    assert_eq!(worker.stats().restored, 0);
    for key in 1..=3 {
        assert_eq!(
            Squares::fetch(&key).await.ok().as_deref(),
            Some(&(key * key))
        );
    }
    assert_eq!(loads.load(Ordering::SeqCst), 3);
    Squares::shutdown().await.expect("shutdown");
    assert!(dir.path().join("macro_dump.dump").is_file());

    Squares {
        upstream_down: Arc::new(AtomicBool::new(true)),
        loads: Arc::new(AtomicUsize::new(0)),
    }
    .start()
    .await
    .expect("warm start");
    assert_eq!(Squares::stats().restored, 3);
    let mut keys = Squares::keys();
    keys.sort_unstable();
    assert_eq!(keys, [1, 2, 3]);
    for key in 1..=3 {
        assert_eq!(Squares::peek(&key).as_deref(), Some(&(key * key)));
    }
    Squares::shutdown().await.expect("shutdown");

    // Leave the tempdir before it is removed.
    std::env::set_current_dir(std::env::temp_dir()).expect("cd out of the tempdir");
}
