//! Fuzzing the dump codec (`cache_worker::__codec`).
//!
//! - `decode_dump`: arbitrary bytes decoded as a dump of [`model::BUCKET`] / [`model::SCHEMA`]
//!   holding [`model::Session`] values.
//! - `mutate_dump`: a valid dump of arbitrary records (see [`Input`]), then a list of edits:
//!   bit flips, truncation, insertion, header fields set to lies, lying length prefixes in the
//!   body, and "reseal" (fix the body length and checksum after the edits, so that a damaged
//!   body reaches the record decoder).
//!
//! Both check every answer against [`model::check`]; `mutate_dump` also checks that an
//! unedited dump decodes to exactly its records.

#[path = "model.rs"]
pub mod model;

use arbitrary::{Arbitrary, Unstructured};
use model::{Key, Session};

impl<'a> Arbitrary<'a> for Session {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        Ok(Session {
            id: u.arbitrary()?,
            cinema_id: u.arbitrary()?,
            film_id: u.arbitrary()?,
            showtime_ms: u.arbitrary()?,
            seats_available: u.arbitrary()?,
            attributes: u.arbitrary()?,
            screen: u.arbitrary()?,
        })
    }
}

/// One record as the codec stores it.
pub type Record = (Key, Session, u64, u64);

/// A dump to build, and what to do to its bytes.
#[derive(Arbitrary, Debug)]
pub struct Input {
    pub records: Vec<Record>,
    /// Write the dump for another bucket / schema (it may happen to be ours).
    pub identity: Option<(String, u32)>,
    pub edits: Vec<Edit>,
}

/// One change to the bytes of a dump. Offsets are taken modulo the current length.
#[derive(Arbitrary, Debug, Clone)]
pub enum Edit {
    FlipBit(u32),
    SetByte(u32, u8),
    Truncate(u32),
    Append(Vec<u8>),
    Insert(u32, Vec<u8>),
    Remove(u32, u8),
    /// Header fields set to a lie.
    Count(u64),
    BodyLen(u64),
    Schema(u32),
    NameLen(u16),
    Checksum(u32),
    /// A length prefix (bincode varint) written over the body at `at`, claiming
    /// `2^(shift % 64) - below` bytes: a string or list that says it is longer (or shorter) than
    /// it is. Claims just under a power of two are as likely as small ones.
    Claim {
        at: u32,
        shift: u8,
        below: u16,
    },
    /// Fix the body length and checksum to match the body as it is now.
    Reseal,
}

fn pick(at: u32, len: usize) -> Option<usize> {
    (len > 0).then(|| at as usize % len)
}

/// Applies one edit to `bytes`.
pub fn apply(bytes: &mut Vec<u8>, edit: &Edit) {
    match edit {
        Edit::FlipBit(bit) => {
            if let Some(i) = pick(*bit, bytes.len() * 8) {
                bytes[i / 8] ^= 1 << (i % 8);
            }
        }
        Edit::SetByte(at, value) => {
            if let Some(i) = pick(*at, bytes.len()) {
                bytes[i] = *value;
            }
        }
        Edit::Truncate(at) => {
            if let Some(i) = pick(*at, bytes.len()) {
                bytes.truncate(i);
            }
        }
        Edit::Append(more) => bytes.extend_from_slice(more),
        Edit::Insert(at, more) => {
            let i = pick(*at, bytes.len() + 1).unwrap_or(0);
            bytes.splice(i..i, more.iter().copied());
        }
        Edit::Remove(at, n) => {
            if let Some(i) = pick(*at, bytes.len()) {
                let end = (i + usize::from(*n)).min(bytes.len());
                bytes.drain(i..end);
            }
        }
        Edit::Count(count) => model::set_count(bytes, *count),
        Edit::BodyLen(len) => model::set_body_len(bytes, *len),
        Edit::Schema(schema) => {
            if bytes.len() >= model::COMMON_HEADER {
                bytes[model::SCHEMA_AT..model::SCHEMA_AT + 4]
                    .copy_from_slice(&schema.to_le_bytes());
            }
        }
        Edit::NameLen(len) => model::set_name_len(bytes, *len),
        Edit::Checksum(crc) => {
            if bytes.len() >= model::COMMON_HEADER {
                bytes[model::CRC_AT..model::CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
            }
        }
        Edit::Claim { at, shift, below } => {
            if let Some(start) = model::body_start(bytes) {
                let body_len = bytes.len() - start;
                if let Some(i) = pick(*at, body_len) {
                    let len = (1u64 << (shift % 64)).saturating_sub(u64::from(*below));
                    let prefix = model::varint(len);
                    let from = start + i;
                    let to = (from + prefix.len()).min(bytes.len());
                    bytes.splice(from..to, prefix);
                }
            }
        }
        Edit::Reseal => model::reseal(bytes),
    }
}

/// The dump an input describes, before and after its edits (`None`: a bucket name too long
/// to encode).
pub fn build(input: &Input) -> Option<(Vec<u8>, Vec<u8>)> {
    let (bucket, schema) = identity(input);
    let Ok(original) = cache_worker::__codec::encode(&bucket, schema, &input.records) else {
        // A bucket name over 65535 bytes: refused at encoding, nothing to decode.
        assert!(bucket.len() > usize::from(u16::MAX));
        return None;
    };
    let mut bytes = original.clone();
    for edit in &input.edits {
        apply(&mut bytes, edit);
    }
    Some((original, bytes))
}

fn identity(input: &Input) -> (String, u32) {
    input
        .identity
        .clone()
        .unwrap_or_else(|| (model::BUCKET.to_owned(), model::SCHEMA))
}

/// The whole check of one `mutate_dump` input.
pub fn run_mutation(input: &Input) {
    let (bucket, schema) = identity(input);
    let Some((original, bytes)) = build(input) else {
        return;
    };
    let decoded = model::decode(&bytes);
    model::check(&bytes, &decoded);
    if bytes == original {
        let ours = bucket == model::BUCKET && schema == model::SCHEMA;
        match &decoded {
            Ok(records) if ours => assert!(
                records == &input.records,
                "an intact dump decodes to the records it was made of"
            ),
            Err(cache_worker::__codec::DecodeError::Foreign { .. }) if !ours => {}
            other => panic!(
                "an intact dump (ours: {ours}) gave {}",
                model::describe(other)
            ),
        }
    }
    // Whatever decoded re-encodes and decodes to itself.
    if let Ok(records) = &decoded {
        let again = cache_worker::__codec::encode(model::BUCKET, model::SCHEMA, records)
            .expect("re-encode decoded records");
        let back = model::decode(&again).expect("decode the re-encoded records");
        assert!(&back == records, "decode → encode → decode is stable");
    }
}
