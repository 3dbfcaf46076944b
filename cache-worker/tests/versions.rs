//! Versions and delta sync (issue #13) through the public API: every change versioned, merged
//! deltas, the retention limits, and the cases where the seed (Chord) answered wrong.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use cache_worker::{Change, Changes, Error, Event, Worker};
use common::{
    Reply, Upstream, builder, contents, drain, key, settle, started, started_on, started_with,
    temp_dump,
};

/// A delta's changes as `(key, Some(value))` for a put and `(key, None)` for a removal.
fn delta(changes: &Changes<String, u64>) -> Vec<(String, Option<u64>)> {
    match changes {
        Changes::Delta { changes, .. } => changes
            .iter()
            .map(|c| match c {
                Change::Put { key, value } => (key.clone(), Some(**value)),
                Change::Removed { key } => (key.clone(), None),
            })
            .collect(),
        other => panic!("not a delta: {other:?}"),
    }
}

fn puts(pairs: &[(&str, u64)]) -> Vec<(String, Option<u64>)> {
    pairs.iter().map(|&(k, v)| (key(k), Some(v))).collect()
}

fn is_full(changes: &Changes<String, u64>) -> bool {
    matches!(changes, Changes::Full { .. })
}

/// A client's copy of a bucket, kept by applying what `changes_since` answers.
#[derive(Default, Debug, PartialEq)]
struct Copy {
    version: Option<u64>,
    entries: HashMap<String, u64>,
}

impl Copy {
    fn sync(&mut self, worker: &Worker<Upstream>) -> Changes<String, u64> {
        let answer = worker.changes_since(self.version);
        self.apply(&answer);
        answer
    }

    fn apply(&mut self, answer: &Changes<String, u64>) {
        match answer {
            Changes::Full { version, entries } => {
                self.entries = entries.iter().map(|(k, v)| (k.clone(), **v)).collect();
                self.version = Some(*version);
            }
            Changes::Delta {
                from,
                version,
                changes,
            } => {
                assert_eq!(Some(*from), self.version, "a delta from where the copy is");
                for change in changes {
                    match change {
                        Change::Put { key, value } => {
                            self.entries.insert(key.clone(), **value);
                        }
                        Change::Removed { key } => {
                            self.entries.remove(key);
                        }
                    }
                }
                self.version = Some(*version);
            }
            Changes::NoChange { version } => {
                assert_eq!(
                    Some(*version),
                    self.version,
                    "no change from where the copy is"
                );
            }
        }
    }
}

#[tokio::test]
async fn none_is_full_the_current_version_is_no_change() {
    let up = Upstream::new();
    let w = started(&up, "basics").await;
    w.insert(key("a"), 1);
    w.insert(key("b"), 2);
    let Changes::Full { version, entries } = w.changes_since(None) else {
        panic!("None is full");
    };
    assert_eq!(version, w.version());
    let mut entries: Vec<_> = entries.into_iter().map(|(k, v)| (k, *v)).collect();
    entries.sort();
    assert_eq!(entries, [(key("a"), 1), (key("b"), 2)]);
    assert_eq!(
        w.changes_since(Some(version)),
        Changes::NoChange { version }
    );
    w.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn every_kind_of_change_moves_the_version_by_one_and_an_equal_write_not_at_all() {
    let up = Upstream::with_values(&[("loaded", 1), ("reloaded", 2), ("gone", 3)]);
    *up.expire_after.lock() = None;
    let w = started(&up, "kinds").await;
    let mut events = w.subscribe();
    let mut version = w.version();
    let mut step = |what: &str, w: &Worker<Upstream>, moves: u64| {
        assert_eq!(w.version(), version + moves, "{what}");
        version = w.version();
    };

    w.fetch(&key("loaded")).await.expect("load");
    step("a load on a miss", &w, 1);
    w.fetch(&key("reloaded")).await.expect("load");
    w.fetch(&key("gone")).await.expect("load");
    step("two more loads", &w, 2);
    w.insert(key("loaded"), 1);
    step("an equal insert", &w, 0);
    w.insert(key("loaded"), 10);
    step("an insert that changes the value", &w, 1);
    w.insert(key("new"), 5);
    step("an insert of a new key", &w, 1);
    up.set_value("reloaded", 20);
    up.set("gone", Reply::Missing);
    w.refresh_all().await.expect("cycle");
    // loaded: upstream still says 1 (the insert said 10), reloaded 2 → 20, gone removed,
    // new: upstream has none → removed.
    step(
        "a refresh cycle: three updates or removals and one removal",
        &w,
        4,
    );
    w.invalidate("reloaded");
    step("an invalidate", &w, 1);
    w.invalidate("reloaded");
    step("an invalidate of an absent key", &w, 0);

    let seen = drain(&mut events).await;
    let versions: Vec<u64> = seen
        .iter()
        .filter_map(|e| match e {
            Event::Inserted { version, .. }
            | Event::Updated { version, .. }
            | Event::Removed { version, .. } => Some(*version),
            _ => None,
        })
        .collect();
    let first = versions[0];
    assert_eq!(
        versions,
        (first..first + versions.len() as u64).collect::<Vec<_>>(),
        "each event carries the next version: {seen:?}"
    );
    assert_eq!(*versions.last().expect("events"), w.version());
    let full_reload = seen
        .iter()
        .find_map(|e| match e {
            Event::FullReload { version, .. } => Some(*version),
            _ => None,
        })
        .expect("the cycle's FullReload");
    assert!(
        versions.contains(&full_reload),
        "FullReload carries the version after the cycle"
    );
    w.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn a_bulk_reload_versions_each_change_it_makes() {
    let up = Upstream::new();
    up.set_collection(&[("a", 1), ("b", 2), ("c", 3)]);
    let w = started(&up, "bulk").await;
    w.refresh_all().await.expect("first cycle");
    let before = w.version();
    up.set_collection(&[("a", 1), ("b", 20), ("d", 4)]);
    w.refresh_all().await.expect("cycle");
    assert_eq!(
        w.version(),
        before + 3,
        "b updated, c gone, d inserted; a unchanged"
    );
    let mut changes = delta(&w.changes_since(Some(before)));
    changes.sort();
    assert_eq!(
        changes,
        [(key("b"), Some(20)), (key("c"), None), (key("d"), Some(4))]
    );
    w.shutdown().await.expect("shutdown");
}

/// The seed's cases, with the corrected answers (TIERS.md): three changes retained, the bucket
/// at v6 (counted from the start).
#[tokio::test]
async fn with_three_retained_only_a_retained_contiguous_run_is_a_delta() {
    let up = Upstream::new();
    let w = started_with(&up, "threshold", |b| b.delta_threshold(3)).await;
    let v0 = w.version();
    let v = |n: u64| v0 + n;
    for i in 1..=6 {
        w.insert(key(&format!("k{i}")), i);
    }
    assert_eq!(w.version(), v(6));
    assert!(
        is_full(&w.changes_since(Some(v(2)))),
        "v2: its next change is gone"
    );
    assert_eq!(
        delta(&w.changes_since(Some(v(3)))),
        puts(&[("k4", 4), ("k5", 5), ("k6", 6)])
    );
    assert_eq!(delta(&w.changes_since(Some(v(5)))), puts(&[("k6", 6)]));
    assert_eq!(
        w.changes_since(Some(v(6))),
        Changes::NoChange { version: v(6) }
    );
    assert!(
        is_full(&w.changes_since(Some(v(7)))),
        "a client ahead of the bucket gets the full state, not no_change"
    );
    assert!(is_full(&w.changes_since(Some(0))), "a version of no run");
    w.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn merged_deltas_keep_one_change_per_key_its_last() {
    let up = Upstream::new();
    let w = started(&up, "merge").await;
    w.insert(key("a"), 1);
    let since = w.version();
    w.insert(key("a"), 2);
    w.insert(key("b"), 1);
    w.insert(key("a"), 3);
    // a: 1 → 2 → 3 is one change, to 3; listed in the order of the last changes.
    assert_eq!(
        delta(&w.changes_since(Some(since))),
        puts(&[("b", 1), ("a", 3)])
    );

    // Inserted and removed inside the window: nothing for a client that never had it.
    let since = w.version();
    w.insert(key("brief"), 9);
    w.invalidate("brief");
    assert_eq!(delta(&w.changes_since(Some(since))), []);

    // Removed and added again: the new value (not "removed").
    let since = w.version();
    w.invalidate("a");
    w.insert(key("a"), 4);
    assert_eq!(delta(&w.changes_since(Some(since))), puts(&[("a", 4)]));

    // Added and then modified: a put of the last value.
    let since = w.version();
    w.insert(key("c"), 1);
    w.insert(key("c"), 2);
    assert_eq!(delta(&w.changes_since(Some(since))), puts(&[("c", 2)]));

    // Modified and then removed: a removal.
    let since = w.version();
    w.insert(key("b"), 5);
    w.invalidate("b");
    assert_eq!(delta(&w.changes_since(Some(since))), [(key("b"), None)]);
    w.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn a_copy_kept_by_deltas_equals_the_bucket_after_random_changes() {
    let up = Upstream::new();
    let w = started_with(&up, "copy", |b| b.delta_threshold(15)).await;
    let mut rng = common::Rng::new(0x5EED_0013);
    let mut copy = Copy::default();
    let (mut deltas, mut fulls) = (0, 0);
    for round in 0..200 {
        for _ in 0..rng.below(30) {
            let k = key(&format!("k{}", rng.below(40)));
            match rng.below(4) {
                0 => {
                    w.invalidate(&k);
                }
                _ => {
                    w.insert(k, rng.below(5));
                }
            }
        }
        match copy.sync(&w) {
            Changes::Delta { .. } => deltas += 1,
            Changes::Full { .. } => fulls += 1,
            Changes::NoChange { .. } => {}
        }
        assert_eq!(copy.entries, contents(&w), "round {round}");
        assert_eq!(copy.version, Some(w.version()), "round {round}");
    }
    assert!(
        deltas > 50 && fulls > 5,
        "both paths taken: {deltas} deltas, {fulls} fulls"
    );
    w.shutdown().await.expect("shutdown");
}

#[tokio::test(start_paused = true)]
async fn a_change_older_than_delta_ttl_is_not_retained() {
    let up = Upstream::new();
    let w = started_with(&up, "ttl", |b| b.delta_ttl(Duration::from_secs(60))).await;
    let v0 = w.version();
    w.insert(key("a"), 1);
    tokio::time::sleep(Duration::from_secs(45)).await;
    let v1 = w.version();
    w.insert(key("b"), 2);
    tokio::time::sleep(Duration::from_secs(30)).await;
    settle().await;
    // a's change is 75 s old: a client before it gets the full state, after it a delta.
    assert!(is_full(&w.changes_since(Some(v0))));
    assert_eq!(delta(&w.changes_since(Some(v1))), puts(&[("b", 2)]));
    tokio::time::sleep(Duration::from_secs(31)).await;
    settle().await;
    assert!(is_full(&w.changes_since(Some(v1))));
    assert_eq!(
        w.changes_since(Some(w.version())),
        Changes::NoChange {
            version: w.version()
        },
        "the current version needs no retained change"
    );
    w.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn no_threshold_keeps_nothing_and_every_sync_is_full() {
    let up = Upstream::new();
    let w = started_with(&up, "off", |b| b.delta_threshold(0)).await;
    let v0 = w.version();
    w.insert(key("a"), 1);
    assert!(is_full(&w.changes_since(Some(v0))));
    assert_eq!(w.version(), v0 + 1, "versions move all the same");
    w.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn versions_of_an_earlier_run_without_a_dump_get_the_full_state() {
    let up = Upstream::new();
    let first = started(&up, "runs").await;
    for i in 0..5 {
        first.insert(key(&format!("k{i}")), i);
    }
    let theirs = first.version();
    first.shutdown().await.expect("shutdown");
    // The bucket deleted and recreated while a client held a version of the first run.
    let second = started(&up, "runs").await;
    second.insert(key("k0"), 7);
    assert!(
        second.version() > theirs,
        "versions are never reused after a cold start"
    );
    assert!(is_full(&second.changes_since(Some(theirs))));
    assert!(is_full(&second.changes_since(Some(theirs - 1))));
    second.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn a_client_at_the_version_of_the_final_dump_gets_a_delta_after_a_warm_start() {
    let (_dir, file) = temp_dump("warm.dump");
    let up = Upstream::new();
    let first = started_on(&up, "warm", &file).await;
    first.insert(key("a"), 1);
    first.insert(key("b"), 2);
    let mut copy = Copy::default();
    copy.sync(&first);
    let dumped = first.version();
    first.shutdown().await.expect("final dump");

    let second = started_on(&up, "warm", &file).await;
    assert!(second.started().is_warm());
    assert!(second.version() >= dumped, "versions go on");
    assert_eq!(
        second.changes_since(Some(dumped)),
        Changes::Delta {
            from: dumped,
            version: second.version(),
            changes: Vec::new()
        },
        "the same state: nothing to apply"
    );
    second.insert(key("b"), 3);
    second.insert(key("c"), 4);
    assert_eq!(
        delta(&second.changes_since(Some(dumped))),
        puts(&[("b", 3), ("c", 4)])
    );
    copy.sync(&second);
    assert_eq!(copy.entries, contents(&second));
    // A version the first run could have given after its dump (had it not stopped) is not one
    // this run can answer from.
    assert!(is_full(&second.changes_since(Some(dumped + 1))));
    second.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn entries_that_expired_while_down_are_removals_in_the_delta_after_a_warm_start() {
    let (_dir, file) = temp_dump("expiring.dump");
    let up = Upstream::new();
    let first = started_on(&up, "expiring", &file).await;
    *up.expire_after.lock() = Some(Duration::from_millis(300));
    first.insert(key("brief"), 1);
    *up.expire_after.lock() = None;
    first.insert(key("kept"), 2);
    let dumped = first.version();
    first.shutdown().await.expect("final dump");
    tokio::time::sleep(Duration::from_millis(400)).await;

    let second = started_on(&up, "expiring", &file).await;
    assert_eq!(second.peek("brief"), None);
    assert_eq!(
        delta(&second.changes_since(Some(dumped))),
        [(key("brief"), None)],
        "the client held it"
    );
    second.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn a_dump_without_a_version_gives_every_client_the_full_state() {
    let (_dir, file) = temp_dump("unversioned.dump");
    // Written by the codec alone, as a dump of no known version (like a format-1 dump).
    let far = common::now_ms() + 3_600_000;
    let bytes = cache_worker::__codec::encode("unversioned", 0, &[(key("a"), 1u64, 0, far)])
        .expect("encode");
    std::fs::write(&file, bytes).expect("write");
    let up = Upstream::new();
    let w = started_on(&up, "unversioned", &file).await;
    assert!(w.started().is_warm());
    let v = w.version();
    assert!(is_full(&w.changes_since(Some(0))));
    assert!(is_full(&w.changes_since(Some(v - 1))));
    assert_eq!(w.changes_since(Some(v)), Changes::NoChange { version: v });
    w.shutdown().await.expect("shutdown");
}

/// Full snapshots and deltas taken while another thread writes are exact: one writer writes
/// the counter `n` to key `n % 16` for n = 1, 2, ..., every write a change, so the bucket at
/// version `v0 + n` is known exactly. With the log, a snapshot is patched from it; without
/// (threshold 0), it is retried and at last read with writers held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_and_deltas_taken_during_writes_are_exact() {
    for threshold in [WRITES as usize, 0] {
        snapshots_during_writes(threshold).await;
    }
}

const KEYS: u64 = 16;
const WRITES: u64 = 60_000;

async fn snapshots_during_writes(threshold: usize) {
    let up = Upstream::new();
    let w = started_with(&up, "concurrent", |b| b.delta_threshold(threshold)).await;
    let v0 = w.version();
    let writer = {
        let w = w.clone();
        std::thread::spawn(move || {
            for n in 1..=WRITES {
                w.insert(format!("k{}", n % KEYS), n);
            }
        })
    };
    let state_at = |version: u64| -> HashMap<String, u64> {
        let n = version - v0;
        (1..=n.min(KEYS))
            .map(|first| {
                // The last counter ≤ n with the same key as `first`.
                let last = first + (n - first) / KEYS * KEYS;
                (format!("k{}", last % KEYS), last)
            })
            .collect()
    };
    let mut copy = Copy::default();
    let (mut fulls, mut deltas) = (0u64, 0u64);
    while !writer.is_finished() {
        let answer = w.changes_since(copy.version);
        if let Changes::Full { version, .. } = &answer {
            let snapshot: HashMap<String, u64> = match &answer {
                Changes::Full { entries, .. } => {
                    entries.iter().map(|(k, v)| (k.clone(), **v)).collect()
                }
                _ => unreachable!(),
            };
            assert_eq!(snapshot, state_at(*version), "a full snapshot at {version}");
            fulls += 1;
        }
        if matches!(answer, Changes::Delta { .. }) {
            deltas += 1;
        }
        copy.apply(&answer);
        let version = copy.version.expect("synced");
        assert_eq!(copy.entries, state_at(version), "the copy at {version}");
        // Now and then start again, so that fulls are taken mid-write too.
        if (fulls + deltas) % 7 == 0 {
            copy.version = None;
        }
        tokio::task::yield_now().await;
    }
    writer.join().expect("writer");
    assert_eq!(w.version(), v0 + WRITES);
    assert!(fulls > 0, "{fulls} fulls");
    assert!(threshold == 0 || deltas > 0, "{deltas} deltas");
    eprintln!(
        "[figures] threshold {threshold}: {fulls} fulls, {deltas} deltas during {WRITES} writes"
    );
    w.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn delta_settings_are_checked_and_have_the_documented_defaults() {
    let up = Upstream::new();
    let err = builder(&up, "bad-threshold")
        .delta_threshold(cache_worker::Settings::MAX_DELTA_THRESHOLD + 1)
        .start()
        .await
        .expect_err("out of range");
    assert!(
        matches!(&err, Error::InvalidConfig { setting, .. } if *setting == "delta_threshold"),
        "{err}"
    );
    let err = builder(&up, "bad-ttl")
        .delta_ttl(Duration::from_secs(3651 * 24 * 3600))
        .start()
        .await
        .expect_err("out of range");
    assert!(
        matches!(&err, Error::InvalidConfig { setting, .. } if *setting == "delta_ttl"),
        "{err}"
    );
    let w = started(&up, "defaults").await;
    assert_eq!(w.settings().delta_threshold, 10_000);
    assert_eq!(w.settings().delta_ttl, Duration::from_secs(3600));
    w.shutdown().await.expect("shutdown");
}

/// A dump of `bucket` holding `a` → 1, at `version`, exact, resealed as a worker would write it
/// (format 2: version at 36, flags at 44, the CRC at 32 over bytes 36..48 and the body).
fn dump_at_version(bucket: &str, version: u64) -> Vec<u8> {
    dump_at(bucket, version, true)
}

/// [`dump_at_version`], exact or not.
fn dump_at(bucket: &str, version: u64, exact: bool) -> Vec<u8> {
    let far = common::now_ms() + 3_600_000;
    let mut bytes =
        cache_worker::__codec::encode(bucket, 0, &[(key("a"), 1u64, 0, far)]).expect("encode");
    bytes[36..44].copy_from_slice(&version.to_le_bytes());
    bytes[44..48].copy_from_slice(&u32::from(exact).to_le_bytes());
    let body = 50 + bucket.len();
    let mut crc = crc32fast::Hasher::new();
    crc.update(&bytes[36..48]);
    crc.update(&bytes[body..]);
    let crc = crc.finalize();
    bytes[32..36].copy_from_slice(&crc.to_le_bytes());
    bytes
}

#[tokio::test]
async fn a_worker_started_again_in_the_process_starts_after_the_last_one_even_ahead_of_the_clock() {
    let (_dir, file) = temp_dump("ahead.dump");
    // A run whose versions got far ahead of the clock (as one that changed faster than a
    // million times a second would): its dump is at the clock plus eleven days.
    let ahead = common::now_ms() * 1000 + 1_000_000_000_000;
    std::fs::write(&file, dump_at_version("ahead", ahead)).expect("write");
    let up = Upstream::new();
    let first = started_on(&up, "ahead", &file).await;
    assert_eq!(
        first.version(),
        ahead,
        "it goes on after its dump's version"
    );
    for i in 0..5 {
        first.insert(key(&format!("k{i}")), i);
    }
    let seen = first.version();
    first.shutdown().await.expect("shutdown");
    std::fs::remove_file(&file).expect("remove the dump");

    // Started again cold: the clock alone would start it eleven days of versions back.
    let second = started_on(&up, "ahead", &file).await;
    assert!(!second.started().is_warm());
    assert!(
        second.version() > seen,
        "{} must be after {seen}",
        second.version()
    );
    second.insert(key("k0"), 99);
    assert!(is_full(&second.changes_since(Some(seen))));
    second.shutdown().await.expect("shutdown");

    // Dropped without a shutdown: the same.
    let third = started(&up, "ahead-dropped").await;
    third.insert(key("x"), 1);
    let seen = third.version();
    drop(third);
    let fourth = started(&up, "ahead-dropped").await;
    assert!(fourth.version() > seen);
    fourth.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn a_dump_claiming_an_impossible_version_is_read_as_of_no_known_version() {
    let (_dir, file) = temp_dump("max.dump");
    std::fs::write(&file, dump_at_version("max", u64::MAX)).expect("write");
    let up = Upstream::new();
    let w = started_on(&up, "max", &file).await;
    assert!(w.started().is_warm(), "its entries are good");
    assert!(w.version() < 1 << 53, "{}", w.version());
    w.insert(key("b"), 2);
    w.insert(key("a"), 3);
    assert!(is_full(&w.changes_since(Some(u64::MAX))));
    assert!(is_full(&w.changes_since(Some(u64::MAX - 1))));
    w.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn after_a_dump_written_during_changes_a_client_at_its_version_gets_the_full_state() {
    let (_dir, file) = temp_dump("inexact.dump");
    let dumped = common::now_ms() * 1000 - 1_000_000;
    std::fs::write(&file, dump_at("inexact", dumped, false)).expect("write");
    let up = Upstream::new();
    let w = started_on(&up, "inexact", &file).await;
    assert!(w.started().is_warm());
    assert!(
        is_full(&w.changes_since(Some(dumped))),
        "its records may hold changes after its version"
    );
    // The same dump, exact: the client at its version is where the run started.
    w.shutdown().await.expect("shutdown");
    std::fs::write(&file, dump_at("inexact", dumped, true)).expect("write");
    let w = started_on(&up, "inexact", &file).await;
    assert!(matches!(
        w.changes_since(Some(dumped)),
        Changes::Delta { from, ref changes, .. } if from == dumped && changes.is_empty()
    ));
    w.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn an_answer_says_its_version_and_a_change_its_key() {
    let up = Upstream::new();
    let w = started(&up, "accessors").await;
    let v0 = w.version();
    assert_eq!(w.changes_since(Some(v0)).version(), v0);
    w.insert(key("a"), 1);
    w.insert(key("b"), 2);
    w.invalidate("b");
    w.insert(key("c"), 3);
    let answer = w.changes_since(Some(v0 + 1));
    assert_eq!(answer.version(), w.version());
    let Changes::Delta { changes, .. } = &answer else {
        panic!("{answer:?}")
    };
    let keys: Vec<&String> = changes.iter().map(Change::key).collect();
    assert_eq!(keys, [&key("c")], "b came and went inside the window");
    assert_eq!(w.changes_since(None).version(), w.version());
    w.shutdown().await.expect("shutdown");
}
