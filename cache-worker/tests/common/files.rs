//! Dump files in tests: where a damaged one is moved, what a directory holds, what a fresh
//! start would restore.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cache_worker::{Builder, Worker};

use super::started::builder;
use super::upstream::Upstream;

pub const HOUR: Duration = Duration::from_secs(3600);

/// `<file>.corrupt`, where a damaged dump is moved.
pub fn corrupt_path(file: &Path) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(".corrupt");
    PathBuf::from(name)
}

/// Names in `dir`, sorted.
pub fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Temp files of a dump left in `dir` (none if `dir` is gone).
pub fn temp_files(dir: &Path) -> Vec<String> {
    let listing = match std::fs::read_dir(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        listing => listing.expect("read_dir"),
    };
    listing
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.contains(".tmp."))
        .collect()
}

/// The wall clock in milliseconds since 1970, as dumps store entry times.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64
}

/// Writes a dump of `bucket` holding `k{i}` → `i` for `i < n` (through a worker that inserts
/// and shuts down) and returns its bytes.
pub async fn write_dump(file: &Path, bucket: &str, n: u64) -> Vec<u8> {
    let w = started_on(&Upstream::new(), bucket, file).await;
    for i in 0..n {
        w.insert(format!("k{i}"), i);
    }
    w.shutdown().await.expect("shutdown");
    std::fs::read(file).expect("the final dump was written")
}

/// What a fresh start from `file` would restore: its live entries, decoded as a warm start
/// decodes them (the worker's codec, schema 0), empty if there is no file or it does not decode.
/// No worker is started, so this needs no lock on the file and works beside a running worker.
pub async fn on_disk(bucket: &str, file: &Path) -> HashMap<String, u64> {
    let Ok(bytes) = std::fs::read(file) else {
        return HashMap::new();
    };
    let now = now_ms();
    cache_worker::__codec::decode::<String, u64>(&bytes, bucket, 0)
        .map(|records| {
            records
                .into_iter()
                .filter(|&(_, _, _, expires_at)| expires_at > now)
                .map(|(key, value, _, _)| (key, value))
                .collect()
        })
        .unwrap_or_default()
}

/// A worker of `bucket` on `file` whose periodic refresh is an hour away: nothing reloads during
/// a test unless the test asks for it.
pub fn dumping(up: &Upstream, bucket: &str, file: &Path) -> Builder<Upstream> {
    builder(up, bucket).file(file).refresh(HOUR)
}

/// [`dumping`], started.
pub async fn started_on(up: &Upstream, bucket: &str, file: &Path) -> Worker<Upstream> {
    dumping(up, bucket, file).start().await.expect("start")
}

/// A temporary directory and the path of a dump file `name` in it (not created); the directory
/// goes when the first is dropped.
pub fn temp_dump(name: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join(name);
    (dir, file)
}

/// A new temp dir holding an empty folder `sub`, that folder, and the path of `<sub>.dump` in it.
pub fn temp_folder(sub: &str) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join(sub);
    std::fs::create_dir(&dir).expect("mkdir");
    let file = dir.join(format!("{sub}.dump"));
    (tmp, dir, file)
}
