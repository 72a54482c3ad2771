//! Submission: validated jobs inserted in one statement, idempotency keys honoured.

use std::collections::HashMap;

use raregen_actors::ports::{JobId, StoreError};
use sqlx::Row;

use super::{store_error, PgStore};

/// A validated job, ready to insert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewJob {
    pub payload: Vec<u8>,
    pub idempotency_key: Option<String>,
    pub priority: i16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InsertOutcome {
    /// A new job.
    Created(JobId),
    /// The idempotency key names a job with the same payload: that job.
    Existing(JobId),
    /// The idempotency key names a job with another payload.
    Conflict(JobId),
}

impl InsertOutcome {
    pub fn id(self) -> JobId {
        match self {
            InsertOutcome::Created(id)
            | InsertOutcome::Existing(id)
            | InsertOutcome::Conflict(id) => id,
        }
    }
}

impl PgStore {
    /// Inserts one job, honouring its idempotency key.
    pub async fn insert_job(&self, job: &NewJob) -> Result<InsertOutcome, StoreError> {
        let mut outcomes = self.insert_jobs(std::slice::from_ref(job)).await?;
        Ok(outcomes.pop().expect("one outcome per job"))
    }

    /// Inserts jobs all or nothing, in one transaction: the outcomes are in the order of
    /// `jobs`. When any outcome is a [`InsertOutcome::Conflict`] nothing is inserted and
    /// the outcomes say which jobs conflicted.
    pub async fn insert_jobs(&self, jobs: &[NewJob]) -> Result<Vec<InsertOutcome>, StoreError> {
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        // Within the request, a repeated key must carry the same payload; later copies
        // become the first one's job.
        let mut first_with_key: HashMap<&str, usize> = HashMap::new();
        let mut alias: Vec<Option<usize>> = vec![None; jobs.len()];
        let mut conflict_in_request = vec![false; jobs.len()];
        for (i, job) in jobs.iter().enumerate() {
            if let Some(key) = job.idempotency_key.as_deref() {
                match first_with_key.get(key) {
                    Some(&first) if jobs[first].payload == job.payload => alias[i] = Some(first),
                    Some(&first) => {
                        alias[i] = Some(first);
                        conflict_in_request[i] = true;
                    }
                    None => {
                        first_with_key.insert(key, i);
                    }
                }
            }
        }
        let unique: Vec<usize> = (0..jobs.len()).filter(|&i| alias[i].is_none()).collect();
        let mut outcome: Vec<Option<InsertOutcome>> = vec![None; jobs.len()];

        let mut tx = self.pool.begin().await.map_err(store_error)?;
        // Keys already stored are answered from the table, before any id is drawn: a
        // replay must not consume ids from the sequence.
        let keys: Vec<&str> = unique
            .iter()
            .filter_map(|&i| jobs[i].idempotency_key.as_deref())
            .collect();
        if !keys.is_empty() {
            let existing = stored_keys(&mut tx, &keys).await?;
            for &i in &unique {
                if let Some(key) = jobs[i].idempotency_key.as_deref() {
                    outcome[i] = existing.get(key).map(|stored| stored.outcome_for(&jobs[i]));
                }
            }
        }
        let new: Vec<usize> = unique
            .iter()
            .copied()
            .filter(|&i| outcome[i].is_none())
            .collect();

        if !new.is_empty() {
            // Ids are taken first so that each job's id is known by its position; the
            // insert then names them explicitly. A key first submitted by two requests
            // at once is still drawn an id by both, and the loser's id is left unused
            // (a gap in the ids, nothing more); the ON CONFLICT below settles the race.
            let ids: Vec<i64> = sqlx::query_scalar(
                "SELECT nextval(pg_get_serial_sequence('publish_jobs', 'id')) FROM generate_series(1, $1)",
            )
            .bind(new.len() as i64)
            .fetch_all(&mut *tx)
            .await
            .map_err(store_error)?;
            let payloads: Vec<&[u8]> = new.iter().map(|&i| jobs[i].payload.as_slice()).collect();
            let keys: Vec<Option<&str>> = new
                .iter()
                .map(|&i| jobs[i].idempotency_key.as_deref())
                .collect();
            let priorities: Vec<i16> = new.iter().map(|&i| jobs[i].priority).collect();
            let inserted: Vec<i64> = sqlx::query_scalar(include_str!("sql/submit/insert_jobs.sql"))
                .bind(&ids)
                .bind(&payloads)
                .bind(&keys)
                .bind(&priorities)
                .fetch_all(&mut *tx)
                .await
                .map_err(store_error)?;

            let inserted: std::collections::HashSet<i64> = inserted.into_iter().collect();
            let mut raced_keys: Vec<&str> = Vec::new();
            for (slot, &i) in new.iter().enumerate() {
                if inserted.contains(&ids[slot]) {
                    outcome[i] = Some(InsertOutcome::Created(ids[slot]));
                } else {
                    raced_keys.push(
                        jobs[i]
                            .idempotency_key
                            .as_deref()
                            .expect("only keyed jobs conflict"),
                    );
                }
            }
            if !raced_keys.is_empty() {
                // Another transaction stored these keys after the look-up above.
                let existing = stored_keys(&mut tx, &raced_keys).await?;
                for &i in &new {
                    if outcome[i].is_some() {
                        continue;
                    }
                    let key = jobs[i].idempotency_key.as_deref().expect("keyed");
                    let stored = existing.get(key).ok_or_else(|| {
                        StoreError::Other(format!(
                            "job with idempotency key {key:?} vanished during insert"
                        ))
                    })?;
                    outcome[i] = Some(stored.outcome_for(&jobs[i]));
                }
            }
        }
        for i in 0..jobs.len() {
            if let Some(first) = alias[i] {
                let id = outcome[first].expect("first copy decided").id();
                outcome[i] = Some(if conflict_in_request[i] {
                    InsertOutcome::Conflict(id)
                } else {
                    InsertOutcome::Existing(id)
                });
            }
        }
        let outcome: Vec<InsertOutcome> =
            outcome.into_iter().map(|o| o.expect("decided")).collect();
        if outcome
            .iter()
            .any(|o| matches!(o, InsertOutcome::Conflict(_)))
        {
            tx.rollback().await.map_err(store_error)?;
        } else {
            tx.commit().await.map_err(store_error)?;
        }
        Ok(outcome)
    }
}

/// A job already stored under an idempotency key.
struct StoredKey {
    id: JobId,
    payload: Vec<u8>,
}

impl StoredKey {
    /// The same payload is that job; another payload is a conflict.
    fn outcome_for(&self, job: &NewJob) -> InsertOutcome {
        if self.payload == job.payload {
            InsertOutcome::Existing(self.id)
        } else {
            InsertOutcome::Conflict(self.id)
        }
    }
}

/// The jobs stored under `keys`, by key.
async fn stored_keys(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    keys: &[&str],
) -> Result<HashMap<String, StoredKey>, StoreError> {
    let rows = sqlx::query(
        "SELECT id, idempotency_key, payload FROM publish_jobs WHERE idempotency_key = ANY($1)",
    )
    .bind(keys)
    .fetch_all(&mut **tx)
    .await
    .map_err(store_error)?;
    Ok(rows
        .into_iter()
        .map(|r| {
            (
                r.get("idempotency_key"),
                StoredKey {
                    id: r.get("id"),
                    payload: r.get("payload"),
                },
            )
        })
        .collect())
}
