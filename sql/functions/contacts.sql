-- sendry-step: requires auth.users
-- The contact mapping and the functions that render and enqueue contacts.

-- The contact mapping (contract): what a user is as a Sendry contact, one row per
-- user: user_id, email, first_name, last_name, metadata (a flat object of strings),
-- audiences (text[] of audience ids; NULL: the worker's SENDRY_AUDIENCE_ID; 'default'
-- in the array also names that one). It is the project's: created here once with the
-- default mapping (the address trimmed and lower-cased, first and last name from the
-- sign-up metadata: first_name/last_name, else full_name or name split at the first
-- space, as OAuth providers send; metadata supabase_user_id and signup_source), and
-- never replaced: a re-run keeps the project's version (and says so). Replace it with
-- CREATE OR REPLACE VIEW (README, "The contact mapping"). Never `unsubscribed`: an
-- upsert must not re-subscribe someone who opted out. Whether a user is synced at all
-- (an email, not anonymous, not deleted, sync_on) is decided by sendry-sync, not here.
DO $mapping$
BEGIN
    IF pg_catalog.to_regclass('public.sendry_contacts') IS NULL THEN
        CREATE VIEW public.sendry_contacts WITH (security_invoker = true) AS
        SELECT u.id AS user_id,
               lower(btrim(u.email)) AS email,
               left(CASE WHEN m.first_name IS NULL AND m.last_name IS NULL
                         THEN substring(m.full_name, '^\S+')
                         ELSE m.first_name END, 200) AS first_name,
               left(CASE WHEN m.first_name IS NULL AND m.last_name IS NULL
                         THEN NULLIF(btrim(substring(m.full_name, '^\S+\s+(.*)$')), '')
                         ELSE m.last_name END, 200) AS last_name,
               jsonb_build_object('supabase_user_id', u.id::text,
                                  'signup_source', 'supabase') AS metadata,
               NULL::text[] AS audiences
        FROM auth.users u,
             LATERAL (SELECT NULLIF(btrim(u.raw_user_meta_data ->> 'first_name'), '') AS first_name,
                             NULLIF(btrim(u.raw_user_meta_data ->> 'last_name'), '') AS last_name,
                             COALESCE(NULLIF(btrim(u.raw_user_meta_data ->> 'full_name'), ''),
                                      NULLIF(btrim(u.raw_user_meta_data ->> 'name'), '')) AS full_name) m;
        COMMENT ON VIEW public.sendry_contacts IS
            'sendry-sync: the contact mapping, one row per user (user_id, email, first_name, last_name, metadata, audiences). Yours to replace (CREATE OR REPLACE VIEW); install.sql never overwrites it.';
    ELSE
        RAISE NOTICE 'sendry-sync: kept public.sendry_contacts as it is: the contact mapping is yours, install.sql never replaces it (README, "The contact mapping").';
        -- CREATE OR REPLACE VIEW without WITH (security_invoker = true) drops it: the
        -- view then reads auth.users with its owner's rights for whoever may select it
        -- (the revoke below leaves that to postgres alone, but say so).
        IF NOT COALESCE((SELECT c.reloptions @> ARRAY['security_invoker=true'] FROM pg_catalog.pg_class c
                          WHERE c.oid = 'public.sendry_contacts'::regclass), false) THEN
            RAISE WARNING 'sendry-sync: public.sendry_contacts is not security_invoker: recreate it WITH (security_invoker = true) (README, "The contact mapping")';
        END IF;
    END IF;
END
$mapping$;

-- Whether a user is synced: a usable email, not anonymous, not (soft-)deleted, and
-- under sync_on = 'confirmed' only once the email is confirmed. One expression,
-- schema-qualified names and no SET clause: PostgreSQL inlines it into the triggers'
-- queries instead of calling a function per row.
CREATE OR REPLACE FUNCTION public.sendry_user_is_synced(u auth.users, p_sync_on text)
RETURNS boolean
LANGUAGE sql
STABLE
AS $$
    SELECT NULLIF(pg_catalog.btrim(u.email), '') IS NOT NULL
       AND NOT COALESCE(u.is_anonymous, false)
       AND u.deleted_at IS NULL
       AND (p_sync_on OPERATOR(pg_catalog.=) 'signup' OR u.email_confirmed_at IS NOT NULL)
$$;

-- The payload of an upsert row (what the worker sends): email, first_name, last_name,
-- metadata and audiences, absent when NULL (a NULL metadata value too). Inlinable
-- (STABLE like jsonb_build_object: an IMMUTABLE one would not be inlined).
CREATE OR REPLACE FUNCTION public.sendry_contact_body(p_email text, p_first_name text,
                                                      p_last_name text, p_metadata jsonb,
                                                      p_audiences text[])
RETURNS jsonb
LANGUAGE sql
STABLE
AS $$
    SELECT pg_catalog.jsonb_strip_nulls(pg_catalog.jsonb_build_object(
        'email', p_email, 'first_name', p_first_name, 'last_name', p_last_name,
        'metadata', p_metadata, 'audiences', pg_catalog.to_jsonb(p_audiences)))
$$;

-- What Sendry would reject in a rendered contact, as "mapping: <field> ...", or NULL.
-- Sendry takes names of at most 200 characters and metadata values that are strings
-- of at most 1000 characters (flat); an audience id is [A-Za-z0-9_-]+. Called only
-- for the rows a cheap test could not pass (sendry_enqueue_contacts).
CREATE OR REPLACE FUNCTION public.sendry_contact_problem(p_first_name text, p_last_name text,
                                                         p_metadata jsonb, p_audiences text[])
RETURNS text
LANGUAGE sql
IMMUTABLE
SET search_path = ''
AS $$
    SELECT 'mapping: ' || COALESCE(
        CASE WHEN length(p_first_name) > 200
             THEN format('first_name is longer than 200 characters (%s)', length(p_first_name)) END,
        CASE WHEN length(p_last_name) > 200
             THEN format('last_name is longer than 200 characters (%s)', length(p_last_name)) END,
        CASE WHEN jsonb_typeof(p_metadata) <> 'object'
             THEN format('metadata is a JSON %s, not an object of strings', jsonb_typeof(p_metadata)) END,
        (SELECT format('metadata.%s is a JSON %s, not a string (metadata is flat: string values only)',
                       e.key, jsonb_typeof(e.value))
           FROM jsonb_each(CASE WHEN jsonb_typeof(p_metadata) = 'object' THEN p_metadata END) e
          WHERE jsonb_typeof(e.value) NOT IN ('string', 'null')
          ORDER BY e.key LIMIT 1),
        (SELECT format('metadata.%s is longer than 1000 characters (%s)', e.key, length(e.value))
           FROM jsonb_each_text(CASE WHEN jsonb_typeof(p_metadata) = 'object' THEN p_metadata END) e
          WHERE length(e.value) > 1000
          ORDER BY e.key LIMIT 1),
        (SELECT format('audiences[%s] is %s, not an audience id ([A-Za-z0-9_-]+)',
                       a.n, COALESCE(quote_literal(a.id), 'NULL'))
           FROM unnest(p_audiences) WITH ORDINALITY AS a (id, n)
          WHERE a.id IS NULL OR a.id !~ '^[A-Za-z0-9_-]+$'
          ORDER BY a.n LIMIT 1))
$$;

-- The Sendry contact body of a user, rendered through the mapping (the README's
-- backfill statement): NULL for a user the mapping has no row for. It reads the
-- user's current row in auth.users by id, not the fields of the argument.
CREATE OR REPLACE FUNCTION public.sendry_contact_payload(u auth.users)
RETURNS jsonb
LANGUAGE sql
STABLE
AS $$
    SELECT public.sendry_contact_body(pg_catalog.lower(pg_catalog.btrim(c.email::pg_catalog.text)),
                                      c.first_name::pg_catalog.text, c.last_name::pg_catalog.text,
                                      c.metadata::pg_catalog.jsonb, c.audiences::pg_catalog.text[])
    FROM public.sendry_contacts c
    WHERE c.user_id OPERATOR(pg_catalog.=) u.id
$$;

-- The contacts the mapping renders for these users, as the outbox gets them: email
-- trimmed and lower-cased, body (the payload), hash (jsonb_hash_extended of the
-- body: what sendry_contact_state compares), problem ("mapping: ..." when Sendry
-- would reject it, else NULL). Users without a row in the mapping, or without an
-- email there, are not rendered. Inlinable (one SELECT, qualified names, no SET);
-- also a way to see what would be sent:
--   SELECT * FROM sendry_render_contacts(ARRAY(SELECT id FROM auth.users LIMIT 10));
-- Each level computes its columns once (OFFSET 0 keeps the planner from copying an
-- expression into every place that uses it). The cheap test in the CASE passes
-- nearly every contact; sendry_contact_problem looks closer at the others.
CREATE OR REPLACE FUNCTION public.sendry_render_contacts(p_user_ids uuid[])
RETURNS TABLE (user_id uuid, email text, audiences text[], body jsonb, hash bigint, problem text)
LANGUAGE sql
STABLE
AS $$
    SELECT r.user_id, r.email, r.audiences, r.body,
           pg_catalog.jsonb_hash_extended(r.body, 0),
           CASE WHEN COALESCE(pg_catalog.length(r.first_name) OPERATOR(pg_catalog.<=) 200, true)
                 AND COALESCE(pg_catalog.length(r.last_name) OPERATOR(pg_catalog.<=) 200, true)
                 AND (r.metadata IS NULL
                      OR (pg_catalog.jsonb_typeof(r.metadata) OPERATOR(pg_catalog.=) 'object'
                          AND pg_catalog.octet_length(r.metadata::pg_catalog.text) OPERATOR(pg_catalog.<=) 1000
                          AND NOT pg_catalog.jsonb_path_exists(r.metadata,
                                      'strict $.* ? (@.type() != "string" && @.type() != "null")')))
                 AND (r.audiences IS NULL
                      OR pg_catalog.cardinality(r.audiences) OPERATOR(pg_catalog.=) 0
                      OR pg_catalog.array_to_string(r.audiences, ',', '*')
                         OPERATOR(pg_catalog.~) '^[A-Za-z0-9_-]+(,[A-Za-z0-9_-]+)*$')
                THEN NULL
                ELSE public.sendry_contact_problem(r.first_name, r.last_name, r.metadata, r.audiences)
           END
    FROM (SELECT m.*, public.sendry_contact_body(m.email, m.first_name, m.last_name,
                                                 m.metadata, m.audiences) AS body
          FROM (SELECT c.user_id,
                       pg_catalog.lower(pg_catalog.btrim(c.email::pg_catalog.text)) AS email,
                       c.first_name::pg_catalog.text AS first_name,
                       c.last_name::pg_catalog.text AS last_name,
                       c.metadata::pg_catalog.jsonb AS metadata,
                       c.audiences::pg_catalog.text[] AS audiences
                FROM public.sendry_contacts c
                WHERE c.user_id OPERATOR(pg_catalog.=) ANY (p_user_ids)
                OFFSET 0) m
          WHERE m.email OPERATOR(pg_catalog.<>) ''
          OFFSET 0) r
    OFFSET 0
$$;

-- The contacts the mapping renders for these users beside what Sendry last accepted for
-- each (sendry_contact_state, written by the worker when Sendry accepts a contact): as an
-- upsert sends them (payload: the body, plus leave_audiences when the contact left
-- audiences since), with the rendered audiences and hash, the address to move from
-- (old_email: the state's address when it differs, else p_old_email), and the state's
-- row (known: there is one; state_email, state_audiences, state_hash). The state row is
-- probed per user (LATERAL ... LIMIT 1): one index probe each whatever the planner
-- believes about the table's size, never a scan of it. Inlinable. Used by
-- sendry_changed_contacts (the repair pass) and sendry_claim_render (the claim).
CREATE OR REPLACE FUNCTION public.sendry_compared_contacts(p_user_ids uuid[], p_old_email text DEFAULT NULL)
RETURNS TABLE (user_id uuid, email text, old_email text, payload jsonb, hash bigint, audiences text[],
               problem text, known boolean, state_email text, state_audiences text[], state_hash bigint)
LANGUAGE sql
STABLE
AS $$
    SELECT r.user_id, r.email,
           NULLIF(COALESCE(s.email, p_old_email), r.email),
           CASE WHEN s.email IS NULL OR r.problem IS NOT NULL
                  OR s.audiences IS NOT DISTINCT FROM r.audiences
                THEN r.body
                ELSE r.body OPERATOR(pg_catalog.||) COALESCE(
                    (SELECT pg_catalog.jsonb_build_object('leave_audiences',
                                                          pg_catalog.jsonb_agg(a.id ORDER BY a.id))
                       FROM (SELECT pg_catalog.unnest(COALESCE(s.audiences, '{default}'))
                             EXCEPT
                             SELECT pg_catalog.unnest(COALESCE(r.audiences, '{default}'))) AS a (id)
                     HAVING pg_catalog.count(*) OPERATOR(pg_catalog.>) 0), '{}')
           END,
           r.hash, r.audiences, r.problem, s.user_id IS NOT NULL, s.email, s.audiences, s.contact_hash
    FROM public.sendry_render_contacts(p_user_ids) r
    LEFT JOIN LATERAL (SELECT st.user_id, st.email, st.audiences, st.contact_hash
                         FROM public.sendry_contact_state st
                        WHERE st.user_id OPERATOR(pg_catalog.=) r.user_id
                        LIMIT 1) s ON true
$$;

-- The contacts of these users that differ from what Sendry last accepted for them (the
-- hash, or the address: all but what sendry_claim_render finds 'same'), as
-- their outbox row would get them (payload with leave_audiences, old_email, problem) and
-- as sendry_contact_state would keep them once Sendry accepts them (state_email,
-- state_audiences: those of a contact without a problem; known: the user has a state
-- row). Inlinable.
CREATE OR REPLACE FUNCTION public.sendry_changed_contacts(p_user_ids uuid[], p_old_email text DEFAULT NULL)
RETURNS TABLE (user_id uuid, email text, old_email text, payload jsonb, hash bigint, problem text,
               known boolean, state_email text, state_audiences text[])
LANGUAGE sql
STABLE
AS $$
    SELECT c.user_id, c.email, c.old_email, c.payload, c.hash, c.problem, c.known,
           CASE WHEN c.problem IS NULL THEN c.email ELSE c.state_email END,
           CASE WHEN c.problem IS NULL THEN c.audiences ELSE c.state_audiences END
    FROM public.sendry_compared_contacts(p_user_ids, p_old_email) c
    WHERE c.state_hash IS DISTINCT FROM c.hash OR c.state_email IS DISTINCT FROM c.email
$$;

-- Enqueues CAPTURED rows (op 'upsert', payload NULL: the worker renders the contact
-- through the mapping when it claims the row, sendry_claim_render) for the given users
-- (all synced: callers check), set-based, one row per user in user id order. It never
-- writes sendry_contact_state (the worker does, when Sendry accepts a contact).
--  * With p_check (the default; the repair pass and a repair by hand, outside users'
--    transactions) it first renders and compares with what Sendry last accepted, and
--    enqueues only the users whose contact differs; one the mapping renders wrongly is
--    enqueued `failed` (attempts 0, last_error "mapping: ..."), never an error. old_email
--    is the address Sendry last accepted when it changed, else p_old_email. A user with
--    a captured row still pending is skipped (that row is rendered when claimed).
--  * Without it, every given user (email: their address in auth.users, old_email:
--    p_old_email when it differs), nothing rendered.
-- Returns the rows enqueued, and how many of them failed.
CREATE OR REPLACE FUNCTION public.sendry_enqueue_contacts(p_user_ids uuid[], p_class text,
                                                         p_old_email text DEFAULT NULL,
                                                         p_check boolean DEFAULT true,
                                                         OUT enqueued integer, OUT failed integer)
LANGUAGE plpgsql
SET search_path = ''
SET plan_cache_mode = force_generic_plan
AS $$
BEGIN
    enqueued := 0;
    failed := 0;
    IF COALESCE(pg_catalog.cardinality(p_user_ids), 0) = 0 THEN
        RETURN;
    END IF;
    IF p_check THEN
        WITH queued AS (
            INSERT INTO public.sendry_outbox (class, op, user_id, email, old_email, payload, status, last_error)
            SELECT p_class, 'upsert', d.user_id, d.email, d.old_email, NULL,
                   CASE WHEN d.problem IS NULL THEN 'pending' ELSE 'failed' END, d.problem
              FROM public.sendry_changed_contacts(p_user_ids, p_old_email) d
             -- A captured row of the user still waiting renders the contact as it is
             -- when claimed: another would only repeat it (a second walk before the
             -- worker ran). One probe of the unfinished rows by user each (pending said
             -- as "not processing": status = 'pending' would let the planner add the claim
             -- index, which it proves too, scanned whole, when statistics are missing).
             WHERE NOT EXISTS (SELECT 1 FROM public.sendry_outbox o
                                WHERE o.user_id = d.user_id AND o.status <> 'sent' AND o.status <> 'failed'
                                  AND o.status <> 'processing' AND o.op = 'upsert' AND o.payload IS NULL
                                OFFSET 0)
             ORDER BY d.user_id
            RETURNING status
        )
        SELECT count(*)::integer, (count(*) FILTER (WHERE q.status = 'failed'))::integer
          INTO enqueued, failed
          FROM queued q;
    ELSE
        INSERT INTO public.sendry_outbox (class, op, user_id, email, old_email)
        SELECT p_class, 'upsert', u.id, NULLIF(pg_catalog.lower(pg_catalog.btrim(u.email)), ''),
               NULLIF(pg_catalog.lower(pg_catalog.btrim(p_old_email)),
                      pg_catalog.lower(pg_catalog.btrim(u.email)))
          FROM auth.users u
         WHERE u.id = ANY (p_user_ids)
         ORDER BY u.id;
        GET DIAGNOSTICS enqueued = ROW_COUNT;
    END IF;
END
$$;

-- The render at the claim (the worker calls it once per claim, for the users of its
-- captured rows): for each DISTINCT user id given, one row with what to do with the
-- user's contact now, rendered through the mapping and compared with what Sendry last
-- accepted (sendry_contact_state):
--   verdict 'gone'    the user is not synced now (no auth.users row, not
--                     sendry_user_is_synced under sendry_settings.sync_on, or no row or no
--                     email in the mapping): email, payload, hash, audiences, problem NULL
--   verdict 'failed'  the mapping renders a problem ("mapping: ...", as
--                     sendry_render_contacts): the row fails with it
--   verdict 'same'    no problem, and Sendry accepted this contact (hash) at this address
--   verdict 'send'    otherwise: payload is the body to send (with leave_audiences when
--                     the contact left audiences since it was accepted)
-- email, hash and audiences are the rendered ones (what the worker writes into
-- sendry_contact_state when Sendry accepts the contact); known: the user has a state row,
-- state_email its address (NULL if none). Set-wise and by key: the users, the mapping and
-- the state are read by primary key for the ids given, whatever the tables' size and
-- statistics (tests/test_hot_plans.py). SECURITY DEFINER: the worker's role needs EXECUTE
-- on it, not the right to read auth.users, the mapping or the state.
--   SELECT * FROM sendry_claim_render(ARRAY(SELECT id FROM auth.users LIMIT 10));
CREATE OR REPLACE FUNCTION public.sendry_claim_render(p_user_ids uuid[])
RETURNS TABLE (user_id uuid, verdict text, email text, payload jsonb, hash bigint,
               audiences text[], problem text, known boolean, state_email text)
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = ''
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    v_sync_on text;
    v_ids     uuid[];
    v_synced  uuid[];
BEGIN
    v_sync_on := COALESCE((SELECT s.sync_on FROM public.sendry_settings s LIMIT 1), 'signup');
    v_ids := ARRAY(SELECT DISTINCT i.id FROM pg_catalog.unnest(p_user_ids) AS i (id) WHERE i.id IS NOT NULL);
    -- The users synced now: one probe of auth.users' primary key per id.
    v_synced := ARRAY(SELECT u.id FROM auth.users u
                       WHERE u.id = ANY (v_ids) AND public.sendry_user_is_synced(u, v_sync_on));
    RETURN QUERY
    SELECT DISTINCT ON (i.id) i.id,
           CASE WHEN c.user_id IS NULL THEN 'gone'
                WHEN c.problem IS NOT NULL THEN 'failed'
                WHEN c.state_hash = c.hash AND c.state_email = c.email THEN 'same'
                ELSE 'send' END,
           c.email, c.payload, c.hash, c.audiences, c.problem,
           COALESCE(c.known, s.user_id IS NOT NULL), COALESCE(c.state_email, s.email)
      FROM pg_catalog.unnest(v_ids) AS i (id)
      LEFT JOIN public.sendry_compared_contacts(v_synced) c ON c.user_id = i.id
      -- The state of a user not rendered (gone): probed only for them.
      LEFT JOIN LATERAL (SELECT st.user_id, st.email FROM public.sendry_contact_state st
                          WHERE st.user_id = i.id AND c.user_id IS NULL
                          LIMIT 1) s ON true
     ORDER BY i.id;
END
$$;

-- Who may call it: not PUBLIC, anon or authenticated (sendry_migrate_lockdown takes every
-- sendry_* function from them after each step); service_role where it exists. A worker
-- role of its own: GRANT EXECUTE ON FUNCTION public.sendry_claim_render(uuid[]) TO <role>.
REVOKE ALL ON FUNCTION public.sendry_claim_render(uuid[]) FROM PUBLIC;
DO $grants$ BEGIN IF pg_catalog.to_regrole('service_role') IS NOT NULL THEN
    GRANT EXECUTE ON FUNCTION public.sendry_claim_render(uuid[]) TO service_role;
END IF; END $grants$;
