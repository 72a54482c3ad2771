SELECT status, sum(n)::bigint FROM job_counts
GROUP BY status HAVING sum(n) <> 0 ORDER BY status
