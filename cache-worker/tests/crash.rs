//! Crash safety of dump writes: a child process that writes dumps in a loop is killed with
//! SIGKILL at a random moment, and the next start must be warm from the last complete dump.
//!
//! The child is this test binary itself, re-executed with `child_writer --exact` and the
//! environment variable [`CHILD_ENV`] naming the directory to write in; without that variable
//! `child_writer` does nothing. The parent repeats the kill 10 times (100 with
//! `CACHE_WORKER_LONG=1`) in one directory, so each child also starts warm from the previous
//! one's dump, next to the temp files the killed ones left. While a child runs, a worker of the
//! parent on the same file is refused (the child holds its lock); after the kill it starts, so
//! a SIGKILL leaves no stale lock.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Rng, Upstream, builder, corrupt_path, long_run, temp_files};

/// Set in the child only: the directory it writes `crash.dump` in.
const CHILD_ENV: &str = "CACHE_WORKER_CRASH_CHILD_DIR";
const BUCKET: &str = "crash";
const DUMP: &str = "crash.dump";
/// New keys per generation, and the most keys the child ever writes.
const PER_GENERATION: u64 = 100;
const MAX_KEYS: u64 = 20_000;

/// How many `k<i>` keys a complete dump of generation `generation` holds.
fn keys_of_generation(generation: u64) -> u64 {
    ((generation + 1) * PER_GENERATION).min(MAX_KEYS)
}

/// The child: does nothing unless [`CHILD_ENV`] is set. Then it starts a worker on
/// `<dir>/crash.dump` (warm if a previous child left a dump), and forever: adds the next
/// generation's keys `k<i>` → `i`, sets `gen` → the generation, and writes a dump. After its
/// first dump it creates `child.<pid>.ready` holding that dump's generation.
#[test]
fn child_writer() {
    let Some(dir) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(write_forever(PathBuf::from(dir)));
}

async fn write_forever(dir: PathBuf) {
    let parent = std::os::unix::process::parent_id();
    let born = Instant::now();
    let worker = builder(&Upstream::new(), BUCKET)
        .file(dir.join(DUMP))
        // The background writer dumps too, racing the explicit dumps below.
        .dump_interval(Duration::from_millis(1))
        .start()
        .await
        .expect("child: start");
    let mut generation = worker.peek("gen").map_or(0, |g| *g + 1);
    let mut ready = false;
    // Never outlive the parent (if it dies without killing us) nor run away.
    while std::os::unix::process::parent_id() == parent && born.elapsed() < Duration::from_secs(60)
    {
        // All writes of one generation happen between two awaits: on this current-thread
        // runtime no dump can see half a generation.
        let first = generation * PER_GENERATION;
        for i in first..keys_of_generation(generation) {
            worker.insert(format!("k{i}"), i);
        }
        worker.insert("gen".to_owned(), generation);
        worker.dump().await.expect("child: dump");
        if !ready {
            let marker = dir.join(format!("child.{}.ready", std::process::id()));
            std::fs::write(&marker, generation.to_string()).expect("child: marker");
            ready = true;
        }
        generation += 1;
    }
}

/// Kills the child if the parent test fails before it does.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the child and waits (bounded) until it wrote its first dump; returns it and the
/// generation of that dump.
fn spawn_child(dir: &Path, round: usize) -> (KillOnDrop, u64) {
    let stderr = std::fs::File::create(dir.join(format!("child.{round}.stderr"))).expect("stderr");
    let child = Command::new(std::env::current_exe().expect("current_exe"))
        .args(["child_writer", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("spawn the child");
    let mut child = KillOnDrop(child);
    let marker = dir.join(format!("child.{}.ready", child.0.id()));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(text) = std::fs::read_to_string(&marker)
            && let Ok(generation) = text.parse()
        {
            std::fs::remove_file(&marker).expect("remove the marker");
            return (child, generation);
        }
        if let Some(status) = child.0.try_wait().expect("try_wait") {
            let log = std::fs::read_to_string(dir.join(format!("child.{round}.stderr")))
                .unwrap_or_default();
            panic!("round {round}: the child exited ({status}) before its first dump:\n{log}");
        }
        assert!(
            Instant::now() < deadline,
            "round {round}: the child wrote no dump in 30 s"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Starts a worker on the dump the killed child left and checks it: warm, consistent, at least
/// as new as `at_least`. Returns the generation it holds.
async fn check_dump(dir: &Path, round: usize, at_least: u64) -> u64 {
    let file = dir.join(DUMP);
    let up = Upstream::new();
    let worker = builder(&up, BUCKET)
        .file(&file)
        .start()
        .await
        .expect("start after the crash");
    assert!(
        !corrupt_path(&file).exists(),
        "round {round}: the dump was damaged by the kill"
    );
    let restored = worker.stats().restored;
    assert!(
        restored > 0,
        "round {round}: the start after the kill is warm"
    );
    assert_eq!(restored as usize, worker.len());
    let generation = *worker.peek("gen").expect("gen is in every dump");
    assert!(
        generation >= at_least,
        "round {round}: the dump holds generation {generation}, older than {at_least}, which was complete"
    );
    let expected = keys_of_generation(generation);
    assert_eq!(
        restored,
        expected + 1,
        "round {round}: generation {generation} holds k0..k{} and gen",
        expected - 1
    );
    for i in 0..expected {
        let k = format!("k{i}");
        assert_eq!(worker.peek(&k).as_deref(), Some(&i), "round {round}: {k}");
    }
    assert_eq!(up.seeds.load(std::sync::atomic::Ordering::SeqCst), 0);
    // Dropped without a shutdown: this check writes nothing.
    drop(worker);
    generation
}

#[test]
fn sigkill_while_writing_dumps_leaves_the_last_complete_dump() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    let rounds = if long_run() { 100 } else { 10 };
    let dir = tempfile::tempdir().expect("tempdir");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut rng = Rng::new(0xC0A5_4ED0_0000_0001);
    let mut last = 0;
    for round in 0..rounds {
        let (mut child, first) = spawn_child(dir.path(), round);
        assert!(
            first >= last,
            "round {round}: the child started from an older dump"
        );
        // The running child holds the dump file's lock: a worker here is refused. Once the
        // child is killed, `check_dump` starts one: the OS released the lock with the process.
        let refused = runtime.block_on(
            builder(&Upstream::new(), BUCKET)
                .file(dir.path().join(DUMP))
                .start(),
        );
        assert!(
            matches!(refused, Err(cache_worker::Error::DumpInUse { .. })),
            "round {round}: a second process on the dump file: {refused:?}"
        );
        std::thread::sleep(Duration::from_millis(rng.below(25)));
        child.0.kill().expect("SIGKILL");
        let status = child.0.wait().expect("wait");
        assert!(!status.success(), "round {round}: killed, not exited");
        last = runtime.block_on(check_dump(dir.path(), round, first));
    }
    let leftovers = temp_files(dir.path());
    eprintln!(
        "{rounds} kills, last generation {last}; temp files left by killed writers: {}",
        leftovers.len()
    );
}
