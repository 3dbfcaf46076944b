//! Dumps a start refuses, through the public API: a dump of another bucket or schema is left
//! alone; a damaged one (random bytes, torn, a flipped bit, a lying header) gives a cold start,
//! never a panic, and is moved aside to `<file>.corrupt`.
//!
//! Every test works in its own `tempfile::tempdir()`. The codec's own answers to hostile bytes
//! are in `hostile_dumps.rs`.

mod common;

use std::path::Path;
use std::sync::atomic::Ordering;

use cache_worker::{ColdStart, StartKind};
use common::{
    HOUR, Nothing, Rng, Upstream, builder, corrupt_path, dumping, key, started_on, temp_dump,
    write_dump,
};

/// Where the bucket name starts in the dumps a worker writes (format 3, `src/codec.rs`): after
/// the 36 bytes every format has, the version and flags (under the checksum) and the name length.
const NAME_AT: usize = 50;

/// Starts a worker on a damaged dump and checks the outcome: a cold start (seeded, nothing
/// restored, nothing served), the bad file moved to `<file>.corrupt` byte for byte, and nothing
/// left at the original path.
async fn assert_cold_and_moved_aside(file: &Path, bucket: &str, bad: &[u8], case: &str) {
    let aside = corrupt_path(file);
    let _ = std::fs::remove_file(&aside);
    std::fs::write(file, bad).expect("write the damaged dump");
    let up = Upstream::new();
    let w = started_on(&up, bucket, file).await;
    assert_eq!(w.len(), 0, "{case}: cold start");
    assert_eq!(w.stats().restored, 0, "{case}: nothing restored");
    assert_eq!(w.peek("k0"), None, "{case}: nothing served");
    assert_eq!(
        up.seeds.load(Ordering::SeqCst),
        1,
        "{case}: a cold start seeds"
    );
    assert!(!file.exists(), "{case}: the damaged dump is moved away");
    let moved = std::fs::read(&aside).unwrap_or_else(|e| panic!("{case}: no {aside:?}: {e}"));
    assert_eq!(moved, bad, "{case}: the .corrupt file is the damaged dump");
    drop(w);
    std::fs::remove_file(&aside).expect("remove .corrupt");
}

// ---------------------------------------------------------------------------------------------
// Foreign dumps are refused and left alone
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_dump_of_another_bucket_is_refused() {
    let (_dir, file) = temp_dump("shared.dump");
    let bytes = write_dump(&file, "a", 3).await;

    let up = Upstream::new();
    let b = started_on(&up, "b", &file).await;
    assert_eq!(b.len(), 0, "refused: cold start");
    assert_eq!(
        b.started(),
        &StartKind::Cold(ColdStart::Foreign {
            bucket: "a".to_owned(),
            schema: 0
        })
    );
    assert_eq!(b.stats().restored, 0);
    assert_eq!(b.peek("k0"), None);
    assert_eq!(
        up.seeds.load(Ordering::SeqCst),
        1,
        "a refused dump is a cold start"
    );
    assert_eq!(
        std::fs::read(&file).expect("still there"),
        bytes,
        "not renamed, not changed"
    );
    assert!(
        !corrupt_path(&file).exists(),
        "a foreign dump is not corrupt"
    );
    drop(b); // no change, no shutdown: b writes nothing

    let a = started_on(&Upstream::new(), "a", &file).await;
    assert_eq!(a.stats().restored, 3, "bucket a still starts warm from it");
    assert_eq!(a.peek("k2").as_deref(), Some(&2));
    a.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn a_dump_of_another_schema_is_refused() {
    let (_dir, file) = temp_dump("schema.dump");
    let w = dumping(&Upstream::new(), "schema", &file)
        .schema(1)
        .start()
        .await
        .expect("start");
    w.insert(key("a"), 1);
    w.shutdown().await.expect("shutdown");
    let bytes = std::fs::read(&file).expect("dump");

    let up = Upstream::new();
    let w2 = dumping(&up, "schema", &file)
        .schema(2)
        .start()
        .await
        .expect("start");
    assert_eq!(w2.len(), 0, "schema 2 refuses a schema-1 dump");
    assert_eq!(w2.stats().restored, 0);
    assert_eq!(up.seeds.load(Ordering::SeqCst), 1);
    assert_eq!(std::fs::read(&file).expect("still there"), bytes);
    assert!(!corrupt_path(&file).exists());
    drop(w2);

    let w1 = dumping(&Upstream::new(), "schema", &file)
        .schema(1)
        .start()
        .await
        .expect("start");
    assert_eq!(w1.stats().restored, 1);
    assert_eq!(w1.peek("a").as_deref(), Some(&1));
    w1.shutdown().await.expect("shutdown");
}

// ---------------------------------------------------------------------------------------------
// Damaged dumps: a cold start, never a panic, the bad file moved aside
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn random_bytes_give_a_cold_start() {
    let (_dir, file) = temp_dump("random.dump");
    let mut rng = Rng::new(0x5EED_0001);
    for size in [0usize, 1, 7, 8, 37, 38, 39, 64, 100, 1000, 4096, 65_536] {
        for round in 0..3 {
            let bad = rng.bytes(size);
            assert_cold_and_moved_aside(&file, "random", &bad, &format!("{size} bytes #{round}"))
                .await;
        }
    }
    // Random bytes behind a valid magic and format version (each format read) get further into
    // the decoder.
    for format in [1u32, 2, 3] {
        for size in [0usize, 1, 29, 30, 31, 37, 38, 39, 100, 5000] {
            for round in 0..3 {
                let mut bad = b"CWDUMP\0\n".to_vec();
                bad.extend_from_slice(&format.to_le_bytes());
                bad.extend(rng.bytes(size));
                let case = format!("magic, format {format} + {size} #{round}");
                assert_cold_and_moved_aside(&file, "random", &bad, &case).await;
            }
        }
    }
}

/// The value type that replaced `u64`.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct Price {
    amount: u64,
    currency: String,
}

#[tokio::test]
async fn a_dump_of_another_value_type_under_the_same_schema_is_moved_aside() {
    let (_dir, file) = temp_dump("typed.dump");
    let bytes = write_dump(&file, "typed", 3).await;

    // The common upstream's keys, whose value type is no longer u64 but the schema the same.
    let w = builder(&Nothing::<String, Price>::default(), "typed")
        .file(&file)
        .refresh(HOUR)
        .start()
        .await
        .expect("start");
    assert_eq!(w.len(), 0, "a cold start");
    assert_eq!(w.stats().restored, 0);
    match w.started() {
        StartKind::Cold(ColdStart::Damaged { reason, moved_to }) => {
            assert!(reason.contains("bump `schema`"), "{reason}");
            assert_eq!(*moved_to, corrupt_path(&file));
        }
        other => panic!("expected a damaged cold start, got {other:?}"),
    }
    assert!(!file.exists(), "the dump is moved away");
    assert_eq!(
        std::fs::read(corrupt_path(&file)).expect("moved aside"),
        bytes,
        "the .corrupt file is the dump, byte for byte"
    );
    w.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn a_damaged_dump_stays_aside_until_the_next_dump() {
    let (_dir, file) = temp_dump("aside.dump");
    std::fs::write(&file, b"not a dump at all").expect("write");
    let w = started_on(&Upstream::new(), "aside", &file).await;
    assert_eq!(w.len(), 0);
    assert!(!file.exists());
    assert!(corrupt_path(&file).exists());
    w.insert(key("a"), 1);
    w.dump().await.expect("dump");
    assert!(file.exists(), "the next dump writes the file again");
    assert_eq!(
        std::fs::read(corrupt_path(&file)).expect("still aside"),
        b"not a dump at all"
    );
    w.shutdown().await.expect("shutdown");

    let w2 = started_on(&Upstream::new(), "aside", &file).await;
    assert_eq!(w2.stats().restored, 1);
    assert_eq!(w2.peek("a").as_deref(), Some(&1));
    w2.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn torn_dumps_give_a_cold_start() {
    let (dir, source) = temp_dump("source.dump");

    // Every truncation of a small dump.
    let small = write_dump(&source, "torn", 5).await;
    let file = dir.path().join("torn.dump");
    for len in 0..small.len() {
        assert_cold_and_moved_aside(
            &file,
            "torn",
            &small[..len],
            &format!("small torn at {len}"),
        )
        .await;
    }

    // Sampled truncations of a larger one, including right around the header.
    let large = write_dump(&source, "torn", 3000).await;
    let mut rng = Rng::new(0x7042_0002);
    let header = NAME_AT + "torn".len();
    let mut lengths: Vec<usize> = vec![0, 35, 36, 37, NAME_AT - 1, NAME_AT, header - 1, header];
    lengths.extend([header + 1, large.len() - 1]);
    lengths.extend((0..40).map(|_| rng.below(large.len() as u64) as usize));
    for len in lengths {
        assert_cold_and_moved_aside(
            &file,
            "torn",
            &large[..len],
            &format!("large torn at {len}"),
        )
        .await;
    }
}

#[tokio::test]
async fn a_flipped_byte_in_the_body_gives_a_cold_start() {
    let (dir, source) = temp_dump("source.dump");
    let good = write_dump(&source, "flip", 8).await;
    let body_start = NAME_AT + "flip".len();
    let file = dir.path().join("flip.dump");
    let mut rng = Rng::new(0xF11B_0003);
    for at in body_start..good.len() {
        let mut bad = good.clone();
        bad[at] ^= 1 << rng.below(8);
        assert_cold_and_moved_aside(&file, "flip", &bad, &format!("bit flipped at {at}")).await;
    }
}

#[tokio::test]
async fn a_flipped_byte_in_the_header_is_never_a_warm_start() {
    // Only the version and flags of the header are covered by the checksum: a flip there is a
    // damaged dump (moved aside), elsewhere either a damaged dump or, in the bucket name or
    // schema, a foreign one (left in place). Never a panic and never a partly served dump.
    let (dir, source) = temp_dump("source.dump");
    let good = write_dump(&source, "hdr", 8).await;
    let file = dir.path().join("hdr.dump");
    let aside = corrupt_path(&file);
    for at in 0..NAME_AT + "hdr".len() {
        for bit in [0, 7] {
            let mut bad = good.clone();
            bad[at] ^= 1 << bit;
            let _ = std::fs::remove_file(&aside);
            std::fs::write(&file, &bad).expect("write");
            let w = started_on(&Upstream::new(), "hdr", &file).await;
            let case = format!("header byte {at} bit {bit}");
            assert_eq!(w.len(), 0, "{case}");
            assert_eq!(w.stats().restored, 0, "{case}");
            let moved = aside.exists();
            let kept = file.exists();
            assert!(moved != kept, "{case}: moved aside xor left in place");
            if kept {
                assert_eq!(
                    std::fs::read(&file).expect("read"),
                    bad,
                    "{case}: untouched"
                );
            }
            drop(w);
        }
    }
}

#[tokio::test]
async fn a_header_claiming_a_huge_entry_count_gives_a_cold_start() {
    let (dir, source) = temp_dump("source.dump");
    let good = write_dump(&source, "huge", 4).await;
    let file = dir.path().join("huge.dump");
    for count in [5u64, 1 << 20, 1 << 40, u64::MAX / 2, u64::MAX] {
        let mut bad = good.clone();
        bad[16..24].copy_from_slice(&count.to_le_bytes());
        assert_cold_and_moved_aside(&file, "huge", &bad, &format!("count {count}")).await;
    }
    // And one that claims fewer records than the body holds.
    let mut bad = good.clone();
    bad[16..24].copy_from_slice(&3u64.to_le_bytes());
    assert_cold_and_moved_aside(&file, "huge", &bad, "count 3 of 4").await;
    // A huge body length, too.
    let mut bad = good;
    bad[24..32].copy_from_slice(&u64::MAX.to_le_bytes());
    assert_cold_and_moved_aside(&file, "huge", &bad, "body length u64::MAX").await;
}

#[tokio::test]
async fn a_lying_length_in_the_blocks_under_a_valid_checksum_gives_a_cold_start() {
    // Format 3 frames its records in blocks: a block's length and count, each record's key and
    // value lengths. A hostile file may lie in them and still carry the right checksum.
    let (dir, source) = temp_dump("source.dump");
    let good = write_dump(&source, "framing", 6).await;
    let file = dir.path().join("framing.dump");
    let block = NAME_AT + "framing".len();
    for (what, at) in [
        ("block length", block),
        ("block count", block + 4),
        ("key length", block + 8),
        ("value length", block + 12),
    ] {
        // Keys "k0".."k5" take 3 bytes, values 1: none of these is the truth.
        for claim in [0u32, 2, 7, u32::MAX] {
            let mut bad = good.clone();
            bad[at..at + 4].copy_from_slice(&claim.to_le_bytes());
            let mut crc = crc32fast::Hasher::new();
            crc.update(&bad[36..48]);
            crc.update(&bad[block..]);
            bad[32..36].copy_from_slice(&crc.finalize().to_le_bytes());
            let case = format!("{what} claims {claim}");
            assert_cold_and_moved_aside(&file, "framing", &bad, &case).await;
        }
    }
}
