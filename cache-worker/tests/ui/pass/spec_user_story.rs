//! The user story of SPEC §1, as written there, with a stand-in for the upstream API client.

use cache_worker::{cache_worker, CacheWorker};

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Widget { pub name: String, pub price_cents: u32 }

#[cache_worker(bucket = "widgets", file = "widgets.dump", refresh = "15m")]
pub struct WidgetStore { api: ApiClient }

impl CacheWorker for WidgetStore {
    type Key = String;
    type Value = Widget;
    type Error = ApiError;            // any std::error::Error + Send + Sync + 'static

    /// Ok(Some(v)): the value. Ok(None): the key does not exist upstream. Err: a failure.
    async fn load(&self, key: &String) -> Result<Option<Widget>, ApiError> {
        self.api.widget(key).await
    }
}

#[tokio::main]
async fn main() -> Result<(), cache_worker::Error> {
    WidgetStore { api: ApiClient::new() }.start().await?;   // warm start from widgets.dump
    let w = WidgetStore::get(&"w-1".to_string()).await;     // Option<Arc<Widget>>
    let r = WidgetStore::fetch(&"w-2".to_string()).await;   // Result<Arc<Widget>, FetchError>
    WidgetStore::shutdown().await?;                         // stop refreshing, final dump
    let _: Option<std::sync::Arc<Widget>> = w;
    let _: Result<std::sync::Arc<Widget>, cache_worker::FetchError> = r;
    Ok(())
}

pub struct ApiClient;

impl ApiClient {
    fn new() -> Self {
        ApiClient
    }

    async fn widget(&self, id: &str) -> Result<Option<Widget>, ApiError> {
        Ok(Some(Widget { name: id.to_uppercase(), price_cents: 100 }))
    }
}

#[derive(Debug)]
pub struct ApiError;

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the widget API failed")
    }
}

impl std::error::Error for ApiError {}
