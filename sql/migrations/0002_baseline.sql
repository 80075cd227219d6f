-- sendry-step: baseline
-- sendry-step: idempotent
-- Schema version 2: the tables of sendry-sync 0.4 (the release before versioned
-- migrations), their columns, constraints, indexes, storage settings and the settings row.
-- A database that release installed has all of it: there this step is recorded without
-- being run (it would take ACCESS EXCLUSIVE on the outbox for nothing). On an empty
-- database it creates everything; on an older one (0.1 to 0.3) it upgrades in place, as
-- install.sql always did (IF NOT EXISTS, constraints added NOT VALID then validated).
-- Idempotent: run again when a table or index it creates is missing (a dropped claim
-- index: doctor says `sendry-sync migrate`).

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
