//! raregen's contact with Bitcoin: the wallet key, the transaction builder (signer),
//! and the node clients.

pub mod builder;
pub mod key;
pub mod node;

pub use builder::TxBuilder;
pub use key::{WalletError, WalletKey};
