//! The dump file format: the only module that knows the codec (bincode 2 through serde).
//!
//! Workers write format 3:
//!
//! ```text
//! offset  size  field
//! 0       8     magic "CWDUMP\0\n"
//! 8       4     format version (u32 LE): 3
//! 12      4     schema version (u32 LE): the user's version of the value type
//! 16      8     entry count (u64 LE)
//! 24      8     body length in bytes (u64 LE)
//! 32      4     CRC-32 of the bytes 36..48 and the body (u32 LE)
//! 36      8     the bucket's version when the dump was written (u64 LE)
//! 44      4     flags (u32 LE): bit 0 set if the records are the bucket at exactly that version
//! 48      2     bucket name length (u16 LE)
//! 50      n     bucket name (UTF-8)
//! 50+n    ...   body: blocks, one after another
//!
//! a block
//! 0       4     length L of its records in bytes (u32 LE)
//! 4       4     record count (u32 LE)
//! 8       L     records, one after another
//!
//! a record
//! 0       4     key length k in bytes (u32 LE)
//! 4       4     value length v in bytes (u32 LE)
//! 8       8     loaded_at: ms since the Unix epoch (u64 LE)
//! 16      8     expires_at: ms since the Unix epoch, u64::MAX for never (u64 LE)
//! 24      k     key, bincode standard (varint integers)
//! 24+k    v     value, bincode standard
//! ```
//!
//! The order of blocks and records means nothing: a worker encodes its map on several threads
//! and writes each block as it is done (`dump.rs`). A writer seals a block once its records pass
//! 1 MiB. Every record can be walked without knowing the key or value type, which is how
//! [`inspect`](exposed::inspect) reads entry ages and sizes.
//!
//! Older formats are still read. Format 2 has the same header; its body is `count` records one
//! after another, each the bincode encoding of (key, value, loaded_at ms, expires_at ms), with
//! nothing to tell where one ends but decoding it. Format 1, written before versions, has format
//! 2's body and no version and flags: its name length is at 36, its name at 38, and its checksum
//! covers the body alone. It reads as a dump of no known version.
//!
//! The body is checked whole (length, then checksum in a first streaming pass) before anything
//! is decoded, so a torn or damaged file is refused before a single value could be served, and
//! a damaged length cannot make the decoder allocate: in format 3 each block's and record's
//! length is checked against the bytes left around it before a byte is read for it, and the
//! bincode inside a key or value is decoded under a limit in proportion to its length, as each
//! record of formats 1 and 2 is. The second pass decodes from a fixed-size window, never holding
//! the whole file in memory.

mod block;
mod inspect;
#[cfg(test)]
mod tests;
mod window;

use std::io::{self, Read, Seek, SeekFrom, Write};
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

pub(crate) use block::{Block, Sealed};
use window::Window;

use crate::bucket::Entry;

const MAGIC: [u8; 8] = *b"CWDUMP\0\n";
/// The format written.
const FORMAT_VERSION: u32 = 3;
/// The header fields up to the checksum, the same in every format.
const COMMON_HEADER: usize = 36;
/// The version and flags of formats 2 and 3, under the checksum.
const VERSION_FIELDS: usize = 12;
const EXACT: u32 = 1;
/// No single record may claim more than this when decoded (bounds allocations from a lying file).
const RECORD_LIMIT: usize = 1 << 30;
/// A format-1 or -2 dump's (unchecked) count presizes the collection for at most one record
/// per this many bytes of body. An honest record takes at least 20: its two times are
/// milliseconds since 1970 (past `u32::MAX`, so 9 bytes each as varints) besides its key and
/// value; a session-like one takes about 70. (A format-3 record takes at least its 24-byte
/// header.)
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
    /// The format version: 1, 2 or 3.
    format: u32,
    pub(crate) schema: u32,
    pub(crate) bucket: String,
    pub(crate) count: u64,
    pub(crate) version: DumpVersion,
    body_len: u64,
    checksum: u32,
    /// The version fields as read, which the checksum covers; `None` in format 1.
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
            2 | 3 => {
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
                    "dump format version {format}, this build reads formats 1 to {FORMAT_VERSION}"
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
            format,
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

    /// Reads the header of the dump that `input` holds from its start, `len` bytes in all (a
    /// file's length), and checks that the body is as long as the header says; returns the
    /// header and where the body starts.
    fn open(input: &mut impl Read, len: u64) -> Result<(Header, u64), ReadError> {
        let (header, start) = Header::read(input)?;
        let body_len = len.saturating_sub(start as u64);
        if body_len != header.body_len {
            return Err(corrupt(format!(
                "body is {body_len} bytes, the header says {} (a torn write?)",
                header.body_len
            )));
        }
        Ok((header, start as u64))
    }

    /// Reads the body from `input` (just after the header) through `window` and checks it
    /// against the checksum, which also covers the version fields.
    fn verify(&self, input: &mut impl Read, window: &mut [u8]) -> Result<(), ReadError> {
        let mut hasher = crc32fast::Hasher::new();
        if let Some(fields) = &self.checked_fields {
            hasher.update(fields);
        }
        let mut left = self.body_len;
        while left > 0 {
            let want = window
                .len()
                .min(usize::try_from(left).unwrap_or(usize::MAX));
            read_exact_or(input, &mut window[..want], "shorter than its header says")?;
            hasher.update(&window[..want]);
            left -= want as u64;
        }
        if hasher.finalize() != self.checksum {
            return Err(corrupt("checksum mismatch"));
        }
        Ok(())
    }

    /// How many records to presize a collection for: the count, which is not under the
    /// checksum, but never more than the body could hold, so a lying count reserves a small
    /// multiple of the file's size at most; dumps of smaller records grow the collection as
    /// they decode.
    fn presize(&self) -> usize {
        let smallest = match self.format {
            3 => block::RECORD_HEADER as u64,
            _ => PRESIZE_BYTES_PER_RECORD,
        };
        self.count.min(self.body_len / smallest) as usize
    }
}

/// `read_exact`, with running out of bytes reported as a damaged dump.
fn read_exact_or(input: &mut impl Read, buf: &mut [u8], why: &str) -> Result<(), ReadError> {
    input.read_exact(buf).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => corrupt(why),
        _ => ReadError::Io(e),
    })
}

/// Appends the encoding of `value` to `out`; returns how many bytes it took. On an error,
/// `out` may hold part of it.
fn encode_into<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) -> io::Result<usize> {
    struct Appending<'a>(&'a mut Vec<u8>);
    impl bincode::enc::write::Writer for Appending<'_> {
        #[inline]
        fn write(&mut self, bytes: &[u8]) -> Result<(), bincode::error::EncodeError> {
            self.0.extend_from_slice(bytes);
            Ok(())
        }
    }
    let before = out.len();
    bincode::serde::encode_into_writer(value, Appending(out), encode_config())
        .map_err(io::Error::other)?;
    Ok(out.len() - before)
}

/// One record of formats 1 and 2 as decoded.
#[derive(serde::Deserialize)]
struct Record<K, V> {
    key: K,
    value: V,
    loaded_at: u64,
    expires_at: u64,
}

/// The records of a dump being written: [`write`] hands one to its `fill` callback, which
/// either pushes records one at a time (they are buffered into blocks) or appends blocks that
/// it sealed itself, on other threads.
pub(crate) struct Records<W: Write> {
    out: W,
    /// The block that `push` fills.
    block: Block,
    /// The buffer of the last block written, for the next one.
    spare: Vec<u8>,
    /// The CRC-32 of the blocks written so far.
    body: crc32fast::Hasher,
    written: u64,
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
        self.block.push(key, entry)?;
        if self.block.is_full() {
            let sealed = self.block.seal(std::mem::take(&mut self.spare));
            self.spare = self.append(sealed)?;
        }
        Ok(())
    }

    /// Writes a block of records; returns its buffer, for another block.
    pub(crate) fn append(&mut self, block: Sealed) -> io::Result<Vec<u8>> {
        self.out.write_all(block.bytes())?;
        self.body.combine(block.crc());
        self.written += block.bytes().len() as u64;
        self.count += block.count();
        Ok(block.into_buffer())
    }
}

/// Writes a whole dump to `out`: a provisional header, then the records that `fill` pushes or
/// appends, block by block, then the header again with the real count, length and checksum.
/// Nothing is copied but into the blocks: `fill` can encode straight from a live map.
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
        format: FORMAT_VERSION,
        schema,
        bucket: bucket.to_owned(),
        count: 0,
        version: DumpVersion::default(),
        body_len: 0,
        checksum: 0,
        checked_fields: None,
    };
    out.write_all(&header.encode())?;
    let mut records = Records {
        out,
        block: Block::new(),
        spare: Vec::new(),
        body: crc32fast::Hasher::new(),
        written: 0,
        count: 0,
        version: DumpVersion::default(),
    };
    fill(&mut records)?;
    if !records.block.is_empty() {
        let last = records.block.seal(Vec::new());
        records.append(last)?;
    }
    let Records {
        mut out,
        body,
        written,
        count,
        version,
        ..
    } = records;
    header.count = count;
    header.version = version;
    header.body_len = written;
    // The version fields come before the body under the checksum, but are known only now.
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&version.fields());
    hasher.combine(&body);
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
/// expect (never more than the body could hold) and the dump's version, one `push` a record.
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
    let (header, start) = Header::open(input, len)?;
    if header.bucket != bucket || header.schema != schema {
        return Err(ReadError::Decode(DecodeError::Foreign {
            bucket: header.bucket,
            schema: header.schema,
        }));
    }
    // Pass 1: the checksum, over the version fields and the exact body.
    let mut buffer = vec![0u8; WINDOW];
    header.verify(input, &mut buffer)?;

    // Pass 2: decode, record by record, through the window.
    input.seek(SeekFrom::Start(start))?;
    let mut window = Window::new(input.take(header.body_len), buffer);
    let mut out = make(header.presize(), header.version);
    let mut push = |k, e| push(&mut out, k, e);
    match header.format {
        3 => decode_blocks(&mut window, &header, &mut push)?,
        _ => decode_stream(&mut window, &header, &mut push)?,
    }
    Ok(out)
}

/// Decodes the blocks of a format-3 body: each key and value from exactly the bytes its record
/// gives it.
fn decode_blocks<R, K, V>(
    window: &mut Window<R>,
    header: &Header,
    push: &mut impl FnMut(K, Entry<V>),
) -> Result<(), ReadError>
where
    R: Read,
    K: DeserializeOwned,
    V: DeserializeOwned,
{
    let count = header.count;
    let fails = |i: u64, what: &str, why: String| {
        corrupt(format!(
            "the {what} of record {i} of {count} does not decode: {why}; {TYPE_CHANGED}"
        ))
    };
    block::walk(window, header.body_len, count, |i, record| {
        let key = decode_exact::<K>(record.key).map_err(|why| fails(i, "key", why))?;
        let value = decode_exact::<V>(record.value).map_err(|why| fails(i, "value", why))?;
        push(
            key,
            Entry {
                value: Arc::new(value),
                loaded_at: record.loaded_at,
                expires_at: record.expires_at,
                stamp: 0,
                meta: crate::bound::Meta::new(),
            },
        );
        Ok(())
    })
}

/// Decodes the records of a format-1 or -2 body, each where the last one ended.
fn decode_stream<R, K, V>(
    window: &mut Window<R>,
    header: &Header,
    push: &mut impl FnMut(K, Entry<V>),
) -> Result<(), ReadError>
where
    R: Read,
    K: DeserializeOwned,
    V: DeserializeOwned,
{
    let mut decoded = 0u64;
    let mut i = 0;
    while i < header.count {
        let attempt = decode_limited::<Record<K, V>>(window.bytes(), header.body_len - decoded);
        match attempt {
            Ok((record, used)) => {
                window.consume(used);
                decoded += used as u64;
                i += 1;
                push(
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
            // The record runs past the window: read on (growing the window if one record
            // fills it).
            Err(bincode::error::DecodeError::UnexpectedEnd { .. }) if window.more()? => {}
            Err(e) => {
                return Err(corrupt(format!(
                    "record {i} of {} does not decode: {e}; {TYPE_CHANGED}",
                    header.count
                )));
            }
        }
    }
    let trailing = window.rest()?;
    if trailing != 0 {
        return Err(corrupt(format!(
            "{trailing} bytes after the last of {} records; {TYPE_CHANGED}",
            header.count
        )));
    }
    Ok(())
}

/// Decodes one `T` from all of `bytes` (a key or a value of a format-3 record).
fn decode_exact<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    match decode_limited::<T>(bytes, bytes.len() as u64) {
        Ok((value, used)) if used == bytes.len() => Ok(value),
        Ok((_, used)) => Err(format!("it takes {used} of its {} bytes", bytes.len())),
        Err(e) => Err(e.to_string()),
    }
}

/// Decodes one `T` from the front of `slice`; `left` is how many bytes of what holds it are not
/// decoded yet (the rest of a format-1 or -2 body, or the key or value of a format-3 record).
/// bincode claims each integer's in-memory size and each string's length against its limit,
/// so an honest encoding never claims more than 16 bytes per byte it takes (a u128 in one
/// varint byte): the limit is the first step at or above 16 × `left`. A lying length prefix
/// then cannot make bincode allocate more than that (with the fixed limit: up to 1 GiB from a
/// file of any size).
fn decode_limited<T: DeserializeOwned>(
    slice: &[u8],
    left: u64,
) -> Result<(T, usize), bincode::error::DecodeError> {
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
/// the value, its load time and its expiry as in format-2 dumps. An entry of another schema
/// does not decode.
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

/// The codec on its own, for the fuzz target, the hostile-dump tests and the
/// `cache-worker-dump` tool (`__codec` at the crate root). Not a public API.
pub mod exposed {
    use serde::Serialize;
    use serde::de::DeserializeOwned;

    pub use super::DecodeError;
    pub use super::inspect::{Figures, InspectError, Inspection, Spread, inspect};
    use crate::bucket::Entry;

    /// One record as stored: key, value, `loaded_at` and `expires_at` (ms since the epoch).
    pub type Record<K, V> = (K, V, u64, u64);

    /// Encodes a dump of `records` as a worker writes it (format 3; the records in their order,
    /// in blocks of about 1 MiB).
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
