-- One workflow step committed by one statement: the compare-and-set on the instance row,
-- the history rows, the inbox acknowledgement, the parent's notification and the wake-up
-- NOTIFYs. A step used to take six client round trips (BEGIN, SELECT now(), SELECT ... FOR
-- UPDATE, UPDATE, INSERT, COMMIT); in autocommit this is one, and a group-commit batch
-- sends many calls in one pipeline. Steps with effects on other instances or a
-- continue-as-new keep the statement-by-statement path (writes.py).
--
-- Each statement of a VOLATILE PL/pgSQL function takes a fresh snapshot under READ
-- COMMITTED, so once the UPDATE holds the row lock, the inbox check below sees every
-- message committed before it (a sender takes the same row lock before inserting).
--
-- Returns ok, found (false: no such instance) and the instance's wake time after the step.
CREATE FUNCTION stalwart_append(
    p_id text,
    p_owner text,
    p_epoch bigint,
    p_seq integer,
    p_status text,           -- terminal status, or NULL
    p_active_status text,    -- non-terminal status to show, or NULL (keep; pending -> running)
    p_output text,
    p_error text,
    p_parked boolean,        -- failed but parked for an operator (not over)
    p_release boolean,
    p_upto bigint,           -- inbox messages up to this id are now in history
    p_wake_at double precision,
    p_step text,
    p_attrs jsonb,
    p_now double precision,  -- NULL: the transaction's time on the database clock
    p_kinds text[],
    p_times double precision[],
    p_data text[],
    p_child_payload text,    -- terminal and not parked: the message left for a parent
    p_channel text,
    p_queue_channel text
) RETURNS TABLE (ok boolean, found boolean, wake_at double precision)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_now double precision := COALESCE(p_now, extract(epoch FROM now())::float8);
    v_terminal boolean := p_status IS NOT NULL;
    v_run text;
    v_queue text;
    v_parent text;
    v_wake double precision;
BEGIN
    UPDATE instances AS i SET
        status = COALESCE(p_status, p_active_status,
                          CASE WHEN i.status = 'pending' THEN 'running' ELSE i.status END),
        needs_intervention = p_parked AND p_status = 'failed',
        output = CASE WHEN v_terminal THEN p_output ELSE i.output END,
        error = CASE WHEN v_terminal THEN p_error ELSE i.error END,
        updated_at = v_now,
        owner = CASE WHEN p_release OR v_terminal THEN NULL ELSE i.owner END,
        wake_at = CASE WHEN v_terminal THEN NULL ELSE p_wake_at END,
        history_len = p_seq + cardinality(p_kinds),
        current_step = p_step,
        search_attributes = COALESCE(p_attrs, i.search_attributes),
        recoveries = 0  -- progress: it is not what kills its workers
    WHERE i.id = p_id AND i.owner = p_owner AND i.epoch = p_epoch AND i.history_len = p_seq
      AND i.status IN ('pending', 'running', 'compensating')
    RETURNING i.run_id, i.queue, i.parent_id INTO v_run, v_queue, v_parent;
    IF NOT FOUND THEN
        RETURN QUERY SELECT false, EXISTS (SELECT 1 FROM instances WHERE id = p_id),
                            NULL::double precision;
        RETURN;
    END IF;
    v_wake := CASE WHEN v_terminal THEN NULL ELSE p_wake_at END;
    IF NOT v_terminal
       AND EXISTS (SELECT 1 FROM inbox WHERE instance_id = p_id AND id > p_upto) THEN
        v_wake := v_now;  -- messages arrived that this step has not seen: due now
        UPDATE instances SET wake_at = v_now WHERE id = p_id;
    END IF;
    IF cardinality(p_kinds) > 0 THEN
        INSERT INTO events (run_id, seq, instance_id, type, time, data)
        SELECT v_run, p_seq + (e.n - 1)::integer, p_id, e.k, e.t, e.d
        FROM unnest(p_kinds, p_times, p_data) WITH ORDINALITY AS e(k, t, d, n);
    END IF;
    IF p_upto > 0 THEN
        DELETE FROM inbox WHERE instance_id = p_id AND id <= p_upto;
    END IF;
    IF p_release AND v_wake IS NOT NULL AND v_wake <= v_now THEN
        PERFORM pg_notify(p_channel, p_id);
    END IF;
    IF v_terminal AND v_queue IS NOT NULL THEN
        PERFORM pg_notify(p_queue_channel, v_queue);  -- it no longer counts against the limit
    END IF;
    IF v_terminal AND v_parent IS NOT NULL AND p_child_payload IS NOT NULL THEN
        UPDATE instances SET wake_at = v_now, updated_at = v_now
        WHERE id = v_parent AND status NOT IN ('completed', 'failed', 'cancelled', 'terminated',
                                    'timed_out', 'compensated');
        IF FOUND THEN
            INSERT INTO inbox (instance_id, kind, name, payload, time)
            VALUES (v_parent, 'child', p_id, p_child_payload, v_now);
            PERFORM pg_notify(p_channel, v_parent);
        END IF;
    END IF;
    RETURN QUERY SELECT true, true, v_wake;
END
$$;
