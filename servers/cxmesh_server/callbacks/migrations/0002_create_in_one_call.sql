-- A create in one round trip: every check that must hold under concurrent creates runs here,
-- in the caller's transaction, under the tenant's row-level security.
--
-- The caller passes what it decided from the service's settings at `p_service_version`; if
-- the settings changed since, nothing is written and 'cxmesh:stale_service' is raised so the
-- caller reads them again. Refusals raise 'cxmesh:duplicate', 'cxmesh:throttled',
-- 'cxmesh:service_full' (p_max_queued active callbacks) or 'cxmesh:capacity'. `p_bucket_starts` are the capacity buckets to try in order (one for a
-- scheduled callback, the next free ones for an immediate one), `p_bucket_sizes` their sizes.
CREATE FUNCTION create_callback(
    p_tenant text, p_service_id text, p_service_version bigint, p_queue_id text,
    p_callback_id text, p_phone text, p_throttle_key text, p_immediate boolean,
    p_desired_floor timestamptz,
    p_priority integer, p_user_data jsonb, p_push_targets jsonb, p_request_id text,
    p_ttl interval, p_duplicate_limit integer, p_throttle integer,
    p_max_queued integer, p_bucket_starts timestamptz[], p_bucket_sizes integer[]
) RETURNS SETOF callbacks
    LANGUAGE plpgsql SET search_path = callbacks
    AS $$
DECLARE
    existing callbacks;
    version_now bigint;
    active bigint;
    immediate_today bigint;
    booked_now integer;
    chosen timestamptz;
    service_active bigint;
BEGIN
    PERFORM set_config('cxmesh.tenant', p_tenant, true);
    IF p_request_id <> '' THEN
        SELECT * INTO existing FROM callbacks WHERE request_id = p_request_id;
        IF FOUND THEN
            RETURN NEXT existing;
            RETURN;
        END IF;
    END IF;
    SELECT version INTO version_now FROM callback_services WHERE service_id = p_service_id;
    IF version_now IS DISTINCT FROM p_service_version THEN
        RAISE EXCEPTION 'cxmesh:stale_service';
    END IF;
    IF p_max_queued > 0 THEN
        -- Only with a limit do all creates of the service queue behind each other.
        PERFORM pg_advisory_xact_lock(hashtextextended(p_tenant || '/' || p_service_id, 0));
        SELECT count(*) INTO service_active FROM callbacks
         WHERE service_id = p_service_id AND state IN (1, 2, 3, 4);
        IF service_active >= p_max_queued THEN
            RAISE EXCEPTION 'cxmesh:service_full:%', service_active;
        END IF;
    END IF;
    -- Creates for one number of one service queue behind each other from here on.
    PERFORM pg_advisory_xact_lock(hashtextextended(p_tenant || '/' || p_service_id || '/' || p_phone, 0));
    SELECT count(*) INTO active FROM callbacks
     WHERE service_id = p_service_id AND phone_number = p_phone AND state IN (1, 2, 3, 4);
    IF p_duplicate_limit > 0 AND active >= p_duplicate_limit THEN
        RAISE EXCEPTION 'cxmesh:duplicate:%', active;
    END IF;
    IF p_immediate AND p_throttle > 0 THEN
        IF p_throttle_key <> p_phone THEN  -- a header value: its own queue of creates
            PERFORM pg_advisory_xact_lock(
                hashtextextended(p_tenant || '/' || p_service_id || '/key/' || p_throttle_key, 0));
        END IF;
        SELECT count(*) INTO immediate_today FROM callbacks
         WHERE service_id = p_service_id AND throttle_key = p_throttle_key AND immediate
           AND create_time > now() - interval '24 hours';
        IF immediate_today >= p_throttle THEN
            RAISE EXCEPTION 'cxmesh:throttled';
        END IF;
    END IF;
    FOR i IN 1 .. coalesce(array_length(p_bucket_starts, 1), 0) LOOP
        CONTINUE WHEN p_bucket_sizes[i] <= 0;
        booked_now := NULL;
        INSERT INTO capacity_bookings AS b (tenant_id, service_id, bucket_start, booked)
        VALUES (p_tenant, p_service_id, p_bucket_starts[i], 1)
        ON CONFLICT (tenant_id, service_id, bucket_start)
        DO UPDATE SET booked = b.booked + 1 WHERE b.booked < p_bucket_sizes[i]
        RETURNING booked INTO booked_now;
        IF booked_now IS NOT NULL THEN
            chosen := p_bucket_starts[i];
            EXIT;
        END IF;
    END LOOP;
    IF chosen IS NULL THEN
        RAISE EXCEPTION 'cxmesh:capacity';
    END IF;
    RETURN QUERY
    INSERT INTO callbacks (tenant_id, callback_id, service_id, queue_id, phone_number,
        throttle_key, desired_time, immediate, state, priority, user_data, push_targets,
        bucket_start, expires, request_id)
    VALUES (p_tenant, p_callback_id, p_service_id, p_queue_id, p_phone, p_throttle_key,
        greatest(chosen, p_desired_floor), p_immediate, 1, p_priority, p_user_data,
        p_push_targets, chosen, greatest(chosen, p_desired_floor) + p_ttl,
        NULLIF(p_request_id, ''))
    RETURNING *;
END $$;
