-- Tenants are the registry itself: a tenant sees its own row; platform operators work in
-- the '*' scope.
CREATE TABLE tenants (
    tenant_id text PRIMARY KEY,
    display_name text NOT NULL,
    default_time_zone text NOT NULL,
    default_region text NOT NULL,
    request_id text UNIQUE,
    create_time timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE tenants ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenants FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON tenants
    USING (tenant_id = current_setting('cxmesh.tenant', true)
           OR current_setting('cxmesh.tenant', true) = '*')
    WITH CHECK (tenant_id = current_setting('cxmesh.tenant', true)
                OR current_setting('cxmesh.tenant', true) = '*');

-- API keys: only the SHA-256 of the secret is stored.
CREATE TABLE api_keys (
    tenant_id text NOT NULL REFERENCES tenants (tenant_id),
    api_key_id text NOT NULL,
    display_name text NOT NULL,
    roles text[] NOT NULL,
    key_hash text NOT NULL UNIQUE,
    key_prefix text NOT NULL,
    request_id text,
    create_time timestamptz NOT NULL DEFAULT now(),
    revoke_time timestamptz,
    PRIMARY KEY (tenant_id, api_key_id),
    UNIQUE (tenant_id, request_id)
);
CREATE INDEX api_keys_by_time ON api_keys (tenant_id, create_time DESC, api_key_id);
ALTER TABLE api_keys ENABLE ROW LEVEL SECURITY;
ALTER TABLE api_keys FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON api_keys
    USING (tenant_id = current_setting('cxmesh.tenant', true))
    WITH CHECK (tenant_id = current_setting('cxmesh.tenant', true));
