SELECT t.txid, t.raw_tx FROM job_transactions t
JOIN publish_jobs j ON j.id = t.job_id
WHERE j.txid = $1 AND j.status = 'sent'
ORDER BY t.created_at
