-- Upkeep of job_counts and of the Collector's wake-up.

-- A recount from the table, safe beside a compaction (it waits for the compaction's
-- lock) and beside writers (SHARE mode: they wait for the recount, not the reverse
-- mid-way).
CREATE FUNCTION raregen_recount_job_counts() RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('raregen_compact_job_counts'));
    LOCK TABLE publish_jobs IN SHARE MODE;
    DELETE FROM job_counts;
    INSERT INTO job_counts (status, n)
    SELECT status, count(*) FROM publish_jobs GROUP BY status;
END;
$$;

-- TRUNCATE fires no row or transition triggers: it empties the counts with the table.
CREATE FUNCTION raregen_count_truncated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM job_counts;
    RETURN NULL;
END;
$$;
CREATE TRIGGER publish_jobs_count_truncated AFTER TRUNCATE ON publish_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION raregen_count_truncated();

-- Jobs that come back to the queue by an UPDATE (a retry after its backoff is due
-- later, but also a dead process's claims, jobs handed back at a shutdown, an
-- operator's requeue) wake the Collectors as an insert does.
CREATE OR REPLACE FUNCTION raregen_count_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO job_counts (status, n)
    SELECT status, sum(d) FROM (
        SELECT status, 1 AS d FROM new_jobs
        UNION ALL
        SELECT status, -1 AS d FROM old_jobs
    ) moved
    GROUP BY status
    HAVING sum(d) <> 0;
    IF EXISTS (SELECT 1 FROM new_jobs n JOIN old_jobs o USING (id)
               WHERE n.status = 'queued' AND o.status <> 'queued') THEN
        PERFORM pg_notify('raregen_jobs', '');
    END IF;
    RETURN NULL;
END;
$$;

-- Readers sum by status over a handful of rows: the index only cost writes.
DROP INDEX job_counts_status_idx;
