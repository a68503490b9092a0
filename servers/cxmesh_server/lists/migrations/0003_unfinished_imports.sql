-- Imports not in a final state, across tenants, for the sweeper that fails those whose
-- process died. Returns ids and the advisory lock key their worker holds; nothing else.
CREATE FUNCTION unfinished_imports()
    RETURNS TABLE (tenant_id text, import_id text, lock_id bigint)
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = lists
    AS $$
        SELECT tenant_id, import_id,
               ('x' || substr(encode(sha256(convert_to('cxmesh-import:' || import_id, 'UTF8')), 'hex'), 1, 16))::bit(64)::bigint
        FROM lists.imports
        WHERE state IN (1, 2) AND create_time < now() - interval '30 seconds'
    $$;
REVOKE ALL ON FUNCTION unfinished_imports() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION unfinished_imports() TO cxmesh_app;
