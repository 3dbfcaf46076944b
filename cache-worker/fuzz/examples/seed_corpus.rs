//! Writes the seed corpus of `decode_dump` into the directory given as the first argument:
//! valid dumps of 0, 1 and 5 sessions, foreign ones, and damaged ones (torn, flipped bits in the
//! header and the body, lying counts, lying length prefixes under a valid checksum), each in
//! format 1 (`<name>.bin`, the dumps workers wrote before format 2, which are still read), in
//! format 2 (`format-2-<name>.bin`, still read) and in format 3 (`format-3-<name>.bin`, what
//! `encode` writes), plus in formats 2 and 3 a dump at version 123, exact, and dumps with a
//! flipped bit in the version or the flags (under the checksum), and in format 3 blocks and
//! records whose lengths claim up to 4 GiB under a valid checksum.
//!
//! ```sh
//! cargo run --manifest-path cache-worker/fuzz/Cargo.toml --example seed_corpus -- cache-worker/fuzz/seeds/decode_dump
//! ```
//!
//! `tests/corpus/` keeps copies of some of these (the format-1 ones were written before format
//! 2, the format-2 ones before format 3; this writes them byte for byte the same).

use std::path::PathBuf;

use cache_worker::__codec::encode;
use cache_worker_fuzz::model::{
    self, BLOCK_HEADER, BUCKET, FLAGS_AT, Layout, SCHEMA, Session, VERSION_AT,
};

fn session(i: u32) -> Session {
    Session {
        id: format!("{}-{}", 1000 + i, 20 + i),
        cinema_id: 1000 + i,
        film_id: format!("HO{:08}", 720 + i),
        showtime_ms: 1_556_000_000_000 + i64::from(i) * 3_600_000,
        seats_available: (i * 37 % 300) as u16,
        attributes: ["OmU", "OV", "3D"]
            .iter()
            .take(i as usize % 4)
            .map(|s| s.to_string())
            .collect(),
        screen: i.is_multiple_of(2).then(|| format!("Saal {i}")),
    }
}

fn records(n: u32) -> Vec<(String, Session, u64, u64)> {
    (0..n)
        .map(|i| {
            let s = session(i);
            (s.id.clone(), s, 1_556_000_000_000 + u64::from(i), u64::MAX)
        })
        .collect()
}

/// A format-3 dump (as `encode` writes it) in `layout`.
fn in_layout(three: &[u8], layout: &Layout) -> Vec<u8> {
    match layout.format {
        1 => model::to_format_1(three).expect("a whole format-3 dump"),
        2 => model::to_format_2(three).expect("a whole format-3 dump"),
        _ => three.to_vec(),
    }
}

fn dump(bucket: &str, schema: u32, n: u32, layout: &Layout) -> Vec<u8> {
    in_layout(
        &encode(bucket, schema, &records(n)).expect("encode"),
        layout,
    )
}

/// The seeds in one format.
fn seeds(layout: &Layout) -> Vec<(&'static str, Vec<u8>)> {
    let mut seeds: Vec<(&str, Vec<u8>)> = Vec::new();
    for n in [0, 1, 5] {
        let name: &str = match n {
            0 => "empty",
            1 => "one",
            _ => "five",
        };
        seeds.push((name, dump(BUCKET, SCHEMA, n, layout)));
    }
    seeds.push(("foreign-bucket", dump("cinemas", SCHEMA, 2, layout)));
    seeds.push(("foreign-schema", dump(BUCKET, SCHEMA + 1, 2, layout)));
    let three = encode(BUCKET, SCHEMA, &records(5)).expect("encode");
    let five = in_layout(&three, layout);
    seeds.push(("torn", five[..five.len() / 2].to_vec()));
    let mut lying_count = five.clone();
    model::set_count(&mut lying_count, u64::MAX);
    seeds.push(("lying-count", lying_count));
    let mut flipped = five.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    seeds.push(("flipped-body", flipped));
    // The first key's length prefix claiming 1 MiB, and one claiming just under the decoder's
    // 1 GiB limit, under a valid checksum (and, in format 3, a framing that holds them).
    for (name, claim) in [
        ("resealed-key-claims-1mib", 1 << 20),
        ("resealed-key-claims-1gib", (1 << 30) - 64),
    ] {
        let mut blocks = model::blocks(&three).expect("a whole format-3 dump");
        blocks[0][0].key.splice(0..1, model::varint(claim));
        let claimed = model::with_blocks(&three, &blocks).expect("a format-3 header");
        seeds.push((name, in_layout(&claimed, layout)));
    }
    let mut count_top_bit = five.clone();
    count_top_bit[model::COUNT_AT + 7] ^= 0x80;
    seeds.push(("count-top-bit-flipped", count_top_bit));
    let mut schema_flipped = five.clone();
    schema_flipped[model::SCHEMA_AT] ^= 1;
    seeds.push(("schema-bit-flipped", schema_flipped));
    let mut name_len_flipped = five.clone();
    name_len_flipped[layout.name_len_at] ^= 1;
    seeds.push(("name-length-bit-flipped", name_len_flipped));
    if layout.format >= 2 {
        // `encode` writes version 0, not exact: a dump at a version, as a worker writes it.
        let mut versioned = five.clone();
        versioned[VERSION_AT..VERSION_AT + 8].copy_from_slice(&123u64.to_le_bytes());
        versioned[FLAGS_AT..FLAGS_AT + 4].copy_from_slice(&1u32.to_le_bytes());
        model::reseal(&mut versioned);
        seeds.push(("five-exact-at-version-123", versioned));
        let mut version_flipped = five.clone();
        version_flipped[VERSION_AT] ^= 1;
        seeds.push(("version-bit-flipped", version_flipped));
        let mut exact_flipped = five.clone();
        exact_flipped[FLAGS_AT] ^= 1;
        seeds.push(("exact-flag-flipped", exact_flipped));
    }
    if layout.format == 3 {
        // Lengths in the framing that claim up to 4 GiB, resealed.
        let start = model::body_start(&five).expect("header");
        let record = start + BLOCK_HEADER;
        for (name, at, claim) in [
            ("block-length-claims-4gib", start, u32::MAX),
            ("block-count-claims-4g-records", start + 4, u32::MAX),
            ("key-length-claims-4gib", record, u32::MAX),
            ("value-length-claims-2gib", record + 4, 1 << 31),
        ] {
            let mut lying = five.clone();
            lying[at..at + 4].copy_from_slice(&claim.to_le_bytes());
            model::reseal(&mut lying);
            seeds.push((name, lying));
        }
    }
    let mut name_flipped = five;
    name_flipped[layout.fixed] ^= 0x20;
    seeds.push(("bucket-name-bit-flipped", name_flipped));
    seeds
}

fn main() {
    let dir = PathBuf::from(std::env::args().nth(1).expect("usage: seed_corpus <dir>"));
    std::fs::create_dir_all(&dir).expect("create the corpus directory");
    for (layout, prefix) in [
        (model::V1, ""),
        (model::V2, "format-2-"),
        (model::V3, "format-3-"),
    ] {
        for (name, bytes) in seeds(&layout) {
            std::fs::write(dir.join(format!("{prefix}{name}.bin")), bytes).expect("write a seed");
        }
    }
}
