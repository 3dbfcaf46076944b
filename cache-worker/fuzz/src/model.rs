//! What the dump fuzz targets decode, and what the decoder must answer: shared by the fuzz
//! targets (`fuzz/src/lib.rs`) and `tests/hostile_dumps.rs` (which includes this file with
//! `#[path]`), so that an input the fuzzer saved replays in the test exactly as it was found.
//!
//! The oracle reads the header by the layout documented in `src/codec.rs`, independently of the
//! codec. Every format starts with the magic "CWDUMP\0\n", the format version (u32 LE at 8),
//! schema (u32 LE at 12), entry count (u64 LE at 16), body length (u64 LE at 24) and a CRC-32
//! (u32 LE at 32); the format version decides the rest:
//!
//! - format 3 (what `encode` writes) and format 2 (still read): the bucket's version (u64 LE at
//!   36), flags (u32 LE at 44), the bucket name length (u16 LE at 48), the name (at 50), then the
//!   body; the checksum covers bytes 36..48 followed by the body;
//! - format 1 (still read): the name length (u16 LE at 36), the name (at 38), then the body; the
//!   checksum covers the body alone;
//! - any other format: `Corrupt`.
//!
//! The body of format 3 is blocks, each a u32 LE length L of its records, a u32 LE record
//! count, then its records: each a u32 LE key length k, a u32 LE value length v, loaded_at and
//! expires_at (u64 LE), then k bytes of key and v bytes of value (bincode). The body of formats
//! 1 and 2 is the records one after another, each the bincode encoding of (key, value,
//! loaded_at, expires_at) with varint integers.
//!
//! The version and flags are checked only through the checksum (the decoder does not answer
//! with them); the other header fields are outside it, so they are checked one by one. The
//! framing inside a format-3 body is the decoder's to check: an intact dump of ours may still
//! be `Corrupt` (as one of formats 1 and 2 whose records do not decode).
#![allow(dead_code, unreachable_pub)]

use cache_worker::__codec::{DecodeError, Record};
use serde::{Deserialize, Serialize};

/// The bucket every target decodes for.
pub const BUCKET: &str = "sessions";
/// The schema version every target decodes for.
pub const SCHEMA: u32 = 7;
/// Offsets of the header fields every format has.
pub const FORMAT_AT: usize = 8;
pub const SCHEMA_AT: usize = 12;
pub const COUNT_AT: usize = 16;
pub const BODY_LEN_AT: usize = 24;
pub const CRC_AT: usize = 32;
/// The size of the header fields every format has (up to and with the checksum).
pub const COMMON_HEADER: usize = 36;
/// Formats 2 and 3: offsets of the bucket's version and the flags (under the checksum), and of
/// the name length; the size of the fixed part of the header (where the name starts).
pub const VERSION_AT: usize = 36;
pub const FLAGS_AT: usize = 44;
pub const NAME_LEN_AT_V2: usize = 48;
pub const FIXED_HEADER_V2: usize = 50;
/// Format 1: offset of the name length; the size of the fixed part of the header.
pub const NAME_LEN_AT_V1: usize = 36;
pub const FIXED_HEADER_V1: usize = 38;

/// Where one format keeps what follows the common header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// The format version.
    pub format: u32,
    /// The offset of the bucket name length (u16 LE).
    pub name_len_at: usize,
    /// The size of the fixed part of the header: where the bucket name starts.
    pub fixed: usize,
    /// The header bytes under the checksum, which covers them and then the body.
    pub checked: std::ops::Range<usize>,
}

/// The layout of format 3: that of format 2.
pub const V3: Layout = Layout {
    format: 3,
    name_len_at: NAME_LEN_AT_V2,
    fixed: FIXED_HEADER_V2,
    checked: VERSION_AT..NAME_LEN_AT_V2,
};

/// The layout of format 2.
pub const V2: Layout = Layout {
    format: 2,
    name_len_at: NAME_LEN_AT_V2,
    fixed: FIXED_HEADER_V2,
    checked: VERSION_AT..NAME_LEN_AT_V2,
};

/// The layout of format 1.
pub const V1: Layout = Layout {
    format: 1,
    name_len_at: NAME_LEN_AT_V1,
    fixed: FIXED_HEADER_V1,
    checked: COMMON_HEADER..COMMON_HEADER,
};

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

/// The layout `bytes` are in, by their format version (`None`: too short to have one, or a
/// format that is not read). The magic is not looked at.
pub fn layout(bytes: &[u8]) -> Option<Layout> {
    if bytes.len() < FORMAT_AT + 4 {
        return None;
    }
    match u32_at(bytes, FORMAT_AT) {
        1 => Some(V1),
        2 => Some(V2),
        3 => Some(V3),
        _ => None,
    }
}

/// The layout of `bytes` and where their body starts, if the header is whole (in a format that
/// is read).
pub fn header(bytes: &[u8]) -> Option<(Layout, usize)> {
    let layout = layout(bytes)?;
    if bytes.len() < layout.fixed {
        return None;
    }
    let at = layout.name_len_at;
    let start = layout.fixed + usize::from(u16::from_le_bytes([bytes[at], bytes[at + 1]]));
    (start <= bytes.len()).then_some((layout, start))
}

/// Where the body starts, if the header is whole (in a format that is read).
pub fn body_start(bytes: &[u8]) -> Option<usize> {
    header(bytes).map(|(_, start)| start)
}

/// The CRC-32 the header of `bytes` must hold: over the header bytes its format puts under the
/// checksum, then the body (from `start`).
fn checksum(bytes: &[u8], layout: &Layout, start: usize) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&bytes[layout.checked.clone()]);
    hasher.update(&bytes[start..]);
    hasher.finalize()
}

/// What the decoder must answer for `bytes`, by the documented layout.
pub fn expected(bytes: &[u8]) -> Expected {
    let Some((layout, start)) = header(bytes) else {
        return Expected::Corrupt;
    };
    if &bytes[..8] != b"CWDUMP\0\n" {
        return Expected::Corrupt;
    }
    let Ok(name) = std::str::from_utf8(&bytes[layout.fixed..start]) else {
        return Expected::Corrupt;
    };
    let body = &bytes[start..];
    if body.len() as u64 != u64_at(bytes, BODY_LEN_AT) {
        return Expected::Corrupt;
    }
    let intact = checksum(bytes, &layout, start) == u32_at(bytes, CRC_AT);
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

/// A block's header (length of its records, their count) and a record's (key length, value
/// length, loaded_at, expires_at) in format 3.
pub const BLOCK_HEADER: usize = 8;
pub const RECORD_HEADER: usize = 24;

/// One record of a format-3 body as stored: its key's and value's bytes and its times.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Raw {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub loaded_at: u64,
    pub expires_at: u64,
}

/// The records of a format-3 dump, block by block, read by the documented layout. `None`
/// unless `bytes` are a whole format-3 header over a body whose framing is consistent.
pub fn blocks(bytes: &[u8]) -> Option<Vec<Vec<Raw>>> {
    let (layout, start) = header(bytes)?;
    if layout != V3 {
        return None;
    }
    let mut at = start;
    let mut blocks = Vec::new();
    while at < bytes.len() {
        let head = bytes.get(at..at + BLOCK_HEADER)?;
        let (len, count) = (u32_at(head, 0) as usize, u32_at(head, 4));
        at += BLOCK_HEADER;
        let end = at.checked_add(len).filter(|&end| end <= bytes.len())?;
        let mut records = Vec::new();
        for _ in 0..count {
            let head = bytes
                .get(at..at + RECORD_HEADER)
                .filter(|_| at + RECORD_HEADER <= end)?;
            let (k, v) = (u32_at(head, 0) as usize, u32_at(head, 4) as usize);
            let key_at = at + RECORD_HEADER;
            let value_at = key_at.checked_add(k)?;
            let next = value_at.checked_add(v).filter(|&next| next <= end)?;
            records.push(Raw {
                key: bytes[key_at..value_at].to_vec(),
                value: bytes[value_at..next].to_vec(),
                loaded_at: u64_at(head, 8),
                expires_at: u64_at(head, 16),
            });
            at = next;
        }
        if at != end {
            return None;
        }
        blocks.push(records);
    }
    Some(blocks)
}

/// The header of `bytes` (format 3) over a body of `blocks`, with the count, body length and
/// checksum set to match them: records with any bytes inside a consistent framing, as a hostile
/// writer or a value type changed without a new schema would leave. `None` without a whole
/// format-3 header.
pub fn with_blocks(bytes: &[u8], blocks: &[Vec<Raw>]) -> Option<Vec<u8>> {
    let (layout, start) = header(bytes)?;
    if layout != V3 {
        return None;
    }
    let mut out = bytes[..start].to_vec();
    let mut count = 0u64;
    for records in blocks {
        let len: usize = records
            .iter()
            .map(|r| RECORD_HEADER + r.key.len() + r.value.len())
            .sum();
        out.extend_from_slice(&(len as u32).to_le_bytes());
        out.extend_from_slice(&(records.len() as u32).to_le_bytes());
        for r in records {
            out.extend_from_slice(&(r.key.len() as u32).to_le_bytes());
            out.extend_from_slice(&(r.value.len() as u32).to_le_bytes());
            out.extend_from_slice(&r.loaded_at.to_le_bytes());
            out.extend_from_slice(&r.expires_at.to_le_bytes());
            out.extend_from_slice(&r.key);
            out.extend_from_slice(&r.value);
        }
        count += records.len() as u64;
    }
    set_count(&mut out, count);
    reseal(&mut out);
    Some(out)
}

/// The same dump in format 2, as a worker wrote it before format 3: the same header but for
/// the format, each record's key and value bytes followed by its times as bincode varints.
/// `None` unless `bytes` are a whole format-3 dump (see [`blocks`]).
pub fn to_format_2(bytes: &[u8]) -> Option<Vec<u8>> {
    let blocks = blocks(bytes)?;
    let start = body_start(bytes)?;
    let mut out = bytes[..start].to_vec();
    out[FORMAT_AT..FORMAT_AT + 4].copy_from_slice(&2u32.to_le_bytes());
    for r in blocks.iter().flatten() {
        out.extend_from_slice(&r.key);
        out.extend_from_slice(&r.value);
        out.extend_from_slice(&varint(r.loaded_at));
        out.extend_from_slice(&varint(r.expires_at));
    }
    reseal(&mut out);
    Some(out)
}

/// The same dump in format 1, as a worker wrote it before format 2: format 2's body, without
/// the version and flags, the checksum over the body alone. `None` unless `bytes` are a whole
/// format-3 dump (see [`blocks`]).
pub fn to_format_1(bytes: &[u8]) -> Option<Vec<u8>> {
    let two = to_format_2(bytes)?;
    let start = body_start(&two)?;
    let mut out = Vec::with_capacity(two.len() - (V2.fixed - V1.fixed));
    out.extend_from_slice(&two[..COMMON_HEADER]);
    out.extend_from_slice(&two[V2.name_len_at..]);
    out[FORMAT_AT..FORMAT_AT + 4].copy_from_slice(&1u32.to_le_bytes());
    let crc = crc32fast::hash(&two[start..]);
    out[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
    Some(out)
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

/// Rewrites the body length and checksum to match whatever follows the header now (and, in
/// formats 2 and 3, the version and flags as they are now), so that a damaged body gets past the
/// integrity check and into the record decoder (a hostile file, or a dump written by another
/// value type under the same schema). No-op without a whole header.
pub fn reseal(bytes: &mut [u8]) {
    let Some((layout, start)) = header(bytes) else {
        return;
    };
    let len = (bytes.len() - start) as u64;
    let crc = checksum(bytes, &layout, start);
    bytes[BODY_LEN_AT..BODY_LEN_AT + 8].copy_from_slice(&len.to_le_bytes());
    bytes[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
}

/// Sets the header's entry count (no-op on a file shorter than the common header).
pub fn set_count(bytes: &mut [u8], count: u64) {
    if bytes.len() >= COMMON_HEADER {
        bytes[COUNT_AT..COUNT_AT + 8].copy_from_slice(&count.to_le_bytes());
    }
}

/// Sets the header's body length (no-op on a file shorter than the common header).
pub fn set_body_len(bytes: &mut [u8], len: u64) {
    if bytes.len() >= COMMON_HEADER {
        bytes[BODY_LEN_AT..BODY_LEN_AT + 8].copy_from_slice(&len.to_le_bytes());
    }
}

/// Sets the header's bucket name length, where the format keeps it (no-op without the fixed
/// part of a header in a format that is read).
pub fn set_name_len(bytes: &mut [u8], len: u16) {
    if let Some(layout) = layout(bytes)
        && bytes.len() >= layout.fixed
    {
        let at = layout.name_len_at;
        bytes[at..at + 2].copy_from_slice(&len.to_le_bytes());
    }
}

/// A bincode-2 varint: a length prefix claiming `len` (the encoding of every string's and
/// list's length in a record), or an integer such as a format-2 record's times.
pub fn varint(len: u64) -> Vec<u8> {
    match len {
        0..=250 => vec![len as u8],
        251..=0xFFFF => [&[251u8][..], &(len as u16).to_le_bytes()].concat(),
        0x1_0000..=0xFFFF_FFFF => [&[252u8][..], &(len as u32).to_le_bytes()].concat(),
        _ => [&[253u8][..], &len.to_le_bytes()].concat(),
    }
}
