-- Callback services: the settings proto is the body (one shape for storage and API).
CREATE TABLE callback_services (
    tenant_id text NOT NULL,
    service_id text NOT NULL,
    queue_id text NOT NULL,
    body bytea NOT NULL,               -- a serialized cxmesh.callbacks.v1.CallbackServiceConfig
    version bigint NOT NULL DEFAULT 1,
    create_time timestamptz NOT NULL DEFAULT now(),
    update_time timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, service_id)
);

CREATE TABLE virtual_queues (
    tenant_id text NOT NULL,
    queue_id text NOT NULL,
    agents_logged_in integer NOT NULL DEFAULT 0,
    agents_ready integer NOT NULL DEFAULT 0,
    create_time timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, queue_id)
);

-- Interactions routing reported as handled; the wait estimate reads the newest 32.
CREATE TABLE handled_interactions (
    tenant_id text NOT NULL,
    queue_id text NOT NULL,
    interaction_id bigint GENERATED ALWAYS AS IDENTITY,
    finished timestamptz NOT NULL DEFAULT clock_timestamp(),
    wait_seconds double precision NOT NULL,
    handle_seconds double precision NOT NULL,
    PRIMARY KEY (tenant_id, queue_id, interaction_id)
);

CREATE TABLE callbacks (
    tenant_id text NOT NULL,
    callback_id text NOT NULL,
    service_id text NOT NULL,
    queue_id text NOT NULL,
    phone_number text NOT NULL,
    throttle_key text NOT NULL,        -- the number, or the value of the service's throttle header
    desired_time timestamptz NOT NULL,
    immediate boolean NOT NULL,
    state smallint NOT NULL,           -- cxmesh.callbacks.v1.CallbackState
    reason smallint NOT NULL DEFAULT 0,
    priority integer NOT NULL DEFAULT 0,
    user_data jsonb,
    push_targets jsonb NOT NULL DEFAULT '[]',
    bucket_start timestamptz,          -- the capacity bucket it holds a place in, if any
    queued_time timestamptz,
    lease_expires timestamptz,
    attempt_count integer NOT NULL DEFAULT 0,
    dispatch_count integer NOT NULL DEFAULT 0,  -- times queued at its time: exactly once
    expires timestamptz NOT NULL,      -- desired time + the service's TTL
    request_id text,
    create_time timestamptz NOT NULL DEFAULT now(),
    update_time timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, callback_id),
    UNIQUE (tenant_id, request_id)
);
CREATE INDEX callbacks_due ON callbacks (desired_time) WHERE state = 1;
CREATE INDEX callbacks_queued ON callbacks (tenant_id, queue_id, priority DESC, queued_time)
    WHERE state = 2;
CREATE INDEX callbacks_leased ON callbacks (lease_expires) WHERE state = 3;
CREATE INDEX callbacks_active_expiry ON callbacks (expires) WHERE state IN (1, 2);
CREATE INDEX callbacks_by_number ON callbacks (tenant_id, service_id, phone_number, create_time);
CREATE INDEX callbacks_by_throttle_key ON callbacks (tenant_id, service_id, throttle_key, create_time)
    WHERE immediate;

-- Places taken in each capacity bucket; a booking only succeeds while one is free.
CREATE TABLE capacity_bookings (
    tenant_id text NOT NULL,
    service_id text NOT NULL,
    bucket_start timestamptz NOT NULL,
    booked integer NOT NULL,
    PRIMARY KEY (tenant_id, service_id, bucket_start)
);

CREATE TABLE call_in_groups (
    tenant_id text NOT NULL,
    group_id text NOT NULL,
    body bytea NOT NULL,               -- a serialized cxmesh.callbacks.v1.CallInGroup
    create_time timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, group_id)
);

CREATE TABLE call_in_requests (
    tenant_id text NOT NULL,
    request_id text NOT NULL,
    group_id text NOT NULL,
    to_number text NOT NULL,
    access_code text NOT NULL,
    from_number text NOT NULL DEFAULT '',
    callback_id text NOT NULL DEFAULT '',
    expires timestamptz NOT NULL,
    matched boolean NOT NULL DEFAULT false,
    create_time timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, request_id)
);
-- An unmatched code is unique per number it is dialled on, so a match is never ambiguous.
CREATE UNIQUE INDEX call_in_codes ON call_in_requests (tenant_id, to_number, access_code)
    WHERE NOT matched;

-- Row-level security with the tenant policy is added to every table by the migration runner.

-- Time-driven transitions of every tenant, run by whichever replica gets there first. Each
-- row moves in one UPDATE under SKIP LOCKED, so a callback moves once however many replicas
-- run these at the same moment.

-- SCHEDULED → QUEUED at the desired time.
CREATE FUNCTION dispatch_due(max_rows integer) RETURNS TABLE (tenant_id text, callback_id text)
    LANGUAGE sql SECURITY DEFINER SET search_path = callbacks
    AS $$
    UPDATE callbacks.callbacks AS c SET state = 2, queued_time = now(), update_time = now(),
        dispatch_count = c.dispatch_count + 1
    FROM (SELECT d.tenant_id, d.callback_id FROM callbacks.callbacks d
          WHERE d.state = 1 AND d.desired_time <= now()
          ORDER BY d.desired_time LIMIT max_rows FOR UPDATE SKIP LOCKED) AS due
    WHERE c.tenant_id = due.tenant_id AND c.callback_id = due.callback_id
    RETURNING c.tenant_id, c.callback_id
    $$;

-- ROUTING whose lease ran out → back to QUEUED, keeping its place by queued time.
CREATE FUNCTION release_expired_leases(max_rows integer) RETURNS TABLE (tenant_id text, callback_id text)
    LANGUAGE sql SECURITY DEFINER SET search_path = callbacks
    AS $$
    UPDATE callbacks.callbacks AS c SET state = 2, lease_expires = NULL, update_time = now()
    FROM (SELECT l.tenant_id, l.callback_id FROM callbacks.callbacks l
          WHERE l.state = 3 AND l.lease_expires <= now()
          LIMIT max_rows FOR UPDATE SKIP LOCKED) AS expired
    WHERE c.tenant_id = expired.tenant_id AND c.callback_id = expired.callback_id
    RETURNING c.tenant_id, c.callback_id
    $$;

-- SCHEDULED or QUEUED past the service's TTL → COMPLETED(FAIL_TIMEOUT_TTL).
CREATE FUNCTION expire_callbacks(max_rows integer)
    RETURNS TABLE (tenant_id text, callback_id text, service_id text)
    LANGUAGE sql SECURITY DEFINER SET search_path = callbacks
    AS $$
    UPDATE callbacks.callbacks AS c SET state = 5, reason = 4, update_time = now()
    FROM (SELECT e.tenant_id, e.callback_id FROM callbacks.callbacks e
          WHERE e.state IN (1, 2) AND e.expires <= now()
          LIMIT max_rows FOR UPDATE SKIP LOCKED) AS gone
    WHERE c.tenant_id = gone.tenant_id AND c.callback_id = gone.callback_id
    RETURNING c.tenant_id, c.callback_id, c.service_id
    $$;

-- Callbacks waiting on each virtual queue of every tenant (for the queue-length metric).
CREATE FUNCTION queue_lengths() RETURNS TABLE (tenant_id text, queue_id text, queued bigint)
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = callbacks
    AS $$
    SELECT q.tenant_id, q.queue_id, count(c.callback_id)
    FROM callbacks.virtual_queues q
    LEFT JOIN callbacks.callbacks c
      ON c.tenant_id = q.tenant_id AND c.queue_id = q.queue_id AND c.state = 2
    GROUP BY q.tenant_id, q.queue_id
    $$;

DO $$
DECLARE f text;
BEGIN
    FOREACH f IN ARRAY ARRAY['dispatch_due(integer)', 'release_expired_leases(integer)',
                             'expire_callbacks(integer)', 'queue_lengths()'] LOOP
        EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', f);
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO cxmesh_app', f);
    END LOOP;
END $$;
