//! Build + sign of one publish transaction (one input, OP_RETURN + change), for both
//! address types. Run: `cargo bench --bench build_tx`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use raregen::chain::{TxBuilder, WalletKey};
use raregen::config::{AddressType, Network};
use raregen_actors::SpendableUtxo;

fn build_and_sign(c: &mut Criterion) {
    let mut group = c.benchmark_group("build_tx");
    for (name, address_type) in [
        ("p2wpkh", AddressType::P2wpkh),
        ("p2pkh", AddressType::P2pkh),
    ] {
        let (wallet, _) = WalletKey::generate(Network::Regtest, address_type);
        let builder = TxBuilder::new(wallet, 2.0, 80);
        let utxo = SpendableUtxo {
            id: 1,
            txid: "3b".repeat(32),
            vout: 7,
            satoshis: 2_000,
            unconfirmed_depth: 0,
        };
        let mut n: u64 = 0;
        group.bench_function(format!("publish {name}, 80-byte payload"), |b| {
            b.iter(|| {
                // A different payload each time, as in production.
                n += 1;
                let mut payload = [0u8; 80];
                payload[..8].copy_from_slice(&n.to_le_bytes());
                black_box(builder.build_publish(&utxo, &payload).unwrap())
            })
        });
    }
    group.finish();
}

criterion_group!(benches, build_and_sign);
criterion_main!(benches);
