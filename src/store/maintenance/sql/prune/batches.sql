DELETE FROM batches WHERE id IN (
SELECT id FROM batches
WHERE completed_at IS NOT NULL AND completed_at < now() - make_interval(secs => $1)
ORDER BY completed_at LIMIT $2)
