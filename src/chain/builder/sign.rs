//! Signs a built transaction's one input. Signing follows BIP143 for P2WPKH (the
//! sighash commits to the value of the output being spent) and the legacy algorithm
//! for P2PKH. One ECDSA signature per transaction (RFC 6979 nonces, low-S): nothing
//! else in the builder costs more than a few microseconds.

use bitcoin::ecdsa::Signature;
use bitcoin::hashes::Hash;
use bitcoin::script::{Builder, PushBytesBuf};
use bitcoin::secp256k1::Message;
use bitcoin::sighash::{EcdsaSighashType, SighashCache};
use bitcoin::{Amount, ScriptBuf, Transaction, Witness};
use raregen_actors::SignError;

use super::TxBuilder;
use crate::config::AddressType;

/// Longest DER signature with the sighash flag: r of 33 bytes (high bit set, so
/// padded), s of at most 32 (libsecp256k1 always produces low-S), 6 bytes of DER
/// framing, 1 byte of sighash type.
pub(super) const MAX_SIG_LEN: usize = 72;

impl TxBuilder {
    /// Puts an unlocking script (or witness) with `sig` of the right shape in place.
    pub(super) fn fill_unlock(&self, tx: &mut Transaction, sig: &[u8]) {
        let pk = self.wallet.public_key();
        match self.wallet.address_type() {
            AddressType::P2wpkh => {
                let mut w = Witness::new();
                w.push(sig);
                w.push(pk.to_bytes());
                tx.input[0].witness = w;
                tx.input[0].script_sig = ScriptBuf::new();
            }
            AddressType::P2pkh => {
                let sig = PushBytesBuf::try_from(sig.to_vec()).expect("a signature fits a push");
                tx.input[0].script_sig = Builder::new()
                    .push_slice(sig)
                    .push_slice(pk.to_bytes())
                    .into_script();
                tx.input[0].witness = Witness::new();
            }
        }
    }

    /// Signs the input (an output worth `input_value` sats) and puts the signature in
    /// place.
    pub(super) fn sign(&self, tx: &mut Transaction, input_value: u64) -> Result<(), SignError> {
        let script = self.wallet.script_pubkey();
        let sighash_type = EcdsaSighashType::All;
        let digest: [u8; 32] = {
            let mut cache = SighashCache::new(&*tx);
            match self.wallet.address_type() {
                AddressType::P2wpkh => cache
                    .p2wpkh_signature_hash(0, script, Amount::from_sat(input_value), sighash_type)
                    .map_err(|e| SignError::Invalid(e.to_string()))?
                    .to_byte_array(),
                AddressType::P2pkh => cache
                    .legacy_signature_hash(0, script, sighash_type.to_u32())
                    .map_err(|e| SignError::Invalid(e.to_string()))?
                    .to_byte_array(),
            }
        };
        let signature = self
            .secp
            .sign_ecdsa(&Message::from_digest(digest), self.wallet.secret_key());
        let sig = Signature {
            signature,
            sighash_type,
        };
        self.fill_unlock(tx, &sig.to_vec());
        Ok(())
    }
}
