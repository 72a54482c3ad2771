//! The end-to-end suites, in one binary so that it links once: each starts a real
//! bcoin regtest node (scripts/regtest-node), funds a wallet and runs `raregen serve`
//! against a fresh database, through the harness in `tests/support/` (node, funded
//! wallet, daemon, proxy). They run one at a time (the `e2e` test group of
//! `.config/nextest.toml`). One suite: `scripts/test -E 'binary(e2e) & test(/^crash::/)'`.

#[path = "../support/mod.rs"]
mod support;

mod chain;
mod crash;
mod operations;
mod pipeline;
mod postgres_restart;
mod wallet_cli;
