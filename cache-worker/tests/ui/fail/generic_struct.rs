use cache_worker::{cache_worker, CacheWorker};

#[cache_worker(bucket = "widgets")]
pub struct WidgetStore<C: Send + Sync + 'static> {
    client: C,
}

impl<C: Send + Sync + 'static> CacheWorker for WidgetStore<C> {
    type Key = String;
    type Value = String;
    type Error = std::io::Error;

    async fn load(&self, key: &String) -> Result<Option<String>, std::io::Error> {
        Ok(Some(key.clone()))
    }
}

fn main() {}
