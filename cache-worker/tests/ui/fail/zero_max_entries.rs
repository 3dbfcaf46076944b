use cache_worker::{cache_worker, CacheWorker};

#[cache_worker(bucket = "widgets", max_entries = 0)]
pub struct WidgetStore;

impl CacheWorker for WidgetStore {
    type Key = String;
    type Value = String;
    type Error = std::io::Error;

    async fn load(&self, key: &String) -> Result<Option<String>, std::io::Error> {
        Ok(Some(key.clone()))
    }
}

fn main() {
    // The glue is still generated, so uses of it add no errors of their own.
    let _ = WidgetStore::peek("w-1");
    let _ = WidgetStore::len();
}
