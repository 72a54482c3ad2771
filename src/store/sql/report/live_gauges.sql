SELECT
   count(*) FILTER (WHERE state = 'available' AND NOT dirty) AS available,
   COALESCE(sum(satoshis) FILTER (WHERE state = 'available' AND NOT dirty), 0)::bigint AS available_sats,
   count(*) FILTER (WHERE state IN ('reserved', 'spending') AND NOT dirty) AS reserved,
   count(*) FILTER (WHERE dirty AND state <> 'pending') AS dirty,
   count(*) FILTER (WHERE state = 'pending') AS pending,
   (SELECT COALESCE(EXTRACT(EPOCH FROM now() - min(sending_started_at)), 0)::float8
    FROM publish_jobs WHERE status = 'sending') AS oldest
FROM utxos WHERE state IN ('pending', 'available', 'reserved', 'spending')
