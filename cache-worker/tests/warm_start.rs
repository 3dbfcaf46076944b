//! Warm starts from a dump file, through the public API: a dump survives a restart, stale
//! restored entries are revalidated in the background, entry ages survive, entries that expired
//! while the process was down are not restored, and seeding runs on a cold start only.
//!
//! Every test works in its own `tempfile::tempdir()`. A few tests rewrite a dump's bytes; they
//! follow the layout documented in `src/codec.rs` (see [`DumpImage`]).

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use cache_worker::{Error, Worker};
use common::{
    SeedFailure, Upstream, dumping, eventually, key, now_ms, settle, started_on, temp_dump,
    write_dump,
};

// ---------------------------------------------------------------------------------------------
// A dump survives a restart
// ---------------------------------------------------------------------------------------------

/// Checks that `w` restored `k0..k<n>` (`ki` = i) from its dump and serves them now (`why`).
fn assert_serves_restored(w: &Worker<Upstream>, n: u64, why: &str) {
    assert_eq!(w.stats().restored, n);
    for i in 0..n {
        assert_eq!(w.peek(&format!("k{i}")).as_deref(), Some(&i), "k{i}: {why}");
    }
}

#[tokio::test]
async fn a_dump_survives_a_restart_and_the_next_start_is_warm() {
    let (_dir, file) = temp_dump("survives.dump");

    let up = Upstream::new();
    for (k, v) in [("a", 1), ("b", 2), ("c", 3)] {
        up.set_value(k, v);
    }
    let w = started_on(&up, "survives", &file).await;
    assert_eq!(w.stats().restored, 0);
    for k in ["a", "b", "c"] {
        w.fetch(&key(k)).await.expect("load");
    }
    w.insert(key("d"), 4);
    w.insert(key("e"), 5);
    w.shutdown().await.expect("shutdown");
    assert_eq!(up.total_loads(), 3);
    assert!(file.exists(), "shutdown wrote the final dump");

    // A new upstream that would answer differently: anything it is asked shows up.
    let up2 = Upstream::new();
    for (k, v) in [("a", 10), ("b", 20), ("c", 30), ("d", 40), ("e", 50)] {
        up2.set_value(k, v);
    }
    let w2 = started_on(&up2, "survives", &file).await;
    // Before anything else runs: the values are there, from the dump.
    for (k, v) in [("a", 1), ("b", 2), ("c", 3), ("d", 4), ("e", 5)] {
        assert_eq!(w2.peek(k).as_deref(), Some(&v), "{k} restored");
    }
    let stats = w2.stats();
    assert_eq!(stats.restored, 5);
    assert_eq!(stats.entries, 5);
    assert_eq!(w2.len(), 5);
    let mut keys = w2.keys();
    keys.sort();
    assert_eq!(keys, ["a", "b", "c", "d", "e"]);

    // Fetches are hits; the entries are fresh (refresh is an hour), so the background
    // revalidation has nothing to do.
    for (k, v) in [("a", 1), ("e", 5)] {
        assert_eq!(*w2.fetch(&key(k)).await.expect("hit"), v);
    }
    settle().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        up2.total_loads(),
        0,
        "the loader was not called for restored keys"
    );
    assert_eq!(
        up2.seeds.load(Ordering::SeqCst),
        0,
        "a warm start does not seed"
    );
    assert_eq!(
        w2.stats().refresh_cycles,
        0,
        "no revalidation cycle for fresh entries"
    );
    w2.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn stale_restored_entries_are_revalidated_in_the_background() {
    let (_dir, file) = temp_dump("stale.dump");
    write_dump(&file, "stale", 20).await;
    // Make sure every entry is older than the refresh interval used below.
    tokio::time::sleep(Duration::from_millis(50)).await;

    let up = Upstream::new();
    for i in 0..20 {
        up.set_value(&format!("k{i}"), i + 1000);
    }
    let w = dumping(&up, "stale", &file)
        .refresh(Duration::from_millis(10))
        .start()
        .await
        .expect("start");
    // Current-thread runtime: nothing in the background ran yet. The old values answer at once.
    assert_serves_restored(&w, 20, "the old value");
    assert_eq!(up.total_loads(), 0);

    let revalidated = eventually(|| {
        (0..20).all(|i| {
            let k = format!("k{i}");
            up.loads_of(&k) >= 1 && w.peek(&k).as_deref() == Some(&(i + 1000))
        })
    })
    .await;
    assert!(
        revalidated,
        "every restored key is reloaded in the background: loads {:?}",
        up.loads.lock()
    );
    w.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn entry_ages_survive_a_restart() {
    let (_dir, file) = temp_dump("ages.dump");
    let bytes = write_dump(&file, "ages", 10).await;

    // The test's reading of the layout is exact: a re-encode gives the same bytes.
    let mut image = DumpImage::parse(&bytes);
    assert_eq!(image.records().count(), 10);
    assert_eq!(
        image.encode(),
        bytes,
        "the test re-encodes the dump byte for byte"
    );
    let now = now_ms();
    for r in image.records() {
        assert!(
            r.loaded_at <= now && r.loaded_at + 60_000 > now,
            "loaded_at is wall-clock ms: {r:?}"
        );
        assert_eq!(r.expires_at, u64::MAX, "no expiry");
    }

    // k0..k4 were loaded two hours ago; k5..k9 just now.
    for i in 0..5 {
        image.record_mut(&format!("k{i}")).loaded_at = now - 2 * 3_600_000;
    }
    std::fs::write(&file, image.encode()).expect("rewrite the dump");

    let up = Upstream::new();
    for i in 0..10 {
        up.set_value(&format!("k{i}"), i + 100);
    }
    let w = started_on(&up, "ages", &file).await; // refresh: 1 h
    assert_serves_restored(&w, 10, "served at once");
    // The revalidation after the warm start is one (counted) cycle; the next periodic one is an
    // hour away, so every load seen here is that revalidation.
    assert!(
        eventually(|| w.stats().refresh_cycles >= 1).await,
        "a revalidation cycle ran"
    );
    for i in 0..5 {
        let k = format!("k{i}");
        assert_eq!(
            up.loads_of(&k),
            1,
            "{k} is older than the interval: reloaded"
        );
        assert_eq!(w.peek(&k).as_deref(), Some(&(i + 100)), "{k} revalidated");
    }
    for i in 5..10 {
        let k = format!("k{i}");
        assert_eq!(up.loads_of(&k), 0, "{k} is fresh: not reloaded");
        assert_eq!(w.peek(&k).as_deref(), Some(&i), "{k} keeps its value");
    }
    assert_eq!(w.stats().refresh_cycles, 1);
    w.shutdown().await.expect("shutdown");

    // The reloaded entries carry their new load time into the next dump; the others keep theirs.
    let after = DumpImage::parse(&std::fs::read(&file).expect("dump"));
    assert_eq!(after.records().count(), 10);
    for r in after.records() {
        let n: u64 = r.key[1..].parse().expect("k<n>");
        let before = image.records().find(|b| b.key == r.key).expect("same keys");
        if n < 5 {
            assert!(r.loaded_at >= now, "{r:?} reloaded now");
        } else {
            assert_eq!(r.loaded_at, before.loaded_at, "{} keeps its age", r.key);
        }
    }
}

#[tokio::test]
async fn entries_that_expired_while_down_are_not_restored() {
    let (_dir, file) = temp_dump("expired.dump");
    let bytes = write_dump(&file, "expired", 6).await;
    let mut image = DumpImage::parse(&bytes);
    let now = now_ms();
    image.record_mut("k0").expires_at = now - 1_000;
    image.record_mut("k1").expires_at = now - 1;
    image.record_mut("k2").expires_at = now + 3_600_000;
    std::fs::write(&file, image.encode()).expect("rewrite the dump");

    let up = Upstream::new();
    let w = started_on(&up, "expired", &file).await;
    assert_eq!(
        w.stats().restored,
        4,
        "two entries expired while the process was down"
    );
    assert_eq!(w.peek("k0"), None);
    assert_eq!(w.peek("k1"), None);
    for i in 2..6 {
        assert_eq!(w.peek(&format!("k{i}")).as_deref(), Some(&i));
    }
    assert_eq!(up.seeds.load(Ordering::SeqCst), 0, "still a warm start");
    w.shutdown().await.expect("shutdown");
}

// ---------------------------------------------------------------------------------------------
// Seeding only on a cold start
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn seeding_runs_on_a_cold_start_only() {
    let (_dir, file) = temp_dump("seed.dump");

    let up = Upstream::with_seed(Some(Ok(vec![(key("s1"), 1), (key("s2"), 2)])));
    let w = started_on(&up, "seed", &file).await;
    assert_eq!(up.seeds.load(Ordering::SeqCst), 1, "a cold start seeds");
    assert_eq!(w.peek("s1").as_deref(), Some(&1));
    assert_eq!(w.peek("s2").as_deref(), Some(&2));
    assert_eq!(w.len(), 2);
    assert_eq!(w.stats().restored, 0);
    assert_eq!(up.total_loads(), 0, "seeded entries are not loaded");
    w.shutdown().await.expect("shutdown");

    let up2 = Upstream::with_seed(Some(Ok(vec![(key("s3"), 3)])));
    let w2 = started_on(&up2, "seed", &file).await;
    assert_eq!(
        up2.seeds.load(Ordering::SeqCst),
        0,
        "no seeding after a restore"
    );
    assert_eq!(w2.stats().restored, 2);
    assert_eq!(w2.peek("s1").as_deref(), Some(&1));
    assert_eq!(w2.peek("s2").as_deref(), Some(&2));
    assert_eq!(w2.peek("s3"), None, "the seed did not run");
    w2.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn a_seed_that_skips_starts_empty() {
    let (_dir, file) = temp_dump("skip.dump");
    let up = Upstream::with_seed(Some(Err(SeedFailure::Skip)));
    let w = started_on(&up, "skip", &file).await;
    assert_eq!(up.seeds.load(Ordering::SeqCst), 1);
    assert_eq!(w.len(), 0);
    assert!(w.is_empty());
    // The worker works.
    up.set_value("a", 7);
    assert_eq!(*w.fetch(&key("a")).await.expect("fetch"), 7);
    w.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn a_seed_that_aborts_fails_the_start() {
    let (_dir, file) = temp_dump("abort.dump");
    let up = Upstream::with_seed(Some(Err(SeedFailure::Abort)));
    match dumping(&up, "abort", &file).start().await {
        Err(Error::SeedAborted { bucket, source }) => {
            assert_eq!(bucket, "abort");
            assert!(source.to_string().contains("seed says stop"), "{source}");
        }
        other => panic!("expected SeedAborted, got {other:?}"),
    }
    assert_eq!(up.seeds.load(Ordering::SeqCst), 1);
    assert!(!file.exists(), "an aborted start writes no dump");

    // A later start with a seed that succeeds works.
    *up.seed.lock() = Some(Ok(vec![(key("x"), 1)]));
    let w = started_on(&up, "abort", &file).await;
    assert_eq!(w.peek("x").as_deref(), Some(&1));
    w.shutdown().await.expect("shutdown");
}

// ---------------------------------------------------------------------------------------------
// The dump layout, as far as the tests above rewrite it
// ---------------------------------------------------------------------------------------------

/// A dump of `String` → `u64`, decoded just far enough to rewrite entry times. The layout is the
/// one documented in `src/codec.rs` for format 3, which workers write: a 50-byte fixed header
/// (magic, format, schema, count at 16, body length at 24, CRC-32 at 32 of the bytes 36..48 and
/// the body, the bucket's version at 36 and flags at 44, bucket name length at 48), the bucket
/// name, then blocks: each the length of its records (u32 LE), their count (u32 LE), then the
/// records: key length, value length (u32 LE), loaded_at, expires_at (u64 LE), then the key and
/// the value in bincode 2 with varint integers.
struct DumpImage {
    header: Vec<u8>,
    /// The records, block by block.
    blocks: Vec<Vec<Record>>,
}

#[derive(Clone, Debug, PartialEq)]
struct Record {
    key: String,
    value: u64,
    loaded_at: u64,
    expires_at: u64,
}

fn u32_at(bytes: &[u8], at: usize) -> usize {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

impl DumpImage {
    fn parse(bytes: &[u8]) -> Self {
        assert_eq!(u32_at(bytes, 8), 3, "workers write format 3");
        let name_len = u16::from_le_bytes([bytes[48], bytes[49]]) as usize;
        let start = 50 + name_len;
        let mut at = start;
        let mut blocks = Vec::new();
        while at < bytes.len() {
            let (len, count) = (u32_at(bytes, at), u32_at(bytes, at + 4));
            at += 8;
            let end = at + len;
            let mut records = Vec::new();
            for _ in 0..count {
                let (key_len, value_len) = (u32_at(bytes, at), u32_at(bytes, at + 4));
                let (loaded_at, expires_at) = (u64_at(bytes, at + 8), u64_at(bytes, at + 16));
                at += 24;
                let mut key_at = at;
                let len = read_varint(bytes, &mut key_at) as usize;
                let key = String::from_utf8(bytes[key_at..key_at + len].to_vec()).expect("utf-8");
                assert_eq!(key_at + len, at + key_len, "the key fills its bytes");
                at += key_len;
                let mut value_at = at;
                let value = read_varint(bytes, &mut value_at);
                assert_eq!(value_at, at + value_len, "the value fills its bytes");
                at += value_len;
                records.push(Record {
                    key,
                    value,
                    loaded_at,
                    expires_at,
                });
            }
            assert_eq!(at, end, "the records fill their block");
            blocks.push(records);
        }
        assert_eq!(at, bytes.len(), "the test's reading of the dump layout");
        let image = DumpImage {
            header: bytes[..start].to_vec(),
            blocks,
        };
        assert_eq!(image.records().count() as u64, u64_at(bytes, 16));
        image
    }

    fn records(&self) -> impl Iterator<Item = &Record> {
        self.blocks.iter().flatten()
    }

    fn encode(&self) -> Vec<u8> {
        let mut body = Vec::new();
        for records in &self.blocks {
            let mut block = Vec::new();
            for r in records {
                let mut key = Vec::new();
                write_varint(&mut key, r.key.len() as u64);
                key.extend_from_slice(r.key.as_bytes());
                let mut value = Vec::new();
                write_varint(&mut value, r.value);
                block.extend_from_slice(&(key.len() as u32).to_le_bytes());
                block.extend_from_slice(&(value.len() as u32).to_le_bytes());
                block.extend_from_slice(&r.loaded_at.to_le_bytes());
                block.extend_from_slice(&r.expires_at.to_le_bytes());
                block.extend_from_slice(&key);
                block.extend_from_slice(&value);
            }
            body.extend_from_slice(&(block.len() as u32).to_le_bytes());
            body.extend_from_slice(&(records.len() as u32).to_le_bytes());
            body.extend_from_slice(&block);
        }
        let mut out = self.header.clone();
        let count = self.records().count() as u64;
        out[16..24].copy_from_slice(&count.to_le_bytes());
        out[24..32].copy_from_slice(&(body.len() as u64).to_le_bytes());
        let checked = [&out[36..48], &body].concat();
        out[32..36].copy_from_slice(&crc32(&checked).to_le_bytes());
        out.extend_from_slice(&body);
        out
    }

    fn record_mut(&mut self, key: &str) -> &mut Record {
        self.blocks
            .iter_mut()
            .flatten()
            .find(|r| r.key == key)
            .expect("key in the dump")
    }
}

fn read_varint(bytes: &[u8], at: &mut usize) -> u64 {
    let tag = bytes[*at];
    *at += 1;
    let width = match tag {
        0..=250 => return u64::from(tag),
        251 => 2,
        252 => 4,
        253 => 8,
        _ => panic!("unexpected varint tag {tag}"),
    };
    let mut buf = [0u8; 8];
    buf[..width].copy_from_slice(&bytes[*at..*at + width]);
    *at += width;
    u64::from_le_bytes(buf)
}

fn write_varint(out: &mut Vec<u8>, v: u64) {
    if v < 251 {
        out.push(v as u8);
    } else if v <= u64::from(u16::MAX) {
        out.push(251);
        out.extend_from_slice(&(v as u16).to_le_bytes());
    } else if v <= u64::from(u32::MAX) {
        out.push(252);
        out.extend_from_slice(&(v as u32).to_le_bytes());
    } else {
        out.push(253);
        out.extend_from_slice(&v.to_le_bytes());
    }
}

/// CRC-32 (IEEE), as `crc32fast` computes it.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}
