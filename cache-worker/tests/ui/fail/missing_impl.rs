use cache_worker::cache_worker;

// The attribute without `impl CacheWorker for WidgetStore`: the error says so at the struct.
// (Calls such as `WidgetStore::get(..)` would each add an E0599 with the same message.)
#[cache_worker(bucket = "widgets", refresh = "15m")]
pub struct WidgetStore {
    endpoint: String,
}

fn main() {}
