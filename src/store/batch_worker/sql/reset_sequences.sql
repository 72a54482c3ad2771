SELECT setval(pg_get_serial_sequence('publish_jobs', 'id'),
       GREATEST((SELECT max(id) FROM publish_jobs), 1)),
setval(pg_get_serial_sequence('utxos', 'id'),
       GREATEST((SELECT max(id) FROM utxos), 1))
