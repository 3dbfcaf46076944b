use super::block::{BLOCK_HEADER, RECORD_HEADER};
use super::*;

type Entries = Vec<(String, Entry<Vec<u64>>)>;

fn entries(n: u64) -> Entries {
    (0..n)
        .map(|i| {
            (
                format!("k{i}"),
                Entry {
                    value: Arc::new(vec![i; (i % 5) as usize]),
                    loaded_at: 1000 + i,
                    expires_at: crate::bucket::NEVER,
                    stamp: 0,
                    meta: crate::bound::Meta::new(),
                },
            )
        })
        .collect()
}

fn encode(n: u64) -> Vec<u8> {
    encode_at(n, None)
}

/// A dump of `n` entries, at `version` if set (as the dump writer sets it, once the records
/// are pushed).
fn encode_at(n: u64, version: Option<DumpVersion>) -> Vec<u8> {
    encode_entries(&entries(n), version)
}

fn encode_entries(entries: &Entries, version: Option<DumpVersion>) -> Vec<u8> {
    let mut buf = io::Cursor::new(Vec::new());
    write(&mut buf, "b", 3, |records| {
        entries.iter().try_for_each(|(k, e)| records.push(k, e))?;
        if let Some(version) = version {
            records.set_version(version);
        }
        Ok(())
    })
    .expect("encode");
    buf.into_inner()
}

/// Reads a dump of "b" / 3 as a warm start does; returns the version `make` was given and
/// the records.
fn read_versioned(bytes: &[u8]) -> Result<(DumpVersion, Entries), ReadError> {
    read_into(
        &mut io::Cursor::new(bytes),
        bytes.len() as u64,
        "b",
        3,
        |count, version| (version, Vec::with_capacity(count)),
        |(_, entries), k, e| entries.push((k, e)),
    )
}

fn assert_same_entries(got: &Entries, want: &Entries) {
    assert_eq!(got.len(), want.len());
    for ((k1, e1), (k2, e2)) in want.iter().zip(got) {
        assert_eq!(k1, k2);
        assert_eq!(e1.value, e2.value);
        assert_eq!(e1.loaded_at, e2.loaded_at);
        assert_eq!(e1.expires_at, e2.expires_at);
    }
}

fn corrupt_reason<T>(read: Result<T, ReadError>) -> String {
    match read {
        Err(ReadError::Decode(DecodeError::Corrupt(why))) => why,
        Err(other) => panic!("expected Corrupt, got {other:?}"),
        Ok(_) => panic!("expected Corrupt, got a decoded dump"),
    }
}

fn body_start(bytes: &[u8]) -> usize {
    Header::read(&mut &bytes[..]).expect("header").1
}

/// Sets the body length and checksum (over the version fields and the body) to match the body
/// as it is now: a damaged body then reaches the record decoder, as a hostile file's would.
fn reseal(bytes: &mut [u8]) {
    let start = body_start(bytes);
    let len = (bytes.len() - start) as u64;
    bytes[24..32].copy_from_slice(&len.to_le_bytes());
    let mut crc = crc32fast::Hasher::new();
    crc.update(&bytes[COMMON_HEADER..COMMON_HEADER + VERSION_FIELDS]);
    crc.update(&bytes[start..]);
    bytes[32..36].copy_from_slice(&crc.finalize().to_le_bytes());
}

/// The (length, count) of each block of a format-3 dump, read by the table in `codec.rs`.
fn blocks(bytes: &[u8]) -> Vec<(u32, u32)> {
    let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    let mut at = body_start(bytes);
    let mut out = Vec::new();
    while at < bytes.len() {
        let (len, count) = (u32_at(at), u32_at(at + 4));
        out.push((len, count));
        at += BLOCK_HEADER + len as usize;
    }
    assert_eq!(at, bytes.len(), "blocks fill the body");
    out
}

/// The body of formats 1 and 2: each record the bincode encoding of (key, value, loaded_at,
/// expires_at), one after another.
fn stream_body(entries: &Entries) -> Vec<u8> {
    let mut body = Vec::new();
    for (k, e) in entries {
        let record = (k, &*e.value, e.loaded_at, e.expires_at);
        encode_into(&mut body, &record).expect("encode a record");
    }
    body
}

/// The dump of `n` entries as format 2 laid it out: format 3's header (at version 9, exact)
/// with format 2 at 8, over format 2's body.
fn format_2(n: u64) -> Vec<u8> {
    let three = encode_at(
        n,
        Some(DumpVersion {
            version: 9,
            exact: true,
        }),
    );
    let mut out = three[..body_start(&three)].to_vec();
    out[8..12].copy_from_slice(&2u32.to_le_bytes());
    out.extend_from_slice(&stream_body(&entries(n)));
    reseal(&mut out);
    out
}

/// The dump of `n` entries as format 1 laid it out, built by hand: the 36 bytes every format
/// shares (format 1 at 8, the checksum over the body alone), the name length at 36, the name
/// at 38, then the body of format 2.
fn format_1(n: u64) -> Vec<u8> {
    let body = stream_body(&entries(n));
    let mut out = Vec::new();
    out.extend_from_slice(b"CWDUMP\0\n");
    out.extend_from_slice(&1u32.to_le_bytes());
    out.extend_from_slice(&3u32.to_le_bytes());
    out.extend_from_slice(&n.to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(b"b");
    out.extend_from_slice(&body);
    assert_eq!(out.len(), 38 + 1 + body.len());
    out
}

#[test]
fn round_trip_keeps_values_and_times() {
    let bytes = encode(100);
    assert_eq!(&bytes[8..12], &3u32.to_le_bytes(), "format 3 is written");
    let back: Entries = read(&bytes, "b", 3).expect("decode");
    assert_same_entries(&back, &entries(100));
}

#[test]
fn a_dump_is_blocks_of_records_walkable_by_the_table() {
    let bytes = encode(3);
    let start = body_start(&bytes);
    assert_eq!(blocks(&bytes), [(3 * 24 + 3 * 3 + 1 + 2 + 3, 3)]);
    // Record 1: "k1" (a 3-byte string) → [1] (a 2-byte list), loaded at 1001, never expiring.
    let record = start + BLOCK_HEADER + RECORD_HEADER + 3 + 1;
    assert_eq!(&bytes[record..record + 4], &3u32.to_le_bytes());
    assert_eq!(&bytes[record + 4..record + 8], &2u32.to_le_bytes());
    assert_eq!(&bytes[record + 8..record + 16], &1001u64.to_le_bytes());
    assert_eq!(&bytes[record + 16..record + 24], &u64::MAX.to_le_bytes());
    assert_eq!(&bytes[record + 24..record + 29], &[2, b'k', b'1', 1, 1]);
}

#[test]
fn a_large_dump_is_several_blocks_of_about_a_mebibyte() {
    // Values of 512 integers of 9 bytes each (4.5 KiB): about 7 MiB in all.
    let big: Entries = (0..1600u64)
        .map(|i| {
            let value = Arc::new(vec![u64::MAX - i; 512]);
            let entry = Entry {
                value,
                loaded_at: i,
                expires_at: 5000 + i,
                stamp: 0,
                meta: crate::bound::Meta::new(),
            };
            (format!("key-{i}"), entry)
        })
        .collect();
    let bytes = encode_entries(&big, None);
    let blocks = blocks(&bytes);
    assert!(blocks.len() >= 6, "{} blocks", blocks.len());
    for &(len, _) in &blocks[..blocks.len() - 1] {
        let len = len as usize;
        assert!((1 << 20..(1 << 20) + (8 << 10)).contains(&len), "{len}");
    }
    let counted: u64 = blocks.iter().map(|&(_, count)| u64::from(count)).sum();
    assert_eq!(counted, 1600);
    let back: Entries = read(&bytes, "b", 3).expect("decode");
    assert_same_entries(&back, &big);
}

#[test]
fn blocks_appended_in_any_order_read_as_the_same_records() {
    let all = entries(30);
    let mut sealed: Vec<Sealed> = all
        .chunks(7)
        .map(|chunk| {
            let mut block = Block::new();
            for (k, e) in chunk {
                block.push(k, e).expect("push");
            }
            block.seal(Vec::new())
        })
        .collect();
    sealed.reverse();
    let mut buf = io::Cursor::new(Vec::new());
    write(&mut buf, "b", 3, |records| {
        for block in sealed {
            records.append(block)?;
        }
        Ok(())
    })
    .expect("write");
    let bytes = buf.into_inner();
    assert_eq!(blocks(&bytes).len(), 5);
    let mut back = read_versioned(&bytes).expect("decode").1;
    back.sort_by_key(|(k, _)| k[1..].parse::<u64>().expect("k<n>"));
    assert_same_entries(&back, &all);
}

#[test]
fn the_version_and_exact_flag_round_trip() {
    for version in [
        DumpVersion {
            version: 123,
            exact: true,
        },
        DumpVersion {
            version: 124,
            exact: false,
        },
        DumpVersion {
            version: u64::MAX,
            exact: true,
        },
    ] {
        let bytes = encode_at(7, Some(version));
        let (read, back) = read_versioned(&bytes).expect("decode");
        assert_eq!(read, version);
        assert_same_entries(&back, &entries(7));
    }
    // A writer that never sets it writes version 0, not exact.
    let (read, _) = read_versioned(&encode(2)).expect("decode");
    assert_eq!(read, DumpVersion::default());
}

#[test]
fn a_format_2_dump_reads_the_same_records_at_its_version() {
    for n in [0, 1, 20] {
        let (read, back) = read_versioned(&format_2(n)).expect("a format-2 dump decodes");
        let at_9 = DumpVersion {
            version: 9,
            exact: true,
        };
        assert_eq!(read, at_9, "{n} entries");
        assert_same_entries(&back, &entries(n));
    }
    let mut bad = format_2(3);
    let last = bad.len() - 1;
    bad[last] ^= 1;
    assert_eq!(corrupt_reason(read_versioned(&bad)), "checksum mismatch");
}

#[test]
fn a_format_1_dump_reads_as_of_no_known_version() {
    for n in [0, 1, 20] {
        let (read, back) = read_versioned(&format_1(n)).expect("a format-1 dump decodes");
        assert_eq!(read, DumpVersion::default(), "{n} entries");
        assert_same_entries(&back, &entries(n));
    }
    // Damaged, it is refused as before.
    let mut bad = format_1(3);
    let last = bad.len() - 1;
    bad[last] ^= 1;
    assert_eq!(corrupt_reason(read_versioned(&bad)), "checksum mismatch");
}

#[test]
fn every_bit_flip_in_the_version_and_flags_is_refused() {
    for bytes in [
        encode_at(
            5,
            Some(DumpVersion {
                version: 123,
                exact: true,
            }),
        ),
        format_2(5),
    ] {
        for bit in COMMON_HEADER * 8..(COMMON_HEADER + VERSION_FIELDS) * 8 {
            let mut bad = bytes.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert_eq!(
                corrupt_reason(read_versioned(&bad)),
                "checksum mismatch",
                "bit {} of byte {}",
                bit % 8,
                bit / 8
            );
        }
    }
}

#[test]
fn another_format_is_refused_naming_the_formats_read() {
    for format in [0u32, 4, u32::MAX] {
        let mut bytes = encode(2);
        bytes[8..12].copy_from_slice(&format.to_le_bytes());
        let why = corrupt_reason(read_versioned(&bytes));
        assert!(
            why.contains(&format!("format version {format}")) && why.contains("formats 1 to 3"),
            "{why}"
        );
    }
}

#[test]
fn every_truncation_is_refused() {
    for bytes in [encode(20), format_2(20), format_1(20)] {
        for len in 0..bytes.len() {
            let r = read::<String, Vec<u64>>(&bytes[..len], "b", 3);
            assert!(matches!(r, Err(DecodeError::Corrupt(_))), "len {len}");
        }
    }
}

#[test]
fn every_bit_flip_in_the_body_is_refused() {
    for bytes in [encode(20), format_2(20)] {
        for at in body_start(&bytes)..bytes.len() {
            let mut bad = bytes.clone();
            bad[at] ^= 0x10;
            assert!(read::<String, Vec<u64>>(&bad, "b", 3).is_err(), "byte {at}");
        }
    }
}

#[test]
fn other_bucket_or_schema_is_foreign() {
    let bytes = encode(3);
    assert!(matches!(
        read::<String, Vec<u64>>(&bytes, "other", 3),
        Err(DecodeError::Foreign { ref bucket, schema: 3 }) if bucket == "b"
    ));
    assert!(matches!(
        read::<String, Vec<u64>>(&bytes, "b", 4),
        Err(DecodeError::Foreign { schema: 3, .. })
    ));
}

#[test]
fn a_lying_count_is_refused_without_a_huge_allocation() {
    for mut bytes in [encode(3), format_2(3)] {
        bytes[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        // The header is not covered by the checksum; the count is checked against the records.
        assert!(matches!(
            read::<String, Vec<u64>>(&bytes, "b", 3),
            Err(DecodeError::Corrupt(_))
        ));
    }
}

/// `bytes` with the u32 at `at` set to `value`, resealed: framing that lies under a valid
/// checksum.
fn lying_u32(bytes: &[u8], at: usize, value: u32) -> Vec<u8> {
    let mut bad = bytes.to_vec();
    bad[at..at + 4].copy_from_slice(&value.to_le_bytes());
    reseal(&mut bad);
    bad
}

#[test]
fn framing_that_lies_under_a_valid_checksum_is_refused_saying_where() {
    let bytes = encode(3);
    let block = body_start(&bytes);
    let (len, _) = blocks(&bytes)[0];
    let record = block + BLOCK_HEADER;
    let cases: [(Vec<u8>, &str); 9] = [
        (
            lying_u32(&bytes, block, u32::MAX),
            "block 0 claims 4294967295 bytes of records, 87 are left in the body",
        ),
        (
            lying_u32(&bytes, block, len - 1),
            "record 2 claims a 3-byte key and a 3-byte value, 5 bytes are left in block 0",
        ),
        (
            lying_u32(&bytes, block + 4, 4),
            "block 0 claims 4 records, past the 3 of the header",
        ),
        (
            lying_u32(&bytes, block + 4, 2),
            "bytes after the last record of block 0",
        ),
        (
            lying_u32(&bytes, record, u32::MAX),
            "record 0 claims a 4294967295-byte key",
        ),
        (
            lying_u32(&bytes, record + 4, 1 << 31),
            "record 0 claims a 3-byte key and a 2147483648-byte value",
        ),
        (
            {
                let mut more = bytes.clone();
                more.extend_from_slice(&[0; BLOCK_HEADER - 1]);
                reseal(&mut more);
                more
            },
            "7 bytes after the last block, too few for a block header",
        ),
        (
            {
                // An empty block after the last: consistent, but the count is one short.
                let mut more = bytes.clone();
                more.extend_from_slice(&[0; BLOCK_HEADER]);
                reseal(&mut more);
                more[16..24].copy_from_slice(&4u64.to_le_bytes());
                more
            },
            "3 records, the header says 4",
        ),
        (
            {
                let mut bad = bytes.clone();
                bad[16..24].copy_from_slice(&2u64.to_le_bytes());
                bad
            },
            "block 0 claims 3 records, past the 2 of the header",
        ),
    ];
    for (bad, want) in cases {
        let why = corrupt_reason(read_versioned(&bad));
        assert!(why.contains(want), "want {want:?}, got {why:?}");
    }
}

#[test]
fn a_key_or_value_that_does_not_fill_its_bytes_is_a_changed_type() {
    // Values of (u64, u64) read as u64: the first fits, a byte is left.
    let mut buf = io::Cursor::new(Vec::new());
    write(&mut buf, "b", 3, |records| {
        let entry = Entry {
            value: Arc::new((5u64, 6u64)),
            loaded_at: 1,
            expires_at: 2,
            stamp: 0,
            meta: crate::bound::Meta::new(),
        };
        records.push(&"k".to_owned(), &entry)
    })
    .expect("write");
    let bytes = buf.into_inner();
    let why = match read::<String, u64>(&bytes, "b", 3) {
        Err(DecodeError::Corrupt(why)) => why,
        other => panic!("{:?}", other.map(|_| "decoded")),
    };
    assert!(
        why.contains("the value of record 0 of 1 does not decode: it takes 1 of its 2 bytes")
            && why.contains("bump `schema`"),
        "{why}"
    );
    // And read as a String: the length 5 runs past the value's two bytes.
    let why = match read::<String, String>(&bytes, "b", 3) {
        Err(DecodeError::Corrupt(why)) => why,
        other => panic!("{:?}", other.map(|_| "decoded")),
    };
    assert!(
        why.contains("the value of record 0 of 1 does not decode"),
        "{why}"
    );
}

#[test]
fn a_failed_encode_leaves_the_block_as_it_was() {
    struct Refuses;
    impl Serialize for Refuses {
        fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
            Err(serde::ser::Error::custom("no"))
        }
    }
    let mut block = Block::new();
    let (k, e) = &entries(2)[1];
    block.push(k, e).expect("push");
    let refused = Entry {
        value: Arc::new(Refuses),
        loaded_at: 0,
        expires_at: 0,
        stamp: 0,
        meta: crate::bound::Meta::new(),
    };
    assert!(block.push(&"x".to_owned(), &refused).is_err());
    let sealed = block.seal(Vec::new());
    assert_eq!(sealed.count(), 1);
    let mut buf = io::Cursor::new(Vec::new());
    write(&mut buf, "b", 3, |records| records.append(sealed).map(drop)).expect("write");
    let back = read_versioned(&buf.into_inner()).expect("decode").1;
    assert_same_entries(&back, &entries(2)[1..].to_vec());
}

// ---------------------------------------------------------------------------------------------
// Inspection
// ---------------------------------------------------------------------------------------------

fn inspected(bytes: &[u8], now: u64) -> Result<inspect::Inspection, ReadError> {
    inspect::inspect_from(&mut io::Cursor::new(bytes), bytes.len() as u64, now)
}

#[test]
fn an_inspection_of_format_3_gives_ages_expiries_and_sizes() {
    // Ten entries loaded 1..=10 s before `now`; four expire: one already, three 1, 2 and 3 h on.
    let now = 1_700_000_000_000u64;
    let all: Entries = (0..10u64)
        .map(|i| {
            let expires_at = match i {
                0 => now - 1,
                1..=3 => now + i * 3_600_000,
                _ => crate::bucket::NEVER,
            };
            let entry = Entry {
                value: Arc::new(vec![7u64; i as usize]),
                loaded_at: now - (i + 1) * 1000,
                expires_at,
                stamp: 0,
                meta: crate::bound::Meta::new(),
            };
            (format!("k{i}"), entry)
        })
        .collect();
    let bytes = encode_entries(
        &all,
        Some(DumpVersion {
            version: 42,
            exact: true,
        }),
    );
    let seen = inspected(&bytes, now).expect("inspect");
    assert_eq!(
        (seen.format, seen.bucket.as_str(), seen.schema, seen.entries),
        (3, "b", 3, 10)
    );
    assert_eq!(seen.version, Some((42, true)));
    assert_eq!(seen.file_bytes, bytes.len() as u64);
    let figures = seen.figures.clone().expect("format 3 has figures");
    let ages = figures.age_ms.expect("ages");
    assert_eq!(
        (ages.min, ages.p50, ages.p90, ages.p99, ages.max),
        (1000, 5000, 9000, 10_000, 10_000)
    );
    assert_eq!((figures.expiring, figures.expired), (4, 1));
    let rest = figures.expires_in_ms.expect("three expire later");
    assert_eq!(
        (rest.min, rest.p50, rest.max),
        (3_600_000, 7_200_000, 10_800_000)
    );
    // Keys "k0".."k9": 3 bytes each; values: a length byte and i one-byte sevens.
    let keys = figures.key_bytes.expect("keys");
    assert_eq!((keys.total, keys.min, keys.max), (30, 3, 3));
    let values = figures.value_bytes.expect("values");
    assert_eq!(
        (values.total, values.min, values.p50, values.max),
        (55, 1, 5, 10)
    );

    let report = seen.to_string();
    for line in [
        "format:   3\n",
        "bucket:   b\n",
        "schema:   3\n",
        "entries:  10\n",
        "version:  42 (exact: the bucket at that version)\n",
        "ages:     min 1s, p50 5s, p90 9s, p99 10s, max 10s\n",
        "expiry:   4 of 10 entries expire; 1 had expired; the rest in min 1h, p50 2h, p90 3h, \
         p99 3h, max 3h\n",
        "keys:     30 bytes in all; min 3 B, p50 3 B, p90 3 B, p99 3 B, max 3 B\n",
    ] {
        assert!(report.contains(line), "{line:?} in\n{report}");
    }
}

#[test]
fn an_inspection_of_an_older_format_gives_the_header_and_says_what_needs_format_3() {
    let seen = inspected(&format_2(4), 0).expect("format 2");
    assert_eq!(
        (seen.format, seen.entries, seen.version),
        (2, 4, Some((9, true)))
    );
    assert_eq!(seen.figures, None);
    assert!(
        seen.to_string()
            .contains("records:  ages, expiries and sizes need format 3; this dump is format 2"),
        "{seen}"
    );
    let seen = inspected(&format_1(4), 0).expect("format 1");
    assert_eq!((seen.format, seen.version), (1, None));
    assert!(
        seen.to_string()
            .contains("version:  none (format 1 has no version)")
    );
}

#[test]
fn an_inspection_refuses_what_a_warm_start_refuses() {
    let good = encode(5);
    let mut flipped = good.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    let lying = lying_u32(&good, body_start(&good), u32::MAX);
    for (bad, want) in [
        (good[..good.len() - 1].to_vec(), "(a torn write?)"),
        (flipped, "checksum mismatch"),
        (
            b"not a dump, but long enough for a header".to_vec(),
            "bad magic",
        ),
        (Vec::new(), "shorter than a dump header"),
        (lying, "block 0 claims 4294967295 bytes"),
    ] {
        let why = corrupt_reason(inspected(&bad, 0));
        assert!(why.contains(want), "want {want:?}, got {why:?}");
    }
    // An empty dump has no figures to spread.
    let empty = inspected(&encode(0), 0).expect("empty");
    let figures = empty.figures.clone().expect("format 3");
    assert_eq!((figures.age_ms, figures.key_bytes), (None, None));
    assert!(
        empty.to_string().contains("ages:     no entries\n"),
        "{empty}"
    );
    // Written outside a worker, at no version.
    assert!(
        empty
            .to_string()
            .contains("version:  0 (no known version)\n"),
        "{empty}"
    );
}

#[test]
fn spans_show_their_two_largest_units() {
    let span = |ms| inspect::span(ms);
    assert_eq!(span(0), "0ms");
    assert_eq!(span(999), "999ms");
    assert_eq!(span(42_000), "42s");
    assert_eq!(span(302_000), "5m 2s");
    assert_eq!(span(3_600_000), "1h");
    assert_eq!(span(7_199_000), "1h 59m");
    assert_eq!(span((2 * 86_400 + 3 * 3600 + 59) * 1000), "2d 3h");
    assert_eq!(span(86_400_000 + 59_000), "1d");
}
