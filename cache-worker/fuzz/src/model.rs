//! What the dump fuzz targets decode, and what the decoder must answer: shared by the fuzz
//! targets (`fuzz/src/lib.rs`) and `tests/hostile_dumps.rs` (which includes this file with
//! `#[path]`), so that an input the fuzzer saved replays in the test exactly as it was found.
//!
//! The oracle reads the header by the layout documented in `src/codec.rs`, independently of the
//! codec: the magic "CWDUMP\0\n", format version 1 (u32 LE at 8), schema (u32 LE at 12), entry
//! count (u64 LE at 16), body length (u64 LE at 24), CRC-32 of the body (u32 LE at 32), bucket
//! name length (u16 LE at 36), the bucket name, then the body. Only the body is under the
//! checksum, so the header fields are checked one by one.
#![allow(dead_code, unreachable_pub)]

use cache_worker::__codec::{DecodeError, Record};
use serde::{Deserialize, Serialize};

/// The bucket every target decodes for.
pub const BUCKET: &str = "sessions";
/// The schema version every target decodes for.
pub const SCHEMA: u32 = 7;
/// The size of the fixed part of the header.
pub const FIXED_HEADER: usize = 38;
/// Offsets of the header fields.
pub const FORMAT_AT: usize = 8;
pub const SCHEMA_AT: usize = 12;
pub const COUNT_AT: usize = 16;
pub const BODY_LEN_AT: usize = 24;
pub const CRC_AT: usize = 32;
pub const NAME_LEN_AT: usize = 36;

/// A value shaped like the Vista sessions: strings, integers of several widths, a list and an
/// optional field.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub id: String,
    pub cinema_id: u32,
    pub film_id: String,
    pub showtime_ms: i64,
    pub seats_available: u16,
    pub attributes: Vec<String>,
    pub screen: Option<String>,
}

/// Keys are session ids.
pub type Key = String;

/// What decoding these bytes for [`BUCKET`] / [`SCHEMA`] gives.
pub type Decoded = Result<Vec<Record<Key, Session>>, DecodeError>;

/// Decodes as a worker of [`BUCKET`] / [`SCHEMA`] does at its warm start.
pub fn decode(bytes: &[u8]) -> Decoded {
    cache_worker::__codec::decode::<Key, Session>(bytes, BUCKET, SCHEMA)
}

/// What the header of a file says, read by the documented layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expected {
    /// Not a whole, intact dump: the decoder must answer `Corrupt`.
    Corrupt,
    /// An intact dump of another bucket or schema: the decoder must answer `Foreign` with these.
    Foreign { bucket: String, schema: u32 },
    /// A dump naming another bucket or schema whose body is damaged: `Foreign` with these, or
    /// `Corrupt` (whether the identity or the checksum is checked first is the codec's choice).
    ForeignDamaged { bucket: String, schema: u32 },
    /// An intact dump of ours (header fields consistent, body length and checksum right): the
    /// decoder answers `count` records, or `Corrupt` if the records do not decode as exactly
    /// `count` records filling the body.
    Ours { count: u64 },
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut b = [0; 4];
    b.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(b)
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut b = [0; 8];
    b.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(b)
}

/// Where the body starts, if the header is whole.
pub fn body_start(bytes: &[u8]) -> Option<usize> {
    if bytes.len() < FIXED_HEADER {
        return None;
    }
    let name_len = usize::from(u16::from_le_bytes([
        bytes[NAME_LEN_AT],
        bytes[NAME_LEN_AT + 1],
    ]));
    (FIXED_HEADER + name_len <= bytes.len()).then_some(FIXED_HEADER + name_len)
}

/// What the decoder must answer for `bytes`, by the documented layout.
pub fn expected(bytes: &[u8]) -> Expected {
    let Some(start) = body_start(bytes) else {
        return Expected::Corrupt;
    };
    if &bytes[..8] != b"CWDUMP\0\n" || u32_at(bytes, FORMAT_AT) != 1 {
        return Expected::Corrupt;
    }
    let Ok(name) = std::str::from_utf8(&bytes[FIXED_HEADER..start]) else {
        return Expected::Corrupt;
    };
    let body = &bytes[start..];
    if body.len() as u64 != u64_at(bytes, BODY_LEN_AT) {
        return Expected::Corrupt;
    }
    let intact = crc32fast::hash(body) == u32_at(bytes, CRC_AT);
    let schema = u32_at(bytes, SCHEMA_AT);
    if name != BUCKET || schema != SCHEMA {
        let bucket = name.to_owned();
        return if intact {
            Expected::Foreign { bucket, schema }
        } else {
            Expected::ForeignDamaged { bucket, schema }
        };
    }
    if !intact {
        return Expected::Corrupt;
    }
    Expected::Ours {
        count: u64_at(bytes, COUNT_AT),
    }
}

/// Panics unless `decoded` is an answer the decoder may give for `bytes`.
pub fn check(bytes: &[u8], decoded: &Decoded) {
    let expected = expected(bytes);
    let fine = match (&expected, decoded) {
        (Expected::Corrupt, Err(DecodeError::Corrupt(_))) => true,
        (
            Expected::Foreign { bucket, schema } | Expected::ForeignDamaged { bucket, schema },
            Err(DecodeError::Foreign {
                bucket: b,
                schema: s,
            }),
        ) => bucket == b && schema == s,
        (Expected::ForeignDamaged { .. }, Err(DecodeError::Corrupt(_))) => true,
        (Expected::Ours { count }, Ok(records)) => records.len() as u64 == *count,
        (Expected::Ours { .. }, Err(DecodeError::Corrupt(_))) => true,
        _ => false,
    };
    assert!(
        fine,
        "decoding {} bytes: the header says {expected:?}, the decoder answered {}",
        bytes.len(),
        describe(decoded)
    );
}

/// A short description of a decode result, for messages.
pub fn describe(decoded: &Decoded) -> String {
    match decoded {
        Ok(records) => format!("Ok({} records)", records.len()),
        Err(DecodeError::Foreign { bucket, schema }) => {
            format!("Foreign {{ bucket: {bucket:?}, schema: {schema} }}")
        }
        Err(DecodeError::Corrupt(why)) => format!("Corrupt({why:?})"),
    }
}

/// Rewrites the body length and checksum to match whatever follows the header now, so that a
/// damaged body gets past the integrity check and into the record decoder (a hostile file, or a
/// dump written by another value type under the same schema). No-op without a whole header.
pub fn reseal(bytes: &mut [u8]) {
    let Some(start) = body_start(bytes) else {
        return;
    };
    let len = (bytes.len() - start) as u64;
    let crc = crc32fast::hash(&bytes[start..]);
    bytes[BODY_LEN_AT..BODY_LEN_AT + 8].copy_from_slice(&len.to_le_bytes());
    bytes[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
}

/// Sets the header's entry count (no-op on a file shorter than the fixed header).
pub fn set_count(bytes: &mut [u8], count: u64) {
    if bytes.len() >= FIXED_HEADER {
        bytes[COUNT_AT..COUNT_AT + 8].copy_from_slice(&count.to_le_bytes());
    }
}

/// Sets the header's body length (no-op on a file shorter than the fixed header).
pub fn set_body_len(bytes: &mut [u8], len: u64) {
    if bytes.len() >= FIXED_HEADER {
        bytes[BODY_LEN_AT..BODY_LEN_AT + 8].copy_from_slice(&len.to_le_bytes());
    }
}

/// A bincode-2 varint length prefix claiming `len` (the encoding of every string's and list's
/// length in a record).
pub fn varint(len: u64) -> Vec<u8> {
    match len {
        0..=250 => vec![len as u8],
        251..=0xFFFF => [&[251u8][..], &(len as u16).to_le_bytes()].concat(),
        0x1_0000..=0xFFFF_FFFF => [&[252u8][..], &(len as u32).to_le_bytes()].concat(),
        _ => [&[253u8][..], &len.to_le_bytes()].concat(),
    }
}
