//! raregen: publishes one Bitcoin transaction per publish job, at high volume.
//!
//! See `docs/ARCHITECTURE.md` for a map of the code.

pub mod api;
pub mod chain;
pub mod cli;
pub mod config;
pub mod load_test;
pub mod monitor;
pub mod serve;
pub mod shared_limit;
pub mod status;
pub mod store;
pub mod telemetry;
pub mod unstick;
pub mod wallet;
pub mod worker;
