-- Contact lists and their records.
CREATE TABLE contact_lists (
    tenant_id text NOT NULL,
    list_id text NOT NULL,
    display_name text NOT NULL,
    description text NOT NULL DEFAULT '',
    default_region text NOT NULL,
    custom_field_names text[] NOT NULL DEFAULT '{}',
    request_id text,
    etag text NOT NULL,
    create_time timestamptz NOT NULL DEFAULT now(),
    update_time timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, list_id),
    UNIQUE (tenant_id, display_name),
    UNIQUE (tenant_id, request_id)
);

CREATE TABLE records (
    tenant_id text NOT NULL,
    list_id text NOT NULL,
    record_id bigint GENERATED ALWAYS AS IDENTITY,
    -- client id, else first device: what makes two rows the same contact in a list
    dedupe_key text NOT NULL,
    client_id text NOT NULL DEFAULT '',
    first_name text NOT NULL DEFAULT '',
    last_name text NOT NULL DEFAULT '',
    company text NOT NULL DEFAULT '',
    device_types smallint[] NOT NULL DEFAULT '{}',
    device_addresses text[] NOT NULL DEFAULT '{}',
    device_raw text[] NOT NULL DEFAULT '{}',
    postal_code text NOT NULL DEFAULT '',
    state_province text NOT NULL DEFAULT '',
    country text NOT NULL DEFAULT '',
    time_zone text NOT NULL DEFAULT '',
    time_zone_source smallint NOT NULL DEFAULT 0,
    candidate_time_zones text[] NOT NULL DEFAULT '{}',
    custom_fields jsonb NOT NULL DEFAULT '{}',
    status smallint NOT NULL DEFAULT 1,
    suppression_lists text[] NOT NULL DEFAULT '{}',
    import_id text,
    create_time timestamptz NOT NULL DEFAULT now(),
    update_time timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, list_id, record_id),
    UNIQUE (tenant_id, list_id, dedupe_key),
    FOREIGN KEY (tenant_id, list_id) REFERENCES contact_lists ON DELETE CASCADE
);

-- One load of a file into a list.
CREATE TABLE imports (
    tenant_id text NOT NULL,
    list_id text NOT NULL,
    import_id text NOT NULL,
    mode smallint NOT NULL,
    file_format bytea,            -- a serialized cxmesh.lists.v1.FileFormat
    specification text NOT NULL DEFAULT '',
    file_name text NOT NULL DEFAULT '',
    source smallint NOT NULL,
    state smallint NOT NULL,
    rows_read bigint NOT NULL DEFAULT 0,
    rows_accepted bigint NOT NULL DEFAULT 0,
    rows_rejected bigint NOT NULL DEFAULT 0,
    rows_suppressed bigint NOT NULL DEFAULT 0,
    rows_duplicate bigint NOT NULL DEFAULT 0,
    bytes_read bigint NOT NULL DEFAULT 0,
    failure_reason text NOT NULL DEFAULT '',
    cancel_requested boolean NOT NULL DEFAULT false,
    request_id text,
    create_time timestamptz NOT NULL DEFAULT now(),
    end_time timestamptz,
    PRIMARY KEY (tenant_id, list_id, import_id),
    UNIQUE (tenant_id, list_id, request_id),
    FOREIGN KEY (tenant_id, list_id) REFERENCES contact_lists ON DELETE CASCADE
);

CREATE TABLE import_errors (
    tenant_id text NOT NULL,
    list_id text NOT NULL,
    import_id text NOT NULL,
    line_number bigint NOT NULL,
    column_name text NOT NULL,
    raw_value text NOT NULL,
    reason text NOT NULL,
    message text NOT NULL,
    FOREIGN KEY (tenant_id, list_id, import_id) REFERENCES imports ON DELETE CASCADE
);
CREATE INDEX import_errors_by_line ON import_errors (tenant_id, list_id, import_id, line_number);

CREATE TABLE specifications (
    tenant_id text NOT NULL,
    specification_id text NOT NULL,
    display_name text NOT NULL,
    file_format bytea NOT NULL,
    request_id text,
    create_time timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, specification_id),
    UNIQUE (tenant_id, request_id)
);

-- Suppression (do-not-contact) lists. Postgres is the truth; Redis mirrors it.
CREATE TABLE suppression_lists (
    tenant_id text NOT NULL,
    list_id text NOT NULL,
    display_name text NOT NULL,
    campaigns text[] NOT NULL DEFAULT '{}',
    source smallint NOT NULL DEFAULT 0,
    request_id text,
    create_time timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, list_id),
    UNIQUE (tenant_id, request_id)
);

CREATE TABLE suppression_entries (
    tenant_id text NOT NULL,
    list_id text NOT NULL,
    target_type smallint NOT NULL,   -- SuppressionTargetType
    target text NOT NULL,            -- E.164, lower-cased email, or client id
    channels_mask smallint NOT NULL, -- bit per Channel; 0 = every channel
    expire_time timestamptz,
    emergency boolean NOT NULL DEFAULT false,
    reason text NOT NULL DEFAULT '',
    create_time timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, list_id, target_type, target),
    FOREIGN KEY (tenant_id, list_id) REFERENCES suppression_lists ON DELETE CASCADE
);

-- Requests already applied (request_id idempotency of batch writes and file loads).
CREATE TABLE applied_requests (
    tenant_id text NOT NULL,
    request_id text NOT NULL,
    response bytea NOT NULL,
    create_time timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, request_id)
);

DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['contact_lists', 'records', 'imports', 'import_errors',
                             'specifications', 'suppression_lists', 'suppression_entries',
                             'applied_requests'] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format(
            'CREATE POLICY tenant_isolation ON %I '
            'USING (tenant_id = current_setting(''cxmesh.tenant'', true)) '
            'WITH CHECK (tenant_id = current_setting(''cxmesh.tenant'', true))', t);
    END LOOP;
END $$;
