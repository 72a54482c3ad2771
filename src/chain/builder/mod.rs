//! Builds raregen's two kinds of transaction with rust-bitcoin, and prices them:
//!
//! - publish: one pool UTXO in; out: `OP_RETURN <payload>` and change to the pool;
//! - split: one pool UTXO in; out: N equal pool outputs and change.
//!
//! The fee is the transaction's real virtual size × `chain.fee_rate` (rounded up).
//! Change under the dust limit is left to the fee. The signature is made in `sign.rs`.

mod sign;

use std::str::FromStr;

use bitcoin::absolute::LockTime;
use bitcoin::script::PushBytesBuf;
use bitcoin::secp256k1::{All, Secp256k1};
use bitcoin::transaction::Version;
use bitcoin::{Amount, OutPoint, ScriptBuf, Sequence, Transaction, TxIn, TxOut, Txid, Witness};
use raregen_actors::{SignError, SignedTx, Signer, SpendableUtxo};

use super::key::WalletKey;
use sign::MAX_SIG_LEN;

/// Most outputs in one split transaction.
pub const MAX_SPLIT_OUTPUTS: u32 = 2_000;

pub struct TxBuilder {
    wallet: WalletKey,
    secp: Secp256k1<All>,
    fee_rate: f64,
    max_payload: usize,
    dust: u64,
}

impl TxBuilder {
    pub fn new(wallet: WalletKey, fee_rate: f64, max_payload: usize) -> TxBuilder {
        let dust = wallet.script_pubkey().minimal_non_dust().to_sat();
        TxBuilder {
            wallet,
            secp: WalletKey::secp(),
            fee_rate,
            max_payload,
            dust,
        }
    }

    pub fn wallet(&self) -> &WalletKey {
        &self.wallet
    }

    /// The smallest pool output the node relays (the dust limit of the pool script).
    pub fn dust_limit(&self) -> u64 {
        self.dust
    }

    /// A publish transaction: `OP_RETURN <payload>` and change.
    pub fn build_publish(
        &self,
        utxo: &SpendableUtxo,
        payload: &[u8],
    ) -> Result<SignedTx, SignError> {
        self.build_replacement(utxo, payload, 0)
    }

    /// A publish transaction that replaces `replacing` earlier ones of the same job
    /// (same input): its fee rate is `fee_rate × (1 + n) + n` sat/vB, so each step pays
    /// at least `fee_rate + 1` sat/vB more than the one before (BIP125's rule 4 with
    /// the default incremental relay fee of 1 sat/vB).
    pub fn build_replacement(
        &self,
        utxo: &SpendableUtxo,
        payload: &[u8],
        replacing: u32,
    ) -> Result<SignedTx, SignError> {
        if payload.len() > self.max_payload {
            return Err(SignError::PayloadTooLarge {
                len: payload.len(),
                max: self.max_payload,
            });
        }
        let data =
            PushBytesBuf::try_from(payload.to_vec()).map_err(|_| SignError::PayloadTooLarge {
                len: payload.len(),
                max: self.max_payload,
            })?;
        let outputs = vec![TxOut {
            value: Amount::ZERO,
            script_pubkey: ScriptBuf::new_op_return(data),
        }];
        let n = f64::from(replacing.min(1_000));
        self.build(utxo, outputs, self.fee_rate * (1.0 + n) + n)
    }

    /// A split transaction: `outputs` pool outputs of `amount` sats each, and change.
    pub fn build_split(
        &self,
        utxo: &SpendableUtxo,
        outputs: u32,
        amount: u64,
    ) -> Result<SignedTx, SignError> {
        if outputs == 0 || outputs > MAX_SPLIT_OUTPUTS {
            return Err(SignError::Invalid(format!(
                "a split makes 1 to {MAX_SPLIT_OUTPUTS} outputs, not {outputs}"
            )));
        }
        if amount < self.dust {
            return Err(SignError::Invalid(format!(
                "{amount} sats per output is under the dust limit ({} sats)",
                self.dust
            )));
        }
        let out = TxOut {
            value: Amount::from_sat(amount),
            script_pubkey: self.wallet.script_pubkey().clone(),
        };
        self.build(utxo, vec![out; outputs as usize], self.fee_rate)
    }

    /// Adds the change output, works out the fee from the signed size, and signs.
    fn build(
        &self,
        utxo: &SpendableUtxo,
        fixed: Vec<TxOut>,
        fee_rate: f64,
    ) -> Result<SignedTx, SignError> {
        let txid = Txid::from_str(&utxo.txid)
            .map_err(|_| SignError::Invalid(format!("{:?} is not a txid", utxo.txid)))?;
        let spent = fixed.iter().map(|o| o.value.to_sat()).sum::<u64>();
        let mut tx = Transaction {
            version: Version::TWO,
            lock_time: LockTime::ZERO,
            input: vec![TxIn {
                previous_output: OutPoint {
                    txid,
                    vout: utxo.vout,
                },
                script_sig: ScriptBuf::new(),
                sequence: Sequence::ENABLE_RBF_NO_LOCKTIME,
                witness: Witness::new(),
            }],
            output: fixed,
        };
        tx.output.push(TxOut {
            value: Amount::ZERO,
            script_pubkey: self.wallet.script_pubkey().clone(),
        });
        let change_vout = tx.output.len() - 1;

        // The size is priced with the largest signature the signer can produce, so one
        // signature suffices: the fee is the real vsize × rate when the signature has
        // its full length, and a vbyte more when it comes out a byte shorter (half the
        // time for P2PKH, an eighth for P2WPKH, whose witness bytes weigh a quarter);
        // two or three vbytes more in rare cases. Signing again to save those sats would
        // double the cost of every transaction.
        self.fill_unlock(&mut tx, &[0u8; MAX_SIG_LEN]);
        let mut priced = tx.vsize() as u64;
        let need = spent + fee_for(priced, fee_rate);
        if utxo.satoshis < need {
            return Err(SignError::InsufficientFunds {
                have: utxo.satoshis,
                need,
            });
        }
        let mut change = utxo.satoshis - need;
        if change < self.dust {
            // Dust change would not relay: leave it to the fee.
            tx.output.pop();
            self.fill_unlock(&mut tx, &[0u8; MAX_SIG_LEN]);
            priced = tx.vsize() as u64;
            let need = spent + fee_for(priced, fee_rate);
            if utxo.satoshis < need {
                return Err(SignError::InsufficientFunds {
                    have: utxo.satoshis,
                    need,
                });
            }
            change = 0;
        }
        let with_change = tx.output.len() > change_vout;
        if with_change {
            tx.output[change_vout].value = Amount::from_sat(change);
        }
        self.sign(&mut tx, utxo.satoshis)?;
        let raw_tx = bitcoin::consensus::encode::serialize(&tx);
        Ok(SignedTx {
            txid: tx.compute_txid().to_string(),
            raw_tx,
            fee: utxo.satoshis - spent - change,
            vsize: tx.vsize() as u64,
            change: with_change.then_some((change_vout as u32, change)),
        })
    }
}

fn fee_for(vsize: u64, fee_rate: f64) -> u64 {
    (vsize as f64 * fee_rate).ceil() as u64
}

impl Signer for TxBuilder {
    fn publish(
        &self,
        utxo: &SpendableUtxo,
        payload: &[u8],
        replacing: u32,
    ) -> Result<SignedTx, SignError> {
        self.build_replacement(utxo, payload, replacing)
    }

    fn split(
        &self,
        utxo: &SpendableUtxo,
        outputs: u32,
        amount: u64,
    ) -> Result<SignedTx, SignError> {
        self.build_split(utxo, outputs, amount)
    }

    fn dust_limit(&self) -> u64 {
        self.dust
    }

    fn change_of(&self, raw_tx: &[u8]) -> Option<(u32, u64)> {
        let tx: Transaction = bitcoin::consensus::encode::deserialize(raw_tx).ok()?;
        tx.output
            .iter()
            .enumerate()
            .rev()
            .find(|(_, o)| &o.script_pubkey == self.wallet.script_pubkey())
            .map(|(i, o)| (i as u32, o.value.to_sat()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AddressType, Network};
    use bitcoin::consensus::encode::deserialize;
    use bitcoin::hashes::Hash;
    use bitcoin::secp256k1::{ecdsa, Message};
    use bitcoin::sighash::{EcdsaSighashType, SighashCache};

    fn builder(address_type: AddressType, fee_rate: f64) -> TxBuilder {
        let (wallet, _) = WalletKey::generate(Network::Regtest, address_type);
        TxBuilder::new(wallet, fee_rate, 80)
    }

    fn utxo(sats: u64) -> SpendableUtxo {
        SpendableUtxo {
            id: 1,
            txid: "a".repeat(64),
            vout: 3,
            satoshis: sats,
            unconfirmed_depth: 0,
        }
    }

    /// The fee is the real vsize × rate, or a little more when the signature came out
    /// shorter than the longest possible one (a byte in half the cases, more in a few
    /// hundredths).
    fn assert_fee(fee: u64, vsize: u64, rate: f64) {
        let exact = (vsize as f64 * rate).ceil() as u64;
        let four_more = ((vsize + 4) as f64 * rate).ceil() as u64;
        assert!(
            fee >= exact && fee <= four_more,
            "fee {fee} for {vsize} vB at {rate}"
        );
    }

    #[test]
    fn the_fee_covers_every_signature_length() {
        // Thousands of payloads: every length of signature turns up.
        for address_type in [AddressType::P2pkh, AddressType::P2wpkh] {
            let b = builder(address_type, 1.0);
            let mut exact = 0;
            for n in 0u32..3000 {
                let signed = b.build_publish(&utxo(2_000), &n.to_le_bytes()).unwrap();
                let tx: Transaction = deserialize(&signed.raw_tx).unwrap();
                assert_fee(signed.fee, tx.vsize() as u64, 1.0);
                assert_eq!(signed.fee + signed.change.unwrap().1, 2_000);
                exact += u32::from(signed.fee == tx.vsize() as u64);
            }
            // About half of all signatures are a byte short of the longest: that costs
            // a vbyte every time for P2PKH, one time in four for P2WPKH.
            let least = if address_type == AddressType::P2wpkh {
                2400
            } else {
                1300
            };
            assert!(exact >= least, "{exact} of 3000 exact");
        }
    }

    /// Checks the signature against the sighash, as a node would.
    fn verify(b: &TxBuilder, raw: &[u8], value: u64) {
        let tx: Transaction = deserialize(raw).unwrap();
        let script = b.wallet.script_pubkey();
        let mut cache = SighashCache::new(&tx);
        let (sig_bytes, digest) = match b.wallet.address_type() {
            AddressType::P2wpkh => {
                let sig = tx.input[0].witness.nth(0).unwrap().to_vec();
                let h = cache
                    .p2wpkh_signature_hash(
                        0,
                        script,
                        Amount::from_sat(value),
                        EcdsaSighashType::All,
                    )
                    .unwrap();
                (sig, h.to_byte_array())
            }
            AddressType::P2pkh => {
                let push = tx.input[0]
                    .script_sig
                    .instructions()
                    .next()
                    .unwrap()
                    .unwrap();
                let sig = push.push_bytes().unwrap().as_bytes().to_vec();
                let h = cache.legacy_signature_hash(0, script, 1).unwrap();
                (sig, h.to_byte_array())
            }
        };
        assert_eq!(*sig_bytes.last().unwrap(), 0x01, "SIGHASH_ALL");
        let sig = ecdsa::Signature::from_der(&sig_bytes[..sig_bytes.len() - 1]).unwrap();
        b.secp
            .verify_ecdsa(
                &Message::from_digest(digest),
                &sig,
                &b.wallet.public_key().0,
            )
            .expect("the signature verifies");
    }

    #[test]
    fn publish_has_op_return_and_change_and_pays_the_real_vsize() {
        for address_type in [AddressType::P2wpkh, AddressType::P2pkh] {
            for fee_rate in [1.0, 2.0, 3.7] {
                let b = builder(address_type, fee_rate);
                let payload = b"raregen publishes this";
                let signed = b.build_publish(&utxo(100_000), payload).unwrap();
                let tx: Transaction = deserialize(&signed.raw_tx).unwrap();
                assert_eq!(tx.compute_txid().to_string(), signed.txid);
                assert_eq!(tx.input.len(), 1);
                assert_eq!(tx.output.len(), 2);
                assert!(tx.output[0].script_pubkey.is_op_return());
                assert_eq!(tx.output[0].value, Amount::ZERO);
                let pushed: Vec<u8> = tx.output[0]
                    .script_pubkey
                    .instructions()
                    .nth(1)
                    .unwrap()
                    .unwrap()
                    .push_bytes()
                    .unwrap()
                    .as_bytes()
                    .to_vec();
                assert_eq!(pushed, payload);
                assert_eq!(&tx.output[1].script_pubkey, b.wallet.script_pubkey());
                assert_eq!(signed.change, Some((1, tx.output[1].value.to_sat())));
                assert_eq!(signed.vsize, tx.vsize() as u64);
                assert_fee(signed.fee, tx.vsize() as u64, fee_rate);
                assert_eq!(100_000 - tx.output[1].value.to_sat(), signed.fee);
                verify(&b, &signed.raw_tx, 100_000);
            }
        }
    }

    /// A job's replacements spend the same input and each pays more than the one
    /// before by at least 1 sat/vB (BIP125 rule 4), and signal replaceability.
    #[test]
    fn replacements_spend_the_same_input_at_a_higher_fee_rate() {
        for kind in [AddressType::P2wpkh, AddressType::P2pkh] {
            let b = builder(kind, 2.0);
            let mut before: Option<(Transaction, SignedTx)> = None;
            for n in 0..4 {
                let signed = b.build_replacement(&utxo(100_000), b"anchored", n).unwrap();
                let tx: Transaction = deserialize(&signed.raw_tx).unwrap();
                assert!(tx.input[0].sequence.is_rbf(), "signals BIP125");
                verify(&b, &signed.raw_tx, 100_000);
                if let Some((prev, prev_signed)) = &before {
                    assert_eq!(tx.input[0].previous_output, prev.input[0].previous_output);
                    assert_ne!(signed.txid, prev_signed.txid);
                    let rate = signed.fee as f64 / signed.vsize as f64;
                    let prev_rate = prev_signed.fee as f64 / prev_signed.vsize as f64;
                    assert!(rate >= prev_rate + 1.0, "{rate} after {prev_rate}");
                    assert!(signed.fee >= prev_signed.fee + signed.vsize);
                }
                before = Some((tx, signed));
            }
        }
    }

    #[test]
    fn payload_limits_and_dust_change() {
        let b = builder(AddressType::P2wpkh, 2.0);
        let err = b.build_publish(&utxo(100_000), &[7u8; 81]).unwrap_err();
        assert_eq!(err, SignError::PayloadTooLarge { len: 81, max: 80 });
        let ok = b.build_publish(&utxo(100_000), &[7u8; 80]).unwrap();
        assert_eq!(ok.change.map(|c| c.0), Some(1));

        // A UTXO just over the fee: change would be dust, so it all goes to the fee.
        let small = b.build_publish(&utxo(500), b"x").unwrap();
        let tx: Transaction = deserialize(&small.raw_tx).unwrap();
        assert_eq!(tx.output.len(), 1, "no dust change output");
        assert_eq!(small.change, None);
        assert_eq!(small.fee, 500);
        verify(&b, &small.raw_tx, 500);

        let err = b.build_publish(&utxo(100), b"x").unwrap_err();
        assert!(
            matches!(err, SignError::InsufficientFunds { have: 100, .. }),
            "{err}"
        );
    }

    #[test]
    fn split_makes_equal_outputs_and_change() {
        for address_type in [AddressType::P2wpkh, AddressType::P2pkh] {
            let b = builder(address_type, 2.0);
            let signed = b.build_split(&utxo(5_000_000_000), 100, 2_000).unwrap();
            let tx: Transaction = deserialize(&signed.raw_tx).unwrap();
            assert_eq!(tx.output.len(), 101);
            assert!(
                tx.output[..100]
                    .iter()
                    .all(|o| o.value.to_sat() == 2_000
                        && &o.script_pubkey == b.wallet.script_pubkey())
            );
            let change = tx.output[100].value.to_sat();
            assert_eq!(signed.change, Some((100, change)));
            assert_eq!(5_000_000_000 - 200_000 - change, signed.fee);
            assert_fee(signed.fee, tx.vsize() as u64, 2.0);
            verify(&b, &signed.raw_tx, 5_000_000_000);
        }
        let b = builder(AddressType::P2wpkh, 2.0);
        assert!(matches!(
            b.build_split(&utxo(100_000), 100, 2_000).unwrap_err(),
            SignError::InsufficientFunds { .. }
        ));
        assert!(matches!(
            b.build_split(&utxo(100_000), 2, 10).unwrap_err(),
            SignError::Invalid(_)
        ));
        assert!(matches!(
            b.build_split(&utxo(100_000), 0, 1000).unwrap_err(),
            SignError::Invalid(_)
        ));
    }
}
