//! What a dump file holds, read without knowing its key or value type: the header, whether the
//! file is whole and intact, and for format 3 its records' ages, expiries and sizes. What
//! `cache-worker-dump inspect` prints.

use std::fmt;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;

use super::window::Window;
use super::{DecodeError, FORMAT_VERSION, Header, ReadError, WINDOW, block};
use crate::bucket::NEVER;

/// Why a file could not be inspected.
#[derive(Debug)]
pub enum InspectError {
    /// Not a valid dump: not a dump at all, of a format this build does not read, truncated,
    /// or damaged (its checksum or its records' framing).
    Invalid(String),
    /// The file could not be read.
    Io(io::Error),
}

impl fmt::Display for InspectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InspectError::Invalid(why) => write!(f, "not a valid dump: {why}"),
            InspectError::Io(e) => write!(f, "cannot read it: {e}"),
        }
    }
}

impl std::error::Error for InspectError {}

impl From<ReadError> for InspectError {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::Io(e) => InspectError::Io(e),
            ReadError::Decode(DecodeError::Corrupt(why)) => InspectError::Invalid(why),
            // Foreign is an answer to a reader of another bucket; an inspection reads any.
            ReadError::Decode(DecodeError::Foreign { bucket, schema }) => {
                InspectError::Invalid(format!("a dump of bucket {bucket:?} schema {schema}"))
            }
        }
    }
}

/// What a valid dump file holds. Its `Display` is the report `cache-worker-dump inspect`
/// prints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inspection {
    /// The format version: 1, 2 or 3.
    pub format: u32,
    /// The bucket it was written for.
    pub bucket: String,
    /// The schema version it was written with.
    pub schema: u32,
    /// How many entries it holds.
    pub entries: u64,
    /// The bucket's version it was written at, and whether the records are the bucket at
    /// exactly that version; `None` in format 1, which has no version.
    pub version: Option<(u64, bool)>,
    /// The file's length in bytes.
    pub file_bytes: u64,
    /// The body's length in bytes (the records).
    pub body_bytes: u64,
    /// The records in figures; `None` before format 3, whose records cannot be walked
    /// without their types.
    pub figures: Option<Figures>,
}

/// The records of a format-3 dump in figures, at a given time `now`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Figures {
    /// How long before `now` each entry was loaded, in ms (0 for one loaded after `now`);
    /// `None` without entries.
    pub age_ms: Option<Spread>,
    /// How many entries have an expiry (the others never expire).
    pub expiring: u64,
    /// How many of those had expired by `now`.
    pub expired: u64,
    /// How long after `now` each entry that has not expired yet expires, in ms; `None` if
    /// none does.
    pub expires_in_ms: Option<Spread>,
    /// The encoded size of each key, in bytes; `None` without entries.
    pub key_bytes: Option<Spread>,
    /// The encoded size of each value, in bytes; `None` without entries.
    pub value_bytes: Option<Spread>,
}

/// How a figure is spread over the entries: its total and its order statistics (each
/// percentile the smallest figure that many percent of the entries are at or under).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Spread {
    /// The sum over the entries.
    pub total: u128,
    /// The smallest.
    pub min: u64,
    /// The median.
    pub p50: u64,
    /// The 90th percentile.
    pub p90: u64,
    /// The 99th percentile.
    pub p99: u64,
    /// The largest.
    pub max: u64,
}

impl Spread {
    /// The spread of `figures`; `None` if there are none.
    fn of(mut figures: Vec<u64>) -> Option<Spread> {
        figures.sort_unstable();
        let n = figures.len();
        let rank = |percent: usize| figures[(percent * n).div_ceil(100).max(1) - 1];
        Some(Spread {
            total: figures.iter().map(|&f| u128::from(f)).sum(),
            min: *figures.first()?,
            p50: rank(50),
            p90: rank(90),
            p99: rank(99),
            max: *figures.last()?,
        })
    }
}

/// Reads the dump file at `path` whole, without knowing its key or value type: its header,
/// its length and checksum, and (format 3) every record's framing, ages against `now_ms`
/// (ms since the Unix epoch) and sizes.
///
/// # Errors
///
/// [`InspectError::Invalid`] if the file is not a valid dump, [`InspectError::Io`] if it
/// cannot be read.
pub fn inspect(path: &Path, now_ms: u64) -> Result<Inspection, InspectError> {
    let mut file = File::open(path).map_err(InspectError::Io)?;
    let len = file.metadata().map_err(InspectError::Io)?.len();
    Ok(inspect_from(&mut file, len, now_ms)?)
}

/// [`inspect`] of the dump `input` holds from its start, `len` bytes in all.
pub(super) fn inspect_from<R: Read + Seek>(
    input: &mut R,
    len: u64,
    now: u64,
) -> Result<Inspection, ReadError> {
    let (header, start) = Header::open(input, len)?;
    let mut buffer = vec![0u8; WINDOW];
    header.verify(input, &mut buffer)?;
    let figures = if header.format == 3 {
        input.seek(SeekFrom::Start(start))?;
        let mut window = Window::new(input.take(header.body_len), buffer);
        let n = header.presize();
        let (mut ages, mut keys, mut values) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        let (mut expiring, mut expired, mut expires_in) = (0, 0, Vec::new());
        block::walk(&mut window, header.body_len, header.count, |_, record| {
            ages.push(now.saturating_sub(record.loaded_at));
            keys.push(record.key.len() as u64);
            values.push(record.value.len() as u64);
            if record.expires_at != NEVER {
                expiring += 1;
                if record.expires_at <= now {
                    expired += 1;
                } else {
                    expires_in.push(record.expires_at - now);
                }
            }
            Ok(())
        })?;
        Some(Figures {
            age_ms: Spread::of(ages),
            expiring,
            expired,
            expires_in_ms: Spread::of(expires_in),
            key_bytes: Spread::of(keys),
            value_bytes: Spread::of(values),
        })
    } else {
        None
    };
    Ok(Inspection {
        format: header.format,
        bucket: header.bucket,
        schema: header.schema,
        entries: header.count,
        version: header
            .checked_fields
            .map(|_| (header.version.version, header.version.exact)),
        file_bytes: len,
        body_bytes: header.body_len,
        figures,
    })
}

/// A time span for people: milliseconds under a second, else its two largest units of days,
/// hours, minutes and seconds (`2d 3h`, `5m 2s`, `42s`).
pub(super) fn span(ms: u64) -> String {
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let mut left = ms / 1000;
    let mut parts = Vec::new();
    for (unit, secs) in [("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)] {
        let n = left / secs;
        left %= secs;
        if n > 0 || !parts.is_empty() {
            parts.push(format!("{n}{unit}"));
        }
    }
    parts.truncate(2);
    if parts.last().is_some_and(|p| p.starts_with('0')) {
        parts.pop();
    }
    parts.join(" ")
}

/// `min 1s, p50 2s, p90 3s, p99 3s, max 4s`, each figure shown by `show`.
fn order(spread: &Spread, show: impl Fn(u64) -> String) -> String {
    format!(
        "min {}, p50 {}, p90 {}, p99 {}, max {}",
        show(spread.min),
        show(spread.p50),
        show(spread.p90),
        show(spread.p99),
        show(spread.max)
    )
}

fn sizes(f: &mut fmt::Formatter<'_>, what: &str, spread: Option<&Spread>) -> fmt::Result {
    match spread {
        Some(s) => writeln!(
            f,
            "{what:<10}{} bytes in all; {}",
            s.total,
            order(s, |b| format!("{b} B"))
        ),
        None => writeln!(f, "{what:<10}none"),
    }
}

impl fmt::Display for Inspection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{:<10}{}", "format:", self.format)?;
        writeln!(f, "{:<10}{}", "bucket:", self.bucket)?;
        writeln!(f, "{:<10}{}", "schema:", self.schema)?;
        writeln!(f, "{:<10}{}", "entries:", self.entries)?;
        match self.version {
            Some((0, false)) => writeln!(f, "{:<10}0 (no known version)", "version:")?,
            Some((version, true)) => writeln!(
                f,
                "{:<10}{version} (exact: the bucket at that version)",
                "version:"
            )?,
            Some((version, false)) => writeln!(
                f,
                "{:<10}{version} (not exact: the bucket changed while it was written)",
                "version:"
            )?,
            None => writeln!(f, "{:<10}none (format 1 has no version)", "version:")?,
        }
        writeln!(
            f,
            "{:<10}{} bytes, body {} bytes: length and checksum ok",
            "size:", self.file_bytes, self.body_bytes
        )?;
        let Some(figures) = &self.figures else {
            return writeln!(
                f,
                "{:<10}ages, expiries and sizes need format {FORMAT_VERSION}; this dump is format {}",
                "records:", self.format
            );
        };
        match &figures.age_ms {
            Some(ages) => writeln!(f, "{:<10}{}", "ages:", order(ages, span))?,
            None => writeln!(f, "{:<10}no entries", "ages:")?,
        }
        if figures.expiring == 0 {
            writeln!(
                f,
                "{:<10}none of the {} entries expires",
                "expiry:", self.entries
            )?;
        } else {
            write!(
                f,
                "{:<10}{} of {} entries expire; {} had expired",
                "expiry:", figures.expiring, self.entries, figures.expired
            )?;
            match &figures.expires_in_ms {
                Some(rest) => writeln!(f, "; the rest in {}", order(rest, span))?,
                None => writeln!(f)?,
            }
        }
        sizes(f, "keys:", figures.key_bytes.as_ref())?;
        sizes(f, "values:", figures.value_bytes.as_ref())
    }
}
