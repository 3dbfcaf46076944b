//! Every key of the attribute at once.

use cache_worker::{cache_worker, CacheWorker};

#[cache_worker(
    bucket = "every-key_2",
    file = "every_key.dump",
    refresh = "1h30m",
    load_timeout = "2s",
    concurrency = 4,
    schema = 7,
    dump_interval = "0s",
    cache_enabled = false,
    crate = "::cache_worker",
)]
pub struct EveryKey;

impl CacheWorker for EveryKey {
    type Key = u64;
    type Value = u64;
    type Error = std::io::Error;

    async fn load(&self, key: &u64) -> Result<Option<u64>, std::io::Error> {
        Ok(Some(key * 2))
    }
}

fn main() {
    assert!(EveryKey::worker().is_none());
}
