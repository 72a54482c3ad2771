//! raregen: publishes one Bitcoin transaction per publish job, at high volume.
//!
//! See `docs/ARCHITECTURE.md` for a map of the code.

pub mod api;
pub mod chain;
pub mod cli;
pub mod cmd;
pub mod config;
pub mod identity;
pub mod shared_limit;
pub mod store;
pub mod telemetry;
