-- A group-commit batch's plain steps as one statement: stalwart_append (0005) called for
-- each element of the argument arrays, in order, one result row per step.
--
-- Sent as a pipeline of separate calls, each step cost the client ~100 µs of psycopg work
-- (binding 21 parameters, inferring three array types, reading one result set); with the
-- client at a full core in a 1,000-workflow fan-out and the server at 0.4, that was the
-- limit. Each call below is the unchanged function, so every statement in it still takes
-- its own snapshot after the row lock (the READ COMMITTED argument of 0003).
--
-- p_nevents[i] is how many of the flattened event arrays belong to step i.
CREATE FUNCTION stalwart_append_batch(
    p_id text[],
    p_owner text[],
    p_epoch bigint[],
    p_seq integer[],
    p_status text[],
    p_active_status text[],
    p_output text[],
    p_error text[],
    p_parked boolean[],
    p_release boolean[],
    p_upto bigint[],
    p_wake_at double precision[],
    p_step text[],
    p_attrs jsonb[],
    p_now double precision,
    p_nevents integer[],
    p_kinds text[],
    p_times double precision[],
    p_data text[],
    p_child_payload text[],
    p_channel text,
    p_queue_channel text
) RETURNS TABLE (ok boolean, found boolean, wake_at double precision)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_first integer := 1;
    v_count integer;
BEGIN
    FOR i IN 1 .. cardinality(p_id) LOOP
        v_count := p_nevents[i];
        RETURN QUERY SELECT a.ok, a.found, a.wake_at FROM stalwart_append(
            p_id[i], p_owner[i], p_epoch[i], p_seq[i], p_status[i], p_active_status[i],
            p_output[i], p_error[i], p_parked[i], p_release[i], p_upto[i], p_wake_at[i],
            p_step[i], p_attrs[i], p_now,
            COALESCE(p_kinds[v_first:v_first + v_count - 1], '{}'),
            COALESCE(p_times[v_first:v_first + v_count - 1], '{}'),
            COALESCE(p_data[v_first:v_first + v_count - 1], '{}'),
            p_child_payload[i], p_channel, p_queue_channel) AS a;
        v_first := v_first + v_count;
    END LOOP;
END
$$;
