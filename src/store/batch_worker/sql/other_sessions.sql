SELECT DISTINCT COALESCE(NULLIF(application_name, ''), 'unnamed')
       || ' from ' || COALESCE(host(client_addr), 'a local socket')
FROM pg_stat_activity
WHERE datname = current_database() AND pid <> pg_backend_pid()
  -- (NULL: another role's session, whose details this role may not see.)
  AND COALESCE(backend_type, 'client backend') = 'client backend'
  AND application_name IS DISTINCT FROM 'raregen'
ORDER BY 1
