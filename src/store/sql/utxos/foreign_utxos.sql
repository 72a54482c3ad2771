SELECT script_pubkey, count(*), coalesce(sum(satoshis), 0)::bigint,
       sum(count(*)) OVER ()::bigint, sum(coalesce(sum(satoshis), 0)) OVER ()::bigint,
       count(*) OVER ()
FROM utxos
WHERE state IN ('pending', 'available', 'reserved', 'spending')
  AND script_pubkey <> $1
GROUP BY script_pubkey ORDER BY count(*) DESC LIMIT 5
