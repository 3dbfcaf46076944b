//! Disk faults under a running worker, with real files and real errors from the kernel: the
//! dump directory read-only, the directory gone, the dump path a directory, a full disk, and a
//! file size limit. For each: the worker starts and serves, `dump()` returns the write error,
//! `stats().dump_failures` counts it, the failure is logged, the last good dump survives byte
//! for byte, no temp file is left behind, and once the fault is cleared the next dump succeeds
//! and the next start is warm from it.
//!
//! How each fault is made. Tests and CI run as root, where `chmod` stops no write, so:
//!
//! - read-only: a tmpfs mounted on the dump directory, remounted read-only (`EROFS`). Where
//!   mounting is not permitted: the directory made immutable (`chattr +i`, `EPERM`). Where that
//!   is not permitted either: `chmod 0555` (`EACCES`, which stops a user that is not root). A
//!   probe write checks that the fault holds; if none of the three holds, the test fails.
//! - full disk: a 1 MiB tmpfs filled up by a filler file (`ENOSPC`). Where mounting is not
//!   permitted, the file size limit below stands in for it, and the test says so.
//! - file size limit: always run, in a child process (this test binary re-executed through
//!   `sh -c 'trap "" XFSZ; exec ...'`, so that SIGXFSZ is ignored) that lowers its own
//!   `RLIMIT_FSIZE`: writes past the limit fail with `EFBIG`. The child raises the limit again
//!   to clear the fault.
//!
//! `CACHE_WORKER_NO_MOUNT=1` skips the mounts, to exercise the fallbacks on a machine that could
//! mount. Mounts are made inside a fresh temp dir and detached when the test ends, failed or not.

mod common;

use std::ffi::CStr;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cache_worker::{ColdStart, Error, StartKind, Worker};
use common::{HOUR, Upstream, dumping, key, temp_files};
use parking_lot::Mutex;
use rustix::io::Errno;
use tracing_subscriber::util::SubscriberInitExt;

const BUCKET: &str = "faults";
/// Set in the file size limit child only: the directory it works in.
const CHILD_ENV: &str = "CACHE_WORKER_FSIZE_CHILD_DIR";
/// The child's file size limit while the fault is on.
const FSIZE_LIMIT: u64 = 16 << 10;
/// Entries added while the fault is on: a dump of them (about 140 KiB) is larger than the
/// file size limit and than what is left on the full tmpfs, and two of them (the dump and the
/// temp file that replaces it) fit on the tmpfs once it is emptied.
const EXTRA: u64 = 2000;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn worker(up: &Upstream, file: &Path) -> cache_worker::Builder<Upstream> {
    dumping(up, BUCKET, file).dump_interval(HOUR)
}

async fn start(up: &Upstream, file: &Path) -> Worker<Upstream> {
    worker(up, file).start().await.expect("start")
}

/// What the worker logged on this thread (a current-thread runtime logs on the test's thread).
///
/// Every test of this file that runs a worker captures its logs: `tracing` caches whether a
/// log line is wanted per line of code for the whole process, decided by the first thread that
/// reaches it, and a test thread without a subscriber would switch the line off for the others.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn capture() -> (Logs, tracing::subscriber::DefaultGuard) {
        let logs = Logs::default();
        let writer = logs.clone();
        let guard = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .with_max_level(tracing_subscriber::filter::LevelFilter::INFO)
            .set_default();
        tracing::callsite::rebuild_interest_cache();
        (logs, guard)
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock()).into_owned()
    }
}

fn no_mount() -> bool {
    std::env::var("CACHE_WORKER_NO_MOUNT").as_deref() == Ok("1")
}

/// Whether a file can be created in `dir` now.
fn writable(dir: &Path) -> bool {
    let probe = dir.join(".probe");
    let created = File::create(&probe).is_ok();
    let _ = std::fs::remove_file(&probe);
    created
}

/// A tmpfs mounted on a directory, detached when dropped.
struct Tmpfs {
    at: PathBuf,
    options: &'static CStr,
}

impl Tmpfs {
    fn mount(at: &Path, options: &'static CStr) -> std::io::Result<Tmpfs> {
        if no_mount() {
            return Err(std::io::Error::other("CACHE_WORKER_NO_MOUNT=1"));
        }
        use rustix::mount::{MountFlags, mount};
        mount(
            "tmpfs",
            at,
            "tmpfs",
            MountFlags::NOSUID | MountFlags::NODEV,
            options,
        )?;
        Ok(Tmpfs {
            at: at.to_owned(),
            options,
        })
    }

    fn remount(&self, read_only: bool) {
        use rustix::mount::{MountFlags, mount_remount};
        let flags = if read_only {
            MountFlags::RDONLY
        } else {
            MountFlags::empty()
        };
        mount_remount(
            &self.at,
            flags | MountFlags::NOSUID | MountFlags::NODEV,
            self.options,
        )
        .expect("remount the tmpfs");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = rustix::mount::unmount(&self.at, rustix::mount::UnmountFlags::DETACH);
    }
}

/// Sets or clears `FS_IMMUTABLE_FL` (`chattr +i`) on a directory.
fn set_immutable(dir: &Path, on: bool) -> std::io::Result<()> {
    use rustix::fs::{IFlags, ioctl_getflags, ioctl_setflags};
    let handle = File::open(dir)?;
    let flags = ioctl_getflags(&handle)?;
    let flags = if on {
        flags | IFlags::IMMUTABLE
    } else {
        flags - IFlags::IMMUTABLE
    };
    Ok(ioctl_setflags(&handle, flags)?)
}

/// Clears the immutable flag when dropped, so that the temp dir can be removed.
struct Mutable(PathBuf);

impl Drop for Mutable {
    fn drop(&mut self) {
        let _ = set_immutable(&self.0, false);
    }
}

fn set_mode(dir: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// A fault to put under a running worker.
struct Fault<'a> {
    /// What it is, for messages.
    name: String,
    /// The error the failed write must carry.
    errno: Errno,
    /// Makes the fault; returns where the last good dump is now. Made twice: once under a
    /// running worker, once for a restart.
    on: Box<dyn Fn() -> PathBuf + 'a>,
    /// Clears it.
    off: Box<dyn Fn() + 'a>,
    /// Whether the dump file stays at its path during the fault, so that a worker started then
    /// finds the last good dump, and its lock (it is out of reach when its directory is gone).
    warm_during: bool,
}

/// What a scenario saw, for the report.
struct Seen {
    error: String,
    failures: u64,
}

/// The whole check of one fault, on a dump `file` in `dir`.
async fn survive(dir: &Path, file: &Path, fault: Fault<'_>) -> Seen {
    let name = fault.name.clone();
    let (logs, _logging) = Logs::capture();
    let up = Upstream::with_values(&[("u", 7)]);
    let w = start(&up, file).await;
    w.insert(key("a"), 1);
    w.insert(key("b"), 2);
    w.dump().await.expect("the good dump");
    let good = std::fs::read(file).expect("the good dump is on disk");
    assert_eq!(w.stats().dump_failures, 0);

    let good_at = (fault.on)();
    w.insert(key("a"), 100);
    w.insert(key("c"), 3);
    for i in 0..EXTRA {
        w.insert(format!("extra-{i:040}"), i);
    }
    let before = w.stats().dump_failures;
    let result = w.dump().await;

    // The write error is returned, counted and logged.
    let source = match result {
        Err(Error::DumpWrite { path, source }) => {
            assert_eq!(path, file, "{name}: the error names the dump file");
            source
        }
        other => panic!("{name}: expected Error::DumpWrite, got {other:?}"),
    };
    // Checked last, so that a wrong error kind does not hide the rest of the scenario.
    let kept_errno = source.raw_os_error() == Some(fault.errno.raw_os_error());
    let failures = w.stats().dump_failures;
    assert!(failures > before, "{name}: dump_failures counts it");
    let logged = logs.text();
    assert!(
        logged.lines().any(|l| l.contains("ERROR")
            && l.contains("dump write failed")
            && l.contains(&source.to_string())
            && l.contains(&file.display().to_string())),
        "{name}: the failure is logged with the path and the error; the log:\n{logged}"
    );

    // The last good dump survives, and nothing is left behind.
    assert_eq!(
        std::fs::read(&good_at).expect("the good dump"),
        good,
        "{name}: the last good dump survives byte for byte"
    );
    assert_eq!(temp_files(dir), Vec::<String>::new(), "{name}: temp files");
    assert_eq!(
        temp_files(good_at.parent().expect("dir")),
        Vec::<String>::new()
    );

    // The worker still serves: what it holds, and new loads.
    assert_eq!(w.peek("a").as_deref(), Some(&100), "{name}: serves");
    assert_eq!(w.len() as u64, 3 + EXTRA);
    assert_eq!(
        *w.fetch(&key("u")).await.expect("a load"),
        7,
        "{name}: loads"
    );

    // Another worker started during the fault is refused: the running one holds the file
    // (when its directory is gone, the path and its lock are out of reach).
    if fault.warm_during {
        match worker(&Upstream::new(), file).start().await {
            Err(Error::DumpInUse { path, .. }) => assert_eq!(path, file, "{name}"),
            other => panic!("{name}: a second worker during the fault: {other:?}"),
        }
    }

    // Once the fault is cleared, the next dump succeeds and the next start is warm from it.
    (fault.off)();
    w.dump().await.expect("the dump after the fault is cleared");
    assert_eq!(temp_files(dir), Vec::<String>::new(), "{name}: temp files");
    w.shutdown().await.expect("shutdown");
    let after = start(&Upstream::new(), file).await;
    // a, b, c, u (loaded during the fault) and the extra entries.
    assert_eq!(
        after.stats().restored,
        4 + EXTRA,
        "{name}: warm from the new dump"
    );
    assert_eq!(after.peek("a").as_deref(), Some(&100));
    assert_eq!(after.peek("c").as_deref(), Some(&3));
    assert_eq!(after.peek("u").as_deref(), Some(&7));
    drop(after); // no change, no shutdown: writes nothing, and releases the file

    // A restart during the fault starts warm from the last good dump, and its final dump
    // fails, is counted, and is returned. (With the directory gone there is no dump to reach:
    // a start would make the folder anew, and start cold.)
    if fault.warm_during {
        let good_at = (fault.on)();
        let during = start(&Upstream::new(), file).await;
        assert_eq!(
            during.stats().restored,
            4 + EXTRA,
            "{name}: warm from the good dump"
        );
        assert_eq!(
            during.peek("a").as_deref(),
            Some(&100),
            "{name}: the good dump's value"
        );
        during.insert(key("d"), 4);
        assert!(
            matches!(during.shutdown().await, Err(Error::DumpWrite { .. })),
            "{name}: the failed final dump is returned"
        );
        assert!(during.stats().dump_failures > 0, "{name}: and counted");
        assert_eq!(temp_files(dir), Vec::<String>::new(), "{name}: temp files");
        assert!(good_at.exists(), "{name}: the good dump is still there");
        (fault.off)();
    }

    assert!(
        kept_errno,
        "{name}: the error returned by dump() must carry the OS error {:?} (errno {}) so that \
         a caller can tell it (io::Error::kind, raw_os_error); it carries {source:?}",
        fault.errno,
        fault.errno.raw_os_error()
    );
    Seen {
        error: source.to_string(),
        failures: failures - before,
    }
}

// ---------------------------------------------------------------------------------------------
// A read-only dump directory
// ---------------------------------------------------------------------------------------------

/// How the directory is made read-only here.
enum ReadOnly {
    Remount(Tmpfs),
    Immutable(Mutable),
    Chmod(PathBuf),
}

impl ReadOnly {
    /// Picks the first way that works on `dir` (see the file's docs); fails if none does.
    fn prepare(dir: &Path) -> ReadOnly {
        match Tmpfs::mount(dir, c"size=4m") {
            Ok(fs) => return ReadOnly::Remount(fs),
            Err(e) => eprintln!("note: mounting a tmpfs is not permitted ({e}); trying chattr +i"),
        }
        let immutable = set_immutable(dir, true).is_ok() && !writable(dir);
        let _ = set_immutable(dir, false);
        if immutable {
            return ReadOnly::Immutable(Mutable(dir.to_owned()));
        }
        eprintln!("note: chattr +i is not permitted or not enforced here; trying chmod 0555");
        set_mode(dir, 0o555);
        let stopped = !writable(dir);
        set_mode(dir, 0o755);
        assert!(
            stopped,
            "no way to make a directory read-only here: mount, chattr +i and chmod all failed \
             (root without CAP_SYS_ADMIN and CAP_LINUX_IMMUTABLE?)"
        );
        ReadOnly::Chmod(dir.to_owned())
    }

    fn name(&self) -> &'static str {
        match self {
            ReadOnly::Remount(_) => "read-only (tmpfs remounted read-only)",
            ReadOnly::Immutable(_) => "read-only (chattr +i)",
            ReadOnly::Chmod(_) => "read-only (chmod 0555)",
        }
    }

    fn errno(&self) -> Errno {
        match self {
            ReadOnly::Remount(_) => Errno::ROFS,
            ReadOnly::Immutable(_) => Errno::PERM,
            ReadOnly::Chmod(_) => Errno::ACCESS,
        }
    }

    fn set(&self, on: bool) {
        match self {
            ReadOnly::Remount(fs) => fs.remount(on),
            ReadOnly::Immutable(m) => set_immutable(&m.0, on).expect("chattr"),
            ReadOnly::Chmod(dir) => set_mode(dir, if on { 0o555 } else { 0o755 }),
        }
    }
}

#[tokio::test]
async fn a_read_only_dump_directory_fails_the_write_and_keeps_the_last_dump() {
    let (_tmp, dir, file) = common::temp_folder("ro");
    let ro = ReadOnly::prepare(&dir);
    let fault = Fault {
        name: ro.name().to_owned(),
        errno: ro.errno(),
        on: Box::new(|| {
            ro.set(true);
            assert!(!writable(&dir), "{}: the directory is read-only", ro.name());
            file.clone()
        }),
        off: Box::new(|| {
            ro.set(false);
            assert!(writable(&dir));
        }),
        warm_during: true,
    };
    let seen = survive(&dir, &file, fault).await;
    eprintln!(
        "{}: {} ({} failure(s) counted)",
        ro.name(),
        seen.error,
        seen.failures
    );
}

#[tokio::test]
async fn a_damaged_dump_in_a_read_only_directory_is_a_cold_start_and_stays_in_place() {
    // The damaged dump cannot be moved to `.corrupt`: the start must still succeed, cold.
    let (_tmp, dir, file) = common::temp_folder("ro");
    let ro = ReadOnly::prepare(&dir);
    std::fs::write(&file, b"CWDUMP\0\n damaged").expect("write");
    ro.set(true);
    assert!(!writable(&dir), "{}: the directory is read-only", ro.name());
    let (logs, _logging) = Logs::capture();
    let up = Upstream::with_values(&[("a", 1)]);
    let w = start(&up, &file).await;
    assert_eq!(w.len(), 0, "{}: a cold start", ro.name());
    assert_eq!(w.stats().restored, 0);
    let logged = logs.text();
    assert!(
        logged
            .lines()
            .any(|l| l.contains("dump file is damaged") && l.contains("moved=false")),
        "{}: the damaged dump and the failed move are logged:\n{logged}",
        ro.name()
    );
    assert_eq!(*w.fetch(&key("a")).await.expect("serves"), 1);
    assert_eq!(
        std::fs::read(&file).expect("still there"),
        b"CWDUMP\0\n damaged"
    );
    assert!(!dir.join("ro.dump.corrupt").exists());
    assert!(w.dump().await.is_err(), "{}: the dump fails", ro.name());
    ro.set(false);
    // Once writable, the next dump replaces the damaged file.
    w.dump().await.expect("dump");
    w.shutdown().await.expect("shutdown");
    let again = start(&Upstream::new(), &file).await;
    assert_eq!(again.stats().restored, 1);
    assert_eq!(again.peek("a").as_deref(), Some(&1));
}

// ---------------------------------------------------------------------------------------------
// The dump directory gone
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_vanished_dump_directory_fails_the_write_and_is_not_recreated() {
    // E.g. a volume unmounted under a running worker. (`dumps.rs` covers a directory that never
    // existed.)
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let away = tmp.path().join("data.away");
    std::fs::create_dir(&dir).expect("mkdir");
    let file = dir.join("x.dump");
    let fault = Fault {
        name: "directory gone".to_owned(),
        errno: Errno::NOENT,
        on: Box::new(|| {
            std::fs::rename(&dir, &away).expect("move the directory away");
            away.join("x.dump")
        }),
        off: Box::new(|| {
            assert!(!dir.exists(), "the worker did not create the directory");
            std::fs::rename(&away, &dir).expect("bring the directory back");
        }),
        warm_during: false,
    };
    let seen = survive(&dir, &file, fault).await;
    eprintln!(
        "directory gone: {} ({} failure(s) counted)",
        seen.error, seen.failures
    );
}

// ---------------------------------------------------------------------------------------------
// The dump path is a directory
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_dump_path_that_is_a_directory_is_left_alone_until_it_is_gone() {
    // (`dumps.rs` covers an empty one from the start; here it holds a file that must survive,
    // the error is logged, and the fault is cleared.)
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let file = dir.join("isdir.dump");
    std::fs::create_dir(&file).expect("mkdir");
    std::fs::write(file.join("keep.txt"), b"precious").expect("write");
    let (logs, _logging) = Logs::capture();

    let up = Upstream::with_values(&[("u", 7)]);
    let w = start(&up, &file).await;
    assert_eq!(w.len(), 0, "a cold start");
    assert_eq!(*w.fetch(&key("u")).await.expect("serves"), 7);
    w.insert(key("a"), 1);
    let before = w.stats().dump_failures;
    let source = match w.dump().await {
        Err(Error::DumpWrite { path, source }) => {
            assert_eq!(path, file);
            source
        }
        other => panic!("expected Error::DumpWrite, got {other:?}"),
    };
    assert_eq!(source.raw_os_error(), Some(Errno::ISDIR.raw_os_error()));
    assert!(w.stats().dump_failures > before);
    let logged = logs.text();
    assert!(
        logged
            .lines()
            .any(|l| l.contains("dump write failed") && l.contains(&source.to_string())),
        "logged:\n{logged}"
    );
    assert!(file.is_dir(), "the directory is not replaced nor moved");
    assert_eq!(
        std::fs::read(file.join("keep.txt")).expect("read"),
        b"precious"
    );
    assert_eq!(temp_files(dir), Vec::<String>::new());
    assert!(!dir.join("isdir.dump.corrupt").exists());

    // The running worker holds the file: a second one is refused, whatever the path holds.
    assert!(matches!(
        worker(&Upstream::new(), &file).start().await,
        Err(Error::DumpInUse { .. })
    ));

    std::fs::remove_dir_all(&file).expect("clear the fault");
    w.dump().await.expect("the dump after the fault is cleared");
    w.shutdown().await.expect("shutdown");
    let after = start(&Upstream::new(), &file).await;
    assert_eq!(after.stats().restored, 2);
    assert_eq!(after.peek("a").as_deref(), Some(&1));
    assert_eq!(after.peek("u").as_deref(), Some(&7));
    assert_eq!(temp_files(dir), Vec::<String>::new());
    drop(after);

    // A restart during the fault is cold, starts, and says why; its final dump fails.
    std::fs::remove_file(&file).expect("remove the dump");
    std::fs::create_dir(&file).expect("the fault again");
    let during = start(&Upstream::new(), &file).await;
    assert_eq!(
        during.len(),
        0,
        "a start during the fault is cold, and starts"
    );
    assert!(
        matches!(
            during.started(),
            StartKind::Cold(ColdStart::Unreadable { .. })
        ),
        "{:?}",
        during.started()
    );
    assert!(matches!(
        during.shutdown().await,
        Err(Error::DumpWrite { .. })
    ));
    assert!(file.is_dir(), "the directory is not replaced nor moved");
}

// ---------------------------------------------------------------------------------------------
// A full disk
// ---------------------------------------------------------------------------------------------

/// Fills the file system of `dir` with `dir/filler` until the kernel says it is full, then
/// frees `leave` bytes of it.
fn fill(dir: &Path, leave: u64) {
    let path = dir.join("filler");
    let mut filler = File::create(&path).expect("create the filler");
    let chunk = [0xAAu8; 4096];
    let error = loop {
        if let Err(e) = filler.write_all(&chunk).and_then(|()| filler.sync_all()) {
            break e;
        }
    };
    assert_eq!(
        error.raw_os_error(),
        Some(Errno::NOSPC.raw_os_error()),
        "the filler stopped on a full disk: {error}"
    );
    let len = filler.metadata().expect("stat").len();
    filler
        .set_len(len.saturating_sub(leave))
        .expect("truncate the filler");
}

/// A dump directory on a 1 MiB tmpfs, with `leave` bytes left free while the fault is on.
async fn full_disk(leave: u64) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("small");
    std::fs::create_dir(&dir).expect("mkdir");
    let fs = match Tmpfs::mount(&dir, c"size=1m") {
        Ok(fs) => fs,
        Err(e) => {
            eprintln!(
                "note: mounting a 1 MiB tmpfs is not permitted ({e}): the full disk is stood \
                 in for by a file size limit (EFBIG instead of ENOSPC)"
            );
            drop(tmp);
            run_fsize_child();
            return;
        }
    };
    let file = dir.join("full.dump");
    let name = format!("full disk (1 MiB tmpfs, {leave} bytes left)");
    let fault = Fault {
        name: name.clone(),
        errno: Errno::NOSPC,
        on: Box::new(|| {
            fill(&dir, leave);
            file.clone()
        }),
        off: Box::new(|| std::fs::remove_file(dir.join("filler")).expect("free the space")),
        warm_during: true,
    };
    let seen = survive(&dir, &file, fault).await;
    drop(fs);
    eprintln!(
        "{name}: {} ({} failure(s) counted)",
        seen.error, seen.failures
    );
}

#[tokio::test]
async fn a_full_disk_fails_the_write_and_keeps_the_last_dump() {
    // Not a byte left: the write fails at the dump's first bytes.
    full_disk(0).await;
}

#[tokio::test]
async fn a_disk_that_fills_up_during_the_write_fails_it_and_keeps_the_last_dump() {
    // 32 KiB left: the header and part of the body are written before the disk is full.
    full_disk(32 << 10).await;
}

// ---------------------------------------------------------------------------------------------
// A file size limit (RLIMIT_FSIZE), in a child process
// ---------------------------------------------------------------------------------------------

/// Runs [`fsize_child`] in a child process with SIGXFSZ ignored and checks what it did.
fn run_fsize_child() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let exe = std::env::current_exe().expect("current_exe");
    let output = std::process::Command::new("sh")
        .args(["-c", r#"trap "" XFSZ; exec "$0" "$@""#])
        .arg(&exe)
        .args([
            "fsize_child",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, tmp.path())
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run the child");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the file size limit child failed ({}):\n{stderr}",
        output.status
    );
    assert!(
        stderr.contains("fsize child: checked"),
        "the child ran the scenario:\n{stderr}"
    );
    // What it left on disk: the dump written after the limit was raised, and no temp file.
    let names: Vec<String> = std::fs::read_dir(tmp.path())
        .expect("list")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let mut names = names;
    names.sort();
    assert_eq!(names, ["fsize.dump", "fsize.dump.lock"], "{names:?}");
    let dump = std::fs::read(tmp.path().join("fsize.dump")).expect("the dump");
    assert!(
        dump.len() as u64 > FSIZE_LIMIT,
        "the dump over the limit was written once cleared"
    );
    for line in stderr.lines().filter(|l| l.starts_with("fsize child")) {
        eprintln!("{line}");
    }
}

#[test]
fn a_file_size_limit_fails_the_write_and_keeps_the_last_dump() {
    run_fsize_child();
}

/// The child of [`run_fsize_child`]: does nothing unless [`CHILD_ENV`] is set.
#[test]
#[ignore = "the child process of a_file_size_limit_fails_the_write_and_keeps_the_last_dump"]
fn fsize_child() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let Some(dir) = std::env::var_os(CHILD_ENV) else {
        eprintln!(
            "fsize_child runs only as the child of a_file_size_limit_fails_the_write_and_keeps_the_last_dump"
        );
        return;
    };
    let dir = PathBuf::from(dir);
    let file = dir.join("fsize.dump");
    let original = getrlimit(Resource::Fsize);
    let fault = Fault {
        name: format!("file size limit ({FSIZE_LIMIT} bytes)"),
        errno: Errno::FBIG,
        on: Box::new(|| {
            setrlimit(
                Resource::Fsize,
                Rlimit {
                    current: Some(FSIZE_LIMIT),
                    maximum: original.maximum,
                },
            )
            .expect("lower RLIMIT_FSIZE");
            file.clone()
        }),
        off: Box::new(|| setrlimit(Resource::Fsize, original).expect("raise RLIMIT_FSIZE again")),
        warm_during: true,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let seen = runtime.block_on(survive(&dir, &file, fault));
    eprintln!(
        "fsize child: checked: {} ({} failure(s) counted)",
        seen.error, seen.failures
    );
}
