//! The copy of every row across, once the batch worker's tables are set aside.

use anyhow::Context;
use sqlx::{Postgres, Transaction};

use super::*;

pub(super) async fn copy_rows(
    tx: &mut Transaction<'_, Postgres>,
    seed_jobs: &str,
    script_pubkey: &[u8],
) -> anyhow::Result<Adopted> {
    let steps: Vec<(&str, String)> = vec![
        // Statistics for the planner (a database loaded in bulk may have none yet).
        ("analysing", format!("ANALYZE {ASIDE_SCHEMA}.publish_jobs, {ASIDE_SCHEMA}.utxos")),
        (
            "linking the batch worker's jobs to their coins",
            // Per coin a job names: the lowest in-flight job naming it (the one that may
            // hold it: a coin claimed twice anchors one job), and the txid of a sent job
            // that spent it.
            format!(
                "CREATE TEMP TABLE seed_links ON COMMIT DROP AS
                 SELECT utxo_id,
                        min(id) FILTER (WHERE in_flight) AS in_flight_job,
                        min(txid) FILTER (WHERE status = 'sent' AND txid IS NOT NULL) AS spent_by
                 FROM ({seed_jobs}) j WHERE utxo_id IS NOT NULL GROUP BY utxo_id"
            ),
        ),
        // Temporary tables have no statistics until analysed (autovacuum never sees
        // them): without, the planner joins a million jobs to them by nested loops.
        ("analysing", "ANALYZE seed_links".to_owned()),
        (
            "choosing the anchors of the jobs in flight",
            format!(
                "CREATE TEMP TABLE seed_anchors ON COMMIT DROP AS
                 SELECT l.utxo_id, l.in_flight_job AS job_id
                 FROM seed_links l JOIN {ASIDE_SCHEMA}.utxos u ON u.id = l.utxo_id
                 WHERE l.in_flight_job IS NOT NULL AND l.spent_by IS NULL"
            ),
        ),
        ("analysing", "ANALYZE seed_anchors".to_owned()),
        (
            "copying the batch worker's UTXOs",
            // Spent by a sent job: spent. An in-flight job's coin: its anchor, reserved by
            // it and dirty (its transaction may be live). Any other coin a job named, or
            // dirty or reserved in the batch worker: dirty (the node is asked before anyone spends
            // it). The rest: clean.
            format!(
                "INSERT INTO utxos (id, txid, vout, satoshis, script_pubkey, state, dirty,
                                    reserved_at, reserved_by, spent_by_txid, created_at, updated_at)
                 SELECT u.id, lower(u.txid), u.vout, u.satoshis, $1,
                        CASE WHEN l.spent_by IS NOT NULL THEN 'spent'
                             WHEN a.job_id IS NOT NULL THEN 'reserved'
                             ELSE 'available' END,
                        CASE WHEN l.spent_by IS NOT NULL THEN FALSE
                             ELSE a.job_id IS NOT NULL OR l.utxo_id IS NOT NULL
                                  OR COALESCE(u.dirty, FALSE) OR u.reserved_at IS NOT NULL END,
                        CASE WHEN l.spent_by IS NULL AND a.job_id IS NOT NULL
                             THEN COALESCE(u.reserved_at, now()) END,
                        CASE WHEN l.spent_by IS NULL THEN a.job_id END,
                        l.spent_by, COALESCE(u.created_at, now()), now()
                 FROM {ASIDE_SCHEMA}.utxos u
                 LEFT JOIN seed_links l ON l.utxo_id = u.id
                 LEFT JOIN seed_anchors a ON a.utxo_id = u.id"
            ),
        ),
        (
            "numbering the batch worker's batches",
            format!(
                "CREATE TEMP TABLE seed_batches ON COMMIT DROP AS
                 SELECT batch_key, nextval(pg_get_serial_sequence('batches', 'id')) AS id,
                        count(*) AS size,
                        count(*) FILTER (WHERE status = 'sent') AS sent,
                        count(*) FILTER (WHERE status = 'failed') AS failed,
                        count(*) FILTER (WHERE status NOT IN ('sent', 'failed')) AS retried,
                        -- Completed at the adoption: retention counts from it.
                        min(created_at) AS created_at, now() AS completed_at
                 FROM ({seed_jobs}) j WHERE batch_key IS NOT NULL GROUP BY batch_key"
            ),
        ),
        ("analysing", "ANALYZE seed_batches, utxos".to_owned()),
        (
            "copying the batch worker's batches",
            include_str!("sql/copy_batches.sql")
                .to_owned(),
        ),
        (
            "copying the batch worker's jobs",
            // queued → queued; processing_batch not yet sending → queued (no transaction
            // of it can exist); in flight with a coin → queued but held (next_attempt_at
            // 'infinity') on that coin until the DirtySettler has asked the node; in
            // flight with no coin → failed, never signed again; sent → sent, taken as
            // final (the batch worker kept no confirmations, nor the signed bytes); failed →
            // failed. Finished jobs keep their batch.
            format!(
                "INSERT INTO publish_jobs (id, status, payload, attempts, next_attempt_at, last_error,
                                           processing_batch_id, batch_seq, utxo_id, anchor_utxo_id,
                                           txid, sending_started_at, sent_at, confirmed_at,
                                           created_at, updated_at)
                 SELECT j.id, f.status, j.payload, j.attempts,
                        CASE WHEN a.job_id IS NOT NULL THEN 'infinity'::timestamptz ELSE now() END,
                        CASE WHEN j.status = 'sent' AND j.txid IS NULL
                                 THEN 'adopted from the batch worker: marked sent with no txid on record'
                             WHEN a.job_id IS NOT NULL
                                 THEN 'adopted from the batch worker in flight (seed txid: '
                                      || COALESCE(j.txid, 'not recorded')
                                      || '): held until the node has been asked about its coin'
                             WHEN j.in_flight
                                 THEN 'adopted from the batch worker in flight with no coin of its own on '
                                      || 'record (seed txid: ' || COALESCE(j.txid, 'not recorded')
                                      || '): never signed again, since the batch worker may have published '
                                      || 'it; submit it again if the chain does not have it'
                             ELSE j.error END,
                        CASE WHEN f.finished THEN b.id END,
                        CASE WHEN f.finished AND j.batch_seq > 0 THEN j.batch_seq END,
                        CASE WHEN f.status = 'sent' THEN x.id END,
                        CASE WHEN a.job_id IS NOT NULL THEN a.utxo_id
                             WHEN f.status = 'sent' THEN x.id END,
                        CASE WHEN f.status = 'sent' THEN j.txid END,
                        CASE WHEN f.finished THEN j.sending_started_at END,
                        CASE WHEN f.status = 'sent' THEN COALESCE(j.sent_at, j.updated_at) END,
                        -- Taken as final at adoption (and kept `retention.keep` from it).
                        CASE WHEN f.status = 'sent' THEN now() END,
                        j.created_at, now()
                 FROM ({seed_jobs}) j
                 LEFT JOIN seed_anchors a ON a.job_id = j.id
                 LEFT JOIN seed_batches b ON b.batch_key = j.batch_key
                 LEFT JOIN utxos x ON x.id = j.utxo_id
                 CROSS JOIN LATERAL (
                     SELECT CASE WHEN j.status = 'sent' AND j.txid IS NOT NULL THEN 'sent'
                                 WHEN j.status IN ('sent', 'failed') THEN 'failed'
                                 WHEN j.in_flight AND a.job_id IS NULL THEN 'failed'
                                 ELSE 'queued' END AS status
                 ) s0
                 CROSS JOIN LATERAL (SELECT s0.status, s0.status <> 'queued' AS finished) f"
            ),
        ),
        (
            "recording the jobs adopted in flight",
            format!(
                "INSERT INTO seed_in_flight (job_id, seed_txid)
                 SELECT id, txid FROM ({seed_jobs}) j WHERE j.in_flight"
            ),
        ),
        (
            "moving the id sequences past the batch worker's ids",
            include_str!("sql/reset_sequences.sql")
                .to_owned(),
        ),
    ];
    for (what, sql) in steps {
        // Progress: each step of a big table takes a while.
        let started = std::time::Instant::now();
        tracing::info!("adopting the batch worker's database: {what}");
        let query = sqlx::query(&sql);
        let query = if sql.contains("$1") {
            query.bind(script_pubkey)
        } else {
            query
        };
        query
            .execute(&mut **tx)
            .await
            .with_context(|| format!("adopting the batch worker's database: {what}"))?;
        tracing::info!(elapsed = ?started.elapsed(), "adopting the batch worker's database: {what}: done");
    }
    let adopted: Adopted = sqlx::query_as(&format!(
        "SELECT count(*) FILTER (WHERE j.status = 'queued' AND NOT j.in_flight) AS queued,
                count(*) FILTER (WHERE j.status = 'processing_batch' AND NOT j.in_flight) AS requeued,
                count(a.job_id) AS held,
                count(*) FILTER (WHERE j.in_flight AND a.job_id IS NULL) AS in_doubt_failed,
                count(*) FILTER (WHERE j.status = 'sent' AND j.txid IS NOT NULL) AS sent,
                count(*) FILTER (WHERE j.status = 'failed' OR (j.status = 'sent' AND j.txid IS NULL))
                    AS failed,
                (SELECT count(*) FROM utxos WHERE state = 'available' AND NOT dirty) AS utxos_clean,
                (SELECT count(*) FROM utxos WHERE dirty) AS utxos_dirty,
                (SELECT count(*) FROM utxos WHERE state = 'spent') AS utxos_spent
         FROM ({seed_jobs}) j LEFT JOIN seed_anchors a ON a.job_id = j.id"
    ))
    .fetch_one(&mut **tx)
    .await
    .context("counting what was adopted")?;
    Ok(adopted)
}
