//! Writes the seed corpus of `decode_dump` into the directory given as the first argument:
//! valid dumps of 0, 1 and 5 sessions, foreign ones, and damaged ones (torn, flipped bits in the
//! header and the body, lying counts, lying length prefixes under a valid checksum).
//!
//! ```sh
//! cargo run --manifest-path cache-worker/fuzz/Cargo.toml --example seed_corpus -- cache-worker/fuzz/seeds/decode_dump
//! ```

use std::path::PathBuf;

use cache_worker::__codec::encode;
use cache_worker_fuzz::model::{self, BUCKET, SCHEMA, Session};

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

fn main() {
    let dir = PathBuf::from(std::env::args().nth(1).expect("usage: seed_corpus <dir>"));
    std::fs::create_dir_all(&dir).expect("create the corpus directory");
    let mut seeds: Vec<(&str, Vec<u8>)> = Vec::new();
    for n in [0, 1, 5] {
        let name: &str = match n {
            0 => "empty",
            1 => "one",
            _ => "five",
        };
        seeds.push((name, encode(BUCKET, SCHEMA, &records(n)).expect("encode")));
    }
    seeds.push((
        "foreign-bucket",
        encode("cinemas", SCHEMA, &records(2)).expect("encode"),
    ));
    seeds.push((
        "foreign-schema",
        encode(BUCKET, SCHEMA + 1, &records(2)).expect("encode"),
    ));
    let five = encode(BUCKET, SCHEMA, &records(5)).expect("encode");
    seeds.push(("torn", five[..five.len() / 2].to_vec()));
    let mut lying_count = five.clone();
    model::set_count(&mut lying_count, u64::MAX);
    seeds.push(("lying-count", lying_count));
    let mut flipped = five.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    seeds.push(("flipped-body", flipped));
    let at = model::body_start(&five).expect("header");
    // A key length prefix claiming 1 MiB, and one claiming just under the decoder's 1 GiB
    // limit, under a valid checksum.
    for (name, claim) in [
        ("resealed-key-claims-1mib", 1 << 20),
        ("resealed-key-claims-1gib", (1 << 30) - 64),
    ] {
        let mut resealed = five.clone();
        resealed.splice(at..at + 1, model::varint(claim));
        model::reseal(&mut resealed);
        seeds.push((name, resealed));
    }
    let mut count_top_bit = five.clone();
    count_top_bit[model::COUNT_AT + 7] ^= 0x80;
    seeds.push(("count-top-bit-flipped", count_top_bit));
    let mut schema_flipped = five.clone();
    schema_flipped[model::SCHEMA_AT] ^= 1;
    seeds.push(("schema-bit-flipped", schema_flipped));
    let mut name_len_flipped = five.clone();
    name_len_flipped[model::NAME_LEN_AT] ^= 1;
    seeds.push(("name-length-bit-flipped", name_len_flipped));
    let mut name_flipped = five;
    name_flipped[model::FIXED_HEADER] ^= 0x20;
    seeds.push(("bucket-name-bit-flipped", name_flipped));
    for (name, bytes) in seeds {
        std::fs::write(dir.join(format!("{name}.bin")), bytes).expect("write a seed");
    }
}
