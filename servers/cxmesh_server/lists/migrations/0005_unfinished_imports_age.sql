-- The sweeper decides how old an unfinished import must be before it is checked.
DROP FUNCTION unfinished_imports();
CREATE FUNCTION unfinished_imports(min_age interval)
    RETURNS TABLE (tenant_id text, import_id text, lock_id bigint)
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = lists
    AS $$
        SELECT tenant_id, import_id,
               ('x' || substr(encode(sha256(convert_to('cxmesh-import:' || import_id, 'UTF8')), 'hex'), 1, 16))::bit(64)::bigint
        FROM lists.imports
        WHERE state IN (1, 2) AND create_time < now() - min_age
    $$;
REVOKE ALL ON FUNCTION unfinished_imports(interval) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION unfinished_imports(interval) TO cxmesh_app;
