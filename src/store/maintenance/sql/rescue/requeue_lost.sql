UPDATE publish_jobs SET status = 'queued', owner = NULL, updated_at = now()
WHERE status = 'processing_batch' AND raw_tx IS NULL AND owner = $1
  AND claimed_at < now() - make_interval(secs => $2)
  AND id <> ALL($3)
