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
    CONSTRAINT sendry_outbox_max_attempts_check CHECK (max_attempts IS NULL OR max_attempts BETWEEN 1 AND 1000)
);

-- Added in 0.2: the previous address of an email change (the contact to move).
ALTER TABLE public.sendry_outbox ADD COLUMN IF NOT EXISTS old_email text;
-- Added in 0.3: the row's class and the claim that holds it.
--   class     'live': written by the triggers on auth.users (a sign-up, a change);
--             'bulk': everything else, the hand-written backfill INSERT ... SELECT first
--             of all (the default). A live row is claimed before any bulk row.
--   claim_id  set by each claim (its transaction id, one per claim): an outcome is only
--             recorded by the claim that produced it, never over a later claim.
ALTER TABLE public.sendry_outbox ADD COLUMN IF NOT EXISTS class text NOT NULL DEFAULT 'bulk';
ALTER TABLE public.sendry_outbox ADD COLUMN IF NOT EXISTS claim_id bigint;

-- Constraints added after 0.1: checked on an upgrade without blocking writes for long
-- (NOT VALID, then VALIDATE), and only created when missing, so a re-run is a no-op.
DO $install$
DECLARE
    c record;
BEGIN
    -- 0.1 allowed any positive max_attempts; 0.3 bounds it as --max-attempts is.
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_constraint
               WHERE conrelid = 'public.sendry_outbox'::regclass
                 AND conname = 'sendry_outbox_max_attempts_check'
                 AND pg_catalog.pg_get_constraintdef(oid) NOT LIKE '%1000%') THEN
        ALTER TABLE public.sendry_outbox DROP CONSTRAINT sendry_outbox_max_attempts_check;
    END IF;
    FOR c IN
        SELECT * FROM (VALUES
            ('sendry_outbox_max_attempts_check',
             'CHECK (max_attempts IS NULL OR max_attempts BETWEEN 1 AND 1000)'),
            ('sendry_outbox_attempts_check',
             'CHECK (attempts >= 0)'),
            ('sendry_outbox_class_check',
             'CHECK (class IN (''live'', ''bulk''))'),
            -- A row in flight names its worker and its lease.
            ('sendry_outbox_lease_check',
             'CHECK (status <> ''processing'' OR (locked_by IS NOT NULL AND locked_until IS NOT NULL))'),
            ('sendry_outbox_locked_check',
             'CHECK ((locked_by IS NULL) = (locked_until IS NULL))')
        ) AS v(name, def)
    LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_constraint
                       WHERE conrelid = 'public.sendry_outbox'::regclass AND conname = c.name) THEN
            EXECUTE pg_catalog.format('ALTER TABLE public.sendry_outbox ADD CONSTRAINT %I %s NOT VALID',
                                      c.name, c.def);
            EXECUTE pg_catalog.format('ALTER TABLE public.sendry_outbox VALIDATE CONSTRAINT %I', c.name);
        END IF;
    END LOOP;
END
$install$;

-- A queue: every row is written three times (insert, claim, completion) and, after
-- --retain-sent days, deleted. Vacuum it well before it bloats (the defaults wait for 20%
-- of the table to be dead), so its partial indexes stay the size of the backlog.
ALTER TABLE public.sendry_outbox SET (autovacuum_vacuum_scale_factor = 0.02,
                                      autovacuum_vacuum_insert_scale_factor = 0.05,
                                      autovacuum_analyze_scale_factor = 0.02);

COMMENT ON TABLE public.sendry_outbox IS
    'sendry-sync: contacts waiting to be delivered to Sendry. Requeue: UPDATE ... SET status=''pending'', next_attempt_at=now() WHERE status=''failed''.';

-- Indexes. Every one costs each row an index entry per version (insert, claim,
-- completion), so there are few, and all but the primary key are partial.
--
-- The claim: due rows of a class, oldest first, one range scan. A claim sets
-- next_attempt_at to the end of its lease, so "pending and due" and "processing with an
-- expired lease" are one range:
--   class = $1 AND status IN ('pending','processing') AND next_attempt_at <= now()
-- Sent and failed rows are not in it: millions of them cost nothing here.
--
-- Ordering: a row waits while an older unfinished row exists for the same user, the
-- same address, or the address it moves away from. Each check is one probe of an
-- index of its own. Their predicates differ on purpose (status <> ... rather than
-- IN (...), and each names its own column as NOT NULL): a probe on user_id can prove
-- only the user index's predicate, never the claim index's or the email index's, so
-- the planner cannot pick an index to scan whole with a filter, whatever its
-- statistics say about how many rows are unfinished.
DROP INDEX IF EXISTS public.sendry_outbox_claimable_idx;
DROP INDEX IF EXISTS public.sendry_outbox_user_id_idx;
DROP INDEX IF EXISTS public.sendry_outbox_unfinished_user_idx;
DROP INDEX IF EXISTS public.sendry_outbox_unfinished_email_idx;
DROP INDEX IF EXISTS public.sendry_outbox_unfinished_old_email_idx;
CREATE INDEX IF NOT EXISTS sendry_outbox_claim_idx
    ON public.sendry_outbox (class, next_attempt_at, id)
    WHERE status IN ('pending', 'processing');
CREATE INDEX IF NOT EXISTS sendry_outbox_user_idx
    ON public.sendry_outbox (user_id, id)
    WHERE status <> 'sent' AND status <> 'failed' AND user_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS sendry_outbox_email_idx
    ON public.sendry_outbox (email, id)
    WHERE status <> 'sent' AND status <> 'failed' AND email IS NOT NULL;
CREATE INDEX IF NOT EXISTS sendry_outbox_old_email_idx
    ON public.sendry_outbox (old_email, id)
    WHERE status <> 'sent' AND status <> 'failed' AND old_email IS NOT NULL;
-- Added in 0.5: the rows in flight, by worker (a worker's orphan release after a
-- reconnect, and status's count of workers holding rows). Its size is the rows being
-- sent: a claim adds an entry, nothing else does. Build it without blocking writes
-- (CREATE INDEX CONCURRENTLY) on an upgrade of a big outbox.
CREATE INDEX IF NOT EXISTS sendry_outbox_processing_idx
    ON public.sendry_outbox (locked_by)
    WHERE status = 'processing';

-- Settings kept in the database, one row. Change them with UPDATE:
--   sync_on   'signup' (default): sync a user when they sign up;
--             'confirmed': only once email_confirmed_at is set.
--   on_delete 'delete_contact' (default, what privacy law asks for): a deleted user's
--             contact is deleted in Sendry; 'remove_from_audience': it only leaves the
--             audience; 'keep': nothing is sent.
CREATE TABLE IF NOT EXISTS public.sendry_settings (
    singleton  boolean     PRIMARY KEY DEFAULT true,
    sync_on    text        NOT NULL DEFAULT 'signup',
    on_delete  text        NOT NULL DEFAULT 'delete_contact',
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT sendry_settings_singleton CHECK (singleton),
    CONSTRAINT sendry_settings_sync_on_check CHECK (sync_on IN ('signup', 'confirmed')),
    CONSTRAINT sendry_settings_on_delete_check
        CHECK (on_delete IN ('delete_contact', 'remove_from_audience', 'keep'))
);
INSERT INTO public.sendry_settings DEFAULT VALUES ON CONFLICT DO NOTHING;

-- Events from Sendry (verified webhooks, and the worker's reconciliation of
-- unsubscribes and suppressions), stored before they are acknowledged. event_id
-- deduplicates redeliveries. status: received (not applied yet, or applying failed:
-- see reason), applied, ignored (with the reason).
CREATE TABLE IF NOT EXISTS public.sendry_inbox (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id    text        NOT NULL,
    type        text        NOT NULL,
    source      text        NOT NULL DEFAULT 'webhook',
    payload     jsonb       NOT NULL,
    email       text,
    status      text        NOT NULL DEFAULT 'received',
    reason      text,
    received_at timestamptz NOT NULL DEFAULT now(),
    applied_at  timestamptz,
    CONSTRAINT sendry_inbox_event_id_key UNIQUE (event_id),
    CONSTRAINT sendry_inbox_source_check CHECK (source IN ('webhook', 'reconcile')),
    CONSTRAINT sendry_inbox_status_check CHECK (status IN ('received', 'applied', 'ignored'))
);
-- Added in 0.5: the events still to apply (the worker's retry takes them in id order).
-- Its size is those events, not the inbox, which keeps every event ever received.
CREATE INDEX IF NOT EXISTS sendry_inbox_received_idx
    ON public.sendry_inbox (id)
    WHERE status = 'received';

-- The request budget of an API key, shared by every worker that uses it (Sendry limits
-- requests per key: about 100 per 10 s). A token bucket: workers take a few requests at
-- a time (sendry_rate_take), and a 429 any of them meets pauses all of them
-- (sendry_rate_pause). key is a fingerprint of the API key, never the key.
CREATE TABLE IF NOT EXISTS public.sendry_rate_budget (
    key         text             PRIMARY KEY,
    tokens      double precision NOT NULL,
    updated_at  timestamptz      NOT NULL DEFAULT clock_timestamp(),
    pause_until timestamptz      NOT NULL DEFAULT '-infinity'
);

-- Takes up to p_want requests from the key's bucket (p_rate a second, at most p_burst),
-- leaving p_floor behind (bulk work leaves the live share). Returns how many it granted,
-- and when asking again makes sense (seconds: the pause left, or the wait for a token).
CREATE OR REPLACE FUNCTION public.sendry_rate_take(p_key text, p_rate double precision,
                                                   p_burst double precision, p_want integer,
                                                   p_floor double precision,
                                                   OUT granted integer, OUT wait double precision)
LANGUAGE plpgsql
SET search_path = ''
AS $$
DECLARE
    b public.sendry_rate_budget%ROWTYPE;
    v_now timestamptz := pg_catalog.clock_timestamp();
    v_tokens double precision;
    v_floor double precision := GREATEST(0, LEAST(p_floor, p_burst - 1));
BEGIN
    INSERT INTO public.sendry_rate_budget (key, tokens) VALUES (p_key, p_burst)
        ON CONFLICT (key) DO NOTHING;
    SELECT * INTO b FROM public.sendry_rate_budget WHERE key = p_key FOR UPDATE;
    v_tokens := LEAST(p_burst, b.tokens + GREATEST(0, EXTRACT(EPOCH FROM v_now - b.updated_at)) * p_rate);
    IF b.pause_until > v_now THEN
        granted := 0;
        wait := EXTRACT(EPOCH FROM b.pause_until - v_now);
    ELSE
        granted := GREATEST(0, LEAST(p_want, pg_catalog.floor(v_tokens - v_floor)::integer));
        v_tokens := v_tokens - granted;
        wait := CASE WHEN granted >= p_want THEN 0 ELSE (1 + v_floor - v_tokens) / p_rate END;
    END IF;
    UPDATE public.sendry_rate_budget SET tokens = v_tokens, updated_at = v_now WHERE key = p_key;
END
$$;

-- A 429: every worker of the key waits p_seconds (a longer pause already set stays).
CREATE OR REPLACE FUNCTION public.sendry_rate_pause(p_key text, p_seconds double precision)
RETURNS void
LANGUAGE sql
SET search_path = ''
AS $$
    INSERT INTO public.sendry_rate_budget (key, tokens, pause_until)
    VALUES (p_key, 0, pg_catalog.clock_timestamp() + p_seconds * interval '1 second')
    ON CONFLICT (key) DO UPDATE
        SET pause_until = GREATEST(public.sendry_rate_budget.pause_until, EXCLUDED.pause_until);
$$;

-- The worker's own bookkeeping (the reconciliation cursors).
CREATE TABLE IF NOT EXISTS public.sendry_sync_state (
    key        text        PRIMARY KEY,
    value      text,
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS sendry_outbox_failed_idx
    ON public.sendry_outbox (updated_at) WHERE status = 'failed';

-- Added in 0.4: what was last enqueued for each user, so that a change is enqueued only
-- when the contact as Sendry sees it changed, and a contact that leaves an audience is
-- taken out of it. Written by the triggers and the repair pass (sendry_enqueue_contacts).
--   email, audiences  the address and audiences of the last contact enqueued that the
--                     mapping rendered without a problem (email NULL: none yet);
--                     audiences NULL is the worker's default audience
--   contact_hash      jsonb_hash_extended of the last payload rendered (with or without
--                     a problem): the same contact again enqueues nothing
-- A user without a row here is unknown: the next change enqueues their contact.
CREATE TABLE IF NOT EXISTS public.sendry_contact_state (
    user_id      uuid        PRIMARY KEY,
    email        text,
    audiences    text[],
    contact_hash bigint      NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now()
);
-- Added in 0.5: users by the address last enqueued, for the inbox's lookup of SSO users
-- (GoTrue's only index on auth.users.email is partial, WHERE is_sso_user = false, and
-- no index may be created in schema auth). Build it without blocking sign-ups (CREATE
-- INDEX CONCURRENTLY: the triggers write this table in the sign-up's transaction).
CREATE INDEX IF NOT EXISTS sendry_contact_state_email_idx
    ON public.sendry_contact_state (email)
    WHERE email IS NOT NULL;

-- Added in 0.4: every error a trigger turned into a WARNING (so that the user's write
-- still succeeded), where an operator sees it (sendry_outbox_stats.enqueue_errors_last_hour).
-- Written in a subtransaction of its own: if that fails too, the WARNING still goes out.
CREATE TABLE IF NOT EXISTS public.sendry_enqueue_errors (
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    occurred_at  timestamptz NOT NULL DEFAULT now(),
    trigger_name text        NOT NULL,
    table_name   text        NOT NULL,
    sqlstate     text        NOT NULL,
    message      text        NOT NULL,
    user_ids     uuid[]
);
CREATE INDEX IF NOT EXISTS sendry_enqueue_errors_occurred_at_idx
    ON public.sendry_enqueue_errors (occurred_at);

-- NOTIFY sendry_outbox when rows may have become due, with a constant payload.
-- An INSERT notifies once per statement (no transition table: nothing is copied per row),
-- so a backfill of a million rows sends one notification (PostgreSQL also folds
-- identical notifications within a transaction). An UPDATE notifies only for a row that
-- becomes pending and due (a requeue, a release): a row-level trigger whose WHEN clause
-- is checked without calling any function, so the worker's own transitions (to
-- processing, sent, failed, or pending with a future retry time) cost next to nothing
-- and stay silent.
CREATE OR REPLACE FUNCTION public.sendry_outbox_notify_insert()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = ''
AS $$
BEGIN
    PERFORM pg_catalog.pg_notify('sendry_outbox', '');
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION public.sendry_outbox_notify_update()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = ''
AS $$
BEGIN
    PERFORM pg_catalog.pg_notify('sendry_outbox', '');
    RETURN NULL;
END
$$;

CREATE OR REPLACE TRIGGER sendry_outbox_notify_insert
    AFTER INSERT ON public.sendry_outbox
    FOR EACH STATEMENT EXECUTE FUNCTION public.sendry_outbox_notify_insert();

CREATE OR REPLACE TRIGGER sendry_outbox_notify_update
    AFTER UPDATE ON public.sendry_outbox
    FOR EACH ROW
    WHEN (NEW.status = 'pending' AND NEW.next_attempt_at <= pg_catalog.now()
          AND (OLD.status <> 'pending' OR OLD.next_attempt_at > pg_catalog.now()))
    EXECUTE FUNCTION public.sendry_outbox_notify_update();

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
                                                                            AS failed_last_hour,
    count(*) FILTER (WHERE status = 'pending' AND class = 'live')           AS pending_live,
    count(*) FILTER (WHERE status = 'pending' AND class = 'bulk')           AS pending_bulk,
    (SELECT count(*) FROM public.sendry_enqueue_errors e
      WHERE e.occurred_at > now() - interval '1 hour')                      AS enqueue_errors_last_hour
FROM public.sendry_outbox;

-- The auth.users half: only where Supabase's auth schema exists.
DO $install$
DECLARE
    v_columns text;
    v_when    text;
BEGIN
    IF pg_catalog.to_regclass('auth.users') IS NULL THEN
        RETURN;
    END IF;

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
        PERFORM pg_catalog.set_config('sendry.mapping_kept', 'on', true);
        -- CREATE OR REPLACE VIEW without WITH (security_invoker = true) drops it: the
        -- view then reads auth.users with its owner's rights for whoever may select it
        -- (the revoke below leaves that to postgres alone, but say so).
        IF NOT COALESCE((SELECT c.reloptions @> ARRAY['security_invoker=true'] FROM pg_catalog.pg_class c
                          WHERE c.oid = 'public.sendry_contacts'::regclass), false) THEN
            RAISE WARNING 'sendry-sync: public.sendry_contacts is not security_invoker: recreate it WITH (security_invoker = true) (README, "The contact mapping")';
        END IF;
    END IF;

    -- Whether a user is synced: a usable email, not anonymous, not (soft-)deleted, and
    -- under sync_on = 'confirmed' only once the email is confirmed. One expression,
    -- schema-qualified names and no SET clause: PostgreSQL inlines it into the triggers'
    -- queries instead of calling a function per row.
    EXECUTE $fn$
    CREATE OR REPLACE FUNCTION public.sendry_user_is_synced(u auth.users, p_sync_on text)
    RETURNS boolean
    LANGUAGE sql
    STABLE
    AS $body$
        SELECT NULLIF(pg_catalog.btrim(u.email), '') IS NOT NULL
           AND NOT COALESCE(u.is_anonymous, false)
           AND u.deleted_at IS NULL
           AND (p_sync_on OPERATOR(pg_catalog.=) 'signup' OR u.email_confirmed_at IS NOT NULL)
    $body$
    $fn$;

    -- The payload of an upsert row (what the worker sends): email, first_name, last_name,
    -- metadata and audiences, absent when NULL (a NULL metadata value too). Inlinable
    -- (STABLE like jsonb_build_object: an IMMUTABLE one would not be inlined).
    EXECUTE $fn$
    CREATE OR REPLACE FUNCTION public.sendry_contact_body(p_email text, p_first_name text,
                                                          p_last_name text, p_metadata jsonb,
                                                          p_audiences text[])
    RETURNS jsonb
    LANGUAGE sql
    STABLE
    AS $body$
        SELECT pg_catalog.jsonb_strip_nulls(pg_catalog.jsonb_build_object(
            'email', p_email, 'first_name', p_first_name, 'last_name', p_last_name,
            'metadata', p_metadata, 'audiences', pg_catalog.to_jsonb(p_audiences)))
    $body$
    $fn$;

    -- What Sendry would reject in a rendered contact, as "mapping: <field> ...", or NULL.
    -- Sendry takes names of at most 200 characters and metadata values that are strings
    -- of at most 1000 characters (flat); an audience id is [A-Za-z0-9_-]+. Called only
    -- for the rows a cheap test could not pass (sendry_enqueue_contacts).
    EXECUTE $fn$
    CREATE OR REPLACE FUNCTION public.sendry_contact_problem(p_first_name text, p_last_name text,
                                                             p_metadata jsonb, p_audiences text[])
    RETURNS text
    LANGUAGE sql
    IMMUTABLE
    SET search_path = ''
    AS $body$
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
    $body$
    $fn$;

    -- The Sendry contact body of a user, rendered through the mapping (the README's
    -- backfill statement): NULL for a user the mapping has no row for. It reads the
    -- user's current row in auth.users by id, not the fields of the argument.
    EXECUTE $fn$
    CREATE OR REPLACE FUNCTION public.sendry_contact_payload(u auth.users)
    RETURNS jsonb
    LANGUAGE sql
    STABLE
    AS $body$
        SELECT public.sendry_contact_body(pg_catalog.lower(pg_catalog.btrim(c.email::pg_catalog.text)),
                                          c.first_name::pg_catalog.text, c.last_name::pg_catalog.text,
                                          c.metadata::pg_catalog.jsonb, c.audiences::pg_catalog.text[])
        FROM public.sendry_contacts c
        WHERE c.user_id OPERATOR(pg_catalog.=) u.id
    $body$
    $fn$;

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
    EXECUTE $fn$
    CREATE OR REPLACE FUNCTION public.sendry_render_contacts(p_user_ids uuid[])
    RETURNS TABLE (user_id uuid, email text, audiences text[], body jsonb, hash bigint, problem text)
    LANGUAGE sql
    STABLE
    AS $body$
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
    $body$
    $fn$;

    -- The contacts of these users that differ from what was last enqueued for them, as
    -- their outbox row gets them (payload with leave_audiences, old_email, problem) and
    -- as sendry_contact_state keeps them (state_email, state_audiences: those of the
    -- last contact without a problem; known: the user has a state row). The state row
    -- is probed per user (LATERAL ... LIMIT 1): one index probe each whatever the
    -- planner believes about the table's size, never a scan of it. Inlinable.
    EXECUTE $fn$
    CREATE OR REPLACE FUNCTION public.sendry_changed_contacts(p_user_ids uuid[], p_old_email text DEFAULT NULL)
    RETURNS TABLE (user_id uuid, email text, old_email text, payload jsonb, hash bigint, problem text,
                   known boolean, state_email text, state_audiences text[])
    LANGUAGE sql
    STABLE
    AS $body$
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
    $body$
    $fn$;

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
    EXECUTE $fn$
    CREATE OR REPLACE FUNCTION public.sendry_enqueue_contacts(p_user_ids uuid[], p_class text,
                                                             p_old_email text DEFAULT NULL,
                                                             p_check boolean DEFAULT true,
                                                             OUT enqueued integer, OUT failed integer)
    LANGUAGE plpgsql
    SET search_path = ''
    SET plan_cache_mode = force_generic_plan
    AS $body$
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
    $body$
    $fn$;

    -- The triggers on auth.users. SECURITY DEFINER with an empty search_path: in
    -- Supabase the auth server writes as supabase_auth_admin with search_path=auth, and
    -- has no rights on public.sendry_outbox. Anything that goes wrong is turned into a
    -- WARNING and recorded in public.sendry_enqueue_errors (in a subtransaction of its
    -- own, so that the WARNING goes out even if that fails): a user's write never fails
    -- because of the outbox.
    --
    -- After an INSERT: a statement-level trigger over the transition table (one
    -- set-based statement for a bulk import, about half the cost of a row trigger).
    EXECUTE $fn$
    CREATE OR REPLACE FUNCTION public.sendry_auth_users_inserted()
    RETURNS trigger
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = ''
    AS $body$
    DECLARE
        v_sync_on text;
    BEGIN
        BEGIN
            v_sync_on := COALESCE((SELECT sync_on FROM public.sendry_settings LIMIT 1), 'signup');
            PERFORM public.sendry_enqueue_contacts(
                ARRAY(SELECT n.id FROM new_rows n WHERE public.sendry_user_is_synced(n, v_sync_on)),
                'live', p_check => false);
        EXCEPTION WHEN OTHERS THEN
            RAISE WARNING 'sendry-sync: could not enqueue new users for Sendry: % (SQLSTATE %)',
                SQLERRM, SQLSTATE;
            BEGIN
                INSERT INTO public.sendry_enqueue_errors (trigger_name, table_name, sqlstate, message, user_ids)
                VALUES (TG_NAME, TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME, SQLSTATE, SQLERRM,
                        ARRAY(SELECT n.id FROM new_rows n));
            EXCEPTION WHEN OTHERS THEN
                RAISE WARNING 'sendry-sync: could not record that in public.sendry_enqueue_errors either: % (SQLSTATE %)',
                    SQLERRM, SQLSTATE;
            END;
        END;
        RETURN NULL;
    END
    $body$
    $fn$;

    -- After an UPDATE: a row-level trigger whose WHEN clause compares only the columns a
    -- contact can depend on (see the trigger below), so that GoTrue's sign-in and token
    -- refresh UPDATE (last_sign_in_at, updated_at) and its role '' -> 'authenticated'
    -- follow-up run no function at all. For a synced user it enqueues the contact if it
    -- changed (names, metadata, email, audiences; the confirmation under sync_on =
    -- 'confirmed'; an anonymous user becoming permanent). An email change carries the
    -- previous address in old_email, so the worker moves the contact. A soft delete
    -- (deleted_at set; GoTrue overwrites email with a hash, never to be sent) enqueues
    -- the deletion of the previous address (in confirmed-only mode only if it was
    -- confirmed: an unconfirmed address was never sent, and may be someone else's).
    EXECUTE $fn$
    CREATE OR REPLACE FUNCTION public.sendry_auth_users_updated()
    RETURNS trigger
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = ''
    AS $body$
    DECLARE
        v_sync_on   text;
        v_on_delete text;
    BEGIN
        BEGIN
            SELECT s.sync_on, s.on_delete INTO v_sync_on, v_on_delete FROM public.sendry_settings s LIMIT 1;
            v_sync_on := COALESCE(v_sync_on, 'signup');
            v_on_delete := COALESCE(v_on_delete, 'delete_contact');
            IF OLD.deleted_at IS NULL AND NEW.deleted_at IS NOT NULL THEN
                IF v_on_delete <> 'keep' AND NULLIF(pg_catalog.btrim(OLD.email), '') IS NOT NULL
                   AND NOT COALESCE(OLD.is_anonymous, false)
                   AND (v_sync_on = 'signup' OR OLD.email_confirmed_at IS NOT NULL) THEN
                    INSERT INTO public.sendry_outbox (class, op, user_id, email, payload)
                    VALUES ('live', 'delete', OLD.id, pg_catalog.lower(pg_catalog.btrim(OLD.email)),
                            pg_catalog.jsonb_build_object('delete_mode', v_on_delete));
                END IF;
                DELETE FROM public.sendry_contact_state WHERE user_id = OLD.id;
            ELSIF public.sendry_user_is_synced(NEW, v_sync_on) THEN
                PERFORM public.sendry_enqueue_contacts(
                    ARRAY[NEW.id], 'live',
                    CASE WHEN NOT COALESCE(OLD.is_anonymous, false)
                         THEN NULLIF(pg_catalog.lower(pg_catalog.btrim(OLD.email)), '') END);
            END IF;
        EXCEPTION WHEN OTHERS THEN
            RAISE WARNING 'sendry-sync: could not enqueue updated users for Sendry: % (SQLSTATE %)',
                SQLERRM, SQLSTATE;
            BEGIN
                INSERT INTO public.sendry_enqueue_errors (trigger_name, table_name, sqlstate, message, user_ids)
                VALUES (TG_NAME, TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME, SQLSTATE, SQLERRM, ARRAY[NEW.id]);
            EXCEPTION WHEN OTHERS THEN
                RAISE WARNING 'sendry-sync: could not record that in public.sendry_enqueue_errors either: % (SQLSTATE %)',
                    SQLERRM, SQLSTATE;
            END;
        END;
        RETURN NULL;
    END
    $body$
    $fn$;

    -- After a DELETE (a hard delete: GoTrue's DELETE FROM users), the contact goes too,
    -- as sendry_settings.on_delete says; in confirmed-only mode only if the address was
    -- confirmed (an unconfirmed one was never sent, and may be someone else's).
    EXECUTE $fn$
    CREATE OR REPLACE FUNCTION public.sendry_auth_users_deleted()
    RETURNS trigger
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = ''
    AS $body$
    BEGIN
        BEGIN
            INSERT INTO public.sendry_outbox (class, op, user_id, email, payload)
            SELECT 'live', 'delete', o.id, pg_catalog.lower(pg_catalog.btrim(o.email)),
                   pg_catalog.jsonb_build_object('delete_mode', s.on_delete)
            FROM old_rows o
            CROSS JOIN (SELECT COALESCE((SELECT on_delete FROM public.sendry_settings LIMIT 1),
                                        'delete_contact') AS on_delete,
                               COALESCE((SELECT sync_on FROM public.sendry_settings LIMIT 1),
                                        'signup') AS sync_on) s
            WHERE NULLIF(pg_catalog.btrim(o.email), '') IS NOT NULL
              AND NOT COALESCE(o.is_anonymous, false)
              AND o.deleted_at IS NULL
              AND s.on_delete <> 'keep'
              AND (s.sync_on = 'signup' OR o.email_confirmed_at IS NOT NULL);
            DELETE FROM public.sendry_contact_state s USING old_rows o WHERE s.user_id = o.id;
        EXCEPTION WHEN OTHERS THEN
            RAISE WARNING 'sendry-sync: could not enqueue deleted users for Sendry: % (SQLSTATE %)',
                SQLERRM, SQLSTATE;
            BEGIN
                INSERT INTO public.sendry_enqueue_errors (trigger_name, table_name, sqlstate, message, user_ids)
                VALUES (TG_NAME, TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME, SQLSTATE, SQLERRM,
                        ARRAY(SELECT o.id FROM old_rows o));
            EXCEPTION WHEN OTHERS THEN
                RAISE WARNING 'sendry-sync: could not record that in public.sendry_enqueue_errors either: % (SQLSTATE %)',
                    SQLERRM, SQLSTATE;
            END;
        END;
        RETURN NULL;
    END
    $body$
    $fn$;

    -- Applies one stored Sendry event to auth.users: an opt-out (contact.updated with
    -- unsubscribed true, a global unsubscribe, a suppression, email.complained, a hard
    -- bounce) sets raw_app_meta_data.sendry_unsubscribed = true with when and why; a
    -- re-subscribe (contact.updated with unsubscribed false) sets it false. An older
    -- event never overrides a newer one. Unknown emails and event types are kept,
    -- marked ignored with the reason. Errors leave the event 'received' with the error
    -- in reason: SELECT public.sendry_inbox_apply(id) FROM sendry_inbox WHERE status = 'received'
    -- applies them again.
    EXECUTE $fn$
    CREATE OR REPLACE FUNCTION public.sendry_inbox_apply(p_id bigint)
    RETURNS text
    LANGUAGE plpgsql
    SET search_path = ''
    AS $body$
    DECLARE
        ev        public.sendry_inbox%ROWTYPE;
        d         jsonb;
        v_email   text;
        v_action  text;      -- 'unsubscribe' | 'resubscribe'
        v_why     text;
        v_at      timestamptz;
        v_user    uuid;
        v_sso     uuid;      -- an SSO user the address was last enqueued for
        v_prev_at timestamptz;
        v_prev_text text;
        v_result  text;
    BEGIN
        SELECT * INTO ev FROM public.sendry_inbox WHERE id = p_id FOR UPDATE;
        IF NOT FOUND THEN
            RETURN 'ignored: no such event';
        END IF;
        BEGIN
            d := CASE WHEN pg_catalog.jsonb_typeof(ev.payload -> 'data') = 'object'
                      THEN ev.payload -> 'data' ELSE ev.payload END;
            v_email := COALESCE(d ->> 'email',
                                CASE pg_catalog.jsonb_typeof(d -> 'to')
                                     WHEN 'array' THEN d -> 'to' ->> 0
                                     WHEN 'string' THEN d ->> 'to' END,
                                d ->> 'recipient');
            v_email := pg_catalog.lower(pg_catalog.btrim(v_email));
            BEGIN
                v_at := COALESCE((ev.payload ->> 'created_at')::timestamptz,
                                 (d ->> 'created_at')::timestamptz,
                                 (d ->> 'timestamp')::timestamptz, pg_catalog.now());
            EXCEPTION WHEN others THEN
                v_at := pg_catalog.now();
            END;

            CASE
            WHEN ev.type IN ('contact.updated', 'contact.created') THEN
                IF pg_catalog.jsonb_typeof(d -> 'unsubscribed') = 'boolean' THEN
                    v_action := CASE WHEN (d ->> 'unsubscribed')::boolean
                                     THEN 'unsubscribe' ELSE 'resubscribe' END;
                    v_why := CASE v_action WHEN 'unsubscribe' THEN 'unsubscribed' ELSE 'contact.updated' END;
                ELSE
                    v_result := 'ignored: no unsubscribed field';
                END IF;
            WHEN ev.type = 'email.complained' THEN
                v_action := 'unsubscribe';
                v_why := 'complaint';
            WHEN ev.type = 'email.bounced' THEN
                IF pg_catalog.lower(COALESCE(d ->> 'bounce_type', d ->> 'type', d -> 'bounce' ->> 'type', ''))
                   IN ('hard', 'permanent') THEN
                    v_action := 'unsubscribe';
                    v_why := 'hard_bounce';
                ELSE
                    v_result := 'ignored: not a hard bounce';
                END IF;
            WHEN ev.type = 'unsubscribe' THEN
                IF d ->> 'list_id' IS NULL THEN
                    v_action := 'unsubscribe';
                    v_why := COALESCE(NULLIF(d ->> 'reason', ''), 'unsubscribe');
                ELSE
                    v_result := 'ignored: unsubscribed from one list only';
                END IF;
            WHEN ev.type = 'suppression' THEN
                v_action := 'unsubscribe';
                v_why := COALESCE(NULLIF(d ->> 'reason', ''), 'suppression');
            ELSE
                v_result := 'ignored: event type not mirrored';
            END CASE;

            IF v_result IS NULL AND (v_email IS NULL OR v_email = '') THEN
                v_result := 'ignored: no email in the event';
            END IF;
            IF v_result IS NULL THEN
                -- By key at any number of users: GoTrue's unique index on email is
                -- partial (WHERE is_sso_user = false; SSO users may share an address),
                -- so the lookup names its predicate. SSO users are found through the
                -- address last enqueued for them (sendry_contact_state_email_idx; no
                -- index may be created in schema auth), the most recent first.
                SELECT u.id, u.raw_app_meta_data ->> 'sendry_unsubscribed_at'
                  INTO v_user, v_prev_text
                  FROM auth.users u WHERE u.email = v_email AND u.is_sso_user = false FOR UPDATE;
                IF NOT FOUND THEN
                    FOR v_sso IN SELECT s.user_id FROM public.sendry_contact_state s
                                  WHERE s.email = v_email ORDER BY s.updated_at DESC LOOP
                        SELECT u.id, u.raw_app_meta_data ->> 'sendry_unsubscribed_at'
                          INTO v_user, v_prev_text
                          FROM auth.users u
                         WHERE u.id = v_sso AND u.email = v_email AND u.is_sso_user FOR UPDATE;
                        EXIT WHEN FOUND;
                    END LOOP;
                END IF;
                BEGIN
                    v_prev_at := v_prev_text::timestamptz;
                EXCEPTION WHEN others THEN
                    v_prev_at := NULL;   -- not a time we wrote: do not let it block updates
                END;
                IF v_user IS NULL THEN
                    v_result := 'ignored: no user with this email';
                ELSIF v_prev_at IS NOT NULL AND v_prev_at > v_at THEN
                    v_result := 'ignored: older than the state already recorded';
                ELSE
                    UPDATE auth.users
                       SET raw_app_meta_data = COALESCE(raw_app_meta_data, '{}'::jsonb)
                           || pg_catalog.jsonb_build_object(
                                  'sendry_unsubscribed', v_action = 'unsubscribe',
                                  'sendry_unsubscribed_at', v_at,
                                  'sendry_unsubscribed_reason', v_why)
                     WHERE id = v_user;
                    v_result := 'applied';
                END IF;
            END IF;

            UPDATE public.sendry_inbox
               SET status = CASE WHEN v_result = 'applied' THEN 'applied' ELSE 'ignored' END,
                   reason = CASE WHEN v_result = 'applied' THEN v_action || ' (' || v_why || ')'
                                 ELSE pg_catalog.substr(v_result, 10) END,
                   email = v_email, applied_at = pg_catalog.now()
             WHERE id = p_id;
            RETURN v_result;
        EXCEPTION WHEN OTHERS THEN
            UPDATE public.sendry_inbox SET status = 'received', reason = 'error: ' || SQLERRM
             WHERE id = p_id;
            RETURN 'error: ' || SQLERRM;
        END;
    END
    $body$
    $fn$;

    EXECUTE $t$
    CREATE OR REPLACE TRIGGER sendry_sync_users_insert
        AFTER INSERT ON auth.users
        REFERENCING NEW TABLE AS new_rows
        FOR EACH STATEMENT EXECUTE FUNCTION public.sendry_auth_users_inserted()
    $t$;
    -- The UPDATE trigger fires only when a column a contact can depend on changed: every
    -- column of auth.users but GoTrue's bookkeeping (sign-in time, updated_at, role and
    -- aud, the password hash, tokens and their send times, a pending email or phone
    -- change) and generated columns. A mapping that reads one of those is not re-synced
    -- when only they change (the repair pass catches up). The column list (UPDATE OF)
    -- lets an UPDATE that sets none of them, as GoTrue's sign-in and token refresh do,
    -- skip the trigger without even reading its WHEN clause (about 40 us a statement);
    -- the WHEN clause skips an UPDATE that sets them to what they were.
    SELECT pg_catalog.string_agg(pg_catalog.quote_ident(a.attname), ', ' ORDER BY a.attnum),
           pg_catalog.string_agg(pg_catalog.format('OLD.%1$I IS DISTINCT FROM NEW.%1$I', a.attname),
                                 ' OR ' ORDER BY a.attnum)
      INTO v_columns, v_when
      FROM pg_catalog.pg_attribute a
     WHERE a.attrelid = 'auth.users'::regclass AND a.attnum > 0 AND NOT a.attisdropped
       AND a.attgenerated = ''
       AND a.attname NOT IN ('instance_id', 'aud', 'role', 'encrypted_password', 'last_sign_in_at',
                             'updated_at', 'confirmation_token', 'confirmation_sent_at',
                             'recovery_token', 'recovery_sent_at', 'email_change_token_new',
                             'email_change_token_current', 'email_change', 'email_change_sent_at',
                             'email_change_confirm_status', 'phone_change', 'phone_change_token',
                             'phone_change_sent_at', 'reauthentication_token',
                             'reauthentication_sent_at');
    EXECUTE pg_catalog.format($t$
    CREATE OR REPLACE TRIGGER sendry_sync_users_update
        AFTER UPDATE OF %s ON auth.users
        FOR EACH ROW
        WHEN (%s)
        EXECUTE FUNCTION public.sendry_auth_users_updated()
    $t$, v_columns, v_when);
    EXECUTE $t$
    CREATE OR REPLACE TRIGGER sendry_sync_users_delete
        AFTER DELETE ON auth.users
        REFERENCING OLD TABLE AS old_rows
        FOR EACH STATEMENT EXECUTE FUNCTION public.sendry_auth_users_deleted()
    $t$;
END
$install$;

-- Watching the project's own tables: SELECT sendry_watch('public.profiles', 'id') makes
-- every INSERT, UPDATE and DELETE of public.profiles re-render the contacts of the users
-- it touched (the uuid column `id` names the user) and enqueue those that changed.
-- sendry_unwatch('public.profiles') stops it; public.sendry_watched_tables lists them.
DO $install$
BEGIN
    IF pg_catalog.to_regclass('auth.users') IS NULL THEN
        RETURN;
    END IF;

    -- The trigger function of every watched table (statement-level, over the transition
    -- tables; TG_ARGV[0] is the user column). As safe as the auth.users triggers:
    -- SECURITY DEFINER (the app's roles write these tables), empty search_path, errors
    -- turned into a WARNING and recorded.
    EXECUTE $fn$
    CREATE OR REPLACE FUNCTION public.sendry_watched_changed()
    RETURNS trigger
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = ''
    AS $body$
    DECLARE
        v_ids     uuid[];
        v_sync_on text;
    BEGIN
        BEGIN
            -- Static SQL (PL/pgSQL keeps a plan per watched table): the user column is
            -- read by name from each row as jsonb, cheaper than planning an EXECUTE.
            IF TG_OP = 'INSERT' THEN
                SELECT pg_catalog.array_agg(DISTINCT (pg_catalog.to_jsonb(n) ->> TG_ARGV[0])::uuid)
                  INTO v_ids FROM new_rows n;
            ELSIF TG_OP = 'DELETE' THEN
                SELECT pg_catalog.array_agg(DISTINCT (pg_catalog.to_jsonb(o) ->> TG_ARGV[0])::uuid)
                  INTO v_ids FROM old_rows o;
            ELSE
                SELECT pg_catalog.array_agg(DISTINCT k.id) INTO v_ids
                  FROM (SELECT (pg_catalog.to_jsonb(n) ->> TG_ARGV[0])::uuid AS id FROM new_rows n
                        UNION ALL
                        SELECT (pg_catalog.to_jsonb(o) ->> TG_ARGV[0])::uuid FROM old_rows o) k;
            END IF;
            v_ids := pg_catalog.array_remove(v_ids, NULL);
            IF pg_catalog.cardinality(v_ids) > 0 THEN
                v_sync_on := COALESCE((SELECT sync_on FROM public.sendry_settings LIMIT 1), 'signup');
                PERFORM public.sendry_enqueue_contacts(
                    ARRAY(SELECT u.id FROM auth.users u
                           WHERE u.id = ANY (v_ids) AND public.sendry_user_is_synced(u, v_sync_on)),
                    'live');
            END IF;
        EXCEPTION WHEN OTHERS THEN
            RAISE WARNING 'sendry-sync: could not enqueue the users of changed % rows for Sendry: % (SQLSTATE %)',
                TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME, SQLERRM, SQLSTATE;
            BEGIN
                INSERT INTO public.sendry_enqueue_errors (trigger_name, table_name, sqlstate, message, user_ids)
                VALUES (TG_NAME, TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME, SQLSTATE, SQLERRM, v_ids);
            EXCEPTION WHEN OTHERS THEN
                RAISE WARNING 'sendry-sync: could not record that in public.sendry_enqueue_errors either: % (SQLSTATE %)',
                    SQLERRM, SQLSTATE;
            END;
        END;
        RETURN NULL;
    END
    $body$
    $fn$;

    -- Watch a table: three statement-level triggers (AFTER INSERT, UPDATE, DELETE)
    -- named sendry_watch_insert/_update/_delete. p_user_column is its uuid column that
    -- holds the auth.users id. Calling it again replaces them. Needs the TRIGGER
    -- privilege on the table (it runs with the caller's rights).
    EXECUTE $fn$
    CREATE OR REPLACE FUNCTION public.sendry_watch(p_table regclass, p_user_column name DEFAULT 'id')
    RETURNS text
    LANGUAGE plpgsql
    SET search_path = ''
    AS $body$
    DECLARE
        v_type regtype;
        v_op   text;
    BEGIN
        IF p_table = 'auth.users'::regclass THEN
            RAISE EXCEPTION 'sendry-sync: auth.users needs no watching: its own triggers sync it';
        END IF;
        IF (SELECT c.relname LIKE 'sendry\_%' FROM pg_catalog.pg_class c WHERE c.oid = p_table) THEN
            RAISE EXCEPTION 'sendry-sync: % is one of sendry-sync''s own tables', p_table;
        END IF;
        IF (SELECT c.relkind NOT IN ('r', 'p') FROM pg_catalog.pg_class c WHERE c.oid = p_table) THEN
            RAISE EXCEPTION 'sendry-sync: % is not a table', p_table;
        END IF;
        SELECT a.atttypid::regtype INTO v_type
          FROM pg_catalog.pg_attribute a
         WHERE a.attrelid = p_table AND a.attname = p_user_column AND a.attnum > 0 AND NOT a.attisdropped;
        IF v_type IS NULL THEN
            RAISE EXCEPTION 'sendry-sync: % has no column %', p_table, pg_catalog.quote_ident(p_user_column);
        ELSIF v_type <> 'uuid'::regtype THEN
            RAISE EXCEPTION 'sendry-sync: column % of % is %, not uuid (the auth.users id)',
                pg_catalog.quote_ident(p_user_column), p_table, v_type;
        END IF;
        FOREACH v_op IN ARRAY ARRAY['INSERT', 'UPDATE', 'DELETE'] LOOP
            EXECUTE pg_catalog.format(
                'CREATE OR REPLACE TRIGGER %I AFTER %s ON %s REFERENCING %s'
                ' FOR EACH STATEMENT EXECUTE FUNCTION public.sendry_watched_changed(%L)',
                'sendry_watch_' || pg_catalog.lower(v_op), v_op, p_table,
                CASE v_op WHEN 'INSERT' THEN 'NEW TABLE AS new_rows'
                          WHEN 'DELETE' THEN 'OLD TABLE AS old_rows'
                          ELSE 'OLD TABLE AS old_rows NEW TABLE AS new_rows' END,
                p_user_column);
        END LOOP;
        RETURN pg_catalog.format('sendry-sync: watching %s (user column %I)', p_table, p_user_column);
    END
    $body$
    $fn$;

    EXECUTE $fn$
    CREATE OR REPLACE FUNCTION public.sendry_unwatch(p_table regclass)
    RETURNS text
    LANGUAGE plpgsql
    SET search_path = ''
    AS $body$
    DECLARE
        v_found boolean := false;
        v_trigger name;
    BEGIN
        FOR v_trigger IN
            SELECT t.tgname FROM pg_catalog.pg_trigger t
             WHERE t.tgrelid = p_table AND t.tgfoid = 'public.sendry_watched_changed()'::regprocedure
        LOOP
            EXECUTE pg_catalog.format('DROP TRIGGER %I ON %s', v_trigger, p_table);
            v_found := true;
        END LOOP;
        RETURN pg_catalog.format(CASE WHEN v_found THEN 'sendry-sync: no longer watching %s'
                                      ELSE 'sendry-sync: %s was not watched' END, p_table);
    END
    $body$
    $fn$;

    EXECUTE $v$
    CREATE OR REPLACE VIEW public.sendry_watched_tables WITH (security_invoker = true) AS
    SELECT t.tgrelid::regclass AS table_name,
           convert_from(substring(t.tgargs FROM 1 FOR position('\x00'::bytea IN t.tgargs) - 1),
                        'UTF8') COLLATE "default" AS user_column,
           t.tgenabled <> 'D' AS enabled
      FROM pg_catalog.pg_trigger t
     WHERE t.tgname = 'sendry_watch_update'
       AND t.tgfoid = 'public.sendry_watched_changed()'::regprocedure
    $v$;

    -- The repair pass, for contacts that drifted while the triggers could not see it (they
    -- were disabled or installed late, a table changed before it was watched, the mapping
    -- was replaced, a TRUNCATE): compares what the mapping renders with what was last
    -- enqueued for each user and enqueues the differences as class 'bulk' rows (claimed
    -- after live ones, like a backfill); for a user deleted meanwhile whose contact was
    -- enqueued, the deletion (as sendry_settings.on_delete says). Each call examines the
    -- next p_batch users in id order (the position is kept in sendry_sync_state, key
    -- contacts_reconcile_after) and returns how many rows it enqueued (of which failed:
    -- the mapping renders them wrongly), how many users it examined, and whether more
    -- remain: call it until more is false. Calls wait for each other.
    EXECUTE $fn$
    CREATE OR REPLACE FUNCTION public.sendry_reconcile_contacts(p_batch integer DEFAULT 1000,
                                                               OUT enqueued integer, OUT failed integer,
                                                               OUT examined integer, OUT more boolean)
    LANGUAGE plpgsql
    SET search_path = ''
    AS $body$
    DECLARE
        v_after     uuid;
        v_lo        uuid;
        v_hi        uuid;
        v_ids       uuid[];
        v_sync_on   text;
        v_on_delete text;
        v_deletes   integer;
    BEGIN
        IF p_batch IS NULL OR p_batch NOT BETWEEN 1 AND 100000 THEN
            RAISE EXCEPTION 'sendry-sync: the batch must be between 1 and 100000 users, not %', p_batch;
        END IF;
        SELECT s.sync_on, s.on_delete INTO v_sync_on, v_on_delete FROM public.sendry_settings s LIMIT 1;
        INSERT INTO public.sendry_sync_state (key) VALUES ('contacts_reconcile_after')
            ON CONFLICT (key) DO NOTHING;
        SELECT st.value::uuid INTO v_after
          FROM public.sendry_sync_state st WHERE st.key = 'contacts_reconcile_after' FOR UPDATE;
        -- The users in (v_after, v_hi]; the smallest uuid as the lower bound of the first
        -- batch, so that each query is one index range scan.
        v_lo := COALESCE(v_after, '00000000-0000-0000-0000-000000000000');
        v_ids := ARRAY(SELECT u.id FROM auth.users u
                        WHERE u.id >= v_lo AND (u.id > v_after OR v_after IS NULL)
                        ORDER BY u.id LIMIT p_batch);
        examined := pg_catalog.cardinality(v_ids);
        more := examined = p_batch;
        v_hi := CASE WHEN more THEN v_ids[examined] ELSE 'ffffffff-ffff-ffff-ffff-ffffffffffff' END;

        SELECT e.enqueued, e.failed INTO enqueued, failed
          FROM public.sendry_enqueue_contacts(
                   ARRAY(SELECT u.id FROM auth.users u
                          WHERE u.id = ANY (v_ids)
                            AND public.sendry_user_is_synced(u, COALESCE(v_sync_on, 'signup'))),
                   'bulk') e;

        WITH gone AS (
            DELETE FROM public.sendry_contact_state s
             WHERE s.user_id >= v_lo AND (s.user_id > v_after OR v_after IS NULL) AND s.user_id <= v_hi
               AND NOT EXISTS (SELECT 1 FROM auth.users u WHERE u.id = s.user_id AND u.deleted_at IS NULL)
            RETURNING s.user_id, s.email
        )
        INSERT INTO public.sendry_outbox (class, op, user_id, email, payload)
        SELECT 'bulk', 'delete', g.user_id, g.email,
               pg_catalog.jsonb_build_object('delete_mode', COALESCE(v_on_delete, 'delete_contact'))
          FROM gone g
         WHERE g.email IS NOT NULL AND COALESCE(v_on_delete, 'delete_contact') <> 'keep';
        GET DIAGNOSTICS v_deletes = ROW_COUNT;
        enqueued := enqueued + v_deletes;

        UPDATE public.sendry_sync_state
           SET value = CASE WHEN more THEN v_hi::text END, updated_at = pg_catalog.now()
         WHERE key = 'contacts_reconcile_after';
    END
    $body$
    $fn$;
END
$install$;

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

-- ---- schema version ------------------------------------------------------------------
-- The version of this file, which `sendry-sync doctor` compares with the one embedded in
-- the binary (the Makefile reads the line marked SENDRY_SCHEMA_VERSION). Raise it when a
-- change here needs a new binary, or an older binary would not work with it.
CREATE OR REPLACE FUNCTION public.sendry_schema_version() RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = ''
    RETURN '2'; -- SENDRY_SCHEMA_VERSION

-- Supabase serves schema public over HTTP to anon and authenticated, and by default
-- grants them everything postgres creates there (functions are executable by PUBLIC
-- by default, callable as /rest/v1/rpc/<name>). None of it is theirs: every sendry_*
-- table has RLS on, and no privilege on any sendry_* object is left to PUBLIC, anon
-- or authenticated.
DO $install$
DECLARE
    obj record;
    grantee text;
    grantees text[] := ARRAY['PUBLIC'];
BEGIN
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'anon') THEN
        grantees := grantees || 'anon'::text;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'authenticated') THEN
        grantees := grantees || 'authenticated'::text;
    END IF;
    FOR obj IN
        SELECT c.oid::regclass::text AS name, c.relkind
        FROM pg_catalog.pg_class c
        WHERE c.relnamespace = 'public'::regnamespace AND c.relname LIKE 'sendry\_%'
          AND c.relkind IN ('r', 'v', 'S')
    LOOP
        IF obj.relkind = 'r' THEN
            EXECUTE format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY', obj.name);
        END IF;
        FOREACH grantee IN ARRAY grantees LOOP
            EXECUTE format('REVOKE ALL ON %s %s FROM %s',
                           CASE obj.relkind WHEN 'S' THEN 'SEQUENCE' ELSE 'TABLE' END, obj.name,
                           CASE grantee WHEN 'PUBLIC' THEN 'PUBLIC' ELSE pg_catalog.quote_ident(grantee) END);
        END LOOP;
    END LOOP;
    FOR obj IN
        SELECT p.oid::regprocedure::text AS name
        FROM pg_catalog.pg_proc p
        WHERE p.pronamespace = 'public'::regnamespace AND p.proname LIKE 'sendry\_%'
    LOOP
        FOREACH grantee IN ARRAY grantees LOOP
            EXECUTE format('REVOKE ALL ON FUNCTION %s FROM %s', obj.name,
                           CASE grantee WHEN 'PUBLIC' THEN 'PUBLIC' ELSE pg_catalog.quote_ident(grantee) END);
        END LOOP;
    END LOOP;
END
$install$;

RESET client_min_messages;

DO $install$
BEGIN
    IF pg_catalog.to_regclass('auth.users') IS NULL THEN
        RAISE NOTICE 'sendry-sync: no table auth.users here: installed the outbox only, no trigger. Fill public.sendry_outbox from your own users table (see README, "Without Supabase").';
    END IF;
    IF pg_catalog.current_setting('sendry.mapping_kept', true) = 'on' THEN
        RAISE NOTICE 'sendry-sync: kept public.sendry_contacts as it is: the contact mapping is yours, install.sql never replaces it (README, "The contact mapping").';
    END IF;
END
$install$;

COMMIT;
