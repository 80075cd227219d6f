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

-- The contacts of these users that differ from what was last enqueued for them, as
-- their outbox row gets them (payload with leave_audiences, old_email, problem) and
-- as sendry_contact_state keeps them (state_email, state_audiences: those of the
-- last contact without a problem; known: the user has a state row). The state row
-- is probed per user (LATERAL ... LIMIT 1): one index probe each whatever the
-- planner believes about the table's size, never a scan of it. Inlinable.
CREATE OR REPLACE FUNCTION public.sendry_changed_contacts(p_user_ids uuid[], p_old_email text DEFAULT NULL)
RETURNS TABLE (user_id uuid, email text, old_email text, payload jsonb, hash bigint, problem text,
               known boolean, state_email text, state_audiences text[])
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
           r.hash, r.problem, s.user_id IS NOT NULL,
           CASE WHEN r.problem IS NULL THEN r.email ELSE s.email END,
           CASE WHEN r.problem IS NULL THEN r.audiences ELSE s.audiences END
    FROM public.sendry_render_contacts(p_user_ids) r
    LEFT JOIN LATERAL (SELECT st.user_id, st.email, st.audiences, st.contact_hash
                         FROM public.sendry_contact_state st
                        WHERE st.user_id OPERATOR(pg_catalog.=) r.user_id
                        LIMIT 1) s ON true
    WHERE s.contact_hash IS DISTINCT FROM r.hash
$$;

-- Enqueues the contacts of the given users (all synced: callers check) whose rendered
-- contact differs from what was last enqueued for them, and records it in
-- sendry_contact_state; set-based. With p_check (the default) it first only looks,
-- and writes nothing when no contact changed (most UPDATEs change none). Without it
-- (the INSERT trigger: users no other transaction can see yet) the state rows of
-- users without one are plain INSERTs, about twice as cheap as an upsert. A contact
-- the mapping renders wrongly is enqueued `failed` (attempts 0, last_error
-- "mapping: ..."), never an error. old_email is the address last enqueued when it
-- changed, else p_old_email (the previous address, from an auth.users UPDATE, for a
-- user enqueued before 0.4). Returns the rows enqueued, and how many of them failed.
CREATE OR REPLACE FUNCTION public.sendry_enqueue_contacts(p_user_ids uuid[], p_class text,
                                                         p_old_email text DEFAULT NULL,
                                                         p_check boolean DEFAULT true,
                                                         OUT enqueued integer, OUT failed integer)
LANGUAGE plpgsql
SET search_path = ''
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    v_user_ids uuid[] := p_user_ids;
BEGIN
    enqueued := 0;
    failed := 0;
    IF p_check THEN
        SELECT pg_catalog.array_agg(c.user_id) INTO v_user_ids
          FROM public.sendry_changed_contacts(p_user_ids, p_old_email) c;
    END IF;
    IF COALESCE(pg_catalog.cardinality(v_user_ids), 0) = 0 THEN
        RETURN;
    END IF;
    IF p_check THEN
        WITH changed AS MATERIALIZED (
            SELECT * FROM public.sendry_changed_contacts(v_user_ids, p_old_email)
        ),
        queued AS (
            INSERT INTO public.sendry_outbox (class, op, user_id, email, old_email, payload, status, last_error)
            SELECT p_class, 'upsert', d.user_id, d.email, d.old_email, d.payload,
                   CASE WHEN d.problem IS NULL THEN 'pending' ELSE 'failed' END, d.problem
            FROM changed d
            RETURNING status
        ),
        remembered AS (
            INSERT INTO public.sendry_contact_state AS s (user_id, email, audiences, contact_hash)
            SELECT d.user_id, d.state_email, d.state_audiences, d.hash FROM changed d
            ON CONFLICT (user_id) DO UPDATE
               SET email = EXCLUDED.email, audiences = EXCLUDED.audiences,
                   contact_hash = EXCLUDED.contact_hash, updated_at = pg_catalog.now()
        )
        SELECT count(*)::integer, (count(*) FILTER (WHERE q.status = 'failed'))::integer
          INTO enqueued, failed
          FROM queued q;
    ELSE
        WITH changed AS MATERIALIZED (
            SELECT * FROM public.sendry_changed_contacts(v_user_ids, p_old_email)
        ),
        queued AS (
            INSERT INTO public.sendry_outbox (class, op, user_id, email, old_email, payload, status, last_error)
            SELECT p_class, 'upsert', d.user_id, d.email, d.old_email, d.payload,
                   CASE WHEN d.problem IS NULL THEN 'pending' ELSE 'failed' END, d.problem
            FROM changed d
            RETURNING status
        ),
        added AS (
            INSERT INTO public.sendry_contact_state (user_id, email, audiences, contact_hash)
            SELECT d.user_id, d.state_email, d.state_audiences, d.hash FROM changed d WHERE NOT d.known
        ),
        remembered AS (
            UPDATE public.sendry_contact_state s
               SET email = d.state_email, audiences = d.state_audiences, contact_hash = d.hash,
                   updated_at = pg_catalog.now()
              FROM changed d
             WHERE d.known AND s.user_id = d.user_id
        )
        SELECT count(*)::integer, (count(*) FILTER (WHERE q.status = 'failed'))::integer
          INTO enqueued, failed
          FROM queued q;
    END IF;
END
$$;
