//! The Postgres store: the claim, the batched state changes and their fencing, and the
//! seed's runbook queries verbatim against our schema.

mod support;

use std::collections::{HashMap, HashSet};

use chrono::Utc;
use raregen::store::{PgStore, StatusReport};
use raregen_actors::{ClaimStore, Fence, OutcomeStore, Retry, Sending, Sent};
use sqlx::PgPool;

type Time = chrono::DateTime<Utc>;
/// A row of the seed's "Check Batch Details".
type BatchDetail = (i64, i64, i32, i32, Time, i64, i64);
/// A row of the seed's "View Dirty UTXOs".
type DirtyUtxo = (i64, String, i32, i64, bool, Option<Time>);

fn fake_txid(id: i64) -> String {
    format!("{id:064x}")
}

async fn statuses(pool: &PgPool) -> HashMap<String, i64> {
    sqlx::query_as::<_, (String, i64)>("SELECT status, count(*) FROM publish_jobs GROUP BY status")
        .fetch_all(pool)
        .await
        .unwrap()
        .into_iter()
        .collect()
}

#[sqlx::test]
async fn claim_numbers_a_batch_in_priority_then_age_order(pool: PgPool) {
    support::insert_queued(&pool, 10).await;
    // Job 3 is urgent; job 5 is not due yet.
    sqlx::query("UPDATE publish_jobs SET priority = 5 WHERE payload = 'job-3'")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("UPDATE publish_jobs SET next_attempt_at = now() + interval '1 hour' WHERE payload = 'job-5'")
        .execute(&pool)
        .await
        .unwrap();
    let store = PgStore::new(pool.clone(), "w1");

    let batch = store
        .claim_batch(4)
        .await
        .unwrap()
        .expect("jobs are queued");
    let payloads: Vec<String> = batch
        .jobs
        .iter()
        .map(|j| String::from_utf8(j.payload.clone()).unwrap())
        .collect();
    assert_eq!(payloads, ["job-3", "job-1", "job-2", "job-4"]);
    assert_eq!(
        batch.jobs.iter().map(|j| j.batch_seq).collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
    assert!(batch
        .jobs
        .iter()
        .all(|j| j.attempts == 1 && j.stored_tx.is_none()));

    let (size, owner): (i32, String) =
        sqlx::query_as("SELECT size, owner FROM batches WHERE id = $1")
            .bind(batch.id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!((size, owner.as_str()), (4, "w1"));
    let rows: Vec<(String, i64, i32, String)> = sqlx::query_as(
        "SELECT status, processing_batch_id, batch_seq, owner FROM publish_jobs
         WHERE processing_batch_id IS NOT NULL ORDER BY batch_seq",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), 4);
    assert!(rows
        .iter()
        .all(|(s, b, _, o)| s == "processing_batch" && *b == batch.id && o == "w1"));

    // The rest, without the job that is not due.
    let rest = store.claim_batch(500).await.unwrap().unwrap();
    assert_eq!(rest.jobs.len(), 5);
    assert!(rest.jobs.iter().all(|j| j.payload != b"job-5"));
    assert!(
        store.claim_batch(500).await.unwrap().is_none(),
        "nothing due: no empty batch"
    );
    let batches: i64 = sqlx::query_scalar("SELECT count(*) FROM batches")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(batches, 2);
}

#[sqlx::test]
async fn two_concurrent_claimers_never_share_a_job(pool: PgPool) {
    const JOBS: i64 = 20_000;
    support::insert_queued(&pool, JOBS).await;
    let claimer = |owner: &'static str| {
        let store = PgStore::new(pool.clone(), owner);
        tokio::spawn(async move {
            let mut claimed: Vec<(i64, i64, i32)> = Vec::new();
            while let Some(batch) = store.claim_batch(97).await.unwrap() {
                let seqs: Vec<i32> = batch.jobs.iter().map(|j| j.batch_seq).collect();
                assert_eq!(seqs, (1..=batch.jobs.len() as i32).collect::<Vec<_>>());
                claimed.extend(batch.jobs.iter().map(|j| (j.id, batch.id, j.batch_seq)));
            }
            claimed
        })
    };
    let (a, b) = tokio::join!(claimer("alpha"), claimer("beta"));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert!(
        !a.is_empty() && !b.is_empty(),
        "both claimers got work: {} / {}",
        a.len(),
        b.len()
    );
    let ids_a: HashSet<i64> = a.iter().map(|c| c.0).collect();
    let ids_b: HashSet<i64> = b.iter().map(|c| c.0).collect();
    assert_eq!(ids_a.len(), a.len(), "alpha got a job twice");
    assert_eq!(ids_b.len(), b.len(), "beta got a job twice");
    assert!(
        ids_a.is_disjoint(&ids_b),
        "a job was handed to both claimers"
    );
    assert_eq!((ids_a.len() + ids_b.len()) as i64, JOBS);

    // The rows agree with what each claimer was told.
    let rows: Vec<(i64, String, i64, i32)> =
        sqlx::query_as("SELECT id, owner, processing_batch_id, batch_seq FROM publish_jobs")
            .fetch_all(&pool)
            .await
            .unwrap();
    let told: HashMap<i64, (&str, i64, i32)> = a
        .iter()
        .map(|&(id, batch, seq)| (id, ("alpha", batch, seq)))
        .chain(b.iter().map(|&(id, batch, seq)| (id, ("beta", batch, seq))))
        .collect();
    for (id, owner, batch, seq) in rows {
        assert_eq!(told[&id], (owner.as_str(), batch, seq));
    }
}

#[sqlx::test]
async fn state_changes_are_batched_and_fenced(pool: PgPool) {
    support::insert_queued(&pool, 6).await;
    let utxos = support::insert_utxos(&pool, 6).await;
    let store = PgStore::new(pool.clone(), "owner-a");
    let batch = store.claim_batch(6).await.unwrap().unwrap();
    let fences: Vec<Fence> = batch
        .jobs
        .iter()
        .map(|j| Fence {
            id: j.id,
            attempts: j.attempts,
        })
        .collect();

    // Write-ahead: jobs 1-4 get their signed transactions stored.
    let sending: Vec<Sending> = fences[..4]
        .iter()
        .zip(&utxos)
        .map(|(f, u)| Sending {
            fence: *f,
            utxo_id: *u,
            txid: fake_txid(f.id),
            raw_tx: vec![0xde, 0xad, f.id as u8],
        })
        .collect();
    let done = store.record_sending(&sending).await.unwrap();
    assert_eq!(done.stored.len(), 4);
    // The same record again is accepted (a retry after a lost answer).
    assert_eq!(
        store.record_sending(&sending).await.unwrap().stored.len(),
        4
    );
    let spending: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM utxos WHERE state = 'spending' AND reserved_by IS NOT NULL",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        spending, 4,
        "the UTXOs are taken with the write-ahead record"
    );
    // A UTXO already taken cannot be taken by another job.
    let batch2 = {
        support::insert_queued(&pool, 1).await;
        store.claim_batch(1).await.unwrap().unwrap()
    };
    let thief = Sending {
        fence: Fence {
            id: batch2.jobs[0].id,
            attempts: batch2.jobs[0].attempts,
        },
        utxo_id: utxos[0],
        txid: fake_txid(999),
        raw_tx: vec![1],
    };
    let thief_id = thief.fence.id;
    let done = store
        .record_sending(std::slice::from_ref(&thief))
        .await
        .unwrap();
    assert!(done.stored.is_empty(), "one spender per UTXO");
    assert_eq!(
        done.utxo_taken,
        vec![thief_id],
        "the job is still ours: sign again"
    );
    // A stale fence is neither stored nor told to sign again.
    let mut stale = thief;
    stale.fence.attempts += 1;
    let done = store.record_sending(&[stale]).await.unwrap();
    assert!(done.stored.is_empty() && done.utxo_taken.is_empty());

    // Another process (or this one after losing its claim) changes nothing.
    let intruder = PgStore::new(pool.clone(), "owner-b");
    let sent_at = Utc::now();
    let forged: Vec<Sent> = fences
        .iter()
        .map(|f| Sent {
            fence: *f,
            sent_at,
            change: None,
        })
        .collect();
    assert!(intruder.record_sent(&forged).await.unwrap().ids.is_empty());
    let stale: Vec<Sent> = fences
        .iter()
        .map(|f| Sent {
            fence: Fence {
                id: f.id,
                attempts: f.attempts + 1,
            },
            sent_at,
            change: None,
        })
        .collect();
    assert!(
        store.record_sent(&stale).await.unwrap().ids.is_empty(),
        "a stale attempt is fenced off"
    );
    assert_eq!(statuses(&pool).await["sending"], 4);

    // Jobs 1-3 sent, in one statement; job 5 (never stored) cannot become sent.
    let sent: Vec<Sent> = [0, 1, 2, 4]
        .iter()
        .map(|&i| Sent {
            fence: fences[i],
            sent_at,
            change: Some((1, 9_000)),
        })
        .collect();
    let recorded = store.record_sent(&sent).await.unwrap();
    let mut done = recorded.ids.clone();
    done.sort();
    assert_eq!(done, vec![fences[0].id, fences[1].id, fences[2].id]);
    // Their UTXOs are spent and their change joined the pool one step deeper.
    assert_eq!(recorded.utxos.len(), 3);
    assert!(recorded
        .utxos
        .iter()
        .all(|u| u.vout == 1 && u.satoshis == 9_000 && u.unconfirmed_depth == 1));
    let spent: i64 = sqlx::query_scalar("SELECT count(*) FROM utxos WHERE state = 'spent'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(spent, 3);

    // Job 4 (sending) and job 6 (processing_batch) rejected: back to the queue with a
    // backoff, their stored transaction discarded.
    let later = Utc::now() + chrono::Duration::seconds(60);
    let retry: Vec<Retry> = [3, 5]
        .iter()
        .map(|&i| Retry {
            fence: fences[i],
            error: "rejected: mempool full".into(),
            not_before: later,
            reanchor: false,
            settles_dirty: false,
        })
        .collect();
    let recorded = store.record_retry(&retry, 5).await.unwrap();
    assert_eq!(recorded.ids.len(), 2);
    assert!(
        recorded.utxos.is_empty(),
        "job 4 keeps its UTXO as its anchor: {:?}",
        recorded.utxos
    );
    // Job 4's UTXO is its anchor, reserved for its next signature; its refused
    // transaction is kept in its history.
    let anchor: (String, Option<i64>, Option<String>) =
        sqlx::query_as("SELECT state, reserved_by, spent_by_txid FROM utxos WHERE id = $1")
            .bind(utxos[3])
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(anchor, ("reserved".to_owned(), Some(fences[3].id), None));
    let (anchor_of, history): (Option<i64>, i64) = sqlx::query_as(
        "SELECT anchor_utxo_id, (SELECT count(*) FROM job_transactions t WHERE t.job_id = j.id)
         FROM publish_jobs j WHERE id = $1",
    )
    .bind(fences[3].id)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((anchor_of, history), (Some(utxos[3]), 1));
    let s = statuses(&pool).await;
    // processing_batch: job 5, and the would-be thief's job.
    assert_eq!((s["sent"], s["queued"], s["processing_batch"]), (3, 2, 2));
    let requeued: Vec<(Option<String>, Option<Vec<u8>>, String)> =
        sqlx::query_as("SELECT txid, raw_tx, last_error FROM publish_jobs WHERE status = 'queued'")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert!(requeued
        .iter()
        .all(|(t, r, e)| t.is_none() && r.is_none() && e == "rejected: mempool full"));
    assert!(
        store.claim_batch(10).await.unwrap().is_none(),
        "backoff holds them back"
    );

    let (sent_n, failed_n, retried_n, completed): (i32, i32, i32, bool) = sqlx::query_as(
        "SELECT sent, failed, retried, completed_at IS NOT NULL FROM batches WHERE id = $1",
    )
    .bind(batch.id)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((sent_n, failed_n, retried_n, completed), (3, 0, 2, false));

    // The last job (it never stored a transaction) is no nearer failing for being sent
    // back (a claim is no attempt); it fails at once when it cannot be built (0).
    let last = Retry {
        fence: fences[4],
        error: "bad".into(),
        not_before: later,
        reanchor: false,
        settles_dirty: false,
    };
    let recorded = store
        .record_retry(std::slice::from_ref(&last), 1)
        .await
        .unwrap();
    assert_eq!((recorded.ids.len(), recorded.failed), (1, 0));
    sqlx::query(
        "UPDATE publish_jobs SET status = 'processing_batch', owner = 'owner-a' WHERE id = $1",
    )
    .bind(last.fence.id)
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("UPDATE batches SET retried = retried - 1 WHERE id = $1")
        .bind(batch.id)
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(store.record_retry(&[last], 0).await.unwrap().failed, 1);
    let (failed_n, completed): (i32, bool) =
        sqlx::query_as("SELECT failed, completed_at IS NOT NULL FROM batches WHERE id = $1")
            .bind(batch.id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(
        (failed_n, completed),
        (1, true),
        "every job accounted for closes the batch"
    );
    assert_eq!(statuses(&pool).await["failed"], 1);
}

/// `max_attempts` counts refused transactions, not claims: a job whose claim was taken
/// back six times (its process died or froze each time) is not failed by its first
/// refusal; it fails at its fifth.
#[sqlx::test]
async fn claims_taken_back_are_no_attempts(pool: PgPool) {
    support::insert_queued(&pool, 1).await;
    let utxos = support::insert_utxos(&pool, 1).await;
    let store = PgStore::new(pool.clone(), "w1");
    let claim = || async {
        sqlx::query("UPDATE publish_jobs SET next_attempt_at = now()")
            .execute(&pool)
            .await
            .unwrap();
        let job = store.claim_batch(1).await.unwrap().unwrap().jobs.remove(0);
        Fence {
            id: job.id,
            attempts: job.attempts,
        }
    };
    for _ in 0..6 {
        claim().await;
        // Taken back, as `reclaim_dead` does for a dead process's claims.
        sqlx::query("UPDATE publish_jobs SET status = 'queued', owner = NULL")
            .execute(&pool)
            .await
            .unwrap();
    }
    for refusal in 1..=5 {
        let fence = claim().await;
        let sending = Sending {
            fence,
            utxo_id: utxos[0],
            txid: fake_txid(refusal),
            raw_tx: vec![refusal as u8],
        };
        assert_eq!(
            store.record_sending(&[sending]).await.unwrap().stored.len(),
            1
        );
        let retry = Retry {
            fence,
            error: "rejected by the node: min relay fee not met".into(),
            not_before: Utc::now(),
            reanchor: false,
            settles_dirty: false,
        };
        let recorded = store.record_retry(&[retry], 5).await.unwrap();
        assert_eq!(
            recorded.failed,
            usize::from(refusal == 5),
            "refusal {refusal} after {} claims",
            fence.attempts
        );
    }
}

/// A job's anchor: the UTXO of its first write-ahead stays the job's between attempts;
/// the next attempt is handed it and may sign on it and on nothing else; a re-anchor
/// frees the job from it; a job that fails for good gives it back to the pool.
#[sqlx::test]
async fn a_job_signs_on_its_anchor_and_nothing_else(pool: PgPool) {
    support::insert_queued(&pool, 1).await;
    let utxos = support::insert_utxos(&pool, 2).await;
    let store = PgStore::new(pool.clone(), "w1");
    let now_due = "UPDATE publish_jobs SET next_attempt_at = now()";
    let claim = || async {
        sqlx::query(now_due).execute(&pool).await.unwrap();
        store.claim_batch(1).await.unwrap().unwrap().jobs.remove(0)
    };
    let job = claim().await;
    assert_eq!(job.anchor, None, "a first attempt has no anchor");
    let fence = |j: &raregen_actors::ClaimedJob| Fence {
        id: j.id,
        attempts: j.attempts,
    };
    let write_ahead = |f: Fence, utxo: i64, n: i64| Sending {
        fence: f,
        utxo_id: utxo,
        txid: fake_txid(n),
        raw_tx: vec![n as u8],
    };
    let refuse = |f: Fence, reanchor: bool| Retry {
        fence: f,
        error: "rejected by the node: min relay fee not met".into(),
        not_before: Utc::now(),
        reanchor,
        settles_dirty: false,
    };
    let stored = store
        .record_sending(&[write_ahead(fence(&job), utxos[0], 1)])
        .await
        .unwrap();
    assert_eq!(stored.stored, vec![job.id]);
    store
        .record_retry(&[refuse(fence(&job), false)], 5)
        .await
        .unwrap();

    // The second attempt is handed its anchor; another UTXO is refused, the anchor taken.
    let job = claim().await;
    let anchor = job.anchor.clone().expect("anchored");
    assert_eq!(anchor.utxo_id, utxos[0]);
    assert_eq!(anchor.signed_before, 1);
    assert_eq!(anchor.utxo.as_ref().map(|u| u.id), Some(utxos[0]));
    let other = store
        .record_sending(&[write_ahead(fence(&job), utxos[1], 2)])
        .await
        .unwrap();
    assert!(
        other.stored.is_empty(),
        "a job that signed before spends its anchor only"
    );
    let stored = store
        .record_sending(&[write_ahead(fence(&job), utxos[0], 3)])
        .await
        .unwrap();
    assert_eq!(stored.stored, vec![job.id]);
    let history: Vec<String> =
        sqlx::query_scalar("SELECT txid FROM job_transactions WHERE job_id = $1")
            .bind(job.id)
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(history, vec![fake_txid(1)]);

    // A re-anchor (the anchor was spent by another, confirmed, transaction) frees it.
    sqlx::query("UPDATE utxos SET state = 'retired', reserved_by = NULL WHERE id = $1")
        .bind(utxos[0])
        .execute(&pool)
        .await
        .unwrap();
    store
        .record_retry(&[refuse(fence(&job), true)], 5)
        .await
        .unwrap();
    let job = claim().await;
    assert_eq!(job.anchor, None, "re-anchored: a fresh UTXO next");
    let stored = store
        .record_sending(&[write_ahead(fence(&job), utxos[1], 4)])
        .await
        .unwrap();
    assert_eq!(stored.stored, vec![job.id]);

    // Failing for good keeps the anchor the job signed on out of the pool: a refused
    // copy may still be mined, and no other job may ever spend the coin.
    let recorded = store
        .record_retry(&[refuse(fence(&job), false)], 1)
        .await
        .unwrap();
    assert_eq!(recorded.failed, 1);
    assert!(recorded.utxos.is_empty(), "{:?}", recorded.utxos);
    let parked: (String, Option<i64>) =
        sqlx::query_as("SELECT state, reserved_by FROM utxos WHERE id = $1")
            .bind(utxos[1])
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(parked, ("reserved".to_owned(), Some(job.id)));
    let history: i64 =
        sqlx::query_scalar("SELECT count(*) FROM job_transactions WHERE job_id = $1")
            .bind(job.id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(history, 3, "every transaction the job signed is kept");
    // Requeued by an operator, the failed job is handed its anchor again.
    sqlx::query("UPDATE publish_jobs SET status = 'queued' WHERE id = $1")
        .bind(job.id)
        .execute(&pool)
        .await
        .unwrap();
    let again = claim().await;
    assert_eq!(
        again
            .anchor
            .as_ref()
            .and_then(|a| a.utxo.as_ref())
            .map(|u| u.id),
        Some(utxos[1])
    );
    // An anchor retired meanwhile (its lane was never held) is said so: the job may
    // sign on nothing (the broadcaster fails it at once).
    store
        .record_retry(&[refuse(fence(&again), false)], 5)
        .await
        .unwrap();
    sqlx::query("UPDATE utxos SET state = 'retired', reserved_by = NULL WHERE id = $1")
        .bind(utxos[1])
        .execute(&pool)
        .await
        .unwrap();
    let gone = claim().await.anchor.expect("anchored");
    assert!(gone.retired && gone.utxo.is_none(), "{gone:?}");
}

#[sqlx::test]
async fn the_seeds_runbook_queries_run_verbatim(pool: PgPool) {
    support::insert_queued(&pool, 30).await;
    let utxos = support::insert_utxos(&pool, 4).await;
    let store = PgStore::new(pool.clone(), "w");
    let batch = store.claim_batch(10).await.unwrap().unwrap();
    let sending: Vec<Sending> = batch.jobs[..4]
        .iter()
        .zip(&utxos)
        .map(|(j, u)| Sending {
            fence: Fence {
                id: j.id,
                attempts: j.attempts,
            },
            utxo_id: *u,
            txid: fake_txid(j.id),
            raw_tx: vec![1, 2, 3],
        })
        .collect();
    store.record_sending(&sending).await.unwrap();
    let sent = [Sent {
        fence: sending[0].fence,
        sent_at: Utc::now(),
        change: None,
    }];
    store.record_sent(&sent).await.unwrap();
    // Two of the jobs in `sending` have been stuck for 5 minutes.
    sqlx::query(
        "UPDATE publish_jobs SET sending_started_at = now() - interval '5 minutes'
         WHERE id IN (SELECT id FROM publish_jobs WHERE status = 'sending' ORDER BY id LIMIT 2)",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO utxos (txid, vout, satoshis, script_pubkey, dirty)
         VALUES ($1, 0, 5000, '\\x0014'::bytea, TRUE), ($1, 1, 7000, '\\x0014'::bytea, FALSE)",
    )
    .bind(fake_txid(77))
    .execute(&pool)
    .await
    .unwrap();

    // Check Queue Status
    let queue: Vec<(String, i64, i64)> = sqlx::query_as(
        "
  SELECT 
    status,
    COUNT(*) as count,
    COUNT(DISTINCT processing_batch_id) as batches
  FROM publish_jobs
  GROUP BY status
  ORDER BY status;",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        queue,
        vec![
            ("processing_batch".to_owned(), 6, 1),
            ("queued".to_owned(), 20, 0),
            ("sending".to_owned(), 3, 1),
            ("sent".to_owned(), 1, 1),
        ]
    );

    // Check Batch Details
    let details: Vec<BatchDetail> = sqlx::query_as(
        "
  SELECT 
    processing_batch_id,
    COUNT(*) as jobs,
    MIN(batch_seq) as first_seq,
    MAX(batch_seq) as last_seq,
    MIN(created_at) as created,
    COUNT(CASE WHEN status = 'sent' THEN 1 END) as sent,
    COUNT(CASE WHEN status = 'failed' THEN 1 END) as failed
  FROM publish_jobs
  WHERE processing_batch_id IS NOT NULL
  GROUP BY processing_batch_id
  ORDER BY created DESC
  LIMIT 10;",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(details.len(), 1);
    let (id, jobs, first, last, _, sent, failed) = details[0];
    assert_eq!(
        (id, jobs, first, last, sent, failed),
        (batch.id, 10, 1, 10, 1, 0)
    );

    // The seed's "Rate Limiting Verification" count.
    let recent: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM publish_jobs WHERE status = 'sent' AND sent_at > NOW() - INTERVAL '10 seconds';",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(recent, 1);

    // Jobs Stuck in 'sending': the manual unstick.
    let unstuck = sqlx::query(
        "
  UPDATE publish_jobs
  SET status = 'processing_batch', sending_started_at = NULL
  WHERE status = 'sending'
    AND sending_started_at < NOW() - INTERVAL '2 minutes';",
    )
    .execute(&pool)
    .await
    .unwrap();
    assert_eq!(unstuck.rows_affected(), 2);
    // The stored transactions survive it: a later broadcast re-sends the same bytes.
    let kept: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM publish_jobs WHERE status = 'processing_batch' AND raw_tx IS NOT NULL",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(kept, 2);

    // View Dirty UTXOs
    let dirty: Vec<DirtyUtxo> = sqlx::query_as(
        "
  SELECT id, txid, vout, satoshis, dirty, reserved_at
  FROM utxos
  WHERE dirty = TRUE
  ORDER BY created_at DESC
  LIMIT 20;",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(dirty.len(), 1);
    assert_eq!((dirty[0].2, dirty[0].3, dirty[0].4), (0, 5000, true));

    // Monitoring: queue depth.
    let queued: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM publish_jobs WHERE status = 'queued'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(queued, 20);

    // `raregen status` reads the same numbers.
    let report = StatusReport::load(&pool).await.unwrap();
    let by_status: HashMap<&str, (i64, i64)> = report
        .queue
        .iter()
        .map(|r| (r.status.as_str(), (r.count, r.batches)))
        .collect();
    assert_eq!(by_status["queued"], (20, 0));
    assert_eq!(by_status["processing_batch"], (8, 1));
    assert_eq!(report.batches[0].jobs, 10);
    assert_eq!(
        (
            report.pool.available,
            report.pool.dirty,
            report.pool.dirty_sats
        ),
        (1, 1, 5000)
    );
    assert_eq!(
        report.oldest_sending.as_ref().map(|j| j.id),
        Some(batch.jobs[3].id)
    );
}

#[sqlx::test]
async fn claim_of_500_from_a_million_queued_rows(pool: PgPool) {
    // Correctness at scale; the time it takes is measured by `cargo bench --bench claim`.
    support::insert_queued(&pool, 1_000_000).await;
    sqlx::query("VACUUM ANALYZE publish_jobs")
        .execute(&pool)
        .await
        .unwrap();
    let store = PgStore::new(pool.clone(), "w");
    for round in 0..3 {
        let batch = store.claim_batch(500).await.unwrap().unwrap();
        assert_eq!(batch.jobs.len(), 500);
        let first: i64 = sqlx::query_scalar("SELECT min(id) FROM publish_jobs")
            .fetch_one(&pool)
            .await
            .unwrap();
        let ids: Vec<i64> = batch.jobs.iter().map(|j| j.id).collect();
        let expected: Vec<i64> = (first + round * 500..first + (round + 1) * 500).collect();
        assert_eq!(ids, expected, "round {round}: the oldest 500, in order");
    }
    let counts = store.queue_counts().await.unwrap();
    assert_eq!((counts.queued, counts.processing_batch), (998_500, 1_500));
}

/// Every takeover bumps the job's fencing token: a holder whose job was adopted by
/// another process, then taken back by its own (A → B → A: a frozen process's job
/// adopted by a peer, the peer dead before it finished), can record nothing with the
/// claim it held — the owner alone is the same again. The same for the DirtySettler's
/// adoption of a job whose spend had an unknown outcome.
#[sqlx::test]
async fn every_takeover_fences_out_the_holders_before_it(pool: PgPool) {
    use raregen_actors::{RescueStore, SettleStore};
    use std::time::Duration;
    support::insert_queued(&pool, 1).await;
    let utxos = support::insert_utxos(&pool, 1).await;
    let a = PgStore::new(pool.clone(), "a");
    let b = PgStore::new(pool.clone(), "b");
    let job = a.claim_batch(1).await.unwrap().unwrap().jobs.remove(0);
    let first = Fence {
        id: job.id,
        attempts: job.attempts,
    };
    let sending = Sending {
        fence: first,
        utxo_id: utxos[0],
        txid: fake_txid(1),
        raw_tx: vec![1],
    };
    assert_eq!(a.record_sending(&[sending]).await.unwrap().stored.len(), 1);
    let by_b = b.adopt_stuck(Duration::ZERO, 10, &[]).await.unwrap();
    assert_eq!(by_b.len(), 1, "B adopts the stuck job");
    assert_ne!(by_b[0].fence, first, "B's adoption bumped the token");
    let back = a.adopt_stuck(Duration::ZERO, 10, &[]).await.unwrap();
    assert_eq!(back.len(), 1, "A takes it back");
    let sent = |fence| Sent {
        fence,
        sent_at: Utc::now(),
        change: None,
    };
    assert!(
        a.record_sent(&[sent(first)]).await.unwrap().ids.is_empty(),
        "the first holder of A records nothing after A → B → A"
    );
    assert!(
        a.mark_dirty(&[first]).await.unwrap().is_empty(),
        "nor marks its UTXO dirty"
    );
    assert!(
        b.record_sent(&[sent(by_b[0].fence)])
            .await
            .unwrap()
            .ids
            .is_empty(),
        "nor does B after A took it back"
    );
    // Unknown outcome under A's adoption: the UTXO is dirty; the DirtySettler's
    // adoption (here B's) fences out A's holder too.
    assert_eq!(a.mark_dirty(&[back[0].fence]).await.unwrap().len(), 1);
    let dirty = b.dirty_utxos(10).await.unwrap();
    let settling = dirty[0].job.clone().expect("the dirty UTXO's job");
    assert_ne!(
        settling.fence, back[0].fence,
        "the settler's adoption bumped the token"
    );
    assert!(a
        .record_sent(&[sent(back[0].fence)])
        .await
        .unwrap()
        .ids
        .is_empty());
    assert_eq!(
        b.record_sent(&[sent(settling.fence)]).await.unwrap().ids,
        vec![job.id],
        "the last adopter records"
    );
}

/// A job adopted from the seed in flight never leaves its anchor: a transaction raregen
/// did not sign that spends the anchor may be the seed's own transaction of the job, so
/// a re-anchor fails the job instead of signing it on another coin.
#[sqlx::test]
async fn a_job_adopted_in_flight_from_the_seed_is_never_re_anchored(pool: PgPool) {
    support::insert_queued(&pool, 2).await;
    let utxos = support::insert_utxos(&pool, 2).await;
    let store = PgStore::new(pool.clone(), "w1");
    let ids: Vec<i64> = sqlx::query_scalar("SELECT id FROM publish_jobs ORDER BY id")
        .fetch_all(&pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO seed_in_flight (job_id, seed_txid) VALUES ($1, NULL)")
        .bind(ids[0])
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("UPDATE publish_jobs SET next_attempt_at = now()")
        .execute(&pool)
        .await
        .unwrap();
    let batch = store.claim_batch(2).await.unwrap().unwrap();
    let sending = write_aheads(&batch.jobs, &utxos);
    assert_eq!(
        store.record_sending(&sending).await.unwrap().stored.len(),
        2
    );
    // Both anchors spent by a confirmed transaction that is none of the jobs' own.
    sqlx::query("UPDATE utxos SET state = 'retired', reserved_by = NULL")
        .execute(&pool)
        .await
        .unwrap();
    let retries: Vec<Retry> = sending
        .iter()
        .map(|s| Retry {
            fence: s.fence,
            error: "its anchor was spent by another transaction".into(),
            not_before: Utc::now(),
            reanchor: true,
            settles_dirty: false,
        })
        .collect();
    let recorded = store.record_retry(&retries, 5).await.unwrap();
    assert_eq!(recorded.failed, 1);
    let rows: Vec<(i64, String, Option<i64>, Option<String>)> = sqlx::query_as(
        "SELECT id, status, anchor_utxo_id, last_error FROM publish_jobs ORDER BY id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(rows[0].1, "failed", "the seed's job is not signed again");
    assert_eq!(rows[0].2, Some(utxos[0]));
    assert!(
        rows[0]
            .3
            .as_deref()
            .unwrap()
            .contains("adopted from the batch worker"),
        "{:?}",
        rows[0].3
    );
    assert_eq!(
        (rows[1].1.as_str(), rows[1].2),
        ("queued", None),
        "any other job is re-anchored"
    );
}

#[sqlx::test]
async fn foreign_coins_are_counted_over_every_script_not_only_the_five_shown(pool: PgPool) {
    let ours = vec![0x51u8];
    // Seven foreign scripts (script i paid i + 1 times) and two coins of our own.
    let mut id = 0;
    for i in 0..7u8 {
        for _ in 0..=i {
            id += 1;
            sqlx::query(
                "INSERT INTO utxos (txid, vout, satoshis, script_pubkey) VALUES ($1, 0, 1000, $2)",
            )
            .bind(fake_txid(id))
            .bind(vec![0x60 + i])
            .execute(&pool)
            .await
            .unwrap();
        }
    }
    for n in 0..2 {
        sqlx::query(
            "INSERT INTO utxos (txid, vout, satoshis, script_pubkey) VALUES ($1, 1, 5, $2)",
        )
        .bind(fake_txid(100 + n))
        .bind(&ours)
        .execute(&pool)
        .await
        .unwrap();
    }
    let foreign = raregen::store::utxos::foreign_utxos(&pool, &ours)
        .await
        .unwrap();
    assert_eq!(foreign.coins, 28, "1 + 2 + … + 7 foreign coins");
    assert_eq!(foreign.sats, 28_000);
    assert_eq!(foreign.scripts, 7);
    let shown: Vec<i64> = foreign.top.iter().map(|(_, n)| *n).collect();
    assert_eq!(shown, vec![7, 6, 5, 4, 3], "the five scripts paid most");
    assert_eq!(
        raregen::store::utxos::foreign_utxos(&pool, &[0x60])
            .await
            .unwrap()
            .coins,
        27 + 2,
        "every script but the key's"
    );
}

/// The hot group statements (write-ahead, `sent`) stay linear in their group's size.
/// Each step of a statement carries what the next needs in its RETURNING: a join of
/// two CTEs, which the planner takes for one row each, ran as a nested loop (256 × 256
/// comparisons for a group of 256), and the write-ahead's "does the job hold another
/// UTXO?" anti-join scanned every held UTXO for each job. Found with `auto_explain`
/// during the pipeline-ceiling runs, where groups of 256 took 40–50 ms. Measured by the
/// plans' row counts, not by time. (The retry statement's UTXO updates still join a
/// CTE to the held-UTXO index, which the planner can order either way: retries are
/// rare, and `docs/benchmarks.md` says so.)
#[sqlx::test]
async fn group_statements_stay_linear_in_the_group_size(pool: PgPool) {
    use raregen::store::GroupStatement;
    const N: usize = 200;
    support::insert_queued(&pool, 2 * N as i64).await;
    // A pool of many coins, as in a day's run (the pipeline-ceiling example has one
    // per job).
    let utxos = support::insert_utxos(&pool, 20 * N as i64).await;
    // Statistics taken at rest, as autovacuum takes them before a run: no UTXO held,
    // no job in flight (the planner then takes the partial indexes for empty).
    sqlx::query("ANALYZE").execute(&pool).await.unwrap();
    let store = PgStore::new(pool.clone(), "owner-a");
    let batch = store.claim_batch(2 * N as u32).await.unwrap().unwrap();
    let sending = write_aheads(&batch.jobs, &utxos);
    // Half the jobs in flight already: their UTXOs are in the index of held ones.
    assert_eq!(
        store
            .record_sending(&sending[..N])
            .await
            .unwrap()
            .stored
            .len(),
        N
    );

    let sent: Vec<Sent> = sending[..N]
        .iter()
        .map(|s| Sent {
            fence: s.fence,
            sent_at: Utc::now(),
            change: Some((1, 5_000)),
        })
        .collect();
    // Each with the plan made for its arguments, and with the generic plan every
    // connection switches to after five runs.
    for generic in [false, true] {
        for (what, statement) in [
            ("write-ahead", GroupStatement::Sending(&sending[N..])),
            ("sent", GroupStatement::Sent(&sent)),
        ] {
            let plan = store.explain_group(statement, generic).await.unwrap();
            assert_linear(&plan, N, &format!("{what} (generic plan: {generic})"));
        }
    }

    // The plans ran in transactions rolled back: nothing changed.
    let now = statuses(&pool).await;
    assert_eq!(now.get("sending"), Some(&(N as i64)));
    assert_eq!(now.get("processing_batch"), Some(&(N as i64)));
}

/// A write-ahead record for each claimed job, on the UTXOs in order.
fn write_aheads(jobs: &[raregen_actors::ClaimedJob], utxos: &[i64]) -> Vec<Sending> {
    jobs.iter()
        .zip(utxos)
        .map(|(j, u)| Sending {
            fence: Fence {
                id: j.id,
                attempts: j.attempts,
            },
            utxo_id: *u,
            txid: fake_txid(j.id),
            raw_tx: vec![0xde, 0xad, j.id as u8],
        })
        .collect()
}

/// No node of the plan handles more than a few rows per job of the group: its rows
/// over all its loops, with those its filters removed.
fn assert_linear(plan: &serde_json::Value, n: usize, what: &str) {
    fn walk(node: &serde_json::Value, worst: &mut (f64, String)) {
        let loops = node["Actual Loops"].as_f64().unwrap_or(1.0);
        let rows = [
            "Actual Rows",
            "Rows Removed by Filter",
            "Rows Removed by Join Filter",
        ]
        .iter()
        .map(|k| node[*k].as_f64().unwrap_or(0.0))
        .sum::<f64>()
            * loops;
        if rows > worst.0 {
            let name = [
                "Node Type",
                "Relation Name",
                "CTE Name",
                "Index Name",
                "Subplan Name",
            ]
            .iter()
            .filter_map(|k| node[*k].as_str())
            .collect::<Vec<_>>()
            .join(" ");
            *worst = (rows, name);
        }
        for child in node["Plans"].as_array().into_iter().flatten() {
            walk(child, worst);
        }
    }
    let root = &plan[0]["Plan"];
    assert!(root.is_object(), "{what}: no plan in {plan}");
    let mut worst = (0.0, String::new());
    walk(root, &mut worst);
    assert!(
        worst.0 <= (10 * n) as f64,
        "{what}: the node `{}` handles {} rows for a group of {n} jobs (quadratic?)",
        worst.1,
        worst.0
    );
}

/// A sent job whose anchor a confirmed stranger spent (the node took the job's
/// transaction, then dropped it, and another spend of the coin was mined): the job and
/// its lane go back to the queue without anchors, under new fencing tokens, their
/// transactions kept; the lane's coins leave the pool; nothing else moves.
#[sqlx::test]
async fn a_sent_job_whose_anchor_a_stranger_spent_goes_back_with_its_lane(pool: PgPool) {
    use raregen_actors::{ClaimedJob, WatchStore};
    support::insert_queued(&pool, 5).await;
    let utxos = support::insert_utxos(&pool, 2).await;
    let store = PgStore::new(pool.clone(), "w1");
    let jobs = store.claim_batch(5).await.unwrap().unwrap().jobs;
    let (a, b, c, d, e) = (&jobs[0], &jobs[1], &jobs[2], &jobs[3], &jobs[4]);
    let fence = |j: &ClaimedJob| Fence {
        id: j.id,
        attempts: j.attempts,
    };
    // Job txids apart from the fake outpoints `insert_utxos` makes.
    let tx = |n: i64| fake_txid(0x1000 + n);
    let ahead = |j: &ClaimedJob, utxo: i64, n: i64| Sending {
        fence: fence(j),
        utxo_id: utxo,
        txid: tx(n),
        raw_tx: vec![n as u8],
    };
    let sent = |j: &ClaimedJob, sats: u64| Sent {
        fence: fence(j),
        sent_at: Utc::now(),
        change: Some((1, sats)),
    };
    let stored = |r: raregen_actors::SendingRecorded| assert_eq!(r.stored.len(), 1, "{r:?}");
    // a: sent on a pool coin; b: sent on a's change; c: sending on b's change.
    stored(
        store
            .record_sending(&[ahead(a, utxos[0], 1)])
            .await
            .unwrap(),
    );
    let c1 = store.record_sent(&[sent(a, 9_000)]).await.unwrap().utxos[0].id;
    stored(store.record_sending(&[ahead(b, c1, 2)]).await.unwrap());
    let c2 = store.record_sent(&[sent(b, 8_000)]).await.unwrap().utxos[0].id;
    stored(store.record_sending(&[ahead(c, c2, 3)]).await.unwrap());
    // e: refused once on another output of a's transaction; it waits with it as anchor.
    let m: i64 = sqlx::query_scalar(
        "INSERT INTO utxos (txid, vout, satoshis, script_pubkey) VALUES ($1, 5, 700, '\\x0014')
         RETURNING id",
    )
    .bind(tx(1))
    .fetch_one(&pool)
    .await
    .unwrap();
    stored(store.record_sending(&[ahead(e, m, 5)]).await.unwrap());
    let refused = Retry {
        fence: fence(e),
        error: "rejected by the node: min relay fee not met".into(),
        not_before: Utc::now(),
        reanchor: false,
        settles_dirty: false,
    };
    store.record_retry(&[refused], 5).await.unwrap();
    // d: sent on another pool coin, in another lane.
    stored(
        store
            .record_sending(&[ahead(d, utxos[1], 4)])
            .await
            .unwrap(),
    );
    store.record_sent(&[sent(d, 9_000)]).await.unwrap();

    let stranger = fake_txid(0xbeef);
    let set_aside = store
        .reanchor_sent(&tx(1), &stranger, "its anchor was spent by a stranger")
        .await
        .unwrap();
    assert_eq!(
        set_aside,
        vec![tx(1), tx(2), tx(3)],
        "root first, then down the lane"
    );

    type Row = (String, i32, Option<i64>, Option<String>, Option<Time>);
    let row = |id: i64| {
        let pool = pool.clone();
        async move {
            sqlx::query_as::<_, Row>(
                "SELECT status, attempts, anchor_utxo_id, txid, sent_at FROM publish_jobs WHERE id = $1",
            )
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    for j in [a, b, c] {
        assert_eq!(
            row(j.id).await,
            ("queued".into(), j.attempts + 1, None, None, None),
            "job {}: back without an anchor, under a new fencing token",
            j.id
        );
    }
    let (status, _, anchor, txid, _) = row(e.id).await;
    assert_eq!(
        (status.as_str(), anchor, txid),
        ("queued", None, None),
        "e's anchor can never exist"
    );
    let (status, attempts, _, txid, _) = row(d.id).await;
    assert_eq!(
        (status.as_str(), attempts, txid),
        ("sent", d.attempts, Some(tx(4))),
        "another lane is untouched"
    );

    let history: HashMap<String, bool> =
        sqlx::query_as::<_, (String, bool)>("SELECT txid, refused FROM job_transactions")
            .fetch_all(&pool)
            .await
            .unwrap()
            .into_iter()
            .collect();
    let expected: HashMap<String, bool> = [
        (tx(1), false),
        (tx(2), false),
        (tx(3), false),
        (tx(5), true),
    ]
    .into();
    assert_eq!(
        history, expected,
        "every transaction kept; only e's counts as a refusal"
    );

    let coin = |id: i64| {
        let pool = pool.clone();
        async move {
            sqlx::query_as::<_, (String, Option<String>, Option<i64>)>(
                "SELECT state, spent_by_txid, reserved_by FROM utxos WHERE id = $1",
            )
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    assert_eq!(
        coin(utxos[0]).await,
        ("spent".into(), Some(stranger.clone()), None)
    );
    for id in [c1, c2, m] {
        assert_eq!(
            coin(id).await.0,
            "retired",
            "utxo {id}: an output of the lane"
        );
    }
    assert_eq!(coin(utxos[1]).await.0, "spent");

    let batch: (i32, i32, i32, bool) =
        sqlx::query_as("SELECT sent, failed, retried, completed_at IS NOT NULL FROM batches")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(batch, (1, 0, 4, true), "sent, failed, retried, completed");

    // The broadcaster still on c is fenced out; a second run finds nothing.
    let late = store.record_sent(&[sent(c, 7_000)]).await.unwrap();
    assert!(late.ids.is_empty(), "{late:?}");
    assert!(store
        .reanchor_sent(&tx(1), &stranger, "again")
        .await
        .unwrap()
        .is_empty());
    // Claimed again, the jobs sign on fresh coins.
    let again = store.claim_batch(5).await.unwrap().unwrap().jobs;
    assert_eq!(again.len(), 4);
    assert!(
        again
            .iter()
            .all(|j| j.anchor.is_none() && j.stored_tx.is_none()),
        "{again:?}"
    );
}

/// A dirty coin is cleaned only while nothing live holds it: a job `sending` on it (its
/// outcome unknown, being settled by another process's DirtySettler) keeps it dirty,
/// so that no refusal of the job gives the coin back while a copy of its transaction
/// may still be mined.
#[sqlx::test]
async fn a_dirty_coin_is_cleaned_only_while_no_live_job_holds_it(pool: PgPool) {
    use raregen_actors::SettleStore;
    support::insert_queued(&pool, 1).await;
    let utxos = support::insert_utxos(&pool, 2).await;
    let store = PgStore::new(pool.clone(), "w1");
    let job = store.claim_batch(1).await.unwrap().unwrap().jobs.remove(0);
    let fence = Fence {
        id: job.id,
        attempts: job.attempts,
    };
    let ahead = Sending {
        fence,
        utxo_id: utxos[0],
        txid: fake_txid(0x2000),
        raw_tx: vec![1],
    };
    assert_eq!(
        store.record_sending(&[ahead]).await.unwrap().stored,
        vec![job.id]
    );
    assert_eq!(store.mark_dirty(&[fence]).await.unwrap(), vec![job.id]);
    let dirty = |id: i64| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, bool>("SELECT dirty FROM utxos WHERE id = $1")
                .bind(id)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    assert!(dirty(utxos[0]).await);
    assert_eq!(store.utxo_clean(utxos[0]).await.unwrap(), None);
    assert!(dirty(utxos[0]).await, "the sending job still holds it");
    // A dirty coin nothing holds (its spend settled elsewhere) is clean and back.
    sqlx::query("UPDATE utxos SET dirty = TRUE WHERE id = $1")
        .bind(utxos[1])
        .execute(&pool)
        .await
        .unwrap();
    let back = store.utxo_clean(utxos[1]).await.unwrap();
    assert_eq!(back.map(|u| u.id), Some(utxos[1]));
    assert!(!dirty(utxos[1]).await);
}

/// A re-anchor that runs while the lane grows: a child's `sent` (with its change) and
/// another job's write-ahead on a lane output land while the statement waits on a row
/// lock. Neither may leave a coin of the lane in the pool nor a job sending on a
/// retired coin (found by a read-only review: the statement's snapshot missed both).
#[sqlx::test]
async fn a_reanchor_sees_what_the_lane_gained_while_it_waited(pool: PgPool) {
    use raregen_actors::{ClaimedJob, WatchStore};
    support::insert_queued(&pool, 4).await;
    let utxos = support::insert_utxos(&pool, 1).await;
    let store = PgStore::new(pool.clone(), "w1");
    let jobs = store.claim_batch(4).await.unwrap().unwrap().jobs;
    let (a, b, c, e) = (
        jobs[0].clone(),
        jobs[1].clone(),
        jobs[2].clone(),
        jobs[3].clone(),
    );
    let fence = |j: &ClaimedJob| Fence {
        id: j.id,
        attempts: j.attempts,
    };
    let tx = |n: i64| fake_txid(0x2000 + n);
    let ahead = |j: &ClaimedJob, utxo: i64, n: i64| Sending {
        fence: fence(j),
        utxo_id: utxo,
        txid: tx(n),
        raw_tx: vec![n as u8],
    };
    let sent = |j: &ClaimedJob, sats: u64| Sent {
        fence: fence(j),
        sent_at: Utc::now(),
        change: Some((1, sats)),
    };
    // a sent on a pool coin, b sent on a's change, c sending on b's change; m is another
    // output of b's transaction, which e's write-ahead takes during the re-anchor.
    store
        .record_sending(&[ahead(&a, utxos[0], 1)])
        .await
        .unwrap();
    let c1 = store.record_sent(&[sent(&a, 9_000)]).await.unwrap().utxos[0].id;
    store.record_sending(&[ahead(&b, c1, 2)]).await.unwrap();
    let c2 = store.record_sent(&[sent(&b, 8_000)]).await.unwrap().utxos[0].id;
    store.record_sending(&[ahead(&c, c2, 3)]).await.unwrap();
    let m: i64 = sqlx::query_scalar(
        "INSERT INTO utxos (txid, vout, satoshis, script_pubkey) VALUES ($1, 5, 700, '\\x0014')
         RETURNING id",
    )
    .bind(tx(2))
    .fetch_one(&pool)
    .await
    .unwrap();

    // Another session holds b's row: the re-anchor waits on it.
    let mut holder = pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM publish_jobs WHERE id = $1 FOR UPDATE")
        .bind(b.id)
        .execute(&mut *holder)
        .await
        .unwrap();
    let reanchor = {
        let store = PgStore::new(pool.clone(), "w2");
        let root = tx(1);
        tokio::spawn(async move {
            store
                .reanchor_sent(
                    &root,
                    &fake_txid(0xbeef),
                    "its anchor was spent by a stranger",
                )
                .await
        })
    };
    // Until the re-anchor is waiting for a lock.
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        if waiting > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // The lane grows meanwhile: c is accepted (its change joins), e takes m.
    let writers = {
        let store = PgStore::new(pool.clone(), "w1");
        let (c, e) = (c.clone(), e.clone());
        let (sent_c, ahead_e) = (sent(&c, 7_000), ahead(&e, m, 5));
        tokio::spawn(async move {
            let sent = store.record_sent(&[sent_c]).await.unwrap();
            let ahead = store.record_sending(&[ahead_e]).await.unwrap();
            (sent, ahead)
        })
    };
    // Let the writers land first where they can (the old statement's window).
    let writers = match tokio::time::timeout(std::time::Duration::from_secs(2), writers).await {
        Ok(done) => {
            holder.commit().await.unwrap();
            done.unwrap()
        }
        Err(_) => panic!("the writers wait on nothing the test holds"),
    };
    let set_aside = reanchor.await.unwrap().unwrap();
    let _ = writers;
    assert!(set_aside.contains(&tx(1)), "{set_aside:?}");

    let live_on_lane: Vec<(i64, String, String)> = sqlx::query_as(
        "SELECT id, txid, state::text FROM utxos
         WHERE txid = ANY($1) AND state NOT IN ('retired', 'spent')",
    )
    .bind(vec![tx(1), tx(2), tx(3)])
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(
        live_on_lane.is_empty(),
        "outputs of transactions that can never be mined stay usable: {live_on_lane:?}"
    );
    let on_retired: Vec<(i64, String)> = sqlx::query_as(
        "SELECT j.id, j.status::text FROM publish_jobs j JOIN utxos x ON x.id = j.utxo_id
         WHERE j.status IN ('sending', 'sent') AND x.state = 'retired'",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(
        on_retired.is_empty(),
        "jobs left sending or sent on a coin that can never exist: {on_retired:?}"
    );
}

/// Cleaning a dirty coin is fenced by what holds it, and so is what it releases: a job
/// adopted from RareGen's batch worker in flight, held (`next_attempt_at = infinity`)
/// on that coin as its anchor, is let go only when the coin is cleaned. While a live
/// job still sends on the coin (its outcome unknown), neither happens.
#[sqlx::test]
async fn a_coin_still_held_is_not_cleaned_and_releases_no_held_job(pool: PgPool) {
    use raregen_actors::SettleStore;
    support::insert_queued(&pool, 2).await;
    let utxos = support::insert_utxos(&pool, 1).await;
    let coin = utxos[0];
    let ids: Vec<i64> = sqlx::query_scalar("SELECT id FROM publish_jobs ORDER BY id")
        .fetch_all(&pool)
        .await
        .unwrap();
    // The first job sends on the coin, its outcome unknown (the coin dirty); the second
    // waits, held, with the coin as its anchor.
    sqlx::query(
        "UPDATE utxos SET state = 'spending', dirty = TRUE, reserved_by = $2,
                spent_by_txid = repeat('a', 64)
         WHERE id = $1",
    )
    .bind(coin)
    .bind(ids[0])
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        "UPDATE publish_jobs SET status = 'sending', owner = 'w1', utxo_id = $2,
                anchor_utxo_id = $2, txid = repeat('a', 64), raw_tx = '\\x00'::bytea,
                sending_started_at = now()
         WHERE id = $1",
    )
    .bind(ids[0])
    .bind(coin)
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        "UPDATE publish_jobs SET anchor_utxo_id = $2, next_attempt_at = 'infinity' WHERE id = $1",
    )
    .bind(ids[1])
    .bind(coin)
    .execute(&pool)
    .await
    .unwrap();
    let store = PgStore::new(pool.clone(), "w1");
    assert_eq!(
        store.utxo_clean(coin).await.unwrap(),
        None,
        "held: not cleaned"
    );
    let held: bool =
        sqlx::query_scalar("SELECT next_attempt_at = 'infinity' FROM publish_jobs WHERE id = $1")
            .bind(ids[1])
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(
        held,
        "the held job was released on a coin that was not cleaned"
    );
    // Once nothing live holds it, the coin is cleaned and the held job released.
    sqlx::query("UPDATE publish_jobs SET status = 'failed', owner = NULL WHERE id = $1")
        .bind(ids[0])
        .execute(&pool)
        .await
        .unwrap();
    store.utxo_clean(coin).await.unwrap();
    let held: bool =
        sqlx::query_scalar("SELECT next_attempt_at = 'infinity' FROM publish_jobs WHERE id = $1")
            .bind(ids[1])
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(!held, "cleaned: the held job is let go");
}
