use cache_worker::cache_worker;

#[cache_worker(bucket = "widgets")]
pub union WidgetStore {
    id: u32,
    price: f32,
}

fn main() {}
