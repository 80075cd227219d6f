-- Included by the pgTAP files (\ir lib/claim.sql), not a test of its own.
-- The worker's claim of the captured rows, and its completion as if Sendry accepted every
-- contact sent ('send') or found unchanged ('same'): the state written, the rows done.
CREATE FUNCTION pg_temp.claim() RETURNS TABLE (user_id uuid, verdict text, email text, payload jsonb, problem text)
LANGUAGE sql AS $$
    WITH r AS MATERIALIZED (
        SELECT * FROM public.sendry_claim_render(ARRAY(SELECT o.user_id FROM public.sendry_outbox o
                                                        WHERE o.op = 'upsert' AND o.payload IS NULL
                                                          AND o.status = 'pending'))
    ), accepted AS (
        INSERT INTO public.sendry_contact_state AS s (user_id, email, audiences, contact_hash)
        SELECT r.user_id, r.email, r.audiences, r.hash FROM r WHERE r.verdict IN ('send', 'same')
        ON CONFLICT (user_id) DO UPDATE SET email = EXCLUDED.email, audiences = EXCLUDED.audiences,
                                            contact_hash = EXCLUDED.contact_hash, updated_at = now()
    ), done AS (
        DELETE FROM public.sendry_outbox o WHERE o.op = 'upsert' AND o.payload IS NULL AND o.status = 'pending'
    )
    SELECT r.user_id, r.verdict, r.email, r.payload, r.problem FROM r ORDER BY r.user_id
$$;
