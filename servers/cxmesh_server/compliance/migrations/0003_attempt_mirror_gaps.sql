-- Attempts committed in Postgres whose write to Redis failed (Redis unreachable from the
-- replica that took the report): every replica's repair loop writes them and deletes the
-- gap, so they count even if the dialer never reports them again.
CREATE TABLE attempt_mirror_gaps (
    tenant_id text NOT NULL,
    gap_id bigint GENERATED ALWAYS AS IDENTITY,
    attempt_ids text[] NOT NULL,
    create_time timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, gap_id)
);

-- The oldest gaps, of every tenant.
CREATE FUNCTION attempt_mirror_gaps(most integer)
    RETURNS TABLE (tenant_id text, gap_id bigint, attempt_ids text[])
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = compliance
    AS $$
    SELECT tenant_id, gap_id, attempt_ids FROM compliance.attempt_mirror_gaps
    ORDER BY gap_id LIMIT most
    $$;
REVOKE ALL ON FUNCTION attempt_mirror_gaps(integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION attempt_mirror_gaps(integer) TO cxmesh_app;
