//! `crate = "..."` names the runtime through a re-export, as a framework built on
//! cache-worker would.

mod framework {
    pub use ::cache_worker as engine;
}

use framework::engine::{cache_worker, CacheWorker};

#[cache_worker(bucket = "reexported", crate = "crate::framework::engine")]
pub struct Reexported;

impl CacheWorker for Reexported {
    type Key = u8;
    type Value = u8;
    type Error = std::io::Error;

    async fn load(&self, key: &u8) -> Result<Option<u8>, std::io::Error> {
        Ok(Some(*key))
    }
}

fn main() {
    assert_eq!(Reexported::len(), 0);
}
