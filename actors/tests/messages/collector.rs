use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use raregen_actors::batch::{Batch, Depth};
use raregen_actors::collector::{CollectMode, Collector, CollectorConfig};

use crate::support::*;

#[test]
fn a_batch_collector_claims_full_batches_until_twice_max_batch_wait() {
    in_system(|| async {
        let store = MemStore::new();
        store.queue(1..=1_200);
        let batch = Batch::default().start();
        let _collector = Collector::new(
            CollectorConfig {
                mode: CollectMode::Batch,
                max_batch: 500,
                interval: Duration::from_millis(20),
                low_water: 10,
            },
            Arc::new(store.clone()),
            None,
            batch.clone(),
        )
        .start();
        eventually("a first claim", || !store.state().claims.is_empty()).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        // Nobody takes jobs from the batch: claims stop once twice max_batch wait.
        let claims = store.state().claims.clone();
        assert_eq!(claims, vec![500, 500], "full claims until 2 x max_batch wait");
        let depth = batch.send(Depth).await.unwrap();
        assert_eq!(depth.waiting, 1_000);
        assert_eq!(store.state().queued.len(), 200, "the rest stays queued");
    });
}
