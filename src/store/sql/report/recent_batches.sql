SELECT id, owner, size, sent, failed, retried, created_at, completed_at
FROM batches ORDER BY id DESC LIMIT $1
