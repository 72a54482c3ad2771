//! What a node's refusal means. The texts come from Bitcoin Core, bcoin and Esplora.

use raregen_actors::BroadcastOutcome;

/// Messages that mean the node already has the transaction.
const ALREADY_HAVE: &[&str] = &[
    "txn-already-in-mempool",
    "txn-already-known",
    "already in mempool",
    "already known",
    "already in block chain",
    "already in the block chain",
    "outputs already in utxo set",
    "transaction already in block chain",
];

/// Messages about the input: missing, spent, or spent by a conflicting transaction.
const INPUT_PROBLEMS: &[&str] = &[
    "missingorspent",
    "missing inputs",
    "missing-inputs",
    "inputs-spent",
    "txn-mempool-conflict",
    "conflict",
    "rejecting replacement",
    "replace-by-fee",
];

/// Core's RPC_IN_WARMUP: the node is starting; nothing was decided.
const RPC_IN_WARMUP: i64 = -28;
/// Core's RPC_VERIFY_ERROR: in practice missing or spent inputs.
const RPC_VERIFY_ERROR: i64 = -25;
const RPC_VERIFY_REJECTED: i64 = -26;
const RPC_VERIFY_ALREADY_IN_CHAIN: i64 = -27;
const RPC_DESERIALIZATION_ERROR: i64 = -22;
const RPC_TYPE_ERROR: i64 = -3;

/// Classifies a node's error answer to a broadcast (JSON-RPC `code` when known).
pub fn classify_rejection(code: Option<i64>, message: &str) -> BroadcastOutcome {
    let lower = message.to_ascii_lowercase();
    if code == Some(RPC_VERIFY_ALREADY_IN_CHAIN) || ALREADY_HAVE.iter().any(|m| lower.contains(m)) {
        return BroadcastOutcome::Accepted;
    }
    let input_problem =
        code == Some(RPC_VERIFY_ERROR) || INPUT_PROBLEMS.iter().any(|m| lower.contains(m));
    match code {
        Some(
            RPC_VERIFY_ERROR | RPC_VERIFY_REJECTED | RPC_DESERIALIZATION_ERROR | RPC_TYPE_ERROR,
        )
        | None => BroadcastOutcome::Rejected {
            reason: message.to_owned(),
            input_problem,
        },
        Some(RPC_IN_WARMUP) => BroadcastOutcome::Unknown {
            reason: format!("node warming up: {message}"),
        },
        // Any other RPC error says nothing definite about the transaction.
        Some(other) if input_problem => BroadcastOutcome::Rejected {
            reason: format!("{message} (code {other})"),
            input_problem,
        },
        Some(other) => BroadcastOutcome::Unknown {
            reason: format!("node error {other}: {message}"),
        },
    }
}

/// Esplora answers a refused `POST /tx` with 400 and a body like
/// `sendrawtransaction RPC error: {"code":-26,"message":"min relay fee not met"}`.
/// Returns the code and message inside, or the whole body as the message.
pub fn parse_esplora_error(body: &str) -> (Option<i64>, String) {
    if let Some(start) = body.find('{') {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&body[start..]) {
            let code = v.get("code").and_then(|c| c.as_i64());
            if let Some(message) = v.get("message").and_then(|m| m.as_str()) {
                return (code, message.to_owned());
            }
        }
    }
    (None, body.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rejected(input: bool) -> impl Fn(&BroadcastOutcome) -> bool {
        move |o| matches!(o, BroadcastOutcome::Rejected { input_problem, .. } if *input_problem == input)
    }

    #[test]
    fn bitcoin_core_answers() {
        // Texts as Bitcoin Core's sendrawtransaction returns them (code, message).
        let accepted: &[(i64, &str)] = &[
            (-27, "Transaction already in block chain"),
            (-27, "Transaction outputs already in utxo set"),
            (-26, "txn-already-in-mempool"),
            (-26, "txn-already-known"),
        ];
        for (code, msg) in accepted {
            assert_eq!(
                classify_rejection(Some(*code), msg),
                BroadcastOutcome::Accepted,
                "{msg}"
            );
        }
        let input: &[(i64, &str)] = &[
            (-25, "bad-txns-inputs-missingorspent"),
            (-25, "Missing inputs"),
            (-25, "missing-inputs"),
            (-26, "txn-mempool-conflict"),
            (-26, "insufficient fee, rejecting replacement 5b1b, less fees than conflicting txs; 0.0001 < 0.0002"),
        ];
        for (code, msg) in input {
            assert!(
                rejected(true)(&classify_rejection(Some(*code), msg)),
                "{msg}"
            );
        }
        let job: &[(i64, &str)] = &[
            (-26, "min relay fee not met, 110 < 141"),
            (-26, "dust"),
            (-26, "scriptpubkey"),
            (-26, "tx-size"),
            (-26, "too-long-mempool-chain, too many unconfirmed ancestors [limit: 25]"),
            (-26, "mandatory-script-verify-flag-failed (Signature must be zero for failed CHECK(MULTI)SIG operation)"),
            (-26, "non-mandatory-script-verify-flag (Non-canonical DER signature)"),
            (-26, "mempool min fee not met, 1000 < 1500"),
            (-22, "TX decode failed"),
        ];
        for (code, msg) in job {
            let outcome = classify_rejection(Some(*code), msg);
            assert!(rejected(false)(&outcome), "{msg}: {outcome:?}");
            if let BroadcastOutcome::Rejected { reason, .. } = outcome {
                assert_eq!(reason, *msg, "the node's own words are kept");
            }
        }
        assert!(matches!(
            classify_rejection(Some(-28), "Loading block index..."),
            BroadcastOutcome::Unknown { .. }
        ));
    }

    #[test]
    fn bcoin_answers() {
        // bcoin's mempool VerifyError reasons (its RPC answers the txid at once and
        // verifies later, so these reach us from its REST API and logs), and its RPC's
        // own errors.
        assert_eq!(
            classify_rejection(None, "txn-already-in-mempool"),
            BroadcastOutcome::Accepted
        );
        assert_eq!(
            classify_rejection(None, "txn-already-known"),
            BroadcastOutcome::Accepted
        );
        assert!(rejected(true)(&classify_rejection(
            None,
            "bad-txns-inputs-spent"
        )));
        assert!(rejected(true)(&classify_rejection(
            None,
            "bad-txns-inputs-missingorspent"
        )));
        assert!(rejected(true)(&classify_rejection(None, "replace-by-fee")));
        assert!(rejected(false)(&classify_rejection(None, "no-witness-yet")));
        assert!(rejected(false)(&classify_rejection(
            None,
            "insufficientfee"
        )));
        assert!(rejected(false)(&classify_rejection(
            None,
            "absurdly-high-fee"
        )));
        assert!(rejected(false)(&classify_rejection(
            Some(-22),
            "Out of bounds read (offset=0)."
        )));
        assert!(rejected(false)(&classify_rejection(
            Some(-3),
            "Invalid hex string."
        )));
        // bcoin's generic error code says nothing about the transaction.
        assert!(matches!(
            classify_rejection(Some(-1), "Chain is not synced."),
            BroadcastOutcome::Unknown { .. }
        ));
    }

    #[test]
    fn esplora_answers() {
        // Bodies of Esplora's 400 answers to POST /tx.
        let cases: &[(&str, Option<i64>, &str)] = &[
            (
                r#"sendrawtransaction RPC error: {"code":-26,"message":"min relay fee not met, 110 < 141"}"#,
                Some(-26),
                "min relay fee not met, 110 < 141",
            ),
            (
                r#"sendrawtransaction RPC error: {"code":-27,"message":"Transaction already in block chain"}"#,
                Some(-27),
                "Transaction already in block chain",
            ),
            (
                r#"sendrawtransaction RPC error: {"code":-25,"message":"bad-txns-inputs-missingorspent"}"#,
                Some(-25),
                "bad-txns-inputs-missingorspent",
            ),
            (
                r#"sendrawtransaction RPC error: {"code":-26,"message":"txn-mempool-conflict"}"#,
                Some(-26),
                "txn-mempool-conflict",
            ),
            ("Invalid hex string", None, "Invalid hex string"),
        ];
        for (body, code, message) in cases {
            assert_eq!(
                parse_esplora_error(body),
                (*code, message.to_string()),
                "{body}"
            );
        }
        let (code, msg) = parse_esplora_error(cases[0].0);
        assert!(rejected(false)(&classify_rejection(code, &msg)));
        let (code, msg) = parse_esplora_error(cases[1].0);
        assert_eq!(classify_rejection(code, &msg), BroadcastOutcome::Accepted);
        let (code, msg) = parse_esplora_error(cases[2].0);
        assert!(rejected(true)(&classify_rejection(code, &msg)));
        let (code, msg) = parse_esplora_error(cases[3].0);
        assert!(rejected(true)(&classify_rejection(code, &msg)));
    }
}
