//! The window a dump's body is decoded through: a buffer over the reader, holding the bytes
//! read and not yet decoded, grown only for one record larger than it.

use std::io::{self, Read};

pub(super) struct Window<R> {
    buf: Vec<u8>,
    /// The first byte not consumed.
    at: usize,
    /// The end of the bytes read.
    filled: usize,
    input: R,
}

impl<R: Read> Window<R> {
    /// A window of `buf.len()` bytes (at least one) over `input`.
    pub(super) fn new(input: R, mut buf: Vec<u8>) -> Self {
        if buf.is_empty() {
            buf.resize(1, 0);
        }
        Window {
            buf,
            at: 0,
            filled: 0,
            input,
        }
    }

    /// The bytes read and not consumed yet.
    #[inline]
    pub(super) fn bytes(&self) -> &[u8] {
        &self.buf[self.at..self.filled]
    }

    /// Drops the first `n` of [`bytes`](Self::bytes).
    #[inline]
    pub(super) fn consume(&mut self, n: usize) {
        debug_assert!(n <= self.filled - self.at);
        self.at += n;
    }

    /// Reads more after what the window holds, growing it if it is full; `false` if the input
    /// has ended.
    pub(super) fn more(&mut self) -> io::Result<bool> {
        self.compact();
        if self.filled == self.buf.len() {
            self.buf.resize(self.buf.len() * 2, 0);
        }
        let n = read_some(&mut self.input, &mut self.buf[self.filled..])?;
        self.filled += n;
        Ok(n > 0)
    }

    /// Reads until the window holds at least `n` bytes, growing it if it is smaller; `false`
    /// if the input ends first. The caller bounds `n` by bytes it knows the input holds.
    #[inline]
    pub(super) fn fill_to(&mut self, n: usize) -> io::Result<bool> {
        if self.filled - self.at >= n {
            return Ok(true);
        }
        self.fill_slowly(n)
    }

    fn fill_slowly(&mut self, n: usize) -> io::Result<bool> {
        if self.buf.len() - self.at < n {
            self.compact();
            if self.buf.len() < n {
                self.buf.resize(n, 0);
            }
        }
        while self.filled - self.at < n {
            let read = read_some(&mut self.input, &mut self.buf[self.filled..])?;
            if read == 0 {
                return Ok(false);
            }
            self.filled += read;
        }
        Ok(true)
    }

    /// How many bytes are left: in the window and in the input after it.
    pub(super) fn rest(&mut self) -> io::Result<u64> {
        let held = (self.filled - self.at) as u64;
        Ok(held + io::copy(&mut self.input, &mut io::sink())?)
    }

    /// Moves the bytes not consumed to the front.
    fn compact(&mut self) {
        if self.at > 0 {
            self.buf.copy_within(self.at..self.filled, 0);
            self.filled -= self.at;
            self.at = 0;
        }
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
