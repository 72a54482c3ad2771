-- Jobs per status, kept exact at any table size: every statement that inserts,
-- updates or deletes jobs adds one delta row per status it changed (a statement-level
-- trigger over its transition tables: one small INSERT per statement, however many
-- rows it touched). Readers sum the deltas; the compaction (`raregen_compact_job_counts`,
-- run by the metrics refresh) folds them into one row per status. Insert-only, so
-- concurrent writers never wait on a counter row; exact across restarts because the
-- deltas commit with the statements that made them.
CREATE TABLE job_counts (
    status  TEXT NOT NULL,
    n       BIGINT NOT NULL
);
CREATE INDEX job_counts_status_idx ON job_counts (status);

-- The jobs already there.
LOCK TABLE publish_jobs IN SHARE ROW EXCLUSIVE MODE;
INSERT INTO job_counts (status, n)
SELECT status, count(*) FROM publish_jobs GROUP BY status;

CREATE FUNCTION raregen_count_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO job_counts (status, n)
    SELECT status, count(*) FROM new_jobs GROUP BY status;
    RETURN NULL;
END;
$$;

CREATE FUNCTION raregen_count_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO job_counts (status, n)
    SELECT status, sum(d) FROM (
        SELECT status, 1 AS d FROM new_jobs
        UNION ALL
        SELECT status, -1 AS d FROM old_jobs
    ) moved
    GROUP BY status
    HAVING sum(d) <> 0;
    RETURN NULL;
END;
$$;

CREATE FUNCTION raregen_count_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO job_counts (status, n)
    SELECT status, -count(*) FROM old_jobs GROUP BY status;
    RETURN NULL;
END;
$$;

CREATE TRIGGER publish_jobs_count_inserted AFTER INSERT ON publish_jobs
    REFERENCING NEW TABLE AS new_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION raregen_count_inserted();
CREATE TRIGGER publish_jobs_count_updated AFTER UPDATE ON publish_jobs
    REFERENCING OLD TABLE AS old_jobs NEW TABLE AS new_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION raregen_count_updated();
CREATE TRIGGER publish_jobs_count_deleted AFTER DELETE ON publish_jobs
    REFERENCING OLD TABLE AS old_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION raregen_count_deleted();

-- Folds the deltas into one row per status. One compaction at a time (an advisory
-- lock, skipped when another holds it); readers see the deltas or their sum, never a
-- mix, since it commits as one.
CREATE FUNCTION raregen_compact_job_counts() RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF NOT pg_try_advisory_xact_lock(hashtext('raregen_compact_job_counts')) THEN
        RETURN;
    END IF;
    WITH folded AS (
        DELETE FROM job_counts RETURNING status, n
    )
    INSERT INTO job_counts (status, n)
    SELECT status, sum(n) FROM folded GROUP BY status HAVING sum(n) <> 0;
END;
$$;
