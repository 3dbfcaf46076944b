//! Declarative cache workers: data an application keeps in memory and refreshes in the
//! background, so that every read is answered at once from memory and never waits on the slow
//! upstream system it came from.
//!
//! Implement [`CacheWorker`] (one async `load`), then start it through the
//! [`#[cache_worker]`](macro@cache_worker) attribute (one process-wide instance, reached through
//! associated functions) or through [`Worker::builder`] (as many independent instances as you
//! like). Either way you get:
//!
//! - a concurrent bucket whose reads ([`Worker::peek`]) take no lock shared with other readers;
//! - coalesced loads: concurrent misses of one key share one call of `load`, isolated from
//!   panics and hangs ([`FetchError`]);
//! - a supervised background refresher: full cycles on an interval, per-entry refresh and
//!   expiry from the value, stale-if-error with backoff, and bulk loads swapped in whole;
//! - warm starts from an atomic, checksummed, versioned dump file, or from any
//!   [`store::Store`];
//! - change [`Event`]s, [`Stats`] and `tracing` events with `bucket` and `key` fields;
//! - versions and delta sync: every change gets the next [`Worker::version`], and
//!   [`Worker::changes_since`] tells a client what changed since the version it holds (over
//!   HTTP and Server-Sent Events with the `http` feature);
//! - with the `redis` feature, one bucket shared by several nodes: one polls the upstream,
//!   all read from their own map.
//!
//! ```
//! use std::time::Duration;
//! use cache_worker::{CacheWorker, Worker};
//!
//! struct Prices;
//!
//! impl CacheWorker for Prices {
//!     type Key = String;
//!     type Value = u32;
//!     type Error = std::io::Error;
//!
//!     async fn load(&self, sku: &String) -> Result<Option<u32>, std::io::Error> {
//!         Ok(Some(sku.len() as u32 * 100)) // a slow upstream call in real life
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), cache_worker::Error> {
//! let dir = tempfile::tempdir().unwrap();
//! let prices = Worker::builder(Prices)
//!     .bucket("prices")
//!     .file(dir.path().join("prices.dump"))
//!     .refresh(Duration::from_secs(15 * 60))
//!     .start()
//!     .await?;
//! assert_eq!(*prices.fetch(&"sku-1".to_string()).await.unwrap(), 500);
//! assert_eq!(prices.peek("sku-1").as_deref(), Some(&500));
//! prices.shutdown().await?; // final dump: the next start is warm
//! # Ok(()) }
//! ```
//!
//! # Cargo features
//!
//! | feature | default | what it gives |
//! |---|---|---|
//! | `macros` | yes | the [`#[cache_worker]`](macro@cache_worker) attribute (through `cache-worker-derive`) |
//! | `vista` | no | the [`vista`] module: a client for the Vista Connect cinema API, its models, and the `Sessions`, `Cinemas` and `Films` workers over it (pulls in `reqwest` with `rustls`, and `jiff`, re-exported as `vista::jiff`) |
//! | `http` | no | the [`http`] module: [`http::router`], an `axum` router that serves a bucket's delta sync as JSON (`GET /?since=V`, with merge patches) and its changes as Server-Sent Events (`GET /events`), to nest in an application (pulls in `axum` and `serde_json`) |
//! | `redis` | no | the [`redis`] module: [`redis::RedisStore`], a bucket shared by several nodes through Redis or Valkey (one leader refreshes, every node reads its own map; pulls in `redis` with `rustls`) |
//! | `metrics` | no | every counter of [`Stats`], the entry count, loader-call, refresh-cycle and dump-write durations and the dump file's size, labelled `bucket`, through the [`metrics`](https://docs.rs/metrics) facade, so any exporter works (series listed in the README); reads never call the recorder: a task per worker publishes every second, and [`Worker::publish_metrics`] on demand (pulls in `metrics`) |
//! | `vista-testing` | no | `vista::testing`: a fake Vista server on loopback with a recorded feed, for tests and demos (implies `vista`, pulls in `axum`) |
//!
//! Without `macros`, [`Worker::builder`] is the whole API, and the proc-macro crate (with `syn`)
//! is not built.
//!
//! # Panics in `load`
//!
//! A panicking [`CacheWorker::load`] fails that load ([`FetchError`]) and leaves the worker
//! running, but the panic still goes through the process's panic hook first, so by default its
//! message (and, with `RUST_BACKTRACE=1`, a backtrace) is printed on stderr. The crate does not
//! replace the hook, which belongs to the application; the doc of [`CacheWorker::load`] shows
//! one that sends panics to `tracing` instead.

// docs.rs builds with `--cfg docsrs` on nightly (see `[package.metadata.docs.rs]`), where
// `doc_cfg` puts a "feature = ..." badge on each feature-gated item.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod bound;
mod bucket;
mod clock;
mod codec;
mod config;
mod dump;
mod error;
mod events;
mod handle;
mod inner;
mod load;
#[cfg(feature = "metrics")]
mod metrics;
mod prefetch;
mod refresh;
mod slot;
mod start;
mod stats;
pub mod store;
mod versions;
mod worker;

#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub mod http;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod redis;
#[cfg(feature = "vista")]
#[cfg_attr(docsrs, doc(cfg(feature = "vista")))]
pub mod vista;

pub use config::Settings;
pub use error::{Error, FetchError};
pub use events::{Event, EventStream, RemovalCause};
pub use handle::{Builder, Fetched, Worker};
pub use refresh::RefreshReport;
pub use start::{ColdStart, StartKind};
pub use stats::Stats;
pub use versions::{Change, Changes};
pub use worker::{CacheWorker, Entries, SeedError};

#[cfg(feature = "macros")]
#[cfg_attr(docsrs, doc(cfg(feature = "macros")))]
pub use cache_worker_derive::cache_worker;

/// What the code that `#[cache_worker]` generates calls. Not a public API: it may change in
/// any release, which is why `cache-worker` pins `cache-worker-derive` exactly.
#[doc(hidden)]
pub mod __private {
    pub use crate::config::Attributes;
    pub use crate::slot::Slot;
    pub use crate::{
        Builder, CacheWorker, Changes, Error, EventStream, FetchError, RefreshReport, Stats, Worker,
    };
    pub use std::borrow::Borrow;
    pub use std::future::Future;
    pub use std::hash::Hash;
    pub use std::option::Option::{self, None, Some};
    pub use std::result::Result;
    pub use std::sync::Arc;
    pub use std::time::Duration;
    pub use std::vec::Vec;
}

/// The dump codec on its own, for the fuzz target and the hostile-dump tests. Not a public API:
/// it may change in any release.
#[doc(hidden)]
pub use codec::exposed as __codec;

/// The Redis tier's byte-level protocol, for its tests. Not a public API: it may change in any
/// release.
#[cfg(feature = "redis")]
#[doc(hidden)]
pub use redis::protocol as __redis_protocol;

/// The README's examples, compiled as doctests so that they cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
