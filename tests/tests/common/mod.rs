//! The scaffolding of the multi-process tests (`tests/cluster.rs`), written once: a [`Cluster`]
//! of `cluster-node` processes ([`node`]) over a fake Vista and a real `redis-server` (the
//! harness of cache-worker's own tests, [`redis`], included as it is), with a reader that
//! GETs `/sessions` from every node that is up all along ([`reader`]); a test's checks gathered ([`verdict`]).
//!
//! Each test binary compiles all of it and uses a part of it.
#![allow(dead_code, unreachable_pub, unused_imports)]

mod cluster;
mod node;
mod reader;
#[path = "../../../cache-worker/tests/common/redis.rs"]
pub mod redis;
mod verdict;

pub use cluster::{BUCKETS, BucketStatus, Cluster, ClusterBuilder, Snapshot, Status};
pub use reader::Reads;
pub use verdict::Verdict;
