-- The application's own events: sendry_track (a user of auth.users) and sendry_track_email
-- (an address), and sendry_event_id. A bad name, payload, user or address becomes a
-- failed row naming the reason (never an error in the caller's transaction), or with
-- p_strict an error 22023; a rolled-back transaction leaves nothing. Run as postgres (the
-- owner, as the SQL editor); users are created as the superuser, GoTrue-shaped.
\connect - supabase_admin
BEGIN;
SELECT plan(46);

INSERT INTO auth.users (instance_id, id, aud, role, email, email_confirmed_at, phone, is_anonymous, deleted_at,
                        raw_app_meta_data, raw_user_meta_data, is_sso_user, created_at, updated_at)
VALUES ('00000000-0000-0000-0000-000000000000', '00000000-0000-4000-8000-000000001101', 'authenticated',
        'authenticated', ' Pat@Example.com ', now(), NULL, false, NULL, '{"provider": "email"}', '{}', false, now(), now()),
       ('00000000-0000-0000-0000-000000000000', '00000000-0000-4000-8000-000000001102', 'authenticated',
        'authenticated', NULL, NULL, '15550001111', false, NULL, '{"provider": "phone"}', '{}', false, now(), now()),
       ('00000000-0000-0000-0000-000000000000', '00000000-0000-4000-8000-000000001103', 'authenticated',
        'authenticated', 'anon@example.com', NULL, NULL, true, NULL, '{}', '{}', false, now(), now()),
       ('00000000-0000-0000-0000-000000000000', '00000000-0000-4000-8000-000000001104', 'authenticated',
        'authenticated', 'a1b2c3d4e5f6', now(), NULL, false, now(), '{}', '{}', false, now(), now()),
       ('00000000-0000-0000-0000-000000000000', '00000000-0000-4000-8000-000000001105', 'authenticated',
        'authenticated', 'unconfirmed@example.com', NULL, NULL, false, NULL, '{"provider": "email"}', '{}', false, now(), now());
DELETE FROM public.sendry_outbox;
SET ROLE postgres;

CREATE FUNCTION pg_temp.row_of(p_id bigint) RETURNS TABLE (user_id uuid, email text, payload jsonb, status text, last_error text)
    LANGUAGE sql AS $$ SELECT o.user_id, o.email, o.payload, o.status, o.last_error FROM public.sendry_outbox o WHERE o.id = p_id $$;

-- 1. A good event for a user: one live pending row to the user's current address.
SELECT results_eq($$SELECT user_id, email, payload, status, last_error
                      FROM pg_temp.row_of(public.sendry_track('trial_started', '00000000-0000-4000-8000-000000001101',
                                                              '{"plan": "pro"}'))$$,
                  $$VALUES ('00000000-0000-4000-8000-000000001101'::uuid, 'pat@example.com',
                            '{"name": "trial_started", "payload": {"plan": "pro"}}'::jsonb, 'pending', NULL::text)$$,
                  'sendry_track enqueues one pending event to the user''s normalised address');
SELECT results_eq($$SELECT class, op, old_email, attempts, deduped FROM public.sendry_outbox$$,
                  $$VALUES ('live', 'event', NULL::text, 0, NULL::boolean)$$,
                  'the row is class live, op event');
SELECT is((SELECT payload FROM pg_temp.row_of(public.sendry_track('x', '00000000-0000-4000-8000-000000001101')))->'payload',
          '{}'::jsonb, 'the payload defaults to {}');
SELECT is((SELECT payload FROM pg_temp.row_of(public.sendry_track('x', '00000000-0000-4000-8000-000000001101', NULL)))->'payload',
          '{}'::jsonb, 'a NULL payload is {}');
SELECT is((SELECT status FROM pg_temp.row_of(public.sendry_track(repeat('n', 200), '00000000-0000-4000-8000-000000001101'))),
          'pending', 'a name of 200 characters is fine');
SELECT is((SELECT status FROM pg_temp.row_of(public.sendry_track('é', '00000000-0000-4000-8000-000000001101'))),
          'pending', 'a name of one (multibyte) character is fine');

-- 2. Bad input: a failed row naming the reason, no error.
SELECT results_eq($$SELECT status, last_error FROM pg_temp.row_of(public.sendry_track(repeat('n', 201), '00000000-0000-4000-8000-000000001101'))$$,
                  $$VALUES ('failed', 'event: the name is longer than 200 characters (201)')$$,
                  'a name of 201 characters: failed, with the reason');
SELECT results_eq($$SELECT status, last_error FROM pg_temp.row_of(public.sendry_track('', '00000000-0000-4000-8000-000000001101'))$$,
                  $$VALUES ('failed', 'event: the name is empty')$$, 'an empty name: failed');
SELECT results_eq($$SELECT status, last_error, payload FROM pg_temp.row_of(public.sendry_track(NULL, '00000000-0000-4000-8000-000000001101'))$$,
                  $$VALUES ('failed', 'event: the name is NULL', '{"name": null, "payload": {}}'::jsonb)$$,
                  'a NULL name: failed');
SELECT results_eq($$SELECT status, last_error, payload FROM pg_temp.row_of(public.sendry_track('x', '00000000-0000-4000-8000-000000001101', '[1, 2]'))$$,
                  $$VALUES ('failed', 'event: the payload is a JSON array, not an object',
                            '{"name": "x", "payload": [1, 2]}'::jsonb)$$,
                  'an array payload: failed, kept as given');
SELECT results_eq($$SELECT status, last_error FROM pg_temp.row_of(public.sendry_track('x', '00000000-0000-4000-8000-000000001101', '"pro"'))$$,
                  $$VALUES ('failed', 'event: the payload is a JSON string, not an object')$$, 'a string payload: failed');
SELECT results_eq($$SELECT status, last_error FROM pg_temp.row_of(public.sendry_track('x', '00000000-0000-4000-8000-000000001101', 'null'))$$,
                  $$VALUES ('failed', 'event: the payload is a JSON null, not an object')$$, 'a JSON null payload: failed');
SELECT results_eq($$SELECT user_id, email, status, last_error FROM pg_temp.row_of(public.sendry_track('x', '00000000-0000-4000-8000-000000009999'))$$,
                  $$VALUES ('00000000-0000-4000-8000-000000009999'::uuid, '(no address)', 'failed',
                            'event: no user 00000000-0000-4000-8000-000000009999 in auth.users')$$,
                  'a user not found: failed, email (no address)');
SELECT results_eq($$SELECT email, status, last_error FROM pg_temp.row_of(public.sendry_track('x', NULL))$$,
                  $$VALUES ('(no address)', 'failed', 'event: the user id is NULL')$$, 'a NULL user id: failed');
SELECT results_eq($$SELECT email, status, last_error FROM pg_temp.row_of(public.sendry_track('x', '00000000-0000-4000-8000-000000001102'))$$,
                  $$VALUES ('(no address)', 'failed', 'event: the user has no address')$$, 'a user without an address (phone): failed');
SELECT results_eq($$SELECT status, last_error FROM pg_temp.row_of(public.sendry_track('x', '00000000-0000-4000-8000-000000001103'))$$,
                  $$VALUES ('failed', 'event: the user is anonymous')$$, 'an anonymous user: failed');
SELECT results_eq($$SELECT email, status, last_error FROM pg_temp.row_of(public.sendry_track('x', '00000000-0000-4000-8000-000000001104'))$$,
                  $$VALUES ('(no address)', 'failed', 'event: the user is deleted')$$,
                  'a soft-deleted user: failed, and the hash GoTrue left in email is not taken for an address');
SELECT is((SELECT status FROM pg_temp.row_of(public.sendry_track('x', '00000000-0000-4000-8000-000000001105'))),
          'pending', 'sync_on signup: an unconfirmed user''s event is sent');
UPDATE public.sendry_settings SET sync_on = 'confirmed';
SELECT results_eq($$SELECT status, last_error FROM pg_temp.row_of(public.sendry_track('x', '00000000-0000-4000-8000-000000001105'))$$,
                  $$VALUES ('failed', 'event: the user''s address is not confirmed (sync_on = confirmed)')$$,
                  'sync_on confirmed: an unconfirmed user''s event fails');
SELECT is((SELECT status FROM pg_temp.row_of(public.sendry_track('x', '00000000-0000-4000-8000-000000001101'))),
          'pending', 'sync_on confirmed: a confirmed user''s event is sent');
UPDATE public.sendry_settings SET sync_on = 'signup';
SELECT is((SELECT count(*)::int FROM public.sendry_outbox WHERE status = 'failed' AND attempts = 0 AND op = 'event'), 12,
          'every bad call left exactly one failed row, never attempted');

-- 3. sendry_track_email: the row is its own contact (no user).
SELECT results_eq($$SELECT user_id, email, payload, status FROM pg_temp.row_of(public.sendry_track_email('newsletter_joined', ' Lead@Example.COM', '{"list": "weekly"}'))$$,
                  $$VALUES (NULL::uuid, 'lead@example.com', '{"name": "newsletter_joined", "payload": {"list": "weekly"}}'::jsonb, 'pending')$$,
                  'sendry_track_email enqueues a pending event for the normalised address, without a user');
SELECT results_eq($$SELECT email, status, last_error FROM pg_temp.row_of(public.sendry_track_email('x', '   '))$$,
                  $$VALUES ('(no address)', 'failed', 'event: no address')$$, 'a blank address: failed');
SELECT results_eq($$SELECT email, status, last_error FROM pg_temp.row_of(public.sendry_track_email('x', NULL))$$,
                  $$VALUES ('(no address)', 'failed', 'event: no address')$$, 'a NULL address: failed');
SELECT results_eq($$SELECT email, status, last_error FROM pg_temp.row_of(public.sendry_track_email('x', 'not-an-address'))$$,
                  $$VALUES ('not-an-address', 'failed', 'event: the address has no @')$$, 'an address without @: failed');
SELECT results_eq($$SELECT status, last_error FROM pg_temp.row_of(public.sendry_track_email(repeat('n', 300), 'a@example.com', '[]'))$$,
                  $$VALUES ('failed', 'event: the name is longer than 200 characters (300)')$$,
                  'several problems: the first is named');

-- 4. Strict mode: an error (22023) naming the problem, nothing enqueued.
DELETE FROM public.sendry_outbox;
SELECT throws_ok($$SELECT public.sendry_track(repeat('n', 201), '00000000-0000-4000-8000-000000001101', '{}', true)$$, '22023',
                 'sendry-sync: sendry_track: event: the name is longer than 200 characters (201) (event ''nnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnn'')',
                 'strict: a long name raises 22023, naming the problem');
SELECT throws_ok($$SELECT public.sendry_track('x', '00000000-0000-4000-8000-000000001101', '[]', p_strict => true)$$, '22023',
                 'sendry-sync: sendry_track: event: the payload is a JSON array, not an object (event ''x'')',
                 'strict: an array payload raises');
SELECT throws_ok($$SELECT public.sendry_track('x', '00000000-0000-4000-8000-000000009999', p_strict => true)$$, '22023',
                 'sendry-sync: sendry_track: event: no user 00000000-0000-4000-8000-000000009999 in auth.users (event ''x'')',
                 'strict: a user not found raises');
SELECT throws_ok($$SELECT public.sendry_track('x', '00000000-0000-4000-8000-000000001102', p_strict => true)$$, '22023',
                 'sendry-sync: sendry_track: event: the user has no address (event ''x'')', 'strict: a user without an address raises');
SELECT throws_ok($$SELECT public.sendry_track_email('x', 'nobody', p_strict => true)$$, '22023',
                 'sendry-sync: sendry_track_email: event: the address has no @ (event ''x'')', 'strict: sendry_track_email too');
SELECT is_empty('SELECT 1 FROM public.sendry_outbox', 'strict: nothing enqueued by the failed calls');
SELECT is((SELECT status FROM pg_temp.row_of(public.sendry_track('x', '00000000-0000-4000-8000-000000001101', '{}', true))),
          'pending', 'strict: a good event is enqueued');

-- 5. The caller's transaction decides: a rollback leaves nothing.
DELETE FROM public.sendry_outbox;
SAVEPOINT app;
DO $$
BEGIN
    PERFORM public.sendry_track('trial_started', '00000000-0000-4000-8000-000000001101', '{"plan": "pro"}');
    PERFORM public.sendry_track_email('newsletter_joined', 'lead@example.com');
    PERFORM public.sendry_track(repeat('n', 201), '00000000-0000-4000-8000-000000001101');
END
$$;
SELECT is((SELECT count(*)::int FROM public.sendry_outbox), 3, 'three events enqueued in the transaction');
ROLLBACK TO SAVEPOINT app;
SELECT is_empty('SELECT 1 FROM public.sendry_outbox', 'a rolled-back transaction leaves no event, failed ones included');

-- 6. sendry_event_id: 'ss-<database_id>-<id>', the same for ever.
SELECT ok((SELECT value ~ '^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$'
             FROM public.sendry_sync_state WHERE key = 'database_id'),
          'migration 0005 stored a random uuid as database_id');
SELECT is(public.sendry_event_id(42), 'ss-' || (SELECT value FROM public.sendry_sync_state WHERE key = 'database_id') || '-42',
          'sendry_event_id(42) is ss-<database_id>-42');
SELECT is(public.sendry_event_id(42), public.sendry_event_id(42), 'and the same on every call');
SELECT ok(length(public.sendry_event_id(9223372036854775807)) <= 200, 'within Sendry''s 200 characters for any id');
SELECT is(p.provolatile, 's', 'sendry_event_id is STABLE (the claim calls it in RETURNING)')
  FROM pg_proc p WHERE p.oid = 'public.sendry_event_id(bigint)'::regprocedure;
DELETE FROM public.sendry_sync_state WHERE key = 'database_id';
SELECT throws_ok('SELECT public.sendry_event_id(42)', '55000', NULL,
                 'without its database_id row, sendry_event_id raises rather than return an id that would not dedupe');

-- 7. Definer rights, and who may call them.
SELECT is_definer('public', 'sendry_track', ARRAY['text', 'uuid', 'jsonb', 'boolean'], 'sendry_track is SECURITY DEFINER');
SELECT is_definer('public', 'sendry_track_email', ARRAY['text', 'text', 'jsonb', 'boolean'],
                  'sendry_track_email is SECURITY DEFINER');
SELECT ok(has_function_privilege('service_role', 'public.sendry_track(text, uuid, jsonb, boolean)', 'EXECUTE')
          AND has_function_privilege('service_role', 'public.sendry_track_email(text, text, jsonb, boolean)', 'EXECUTE'),
          'service_role may call sendry_track and sendry_track_email');
SELECT ok(NOT has_function_privilege(r, 'public.sendry_track(text, uuid, jsonb, boolean)', 'EXECUTE')
          AND NOT has_function_privilege(r, 'public.sendry_track_email(text, text, jsonb, boolean)', 'EXECUTE'),
          r || ' may not call sendry_track or sendry_track_email')
  FROM unnest(ARRAY['anon', 'authenticated']) AS r;

SELECT * FROM finish();
ROLLBACK;
