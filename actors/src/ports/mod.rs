//! The ports: what the actors need from the world, as small traits. [`store`] is
//! Postgres (jobs, the pool, maintenance), with the records it exchanges in
//! [`records`]; [`chain`] is the node and the signer. The `raregen` crate implements
//! them; the fakes in `actors/tests/support/` implement them in memory.

pub mod chain;
pub mod records;
pub mod store;

pub use chain::*;
pub use records::*;
pub use store::*;
