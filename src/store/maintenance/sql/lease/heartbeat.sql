INSERT INTO workers (id, hostname, pid, mode, lease_until)
VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5))
ON CONFLICT (id) DO UPDATE
SET heartbeat_at = now(), lease_until = EXCLUDED.lease_until
WHERE workers.stopped_at IS NULL
RETURNING 1
