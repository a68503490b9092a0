-- The version of each tenant's table of callback services, raised by every publication.
CREATE TABLE service_tables (
    tenant_id text PRIMARY KEY,
    version bigint NOT NULL,
    publish_time timestamptz NOT NULL DEFAULT now()
);
