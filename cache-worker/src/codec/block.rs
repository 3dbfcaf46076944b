//! Format 3's blocks (see the table in `codec.rs`): encoding records into one, on any thread,
//! and walking the records of a body without knowing their types.

use std::io::{self, Read};

use serde::Serialize;

use super::window::Window;
use super::{ReadError, corrupt};
use crate::bucket::Entry;

/// A block's header: the length of its records, and their count.
pub(super) const BLOCK_HEADER: usize = 8;
/// A record's header: key length, value length, loaded_at, expires_at.
pub(super) const RECORD_HEADER: usize = 24;
/// A block is full once its records take this many bytes.
const BLOCK_TARGET: usize = 1 << 20;
/// Room reserved past [`BLOCK_TARGET`], so that the record that fills a block rarely grows it.
const SLACK: usize = 64 << 10;

/// Records being encoded into one block.
pub(crate) struct Block {
    /// The block's header (filled in when it is sealed), then its records.
    bytes: Vec<u8>,
    count: u32,
}

impl Block {
    pub(crate) fn new() -> Self {
        let mut block = Block {
            bytes: Vec::new(),
            count: 0,
        };
        block.restart(Vec::new());
        block
    }

    /// Starts again, empty, in `buf` (the buffer of a block written before, or a new one).
    fn restart(&mut self, mut buf: Vec<u8>) {
        buf.clear();
        buf.reserve(BLOCK_HEADER + BLOCK_TARGET + SLACK);
        buf.extend_from_slice(&[0; BLOCK_HEADER]);
        self.bytes = buf;
        self.count = 0;
    }

    /// Appends one record.
    ///
    /// # Errors
    ///
    /// The key's or value's `Serialize` failed, or one of them (or the block) would pass 4 GiB;
    /// the block is then as it was.
    pub(crate) fn push<K: Serialize, V: Serialize>(
        &mut self,
        key: &K,
        entry: &Entry<V>,
    ) -> io::Result<()> {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(&[0; RECORD_HEADER]);
        let encoded = super::encode_into(&mut self.bytes, key).and_then(|key_len| {
            let value_len = super::encode_into(&mut self.bytes, &*entry.value)?;
            Ok((key_len, value_len))
        });
        let lengths = encoded.and_then(|(key_len, value_len)| {
            let too_large = || io::Error::other("a record too large for a dump (over 4 GiB)");
            u32::try_from(self.bytes.len() - BLOCK_HEADER).map_err(|_| too_large())?;
            Ok((
                u32::try_from(key_len).map_err(|_| too_large())?,
                u32::try_from(value_len).map_err(|_| too_large())?,
            ))
        });
        let (key_len, value_len) = match lengths {
            Ok(lengths) => lengths,
            Err(e) => {
                self.bytes.truncate(start);
                return Err(e);
            }
        };
        let header = &mut self.bytes[start..start + RECORD_HEADER];
        header[..4].copy_from_slice(&key_len.to_le_bytes());
        header[4..8].copy_from_slice(&value_len.to_le_bytes());
        header[8..16].copy_from_slice(&entry.loaded_at.to_le_bytes());
        header[16..].copy_from_slice(&entry.expires_at.to_le_bytes());
        self.count += 1;
        Ok(())
    }

    /// Whether the block should be sealed now (its records pass 1 MiB).
    #[inline]
    pub(crate) fn is_full(&self) -> bool {
        self.bytes.len() >= BLOCK_HEADER + BLOCK_TARGET
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The records pushed so far as a block to write, checksummed; the block starts again,
    /// empty, in `next`.
    pub(crate) fn seal(&mut self, next: Vec<u8>) -> Sealed {
        let mut bytes = std::mem::take(&mut self.bytes);
        let count = self.count;
        self.restart(next);
        // `push` keeps the records under 4 GiB.
        let len = (bytes.len() - BLOCK_HEADER) as u32;
        bytes[..4].copy_from_slice(&len.to_le_bytes());
        bytes[4..BLOCK_HEADER].copy_from_slice(&count.to_le_bytes());
        let mut crc = crc32fast::Hasher::new();
        crc.update(&bytes);
        Sealed { bytes, count, crc }
    }
}

/// A whole block, header and records, with its CRC-32: ready to be written anywhere in a body.
pub(crate) struct Sealed {
    bytes: Vec<u8>,
    count: u32,
    crc: crc32fast::Hasher,
}

impl Sealed {
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub(crate) fn count(&self) -> u64 {
        u64::from(self.count)
    }

    pub(crate) fn crc(&self) -> &crc32fast::Hasher {
        &self.crc
    }

    /// The buffer, for another block.
    pub(crate) fn into_buffer(self) -> Vec<u8> {
        self.bytes
    }
}

/// One record as stored, its key and value still encoded.
pub(super) struct Raw<'a> {
    pub(super) key: &'a [u8],
    pub(super) value: &'a [u8],
    pub(super) loaded_at: u64,
    pub(super) expires_at: u64,
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

/// Walks the blocks of a format-3 body of `body_len` bytes that `window` reads, handing each
/// record to `each` with its index, and checks that they are exactly `count` records filling
/// the body: every block's length and count, and every record's lengths, are checked against
/// the bytes left in the body or the block before the window reads (or grows) for them.
pub(super) fn walk<R: Read>(
    window: &mut Window<R>,
    body_len: u64,
    count: u64,
    mut each: impl FnMut(u64, Raw<'_>) -> Result<(), ReadError>,
) -> Result<(), ReadError> {
    let torn = || corrupt("shorter than its header says");
    let mut left = body_len;
    let mut seen = 0u64;
    let mut block = 0u64;
    while left > 0 {
        if left < BLOCK_HEADER as u64 {
            return Err(corrupt(format!(
                "{left} bytes after the last block, too few for a block header"
            )));
        }
        if !window.fill_to(BLOCK_HEADER)? {
            return Err(torn());
        }
        let head = window.bytes();
        let (len, records) = (u64::from(u32_at(head, 0)), u64::from(u32_at(head, 4)));
        window.consume(BLOCK_HEADER);
        left -= BLOCK_HEADER as u64;
        if len > left {
            return Err(corrupt(format!(
                "block {block} claims {len} bytes of records, {left} are left in the body"
            )));
        }
        if records > count - seen {
            return Err(corrupt(format!(
                "block {block} claims {records} records, past the {count} of the header"
            )));
        }
        let mut in_block = len;
        for _ in 0..records {
            if in_block < RECORD_HEADER as u64 {
                return Err(corrupt(format!(
                    "record {seen} runs past the end of block {block}"
                )));
            }
            if !window.fill_to(RECORD_HEADER)? {
                return Err(torn());
            }
            let head = window.bytes();
            let (key_len, value_len) = (u32_at(head, 0), u32_at(head, 4));
            let (loaded_at, expires_at) = (u64_at(head, 8), u64_at(head, 16));
            let size = RECORD_HEADER as u64 + u64::from(key_len) + u64::from(value_len);
            if size > in_block {
                return Err(corrupt(format!(
                    "record {seen} claims a {key_len}-byte key and a {value_len}-byte value, \
                     {} bytes are left in block {block}",
                    in_block - RECORD_HEADER as u64
                )));
            }
            // At most the block's length, which is under 4 GiB and at most the body's.
            let size = size as usize;
            if !window.fill_to(size)? {
                return Err(torn());
            }
            let bytes = &window.bytes()[RECORD_HEADER..size];
            let (key, value) = bytes.split_at(key_len as usize);
            each(
                seen,
                Raw {
                    key,
                    value,
                    loaded_at,
                    expires_at,
                },
            )?;
            window.consume(size);
            in_block -= size as u64;
            seen += 1;
        }
        if in_block != 0 {
            return Err(corrupt(format!(
                "{in_block} bytes after the last record of block {block}"
            )));
        }
        left -= len;
        block += 1;
    }
    if seen != count {
        return Err(corrupt(format!("{seen} records, the header says {count}")));
    }
    Ok(())
}
