WITH counts AS (
    SELECT status, sum(n)::bigint AS count FROM job_counts
    GROUP BY status HAVING sum(n) <> 0
), live AS (
    SELECT status, COUNT(DISTINCT processing_batch_id) AS batches
    FROM publish_jobs WHERE status IN ('processing_batch', 'sending')
    GROUP BY status
)
SELECT c.status, c.count, COALESCE(l.batches, 0) AS batches
FROM counts c LEFT JOIN live l USING (status) ORDER BY c.status
