//! raregen against a real Bitcoin node (bcoin in regtest, started by
//! `scripts/regtest-node`): fund the pool, split, publish, and ask the node.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::support::regtest::RegtestNode;
use bitcoin::consensus::encode::deserialize;
use bitcoin::Transaction;
use raregen::chain::WalletKey;
use raregen::cmd::wallet::Wallet;
use raregen::config::{AddressType, Network};
use raregen_actors::{BroadcastOutcome, Node, OutpointState, SpendableUtxo, TxPresence};
use secrecy::ExposeSecret;
use sqlx::PgPool;

/// SegWit is active on bcoin's regtest after about 432 blocks.
const SEGWIT_HEIGHT: u32 = 450;

struct Setup {
    node: RegtestNode,
    wallet: Wallet,
    _key_file: KeyFile,
}

/// The WIF in a file (chain.wallet_key_file), removed at the end.
struct KeyFile(PathBuf);

impl Drop for KeyFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

async fn setup(pool: &PgPool, address_type: AddressType) -> Setup {
    let node = RegtestNode::start().await;
    let (_, wif) = WalletKey::generate(Network::Regtest, address_type);
    let key_file =
        KeyFile(std::env::temp_dir().join(format!("raregen-wif-{}", rand::random::<u64>())));
    std::fs::write(&key_file.0, wif.expose_secret()).unwrap();
    let db = crate::support::database_url(pool).await;
    let mut env: Vec<(String, String)> = node.env();
    env.push((
        "RAREGEN__CHAIN__WALLET_KEY_FILE".into(),
        key_file.0.display().to_string(),
    ));
    env.push((
        "RAREGEN__CHAIN__ADDRESS_TYPE".into(),
        match address_type {
            AddressType::P2wpkh => "p2wpkh".into(),
            AddressType::P2pkh => "p2pkh".into(),
        },
    ));
    env.push(("DATABASE_URL".into(), db));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let settings = crate::support::settings(&env);
    let mut wallet = Wallet::open(settings).await.unwrap();
    // These tests run outside an actix System: no shared limiter (the CLI's splits go
    // through it; tests/e2e/pipeline.rs runs them beside a daemon).
    wallet.shared_limit = false;
    Setup {
        node,
        wallet,
        _key_file: key_file,
    }
}

async fn wait_presence(node: &dyn Node, txid: &str, want_known: bool) -> TxPresence {
    let started = Instant::now();
    loop {
        let p = node.tx_presence(txid).await.unwrap();
        let known = !matches!(p, TxPresence::Unknown);
        if known == want_known || started.elapsed() > Duration::from_secs(5) {
            return p;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The data pushed by the transaction's only OP_RETURN output.
fn op_return_data(tx: &Transaction) -> Vec<u8> {
    let outs: Vec<_> = tx
        .output
        .iter()
        .filter(|o| o.script_pubkey.is_op_return())
        .collect();
    assert_eq!(outs.len(), 1, "exactly one OP_RETURN output");
    let mut ins = outs[0].script_pubkey.instructions();
    ins.next(); // OP_RETURN
    let data = ins
        .next()
        .unwrap()
        .unwrap()
        .push_bytes()
        .unwrap()
        .as_bytes()
        .to_vec();
    assert!(ins.next().is_none(), "a single data push");
    data
}

async fn available_split_outputs(pool: &PgPool, split_txid: &str) -> Vec<SpendableUtxo> {
    sqlx::query_as::<_, (i64, String, i32, i64, i32)>(
        "SELECT id, txid, vout, satoshis, unconfirmed_depth FROM utxos
         WHERE txid = $1 AND state = 'available' ORDER BY vout",
    )
    .bind(split_txid)
    .fetch_all(pool)
    .await
    .unwrap()
    .into_iter()
    .map(|(id, txid, vout, sats, depth)| SpendableUtxo {
        id,
        txid,
        vout: vout as u32,
        satoshis: sats as u64,
        unconfirmed_depth: depth as u32,
    })
    .collect()
}

/// Mine, import a matured coinbase, split it, publish from the split outputs.
async fn fund_split_publish(
    pool: PgPool,
    address_type: AddressType,
    blocks: u32,
    outputs: u32,
    publish: usize,
) {
    let s = setup(&pool, address_type).await;
    let script = s.wallet.builder.wallet().script_pubkey().clone();
    let coinbases = s.node.mine_to(&script, blocks).await;

    // Import the first (long matured) coinbase.
    let (imported, known, sats) = s
        .wallet
        .import(&[format!("{}:0", coinbases[0])])
        .await
        .unwrap();
    assert_eq!((imported, known, sats), (1, 0, 5_000_000_000));
    let again = s
        .wallet
        .import(&[format!("{}:0", coinbases[0])])
        .await
        .unwrap();
    assert_eq!(again, (0, 1, 0), "importing twice is harmless");

    // Split it.
    let split = s.wallet.split(outputs, 20_000).await.unwrap();
    assert_eq!(split.depth, 1);
    assert!(
        s.node.mempool().await.contains(&split.txid),
        "the split is in the mempool"
    );
    let split_tx: Transaction = deserialize(&s.node.raw_transaction(&split.txid).await).unwrap();
    assert_eq!(split_tx.output.len(), outputs as usize + 1);
    let vsize = split_tx.vsize() as u64;
    assert!(
        (vsize * 2..=(vsize + 4) * 2).contains(&split.fee),
        "fee {} = vsize {vsize} × 2 sat/vB (or a few vbytes more)",
        split.fee
    );
    let outs = available_split_outputs(&pool, &split.txid).await;
    assert_eq!(
        outs.len(),
        outputs as usize + 1,
        "outputs and change joined the pool"
    );
    assert!(outs.iter().all(|u| u.unconfirmed_depth == 1));
    let spent: String = sqlx::query_scalar("SELECT state FROM utxos WHERE txid = $1 AND vout = 0")
        .bind(&coinbases[0])
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(spent, "spent");

    // Publish from split outputs: each transaction reaches the mempool with its payload.
    let node = s.node.client();
    let mut sent = Vec::new();
    for (i, utxo) in outs.iter().take(publish).enumerate() {
        let payload = format!("raregen payload {i}").into_bytes();
        let signed = s.wallet.builder.build_publish(utxo, &payload).unwrap();
        assert_eq!(
            node.broadcast(&signed.raw_tx).await,
            BroadcastOutcome::Accepted
        );
        sent.push((signed, payload));
    }
    for (signed, _) in &sent {
        // bcoin verifies after answering: wait until it has each one.
        assert_eq!(
            wait_presence(node, &signed.txid, true).await,
            TxPresence::InMempool
        );
    }
    let mempool = s.node.mempool().await;
    for (signed, payload) in &sent {
        assert!(
            mempool.contains(&signed.txid),
            "{} in the mempool",
            signed.txid
        );
        let tx: Transaction = deserialize(&s.node.raw_transaction(&signed.txid).await).unwrap();
        assert_eq!(&op_return_data(&tx), payload);
        assert_eq!(tx.input[0].previous_output.txid.to_string(), split.txid);
        let change = tx
            .output
            .iter()
            .find(|o| !o.script_pubkey.is_op_return())
            .unwrap();
        assert_eq!(change.script_pubkey, script, "change goes back to the pool");
    }

    // An outpoint spent by a mempool transaction is no longer unspent.
    assert_eq!(
        node.outpoint(&outs[1].txid, outs[1].vout).await.unwrap(),
        OutpointState::Gone { spent_by: None }
    );

    // The same bytes twice: Accepted twice.
    let (first, _) = &sent[0];
    assert_eq!(
        node.broadcast(&first.raw_tx).await,
        BroadcastOutcome::Accepted
    );

    // A conflicting spend of the same outpoint: bcoin answers "ok" and drops it; asking
    // the node tells the two apart.
    let conflict = s
        .wallet
        .builder
        .build_publish(&outs[0], b"a conflicting spend")
        .unwrap();
    assert_ne!(conflict.txid, first.txid);
    match node.broadcast(&conflict.raw_tx).await {
        BroadcastOutcome::Accepted => {} // bcoin
        BroadcastOutcome::Rejected { input_problem, .. } => assert!(input_problem), // Bitcoin Core
        other => panic!("unexpected outcome {other:?}"),
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        wait_presence(node, &conflict.txid, true).await,
        TxPresence::Unknown
    );
    assert_eq!(
        node.tx_presence(&first.txid).await.unwrap(),
        TxPresence::InMempool
    );

    // Once mined, the node reports confirmations.
    s.node.mine_to(&script, 1).await;
    match node.tx_presence(&first.txid).await.unwrap() {
        TxPresence::Confirmed {
            confirmations,
            block_height,
            block_hash,
        } => {
            assert_eq!(confirmations, 1);
            assert_eq!(block_height, Some(blocks + 1));
            assert!(block_hash.is_some());
        }
        other => panic!("expected confirmed, got {other:?}"),
    }
    // The outpoint a confirmed publish spent is gone; its change is unspent.
    assert_eq!(
        node.outpoint(&outs[0].txid, outs[0].vout).await.unwrap(),
        OutpointState::Gone { spent_by: None }
    );
    match node.outpoint(&first.txid, 1).await.unwrap() {
        OutpointState::Unspent {
            value,
            script_pubkey,
            confirmations,
            coinbase,
        } => {
            assert_eq!(value, first.change.unwrap().1);
            assert_eq!(script_pubkey, script.as_bytes());
            assert_eq!((confirmations, coinbase), (1, false));
        }
        other => panic!("expected unspent change, got {other:?}"),
    }
}

#[sqlx::test]
async fn p2wpkh_fund_split_100_and_publish(pool: PgPool) {
    fund_split_publish(pool, AddressType::P2wpkh, SEGWIT_HEIGHT, 100, 25).await;
}

#[sqlx::test]
async fn p2pkh_fund_split_and_publish(pool: PgPool) {
    fund_split_publish(pool, AddressType::P2pkh, 101, 20, 5).await;
}

#[sqlx::test]
async fn broadcast_outcomes_against_a_real_node(pool: PgPool) {
    let s = setup(&pool, AddressType::P2pkh).await;
    let node = s.node.client();
    // Bytes that are not a transaction: a definitive rejection, not an input problem.
    match node.broadcast(&[0x00, 0x11]).await {
        BroadcastOutcome::Rejected {
            input_problem,
            reason,
        } => {
            assert!(!input_problem);
            assert!(!reason.is_empty());
        }
        other => panic!("{other:?}"),
    }
    // Unknown transactions and outpoints.
    let nobody = "ab".repeat(32);
    assert_eq!(
        node.tx_presence(&nobody).await.unwrap(),
        TxPresence::Unknown
    );
    assert_eq!(
        node.outpoint(&nobody, 0).await.unwrap(),
        OutpointState::Gone { spent_by: None }
    );
    // The node gone: Unknown outcome, and queries fail as unavailable.
    let n = s.node;
    n.stop();
    match n.client().broadcast(&[0x02, 0x00, 0x00, 0x00]).await {
        BroadcastOutcome::Unknown { reason } => assert!(!reason.is_empty()),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        n.client().tx_presence(&nobody).await,
        Err(raregen_actors::NodeError::Unavailable(_))
    ));
}

/// bcoin's `gettxout` asks its mempool only about coins the mempool created: a
/// confirmed coin that a mempool transaction spends still looks unspent there. The
/// node client must not take it for unspent (the DirtySettler would hand it back, and
/// a second transaction would be signed for a coin already spent).
#[sqlx::test]
async fn a_confirmed_coin_spent_in_the_mempool_is_not_unspent(pool: PgPool) {
    let s = setup(&pool, AddressType::P2wpkh).await;
    let script = s.wallet.builder.wallet().script_pubkey().clone();
    let coinbases = s.node.mine_to(&script, SEGWIT_HEIGHT).await;
    s.wallet
        .import(&[format!("{}:0", coinbases[0])])
        .await
        .unwrap();
    let coin = SpendableUtxo {
        id: 1,
        txid: coinbases[0].clone(),
        vout: 0,
        satoshis: 5_000_000_000,
        unconfirmed_depth: 0,
    };
    let node = s.node.client();
    assert!(matches!(
        node.outpoint(&coin.txid, 0).await.unwrap(),
        OutpointState::Unspent { confirmations, .. } if confirmations > 100
    ));
    let signed = s
        .wallet
        .builder
        .build_publish(&coin, b"spends a confirmed coin")
        .unwrap();
    assert_eq!(
        node.broadcast(&signed.raw_tx).await,
        BroadcastOutcome::Accepted
    );
    assert_eq!(
        wait_presence(node, &signed.txid, true).await,
        TxPresence::InMempool
    );
    assert_eq!(
        node.outpoint(&coin.txid, 0).await.unwrap(),
        OutpointState::Gone { spent_by: None }
    );
}
