//! The dump file format: the only module that knows the codec (bincode 2 through serde).
//!
//! ```text
//! offset  size  field
//! 0       8     magic "CWDUMP\0\n"
//! 8       4     format version (u32 LE)
//! 12      4     schema version (u32 LE): the user's version of the value type
//! 16      8     entry count (u64 LE)
//! 24      8     body length in bytes (u64 LE)
//! 32      4     CRC-32 of the body (u32 LE)
//! 36      2     bucket name length (u16 LE)
//! 38      n     bucket name (UTF-8)
//! 38+n    ...   body: `count` records (key, value, loaded_at ms, expires_at ms), bincode standard
//! ```
//!
//! The body is checked whole (length and checksum) before anything is decoded, so a torn or
//! damaged file is refused before a single value could be served.

use std::io::{self, Seek, SeekFrom, Write};
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::bucket::Entry;

const MAGIC: [u8; 8] = *b"CWDUMP\0\n";
const FORMAT_VERSION: u32 = 1;
const FIXED_HEADER: usize = 38;
/// No single record may claim more than this when decoded (bounds allocations from a lying file).
const RECORD_LIMIT: usize = 1 << 30;

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<RECORD_LIMIT>()
}

/// Why a dump could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// A valid dump of another bucket or schema: refused, left where it is.
    Foreign {
        /// The bucket the dump was written for.
        bucket: String,
        /// The schema version it was written with.
        schema: u32,
    },
    /// Not a dump, or a damaged one.
    Corrupt(String),
}

pub(crate) struct Header {
    pub(crate) schema: u32,
    pub(crate) bucket: String,
    pub(crate) count: u64,
    body_len: u64,
    checksum: u32,
}

impl Header {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(FIXED_HEADER + self.bucket.len());
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&self.schema.to_le_bytes());
        out.extend_from_slice(&self.count.to_le_bytes());
        out.extend_from_slice(&self.body_len.to_le_bytes());
        out.extend_from_slice(&self.checksum.to_le_bytes());
        out.extend_from_slice(&(self.bucket.len() as u16).to_le_bytes());
        out.extend_from_slice(self.bucket.as_bytes());
        out
    }

    fn decode(bytes: &[u8]) -> Result<(Header, usize), DecodeError> {
        let corrupt = |why: &str| DecodeError::Corrupt(why.to_owned());
        if bytes.len() < FIXED_HEADER {
            return Err(corrupt("shorter than a dump header"));
        }
        if bytes[..8] != MAGIC {
            return Err(corrupt("not a cache-worker dump (bad magic)"));
        }
        let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap_or([0; 4]));
        let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap_or([0; 8]));
        let format = u32_at(8);
        if format != FORMAT_VERSION {
            return Err(DecodeError::Corrupt(format!(
                "dump format version {format}, this build reads {FORMAT_VERSION}"
            )));
        }
        let name_len = u16::from_le_bytes([bytes[36], bytes[37]]) as usize;
        let name = bytes
            .get(FIXED_HEADER..FIXED_HEADER + name_len)
            .ok_or_else(|| corrupt("truncated in the header"))?;
        let bucket = std::str::from_utf8(name)
            .map_err(|_| corrupt("bucket name is not UTF-8"))?
            .to_owned();
        let header = Header {
            schema: u32_at(12),
            bucket,
            count: u64_at(16),
            body_len: u64_at(24),
            checksum: u32_at(32),
        };
        Ok((header, FIXED_HEADER + name_len))
    }
}

/// A writer that checksums and counts what passes through it.
struct Summing<W> {
    inner: W,
    hasher: crc32fast::Hasher,
    written: u64,
}

impl<W: Write> Write for Summing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[derive(Serialize)]
struct RecordRef<'a, K, V> {
    key: &'a K,
    value: &'a V,
    loaded_at: u64,
    expires_at: u64,
}

#[derive(serde::Deserialize)]
struct Record<K, V> {
    key: K,
    value: V,
    loaded_at: u64,
    expires_at: u64,
}

/// Writes a whole dump to `out`: header, then the records streamed, then the header again with
/// the real length and checksum.
pub(crate) fn write<K: Serialize, V: Serialize, W: Write + Seek>(
    out: W,
    bucket: &str,
    schema: u32,
    entries: &[(K, Entry<V>)],
) -> io::Result<()> {
    if bucket.len() > u16::MAX as usize {
        return Err(io::Error::other("bucket name longer than 65535 bytes"));
    }
    let mut header = Header {
        schema,
        bucket: bucket.to_owned(),
        count: entries.len() as u64,
        body_len: 0,
        checksum: 0,
    };
    let mut out = out;
    out.write_all(&header.encode())?;
    // Buffer before checksumming, so the CRC runs over large blocks, not per field.
    let mut body = io::BufWriter::with_capacity(
        1 << 16,
        Summing {
            inner: &mut out,
            hasher: crc32fast::Hasher::new(),
            written: 0,
        },
    );
    for (key, entry) in entries {
        let record = RecordRef {
            key,
            value: &*entry.value,
            loaded_at: entry.loaded_at,
            expires_at: entry.expires_at,
        };
        bincode::serde::encode_into_std_write(&record, &mut body, config())
            .map_err(io::Error::other)?;
    }
    let summed = body.into_inner().map_err(|e| e.into_error())?;
    header.body_len = summed.written;
    header.checksum = summed.hasher.finalize();
    out.seek(SeekFrom::Start(0))?;
    out.write_all(&header.encode())?;
    out.flush()
}

/// Decodes a whole dump of `bucket` / `schema`. Nothing is returned unless every record decoded.
pub(crate) fn read<K: DeserializeOwned, V: DeserializeOwned>(
    bytes: &[u8],
    bucket: &str,
    schema: u32,
) -> Result<Vec<(K, Entry<V>)>, DecodeError> {
    read_into(
        bytes,
        bucket,
        schema,
        Vec::with_capacity,
        |entries, k, e| entries.push((k, e)),
    )
}

/// Decodes a dump of `bucket` / `schema` into the collection that `make` creates for the number
/// of records to expect (never more than the body's length in bytes), one `push` a record. The body's length and checksum are
/// verified before the first record is decoded; a record that fails to decode fails the whole
/// read, and the caller must then drop what it collected.
pub(crate) fn read_into<K: DeserializeOwned, V: DeserializeOwned, C>(
    bytes: &[u8],
    bucket: &str,
    schema: u32,
    make: impl FnOnce(usize) -> C,
    mut push: impl FnMut(&mut C, K, Entry<V>),
) -> Result<C, DecodeError> {
    let (header, start) = Header::decode(bytes)?;
    let body = &bytes[start..];
    if body.len() as u64 != header.body_len {
        return Err(DecodeError::Corrupt(format!(
            "body is {} bytes, the header says {} (a torn write?)",
            body.len(),
            header.body_len
        )));
    }
    if crc32fast::hash(body) != header.checksum {
        return Err(DecodeError::Corrupt("checksum mismatch".to_owned()));
    }
    if header.bucket != bucket || header.schema != schema {
        return Err(DecodeError::Foreign {
            bucket: header.bucket,
            schema: header.schema,
        });
    }
    // Every record takes at least one byte, so a lying count cannot reserve more than the body.
    let mut out = make(header.count.min(body.len() as u64) as usize);
    let mut at = 0;
    for i in 0..header.count {
        let (record, used): (Record<K, V>, usize) =
            bincode::serde::decode_from_slice(&body[at..], config()).map_err(|e| {
                DecodeError::Corrupt(format!(
                    "record {i} of {} does not decode: {e}",
                    header.count
                ))
            })?;
        at += used;
        push(
            &mut out,
            record.key,
            Entry {
                value: Arc::new(record.value),
                loaded_at: record.loaded_at,
                expires_at: record.expires_at,
            },
        );
    }
    if at != body.len() {
        return Err(DecodeError::Corrupt(format!(
            "{} bytes after the last of {} records",
            body.len() - at,
            header.count
        )));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(n: u64) -> Vec<(String, Entry<Vec<u64>>)> {
        (0..n)
            .map(|i| {
                (
                    format!("k{i}"),
                    Entry {
                        value: Arc::new(vec![i; (i % 5) as usize]),
                        loaded_at: 1000 + i,
                        expires_at: crate::bucket::NEVER,
                    },
                )
            })
            .collect()
    }

    fn encode(n: u64) -> Vec<u8> {
        let mut buf = io::Cursor::new(Vec::new());
        write(&mut buf, "b", 3, &entries(n)).expect("encode");
        buf.into_inner()
    }

    #[test]
    fn round_trip_keeps_values_and_times() {
        let bytes = encode(100);
        let back: Vec<(String, Entry<Vec<u64>>)> = read(&bytes, "b", 3).expect("decode");
        assert_eq!(back.len(), 100);
        for ((k1, e1), (k2, e2)) in entries(100).iter().zip(&back) {
            assert_eq!(k1, k2);
            assert_eq!(e1.value, e2.value);
            assert_eq!(e1.loaded_at, e2.loaded_at);
            assert_eq!(e1.expires_at, e2.expires_at);
        }
    }

    #[test]
    fn every_truncation_is_refused() {
        let bytes = encode(20);
        for len in 0..bytes.len() {
            let r = read::<String, Vec<u64>>(&bytes[..len], "b", 3);
            assert!(matches!(r, Err(DecodeError::Corrupt(_))), "len {len}");
        }
    }

    #[test]
    fn every_bit_flip_in_the_body_is_refused() {
        let bytes = encode(20);
        let (_, start) = Header::decode(&bytes).expect("header");
        for at in start..bytes.len() {
            let mut bad = bytes.clone();
            bad[at] ^= 0x10;
            assert!(read::<String, Vec<u64>>(&bad, "b", 3).is_err(), "byte {at}");
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
        let mut bytes = encode(3);
        bytes[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        // The header is not covered by the checksum; the count is checked against the records.
        assert!(matches!(
            read::<String, Vec<u64>>(&bytes, "b", 3),
            Err(DecodeError::Corrupt(_))
        ));
    }
}

/// The codec on its own, for the fuzz target and the hostile-dump tests (`__codec` at the crate
/// root). Not a public API.
pub mod exposed {
    use serde::Serialize;
    use serde::de::DeserializeOwned;

    pub use super::DecodeError;
    use crate::bucket::Entry;

    /// One record as stored: key, value, `loaded_at` and `expires_at` (ms since the epoch).
    pub type Record<K, V> = (K, V, u64, u64);

    /// Encodes a dump of `records` as a worker writes it.
    ///
    /// # Errors
    ///
    /// A bucket name over 65535 bytes, or a value serde cannot encode.
    pub fn encode<K: Serialize, V: Serialize>(
        bucket: &str,
        schema: u32,
        records: &[Record<K, V>],
    ) -> std::io::Result<Vec<u8>> {
        let entries: Vec<(&K, Entry<&V>)> = records
            .iter()
            .map(|(k, v, loaded_at, expires_at)| {
                (
                    k,
                    Entry {
                        value: std::sync::Arc::new(v),
                        loaded_at: *loaded_at,
                        expires_at: *expires_at,
                    },
                )
            })
            .collect();
        let mut out = std::io::Cursor::new(Vec::new());
        super::write(&mut out, bucket, schema, &entries)?;
        Ok(out.into_inner())
    }

    /// Decodes a dump as a worker's warm start does: all records, or why not.
    ///
    /// # Errors
    ///
    /// [`DecodeError::Foreign`] for a valid dump of another bucket or schema,
    /// [`DecodeError::Corrupt`] for anything else that is not a complete, intact dump.
    pub fn decode<K: DeserializeOwned, V: DeserializeOwned>(
        bytes: &[u8],
        bucket: &str,
        schema: u32,
    ) -> Result<Vec<Record<K, V>>, DecodeError> {
        Ok(super::read::<K, V>(bytes, bucket, schema)?
            .into_iter()
            .map(|(k, e)| {
                let value = std::sync::Arc::try_unwrap(e.value)
                    .unwrap_or_else(|_| unreachable!("decoded values are not shared"));
                (k, value, e.loaded_at, e.expires_at)
            })
            .collect())
    }
}
