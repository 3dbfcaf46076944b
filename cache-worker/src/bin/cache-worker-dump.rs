//! `cache-worker-dump`: looks into a cache-worker dump file without the worker's key and value
//! types (feature `cli`).
//!
//! ```text
//! cache-worker-dump inspect FILE
//! ```
//!
//! Exit status: 0 for a valid dump, 1 for a file that is not one (truncated, damaged, not a
//! dump, or of an unknown format; the reason on standard error), 2 for a usage or I/O error.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use cache_worker::__codec::{InspectError, inspect};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cache-worker-dump", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Prints a dump's header (format, bucket, schema, entries, version), checks its length and
    /// checksum and, for format 3, sums up its records: entry ages, expiries, key and value
    /// sizes.
    Inspect {
        /// The dump file.
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    // A usage error exits with 2, `--help` and `--version` with 0.
    let Command::Inspect { file } = Cli::parse().command;
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64);
    match inspect(&file, now_ms) {
        Ok(inspection) => {
            println!("{}: a valid cache-worker dump", file.display());
            print!("{inspection}");
            ExitCode::SUCCESS
        }
        Err(e @ InspectError::Invalid(_)) => {
            eprintln!("cache-worker-dump: {}: {e}", file.display());
            ExitCode::from(1)
        }
        Err(e @ InspectError::Io(_)) => {
            eprintln!("cache-worker-dump: {}: {e}", file.display());
            ExitCode::from(2)
        }
    }
}
