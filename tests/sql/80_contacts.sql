-- The contact mapping and "sync on change, and only on change": an UPDATE of auth.users
-- captures the user (one row, payload NULL), and the claim renders the contact
-- (public.sendry_contacts, through sendry_claim_render) and compares it with what Sendry
-- last accepted (public.sendry_contact_state): 'send' when the contact as Sendry sees it
-- changed, 'same' when not; GoTrue's sign-in and token refresh UPDATE runs no function at
-- all. A contact the mapping renders wrongly fails at the claim with a clear problem,
-- never the user's write; a contact that leaves an audience carries leave_audiences.
-- pg_temp.claim() plays the worker: it renders the captured rows and, as if Sendry
-- accepted every contact sent, writes the state the completion writes.
-- Logged in as supabase_admin to switch to GoTrue (supabase_auth_admin, search_path
-- auth) and to postgres (the owner of the mapping, who replaces it), and to count
-- function calls (track_functions). Everything is undone by the final ROLLBACK.
\connect - supabase_admin
\set as_gotrue 'SET ROLE supabase_auth_admin; SET search_path = auth;'
\set as_owner 'SET ROLE postgres; RESET search_path;'
\set as_admin 'RESET ROLE; RESET search_path;'
BEGIN;
SELECT plan(50);
SET LOCAL track_functions = 'pl';

CREATE FUNCTION pg_temp.calls(fn regprocedure) RETURNS bigint LANGUAGE sql AS
    $$ SELECT coalesce(pg_stat_get_xact_function_calls(fn), 0) $$;
-- EXPLAIN VERBOSE of a query, as one text.
CREATE FUNCTION pg_temp.plan_of(q text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    l text;
    plan text := '';
BEGIN
    FOR l IN EXECUTE 'EXPLAIN (VERBOSE) ' || q LOOP
        plan := plan || l || E'\n';
    END LOOP;
    RETURN plan;
END
$$;
-- The outbox rows since the last DELETE, in order.
CREATE FUNCTION pg_temp.rows() RETURNS TABLE (user_id uuid, op text, class text, email text, old_email text,
                                               status text, attempts int, payload jsonb, last_error text)
LANGUAGE sql AS $$
    SELECT user_id, op, class, email, old_email, status, attempts, payload, last_error
    FROM public.sendry_outbox ORDER BY id
$$;

-- pg_temp.claim(): the worker's claim and completion (lib/claim.sql).
\ir lib/claim.sql

-- Setup: an email sign-up and an OAuth sign-up, as GoTrue makes them.
:as_gotrue
INSERT INTO users (instance_id, id, aud, role, email, raw_app_meta_data, raw_user_meta_data,
                   is_sso_user, is_anonymous, created_at, updated_at)
VALUES ('00000000-0000-0000-0000-000000000000', '00000000-0000-4000-8000-000000000801', 'authenticated', '',
        'ada@example.com', '{"provider": "email", "providers": ["email"]}',
        '{"first_name": "Ada", "last_name": "Lovelace"}', false, false, now(), now()),
       ('00000000-0000-0000-0000-000000000000', '00000000-0000-4000-8000-000000000802', 'authenticated', '',
        'grace@example.com', '{"provider": "google", "providers": ["google"]}',
        '{"full_name": "Grace Hopper", "avatar_url": "https://example.com/g.png", "email_verified": true}',
        false, false, now(), now());
UPDATE users SET role = 'authenticated', updated_at = now()
 WHERE id IN ('00000000-0000-4000-8000-000000000801', '00000000-0000-4000-8000-000000000802');
:as_admin
SELECT is((SELECT count(*) FROM public.sendry_outbox), 2::bigint, 'setup: two sign-ups, two upserts');
SELECT is(pg_temp.calls('public.sendry_auth_users_updated()') + pg_temp.calls('public.sendry_auth_users_noted()'),
          0::bigint, 'GoTrue''s role '''' -> ''authenticated'' UPDATE runs no function');
SELECT is_empty('SELECT 1 FROM public.sendry_contact_state',
                'the sign-ups wrote no sendry_contact_state row (only the worker does, when Sendry accepts)');
SELECT results_eq($$SELECT user_id, verdict, email FROM pg_temp.claim()$$,
                  $$VALUES ('00000000-0000-4000-8000-000000000801'::uuid, 'send', 'ada@example.com'),
                           ('00000000-0000-4000-8000-000000000802'::uuid, 'send', 'grace@example.com')$$,
                  'the claim renders both new contacts: send');
SELECT results_eq(
    $$SELECT s.user_id, s.email, s.audiences, s.contact_hash FROM public.sendry_contact_state s ORDER BY 1$$,
    $$SELECT r.user_id, r.email, NULL::text[], jsonb_hash_extended(r.body, 0)
        FROM public.sendry_render_contacts(ARRAY(SELECT user_id FROM public.sendry_contact_state)) r ORDER BY 1$$,
    'the completion records what Sendry accepted: the address, the audiences, the payload''s hash');

-- 1. Sign-in and token refresh: GoTrue's UPDATE users SET last_sign_in_at, updated_at.
:as_gotrue
UPDATE users SET last_sign_in_at = now(), updated_at = now() WHERE id = '00000000-0000-4000-8000-000000000801';
UPDATE users SET last_sign_in_at = now(), updated_at = now()
 WHERE id IN ('00000000-0000-4000-8000-000000000801', '00000000-0000-4000-8000-000000000802');
:as_admin
SELECT is_empty('SELECT 1 FROM public.sendry_outbox', 'a sign-in and a token refresh enqueue nothing');
SELECT is(pg_temp.calls('public.sendry_auth_users_updated()') + pg_temp.calls('public.sendry_auth_users_noted()'),
          0::bigint,
          'a sign-in and a token refresh run no function at all (the triggers'' column list skips them)');
SELECT is(pg_temp.calls('public.sendry_enqueue_contacts(uuid[], text, text, boolean)'), 0::bigint,
          '(no trigger renders contacts: sendry_enqueue_contacts never ran)');

-- 2. Provider metadata written again unchanged, or changed where the contact does not look.
:as_gotrue
UPDATE users SET raw_user_meta_data = raw_user_meta_data, updated_at = now()
 WHERE id = '00000000-0000-4000-8000-000000000802';
:as_admin
SELECT is(pg_temp.calls('public.sendry_auth_users_noted()'), 0::bigint,
          'metadata set to what it was: the WHEN clause skips the row function');
SELECT is(pg_temp.calls('public.sendry_auth_users_updated()'), 1::bigint,
          '(the statement function ran once, found no user noted, and returned)');
:as_gotrue
UPDATE users SET raw_user_meta_data = raw_user_meta_data || '{"avatar_url": "https://example.com/g2.png"}',
                 updated_at = now()
 WHERE id = '00000000-0000-4000-8000-000000000802';
UPDATE users SET raw_app_meta_data = raw_app_meta_data || '{"providers": ["google", "email"]}'
 WHERE id = '00000000-0000-4000-8000-000000000802';
UPDATE users SET email_confirmed_at = now() WHERE id = '00000000-0000-4000-8000-000000000801';
:as_admin
SELECT is(pg_temp.calls('public.sendry_auth_users_noted()'), 3::bigint,
          'an avatar, app metadata and a confirmation each ran the row function once');
SELECT is(pg_temp.calls('public.sendry_auth_users_updated()'), 4::bigint,
          'and the statement function once per statement');
SELECT results_eq($$SELECT user_id, verdict FROM pg_temp.claim()$$,
                  $$VALUES ('00000000-0000-4000-8000-000000000801'::uuid, 'same'),
                           ('00000000-0000-4000-8000-000000000802'::uuid, 'same')$$,
                  'a new avatar_url, app metadata and a confirmation (sync_on signup) are captured, and change no contact: same (one render per user)');
SELECT is(public.sendry_inbox_receive('evt_801', 'contact.updated',
              '{"data": {"email": "ada@example.com", "unsubscribed": true}}'), 'applied',
          'an opt-out from Sendry is applied to raw_app_meta_data');
SELECT is_empty('SELECT 1 FROM public.sendry_outbox', 'applying it enqueues nothing');

-- 3. A name change from the app: supabase.auth.updateUser({ data: { first_name } }).
:as_gotrue
UPDATE users SET raw_user_meta_data = raw_user_meta_data || '{"first_name": "Augusta"}', updated_at = now()
 WHERE id = '00000000-0000-4000-8000-000000000801';
:as_admin
SELECT results_eq($$SELECT user_id, op, class, email, old_email, status, payload IS NULL FROM pg_temp.rows()$$,
                  $$VALUES ('00000000-0000-4000-8000-000000000801'::uuid, 'upsert', 'live', 'ada@example.com',
                            NULL::text, 'pending', true)$$,
                  'a name change through raw_user_meta_data enqueues one live captured upsert');
:as_gotrue
UPDATE users SET raw_user_meta_data = raw_user_meta_data || '{"first_name": "Augusta"}', updated_at = now()
 WHERE id = '00000000-0000-4000-8000-000000000801';
:as_admin
SELECT is((SELECT count(*) FROM public.sendry_outbox), 1::bigint, 'the same name again enqueues nothing more');
SELECT results_eq($$SELECT verdict, payload ->> 'first_name' FROM pg_temp.claim()$$,
                  $$VALUES ('send', 'Augusta')$$, 'the claim sends the new name');

-- 4. A user enqueued before 0.4 has no state: an email change still moves the contact.
DELETE FROM public.sendry_contact_state WHERE user_id = '00000000-0000-4000-8000-000000000802';
:as_gotrue
UPDATE users SET email = 'grace.hopper@example.com', updated_at = now() WHERE id = '00000000-0000-4000-8000-000000000802';
:as_admin
SELECT results_eq($$SELECT user_id, email, old_email FROM pg_temp.rows()$$,
                  $$VALUES ('00000000-0000-4000-8000-000000000802'::uuid, 'grace.hopper@example.com', 'grace@example.com')$$,
                  'without a state row, an email change takes old_email from the previous row');
SELECT results_eq($$SELECT verdict, email FROM pg_temp.claim()$$, $$VALUES ('send', 'grace.hopper@example.com')$$,
                  'and the claim, with no state, sends the contact');

-- 5. The project's own mapping: here metadata and audiences come from the user metadata
--    (keys custom and audiences), so that GoTrue's UPDATEs can drive them.
:as_owner
CREATE OR REPLACE VIEW public.sendry_contacts WITH (security_invoker = true) AS
SELECT u.id AS user_id, lower(btrim(u.email)) AS email,
       u.raw_user_meta_data ->> 'first_name' AS first_name,
       u.raw_user_meta_data ->> 'last_name' AS last_name,
       COALESCE(u.raw_user_meta_data -> 'custom', '{}') AS metadata,
       CASE WHEN jsonb_typeof(u.raw_user_meta_data -> 'audiences') = 'array'
            THEN ARRAY(SELECT jsonb_array_elements_text(u.raw_user_meta_data -> 'audiences')) END AS audiences
FROM auth.users u;
CREATE FUNCTION pg_temp.set_meta(uid uuid, meta jsonb) RETURNS void LANGUAGE sql AS $$
    UPDATE auth.users SET raw_user_meta_data = meta, updated_at = now() WHERE id = uid
$$;
:as_admin
SELECT pg_temp.set_meta('00000000-0000-4000-8000-000000000801',
                        '{"first_name": "Ada", "custom": {"plan": "pro", "locale": "en"}, "audiences": ["customers"]}');
SELECT results_eq($$SELECT verdict, payload FROM pg_temp.claim()$$,
                  $$VALUES ('send', '{"email": "ada@example.com", "first_name": "Ada",
                                         "metadata": {"plan": "pro", "locale": "en"}, "audiences": ["customers"],
                                         "leave_audiences": ["default"]}'::jsonb)$$,
                  'the replaced mapping renders the contact: metadata from it, audiences in the payload (and it left the default audience)');
SELECT is((SELECT audiences FROM public.sendry_contact_state WHERE user_id = '00000000-0000-4000-8000-000000000801'),
          ARRAY['customers'], 'the state records the audiences Sendry accepted');

-- 6. What Sendry would reject fails at the claim (the worker fails the row with the
--    problem, "mapping: ..."), never the user's write.
SELECT pg_temp.set_meta('00000000-0000-4000-8000-000000000801',
                        '{"first_name": "Ada", "custom": {"age": 42}, "audiences": ["customers"]}');
SELECT results_eq($$SELECT verdict, problem FROM pg_temp.claim()$$,
                  $$VALUES ('failed', 'mapping: metadata.age is a JSON number, not a string (metadata is flat: string values only)')$$,
                  'a number in metadata: the claim''s verdict is failed, the problem names the field');
SELECT is((SELECT raw_user_meta_data -> 'custom' FROM auth.users WHERE id = '00000000-0000-4000-8000-000000000801'),
          '{"age": 42}'::jsonb, 'the user''s UPDATE itself went through');
SELECT is((SELECT audiences FROM public.sendry_contact_state WHERE user_id = '00000000-0000-4000-8000-000000000801'),
          ARRAY['customers'], 'a failed contact leaves the state as Sendry accepted it');
SELECT pg_temp.set_meta('00000000-0000-4000-8000-000000000801',
                        '{"first_name": "Ada", "custom": {"age": 42}, "audiences": ["customers"]}');
SELECT is_empty('SELECT 1 FROM public.sendry_outbox', 'the same wrong contact again enqueues nothing (no change)');
CREATE TEMP TABLE problems (n serial, verdict text, problem text) ON COMMIT DROP;
SELECT pg_temp.set_meta('00000000-0000-4000-8000-000000000801',
                        '{"first_name": "Ada", "custom": {"prefs": {"news": "yes"}}, "audiences": ["customers"]}');
INSERT INTO problems (verdict, problem) SELECT verdict, problem FROM pg_temp.claim();
SELECT pg_temp.set_meta('00000000-0000-4000-8000-000000000801',
                        jsonb_build_object('first_name', 'Ada', 'custom', jsonb_build_object('bio', repeat('x', 1001))));
INSERT INTO problems (verdict, problem) SELECT verdict, problem FROM pg_temp.claim();
SELECT pg_temp.set_meta('00000000-0000-4000-8000-000000000801',
                        jsonb_build_object('first_name', repeat('n', 201)));
INSERT INTO problems (verdict, problem) SELECT verdict, problem FROM pg_temp.claim();
SELECT pg_temp.set_meta('00000000-0000-4000-8000-000000000801', '{"first_name": "Ada", "custom": "pro"}');
INSERT INTO problems (verdict, problem) SELECT verdict, problem FROM pg_temp.claim();
SELECT pg_temp.set_meta('00000000-0000-4000-8000-000000000801',
                        '{"first_name": "Ada", "custom": {}, "audiences": ["customers", "not an id"]}');
INSERT INTO problems (verdict, problem) SELECT verdict, problem FROM pg_temp.claim();
SELECT results_eq($$SELECT verdict, problem FROM problems ORDER BY n$$,
                  $$VALUES ('failed', 'mapping: metadata.prefs is a JSON object, not a string (metadata is flat: string values only)'),
                           ('failed', 'mapping: metadata.bio is longer than 1000 characters (1001)'),
                           ('failed', 'mapping: first_name is longer than 200 characters (201)'),
                           ('failed', 'mapping: metadata is a JSON string, not an object of strings'),
                           ('failed', 'mapping: audiences[2] is ''not an id'', not an audience id ([A-Za-z0-9_-]+)')$$,
                  'nested metadata, a value over 1000 characters, a name over 200, metadata not an object, a bad audience id: each fails at the claim, named');
SELECT pg_temp.set_meta('00000000-0000-4000-8000-000000000801',
                        jsonb_build_object('first_name', repeat('n', 200), 'custom',
                                           jsonb_build_object('a', repeat('x', 1000), 'b', repeat('y', 999), 'c', NULL),
                                           'audiences', jsonb_build_array('customers', 'aud_2-X')));
CREATE TEMP TABLE at_limits ON COMMIT DROP AS SELECT * FROM pg_temp.claim();
SELECT results_eq($$SELECT verdict, problem, payload -> 'metadata' ? 'c', payload -> 'audiences' FROM at_limits$$,
                  $$VALUES ('send', NULL::text, false, '["customers", "aud_2-X"]'::jsonb)$$,
                  'at the limits (a 200-character name, values of 1000 characters, a null value, ids with _ and -): send, the null dropped');
SELECT ok((SELECT NOT (payload ? 'leave_audiences') FROM at_limits),
          'no leave_audiences: the failed contacts in between never changed what Sendry accepted');

:as_gotrue
INSERT INTO users (instance_id, id, aud, role, email, raw_app_meta_data, raw_user_meta_data,
                   is_sso_user, is_anonymous, created_at, updated_at)
VALUES ('00000000-0000-0000-0000-000000000000', '00000000-0000-4000-8000-000000000803', 'authenticated', '',
        'bad.signup@example.com', '{"provider": "email", "providers": ["email"]}',
        '{"custom": {"n": 1}}', false, false, now(), now());
:as_admin
SELECT ok(EXISTS (SELECT 1 FROM auth.users WHERE id = '00000000-0000-4000-8000-000000000803'),
          'a sign-up whose contact the mapping renders wrongly succeeds');
SELECT results_eq($$SELECT user_id, verdict, problem FROM pg_temp.claim()$$,
                  $$VALUES ('00000000-0000-4000-8000-000000000803'::uuid, 'failed',
                            'mapping: metadata.n is a JSON number, not a string (metadata is flat: string values only)')$$,
                  '... and the claim fails it with the reason');

-- 7. Leaving audiences (compared with what Sendry accepted last: customers, aud_2-X; each
--    contact accepted in turn).
CREATE TEMP TABLE sent (n serial, payload jsonb) ON COMMIT DROP;
SELECT pg_temp.set_meta('00000000-0000-4000-8000-000000000801', '{"custom": {}, "audiences": ["trial"]}');
INSERT INTO sent (payload) SELECT payload FROM pg_temp.claim();
SELECT pg_temp.set_meta('00000000-0000-4000-8000-000000000801', '{"custom": {}, "audiences": ["trial", "default"]}');
INSERT INTO sent (payload) SELECT payload FROM pg_temp.claim();
SELECT pg_temp.set_meta('00000000-0000-4000-8000-000000000801', '{"custom": {}}');
INSERT INTO sent (payload) SELECT payload FROM pg_temp.claim();
SELECT pg_temp.set_meta('00000000-0000-4000-8000-000000000801', '{"custom": {}, "audiences": []}');
INSERT INTO sent (payload) SELECT payload FROM pg_temp.claim();
SELECT pg_temp.set_meta('00000000-0000-4000-8000-000000000801', '{"custom": {}, "audiences": ["trial", 7]}');
INSERT INTO sent (payload) SELECT payload FROM pg_temp.claim();
SELECT results_eq($$SELECT payload -> 'audiences', payload -> 'leave_audiences' FROM sent ORDER BY n$$,
                  $$VALUES ('["trial"]'::jsonb, '["aud_2-X", "customers"]'::jsonb),
                           ('["trial", "default"]', NULL),
                           (NULL, '["trial"]'),
                           ('[]', '["default"]'),
                           ('["trial", "7"]', NULL)$$,
                  'leave_audiences: the audiences of the contact Sendry last accepted that the new one lacks (no audiences = the default one)');
SELECT is((SELECT count(*) FROM public.sendry_outbox WHERE op = 'delete'), 0::bigint,
          'leaving an audience, even every one, never deletes the contact');
DELETE FROM public.sendry_outbox;

-- 8. Soft and hard deletes forget what Sendry accepted (the state rows).
:as_gotrue
UPDATE users SET deleted_at = now(), email = md5(email) WHERE id = '00000000-0000-4000-8000-000000000801';
DELETE FROM users WHERE id = '00000000-0000-4000-8000-000000000802';
:as_admin
SELECT results_eq($$SELECT user_id, op FROM pg_temp.rows()$$,
                  $$VALUES ('00000000-0000-4000-8000-000000000801'::uuid, 'delete'),
                           ('00000000-0000-4000-8000-000000000802'::uuid, 'delete')$$,
                  'a soft and a hard delete enqueue their deletes, as before');
SELECT is_empty($$SELECT 1 FROM public.sendry_contact_state
                   WHERE user_id IN ('00000000-0000-4000-8000-000000000801', '00000000-0000-4000-8000-000000000802')$$,
                'and remove the users'' state rows');

-- 9. The mapping is rendered set-based, inlined: no function call per row.
SELECT ok(position('Function Scan' IN pg_temp.plan_of(
              'SELECT * FROM public.sendry_render_contacts(ARRAY[''00000000-0000-4000-8000-000000000803''::uuid])')) = 0,
          'sendry_render_contacts is inlined into the query that calls it');
-- The generic plan (the one the triggers keep for a session) of the state lookup, with
-- the state table nearly empty here, as it is on a fresh install.
SET LOCAL plan_cache_mode = force_generic_plan;
PREPARE changed_plan (uuid[]) AS SELECT * FROM public.sendry_changed_contacts($1);
SELECT ok(position('Index Scan using sendry_contact_state_pkey' IN pg_temp.plan_of('EXECUTE changed_plan(NULL)')) > 0
          AND position('Seq Scan on public.sendry_contact_state' IN pg_temp.plan_of('EXECUTE changed_plan(NULL)')) = 0,
          'sendry_changed_contacts probes the state by its key in a generic plan, never scans it (however small it looks)');
DEALLOCATE changed_plan;
RESET plan_cache_mode;
SELECT ok(position('sendry_user_is_synced' IN pg_temp.plan_of(
              'SELECT u.id FROM auth.users u WHERE public.sendry_user_is_synced(u, ''signup'')')) = 0,
          'sendry_user_is_synced is inlined too');
SELECT ok(position('sendry_contact_body' IN pg_temp.plan_of(
              'SELECT public.sendry_contact_body(email, NULL, NULL, NULL, NULL) FROM auth.users')) = 0,
          'sendry_contact_body is inlined too');

-- 10. A wrong mapping (one that errors) never fails a write: the triggers do not read it;
--     the claim's render raises (the worker retries, and logs it).
:as_owner
CREATE OR REPLACE VIEW public.sendry_contacts WITH (security_invoker = true) AS
SELECT u.id AS user_id, lower(btrim(u.email)) AS email, NULL::text AS first_name, NULL::text AS last_name,
       jsonb_build_object('broken', (1 / 0)::text) AS metadata, NULL::text[] AS audiences
FROM auth.users u;
:as_admin
DELETE FROM public.sendry_enqueue_errors;
SET LOCAL client_min_messages = error;
:as_gotrue
INSERT INTO users (instance_id, id, aud, role, email, raw_app_meta_data, raw_user_meta_data,
                   is_sso_user, is_anonymous, created_at, updated_at)
VALUES ('00000000-0000-0000-0000-000000000000', '00000000-0000-4000-8000-000000000804', 'authenticated', '',
        'broken.mapping@example.com', '{"provider": "email", "providers": ["email"]}', '{}', false, false, now(), now());
UPDATE users SET raw_user_meta_data = '{"first_name": "X"}' WHERE id = '00000000-0000-4000-8000-000000000804';
:as_admin
SET LOCAL client_min_messages = notice;
SELECT ok(EXISTS (SELECT 1 FROM auth.users WHERE id = '00000000-0000-4000-8000-000000000804'
                                             AND raw_user_meta_data ->> 'first_name' = 'X'),
          'a mapping that raises an error fails neither the sign-up nor the UPDATE');
SELECT results_eq($$SELECT user_id, op, payload IS NULL FROM pg_temp.rows() WHERE op = 'upsert'$$,
                  $$VALUES ('00000000-0000-4000-8000-000000000804'::uuid, 'upsert', true),
                           ('00000000-0000-4000-8000-000000000804'::uuid, 'upsert', true)$$,
                  'both are captured, and no trigger error is recorded...');
SELECT is_empty('SELECT 1 FROM public.sendry_enqueue_errors', '... in sendry_enqueue_errors');
SELECT throws_ok($$SELECT * FROM public.sendry_claim_render(ARRAY['00000000-0000-4000-8000-000000000804'::uuid])$$,
                 '22012', NULL, 'the claim''s render raises the mapping''s error');

-- 11. In confirmed-only mode a change of an unconfirmed user enqueues nothing; the
--     confirmation enqueues the contact.
:as_owner
CREATE OR REPLACE VIEW public.sendry_contacts WITH (security_invoker = true) AS
SELECT u.id AS user_id, lower(btrim(u.email)) AS email, u.raw_user_meta_data ->> 'first_name' AS first_name,
       NULL::text AS last_name, '{}'::jsonb AS metadata, NULL::text[] AS audiences
FROM auth.users u;
UPDATE public.sendry_settings SET sync_on = 'confirmed';
:as_admin
DELETE FROM public.sendry_outbox;
:as_gotrue
UPDATE users SET raw_user_meta_data = '{"first_name": "Unconfirmed"}' WHERE id = '00000000-0000-4000-8000-000000000804';
:as_admin
SELECT is_empty('SELECT 1 FROM public.sendry_outbox', 'confirmed-only: a name change of an unconfirmed user enqueues nothing');
:as_gotrue
UPDATE users SET email_confirmed_at = now() WHERE id = '00000000-0000-4000-8000-000000000804';
:as_admin
SELECT results_eq($$SELECT user_id, verdict, payload ->> 'first_name' FROM pg_temp.claim()$$,
                  $$VALUES ('00000000-0000-4000-8000-000000000804'::uuid, 'send', 'Unconfirmed')$$,
                  'confirmed-only: the confirmation enqueues the contact');
:as_gotrue
UPDATE users SET email_confirmed_at = now() WHERE id = '00000000-0000-4000-8000-000000000804';
:as_admin
SELECT is_empty('SELECT 1 FROM public.sendry_outbox',
                'confirmed-only: the same confirmation time again (now() in one transaction) enqueues nothing');

-- 12. sendry_render_contacts shows what would be sent, problems included.
SELECT results_eq($$SELECT user_id, email, problem FROM public.sendry_render_contacts(
                       ARRAY['00000000-0000-4000-8000-000000000803', '00000000-0000-4000-8000-000000000804',
                             '00000000-0000-4000-8000-000000000899']::uuid[]) ORDER BY 1$$,
                  $$VALUES ('00000000-0000-4000-8000-000000000803'::uuid, 'bad.signup@example.com', NULL::text),
                           ('00000000-0000-4000-8000-000000000804'::uuid, 'broken.mapping@example.com', NULL::text)$$,
                  'sendry_render_contacts renders the users the mapping has a row for');
SELECT is((SELECT body FROM public.sendry_render_contacts(ARRAY['00000000-0000-4000-8000-000000000804'::uuid])),
          public.sendry_contact_payload((SELECT u FROM auth.users u WHERE id = '00000000-0000-4000-8000-000000000804')),
          'sendry_contact_payload(u) renders through the mapping too (the README''s backfill)');
SELECT is(public.sendry_contact_payload(NULL::auth.users), NULL, 'sendry_contact_payload of no user is NULL');
SELECT is((SELECT count(*) FROM pg_temp.rows()), 0::bigint, '(nothing left over)');

SELECT * FROM finish();
ROLLBACK;
