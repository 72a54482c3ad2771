SELECT COALESCE(sum(n) FILTER (WHERE status = 'sent'), 0)::bigint,
       COALESCE(sum(n) FILTER (WHERE status = 'failed'), 0)::bigint
FROM (SELECT status, n FROM job_counts WHERE status IN ('sent', 'failed')
      UNION ALL
      SELECT status, n FROM job_counts_removed) totals
