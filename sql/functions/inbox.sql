-- Stores one Sendry event (deduplicated by event_id) and applies it, in one
-- transaction: the worker answers a webhook 2xx only after this committed.
-- A redelivery of an event that is stored but could not be applied (status still
-- 'received', the error in reason) applies it now instead of answering duplicate.
-- Returns 'applied', 'reapplied' (a redelivery applied), 'duplicate',
-- 'ignored: <why>' or 'error: <why>'.
CREATE OR REPLACE FUNCTION public.sendry_inbox_receive(p_event_id text, p_type text, p_payload jsonb,
                                                       p_source text DEFAULT 'webhook')
RETURNS text
LANGUAGE plpgsql
SET search_path = ''
AS $$
DECLARE
    v_id bigint;
    v_again boolean := false;
    v_result text;
BEGIN
    INSERT INTO public.sendry_inbox (event_id, type, payload, source)
    VALUES (p_event_id, p_type, p_payload, p_source)
    ON CONFLICT (event_id) DO NOTHING
    RETURNING id INTO v_id;
    IF v_id IS NULL THEN
        SELECT id INTO v_id FROM public.sendry_inbox
         WHERE event_id = p_event_id AND status = 'received'
         FOR UPDATE;
        IF v_id IS NULL THEN
            RETURN 'duplicate';
        END IF;
        v_again := true;
    END IF;
    IF pg_catalog.to_regprocedure('public.sendry_inbox_apply(bigint)') IS NULL THEN
        UPDATE public.sendry_inbox SET status = 'ignored', reason = 'no auth.users here'
         WHERE id = v_id;
        RETURN 'ignored: no auth.users here';
    END IF;
    v_result := public.sendry_inbox_apply(v_id);
    RETURN CASE WHEN v_again AND v_result = 'applied' THEN 'reapplied' ELSE v_result END;
END
$$;
