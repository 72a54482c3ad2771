//! raregen's contact with Bitcoin: the wallet key, the transaction builder (signer),
//! and the node clients.

pub mod builder;
pub mod node;
pub mod wallet;

pub use builder::TxBuilder;
pub use wallet::{WalletError, WalletKey};
