-- Rule sets: the proto itself is the body (one shape for storage, mirror and API).
CREATE TABLE rule_sets (
    tenant_id text NOT NULL,
    rule_set_id text NOT NULL,
    display_name text NOT NULL,
    revision bigint NOT NULL,
    body bytea NOT NULL,              -- a serialized cxmesh.compliance.v1.RuleSet
    etag text NOT NULL,
    request_id text,
    create_time timestamptz NOT NULL DEFAULT now(),
    update_time timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, rule_set_id),
    UNIQUE (tenant_id, request_id)
);

-- Who changed a rule set, when, and what it was before and after.
CREATE TABLE audit_events (
    tenant_id text NOT NULL,
    rule_set_id text NOT NULL,
    event_id bigint GENERATED ALWAYS AS IDENTITY,
    actor text NOT NULL,
    event_time timestamptz NOT NULL DEFAULT now(),
    before bytea,
    after bytea,
    PRIMARY KEY (tenant_id, event_id)
);
CREATE INDEX audit_events_by_rule_set ON audit_events (tenant_id, rule_set_id, event_id DESC);

DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['rule_sets', 'audit_events'] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format(
            'CREATE POLICY tenant_isolation ON %I '
            'USING (tenant_id = current_setting(''cxmesh.tenant'', true)) '
            'WITH CHECK (tenant_id = current_setting(''cxmesh.tenant'', true))', t);
    END LOOP;
END $$;

CREATE FUNCTION rule_set_tenants() RETURNS TABLE (tenant_id text)
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = compliance
    AS $$ SELECT DISTINCT tenant_id FROM compliance.rule_sets $$;
REVOKE ALL ON FUNCTION rule_set_tenants() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION rule_set_tenants() TO cxmesh_app;
