-- Every object sql/install.sql creates exists, with the shape DESIGN.md promises.
-- Logged in as postgres (the role that ran the migration and owns the objects).
BEGIN;
SELECT plan(144);

-- The outbox table and its columns (DESIGN.md: "columns at least").
SELECT has_table('public', 'sendry_outbox', 'table public.sendry_outbox exists');
SELECT col_type_is('public', 'sendry_outbox', 'id',               'bigint',                   'id is bigint');
SELECT col_type_is('public', 'sendry_outbox', 'op',               'text',                     'op is text');
SELECT col_type_is('public', 'sendry_outbox', 'user_id',          'uuid',                     'user_id is uuid');
SELECT col_type_is('public', 'sendry_outbox', 'email',            'text',                     'email is text');
SELECT col_type_is('public', 'sendry_outbox', 'payload',          'jsonb',                    'payload is jsonb');
SELECT col_type_is('public', 'sendry_outbox', 'status',           'text',                     'status is text');
SELECT col_type_is('public', 'sendry_outbox', 'attempts',         'integer',                  'attempts is integer');
SELECT col_type_is('public', 'sendry_outbox', 'max_attempts',     'integer',                  'max_attempts is integer');
SELECT col_type_is('public', 'sendry_outbox', 'next_attempt_at',  'timestamp with time zone', 'next_attempt_at is timestamptz');
SELECT col_type_is('public', 'sendry_outbox', 'locked_by',        'text',                     'locked_by is text');
SELECT col_type_is('public', 'sendry_outbox', 'locked_until',     'timestamp with time zone', 'locked_until is timestamptz');
SELECT col_type_is('public', 'sendry_outbox', 'last_http_status', 'integer',                  'last_http_status is integer');
SELECT col_type_is('public', 'sendry_outbox', 'last_error',       'text',                     'last_error is text');
SELECT col_type_is('public', 'sendry_outbox', 'created_at',       'timestamp with time zone', 'created_at is timestamptz');
SELECT col_type_is('public', 'sendry_outbox', 'updated_at',       'timestamp with time zone', 'updated_at is timestamptz');
SELECT col_type_is('public', 'sendry_outbox', 'sent_at',          'timestamp with time zone', 'sent_at is timestamptz');
SELECT col_type_is('public', 'sendry_outbox', 'old_email',        'text',                     'old_email is text');
SELECT col_is_null('public', 'sendry_outbox', 'old_email', 'old_email is nullable (only an email change has one)');
SELECT col_hasnt_default('public', 'sendry_outbox', 'old_email', 'old_email has no default');

SELECT col_is_pk('public', 'sendry_outbox', 'id', 'id is the primary key');
SELECT is((SELECT attidentity::text FROM pg_attribute
            WHERE attrelid = 'public.sendry_outbox'::regclass AND attname = 'id'),
          'a', 'id is GENERATED ALWAYS AS IDENTITY');
SELECT col_is_null('public', 'sendry_outbox', 'user_id', 'user_id is nullable (rows not tied to a user)');
SELECT col_is_null('public', 'sendry_outbox', 'email', 'email is nullable (a captured upsert of a user may come without it)');
SELECT col_is_null('public', 'sendry_outbox', 'payload', 'payload is nullable (NULL: captured, rendered at the claim)');
SELECT col_hasnt_default('public', 'sendry_outbox', 'payload', 'payload has no default (a row inserted without one is captured)');
SELECT col_default_is('public', 'sendry_outbox', 'class', 'bulk', 'class defaults to bulk (a backfill by hand)');
-- The address CHECK: a row names its contact, an email or an upsert of a user.
SELECT is((SELECT convalidated FROM pg_constraint WHERE conrelid = 'public.sendry_outbox'::regclass
             AND conname = 'sendry_outbox_address_check'), true,
          'sendry_outbox_address_check exists and is validated');
SELECT throws_ok($$INSERT INTO public.sendry_outbox (op, user_id) VALUES ('delete', gen_random_uuid())$$,
                 '23514', NULL, 'a delete with no email is a check violation (sendry_outbox_address_check)');
SELECT throws_ok($$INSERT INTO public.sendry_outbox (op, user_id, payload) VALUES ('event', gen_random_uuid(), '{"name": "x"}')$$,
                 '23514', NULL, 'an event with no email is a check violation');
SELECT throws_ok($$INSERT INTO public.sendry_outbox (op) VALUES ('upsert')$$,
                 '23514', NULL, 'an upsert with neither an email nor a user is a check violation');
SELECT lives_ok($$INSERT INTO public.sendry_outbox (user_id) VALUES ('00000000-0000-4000-8000-0000000000a1')$$,
                'an upsert of a user with no email and no payload is accepted (the short backfill)');
SELECT is((SELECT ROW(op, class, status, email, payload)::text FROM public.sendry_outbox
            WHERE user_id = '00000000-0000-4000-8000-0000000000a1'),
          ROW('upsert', 'bulk', 'pending', NULL::text, NULL::jsonb)::text,
          'it is a captured bulk upsert, pending');
DELETE FROM public.sendry_outbox WHERE user_id = '00000000-0000-4000-8000-0000000000a1';
SELECT col_default_is('public', 'sendry_outbox', 'op', 'upsert', 'op defaults to upsert');
SELECT col_default_is('public', 'sendry_outbox', 'status', 'pending', 'status defaults to pending');

-- CHECK constraints: a bad op or status is rejected with check_violation (23514),
-- every allowed value is accepted.
SELECT throws_ok($$INSERT INTO public.sendry_outbox (op, email) VALUES ('merge', 'a@example.com')$$,
                 '23514', NULL, 'op outside upsert|delete is a check violation');
SELECT throws_ok($$INSERT INTO public.sendry_outbox (op, email) VALUES ('UPSERT', 'a@example.com')$$,
                 '23514', NULL, 'op is case-sensitive');
SELECT throws_ok($$INSERT INTO public.sendry_outbox (status, email) VALUES ('done', 'a@example.com')$$,
                 '23514', NULL, 'status outside pending|processing|sent|failed is a check violation');
SELECT throws_ok($$INSERT INTO public.sendry_outbox (status, email) VALUES ('', 'a@example.com')$$,
                 '23514', NULL, 'empty status is a check violation');
SELECT throws_ok($$INSERT INTO public.sendry_outbox (op, email) VALUES (NULL, 'a@example.com')$$,
                 '23502', NULL, 'op may not be NULL');
SELECT throws_ok($$INSERT INTO public.sendry_outbox (status, email) VALUES (NULL, 'a@example.com')$$,
                 '23502', NULL, 'status may not be NULL');
SELECT lives_ok($$INSERT INTO public.sendry_outbox (op, status, email, locked_by, locked_until)
                  SELECT o, s, 'ok-' || o || '-' || s || '@example.com',
                         CASE WHEN s = 'processing' THEN 'w' END,
                         CASE WHEN s = 'processing' THEN now() END
                  FROM unnest(ARRAY['upsert', 'delete']) o,
                       unnest(ARRAY['pending', 'processing', 'sent', 'failed']) s$$,
                'every allowed op and status is accepted');
SELECT is((SELECT count(*) FROM public.sendry_outbox WHERE email LIKE 'ok-%'), 8::bigint,
          'all 8 op x status combinations were stored');

-- The claim index: on (class, next_attempt_at, id), partial, and its predicate holds for
-- exactly the pending and processing rows (evaluated, not compared as text).
SELECT has_index('public', 'sendry_outbox', 'sendry_outbox_claim_idx',
                 ARRAY['class', 'next_attempt_at', 'id'], 'index sendry_outbox_claim_idx on (class, next_attempt_at, id)');
SELECT isnt((SELECT indpred FROM pg_index
              WHERE indexrelid = 'public.sendry_outbox_claim_idx'::regclass)::text,
            NULL, 'sendry_outbox_claim_idx is a partial index');
CREATE FUNCTION pg_temp.predicate_holds(idx regclass, s text) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    pred text;
    r boolean;
BEGIN
    SELECT pg_get_expr(indpred, indrelid) INTO pred FROM pg_index WHERE indexrelid = idx;
    EXECUTE format('SELECT %s FROM (SELECT %L::text AS status, ''x''::text AS email, ''x''::text AS old_email,'
                   ' gen_random_uuid() AS user_id) AS sendry_outbox', pred, s) INTO r;
    RETURN coalesce(r, false);
END
$$;
SELECT is(ARRAY(SELECT s FROM unnest(ARRAY['pending', 'processing', 'sent', 'failed', 'other']) s
                 WHERE pg_temp.predicate_holds('public.sendry_outbox_claim_idx', s) ORDER BY s),
          ARRAY['pending', 'processing'],
          'the claim index predicate covers pending and processing only');

-- The ordering indexes (an older unfinished row for the same user or address holds a
-- row back): on (user_id, id), (email, id) and (old_email, id), over the unfinished rows.
SELECT has_index('public', 'sendry_outbox', 'sendry_outbox_user_idx',
                 ARRAY['user_id', 'id'], 'index sendry_outbox_user_idx on (user_id, id)');
SELECT has_index('public', 'sendry_outbox', 'sendry_outbox_email_idx',
                 ARRAY['email', 'id'], 'index sendry_outbox_email_idx on (email, id)');
SELECT has_index('public', 'sendry_outbox', 'sendry_outbox_old_email_idx',
                 ARRAY['old_email', 'id'], 'index sendry_outbox_old_email_idx on (old_email, id)');
SELECT is(ARRAY(SELECT s FROM unnest(ARRAY['pending', 'processing', 'sent', 'failed']) s
                 WHERE pg_temp.predicate_holds('public.sendry_outbox_user_idx', s) ORDER BY s),
          ARRAY['pending', 'processing'],
          'sendry_outbox_user_idx covers pending and processing rows only');
SELECT is(ARRAY(SELECT s FROM unnest(ARRAY['pending', 'processing', 'sent', 'failed']) s
                 WHERE pg_temp.predicate_holds('public.sendry_outbox_email_idx', s) ORDER BY s),
          ARRAY['pending', 'processing'],
          'sendry_outbox_email_idx covers pending and processing rows only');
SELECT is(ARRAY(SELECT indexrelid::regclass::text FROM pg_index
                 WHERE indrelid = 'public.sendry_outbox'::regclass ORDER BY 1),
          ARRAY['sendry_outbox_claim_idx', 'sendry_outbox_email_idx', 'sendry_outbox_failed_idx',
                'sendry_outbox_old_email_idx', 'sendry_outbox_pkey', 'sendry_outbox_processing_idx',
                'sendry_outbox_user_idx'],
          'exactly the expected indexes exist on sendry_outbox');

-- Bounds an operator's UPDATE cannot break (SQLSTATE 23514).
SELECT throws_ok($$UPDATE public.sendry_outbox SET attempts = -5$$, '23514', NULL,
                 'attempts below 0 is a check violation');
SELECT throws_ok($$INSERT INTO public.sendry_outbox (email, max_attempts) VALUES ('m@example.com', 0)$$,
                 '23514', NULL, 'max_attempts 0 is a check violation');
SELECT throws_ok($$INSERT INTO public.sendry_outbox (email, max_attempts) VALUES ('m@example.com', 1001)$$,
                 '23514', NULL, 'max_attempts above 1000 is a check violation');
SELECT throws_ok($$INSERT INTO public.sendry_outbox (email, class) VALUES ('m@example.com', 'urgent')$$,
                 '23514', NULL, 'class outside live|bulk is a check violation');
SELECT throws_ok($$INSERT INTO public.sendry_outbox (email, status) VALUES ('m@example.com', 'processing')$$,
                 '23514', NULL, 'processing without a lease is a check violation');
SELECT throws_ok($$INSERT INTO public.sendry_outbox (email, locked_by) VALUES ('m@example.com', 'w')$$,
                 '23514', NULL, 'locked_by without locked_until is a check violation');
SELECT col_default_is('public', 'sendry_outbox', 'class', 'bulk', 'class defaults to bulk (a hand-written INSERT)');

-- Settings: one row (a boolean primary key that can only be true), two constrained texts.
SELECT has_table('public', 'sendry_settings', 'table public.sendry_settings exists');
SELECT columns_are('public', 'sendry_settings', ARRAY['singleton', 'sync_on', 'on_delete', 'updated_at', 'events'],
                   'sendry_settings has the documented columns');
SELECT col_is_pk('public', 'sendry_settings', 'singleton', 'sendry_settings.singleton is the primary key');
SELECT col_type_is('public', 'sendry_settings', 'sync_on', 'text', 'sendry_settings.sync_on is text');
SELECT col_type_is('public', 'sendry_settings', 'on_delete', 'text', 'sendry_settings.on_delete is text');
SELECT col_not_null('public', 'sendry_settings', 'sync_on', 'sendry_settings.sync_on is NOT NULL');
SELECT col_not_null('public', 'sendry_settings', 'on_delete', 'sendry_settings.on_delete is NOT NULL');
SELECT col_default_is('public', 'sendry_settings', 'sync_on', 'signup', 'sync_on defaults to signup');
SELECT col_default_is('public', 'sendry_settings', 'on_delete', 'delete_contact', 'on_delete defaults to delete_contact');

-- The inbox of Sendry events.
SELECT has_table('public', 'sendry_inbox', 'table public.sendry_inbox exists');
SELECT columns_are('public', 'sendry_inbox',
                   ARRAY['id', 'event_id', 'type', 'source', 'payload', 'email', 'status', 'reason',
                         'received_at', 'applied_at'],
                   'sendry_inbox has the documented columns');
SELECT col_is_pk('public', 'sendry_inbox', 'id', 'sendry_inbox.id is the primary key');
SELECT is((SELECT attidentity::text FROM pg_attribute
            WHERE attrelid = 'public.sendry_inbox'::regclass AND attname = 'id'),
          'a', 'sendry_inbox.id is GENERATED ALWAYS AS IDENTITY');
SELECT col_is_unique('public', 'sendry_inbox', ARRAY['event_id'], 'sendry_inbox.event_id is unique');
SELECT col_type_is('public', 'sendry_inbox', 'payload', 'jsonb', 'sendry_inbox.payload is jsonb');
SELECT col_type_is('public', 'sendry_inbox', 'received_at', 'timestamp with time zone', 'sendry_inbox.received_at is timestamptz');
SELECT col_type_is('public', 'sendry_inbox', 'applied_at', 'timestamp with time zone', 'sendry_inbox.applied_at is timestamptz');
SELECT col_default_is('public', 'sendry_inbox', 'source', 'webhook', 'sendry_inbox.source defaults to webhook');
SELECT col_default_is('public', 'sendry_inbox', 'status', 'received', 'sendry_inbox.status defaults to received');
SELECT throws_ok($$INSERT INTO public.sendry_inbox (event_id, type, payload, source) VALUES ('e1', 't', '{}', 'poll')$$,
                 '23514', NULL, 'inbox source outside webhook|reconcile is a check violation');
SELECT throws_ok($$INSERT INTO public.sendry_inbox (event_id, type, payload, status) VALUES ('e2', 't', '{}', 'done')$$,
                 '23514', NULL, 'inbox status outside received|applied|ignored is a check violation');
SELECT throws_ok($$INSERT INTO public.sendry_inbox (event_id, type, payload) VALUES (NULL, 't', '{}')$$,
                 '23502', NULL, 'inbox event_id may not be NULL');
SELECT lives_ok($$INSERT INTO public.sendry_inbox (event_id, type, payload, source, status)
                  SELECT 'ok-' || src || '-' || st, 't', '{}', src, st
                  FROM unnest(ARRAY['webhook', 'reconcile']) src,
                       unnest(ARRAY['received', 'applied', 'ignored']) st$$,
                'every allowed inbox source and status is accepted');
SELECT throws_ok($$INSERT INTO public.sendry_inbox (event_id, type, payload) VALUES ('ok-webhook-received', 't', '{}')$$,
                 '23505', NULL, 'a second row with the same event_id is a unique violation');

-- The worker's bookkeeping.
SELECT has_table('public', 'sendry_sync_state', 'table public.sendry_sync_state exists');
SELECT columns_are('public', 'sendry_sync_state', ARRAY['key', 'value', 'updated_at'],
                   'sendry_sync_state has the documented columns');
SELECT col_is_pk('public', 'sendry_sync_state', 'key', 'sendry_sync_state.key is the primary key');

-- The stats view.
SELECT has_view('public', 'sendry_outbox_stats', 'view public.sendry_outbox_stats exists');
SELECT columns_are('public', 'sendry_outbox_stats',
                   ARRAY['pending', 'due', 'processing', 'sent', 'failed', 'oldest_due_age', 'failed_last_hour',
                         'pending_live', 'pending_bulk', 'enqueue_errors_last_hour'],
                   'sendry_outbox_stats has the documented columns');
SELECT col_type_is('public', 'sendry_outbox_stats', 'pending', 'bigint', 'stats.pending is bigint');
SELECT col_type_is('public', 'sendry_outbox_stats', 'oldest_due_age', 'interval', 'stats.oldest_due_age is interval');
SELECT ok((SELECT reloptions @> ARRAY['security_invoker=true'] FROM pg_class
            WHERE oid = 'public.sendry_outbox_stats'::regclass),
          'sendry_outbox_stats is security_invoker (does not bypass the table''s privileges and RLS)');

-- Functions.
SELECT has_function('public', 'sendry_contact_payload', ARRAY['auth.users'],
                    'function sendry_contact_payload(auth.users) exists');
SELECT function_returns('public', 'sendry_contact_payload', ARRAY['auth.users'], 'jsonb',
                        'sendry_contact_payload returns jsonb');
SELECT has_function('public', 'sendry_auth_users_inserted', ARRAY[]::name[],
                    'function sendry_auth_users_inserted() exists');
SELECT function_returns('public', 'sendry_auth_users_inserted', ARRAY[]::name[], 'trigger',
                        'sendry_auth_users_inserted is a trigger function');
SELECT has_function('public', 'sendry_auth_users_updated', ARRAY[]::name[],
                    'function sendry_auth_users_updated() exists');
SELECT function_returns('public', 'sendry_auth_users_updated', ARRAY[]::name[], 'trigger',
                        'sendry_auth_users_updated is a trigger function');
SELECT is_definer('public', 'sendry_auth_users_inserted', ARRAY[]::name[],
                  'sendry_auth_users_inserted is SECURITY DEFINER (GoTrue has no rights on the outbox)');
SELECT is_definer('public', 'sendry_auth_users_updated', ARRAY[]::name[],
                  'sendry_auth_users_updated is SECURITY DEFINER');
SELECT has_function('public', 'sendry_auth_users_deleted', ARRAY[]::name[],
                    'function sendry_auth_users_deleted() exists');
SELECT function_returns('public', 'sendry_auth_users_deleted', ARRAY[]::name[], 'trigger',
                        'sendry_auth_users_deleted is a trigger function');
SELECT is_definer('public', 'sendry_auth_users_deleted', ARRAY[]::name[],
                  'sendry_auth_users_deleted is SECURITY DEFINER (GoTrue deletes users)');
SELECT has_function('public', 'sendry_inbox_receive', ARRAY['text', 'text', 'jsonb', 'text'],
                    'function sendry_inbox_receive(text, text, jsonb, text) exists');
SELECT function_returns('public', 'sendry_inbox_receive', ARRAY['text', 'text', 'jsonb', 'text'], 'text',
                        'sendry_inbox_receive returns text');
SELECT is((SELECT pronargdefaults::int FROM pg_proc WHERE oid = 'public.sendry_inbox_receive(text, text, jsonb, text)'::regprocedure),
          1, 'sendry_inbox_receive: the source argument is optional');
SELECT has_function('public', 'sendry_inbox_apply', ARRAY['bigint'],
                    'function sendry_inbox_apply(bigint) exists');
SELECT function_returns('public', 'sendry_inbox_apply', ARRAY['bigint'], 'text',
                        'sendry_inbox_apply returns text');
SELECT isnt_definer('public', 'sendry_inbox_receive', ARRAY['text', 'text', 'jsonb', 'text'],
                    'sendry_inbox_receive runs with the caller''s rights (not SECURITY DEFINER)');
SELECT isnt_definer('public', 'sendry_inbox_apply', ARRAY['bigint'],
                    'sendry_inbox_apply runs with the caller''s rights (not SECURITY DEFINER)');
SELECT is(ARRAY(SELECT p.proname::text FROM pg_proc p
                 WHERE p.pronamespace = 'public'::regnamespace AND p.proname LIKE 'sendry%'
                   AND COALESCE(NOT p.proconfig @> ARRAY['search_path=""'], true)
                 ORDER BY 1),
          ARRAY['sendry_changed_contacts', 'sendry_compared_contacts', 'sendry_contact_body', 'sendry_contact_payload',
                'sendry_render_contacts', 'sendry_settings_events', 'sendry_settings_on_delete', 'sendry_settings_sync_on',
                'sendry_user_event_payload', 'sendry_user_is_synced']::text[],
          'every sendry_* function pins an empty search_path, but the ten SQL ones written to be inlined');
-- Those have no SET clause so that they can be inlined; they must then resolve nothing
-- through the caller's search_path: a hostile search_path changes nothing.
SELECT ok(NOT EXISTS (SELECT 1 FROM pg_proc p
                       WHERE p.pronamespace = 'public'::regnamespace
                         AND p.proname IN ('sendry_changed_contacts', 'sendry_compared_contacts',
                                           'sendry_contact_body', 'sendry_contact_payload',
                                           'sendry_render_contacts', 'sendry_user_is_synced',
                                           'sendry_settings_sync_on', 'sendry_settings_on_delete',
                                           'sendry_settings_events')
                         AND (p.prosecdef OR p.proconfig IS NOT NULL OR p.provolatile = 'v'
                              OR p.prolang <> (SELECT oid FROM pg_language WHERE lanname = 'sql'))),
          'the inlinable ones stay inlinable: LANGUAGE sql, not volatile, no SET clause, not SECURITY DEFINER');
INSERT INTO auth.users (id, email, raw_user_meta_data, is_anonymous)
VALUES ('00000000-0000-4000-8000-000000000091', ' Ada@Example.com ', '{"full_name": "Ada King Lovelace"}', false);
CREATE SCHEMA hostile_test;
CREATE FUNCTION hostile_test.lower(text) RETURNS text LANGUAGE sql AS $$ SELECT 'HIJACKED' $$;
CREATE FUNCTION hostile_test.btrim(text) RETURNS text LANGUAGE sql AS $$ SELECT 'HIJACKED' $$;
CREATE FUNCTION hostile_test.jsonb_strip_nulls(jsonb) RETURNS jsonb LANGUAGE sql AS $$ SELECT '{}'::jsonb $$;
SET LOCAL search_path = hostile_test, pg_catalog, public;
SELECT is(public.sendry_contact_payload((SELECT u FROM auth.users u WHERE id = '00000000-0000-4000-8000-000000000091')) ->> 'email',
          'ada@example.com', 'the payload function ignores functions planted earlier on search_path');
SELECT is((SELECT body ->> 'first_name' FROM public.sendry_render_contacts(ARRAY['00000000-0000-4000-8000-000000000091'::uuid])),
          'Ada', 'so does sendry_render_contacts');
SELECT ok((SELECT public.sendry_user_is_synced(u, 'signup') FROM auth.users u WHERE id = '00000000-0000-4000-8000-000000000091'),
          'and sendry_user_is_synced');
RESET search_path;
DELETE FROM auth.users WHERE id = '00000000-0000-4000-8000-000000000091';
SELECT is(ARRAY(SELECT p.proname::text FROM pg_proc p
                 WHERE p.pronamespace = 'public'::regnamespace AND p.proname LIKE 'sendry%'
                 ORDER BY 1),
          ARRAY['sendry_auth_users_deleted', 'sendry_auth_users_inserted', 'sendry_auth_users_noted', 'sendry_auth_users_updated',
                'sendry_changed_contacts', 'sendry_claim_render', 'sendry_compared_contacts',
                'sendry_contact_body', 'sendry_contact_payload', 'sendry_contact_problem',
                'sendry_enqueue_contacts', 'sendry_enqueue_event', 'sendry_event_id', 'sendry_event_problem',
                'sendry_inbox_apply', 'sendry_inbox_receive',
                'sendry_migrate_fingerprint', 'sendry_migrate_lock_holders', 'sendry_migrate_lockdown', 'sendry_migrate_missing', 'sendry_migrate_step',
                'sendry_migrate_trigger', 'sendry_outbox_notify_insert', 'sendry_outbox_notify_update', 'sendry_rate_pause',
                'sendry_rate_take', 'sendry_reconcile_contacts',
                'sendry_render_contacts', 'sendry_schema_version', 'sendry_settings_changed', 'sendry_settings_compile',
                'sendry_settings_events', 'sendry_settings_on_delete', 'sendry_settings_sync_on', 'sendry_track', 'sendry_track_email',
                'sendry_unwatch', 'sendry_user_event_payload', 'sendry_user_is_synced',
                'sendry_watch', 'sendry_watched_changed'],
          'exactly the expected sendry_* functions exist');
SELECT matches(public.sendry_schema_version(), '^[0-9]+$',
               'sendry_schema_version() returns the version doctor compares with the binary''s');
SELECT is_definer('public', 'sendry_watched_changed', ARRAY[]::name[],
                  'sendry_watched_changed (the trigger of watched tables) is SECURITY DEFINER');
SELECT ok(NOT EXISTS (SELECT 1 FROM pg_proc p WHERE p.pronamespace = 'public'::regnamespace
                         AND p.proname IN ('sendry_watch', 'sendry_unwatch', 'sendry_reconcile_contacts',
                                           'sendry_enqueue_contacts', 'sendry_render_contacts', 'sendry_contact_problem')
                         AND p.prosecdef),
          'the functions an operator calls run with the caller''s rights');

-- The contact mapping: a view with the documented columns, security_invoker.
SELECT has_view('public', 'sendry_contacts', 'view public.sendry_contacts (the contact mapping) exists');
SELECT is(ARRAY(SELECT format('%s %s', attname, format_type(atttypid, atttypmod)) FROM pg_attribute
                 WHERE attrelid = 'public.sendry_contacts'::regclass AND attnum > 0 ORDER BY attnum),
          ARRAY['user_id uuid', 'email text', 'first_name text', 'last_name text', 'metadata jsonb', 'audiences text[]'],
          'sendry_contacts has the documented columns and types');
SELECT ok((SELECT reloptions @> ARRAY['security_invoker=true'] FROM pg_class
            WHERE oid = 'public.sendry_contacts'::regclass),
          'sendry_contacts is security_invoker');
SELECT has_view('public', 'sendry_watched_tables', 'view public.sendry_watched_tables exists');
SELECT columns_are('public', 'sendry_contact_state', ARRAY['user_id', 'email', 'audiences', 'contact_hash', 'updated_at'],
                   'sendry_contact_state has the documented columns');
SELECT col_is_pk('public', 'sendry_contact_state', 'user_id', 'sendry_contact_state.user_id is the primary key');
SELECT is(pg_catalog.pg_get_indexdef('public.sendry_inbox_received_idx'::regclass),
          'CREATE INDEX sendry_inbox_received_idx ON public.sendry_inbox USING btree (id) WHERE (status = ''received''::text)',
          'sendry_inbox indexes the events still to apply (the worker''s retry)');
SELECT is(pg_catalog.pg_get_indexdef('public.sendry_contact_state_email_idx'::regclass),
          'CREATE INDEX sendry_contact_state_email_idx ON public.sendry_contact_state USING btree (email) WHERE (email IS NOT NULL)',
          'sendry_contact_state is indexed by address (the inbox''s lookup of SSO users)');
SELECT columns_are('public', 'sendry_enqueue_errors',
                   ARRAY['id', 'occurred_at', 'trigger_name', 'table_name', 'sqlstate', 'message', 'user_ids'],
                   'sendry_enqueue_errors has the documented columns');

-- Triggers: on auth.users, AFTER ... FOR EACH STATEMENT (tgtype 4 = AFTER INSERT statement,
-- 8 = AFTER DELETE statement, 16 = AFTER UPDATE statement), with transition tables, enabled;
-- the UPDATE one on auth.users is AFTER UPDATE OF <columns> FOR EACH ROW WHEN (...)
-- (tgtype 17), so that GoTrue's sign-in UPDATE runs nothing; on the outbox, one NOTIFY
-- per INSERT statement without a transition table, and a row trigger on UPDATE (17)
-- with a WHEN clause.
SELECT has_trigger('auth', 'users', 'sendry_sync_users_insert', 'trigger sendry_sync_users_insert on auth.users');
SELECT trigger_is('auth', 'users', 'sendry_sync_users_insert', 'public', 'sendry_auth_users_inserted',
                  'sendry_sync_users_insert calls sendry_auth_users_inserted()');
SELECT has_trigger('auth', 'users', 'sendry_sync_users_update', 'trigger sendry_sync_users_update on auth.users');
SELECT trigger_is('auth', 'users', 'sendry_sync_users_update', 'public', 'sendry_auth_users_noted',
                  'sendry_sync_users_update calls sendry_auth_users_noted() (per row: notes the user)');
SELECT trigger_is('auth', 'users', 'sendry_sync_users_updated', 'public', 'sendry_auth_users_updated',
                  'sendry_sync_users_updated calls sendry_auth_users_updated() (per statement: enqueues)');
SELECT has_trigger('auth', 'users', 'sendry_sync_users_delete', 'trigger sendry_sync_users_delete on auth.users');
SELECT trigger_is('auth', 'users', 'sendry_sync_users_delete', 'public', 'sendry_auth_users_deleted',
                  'sendry_sync_users_delete calls sendry_auth_users_deleted()');
SELECT has_trigger('public', 'sendry_outbox', 'sendry_outbox_notify_insert', 'trigger sendry_outbox_notify_insert on the outbox');
SELECT trigger_is('public', 'sendry_outbox', 'sendry_outbox_notify_insert', 'public', 'sendry_outbox_notify_insert',
                  'sendry_outbox_notify_insert calls sendry_outbox_notify_insert()');
SELECT has_trigger('public', 'sendry_outbox', 'sendry_outbox_notify_update', 'trigger sendry_outbox_notify_update on the outbox');
SELECT trigger_is('public', 'sendry_outbox', 'sendry_outbox_notify_update', 'public', 'sendry_outbox_notify_update',
                  'sendry_outbox_notify_update calls sendry_outbox_notify_update()');
SELECT is(ARRAY(SELECT format('%s %s tgtype=%s enabled=%s old_table=%s new_table=%s',
                              tgrelid::regclass, tgname, tgtype, tgenabled,
                              tgoldtable IS NOT NULL, tgnewtable IS NOT NULL)
                 FROM pg_trigger WHERE tgname LIKE 'sendry%' ORDER BY 1),
          ARRAY['auth.users sendry_sync_users_delete tgtype=8 enabled=O old_table=t new_table=f',
                'auth.users sendry_sync_users_insert tgtype=4 enabled=O old_table=f new_table=t',
                'auth.users sendry_sync_users_update tgtype=17 enabled=O old_table=f new_table=f',
                'auth.users sendry_sync_users_updated tgtype=16 enabled=O old_table=f new_table=f',
                'sendry_outbox sendry_outbox_notify_insert tgtype=4 enabled=O old_table=f new_table=f',
                'sendry_outbox sendry_outbox_notify_update tgtype=17 enabled=O old_table=f new_table=f',
                'sendry_settings sendry_settings_compile tgtype=60 enabled=O old_table=f new_table=f'],
          'the seven triggers are AFTER and enabled; the outbox''s and the settings'' copy nothing per row');
SELECT ok((SELECT tgqual IS NOT NULL AND tgattr::int2[] <> '{}'
                  AND NOT (tgattr::int2[] && ARRAY(SELECT attnum FROM pg_attribute
                                                     WHERE attrelid = 'auth.users'::regclass
                                                       AND attname IN ('last_sign_in_at', 'updated_at', 'role')))
                  AND tgattr::int2[] @> ARRAY(SELECT attnum FROM pg_attribute
                                               WHERE attrelid = 'auth.users'::regclass
                                                 AND attname IN ('email', 'raw_user_meta_data', 'raw_app_meta_data',
                                                                 'email_confirmed_at', 'is_anonymous', 'deleted_at'))
             FROM pg_trigger WHERE tgname = 'sendry_sync_users_update'),
          'the UPDATE trigger lists email, the metadata, confirmation, is_anonymous and deleted_at, not last_sign_in_at, updated_at or role');
SELECT is((SELECT tgattr::int2[] FROM pg_trigger WHERE tgname = 'sendry_sync_users_updated'),
          (SELECT tgattr::int2[] FROM pg_trigger WHERE tgname = 'sendry_sync_users_update'),
          'the statement-level UPDATE trigger has the same column list (a sign-in fires neither)');

-- Row level security.
SELECT ok((SELECT relrowsecurity FROM pg_class WHERE oid = 'public.sendry_outbox'::regclass),
          'row level security is enabled on sendry_outbox');
SELECT is(ARRAY(SELECT format('%s rls=%s', c.relname, c.relrowsecurity) FROM pg_class c
                 WHERE c.relnamespace = 'public'::regnamespace AND c.relname LIKE 'sendry%'
                   AND c.relkind IN ('r', 'p') ORDER BY 1),
          ARRAY['sendry_changed_users rls=t', 'sendry_contact_state rls=t', 'sendry_enqueue_errors rls=t', 'sendry_inbox rls=t',
                'sendry_migrate_triggers rls=t', 'sendry_migrations rls=t', 'sendry_outbox rls=t', 'sendry_rate_budget rls=t', 'sendry_settings rls=t', 'sendry_sync_state rls=t'],
          'exactly the ten sendry_* tables exist, each with row level security enabled');

SELECT ok((SELECT reloptions @> ARRAY['fillfactor=70'] FROM pg_class WHERE oid = 'public.sendry_outbox'::regclass),
          'the outbox leaves room on each page for a row''s claim and completion (fillfactor 70)');
SELECT * FROM finish();
ROLLBACK;
