//! Runnable examples live beside this crate: `cargo run --example <name>`. The library holds
//! what an example serves and a test drives: [`live`], the live page of the Vista demo, and
//! [`prometheus`], its `/metrics`.

pub mod live;
pub mod prometheus;
