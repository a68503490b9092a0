-- The tenants that have suppression lists, for the mirror rebuild at startup. The only
-- cross-tenant read of the service: it returns tenant ids and nothing else.
CREATE FUNCTION suppression_tenants() RETURNS TABLE (tenant_id text)
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = lists
    AS $$ SELECT DISTINCT tenant_id FROM lists.suppression_lists $$;
REVOKE ALL ON FUNCTION suppression_tenants() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION suppression_tenants() TO cxmesh_app;
