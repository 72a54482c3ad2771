SELECT count(*) FROM workers
WHERE mode IN ('batch', 'single', 'cli')
  AND lease_until > now() - make_interval(secs => $1)
