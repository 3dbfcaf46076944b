//! The dump file format: the only module that knows the codec (bincode 2 through serde).
//!
//! ```text
//! offset  size  field
//! 0       8     magic "CWDUMP\0\n"
//! 8       4     format version (u32 LE): 2
//! 12      4     schema version (u32 LE): the user's version of the value type
//! 16      8     entry count (u64 LE)
//! 24      8     body length in bytes (u64 LE)
//! 32      4     CRC-32 of the bytes 36..48 and the body (u32 LE)
//! 36      8     the bucket's version when the dump was written (u64 LE)
//! 44      4     flags (u32 LE): bit 0 set if the records are the bucket at exactly that version
//! 48      2     bucket name length (u16 LE)
//! 50      n     bucket name (UTF-8)
//! 50+n    ...   body: `count` records (key, value, loaded_at ms, expires_at ms), bincode standard
//! ```
//!
//! Format 1, written before versions, is still read: it has no version and flags, its name
//! length is at 36, its name at 38, and its checksum covers the body alone. It reads as a dump
//! of no known version.
//!
//! The body is checked whole (length, then checksum in a first streaming pass) before anything
//! is decoded, so a torn or damaged file is refused before a single value could be served, and
//! a damaged length inside a record cannot make the decoder allocate. The second pass decodes
//! from a fixed-size window, never holding the whole file in memory.

use std::io::{self, Read, Seek, SeekFrom, Write};
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::bucket::Entry;

const MAGIC: [u8; 8] = *b"CWDUMP\0\n";
const FORMAT_VERSION: u32 = 2;
/// The header fields up to the checksum, the same in every format.
const COMMON_HEADER: usize = 36;
/// The version and flags of format 2, under the checksum.
const VERSION_FIELDS: usize = 12;
const EXACT: u32 = 1;
/// No single record may claim more than this when decoded (bounds allocations from a lying file).
const RECORD_LIMIT: usize = 1 << 30;
/// A dump's (unchecked) count presizes the collection for at most one record per this many
/// bytes of body. An honest record takes at least 20: its two times are milliseconds since 1970
/// (past `u32::MAX`, so 9 bytes each as varints) besides its key and value; a session-like one
/// takes about 70.
const PRESIZE_BYTES_PER_RECORD: u64 = 16;
/// The window the body is read through (grown only for a record larger than it).
const WINDOW: usize = 1 << 20;

/// The encoding: bincode's standard (varint integers). Writing needs no limit.
fn encode_config() -> impl bincode::config::Config {
    bincode::config::standard()
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

/// Why a dump file could not be read: the file system, or its contents.
#[derive(Debug)]
pub(crate) enum ReadError {
    Io(io::Error),
    Decode(DecodeError),
}

impl From<io::Error> for ReadError {
    fn from(e: io::Error) -> Self {
        ReadError::Io(e)
    }
}

impl From<DecodeError> for ReadError {
    fn from(e: DecodeError) -> Self {
        ReadError::Decode(e)
    }
}

/// Said of records that do not decode although the checksum over them is good: the bytes are
/// as written, so what reads them is not what wrote them.
const TYPE_CHANGED: &str = "the checksum is good, so the key or value type has likely \
     changed since the dump was written: did the value type change? bump `schema` so that \
     older dumps are refused instead";

fn corrupt(why: impl Into<String>) -> ReadError {
    ReadError::Decode(DecodeError::Corrupt(why.into()))
}

/// The bucket's version a dump was written at, from its header.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct DumpVersion {
    pub(crate) version: u64,
    /// The records are the bucket at exactly `version`: no change was made while they were
    /// written. Format 1 dumps, and dumps written while the bucket changed, are not.
    pub(crate) exact: bool,
}

impl DumpVersion {
    fn fields(self) -> [u8; VERSION_FIELDS] {
        let mut out = [0u8; VERSION_FIELDS];
        out[..8].copy_from_slice(&self.version.to_le_bytes());
        let flags = if self.exact { EXACT } else { 0 };
        out[8..].copy_from_slice(&flags.to_le_bytes());
        out
    }
}

pub(crate) struct Header {
    pub(crate) schema: u32,
    pub(crate) bucket: String,
    pub(crate) count: u64,
    pub(crate) version: DumpVersion,
    body_len: u64,
    checksum: u32,
    /// Format 2's version fields as read, which the checksum covers; `None` in format 1.
    checked_fields: Option<[u8; VERSION_FIELDS]>,
}

impl Header {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(COMMON_HEADER + VERSION_FIELDS + 2 + self.bucket.len());
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&self.schema.to_le_bytes());
        out.extend_from_slice(&self.count.to_le_bytes());
        out.extend_from_slice(&self.body_len.to_le_bytes());
        out.extend_from_slice(&self.checksum.to_le_bytes());
        out.extend_from_slice(&self.version.fields());
        out.extend_from_slice(&(self.bucket.len() as u16).to_le_bytes());
        out.extend_from_slice(self.bucket.as_bytes());
        out
    }

    /// Reads the header; returns it and its length in bytes.
    fn read(input: &mut impl Read) -> Result<(Header, usize), ReadError> {
        let mut fixed = [0u8; COMMON_HEADER];
        read_exact_or(input, &mut fixed, "shorter than a dump header")?;
        if fixed[..8] != MAGIC {
            return Err(corrupt("not a cache-worker dump (bad magic)"));
        }
        let u32_at = |at: usize| {
            u32::from_le_bytes([fixed[at], fixed[at + 1], fixed[at + 2], fixed[at + 3]])
        };
        let u64_at = |at: usize| (u64::from(u32_at(at + 4)) << 32) | u64::from(u32_at(at));
        let format = u32_at(8);
        let mut len = COMMON_HEADER;
        let (version, checked_fields) = match format {
            1 => (DumpVersion::default(), None),
            2 => {
                let mut fields = [0u8; VERSION_FIELDS];
                read_exact_or(input, &mut fields, "shorter than a dump header")?;
                len += VERSION_FIELDS;
                let mut version = [0u8; 8];
                version.copy_from_slice(&fields[..8]);
                let flags = u32::from_le_bytes([fields[8], fields[9], fields[10], fields[11]]);
                let version = DumpVersion {
                    version: u64::from_le_bytes(version),
                    exact: flags & EXACT != 0,
                };
                (version, Some(fields))
            }
            _ => {
                return Err(corrupt(format!(
                    "dump format version {format}, this build reads 1 and {FORMAT_VERSION}"
                )));
            }
        };
        let mut name_len = [0u8; 2];
        read_exact_or(input, &mut name_len, "shorter than a dump header")?;
        len += 2;
        let name_len = usize::from(u16::from_le_bytes(name_len));
        let mut name = vec![0u8; name_len];
        read_exact_or(input, &mut name, "truncated in the header")?;
        let bucket = String::from_utf8(name).map_err(|_| corrupt("bucket name is not UTF-8"))?;
        let header = Header {
            schema: u32_at(12),
            bucket,
            count: u64_at(16),
            version,
            body_len: u64_at(24),
            checksum: u32_at(32),
            checked_fields,
        };
        Ok((header, len + name_len))
    }
}

/// `read_exact`, with running out of bytes reported as a damaged dump.
fn read_exact_or(input: &mut impl Read, buf: &mut [u8], why: &str) -> Result<(), ReadError> {
    input.read_exact(buf).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => corrupt(why),
        _ => ReadError::Io(e),
    })
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

/// The records of a dump being written: [`write`] hands one to its `fill` callback.
pub(crate) struct Records<W: Write> {
    body: io::BufWriter<Summing<W>>,
    count: u64,
    version: DumpVersion,
}

impl<W: Write> Records<W> {
    /// The bucket's version the records are at, kept in the header; set once they are all
    /// pushed, when it is known whether the bucket changed while they were.
    pub(crate) fn set_version(&mut self, version: DumpVersion) {
        self.version = version;
    }

    /// Appends one record.
    pub(crate) fn push<K: Serialize, V: Serialize>(
        &mut self,
        key: &K,
        entry: &Entry<V>,
    ) -> io::Result<()> {
        let record = RecordRef {
            key,
            value: &*entry.value,
            loaded_at: entry.loaded_at,
            expires_at: entry.expires_at,
        };
        bincode::serde::encode_into_std_write(&record, &mut self.body, encode_config()).map_err(
            |e| match e {
                // The disk's own error (ENOSPC, EFBIG, EIO...), kind and all.
                bincode::error::EncodeError::Io { inner, .. } => inner,
                other => io::Error::other(other),
            },
        )?;
        self.count += 1;
        Ok(())
    }
}

/// Writes a whole dump to `out`: a provisional header, then the records that `fill` pushes,
/// streamed through a checksumming buffer, then the header again with the real count, length
/// and checksum. Nothing is copied: `fill` can encode straight from a live map.
pub(crate) fn write<W: Write + Seek>(
    mut out: W,
    bucket: &str,
    schema: u32,
    fill: impl FnOnce(&mut Records<W>) -> io::Result<()>,
) -> io::Result<()> {
    if bucket.len() > usize::from(u16::MAX) {
        return Err(io::Error::other("bucket name longer than 65535 bytes"));
    }
    let mut header = Header {
        schema,
        bucket: bucket.to_owned(),
        count: 0,
        version: DumpVersion::default(),
        body_len: 0,
        checksum: 0,
        checked_fields: None,
    };
    out.write_all(&header.encode())?;
    // Buffer before checksumming, so the CRC runs over large blocks, not per field.
    let mut records = Records {
        body: io::BufWriter::with_capacity(
            1 << 16,
            Summing {
                inner: out,
                hasher: crc32fast::Hasher::new(),
                written: 0,
            },
        ),
        count: 0,
        version: DumpVersion::default(),
    };
    fill(&mut records)?;
    let Records {
        body,
        count,
        version,
    } = records;
    header.count = count;
    header.version = version;
    let Summing {
        inner: mut out,
        hasher: body_sum,
        written,
    } = body.into_inner().map_err(|e| e.into_error())?;
    header.body_len = written;
    // The version fields come before the body under the checksum, but are known only now.
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&version.fields());
    hasher.combine(&body_sum);
    header.checksum = hasher.finalize();
    out.seek(SeekFrom::Start(0))?;
    out.write_all(&header.encode())?;
    out.flush()
}

/// Decodes a whole dump of `bucket` / `schema` held in memory. Nothing is returned unless
/// every record decoded.
pub(crate) fn read<K: DeserializeOwned, V: DeserializeOwned>(
    bytes: &[u8],
    bucket: &str,
    schema: u32,
) -> Result<Vec<(K, Entry<V>)>, DecodeError> {
    let read = read_into(
        &mut io::Cursor::new(bytes),
        bytes.len() as u64,
        bucket,
        schema,
        |count, _| Vec::with_capacity(count),
        |entries, k, e| entries.push((k, e)),
    );
    match read {
        Ok(entries) => Ok(entries),
        Err(ReadError::Decode(e)) => Err(e),
        // Reading from memory fails only by running out of bytes, which is reported as corrupt.
        Err(ReadError::Io(e)) => Err(DecodeError::Corrupt(e.to_string())),
    }
}

/// Decodes the dump of `bucket` / `schema` that `input` holds from its start, `len` bytes in
/// all (a file's length), into the collection that `make` creates for the number of records to
/// expect (never more than the body's length in bytes) and the dump's version, one `push` a
/// record.
///
/// Two streaming passes: the first checks the body's length and checksum, the second decodes
/// through a window of [`WINDOW`] bytes. A record that fails to decode fails the whole read,
/// and the caller must then drop what it collected.
pub(crate) fn read_into<R, K, V, C>(
    input: &mut R,
    len: u64,
    bucket: &str,
    schema: u32,
    make: impl FnOnce(usize, DumpVersion) -> C,
    mut push: impl FnMut(&mut C, K, Entry<V>),
) -> Result<C, ReadError>
where
    R: Read + Seek,
    K: DeserializeOwned,
    V: DeserializeOwned,
{
    let (header, start) = Header::read(input)?;
    let body_len = len.saturating_sub(start as u64);
    if body_len != header.body_len {
        return Err(corrupt(format!(
            "body is {body_len} bytes, the header says {} (a torn write?)",
            header.body_len
        )));
    }
    if header.bucket != bucket || header.schema != schema {
        return Err(ReadError::Decode(DecodeError::Foreign {
            bucket: header.bucket,
            schema: header.schema,
        }));
    }

    // Pass 1: the checksum, over the version fields and the exact body.
    let mut window = vec![0u8; WINDOW];
    let mut hasher = crc32fast::Hasher::new();
    if let Some(fields) = &header.checked_fields {
        hasher.update(fields);
    }
    let mut left = body_len;
    while left > 0 {
        let want = window
            .len()
            .min(usize::try_from(left).unwrap_or(usize::MAX));
        read_exact_or(input, &mut window[..want], "shorter than its header says")?;
        hasher.update(&window[..want]);
        left -= want as u64;
    }
    if hasher.finalize() != header.checksum {
        return Err(corrupt("checksum mismatch"));
    }

    // Pass 2: decode, record by record, through the window.
    input.seek(SeekFrom::Start(start as u64))?;
    let mut input = input.take(body_len);
    // The count is not under the checksum: presize for at most one record per
    // PRESIZE_BYTES_PER_RECORD bytes of body, so a lying count reserves a small multiple of the
    // file's size at most; dumps of smaller records grow the collection as they decode.
    let mut out = make(
        header.count.min(body_len / PRESIZE_BYTES_PER_RECORD) as usize,
        header.version,
    );
    let mut decoded = 0u64;
    let (mut at, mut filled) = (0usize, 0usize);
    let mut exhausted = false;
    let mut i = 0;
    while i < header.count {
        match decode_record::<K, V>(&window[at..filled], body_len - decoded) {
            Ok((record, used)) => {
                at += used;
                decoded += used as u64;
                i += 1;
                push(
                    &mut out,
                    record.key,
                    Entry {
                        value: Arc::new(record.value),
                        loaded_at: record.loaded_at,
                        expires_at: record.expires_at,
                        stamp: 0,
                        meta: crate::bound::Meta::new(),
                    },
                );
            }
            Err(bincode::error::DecodeError::UnexpectedEnd { .. }) if !exhausted => {
                // The record runs past the window: move what is left to the front, grow the
                // window if one record fills it, and read on.
                window.copy_within(at..filled, 0);
                filled -= at;
                at = 0;
                if filled == window.len() {
                    window.resize(window.len() * 2, 0);
                }
                let n = read_some(&mut input, &mut window[filled..])?;
                filled += n;
                exhausted = n == 0;
            }
            Err(e) => {
                return Err(corrupt(format!(
                    "record {i} of {} does not decode: {e}; {TYPE_CHANGED}",
                    header.count
                )));
            }
        }
    }
    let trailing = (filled - at) as u64 + io::copy(&mut input, &mut io::sink())?;
    if trailing != 0 {
        return Err(corrupt(format!(
            "{trailing} bytes after the last of {} records; {TYPE_CHANGED}",
            header.count
        )));
    }
    Ok(out)
}

/// Decodes one record from the front of `slice`; `left` is how many bytes of the body are not
/// decoded yet. bincode claims each integer's in-memory size and each string's length against
/// its limit, so an honest record never claims more than 16 bytes per byte it takes (a u128 in
/// one varint byte): the limit is the first step at or above 16 × `left`. A lying length prefix
/// then cannot make bincode allocate more than that (with the fixed limit: up to 1 GiB from a
/// file of any size).
fn decode_record<K: DeserializeOwned, V: DeserializeOwned>(
    slice: &[u8],
    left: u64,
) -> Result<(Record<K, V>, usize), bincode::error::DecodeError> {
    fn limited<T: DeserializeOwned, const N: usize>(
        slice: &[u8],
    ) -> Result<(T, usize), bincode::error::DecodeError> {
        bincode::serde::decode_from_slice(slice, bincode::config::standard().with_limit::<N>())
    }
    match left.saturating_mul(16) {
        0..=0xFFFF => limited::<_, { 1 << 16 }>(slice),
        0x1_0000..=0xF_FFFF => limited::<_, { 1 << 20 }>(slice),
        0x10_0000..=0xFF_FFFF => limited::<_, { 1 << 24 }>(slice),
        0x100_0000..=0xFFF_FFFF => limited::<_, { 1 << 28 }>(slice),
        _ => limited::<_, RECORD_LIMIT>(slice),
    }
}

/// One `read`, retried when interrupted.
fn read_some(input: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match input.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
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
        let mut buf = io::Cursor::new(Vec::new());
        write(&mut buf, "b", 3, |records| {
            entries(n)
                .iter()
                .try_for_each(|(k, e)| records.push(k, e))?;
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

    #[test]
    fn round_trip_keeps_values_and_times() {
        let bytes = encode(100);
        let back: Entries = read(&bytes, "b", 3).expect("decode");
        assert_same_entries(&back, &entries(100));
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

    /// The dump of `n` entries as format 1 laid it out, built by hand: the 36 bytes every format
    /// shares (format 1 at 8, the checksum over the body alone), the name length at 36, the name
    /// at 38, then the body (the records encode as they did).
    fn format_1(n: u64) -> Vec<u8> {
        let two = encode_at(
            n,
            Some(DumpVersion {
                version: 9,
                exact: true,
            }),
        );
        let (_, start) = Header::read(&mut &two[..]).expect("header");
        let body = &two[start..];
        let mut out = Vec::new();
        out.extend_from_slice(b"CWDUMP\0\n");
        out.extend_from_slice(&1u32.to_le_bytes());
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&n.to_le_bytes());
        out.extend_from_slice(&(body.len() as u64).to_le_bytes());
        out.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
        out.extend_from_slice(&1u16.to_le_bytes());
        out.extend_from_slice(b"b");
        out.extend_from_slice(body);
        assert_eq!(out.len(), 38 + 1 + body.len());
        out
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
        let bytes = encode_at(
            5,
            Some(DumpVersion {
                version: 123,
                exact: true,
            }),
        );
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

    #[test]
    fn another_format_is_refused_naming_the_formats_read() {
        for format in [0u32, 3, u32::MAX] {
            let mut bytes = encode(2);
            bytes[8..12].copy_from_slice(&format.to_le_bytes());
            let why = corrupt_reason(read_versioned(&bytes));
            assert!(
                why.contains(&format!("format version {format}")) && why.contains("reads 1 and 2"),
                "{why}"
            );
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
        let (_, start) = Header::read(&mut &bytes[..]).expect("header");
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

/// The bytes of one key in a shared store (feature `redis`): the same encoding as in dumps,
/// so equal keys give equal bytes.
#[cfg(feature = "redis")]
pub(crate) fn encode_key<K: Serialize>(key: &K) -> Result<Vec<u8>, bincode::error::EncodeError> {
    bincode::serde::encode_to_vec(key, encode_config())
}

/// A key from its bytes; `None` if they are not exactly one `K`.
#[cfg(feature = "redis")]
pub(crate) fn decode_key<K: DeserializeOwned>(bytes: &[u8]) -> Option<K> {
    match bincode::serde::decode_from_slice(bytes, encode_config()) {
        Ok((key, read)) if read == bytes.len() => Some(key),
        _ => None,
    }
}

/// The bytes of one entry in a shared store: the schema version (u32, little-endian), then
/// the value, its load time and its expiry as in dumps. An entry of another schema does not
/// decode.
#[cfg(feature = "redis")]
pub(crate) fn encode_entry<V: Serialize>(
    schema: u32,
    entry: &Entry<V>,
) -> Result<Vec<u8>, bincode::error::EncodeError> {
    let mut out = schema.to_le_bytes().to_vec();
    let record = (&*entry.value, entry.loaded_at, entry.expires_at);
    bincode::serde::encode_into_std_write(record, &mut out, encode_config())
        .map_err(|e| bincode::error::EncodeError::OtherString(e.to_string()))?;
    Ok(out)
}

/// An entry from its bytes; `None` if they are of another schema or not exactly one entry.
#[cfg(feature = "redis")]
pub(crate) fn decode_entry<V: DeserializeOwned>(schema: u32, bytes: &[u8]) -> Option<Entry<V>> {
    let (head, body) = bytes.split_first_chunk::<4>()?;
    if u32::from_le_bytes(*head) != schema {
        return None;
    }
    match bincode::serde::decode_from_slice::<(V, u64, u64), _>(body, encode_config()) {
        Ok(((value, loaded_at, expires_at), read)) if read == body.len() => Some(Entry {
            value: std::sync::Arc::new(value),
            loaded_at,
            expires_at,
            stamp: 0,
            meta: crate::bound::Meta::new(),
        }),
        _ => None,
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
        let mut out = std::io::Cursor::new(Vec::new());
        super::write(&mut out, bucket, schema, |sink| {
            records
                .iter()
                .try_for_each(|(k, v, loaded_at, expires_at)| {
                    sink.push(
                        k,
                        &Entry {
                            value: std::sync::Arc::new(v),
                            loaded_at: *loaded_at,
                            expires_at: *expires_at,
                            stamp: 0,
                            meta: crate::bound::Meta::new(),
                        },
                    )
                })
        })?;
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
