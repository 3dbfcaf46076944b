//! A valid dump of arbitrary records, then arbitrary edits (flips, truncation, insertion, lying
//! header fields, lying length prefixes, a resealed checksum): see `cache_worker_fuzz::Input`.
#![no_main]

use cache_worker_fuzz::{Input, run_mutation};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: Input| {
    run_mutation(&input);
});
