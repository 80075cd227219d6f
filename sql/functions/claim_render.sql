-- The claim's render where there is no auth.users (the outbox alone, filled by the
-- project's own trigger): the claim calls public.sendry_claim_render for the users of
-- its rows without a payload, and this one answers 'given' for each (send the row as it
-- is: its address, with no names). Created only when the function is missing: where
-- auth.users exists, functions/contacts.sql (applied after this step) replaces it with the
-- render through the mapping, which this step then leaves alone. Created through EXECUTE
-- so that the step runner does not count the function as this step's own (it would see
-- contacts.sql's version as "replaced by hand" and apply this step again every time).
DO $fallback$
BEGIN
    IF pg_catalog.to_regprocedure('public.sendry_claim_render(uuid[])') IS NULL THEN
        EXECUTE pg_catalog.format($f$
            CREATE FUNCTION %s(p_user_ids uuid[])
            RETURNS TABLE (user_id uuid, verdict text, email text, payload jsonb, hash bigint,
                           audiences text[], problem text, known boolean, state_email text)
            LANGUAGE sql
            STABLE
            SET search_path = ''
            AS $body$
                SELECT DISTINCT i.id, 'given'::text, NULL::text, NULL::jsonb, NULL::bigint,
                       NULL::text[], NULL::text, false, NULL::text
                  FROM pg_catalog.unnest(p_user_ids) AS i (id)
                 WHERE i.id IS NOT NULL
            $body$$f$, 'public.sendry_claim_render');
        REVOKE ALL ON FUNCTION public.sendry_claim_render(uuid[]) FROM PUBLIC;
    END IF;
END
$fallback$;
