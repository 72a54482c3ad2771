//! What the process tells its operators: logs ([`logs`]) and Prometheus metrics
//! ([`metrics`]).

pub mod logs;
pub mod metrics;

pub use logs::init;
