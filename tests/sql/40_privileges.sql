-- anon and authenticated (the roles PostgREST serves schema public to) can do nothing with
-- the sendry_* objects: every attempt is "permission denied" (42501), not an empty result
-- that RLS would give. Tested as PostgREST does: logged in as authenticator (NOINHERIT)
-- and SET ROLE per request. pgTAP itself lives in schema public, where anon and
-- authenticated have USAGE and EXECUTE, so only the sendry_* objects can deny.
\connect - authenticator
BEGIN;
SELECT plan(215);

SELECT is(current_user::text, 'authenticator', 'logged in as authenticator, like PostgREST');
SELECT throws_ok('SELECT * FROM public.sendry_outbox', '42501', 'permission denied for table sendry_outbox',
                 'authenticator itself (NOINHERIT) cannot SELECT the outbox');

-- As anon.
SET ROLE anon;
SELECT throws_ok('SELECT * FROM public.sendry_outbox', '42501',
                 'permission denied for table sendry_outbox', 'anon: SELECT sendry_outbox is denied');
SELECT throws_ok($$INSERT INTO public.sendry_outbox (email) VALUES ('mallory@example.com')$$, '42501',
                 'permission denied for table sendry_outbox', 'anon: INSERT INTO sendry_outbox is denied');
SELECT throws_ok($$UPDATE public.sendry_outbox SET status = 'pending'$$, '42501',
                 'permission denied for table sendry_outbox', 'anon: UPDATE sendry_outbox is denied');
SELECT throws_ok('DELETE FROM public.sendry_outbox', '42501',
                 'permission denied for table sendry_outbox', 'anon: DELETE FROM sendry_outbox is denied');
SELECT throws_ok('TRUNCATE public.sendry_outbox', '42501',
                 'permission denied for table sendry_outbox', 'anon: TRUNCATE sendry_outbox is denied');
SELECT throws_ok('SELECT * FROM public.sendry_outbox_stats', '42501',
                 'permission denied for view sendry_outbox_stats', 'anon: SELECT sendry_outbox_stats is denied');
SELECT throws_ok($$SELECT nextval('public.sendry_outbox_id_seq')$$, '42501',
                 'permission denied for sequence sendry_outbox_id_seq', 'anon: nextval of the id sequence is denied');
SELECT throws_ok('SELECT public.sendry_contact_payload(NULL::auth.users)', '42501',
                 'permission denied for function sendry_contact_payload',
                 'anon: EXECUTE sendry_contact_payload is denied (no /rest/v1/rpc/sendry_contact_payload)');
SELECT throws_ok('SELECT * FROM public.sendry_settings', '42501',
                 'permission denied for table sendry_settings', 'anon: SELECT sendry_settings is denied');
SELECT throws_ok($$UPDATE public.sendry_settings SET on_delete = 'keep'$$, '42501',
                 'permission denied for table sendry_settings', 'anon: UPDATE sendry_settings is denied');
SELECT throws_ok('SELECT * FROM public.sendry_inbox', '42501',
                 'permission denied for table sendry_inbox', 'anon: SELECT sendry_inbox is denied');
SELECT throws_ok($$INSERT INTO public.sendry_inbox (event_id, type, payload) VALUES ('forged', 'contact.updated', '{}')$$,
                 '42501', 'permission denied for table sendry_inbox', 'anon: INSERT INTO sendry_inbox is denied');
SELECT throws_ok('SELECT * FROM public.sendry_sync_state', '42501',
                 'permission denied for table sendry_sync_state', 'anon: SELECT sendry_sync_state is denied');
SELECT throws_ok($$INSERT INTO public.sendry_sync_state (key, value) VALUES ('cursor', 'x')$$, '42501',
                 'permission denied for table sendry_sync_state', 'anon: INSERT INTO sendry_sync_state is denied');
SELECT throws_ok($$SELECT nextval('public.sendry_inbox_id_seq')$$, '42501',
                 'permission denied for sequence sendry_inbox_id_seq', 'anon: nextval of the inbox id sequence is denied');
SELECT throws_ok($$SELECT public.sendry_inbox_receive('evt_forged', 'contact.updated',
                                                      '{"data": {"email": "victim@example.com", "unsubscribed": true}}')$$,
                 '42501', 'permission denied for function sendry_inbox_receive',
                 'anon: EXECUTE sendry_inbox_receive is denied');
SELECT throws_ok($$SELECT public.sendry_inbox_receive(p_event_id => 'evt_forged', p_type => 'contact.updated',
                                                      p_payload => '{}', p_source => 'webhook')$$,
                 '42501', 'permission denied for function sendry_inbox_receive',
                 'anon: sendry_inbox_receive with named arguments (as /rest/v1/rpc calls it) is denied');
SELECT throws_ok('SELECT public.sendry_inbox_apply(1)', '42501', 'permission denied for function sendry_inbox_apply',
                 'anon: EXECUTE sendry_inbox_apply is denied');
SELECT throws_ok('SELECT * FROM public.sendry_contacts', '42501', 'permission denied for view sendry_contacts',
                 'anon: SELECT sendry_contacts (every user''s address) is denied');
SELECT throws_ok('SELECT * FROM public.sendry_contact_state', '42501', 'permission denied for table sendry_contact_state',
                 'anon: SELECT sendry_contact_state is denied');
SELECT throws_ok('SELECT * FROM public.sendry_enqueue_errors', '42501', 'permission denied for table sendry_enqueue_errors',
                 'anon: SELECT sendry_enqueue_errors is denied');
SELECT throws_ok('SELECT * FROM public.sendry_reconcile_contacts()', '42501',
                 'permission denied for function sendry_reconcile_contacts', 'anon: EXECUTE sendry_reconcile_contacts is denied');
SELECT throws_ok($$SELECT public.sendry_watch('public.sendry_settings'::regclass, 'singleton')$$, '42501',
                 'permission denied for function sendry_watch', 'anon: EXECUTE sendry_watch is denied');
SELECT throws_ok('SELECT * FROM public.sendry_render_contacts(NULL)', '42501',
                 'permission denied for function sendry_render_contacts', 'anon: EXECUTE sendry_render_contacts is denied');
RESET ROLE;

-- As authenticated.
SET ROLE authenticated;
SELECT throws_ok('SELECT * FROM public.sendry_outbox', '42501',
                 'permission denied for table sendry_outbox', 'authenticated: SELECT sendry_outbox is denied');
SELECT throws_ok($$INSERT INTO public.sendry_outbox (email) VALUES ('mallory@example.com')$$, '42501',
                 'permission denied for table sendry_outbox', 'authenticated: INSERT INTO sendry_outbox is denied');
SELECT throws_ok($$UPDATE public.sendry_outbox SET status = 'pending'$$, '42501',
                 'permission denied for table sendry_outbox', 'authenticated: UPDATE sendry_outbox is denied');
SELECT throws_ok('DELETE FROM public.sendry_outbox', '42501',
                 'permission denied for table sendry_outbox', 'authenticated: DELETE FROM sendry_outbox is denied');
SELECT throws_ok('TRUNCATE public.sendry_outbox', '42501',
                 'permission denied for table sendry_outbox', 'authenticated: TRUNCATE sendry_outbox is denied');
SELECT throws_ok('SELECT * FROM public.sendry_outbox_stats', '42501',
                 'permission denied for view sendry_outbox_stats', 'authenticated: SELECT sendry_outbox_stats is denied');
SELECT throws_ok($$SELECT nextval('public.sendry_outbox_id_seq')$$, '42501',
                 'permission denied for sequence sendry_outbox_id_seq',
                 'authenticated: nextval of the id sequence is denied');
SELECT throws_ok('SELECT public.sendry_contact_payload(NULL::auth.users)', '42501',
                 'permission denied for function sendry_contact_payload',
                 'authenticated: EXECUTE sendry_contact_payload is denied');
SELECT throws_ok('SELECT * FROM public.sendry_settings', '42501',
                 'permission denied for table sendry_settings', 'authenticated: SELECT sendry_settings is denied');
SELECT throws_ok($$UPDATE public.sendry_settings SET on_delete = 'keep'$$, '42501',
                 'permission denied for table sendry_settings', 'authenticated: UPDATE sendry_settings is denied');
SELECT throws_ok('SELECT * FROM public.sendry_inbox', '42501',
                 'permission denied for table sendry_inbox', 'authenticated: SELECT sendry_inbox is denied');
SELECT throws_ok($$INSERT INTO public.sendry_inbox (event_id, type, payload) VALUES ('forged', 'contact.updated', '{}')$$,
                 '42501', 'permission denied for table sendry_inbox', 'authenticated: INSERT INTO sendry_inbox is denied');
SELECT throws_ok('SELECT * FROM public.sendry_sync_state', '42501',
                 'permission denied for table sendry_sync_state', 'authenticated: SELECT sendry_sync_state is denied');
SELECT throws_ok($$INSERT INTO public.sendry_sync_state (key, value) VALUES ('cursor', 'x')$$, '42501',
                 'permission denied for table sendry_sync_state', 'authenticated: INSERT INTO sendry_sync_state is denied');
SELECT throws_ok($$SELECT nextval('public.sendry_inbox_id_seq')$$, '42501',
                 'permission denied for sequence sendry_inbox_id_seq', 'authenticated: nextval of the inbox id sequence is denied');
SELECT throws_ok($$SELECT public.sendry_inbox_receive('evt_forged', 'contact.updated',
                                                      '{"data": {"email": "victim@example.com", "unsubscribed": true}}')$$,
                 '42501', 'permission denied for function sendry_inbox_receive',
                 'authenticated: EXECUTE sendry_inbox_receive is denied');
SELECT throws_ok($$SELECT public.sendry_inbox_receive(p_event_id => 'evt_forged', p_type => 'contact.updated',
                                                      p_payload => '{}', p_source => 'webhook')$$,
                 '42501', 'permission denied for function sendry_inbox_receive',
                 'authenticated: sendry_inbox_receive with named arguments (as /rest/v1/rpc calls it) is denied');
SELECT throws_ok('SELECT public.sendry_inbox_apply(1)', '42501', 'permission denied for function sendry_inbox_apply',
                 'authenticated: EXECUTE sendry_inbox_apply is denied');
SELECT throws_ok('SELECT * FROM public.sendry_contacts', '42501', 'permission denied for view sendry_contacts',
                 'authenticated: SELECT sendry_contacts is denied');
SELECT throws_ok('SELECT * FROM public.sendry_enqueue_errors', '42501', 'permission denied for table sendry_enqueue_errors',
                 'authenticated: SELECT sendry_enqueue_errors is denied');
SELECT throws_ok('SELECT * FROM public.sendry_reconcile_contacts()', '42501',
                 'permission denied for function sendry_reconcile_contacts',
                 'authenticated: EXECUTE sendry_reconcile_contacts is denied');
RESET ROLE;

-- No privilege of any kind for anon, authenticated and PUBLIC, per object (52 objects x 3
-- roles = 156 tests). Trigger functions are checked here rather than called. Functions are
-- looked up by OID: authenticator has no USAGE on schema auth to parse "(auth.users)".
SELECT ok(NOT granted, format('%s has no %s privilege on %s', grantee, kind, obj))
FROM (
    SELECT g.grantee, o.kind, o.obj,
           CASE o.kind
               WHEN 'table' THEN
                   has_table_privilege(g.grantee, o.obj, 'SELECT,INSERT,UPDATE,DELETE,TRUNCATE,REFERENCES,TRIGGER')
                   OR has_any_column_privilege(g.grantee, o.obj, 'SELECT,INSERT,UPDATE,REFERENCES')
               WHEN 'view' THEN
                   has_table_privilege(g.grantee, o.obj, 'SELECT,INSERT,UPDATE,DELETE,TRUNCATE,REFERENCES,TRIGGER')
                   OR has_any_column_privilege(g.grantee, o.obj, 'SELECT,INSERT,UPDATE,REFERENCES')
               WHEN 'sequence' THEN
                   has_sequence_privilege(g.grantee, o.obj, 'USAGE,SELECT,UPDATE')
               WHEN 'function' THEN
                   -- NULL (fails) if the function does not exist.
                   has_function_privilege(g.grantee,
                       (SELECT p.oid FROM pg_proc p
                         WHERE p.pronamespace = 'public'::regnamespace AND p.proname = o.obj),
                       'EXECUTE')
           END AS granted
    FROM (VALUES ('anon'), ('authenticated'), ('public')) AS g (grantee),
         (VALUES (1, 'table', 'public.sendry_outbox'),
                 (2, 'view', 'public.sendry_outbox_stats'),
                 (3, 'sequence', 'public.sendry_outbox_id_seq'),
                 (4, 'function', 'sendry_contact_payload'),
                 (5, 'function', 'sendry_auth_users_inserted'),
                 (6, 'function', 'sendry_auth_users_updated'),
                 (7, 'function', 'sendry_outbox_notify_insert'),
                 (8, 'function', 'sendry_outbox_notify_update'),
                 (9, 'table', 'public.sendry_settings'),
                 (10, 'table', 'public.sendry_inbox'),
                 (11, 'sequence', 'public.sendry_inbox_id_seq'),
                 (12, 'table', 'public.sendry_sync_state'),
                 (13, 'function', 'sendry_auth_users_deleted'),
                 (14, 'function', 'sendry_inbox_receive'),
                 (15, 'function', 'sendry_inbox_apply'),
                 (16, 'view', 'public.sendry_contacts'),
                 (17, 'table', 'public.sendry_contact_state'),
                 (18, 'table', 'public.sendry_enqueue_errors'),
                 (19, 'sequence', 'public.sendry_enqueue_errors_id_seq'),
                 (20, 'view', 'public.sendry_watched_tables'),
                 (21, 'function', 'sendry_watch'),
                 (22, 'function', 'sendry_unwatch'),
                 (23, 'function', 'sendry_watched_changed'),
                 (24, 'function', 'sendry_reconcile_contacts'),
                 (25, 'function', 'sendry_enqueue_contacts'),
                 (26, 'function', 'sendry_render_contacts'),
                 (27, 'function', 'sendry_contact_body'),
                 (28, 'function', 'sendry_contact_problem'),
                 (29, 'function', 'sendry_user_is_synced'),
                 (30, 'function', 'sendry_changed_contacts'),
                 (31, 'function', 'sendry_schema_version'),
                 (32, 'table', 'public.sendry_rate_budget'),
                 (33, 'function', 'sendry_rate_take'),
                 (34, 'function', 'sendry_rate_pause'),
                 (35, 'table', 'public.sendry_migrations'),
                 (36, 'table', 'public.sendry_migrate_triggers'),
                 (37, 'function', 'sendry_migrate_step'),
                 (38, 'function', 'sendry_migrate_trigger'),
                 (39, 'function', 'sendry_migrate_lockdown'),
                 (40, 'function', 'sendry_migrate_lock_holders'),
                 (41, 'function', 'sendry_migrate_missing'),
                 (42, 'function', 'sendry_migrate_fingerprint'),
                 (43, 'table', 'public.sendry_changed_users'),
                 (44, 'function', 'sendry_auth_users_noted'),
                 (45, 'function', 'sendry_event_id'),
                 (46, 'function', 'sendry_event_problem'),
                 (47, 'function', 'sendry_enqueue_event'),
                 (48, 'function', 'sendry_track_email'),
                 (49, 'function', 'sendry_track'),
                 (50, 'function', 'sendry_user_event_payload'),
                 (51, 'function', 'sendry_claim_render'),
                 (52, 'function', 'sendry_compared_contacts')) AS o (n, kind, obj)
    ORDER BY g.grantee, o.n
) AS checks;

-- The same, straight from the ACLs, for every sendry_* relation (and column) and function
-- in public, including any added later: no entry for anon, authenticated or PUBLIC.
-- A NULL ACL means the default one (for functions: EXECUTE to PUBLIC).
SELECT is_empty($$
    SELECT c.oid::regclass::text, a.privilege_type, a.grantee
      FROM pg_class c, aclexplode(coalesce(c.relacl, acldefault(
               CASE WHEN c.relkind = 'S' THEN 's' ELSE 'r' END::"char", c.relowner))) a
     WHERE c.relnamespace = 'public'::regnamespace AND c.relname LIKE 'sendry%'
       AND a.grantee IN (0, 'anon'::regrole, 'authenticated'::regrole)
    UNION ALL
    SELECT c.oid::regclass::text || '.' || att.attname, a.privilege_type, a.grantee
      FROM pg_class c JOIN pg_attribute att ON att.attrelid = c.oid, aclexplode(att.attacl) a
     WHERE c.relnamespace = 'public'::regnamespace AND c.relname LIKE 'sendry%'
       AND a.grantee IN (0, 'anon'::regrole, 'authenticated'::regrole)
    UNION ALL
    SELECT p.oid::regprocedure::text, a.privilege_type, a.grantee
      FROM pg_proc p, aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a
     WHERE p.pronamespace = 'public'::regnamespace AND p.proname LIKE 'sendry%'
       AND a.grantee IN (0, 'anon'::regrole, 'authenticated'::regrole)
$$, 'no ACL entry for anon, authenticated or PUBLIC on any sendry_* relation, column or function');

SELECT is(ARRAY(SELECT relname::text FROM pg_class WHERE relnamespace = 'public'::regnamespace
                                                  AND relname LIKE 'sendry%' AND relkind IN ('r', 'v', 'S')
                 ORDER BY 1),
          ARRAY['sendry_changed_users', 'sendry_contact_state', 'sendry_contacts', 'sendry_enqueue_errors', 'sendry_enqueue_errors_id_seq',
                'sendry_inbox', 'sendry_inbox_id_seq', 'sendry_migrate_triggers', 'sendry_migrations',
                'sendry_outbox', 'sendry_outbox_id_seq',
                'sendry_outbox_stats', 'sendry_rate_budget', 'sendry_settings', 'sendry_sync_state',
                'sendry_watched_tables'],
          'the ACL check above saw the ten tables, the three views and the three sequences');
SELECT is((SELECT count(*)::int FROM pg_proc WHERE pronamespace = 'public'::regnamespace AND proname LIKE 'sendry%'),
          41, 'the ACL check above saw the forty-one functions');

-- The application's events: PostgREST would serve sendry_track as /rest/v1/rpc/sendry_track
-- to every visitor; only service_role (the server-side key) may call it.
SET ROLE anon;
SELECT throws_ok($$SELECT public.sendry_track('x', '00000000-0000-4000-8000-000000000001')$$, '42501',
                 'permission denied for function sendry_track', 'anon: EXECUTE sendry_track is denied');
SELECT throws_ok($$SELECT public.sendry_track_email('x', 'victim@example.com')$$, '42501',
                 'permission denied for function sendry_track_email', 'anon: EXECUTE sendry_track_email is denied');
SELECT throws_ok('SELECT public.sendry_event_id(1)', '42501',
                 'permission denied for function sendry_event_id', 'anon: EXECUTE sendry_event_id is denied');
-- The claim's render reads every user's contact (SECURITY DEFINER): never a visitor's.
SELECT throws_ok($$SELECT * FROM public.sendry_claim_render(ARRAY['00000000-0000-4000-8000-000000000001'::uuid])$$,
                 '42501', 'permission denied for function sendry_claim_render',
                 'anon: EXECUTE sendry_claim_render is denied');
RESET ROLE;
SET ROLE authenticated;
SELECT throws_ok($$SELECT public.sendry_track('x', '00000000-0000-4000-8000-000000000001')$$, '42501',
                 'permission denied for function sendry_track', 'authenticated: EXECUTE sendry_track is denied');
SELECT throws_ok($$SELECT public.sendry_track_email('x', 'victim@example.com')$$, '42501',
                 'permission denied for function sendry_track_email', 'authenticated: EXECUTE sendry_track_email is denied');
SELECT throws_ok($$SELECT * FROM public.sendry_claim_render(ARRAY['00000000-0000-4000-8000-000000000001'::uuid])$$,
                 '42501', 'permission denied for function sendry_claim_render',
                 'authenticated: EXECUTE sendry_claim_render is denied');
RESET ROLE;
SET ROLE service_role;
SELECT ok(public.sendry_track_email('x', 'lead@example.com') > 0,
          'service_role may call sendry_track_email (its write is rolled back with this file)');
SELECT is((SELECT verdict FROM public.sendry_claim_render(ARRAY['00000000-0000-4000-8000-0000000000ff'::uuid])),
          'gone', 'service_role may call sendry_claim_render (the worker''s role in Supabase)');
RESET ROLE;

SELECT * FROM finish();
ROLLBACK;
