//! The generated code names everything by absolute paths, so a module that shadows prelude
//! names (`Option`, `Some`, `Result`, `Vec`, `Arc`, `Duration`, ...) does not break it.
#![allow(dead_code, non_camel_case_types)]

use cache_worker::{cache_worker, CacheWorker};

struct Option;
struct Some;
struct None;
struct Result;
struct Vec;
struct Arc;
struct Duration;
struct Hash;
struct Borrow;
struct Eq;
struct Sized;
mod core {}
mod std {}
mod cache_worker_private {}

#[cache_worker(bucket = "shadowed", refresh = "1m", load_timeout = "1s", concurrency = 2)]
pub struct Shadowed;

impl CacheWorker for Shadowed {
    type Key = u8;
    type Value = u8;
    type Error = ::std::io::Error;

    async fn load(&self, key: &u8) -> ::std::result::Result<::std::option::Option<u8>, ::std::io::Error> {
        Ok(::std::option::Option::Some(*key))
    }
}

fn main() {
    assert_eq!(Shadowed::len(), 0);
}
