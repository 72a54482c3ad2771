INSERT INTO batches (id, owner, size, sent, failed, retried, created_at, completed_at)
SELECT id, 'seed', size, sent, failed, retried, created_at, completed_at
FROM seed_batches
