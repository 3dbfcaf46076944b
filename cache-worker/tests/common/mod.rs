//! The scaffolding of the behaviour tests, written once for every test file: a scripted
//! upstream whose calls a test can count and hold ([`upstream`], [`hold`]), workers started over
//! it ([`started`]), bounded waits ([`wait`]), events ([`events`]), dump files ([`files`]), the
//! randomized tests' generator ([`random`]), with the `http` feature a server, an SSE reader
//! and a client's JSON copy of a bucket ([`http`]), with the `redis` feature a real
//! `redis-server` to start, kill, pause and restart ([`redis`]) and nodes of one bucket over
//! it ([`cluster`]) and, with the `vista-testing` feature, the fake Vista server's workers
//! ([`vista`], [`outage`]).
//!
//! Each test binary compiles all of it and uses a part of it.
#![allow(dead_code, unreachable_pub, unused_imports)]

#[cfg(feature = "redis")]
pub mod cluster;
pub mod events;
pub mod files;
pub mod hold;
#[cfg(feature = "http")]
pub mod http;
#[cfg(feature = "vista-testing")]
pub mod outage;
pub mod random;
#[cfg(feature = "redis")]
pub mod redis;
pub mod started;
pub mod upstream;
#[cfg(feature = "vista-testing")]
pub mod vista;
pub mod wait;

pub use events::{Replica, consecutive, drain, drain_within, replayed};
pub use files::{
    HOUR, corrupt_path, dumping, listing, now_ms, on_disk, started_on, temp_dump, temp_files,
    temp_folder, write_dump,
};
pub use hold::{Hold, Holds};
pub use random::{Problems, Rng, handed_out, long_run};
pub use started::{builder, contents, map, spawn_fetch, spawn_refresh_all, started, started_with};
pub use upstream::{Collection, Nothing, Reply, Seed, SeedFailure, Upstream, UpstreamError, key};
pub use wait::{POLL, Timeline, eventually, eventually_within, poll_once, settle, until, within};
