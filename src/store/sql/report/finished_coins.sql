SELECT count(*) FILTER (WHERE state = 'spent'), count(*) FILTER (WHERE state = 'retired')
FROM utxos WHERE state IN ('spent', 'retired')
