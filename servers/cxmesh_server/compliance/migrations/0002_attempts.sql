-- Contact attempts: the durable record behind Redis's attempt counters, so that a lost or
-- failed-over Redis gets every attempt back (the counters are rebuilt from these rows).
-- One row per attempt id, holding what every report of it says together: the first
-- report's time, the last report's result and channel, every device and client id named.
CREATE TABLE attempts (
    tenant_id text NOT NULL,
    attempt_id text NOT NULL,
    devices text[] NOT NULL,
    client_ids text[] NOT NULL,
    call_result integer NOT NULL,
    channel integer NOT NULL,
    attempt_time timestamptz NOT NULL,
    -- Which write is later: Redis keeps the highest it has seen of an attempt, so a rebuild
    -- replaying a row never undoes a report written after the rebuild read it.
    revision bigint NOT NULL,
    PRIMARY KEY (tenant_id, attempt_id)
);
CREATE INDEX attempts_by_time ON attempts (tenant_id, attempt_time);
CREATE INDEX attempts_to_prune ON attempts (attempt_time);
CREATE SEQUENCE attempt_revisions;

CREATE FUNCTION attempt_tenants() RETURNS TABLE (tenant_id text)
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = compliance
    AS $$ SELECT DISTINCT tenant_id FROM compliance.attempts $$;
REVOKE ALL ON FUNCTION attempt_tenants() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION attempt_tenants() TO cxmesh_app;

-- Deletes up to `most` attempts made before `before`, of every tenant; returns how many.
CREATE FUNCTION prune_attempts(before timestamptz, most integer) RETURNS bigint
    LANGUAGE sql SECURITY DEFINER SET search_path = compliance
    AS $$
    WITH pruned AS (
        DELETE FROM compliance.attempts WHERE ctid IN (
            SELECT ctid FROM compliance.attempts WHERE attempt_time < before LIMIT most
        ) RETURNING 1
    )
    SELECT count(*) FROM pruned
    $$;
REVOKE ALL ON FUNCTION prune_attempts(timestamptz, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION prune_attempts(timestamptz, integer) TO cxmesh_app;
