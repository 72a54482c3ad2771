-- Jobs finished ever (sent, failed), kept exact although the Pruner deletes finished
-- jobs: a deletion of finished jobs adds their count here, so that `job_counts` plus
-- this table is the number of jobs that ever reached each final state. The console's
-- rate chart (`GET /v1/rate`) samples it; insert-only deltas, folded by the same
-- compaction as `job_counts`.
CREATE TABLE job_counts_removed (
    status  TEXT NOT NULL,
    n       BIGINT NOT NULL
);

CREATE OR REPLACE FUNCTION raregen_count_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO job_counts (status, n)
    SELECT status, -count(*) FROM old_jobs GROUP BY status;
    INSERT INTO job_counts_removed (status, n)
    SELECT status, count(*) FROM old_jobs WHERE status IN ('sent', 'failed') GROUP BY status;
    RETURN NULL;
END;
$$;

CREATE OR REPLACE FUNCTION raregen_compact_job_counts() RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF NOT pg_try_advisory_xact_lock(hashtext('raregen_compact_job_counts')) THEN
        RETURN;
    END IF;
    WITH folded AS (
        DELETE FROM job_counts RETURNING status, n
    )
    INSERT INTO job_counts (status, n)
    SELECT status, sum(n) FROM folded GROUP BY status HAVING sum(n) <> 0;
    WITH folded AS (
        DELETE FROM job_counts_removed RETURNING status, n
    )
    INSERT INTO job_counts_removed (status, n)
    SELECT status, sum(n) FROM folded GROUP BY status HAVING sum(n) <> 0;
END;
$$;

CREATE OR REPLACE FUNCTION raregen_count_truncated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM job_counts;
    DELETE FROM job_counts_removed;
    RETURN NULL;
END;
$$;
