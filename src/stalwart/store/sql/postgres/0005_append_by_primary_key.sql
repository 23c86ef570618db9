-- stalwart_append (0003) with its compare-and-set on the primary key only.
--
-- PL/pgSQL caches a generic plan per session. Planned while the instances table is small
-- and not yet analysed (a fresh database, the first minute of a deployment), the estimates
-- for `id = $1` and `owner = $2` tie and the planner may pick the owner index: every step
-- then walks all the instances its worker owns, with their dead versions (perf showed
-- _bt_killitems and heap_hot_search_buffer on top; a fan-out of 4,000 workflows slowed
-- to a crawl). Fenced inside IS TRUE, the other conditions are filters, never index
-- conditions, so the plan is a primary-key lookup whatever the statistics say.
CREATE OR REPLACE FUNCTION stalwart_append(
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
    WHERE i.id = p_id
      -- The compare-and-set, fenced by IS TRUE so that only the primary key is indexable
      -- (see the header).
      AND (i.owner = p_owner AND i.epoch = p_epoch AND i.history_len = p_seq
           AND i.status IN ('pending', 'running', 'compensating')) IS TRUE
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
