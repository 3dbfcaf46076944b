//! Hostile dump files against the dump codec (`cache_worker::__codec`: the functions a worker's
//! dump writer and warm start use), with values shaped like the Vista sessions:
//!
//! - properties (proptest) over arbitrary records: the round trip, and the same records read
//!   from a format-2 and a format-1 dump (as workers wrote before formats 3 and 2) and from one
//!   at any version, exact or not; every single bit flip of the header (in all three formats)
//!   and sampled flips of the body (formats 3 and 2), each answered as its field calls for;
//!   every truncation; appended bytes; a lying entry count or body length; another bucket or
//!   schema; random bytes, alone, behind a valid magic (of format 1, 2, 3 or any other), as a
//!   body with a valid length and checksum, and as records' keys and values inside a format-3
//!   framing that holds them;
//! - allocation bounds, measured with a counting global allocator: a lying count, a lying body
//!   length, a lying length prefix inside a record (formats 3 and 2) and, in format 3, a lying
//!   block length, block count, key length or value length are refused without allocating what
//!   they claim;
//! - the fuzzer's regression corpus (`tests/corpus/`, dumps in formats 1, 2 and 3), each file
//!   with the answer it must get;
//! - through a worker: one flipped bit in the count of a large dump gives a cold start without a
//!   huge allocation.
//!
//! Damaged and foreign dumps through a worker (cold start, `<file>.corrupt`, a foreign dump left
//! alone) are covered by `dumps.rs` and not repeated here.
//!
//! The layout and the oracle are in `fuzz/src/model.rs`, shared with the fuzz targets.
//! Properties run 256 cases each from a fixed seed (the same cases on every run);
//! `CACHE_WORKER_LONG=1` runs 16 times as many, `PROPTEST_RNG_SEED=<u64>` other ones.

mod common;
#[path = "../fuzz/src/model.rs"]
mod model;

use std::alloc::System;
use std::path::{Path, PathBuf};
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use cache_worker::__codec::{DecodeError, Record, decode as decode_as, encode};
use model::{
    BLOCK_HEADER, BUCKET, COUNT_AT, FLAGS_AT, FORMAT_AT, Key, Layout, Raw, SCHEMA, SCHEMA_AT,
    Session, V1, V2, V3, VERSION_AT, blocks, body_start, check, decode, describe, header, reseal,
    set_body_len, set_count, to_format_1, to_format_2, varint, with_blocks,
};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// The most a decode may allocate in all, whatever a file claims. An honest decode of the
/// largest dump used here (4 MiB) allocates under a third of it.
const ALLOCATION_BOUND: usize = 64 << 20;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Allocation measurements count every thread's allocations: a test that measures holds this
/// lock exclusively, every other test of this file holds it shared.
static MEASURING: RwLock<()> = RwLock::new(());

fn shared() -> RwLockReadGuard<'static, ()> {
    MEASURING.read().unwrap_or_else(PoisonError::into_inner)
}

fn exclusive() -> RwLockWriteGuard<'static, ()> {
    MEASURING.write().unwrap_or_else(PoisonError::into_inner)
}

/// Runs `f` and returns what it returned and how many bytes were allocated meanwhile (new
/// allocations plus growth by reallocation).
fn allocated_by<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let region = Region::new(GLOBAL);
    let out = f();
    let change = region.change();
    let grown = usize::try_from(change.bytes_reallocated.max(0)).unwrap_or(usize::MAX);
    (out, change.bytes_allocated.saturating_add(grown))
}

fn mib(bytes: usize) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
}

fn long() -> bool {
    std::env::var("CACHE_WORKER_LONG").as_deref() == Ok("1")
}

/// `n` cases a property (16 × `n` with `CACHE_WORKER_LONG=1`), from a fixed seed so that every
/// run tries the same cases; `PROPTEST_RNG_SEED=<u64>` tries others.
fn cases(n: u32) -> ProptestConfig {
    let mut config = ProptestConfig::with_cases(if long() { n * 16 } else { n });
    if std::env::var_os("PROPTEST_RNG_SEED").is_none() {
        config.rng_seed = proptest::test_runner::RngSeed::Fixed(0xC0A5_4ED0_D0D0_0006);
    }
    config
}

fn flip(bytes: &[u8], bit: usize) -> Vec<u8> {
    let mut out = bytes.to_vec();
    out[bit / 8] ^= 1 << (bit % 8);
    out
}

fn is_corrupt(decoded: &model::Decoded) -> bool {
    matches!(decoded, Err(DecodeError::Corrupt(_)))
}

// ---------------------------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------------------------

/// Any Unicode text of up to `max` characters (so up to 4 × `max` bytes).
fn text(max: usize) -> impl Strategy<Value = String> {
    vec(any::<char>(), 0..=max).prop_map(String::from_iter)
}

fn session() -> impl Strategy<Value = Session> {
    (
        text(16),
        any::<u32>(),
        text(12),
        any::<i64>(),
        any::<u16>(),
        vec(text(6), 0..4),
        proptest::option::of(text(8)),
    )
        .prop_map(
            |(id, cinema_id, film_id, showtime_ms, seats_available, attributes, screen)| Session {
                id,
                cinema_id,
                film_id,
                showtime_ms,
                seats_available,
                attributes,
                screen,
            },
        )
}

fn records(len: std::ops::Range<usize>) -> impl Strategy<Value = Vec<Record<Key, Session>>> {
    vec((text(20), session(), any::<u64>(), any::<u64>()), len)
}

/// Records and their dump for [`BUCKET`] / [`SCHEMA`].
fn dump(
    len: std::ops::Range<usize>,
) -> impl Strategy<Value = (Vec<Record<Key, Session>>, Vec<u8>)> {
    records(len).prop_map(|records| {
        let bytes = encode(BUCKET, SCHEMA, &records).expect("encode");
        (records, bytes)
    })
}

// ---------------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------------

/// What a single bit flip at byte `at` of a valid dump of ours in `layout` must give, field by
/// field. Only the body and, in formats 2 and 3, the version and flags are under the checksum,
/// so:
///
/// - magic: `Corrupt` (not a dump);
/// - format version: one bit turns 1 or 2 into 3 and 3 into 1 or 2, or gives a format that is
///   not read (`Corrupt`): read in the format it now names, the file gets the answer its header
///   then calls for ([`check`]; an empty format-3 dump is an empty format-2 one), which the test
///   checks instead;
/// - entry count: `Corrupt` (the records no longer fill the body exactly: fewer leave bytes over,
///   more run out of bytes, every record taking at least three bytes; in format 3 the blocks'
///   counts no longer add up to it);
/// - body length: `Corrupt` (no longer the length of what follows the header);
/// - checksum: `Corrupt` (a CRC-32 one bit off never matches);
/// - version, flags (formats 2 and 3, bytes 36..48): `Corrupt` (under the checksum, which
///   detects every single-bit error);
/// - bucket name length: `Corrupt` (the body now starts elsewhere, so its length no longer
///   matches the header's, or the header runs past the end of the file);
/// - schema: `Foreign` with the flipped schema and our bucket (the body is intact, the header
///   names another schema: it must not be refused as damaged, nor read as ours);
/// - bucket name (from `layout.fixed`: 50 in formats 2 and 3, 38 in format 1, up to `start`):
///   `Foreign` with the flipped name if it is still UTF-8, else `Corrupt`;
/// - body: `Corrupt` (CRC-32 detects every single-bit error).
fn after_flip(flipped: &[u8], at: usize, layout: &Layout, start: usize) -> Result<(), DecodeError> {
    if (SCHEMA_AT..SCHEMA_AT + 4).contains(&at) {
        let mut schema = [0; 4];
        schema.copy_from_slice(&flipped[SCHEMA_AT..SCHEMA_AT + 4]);
        return Err(DecodeError::Foreign {
            bucket: BUCKET.to_owned(),
            schema: u32::from_le_bytes(schema),
        });
    }
    if (layout.fixed..start).contains(&at)
        && let Ok(name) = std::str::from_utf8(&flipped[layout.fixed..start])
    {
        return Err(DecodeError::Foreign {
            bucket: name.to_owned(),
            schema: SCHEMA,
        });
    }
    Err(DecodeError::Corrupt(String::new()))
}

fn same_answer(got: &model::Decoded, want: &Result<(), DecodeError>) -> bool {
    match (got, want) {
        (Err(DecodeError::Corrupt(_)), Err(DecodeError::Corrupt(_))) => true,
        (Err(DecodeError::Foreign { .. }), Err(foreign)) => got.as_ref().err() == Some(foreign),
        _ => false,
    }
}

proptest! {
    #![proptest_config(cases(256))]

    #[test]
    fn any_records_survive_the_round_trip((records, bytes) in dump(0..24)) {
        let _shared = shared();
        let back = decode(&bytes).expect("an intact dump decodes");
        prop_assert_eq!(&back, &records);
        // And the writer is deterministic: the decoded records encode to the same bytes.
        prop_assert_eq!(&encode(BUCKET, SCHEMA, &back).expect("encode"), &bytes);
        // The same records in formats 2 and 1, as workers wrote them before formats 3 and 2,
        // read the same.
        let two = to_format_2(&bytes).expect("a whole format-3 dump");
        prop_assert_eq!(&decode(&two).expect("a format-2 dump decodes"), &records);
        let one = to_format_1(&bytes).expect("a whole format-3 dump");
        prop_assert_eq!(decode(&one).expect("a format-1 dump decodes"), records);
    }

    #[test]
    fn a_dump_at_any_version_reads_the_same_records(
        (records, bytes) in dump(0..8),
        version in any::<u64>(),
        exact in any::<bool>(),
    ) {
        let _shared = shared();
        // As a worker writes it at `version`: the fields under the checksum, sealed with them.
        let mut bytes = bytes;
        bytes[VERSION_AT..VERSION_AT + 8].copy_from_slice(&version.to_le_bytes());
        bytes[FLAGS_AT..FLAGS_AT + 4].copy_from_slice(&u32::from(exact).to_le_bytes());
        reseal(&mut bytes);
        prop_assert_eq!(decode(&bytes).expect("an intact dump decodes"), records);
    }

    #[test]
    fn every_bit_flip_in_the_header_is_answered_as_its_field_calls_for(
        (_records, bytes) in dump(0..8)
    ) {
        let _shared = shared();
        let two = to_format_2(&bytes).expect("a whole format-3 dump");
        let one = to_format_1(&bytes).expect("a whole format-3 dump");
        for (layout, bytes) in [(V3, bytes), (V2, two), (V1, one)] {
            let (read, start) = header(&bytes).expect("a whole header");
            prop_assert_eq!(&read, &layout, "`encode` writes format 3");
            for bit in 0..start * 8 {
                let bad = flip(&bytes, bit);
                let got = decode(&bad);
                if (FORMAT_AT..FORMAT_AT + 4).contains(&(bit / 8)) {
                    check(&bad, &got);
                    continue;
                }
                let want = after_flip(&bad, bit / 8, &layout, start);
                prop_assert!(
                    same_answer(&got, &want),
                    "format {}, bit {} of byte {}: want {:?}, got {}",
                    layout.format, bit % 8, bit / 8, want, describe(&got)
                );
            }
        }
    }

    #[test]
    fn bit_flips_in_the_body_are_corrupt(
        (_records, bytes) in dump(1..16),
        bits in vec(any::<Index>(), 1..32),
    ) {
        let _shared = shared();
        let two = to_format_2(&bytes).expect("a whole format-3 dump");
        for bytes in [bytes, two] {
            let start = body_start(&bytes).expect("a whole header");
            let body_bits = (bytes.len() - start) * 8;
            for bit in &bits {
                let bit = start * 8 + bit.index(body_bits);
                let got = decode(&flip(&bytes, bit));
                prop_assert!(
                    is_corrupt(&got),
                    "format {}, body bit {}: {}", bytes[8], bit - start * 8, describe(&got)
                );
            }
        }
    }

    #[test]
    fn every_truncation_is_corrupt((_records, bytes) in dump(0..12)) {
        let _shared = shared();
        for len in 0..bytes.len() {
            let got = decode(&bytes[..len]);
            prop_assert!(is_corrupt(&got), "cut to {} of {}: {}", len, bytes.len(), describe(&got));
        }
    }

    #[test]
    fn appended_bytes_are_corrupt(
        (_records, bytes) in dump(0..12),
        more in vec(any::<u8>(), 1..64),
    ) {
        let _shared = shared();
        let mut long = bytes;
        long.extend_from_slice(&more);
        let got = decode(&long);
        prop_assert!(is_corrupt(&got), "{}", describe(&got));
    }

    #[test]
    fn a_lying_entry_count_is_corrupt(
        (records, bytes) in dump(0..12),
        lie in prop_oneof![any::<u64>(), 0..32u64, Just(u64::MAX), Just(1 << 63)],
    ) {
        prop_assume!(lie != records.len() as u64);
        let _shared = shared();
        let mut bad = bytes;
        set_count(&mut bad, lie);
        let got = decode(&bad);
        prop_assert!(is_corrupt(&got), "count {} for {}: {}", lie, records.len(), describe(&got));
    }

    #[test]
    fn a_lying_body_length_is_corrupt(
        (_records, bytes) in dump(0..12),
        lie in prop_oneof![any::<u64>(), 0..2048u64, Just(u64::MAX)],
    ) {
        let start = body_start(&bytes).expect("a whole header");
        prop_assume!(lie != (bytes.len() - start) as u64);
        let _shared = shared();
        let mut bad = bytes;
        set_body_len(&mut bad, lie);
        let got = decode(&bad);
        prop_assert!(is_corrupt(&got), "body length {}: {}", lie, describe(&got));
    }

    #[test]
    fn another_bucket_or_schema_is_foreign_and_still_reads_as_its_own(
        records in records(0..8),
        (bucket, schema) in prop_oneof![
            (text(24), Just(SCHEMA)),
            (Just(BUCKET.to_owned()), any::<u32>()),
            (text(24), any::<u32>()),
        ].prop_filter("another bucket or schema", |(b, s)| b != BUCKET || *s != SCHEMA),
    ) {
        let _shared = shared();
        let bytes = encode(&bucket, schema, &records).expect("encode");
        prop_assert_eq!(
            decode(&bytes).map(|_| ()),
            Err(DecodeError::Foreign { bucket: bucket.clone(), schema })
        );
        let theirs = decode_as::<Key, Session>(&bytes, &bucket, schema).expect("their own dump");
        prop_assert_eq!(theirs, records);
    }

    #[test]
    fn random_bytes_are_corrupt(bytes in vec(any::<u8>(), 0..4096)) {
        let _shared = shared();
        let got = decode(&bytes);
        check(&bytes, &got);
        prop_assert!(is_corrupt(&got), "{}", describe(&got));
    }

    #[test]
    fn random_bytes_behind_a_valid_magic_get_the_answer_their_header_calls_for(
        format in prop_oneof![Just(1u32), Just(2), Just(3), any::<u32>()],
        rest in vec(any::<u8>(), 0..512),
    ) {
        let _shared = shared();
        let mut bytes = b"CWDUMP\0\n".to_vec();
        bytes.extend_from_slice(&format.to_le_bytes());
        bytes.extend_from_slice(&rest);
        check(&bytes, &decode(&bytes));
    }

    #[test]
    fn a_random_body_under_a_valid_checksum_never_panics(
        count in prop_oneof![0..8u64, any::<u64>()],
        body in vec(any::<u8>(), 0..512),
    ) {
        let _shared = shared();
        let mut bytes = encode::<Key, Session>(BUCKET, SCHEMA, &[]).expect("encode");
        set_count(&mut bytes, count);
        bytes.extend_from_slice(&body);
        reseal(&mut bytes);
        // Ours, intact: `count` records or Corrupt; never a panic, never a Foreign.
        check(&bytes, &decode(&bytes));
    }

    #[test]
    fn random_keys_and_values_inside_a_valid_framing_never_panic(
        blocks in vec(
            vec((vec(any::<u8>(), 0..48), vec(any::<u8>(), 0..96), any::<u64>(), any::<u64>()), 0..6),
            0..4,
        ),
    ) {
        let _shared = shared();
        let blocks: Vec<Vec<Raw>> = blocks
            .into_iter()
            .map(|records| {
                records
                    .into_iter()
                    .map(|(key, value, loaded_at, expires_at)| Raw { key, value, loaded_at, expires_at })
                    .collect()
            })
            .collect();
        let empty = encode::<Key, Session>(BUCKET, SCHEMA, &[]).expect("encode");
        let bytes = with_blocks(&empty, &blocks).expect("a format-3 header");
        // The framing holds and the checksum is good: the bincode inside decides.
        check(&bytes, &decode(&bytes));
    }

    #[test]
    fn records_reframed_as_they_were_read_as_they_were((records, bytes) in dump(0..24)) {
        let _shared = shared();
        // The oracle's reading of the framing is exact: rebuilt from it, the same bytes.
        let read = blocks(&bytes).expect("a whole format-3 dump");
        prop_assert_eq!(read.iter().map(Vec::len).sum::<usize>(), records.len());
        prop_assert_eq!(with_blocks(&bytes, &read).expect("a format-3 header"), bytes);
    }
}

// ---------------------------------------------------------------------------------------------
// Allocation bounds
// ---------------------------------------------------------------------------------------------

fn small_session(i: u32) -> Session {
    Session {
        id: String::new(),
        cinema_id: i,
        film_id: String::new(),
        showtime_ms: 0,
        seats_available: 0,
        attributes: Vec::new(),
        screen: None,
    }
}

/// A dump of `sessions` whose body is about 4 MiB: 50,000 records with 60-byte keys.
fn large_dump() -> (usize, Vec<u8>) {
    let records: Vec<Record<Key, Session>> = (0..50_000u32)
        .map(|i| (format!("{i:060}"), small_session(i), 1, u64::MAX))
        .collect();
    (
        records.len(),
        encode(BUCKET, SCHEMA, &records).expect("encode"),
    )
}

#[test]
fn a_lying_entry_count_is_refused_without_reserving_for_it() {
    let (n, bytes) = large_dump();
    let _exclusive = exclusive();
    let (honest, honest_bytes) = allocated_by(|| decode(&bytes));
    assert_eq!(honest.expect("the honest dump decodes").len(), n);
    let start = body_start(&bytes).expect("header");
    let body = bytes.len() - start;
    eprintln!(
        "a dump of {n} records, {}: an honest decode allocates {}",
        mib(bytes.len()),
        mib(honest_bytes)
    );
    // The count is not under the checksum: one flipped high bit (count + 2^63) is enough.
    let lies = [
        n as u64 + (1 << 63),
        u64::MAX,
        1 << 40,
        body as u64,
        n as u64 + 1,
    ];
    let mut over = Vec::new();
    for lie in lies {
        let mut bad = bytes.clone();
        set_count(&mut bad, lie);
        let (got, allocated) = allocated_by(|| decode(&bad));
        assert!(is_corrupt(&got), "count {lie}: {}", describe(&got));
        eprintln!("count {lie}: {} allocated", mib(allocated));
        if allocated > ALLOCATION_BOUND {
            over.push(format!("count {lie}: {}", mib(allocated)));
        }
    }
    assert!(
        over.is_empty(),
        "a lying count made the decoder allocate more than {} (the honest decode of this {} \
         dump allocates {}): {over:?}",
        mib(ALLOCATION_BOUND),
        mib(bytes.len()),
        mib(honest_bytes)
    );
}

#[test]
fn a_lying_body_length_is_refused_without_allocating() {
    let (_, bytes) = large_dump();
    let start = body_start(&bytes).expect("header");
    let body = (bytes.len() - start) as u64;
    let _exclusive = exclusive();
    for lie in [u64::MAX, 1 << 40, body + 1, body - 1, 0] {
        let mut bad = bytes.clone();
        set_body_len(&mut bad, lie);
        let (got, allocated) = allocated_by(|| decode(&bad));
        assert!(is_corrupt(&got), "body length {lie}: {}", describe(&got));
        // Refused from the header alone: nothing in proportion to the file (4 MiB) or to the
        // claim. (The bound leaves room for what other tests' case generation allocates
        // meanwhile: the counter is process-wide.)
        assert!(
            allocated < 256 << 10,
            "body length {lie}: {allocated} bytes allocated"
        );
    }
}

/// A dump of one record whose `field`-th length prefix (0: the key; 1: the session's id; 2: its
/// film id) is replaced by one claiming `claim` bytes, then reframed and resealed: a format-3
/// file with a valid checksum and a framing that holds the claim, as a hostile writer or a
/// value type changed without a new schema would leave.
fn claiming(field: usize, claim: u64) -> Vec<u8> {
    let session = Session {
        id: "1001-20".to_owned(),
        cinema_id: 1001,
        film_id: "HO00000720".to_owned(),
        showtime_ms: 1_556_000_000_000,
        seats_available: 42,
        attributes: vec!["OmU".to_owned()],
        screen: Some("Saal 1".to_owned()),
    };
    let records = [(session.id.clone(), session, 1, u64::MAX)];
    let bytes = encode(BUCKET, SCHEMA, &records).expect("encode");
    let mut blocks = blocks(&bytes).expect("a whole format-3 dump");
    let record = &mut blocks[0][0];
    // The key (len 7), then the session: id (len 7), cinema id (varint), film id (len 10), ...
    let (bytes_of, at) = match field {
        0 => (&mut record.key, 0),
        1 => (&mut record.value, 0),
        _ => (&mut record.value, 8 + varint(1001).len()),
    };
    assert!(bytes_of[at] < 251, "a one-byte length prefix at {at}");
    bytes_of.splice(at..at + 1, varint(claim));
    with_blocks(&bytes, &blocks).expect("a format-3 header")
}

#[test]
fn a_length_prefix_claiming_a_huge_string_is_refused_without_allocating_it() {
    let _exclusive = exclusive();
    let mut over = Vec::new();
    for field in 0..3 {
        // The decoder's own limit (1 GiB a record) refuses claims from just under 2^30 on.
        for claim in [
            1 << 20,
            (1 << 26) + 1,
            1 << 29,
            (1 << 30) - 64,
            1 << 30,
            u64::MAX,
        ] {
            let three = claiming(field, claim);
            // The same claim in format 2, where no framing says how long the record is.
            let two = to_format_2(&three).expect("a whole format-3 dump");
            for bytes in [three, two] {
                let format = bytes[8];
                let (got, allocated) = allocated_by(|| decode(&bytes));
                check(&bytes, &got);
                assert!(
                    is_corrupt(&got),
                    "format {format}, field {field} claims {claim}: {}",
                    describe(&got)
                );
                eprintln!(
                    "a {}-byte format-{format} file, field {field} claims {claim} bytes: {} \
                     allocated",
                    bytes.len(),
                    mib(allocated)
                );
                if allocated > ALLOCATION_BOUND {
                    over.push(format!(
                        "format {format}, field {field} claims {claim}: {} allocated",
                        mib(allocated)
                    ));
                }
            }
        }
    }
    assert!(
        over.is_empty(),
        "a length prefix in a file of about 110 bytes made the decoder allocate more than {}: \
         {over:?}",
        mib(ALLOCATION_BOUND)
    );
}

#[test]
fn a_lying_length_in_the_framing_is_refused_without_allocating_it() {
    let (_, bytes) = large_dump();
    let start = body_start(&bytes).expect("header");
    let record = start + BLOCK_HEADER;
    let _exclusive = exclusive();
    // The block's length, its count, the first record's key and value lengths, each claiming
    // up to 4 GiB (or records) in a 4 MiB file, under a valid checksum.
    for (what, at) in [
        ("block length", start),
        ("block count", start + 4),
        ("key length", record),
        ("value length", record + 4),
    ] {
        for claim in [u32::MAX, 1 << 31, 64 << 20, 5 << 20] {
            let mut bad = bytes.clone();
            bad[at..at + 4].copy_from_slice(&claim.to_le_bytes());
            reseal(&mut bad);
            let (got, allocated) = allocated_by(|| decode(&bad));
            check(&bad, &got);
            assert!(is_corrupt(&got), "{what} {claim}: {}", describe(&got));
            // Refused from the framing: the window (1 MiB) and the records decoded before.
            assert!(
                allocated <= ALLOCATION_BOUND,
                "{what} {claim}: {} allocated",
                mib(allocated)
            );
            eprintln!("{what} claims {claim}: {} allocated", mib(allocated));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The fuzzer's regression corpus
// ---------------------------------------------------------------------------------------------

/// What a corpus file must decode to.
#[derive(Debug)]
enum Outcome {
    Corrupt,
    Foreign(&'static str, u32),
    Records(usize),
}

/// Every file of `tests/corpus/`, with its answer; each must also stay within the allocation
/// bound. The fuzzer's seeds (`fuzz/examples/seed_corpus.rs`: valid, foreign and damaged dumps)
/// and what the fuzzer found (named after the target and the artifact; see RELIABILITY.md).
/// All are in format 1, written before format 2 and kept as they were (old dumps still read),
/// except the `format-2-*` seeds (written before format 3) and the `format-3-*` ones.
const CORPUS: &[(&str, Outcome)] = &[
    ("empty.bin", Outcome::Records(0)),
    ("one.bin", Outcome::Records(1)),
    ("five.bin", Outcome::Records(5)),
    ("foreign-bucket.bin", Outcome::Foreign("cinemas", SCHEMA)),
    ("foreign-schema.bin", Outcome::Foreign(BUCKET, SCHEMA + 1)),
    ("torn.bin", Outcome::Corrupt),
    ("flipped-body.bin", Outcome::Corrupt),
    ("lying-count.bin", Outcome::Corrupt),
    ("count-top-bit-flipped.bin", Outcome::Corrupt),
    ("name-length-bit-flipped.bin", Outcome::Corrupt),
    (
        "schema-bit-flipped.bin",
        Outcome::Foreign(BUCKET, SCHEMA - 1),
    ),
    (
        "bucket-name-bit-flipped.bin",
        Outcome::Foreign("Sessions", SCHEMA),
    ),
    ("resealed-key-claims-1mib.bin", Outcome::Corrupt),
    // Allocates 1 GiB before it is refused (the codec's per-record limit): fails the bound.
    ("resealed-key-claims-1gib.bin", Outcome::Corrupt),
    // Found by `mutate_dump` (libFuzzer: out-of-memory (malloc(788553737))) after 1.0 M runs:
    // an 81-byte dump with a valid checksum whose one session's `screen` claims 752 MiB.
    ("mutate_dump-oom-97fb813a.bin", Outcome::Corrupt),
    // Found by `mutate_dump` on the streaming decoder (6d829bd), same cause: a 182-byte dump whose
    // second record claims 992 MiB (malloc(1040194559)); a 686-byte one with a lying count too
    // (malloc(1053414869)); a 54-byte one (malloc(637281788)).
    ("mutate_dump-oom-574bcba7.bin", Outcome::Corrupt),
    ("mutate_dump-oom-696c930a.bin", Outcome::Corrupt),
    ("mutate_dump-oom-12e309f6.bin", Outcome::Corrupt),
    ("format-2-five.bin", Outcome::Records(5)),
    (
        "format-2-five-exact-at-version-123.bin",
        Outcome::Records(5),
    ),
    // The version and flags are under the checksum; the flipped flag claims "exact".
    ("format-2-version-bit-flipped.bin", Outcome::Corrupt),
    ("format-2-exact-flag-flipped.bin", Outcome::Corrupt),
    ("format-2-name-length-bit-flipped.bin", Outcome::Corrupt),
    (
        "format-2-bucket-name-bit-flipped.bin",
        Outcome::Foreign("Sessions", SCHEMA),
    ),
    ("format-3-five.bin", Outcome::Records(5)),
    (
        "format-3-five-exact-at-version-123.bin",
        Outcome::Records(5),
    ),
    ("format-3-torn.bin", Outcome::Corrupt),
    ("format-3-lying-count.bin", Outcome::Corrupt),
    ("format-3-version-bit-flipped.bin", Outcome::Corrupt),
    ("format-3-exact-flag-flipped.bin", Outcome::Corrupt),
    ("format-3-name-length-bit-flipped.bin", Outcome::Corrupt),
    (
        "format-3-bucket-name-bit-flipped.bin",
        Outcome::Foreign("Sessions", SCHEMA),
    ),
    // A length prefix inside the first key claiming 1 MiB, under a framing that holds it.
    ("format-3-resealed-key-claims-1mib.bin", Outcome::Corrupt),
    // The framing's lengths claiming up to 4 GiB, under a valid checksum.
    ("format-3-block-length-claims-4gib.bin", Outcome::Corrupt),
    (
        "format-3-block-count-claims-4g-records.bin",
        Outcome::Corrupt,
    ),
    ("format-3-key-length-claims-4gib.bin", Outcome::Corrupt),
    ("format-3-value-length-claims-2gib.bin", Outcome::Corrupt),
];

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus")
}

#[test]
fn the_regression_corpus_decodes_as_expected() {
    let dir = corpus_dir();
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .expect("tests/corpus")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    on_disk.sort();
    let mut listed: Vec<String> = CORPUS.iter().map(|(n, _)| (*n).to_owned()).collect();
    listed.sort();
    assert_eq!(on_disk, listed, "every corpus file has an expected outcome");

    let _exclusive = exclusive();
    let mut failures = Vec::new();
    for (name, outcome) in CORPUS {
        let bytes = std::fs::read(dir.join(name)).expect("read a corpus file");
        let (got, allocated) = allocated_by(|| decode(&bytes));
        check(&bytes, &got);
        let fine = match (outcome, &got) {
            (Outcome::Corrupt, Err(DecodeError::Corrupt(_))) => true,
            (
                Outcome::Foreign(bucket, schema),
                Err(DecodeError::Foreign {
                    bucket: b,
                    schema: s,
                }),
            ) => b == bucket && s == schema,
            (Outcome::Records(n), Ok(records)) => records.len() == *n,
            _ => false,
        };
        if !fine {
            failures.push(format!("{name}: want {outcome:?}, got {}", describe(&got)));
        }
        if allocated > ALLOCATION_BOUND {
            failures.push(format!("{name}: {} allocated", mib(allocated)));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

// ---------------------------------------------------------------------------------------------
// Through a worker
// ---------------------------------------------------------------------------------------------

#[test]
fn one_flipped_count_bit_in_a_large_dump_gives_a_cold_start_without_a_huge_allocation() {
    use common::{Upstream, dumping, temp_dump};

    let (_dir, file) = temp_dump("large.dump");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let start = |up: &Upstream| dumping(up, "large", &file).start();
    let n = 50_000u64;
    let good = runtime.block_on(async {
        let w = start(&Upstream::new()).await.expect("start");
        for i in 0..n {
            w.insert(format!("{i:060}"), i);
        }
        w.shutdown().await.expect("shutdown");
        std::fs::read(&file).expect("the final dump")
    });
    let _exclusive = exclusive();
    let (warm, honest) = allocated_by(|| {
        runtime.block_on(async {
            let w = start(&Upstream::new()).await.expect("start");
            let restored = w.stats().restored;
            drop(w);
            restored
        })
    });
    assert_eq!(warm, n, "the intact dump starts warm");

    // One bit: the count's highest (count + 2^63). The count is not under the checksum.
    let bad = flip(&good, (COUNT_AT + 7) * 8 + 7);
    std::fs::write(&file, &bad).expect("write the damaged dump");
    let up = Upstream::new();
    let ((len, restored), allocated) = allocated_by(|| {
        runtime.block_on(async {
            let w = start(&up).await.expect("start");
            let seen = (w.len(), w.stats().restored);
            drop(w);
            seen
        })
    });
    eprintln!(
        "a {} dump of {n} entries: a warm start allocates {}, the start on the same dump with \
         one count bit flipped {}",
        mib(good.len()),
        mib(honest),
        mib(allocated)
    );
    assert_eq!((len, restored), (0, 0), "a cold start");
    assert_eq!(
        up.seeds.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "seeded"
    );
    let mut aside = file.as_os_str().to_owned();
    aside.push(".corrupt");
    assert_eq!(
        std::fs::read(&aside).expect("moved to .corrupt"),
        bad,
        "the damaged dump is kept aside"
    );
    assert!(
        allocated <= ALLOCATION_BOUND,
        "starting on a {} dump with one flipped count bit allocated {} (a warm start on the \
         intact dump allocates {})",
        mib(good.len()),
        mib(allocated),
        mib(honest)
    );
}
