//! The `#[cache_worker]` attribute of the [`cache-worker`](https://docs.rs/cache-worker) crate.
//!
//! Use it through `cache_worker::cache_worker`; the code it generates calls the hidden
//! `cache_worker::__private` module, whose shape changes with the runtime crate, which is why
//! `cache-worker` pins this crate to one exact version.

mod attr;
mod ctxt;
mod expand;
mod item;

use proc_macro::TokenStream;

/// Makes a struct a cache worker with one process-wide instance.
///
/// ```text
/// #[cache_worker(
///     bucket = "widgets",          // required: the cache's name
///     file = "widgets.dump",       // dump file for warm starts (default: none)
///     refresh = "15m",             // full refresh interval; "off" (or "0s"): none
///     load_timeout = "30s",        // a load that takes longer fails with Timeout (nonzero)
///     concurrency = 16,            // loads at once during a refresh cycle (at least 1)
///     schema = 1,                  // version of the values' layout in dump files (u32)
///     dump_interval = "5s",        // how long changes are batched before a dump is written
///     cache_enabled = true,        // false: every get/fetch loads, nothing is read from the bucket
///     delta_threshold = 10000,     // changes kept for `changes_since` (0: none kept)
///     delta_ttl = "1h",            // how long a change is kept for `changes_since`
///     max_entries = 10000,         // the most entries kept, the others evicted (default: no bound)
///     not_found_ttl = "30s",       // how long a key the loader said does not exist is remembered
///     crate = "::cache_worker",    // the path to cache-worker, if it is re-exported elsewhere
/// )]
/// pub struct WidgetStore { /* the worker's state */ }
/// ```
///
/// - `bucket` is a string literal of ASCII letters, digits, `_` and `-`, not starting with
///   `-`: it becomes part of file names and environment variable names.
/// - Durations are string literals in [humantime](https://docs.rs/humantime) form: `"90s"`,
///   `"15m"`, `"1h"`, `"1h30m"`, `"500ms"`.
/// - Every key but `bucket` is optional; a key left out takes the runtime's default, and the
///   environment and the builder's methods override what the attribute says. The cascade
///   reaches the builder through `T::builder(state)`; `Worker::builder(state)` cannot see the
///   attribute and starts from the defaults.
/// - `bucket` is required here (it names the dump file's contents and the environment
///   variables, so renaming the type must not change it); `Worker::builder` defaults it to the
///   type's name, lower-cased.
/// - The attribute goes on a struct without generic parameters (the process-wide instance is a
///   `static`); for a generic worker, start instances with `Worker::builder(state)`.
///
/// The struct must implement `CacheWorker`. The attribute adds, with the struct's visibility:
///
/// | function | returns |
/// |---|---|
/// | `async start(self)` | `Result<Worker<Self>, Error>`; an error if already running |
/// | `builder(self)` | `Builder<Self>` with the attribute's settings, for another instance |
/// | `async get(&K)` | `Option<Arc<V>>`; loads on a miss |
/// | `async fetch(&K)` | `Result<Arc<V>, FetchError>`; loads on a miss |
/// | `peek(&Q)` | `Option<Arc<V>>`; the bucket only, never loads |
/// | `insert(K, V)` | `Result<(), Error>`; `NotStarted` before the start |
/// | `invalidate(&Q)` | `Option<Arc<V>>`, the removed value |
/// | `keys()` / `len()` | `Vec<K>` / `usize` |
/// | `subscribe()` | `EventStream<K, V>`; made before the start, it waits for it |
/// | `stats()` | `Stats` |
/// | `version()` | `u64`, the bucket's version; 0 before the start |
/// | `changes_since(Option<u64>)` | `Changes<K, V>`; an empty `Full` at version 0 before the start |
/// | `worker()` | `Option<Worker<Self>>`, the running instance's handle |
/// | `async refresh_all()` | `Result<RefreshReport, Error>`, after one full refresh cycle |
/// | `async shutdown()` | `Result<(), Error>`; stops refreshing and writes the final dump |
///
/// Before `start` (and after `shutdown`), `fetch` answers `FetchError::NotStarted`,
/// `insert` and `refresh_all` `Error::NotStarted` (naming the bucket), `get` and `peek` `None`,
/// `keys`, `len` and `stats` an empty bucket, and nothing panics.
#[proc_macro_attribute]
pub fn cache_worker(args: TokenStream, item: TokenStream) -> TokenStream {
    expand::cache_worker(args.into(), item.into()).into()
}
