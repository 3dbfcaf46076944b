use cache_worker::cache_worker;

#[cache_worker(bucket = "widgets")]
pub async fn widget_store() {}

fn main() {}
