//! Message-level tests of every actor, one module per actor, on the in-memory fakes of
//! `support/` (no Postgres, no node): `cargo test -p raregen-actors`. What needs the
//! real database or a real node is tested in the `raregen` crate's `tests/`.

#[path = "../support/mod.rs"]
mod support;

mod batch;
mod broadcaster;
mod collector;
mod confirmation_watcher;
mod dirty_settler;
mod leaser;
mod pruner;
mod recorder;
mod rescuer;
mod token_bucket;
mod utxo_pool;
