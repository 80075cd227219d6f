-- sendry-sync: install or upgrade the outbox, its trigger on auth.users and the stats view.
--
--   psql -v ON_ERROR_STOP=1 -f sql/install.sql        (or: sendry-sync migrate)
--
-- Safe to run again: a second run changes nothing and raises no error.
-- Runs as the role that will own the objects. In Supabase that is `postgres`, which is
-- not a superuser: nothing here creates objects in schema auth or alters auth.users;
-- it only creates a trigger on it (TRIGGER privilege).
-- The same file is embedded in the binary (`sendry-sync migrate`).

BEGIN;

-- "relation already exists, skipping" notices on a re-run are noise.
SET LOCAL client_min_messages = warning;

-- One row per change to deliver to Sendry. Contract: see DESIGN.md.
CREATE TABLE IF NOT EXISTS public.sendry_outbox (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    op               text        NOT NULL DEFAULT 'upsert',
    user_id          uuid,
    email            text        NOT NULL,
    payload          jsonb       NOT NULL DEFAULT '{}'::jsonb,
    status           text        NOT NULL DEFAULT 'pending',
    attempts         integer     NOT NULL DEFAULT 0,
    -- NULL: the worker's --max-attempts applies.
    max_attempts     integer,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    locked_by        text,
    locked_until     timestamptz,
    last_http_status integer,
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    sent_at          timestamptz,
    CONSTRAINT sendry_outbox_op_check CHECK (op IN ('upsert', 'delete')),
    CONSTRAINT sendry_outbox_status_check
        CHECK (status IN ('pending', 'processing', 'sent', 'failed')),
    CONSTRAINT sendry_outbox_email_check CHECK (btrim(email) <> ''),
    CONSTRAINT sendry_outbox_max_attempts_check CHECK (max_attempts IS NULL OR max_attempts > 0)
);

COMMENT ON TABLE public.sendry_outbox IS
    'sendry-sync: contacts waiting to be delivered to Sendry. Requeue: UPDATE ... SET status=''pending'', next_attempt_at=now() WHERE status=''failed''.';

-- Claimable rows only. A claim sets next_attempt_at to the end of its lease, so
-- "pending and due" and "processing with an expired lease" are one range scan:
--   status IN ('pending','processing') AND next_attempt_at <= now()
-- Sent and failed rows are not in the index: millions of them cost nothing here.
CREATE INDEX IF NOT EXISTS sendry_outbox_claimable_idx
    ON public.sendry_outbox (next_attempt_at, id)
    WHERE status IN ('pending', 'processing');

-- For "what happened to this user?" and for the failed-in-the-last-hour figure.
CREATE INDEX IF NOT EXISTS sendry_outbox_user_id_idx ON public.sendry_outbox (user_id);
CREATE INDEX IF NOT EXISTS sendry_outbox_failed_idx
    ON public.sendry_outbox (updated_at) WHERE status = 'failed';

-- NOTIFY sendry_outbox when rows become due, once per statement with a constant
-- payload: a backfill of a million rows sends one notification (PostgreSQL also folds
-- identical notifications within a transaction). The worker's own transitions
-- (to processing, sent, failed, or pending with a future retry time) stay silent.
CREATE OR REPLACE FUNCTION public.sendry_outbox_notify_insert()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = ''
AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM new_rows n
               WHERE n.status = 'pending' AND n.next_attempt_at <= now()) THEN
        PERFORM pg_catalog.pg_notify('sendry_outbox', '');
    END IF;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION public.sendry_outbox_notify_update()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = ''
AS $$
BEGIN
    IF EXISTS (SELECT 1
               FROM new_rows n JOIN old_rows o ON o.id = n.id
               WHERE n.status = 'pending' AND n.next_attempt_at <= now()
                 AND (o.status <> 'pending' OR o.next_attempt_at > now())) THEN
        PERFORM pg_catalog.pg_notify('sendry_outbox', '');
    END IF;
    RETURN NULL;
END
$$;

CREATE OR REPLACE TRIGGER sendry_outbox_notify_insert
    AFTER INSERT ON public.sendry_outbox
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION public.sendry_outbox_notify_insert();

CREATE OR REPLACE TRIGGER sendry_outbox_notify_update
    AFTER UPDATE ON public.sendry_outbox
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION public.sendry_outbox_notify_update();

-- What an operator looks at first. One row.
CREATE OR REPLACE VIEW public.sendry_outbox_stats WITH (security_invoker = true) AS
SELECT
    count(*) FILTER (WHERE status = 'pending')                              AS pending,
    count(*) FILTER (WHERE status = 'pending' AND next_attempt_at <= now()) AS due,
    count(*) FILTER (WHERE status = 'processing')                           AS processing,
    count(*) FILTER (WHERE status = 'sent')                                 AS sent,
    count(*) FILTER (WHERE status = 'failed')                               AS failed,
    now() - min(next_attempt_at) FILTER (WHERE status = 'pending' AND next_attempt_at <= now())
                                                                            AS oldest_due_age,
    count(*) FILTER (WHERE status = 'failed' AND updated_at > now() - interval '1 hour')
                                                                            AS failed_last_hour
FROM public.sendry_outbox;

-- Supabase serves schema public over HTTP to anon and authenticated, and by default
-- grants them everything postgres creates there. None of it is theirs.
ALTER TABLE public.sendry_outbox ENABLE ROW LEVEL SECURITY;
REVOKE ALL ON TABLE public.sendry_outbox, public.sendry_outbox_stats FROM PUBLIC;
REVOKE ALL ON FUNCTION public.sendry_outbox_notify_insert(),
                       public.sendry_outbox_notify_update() FROM PUBLIC;
REVOKE ALL ON SEQUENCE public.sendry_outbox_id_seq FROM PUBLIC;

DO $install$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['anon', 'authenticated'] LOOP
        IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = r) THEN
            EXECUTE format('REVOKE ALL ON TABLE public.sendry_outbox, public.sendry_outbox_stats FROM %I', r);
            EXECUTE format('REVOKE ALL ON SEQUENCE public.sendry_outbox_id_seq FROM %I', r);
            EXECUTE format('REVOKE ALL ON FUNCTION public.sendry_outbox_notify_insert(), '
                           'public.sendry_outbox_notify_update() FROM %I', r);
        END IF;
    END LOOP;
END
$install$;

-- The auth.users half: only where Supabase's auth schema exists.
DO $install$
DECLARE
    r text;
BEGIN
    IF pg_catalog.to_regclass('auth.users') IS NULL THEN
        RETURN;
    END IF;

    -- The Sendry contact body for a user: email trimmed and lower-cased, first and last
    -- name from the sign-up metadata (first_name/last_name, else full_name or name split
    -- at the first space, as OAuth providers send), metadata with string values only.
    -- Never `unsubscribed`: an upsert must not re-subscribe someone who opted out.
    EXECUTE $fn$
    CREATE OR REPLACE FUNCTION public.sendry_contact_payload(u auth.users)
    RETURNS jsonb
    LANGUAGE sql
    STABLE
    SET search_path = ''
    AS $body$
        SELECT pg_catalog.jsonb_strip_nulls(pg_catalog.jsonb_build_object(
                   'email', pg_catalog.lower(pg_catalog.btrim(u.email)),
                   'first_name', pg_catalog.left(n.first_name, 200),
                   'last_name', pg_catalog.left(n.last_name, 200),
                   'metadata', pg_catalog.jsonb_build_object(
                       'supabase_user_id', u.id::text,
                       'signup_source', 'supabase')))
        FROM (
            SELECT CASE WHEN g.first_name IS NULL AND g.last_name IS NULL
                        THEN pg_catalog.substring(g.full_name, '^\S+')
                        ELSE g.first_name END AS first_name,
                   CASE WHEN g.first_name IS NULL AND g.last_name IS NULL
                        THEN NULLIF(pg_catalog.btrim(pg_catalog.substring(g.full_name, '^\S+\s+(.*)$')), '')
                        ELSE g.last_name END AS last_name
            FROM (
                SELECT NULLIF(pg_catalog.btrim(m.meta ->> 'first_name'), '') AS first_name,
                       NULLIF(pg_catalog.btrim(m.meta ->> 'last_name'), '') AS last_name,
                       COALESCE(NULLIF(pg_catalog.btrim(m.meta ->> 'full_name'), ''),
                                NULLIF(pg_catalog.btrim(m.meta ->> 'name'), '')) AS full_name
                FROM (SELECT CASE WHEN pg_catalog.jsonb_typeof(u.raw_user_meta_data) = 'object'
                                  THEN u.raw_user_meta_data END AS meta) m
            ) g
        ) n
    $body$
    $fn$;

    -- Statement-level triggers over transition tables: one INSERT ... SELECT per
    -- statement, about half the cost of a row trigger on a bulk insert.
    -- SECURITY DEFINER with an empty search_path: in Supabase the auth server inserts as
    -- supabase_auth_admin with search_path=auth, and has no rights on public.sendry_outbox.
    -- Anything that goes wrong is turned into a WARNING: a sign-up never fails because
    -- of the outbox.
    EXECUTE $fn$
    CREATE OR REPLACE FUNCTION public.sendry_auth_users_inserted()
    RETURNS trigger
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = ''
    AS $body$
    BEGIN
        BEGIN
            INSERT INTO public.sendry_outbox (op, user_id, email, payload)
            SELECT 'upsert', n.id, pg_catalog.lower(pg_catalog.btrim(n.email)),
                   public.sendry_contact_payload(n)
            FROM new_rows n
            WHERE NULLIF(pg_catalog.btrim(n.email), '') IS NOT NULL
              AND NOT COALESCE(n.is_anonymous, false)
              AND n.deleted_at IS NULL;
        EXCEPTION WHEN OTHERS THEN
            RAISE WARNING 'sendry-sync: could not enqueue new users for Sendry: % (SQLSTATE %)',
                SQLERRM, SQLSTATE;
        END;
        RETURN NULL;
    END
    $body$
    $fn$;

    -- An UPDATE is worth syncing when the user has a usable email and either the email
    -- changed (set for the first time, or replaced) or an anonymous user became
    -- permanent. GoTrue's role '' -> 'authenticated' update, confirmations and logins
    -- change neither. A soft delete overwrites email with a hash: never send it.
    EXECUTE $fn$
    CREATE OR REPLACE FUNCTION public.sendry_auth_users_updated()
    RETURNS trigger
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = ''
    AS $body$
    BEGIN
        BEGIN
            INSERT INTO public.sendry_outbox (op, user_id, email, payload)
            SELECT 'upsert', n.id, pg_catalog.lower(pg_catalog.btrim(n.email)),
                   public.sendry_contact_payload(n)
            FROM new_rows n JOIN old_rows o ON o.id = n.id
            WHERE NULLIF(pg_catalog.btrim(n.email), '') IS NOT NULL
              AND NOT COALESCE(n.is_anonymous, false)
              AND n.deleted_at IS NULL
              AND (o.email IS DISTINCT FROM n.email
                   OR (COALESCE(o.is_anonymous, false) AND NOT COALESCE(n.is_anonymous, false)));
        EXCEPTION WHEN OTHERS THEN
            RAISE WARNING 'sendry-sync: could not enqueue updated users for Sendry: % (SQLSTATE %)',
                SQLERRM, SQLSTATE;
        END;
        RETURN NULL;
    END
    $body$
    $fn$;

    EXECUTE $t$
    CREATE OR REPLACE TRIGGER sendry_sync_users_insert
        AFTER INSERT ON auth.users
        REFERENCING NEW TABLE AS new_rows
        FOR EACH STATEMENT EXECUTE FUNCTION public.sendry_auth_users_inserted()
    $t$;
    EXECUTE $t$
    CREATE OR REPLACE TRIGGER sendry_sync_users_update
        AFTER UPDATE ON auth.users
        REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
        FOR EACH STATEMENT EXECUTE FUNCTION public.sendry_auth_users_updated()
    $t$;

    -- Functions are executable by PUBLIC by default, and Supabase grants new functions
    -- in public to anon and authenticated (callable as /rest/v1/rpc/<name>).
    REVOKE ALL ON FUNCTION public.sendry_contact_payload(auth.users),
                           public.sendry_auth_users_inserted(),
                           public.sendry_auth_users_updated() FROM PUBLIC;
    FOREACH r IN ARRAY ARRAY['anon', 'authenticated'] LOOP
        IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = r) THEN
            EXECUTE format('REVOKE ALL ON FUNCTION public.sendry_contact_payload(auth.users), '
                           'public.sendry_auth_users_inserted(), '
                           'public.sendry_auth_users_updated() FROM %I', r);
        END IF;
    END LOOP;
END
$install$;

RESET client_min_messages;

DO $install$
BEGIN
    IF pg_catalog.to_regclass('auth.users') IS NULL THEN
        RAISE NOTICE 'sendry-sync: no table auth.users here: installed the outbox only, no trigger. Fill public.sendry_outbox from your own users table (see README, "Without Supabase").';
    END IF;
END
$install$;

COMMIT;
