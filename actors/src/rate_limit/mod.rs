//! The one limiter every broadcast goes through: never more than `max` broadcasts in any
//! window of `per`, measured at the node's door. [`window`] is the slot accounting
//! (no actors, no clocks of its own); [`actor`] is the TokenBucket actor around it.

pub mod actor;
pub mod window;

pub use actor::*;
pub use window::*;
