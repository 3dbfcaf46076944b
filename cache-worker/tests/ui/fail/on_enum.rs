use cache_worker::cache_worker;

#[cache_worker(bucket = "widgets")]
pub enum WidgetStore {
    Live,
    Offline,
}

fn main() {}
