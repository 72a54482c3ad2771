//! The wallet key: one private key whose address receives the pool's funds and change.

use std::fmt;

use bitcoin::secp256k1::{All, Secp256k1};
use bitcoin::{Address, CompressedPublicKey, NetworkKind, PrivateKey, ScriptBuf};
use secrecy::{ExposeSecret, SecretString};

use crate::config::{AddressType, Network, Settings};

#[derive(Debug, thiserror::Error)]
pub enum WalletError {
    #[error("no wallet key: set RAREGEN_WALLET_KEY or chain.wallet_key_file")]
    Missing,
    #[error("the wallet key is not a valid WIF private key")]
    NotWif,
    #[error("the wallet key is for {key} but chain.network is {configured:?}")]
    WrongNetwork {
        key: &'static str,
        configured: Network,
    },
    #[error("the wallet key must be a compressed key (WIF starting with K, L or c)")]
    Uncompressed,
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
}

impl Network {
    pub fn to_bitcoin(self) -> bitcoin::Network {
        match self {
            Network::Bitcoin => bitcoin::Network::Bitcoin,
            Network::Testnet => bitcoin::Network::Testnet,
            Network::Signet => bitcoin::Network::Signet,
            Network::Regtest => bitcoin::Network::Regtest,
        }
    }
}

/// The pool's key. It cannot be printed: `Debug` and `Display` show only the address.
pub struct WalletKey {
    key: PrivateKey,
    public: CompressedPublicKey,
    network: bitcoin::Network,
    address_type: AddressType,
    script_pubkey: ScriptBuf,
}

impl fmt::Debug for WalletKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WalletKey({}, key redacted)", self.address())
    }
}

impl fmt::Display for WalletKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "wallet {}", self.address())
    }
}

impl WalletKey {
    /// Loads the key named by the settings (`RAREGEN_WALLET_KEY` or the key file).
    pub fn from_settings(settings: &Settings) -> Result<WalletKey, WalletError> {
        let wif = settings.wallet_key()?.ok_or(WalletError::Missing)?;
        Self::from_wif(&wif, settings.chain.network, settings.chain.address_type)
    }

    /// Parses a WIF key and checks it against the network.
    pub fn from_wif(
        wif: &SecretString,
        network: Network,
        address_type: AddressType,
    ) -> Result<WalletKey, WalletError> {
        // The parse error could quote the key: it is replaced by our own.
        let key = PrivateKey::from_wif(wif.expose_secret()).map_err(|_| WalletError::NotWif)?;
        let expected = NetworkKind::from(network.to_bitcoin());
        if key.network != expected {
            return Err(WalletError::WrongNetwork {
                key: if key.network.is_mainnet() {
                    "mainnet"
                } else {
                    "a test network"
                },
                configured: network,
            });
        }
        if !key.compressed {
            return Err(WalletError::Uncompressed);
        }
        let secp = Secp256k1::new();
        let public = CompressedPublicKey::from_private_key(&secp, &key)
            .map_err(|_| WalletError::Uncompressed)?;
        let script_pubkey = match address_type {
            AddressType::P2wpkh => ScriptBuf::new_p2wpkh(&public.wpubkey_hash()),
            AddressType::P2pkh => ScriptBuf::new_p2pkh(&public.pubkey_hash()),
        };
        Ok(WalletKey {
            key,
            public,
            network: network.to_bitcoin(),
            address_type,
            script_pubkey,
        })
    }

    /// A fresh random key for `network` (throwaway wallets: tests, the demo). The WIF is
    /// returned as a secret for the caller to keep.
    pub fn generate(network: Network, address_type: AddressType) -> (WalletKey, SecretString) {
        let secret = loop {
            // Almost every 32 random bytes are a valid key (below the curve order).
            if let Ok(k) = bitcoin::secp256k1::SecretKey::from_slice(&rand::random::<[u8; 32]>()) {
                break k;
            }
        };
        let key = PrivateKey::new(secret, network.to_bitcoin());
        let wif = SecretString::from(key.to_wif());
        let wallet = Self::from_wif(&wif, network, address_type).expect("a generated key is valid");
        (wallet, wif)
    }

    /// The pool's receive address.
    pub fn address(&self) -> Address {
        match self.address_type {
            AddressType::P2wpkh => Address::p2wpkh(&self.public, self.network),
            AddressType::P2pkh => Address::p2pkh(self.public.pubkey_hash(), self.network),
        }
    }

    /// The pool's output script (what every pool UTXO pays to).
    pub fn script_pubkey(&self) -> &ScriptBuf {
        &self.script_pubkey
    }

    pub fn address_type(&self) -> AddressType {
        self.address_type
    }

    pub fn network(&self) -> bitcoin::Network {
        self.network
    }

    pub(crate) fn secret_key(&self) -> &bitcoin::secp256k1::SecretKey {
        &self.key.inner
    }

    pub(crate) fn public_key(&self) -> &CompressedPublicKey {
        &self.public
    }

    pub(crate) fn secp() -> Secp256k1<All> {
        Secp256k1::new()
    }
}

/// bcoin writes regtest addresses with other prefixes than Bitcoin Core (bech32 `rb`,
/// P2PKH version 0x3c): `script` written the way bcoin's `generatetoaddress` reads it.
/// `None` for a script that is neither P2WPKH nor P2PKH.
pub fn bcoin_regtest_address(script: &bitcoin::Script) -> Option<String> {
    use bitcoin::bech32::{self, Fe32, Hrp};
    let bytes = script.as_bytes();
    if script.is_p2wpkh() {
        bech32::segwit::encode(Hrp::parse("rb").ok()?, Fe32::Q, &bytes[2..]).ok()
    } else if script.is_p2pkh() {
        let mut payload = vec![0x3c];
        payload.extend_from_slice(&bytes[3..23]);
        Some(bitcoin::base58::encode_check(&payload))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Well-known test vectors (private keys of 1 and of the BIP143 example, as WIF).
    const REGTEST_WIF: &str = "cMahea7zqjxrtgAbB7LSGbcQUr1uX1ojuat9jZodMN87JcbXMTcA";
    const MAINNET_WIF: &str = "KwDiBf89QgGbjEhKnhXJuH7LrciVrZi3qYjgd9M7rFU73sVHnoWn";

    fn secret(s: &str) -> SecretString {
        SecretString::from(s.to_owned())
    }

    #[test]
    fn addresses_for_both_types() {
        let w = WalletKey::from_wif(&secret(REGTEST_WIF), Network::Regtest, AddressType::P2wpkh)
            .unwrap();
        assert!(
            w.address().to_string().starts_with("bcrt1q"),
            "{}",
            w.address()
        );
        assert!(w.script_pubkey().is_p2wpkh());
        let w = WalletKey::from_wif(&secret(REGTEST_WIF), Network::Regtest, AddressType::P2pkh)
            .unwrap();
        let a = w.address().to_string();
        assert!(a.starts_with('m') || a.starts_with('n'), "{a}");
        assert!(w.script_pubkey().is_p2pkh());
        let w = WalletKey::from_wif(&secret(MAINNET_WIF), Network::Bitcoin, AddressType::P2wpkh)
            .unwrap();
        assert_eq!(
            w.address().to_string(),
            "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4"
        );
    }

    #[test]
    fn key_checked_against_the_network() {
        let err = WalletKey::from_wif(&secret(MAINNET_WIF), Network::Regtest, AddressType::P2wpkh)
            .unwrap_err();
        assert!(matches!(err, WalletError::WrongNetwork { .. }), "{err}");
        let err = WalletKey::from_wif(&secret(REGTEST_WIF), Network::Bitcoin, AddressType::P2wpkh)
            .unwrap_err();
        assert!(matches!(err, WalletError::WrongNetwork { .. }), "{err}");
        // Uncompressed key (WIF starting with 5).
        let err = WalletKey::from_wif(
            &secret("5HueCGU8rMjxEXxiPuD5BDku4MkFqeZyd4dZ1jvhTVqvbTLvyTJ"),
            Network::Bitcoin,
            AddressType::P2pkh,
        )
        .unwrap_err();
        assert!(matches!(err, WalletError::Uncompressed), "{err}");
    }

    #[test]
    fn the_key_never_shows_in_errors_or_formatting() {
        let garbled = format!("{}x", &REGTEST_WIF[..REGTEST_WIF.len() - 1]);
        let err = WalletKey::from_wif(&secret(&garbled), Network::Regtest, AddressType::P2wpkh)
            .unwrap_err();
        assert!(!err.to_string().contains(&garbled[..20]), "{err}");
        let w = WalletKey::from_wif(&secret(REGTEST_WIF), Network::Regtest, AddressType::P2wpkh)
            .unwrap();
        for shown in [format!("{w:?}"), format!("{w}"), format!("{w:#?}")] {
            assert!(!shown.contains(&REGTEST_WIF[..20]), "{shown}");
            assert!(shown.contains(&w.address().to_string()));
        }
        let (generated, wif) = WalletKey::generate(Network::Regtest, AddressType::P2wpkh);
        assert!(!format!("{generated:?}").contains(wif.expose_secret()));
    }
}
