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

-- The worker's own bookkeeping (the reconciliation cursors).
CREATE TABLE IF NOT EXISTS public.sendry_sync_state (
    key        text        PRIMARY KEY,
    value      text,
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS sendry_outbox_failed_idx
    ON public.sendry_outbox (updated_at) WHERE status = 'failed';

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
                                                                            AS failed_last_hour
FROM public.sendry_outbox;

-- The auth.users half: only where Supabase's auth schema exists.
DO $install$
DECLARE
BEGIN
    IF pg_catalog.to_regclass('auth.users') IS NULL THEN
        RETURN;
    END IF;

    -- The Sendry contact body for a user: email trimmed and lower-cased, first and last
    -- name from the sign-up metadata (first_name/last_name, else full_name or name split
    -- at the first space, as OAuth providers send), metadata with string values only.
    -- Never `unsubscribed`: an upsert must not re-subscribe someone who opted out.
    -- One expression, no FROM and no SET clause: PostgreSQL inlines it into the
    -- triggers' INSERT ... SELECT and into a backfill, instead of calling a function per
    -- row (about 3x cheaper on a bulk insert). Every name is schema-qualified, so it
    -- does not depend on the caller's search_path.
    EXECUTE $fn$
    CREATE OR REPLACE FUNCTION public.sendry_contact_payload(u auth.users)
    RETURNS jsonb
    LANGUAGE sql
    STABLE
    AS $body$
        SELECT pg_catalog.jsonb_strip_nulls(pg_catalog.jsonb_build_object(
            'email', pg_catalog.lower(pg_catalog.btrim(u.email)),
            'first_name', pg_catalog.left(
                CASE WHEN NULLIF(pg_catalog.btrim(u.raw_user_meta_data OPERATOR(pg_catalog.->>) 'first_name'), '') IS NULL
                      AND NULLIF(pg_catalog.btrim(u.raw_user_meta_data OPERATOR(pg_catalog.->>) 'last_name'), '') IS NULL
                     THEN pg_catalog.substring(
                              COALESCE(NULLIF(pg_catalog.btrim(u.raw_user_meta_data OPERATOR(pg_catalog.->>) 'full_name'), ''),
                                       NULLIF(pg_catalog.btrim(u.raw_user_meta_data OPERATOR(pg_catalog.->>) 'name'), '')),
                              '^\S+')
                     ELSE NULLIF(pg_catalog.btrim(u.raw_user_meta_data OPERATOR(pg_catalog.->>) 'first_name'), '') END,
                200),
            'last_name', pg_catalog.left(
                CASE WHEN NULLIF(pg_catalog.btrim(u.raw_user_meta_data OPERATOR(pg_catalog.->>) 'first_name'), '') IS NULL
                      AND NULLIF(pg_catalog.btrim(u.raw_user_meta_data OPERATOR(pg_catalog.->>) 'last_name'), '') IS NULL
                     THEN NULLIF(pg_catalog.btrim(pg_catalog.substring(
                              COALESCE(NULLIF(pg_catalog.btrim(u.raw_user_meta_data OPERATOR(pg_catalog.->>) 'full_name'), ''),
                                       NULLIF(pg_catalog.btrim(u.raw_user_meta_data OPERATOR(pg_catalog.->>) 'name'), '')),
                              '^\S+\s+(.*)$')), '')
                     ELSE NULLIF(pg_catalog.btrim(u.raw_user_meta_data OPERATOR(pg_catalog.->>) 'last_name'), '') END,
                200),
            'metadata', pg_catalog.jsonb_build_object(
                'supabase_user_id', u.id::text,
                'signup_source', 'supabase')))
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
            INSERT INTO public.sendry_outbox (class, op, user_id, email, payload)
            SELECT 'live', 'upsert', n.id, pg_catalog.lower(pg_catalog.btrim(n.email)),
                   public.sendry_contact_payload(n)
            FROM new_rows n
            CROSS JOIN (SELECT COALESCE((SELECT sync_on FROM public.sendry_settings LIMIT 1),
                                        'signup') AS sync_on) s
            WHERE NULLIF(pg_catalog.btrim(n.email), '') IS NOT NULL
              AND NOT COALESCE(n.is_anonymous, false)
              AND n.deleted_at IS NULL
              AND (s.sync_on = 'signup' OR n.email_confirmed_at IS NOT NULL);
        EXCEPTION WHEN OTHERS THEN
            RAISE WARNING 'sendry-sync: could not enqueue new users for Sendry: % (SQLSTATE %)',
                SQLERRM, SQLSTATE;
        END;
        RETURN NULL;
    END
    $body$
    $fn$;

    -- An UPDATE is worth syncing when the user (now) has a usable email, is synced
    -- under sendry_settings.sync_on, and one of these happened: the email was set or
    -- replaced (the row carries the previous address in old_email, so the worker moves
    -- the contact instead of leaving a duplicate), an anonymous user became permanent,
    -- or, in confirmed-only mode, the email was just confirmed. GoTrue's
    -- role '' -> 'authenticated' update and logins change none of these.
    -- A soft delete (deleted_at set; GoTrue overwrites email with a hash, never to be
    -- sent) enqueues the deletion of the previous address (in confirmed-only mode only
    -- if it was confirmed: an unconfirmed address was never sent, and may be someone else's).
    EXECUTE $fn$
    CREATE OR REPLACE FUNCTION public.sendry_auth_users_updated()
    RETURNS trigger
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = ''
    AS $body$
    DECLARE
        v_sync_on   text := COALESCE((SELECT sync_on FROM public.sendry_settings LIMIT 1), 'signup');
        v_on_delete text := COALESCE((SELECT on_delete FROM public.sendry_settings LIMIT 1),
                                     'delete_contact');
    BEGIN
        BEGIN
            INSERT INTO public.sendry_outbox (class, op, user_id, email, old_email, payload)
            SELECT 'live', 'upsert', n.id, pg_catalog.lower(pg_catalog.btrim(n.email)),
                   CASE WHEN NULLIF(pg_catalog.btrim(o.email), '') IS NOT NULL
                         AND pg_catalog.lower(pg_catalog.btrim(o.email))
                             <> pg_catalog.lower(pg_catalog.btrim(n.email))
                         AND NOT COALESCE(o.is_anonymous, false)
                        THEN pg_catalog.lower(pg_catalog.btrim(o.email)) END,
                   public.sendry_contact_payload(n)
            FROM new_rows n JOIN old_rows o ON o.id = n.id
            WHERE NULLIF(pg_catalog.btrim(n.email), '') IS NOT NULL
              AND NOT COALESCE(n.is_anonymous, false)
              AND n.deleted_at IS NULL
              AND (v_sync_on = 'signup' OR n.email_confirmed_at IS NOT NULL)
              AND (o.email IS DISTINCT FROM n.email
                   OR (COALESCE(o.is_anonymous, false) AND NOT COALESCE(n.is_anonymous, false))
                   OR (v_sync_on = 'confirmed' AND o.email_confirmed_at IS NULL));

            IF v_on_delete <> 'keep' THEN
                INSERT INTO public.sendry_outbox (class, op, user_id, email, payload)
                SELECT 'live', 'delete', o.id, pg_catalog.lower(pg_catalog.btrim(o.email)),
                       pg_catalog.jsonb_build_object('delete_mode', v_on_delete)
                FROM new_rows n JOIN old_rows o ON o.id = n.id
                WHERE o.deleted_at IS NULL AND n.deleted_at IS NOT NULL
                  AND NULLIF(pg_catalog.btrim(o.email), '') IS NOT NULL
                  AND NOT COALESCE(o.is_anonymous, false)
                  AND (v_sync_on = 'signup' OR o.email_confirmed_at IS NOT NULL);
            END IF;
        EXCEPTION WHEN OTHERS THEN
            RAISE WARNING 'sendry-sync: could not enqueue updated users for Sendry: % (SQLSTATE %)',
                SQLERRM, SQLSTATE;
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
        EXCEPTION WHEN OTHERS THEN
            RAISE WARNING 'sendry-sync: could not enqueue deleted users for Sendry: % (SQLSTATE %)',
                SQLERRM, SQLSTATE;
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
                SELECT u.id, u.raw_app_meta_data ->> 'sendry_unsubscribed_at'
                  INTO v_user, v_prev_text
                  FROM auth.users u WHERE u.email = v_email FOR UPDATE;
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
    EXECUTE $t$
    CREATE OR REPLACE TRIGGER sendry_sync_users_update
        AFTER UPDATE ON auth.users
        REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
        FOR EACH STATEMENT EXECUTE FUNCTION public.sendry_auth_users_updated()
    $t$;
    EXECUTE $t$
    CREATE OR REPLACE TRIGGER sendry_sync_users_delete
        AFTER DELETE ON auth.users
        REFERENCING OLD TABLE AS old_rows
        FOR EACH STATEMENT EXECUTE FUNCTION public.sendry_auth_users_deleted()
    $t$;

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
    RETURN '1'; -- SENDRY_SCHEMA_VERSION

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
END
$install$;

COMMIT;
