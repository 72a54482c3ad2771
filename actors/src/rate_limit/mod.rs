//! The one limiter every broadcast goes through: never more than `max` broadcasts in any
//! window of `per`, measured at the node's door. [`window`] is the slot accounting
//! (no actors, no clocks of its own); [`actor`] is the TokenBucket actor around it; [`grant`] is how a broadcast takes a
//! slot from it and gives it back.

pub mod actor;
pub mod grant;
pub mod window;

pub use actor::*;
pub use grant::*;
pub use window::*;
