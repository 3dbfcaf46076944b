//! Arbitrary bytes decoded as a dump of `sessions` / schema 7 holding `Session` values: never a
//! panic, never a huge allocation, and always the answer the header calls for (`model::check`).
#![no_main]

use cache_worker_fuzz::model;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let decoded = model::decode(data);
    model::check(data, &decoded);
});
