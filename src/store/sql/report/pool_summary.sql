SELECT
   count(*) FILTER (WHERE state = 'available' AND NOT dirty) AS available,
   COALESCE(sum(satoshis) FILTER (WHERE state = 'available' AND NOT dirty), 0)::bigint AS available_sats,
   count(*) FILTER (WHERE state IN ('reserved', 'spending') AND NOT dirty) AS reserved,
   COALESCE(sum(satoshis) FILTER (WHERE state IN ('reserved', 'spending') AND NOT dirty), 0)::bigint AS reserved_sats,
   count(*) FILTER (WHERE dirty AND state IN ('available', 'reserved', 'spending')) AS dirty,
   COALESCE(sum(satoshis) FILTER (WHERE dirty AND state IN ('available', 'reserved', 'spending')), 0)::bigint AS dirty_sats,
   count(*) FILTER (WHERE state = 'pending') AS pending,
   (SELECT GREATEST(reltuples, 0)::bigint FROM pg_class
    WHERE oid = 'utxos_finished_idx'::regclass) AS finished
FROM utxos WHERE state IN ('pending', 'available', 'reserved', 'spending')
