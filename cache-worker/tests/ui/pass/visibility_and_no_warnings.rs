//! The generated functions take the struct's visibility, carry docs, and add no warnings to
//! a crate that denies them, even when most of them are never called.
#![deny(warnings, missing_docs, unreachable_pub)]

use cache_worker::CacheWorker;

mod workers {
    use cache_worker::{cache_worker, CacheWorker};

    /// A crate-visible worker: a tuple struct.
    #[cache_worker(bucket = "crate_visible")]
    pub(crate) struct CrateVisible(pub(crate) u64);

    impl CacheWorker for CrateVisible {
        type Key = u64;
        type Value = u64;
        type Error = std::io::Error;

        async fn load(&self, key: &u64) -> Result<Option<u64>, std::io::Error> {
            Ok(Some(key + self.0))
        }
    }

    /// A private worker: a unit struct, used only inside this module.
    #[cache_worker(bucket = "private")]
    struct Private;

    impl CacheWorker for Private {
        type Key = String;
        type Value = String;
        type Error = std::io::Error;

        async fn load(&self, key: &String) -> Result<Option<String>, std::io::Error> {
            Ok(Some(key.clone()))
        }
    }

    pub(crate) fn private_len() -> usize {
        Private::len()
    }
}

/// A public worker in the crate root.
#[cache_worker::cache_worker(bucket = "public")]
pub struct Public {
    /// Added to every key.
    pub offset: u64,
}

impl CacheWorker for Public {
    type Key = u64;
    type Value = u64;
    type Error = std::io::Error;

    async fn load(&self, key: &u64) -> Result<Option<u64>, std::io::Error> {
        Ok(Some(key + self.offset))
    }
}

fn main() {
    assert_eq!(workers::CrateVisible::peek(&1), None);
    assert_eq!(workers::private_len(), 0);
    assert!(Public::keys().is_empty());
}
