-- Events for Sendry's automations (contract: DESIGN.md, "The event row"). An event is a
-- row of public.sendry_outbox with op 'event', the contact's address in email and
-- {"name": ..., "payload": {...}} in payload; the worker sends it as POST /v1/events
-- with event_id = sendry_event_id(id), after the contact rows enqueued before it.
-- Written by the triggers on auth.users (functions/users.sql: the built-in events named
-- in sendry_settings.events), by sendry_track (functions/events_users.sql) and
-- sendry_track_email (here), inside the caller's transaction: a rollback leaves nothing.

-- The event_id sent with an event row: 'ss-<database_id>-<id>', the database's uuid
-- (made once by migration 0005) and the row's id. The same for the row for ever, so a
-- retry, a crash after sending, a takeover or a requeue sends the same event_id and
-- Sendry answers the original event (deduped) instead of starting an automation again.
-- Called by the worker's claim for its event rows (one primary-key probe), as the owner
-- (SECURITY DEFINER: a worker role of its own needs EXECUTE on it, not the state table,
-- whose row level security would hide the row and lose the dedupe). An error,
-- never a NULL, when the database_id row is gone: events would lose their dedupe.
CREATE OR REPLACE FUNCTION public.sendry_event_id(p_id bigint)
RETURNS text
LANGUAGE plpgsql
STABLE
PARALLEL SAFE
SECURITY DEFINER
SET search_path = ''
AS $$
DECLARE
    v_database_id text;
BEGIN
    SELECT s.value INTO v_database_id FROM public.sendry_sync_state s WHERE s.key = 'database_id';
    IF v_database_id IS NULL OR v_database_id = '' THEN
        RAISE EXCEPTION 'sendry-sync: public.sendry_sync_state has no database_id row: event ids cannot be made'
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Restore the row from a backup; a new uuid would send events already sent but not yet recorded again (INSERT INTO public.sendry_sync_state (key, value) VALUES (''database_id'', gen_random_uuid()::text) only if none was ever sent).';
    END IF;
    RETURN 'ss-' || v_database_id || '-' || p_id::text;
END
$$;

-- What Sendry would reject in an event's name or payload, as "event: ...", or NULL: a
-- name of 1 to 200 characters, a payload that is a JSON object (NULL: {}).
CREATE OR REPLACE FUNCTION public.sendry_event_problem(p_name text, p_payload jsonb)
RETURNS text
LANGUAGE sql
IMMUTABLE
SET search_path = ''
AS $$
    SELECT 'event: ' || COALESCE(
        CASE WHEN p_name IS NULL THEN 'the name is NULL'
             WHEN pg_catalog.length(p_name) = 0 THEN 'the name is empty'
             WHEN pg_catalog.length(p_name) > 200
             THEN pg_catalog.format('the name is longer than 200 characters (%s)', pg_catalog.length(p_name)) END,
        CASE WHEN p_payload IS NOT NULL AND pg_catalog.jsonb_typeof(p_payload) <> 'object'
             THEN pg_catalog.format('the payload is a JSON %s, not an object', pg_catalog.jsonb_typeof(p_payload)) END)
$$;

-- Enqueues one event (class 'live') and returns its outbox row id. p_problem: why it
-- cannot be sent, found by the caller (a user without an address...), else NULL; the
-- name, payload (NULL: {}) and address (not blank, with an @) are checked here. A
-- problem: with p_strict an error (SQLSTATE 22023) naming it, else the row is enqueued
-- `failed` with the problem in last_error (email '(no address)' when there is none) and
-- a WARNING: never an error in the caller's transaction. The outbox's INSERT trigger notifies the worker.
CREATE OR REPLACE FUNCTION public.sendry_enqueue_event(p_caller text, p_user_id uuid, p_email text,
                                                       p_name text, p_payload jsonb,
                                                       p_problem text, p_strict boolean)
RETURNS bigint
LANGUAGE plpgsql
SET search_path = ''
AS $$
DECLARE
    v_payload jsonb := COALESCE(p_payload, '{}'::jsonb);
    v_email   text := NULLIF(pg_catalog.lower(pg_catalog.btrim(p_email)), '');
    -- The address is never in a message (they go to logs).
    v_problem text := COALESCE(public.sendry_event_problem(p_name, v_payload), p_problem,
                               CASE WHEN v_email IS NULL THEN 'event: no address'
                                    WHEN pg_catalog.strpos(v_email, '@') = 0 THEN 'event: the address has no @' END);
    v_id      bigint;
BEGIN
    IF v_problem IS NOT NULL AND COALESCE(p_strict, false) THEN
        RAISE EXCEPTION 'sendry-sync: %: % (event %)', p_caller, v_problem,
            COALESCE(pg_catalog.quote_literal(pg_catalog.left(p_name, 64)), 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    INSERT INTO public.sendry_outbox (class, op, user_id, email, payload, status, last_error)
    VALUES ('live', 'event', p_user_id, COALESCE(v_email, '(no address)'),
            pg_catalog.jsonb_build_object('name', p_name, 'payload', v_payload),
            CASE WHEN v_problem IS NULL THEN 'pending' ELSE 'failed' END, v_problem)
    RETURNING id INTO v_id;
    IF v_problem IS NOT NULL THEN
        RAISE WARNING 'sendry-sync: %: event % not sent (outbox row %, failed): %', p_caller,
            COALESCE(pg_catalog.quote_literal(pg_catalog.left(p_name, 64)), 'NULL'), v_id, v_problem;
    END IF;
    RETURN v_id;
END
$$;

-- The application's own event for an address (a contact outside auth.users): the row
-- is its own contact (user_id NULL). See sendry_enqueue_event for what is checked.
--   SELECT sendry_track_email('newsletter_joined', 'ada@example.com', '{"list": "weekly"}');
CREATE OR REPLACE FUNCTION public.sendry_track_email(p_name text, p_email text,
                                                     p_payload jsonb DEFAULT '{}',
                                                     p_strict boolean DEFAULT false)
RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = ''
AS $$
BEGIN
    RETURN public.sendry_enqueue_event('sendry_track_email', NULL, p_email, p_name, p_payload, NULL, p_strict);
END
$$;

-- Who may call it: not PUBLIC, anon or authenticated (PostgREST would serve it to every
-- visitor as /rest/v1/rpc/sendry_track_email: the step runner's sendry_migrate_lockdown
-- takes every sendry_* function from them after each step); service_role where it exists
-- (Supabase's server-side key). GRANT it to your own roles as you need.
REVOKE ALL ON FUNCTION public.sendry_track_email(text, text, jsonb, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION public.sendry_enqueue_event(text, uuid, text, text, jsonb, text, boolean) FROM PUBLIC;
DO $grants$ BEGIN IF pg_catalog.to_regrole('service_role') IS NOT NULL THEN
    GRANT EXECUTE ON FUNCTION public.sendry_track_email(text, text, jsonb, boolean) TO service_role;
END IF; END $grants$;

-- Migration 0005 widened the outbox's op CHECK to 'event' NOT VALID; it is validated
-- here, in a transaction of its own, under SHARE UPDATE EXCLUSIVE (writes to the outbox
-- go on while it reads the table), once.
DO $validate$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_constraint
                WHERE conrelid = 'public.sendry_outbox'::regclass AND conname = 'sendry_outbox_op_check'
                  AND NOT convalidated) THEN
        ALTER TABLE public.sendry_outbox VALIDATE CONSTRAINT sendry_outbox_op_check;
    END IF;
END
$validate$;
