-- Sendry events stored and applied: public.sendry_inbox_receive(event_id, type, payload
-- [, source]) keeps every event once (event_id) and mirrors opt-outs into
-- auth.users.raw_app_meta_data (sendry_unsubscribed, sendry_unsubscribed_at,
-- sendry_unsubscribed_reason), matching the event's address lower-cased.
-- The worker calls it as postgres: the tests run as postgres. Logged in as supabase_admin
-- only to create users as GoTrue (supabase_auth_admin, search_path auth) and to make
-- applying fail with a constraint on auth.users, which only its owner or a superuser may
-- add (undone by the final ROLLBACK).
\connect - supabase_admin
\set as_gotrue 'SET ROLE supabase_auth_admin; SET search_path = auth;'
\set as_worker 'RESET ROLE; RESET search_path; SET ROLE postgres;'
\set as_admin 'RESET ROLE; RESET search_path;'
BEGIN;
SELECT plan(51);

-- Setup: one confirmed user per case, as GoTrue stores them (lower-case addresses).
:as_gotrue
INSERT INTO users (instance_id, id, aud, role, email, email_confirmed_at, raw_app_meta_data,
                   raw_user_meta_data, is_sso_user, is_anonymous, created_at, updated_at)
SELECT '00000000-0000-0000-0000-000000000000', ('00000000-0000-4000-8000-0000000007' || lpad(n::text, 2, '0'))::uuid,
       'authenticated', 'authenticated', name || '@example.com', now(),
       '{"provider": "email", "providers": ["email"]}', '{}', false, false, now(), now()
FROM (VALUES (1, 'ada.lovelace'), (2, 'bob'), (3, 'cy'), (4, 'dee'), (5, 'eve'), (6, 'fay'), (7, 'gus'),
             (8, 'hal'), (9, 'ivy')) AS u (n, name);
:as_admin
DELETE FROM public.sendry_outbox;
SELECT is((SELECT count(*) FROM auth.users WHERE email LIKE '%@example.com'), 9::bigint, 'setup: nine users');

:as_worker
SELECT is(current_user::text, 'postgres', 'the inbox functions are called as postgres, like the worker');

-- 1. contact.updated with unsubscribed true; the event's address is mixed-case.
SELECT is(public.sendry_inbox_receive('evt_ada_1', 'contact.updated',
              '{"type": "contact.updated", "created_at": "2026-01-01T10:00:00Z",
                "data": {"id": "ct_ada", "email": " Ada.Lovelace@Example.COM", "unsubscribed": true}}'),
          'applied', 'contact.updated unsubscribed true: applied');
SELECT results_eq(
    $$SELECT raw_app_meta_data -> 'sendry_unsubscribed', raw_app_meta_data ->> 'sendry_unsubscribed_reason',
             (raw_app_meta_data ->> 'sendry_unsubscribed_at')::timestamptz
        FROM auth.users WHERE email = 'ada.lovelace@example.com'$$,
    $$VALUES ('true'::jsonb, 'unsubscribed', '2026-01-01T10:00:00Z'::timestamptz)$$,
    'the user (matched by the lower-cased address) has sendry_unsubscribed true, a reason and the event''s time');
SELECT results_eq(
    $$SELECT raw_app_meta_data ->> 'provider', raw_app_meta_data -> 'providers'
        FROM auth.users WHERE email = 'ada.lovelace@example.com'$$,
    $$VALUES ('email', '["email"]'::jsonb)$$,
    'the other raw_app_meta_data keys (provider, providers) are kept');
SELECT results_eq(
    $$SELECT type, source, status, email, reason, applied_at IS NOT NULL, payload -> 'data' ->> 'id'
        FROM public.sendry_inbox WHERE event_id = 'evt_ada_1'$$,
    $$VALUES ('contact.updated', 'webhook', 'applied', 'ada.lovelace@example.com', 'unsubscribe (unsubscribed)', true, 'ct_ada')$$,
    'the event is stored: applied, source webhook, the address lower-cased, the reason, applied_at, the payload');

-- 2. A redelivery of the same event.
SELECT is(public.sendry_inbox_receive('evt_ada_1', 'contact.updated',
              '{"type": "contact.updated", "created_at": "2026-01-01T10:00:00Z",
                "data": {"id": "ct_replayed", "email": "ada.lovelace@example.com", "unsubscribed": false}}'),
          'duplicate', 'the same event_id again: duplicate');
SELECT results_eq($$SELECT count(*), min(payload -> 'data' ->> 'id') FROM public.sendry_inbox WHERE event_id = 'evt_ada_1'$$,
                  $$VALUES (1::bigint, 'ct_ada')$$, 'still one inbox row for it, with the first payload');
SELECT is((SELECT raw_app_meta_data -> 'sendry_unsubscribed' FROM auth.users WHERE email = 'ada.lovelace@example.com'),
          'true'::jsonb, 'the duplicate changed nothing');

-- 3. A newer contact.updated with unsubscribed false: re-subscribed.
SELECT is(public.sendry_inbox_receive('evt_ada_2', 'contact.updated',
              '{"type": "contact.updated", "created_at": "2026-01-01T11:00:00Z",
                "data": {"id": "ct_ada", "email": "ada.lovelace@example.com", "unsubscribed": false}}'),
          'applied', 'a newer contact.updated unsubscribed false: applied');
SELECT results_eq(
    $$SELECT raw_app_meta_data -> 'sendry_unsubscribed', (raw_app_meta_data ->> 'sendry_unsubscribed_at')::timestamptz,
             raw_app_meta_data ->> 'provider'
        FROM auth.users WHERE email = 'ada.lovelace@example.com'$$,
    $$VALUES ('false'::jsonb, '2026-01-01T11:00:00Z'::timestamptz, 'email')$$,
    're-subscribed: sendry_unsubscribed false, at the newer event''s time');
SELECT is((SELECT reason FROM public.sendry_inbox WHERE event_id = 'evt_ada_2'), 'resubscribe (contact.updated)',
          'the inbox row says resubscribe');

-- 4. An older event arriving late changes nothing.
SELECT is(public.sendry_inbox_receive('evt_ada_0', 'contact.updated',
              '{"type": "contact.updated", "created_at": "2026-01-01T09:00:00Z",
                "data": {"id": "ct_ada", "email": "ada.lovelace@example.com", "unsubscribed": true}}'),
          'ignored: older than the state already recorded', 'an event older than the recorded state: ignored');
SELECT results_eq($$SELECT status, reason ~ 'older' FROM public.sendry_inbox WHERE event_id = 'evt_ada_0'$$,
                  $$VALUES ('ignored', true)$$, 'stored as ignored, the reason mentions older');
SELECT results_eq(
    $$SELECT raw_app_meta_data -> 'sendry_unsubscribed', (raw_app_meta_data ->> 'sendry_unsubscribed_at')::timestamptz
        FROM auth.users WHERE email = 'ada.lovelace@example.com'$$,
    $$VALUES ('false'::jsonb, '2026-01-01T11:00:00Z'::timestamptz)$$,
    'the newer state stays');

-- 5. email.complained, the recipient in data.to (an array).
SELECT is(public.sendry_inbox_receive('evt_bob', 'email.complained',
              '{"type": "email.complained", "created_at": "2026-01-02T08:00:00Z",
                "data": {"email_id": "em_1", "to": ["Bob@Example.com"], "timestamp": "2026-01-02T08:00:00Z"}}'),
          'applied', 'email.complained with data.to as an array: applied');
SELECT results_eq(
    $$SELECT raw_app_meta_data -> 'sendry_unsubscribed', raw_app_meta_data ->> 'sendry_unsubscribed_reason'
        FROM auth.users WHERE email = 'bob@example.com'$$,
    $$VALUES ('true'::jsonb, 'complaint')$$, 'a complaint is an opt-out, reason complaint');

-- 6. email.bounced: hard is an opt-out, soft is not.
SELECT is(public.sendry_inbox_receive('evt_cy', 'email.bounced',
              '{"type": "email.bounced", "created_at": "2026-01-02T09:00:00Z",
                "data": {"email_id": "em_2", "to": ["cy@example.com"], "bounce_type": "hard"}}'),
          'applied', 'email.bounced with bounce_type hard: applied');
SELECT results_eq(
    $$SELECT raw_app_meta_data -> 'sendry_unsubscribed', raw_app_meta_data ->> 'sendry_unsubscribed_reason'
        FROM auth.users WHERE email = 'cy@example.com'$$,
    $$VALUES ('true'::jsonb, 'hard_bounce')$$, 'a hard bounce is an opt-out, reason hard_bounce');
SELECT is(public.sendry_inbox_receive('evt_dee', 'email.bounced',
              '{"type": "email.bounced", "created_at": "2026-01-02T09:00:00Z",
                "data": {"email_id": "em_3", "to": ["dee@example.com"], "bounce_type": "soft"}}'),
          'ignored: not a hard bounce', 'email.bounced with bounce_type soft: ignored');
SELECT results_eq($$SELECT status, reason FROM public.sendry_inbox WHERE event_id = 'evt_dee'$$,
                  $$VALUES ('ignored', 'not a hard bounce')$$, 'the soft bounce is stored as ignored');
SELECT is((SELECT raw_app_meta_data FROM auth.users WHERE email = 'dee@example.com'),
          '{"provider": "email", "providers": ["email"]}'::jsonb, 'a soft bounce leaves the user untouched');

-- 7. Unsubscribes as the worker's reconciliation sends them (GET /v1/unsubscribes entries).
SELECT is(public.sendry_inbox_receive('unsubscribe:uns_1', 'unsubscribe',
              '{"type": "unsubscribe", "data": {"id": "uns_1", "email": "eve@example.com", "list_id": null,
                                                "reason": "too_many_emails"}}', 'reconcile'),
          'applied', 'a global unsubscribe (list_id null) from reconciliation: applied');
SELECT results_eq(
    $$SELECT raw_app_meta_data -> 'sendry_unsubscribed', raw_app_meta_data ->> 'sendry_unsubscribed_reason'
        FROM auth.users WHERE email = 'eve@example.com'$$,
    $$VALUES ('true'::jsonb, 'too_many_emails')$$, 'the unsubscribe''s own reason is kept');
SELECT results_eq($$SELECT source, status FROM public.sendry_inbox WHERE event_id = 'unsubscribe:uns_1'$$,
                  $$VALUES ('reconcile', 'applied')$$, 'stored with source reconcile');
SELECT is(public.sendry_inbox_receive('unsubscribe:uns_2', 'unsubscribe',
              '{"type": "unsubscribe", "data": {"id": "uns_2", "email": "fay@example.com", "list_id": "list_1",
                                                "reason": null}}', 'reconcile'),
          'ignored: unsubscribed from one list only', 'an unsubscribe from one list: ignored');
SELECT is((SELECT raw_app_meta_data FROM auth.users WHERE email = 'fay@example.com'),
          '{"provider": "email", "providers": ["email"]}'::jsonb, 'an unsubscribe from one list leaves the user untouched');

-- 8. A suppression (GET /v1/suppression entries).
SELECT is(public.sendry_inbox_receive('suppression:gus@example.com', 'suppression',
              '{"type": "suppression", "data": {"email": "gus@example.com", "reason": "manual",
                                                "created_at": "2026-01-03T00:00:00Z"}}', 'reconcile'),
          'applied', 'a suppression: applied');
SELECT results_eq(
    $$SELECT raw_app_meta_data -> 'sendry_unsubscribed', raw_app_meta_data ->> 'sendry_unsubscribed_reason',
             (raw_app_meta_data ->> 'sendry_unsubscribed_at')::timestamptz
        FROM auth.users WHERE email = 'gus@example.com'$$,
    $$VALUES ('true'::jsonb, 'manual', '2026-01-03T00:00:00Z'::timestamptz)$$,
    'a suppression is an opt-out with its reason and its time');

-- 9. Events that apply to nobody are stored, marked ignored with the reason.
SELECT is(public.sendry_inbox_receive('evt_nobody', 'contact.updated',
              '{"type": "contact.updated", "data": {"email": "Nobody@Example.com", "unsubscribed": true}}'),
          'ignored: no user with this email', 'an unknown address: ignored');
SELECT results_eq($$SELECT status, reason, email FROM public.sendry_inbox WHERE event_id = 'evt_nobody'$$,
                  $$VALUES ('ignored', 'no user with this email', 'nobody@example.com')$$,
                  'stored as ignored: no user with this email');
SELECT is(public.sendry_inbox_receive('evt_opened', 'email.opened',
              '{"type": "email.opened", "data": {"email_id": "em_4", "to": ["ivy@example.com"]}}'),
          'ignored: event type not mirrored', 'an event type that is not an opt-out: ignored');
SELECT results_eq($$SELECT type, status, reason FROM public.sendry_inbox WHERE event_id = 'evt_opened'$$,
                  $$VALUES ('email.opened', 'ignored', 'event type not mirrored')$$, 'stored as ignored, with its type');
SELECT is(public.sendry_inbox_receive('evt_noemail', 'contact.updated',
              '{"type": "contact.updated", "data": {"id": "ct_x", "unsubscribed": true}}'),
          'ignored: no email in the event', 'an event without an address: ignored');
SELECT is((SELECT status FROM public.sendry_inbox WHERE event_id = 'evt_noemail'), 'ignored', 'stored as ignored');
SELECT is(public.sendry_inbox_receive('evt_nofield', 'contact.updated',
              '{"type": "contact.updated", "data": {"email": "ivy@example.com", "first_name": "Ivy"}}'),
          'ignored: no unsubscribed field', 'a contact.updated without unsubscribed: ignored');
SELECT is((SELECT raw_app_meta_data FROM auth.users WHERE email = 'ivy@example.com'),
          '{"provider": "email", "providers": ["email"]}'::jsonb, 'the ignored events left their user untouched');
SELECT is(public.sendry_inbox_apply(-1), 'ignored: no such event', 'applying an id that does not exist: ignored');
SELECT throws_ok($$SELECT public.sendry_inbox_receive('evt_badsource', 'contact.updated', '{}', 'poll')$$, '23514', NULL,
                 'an unknown source is refused');

-- 10. Applying never enqueues: the user trigger ignores raw_app_meta_data changes.
SELECT is_empty('SELECT 1 FROM public.sendry_outbox', 'no outbox row came from any of the events above');

-- 11. An error while applying: the event stays 'received' with the error, nothing raises.
:as_admin
ALTER TABLE auth.users ADD CONSTRAINT sendry_test_no_optout
    CHECK (NOT coalesce((raw_app_meta_data ->> 'sendry_unsubscribed')::boolean, false)) NOT VALID;
:as_worker
SELECT lives_ok($$SELECT public.sendry_inbox_receive('evt_hal', 'contact.updated',
                      '{"type": "contact.updated", "data": {"email": "hal@example.com", "unsubscribed": true}}')$$,
                'sendry_inbox_receive does not raise when applying fails');
SELECT results_eq($$SELECT status, reason LIKE 'error: %sendry_test_no_optout%', applied_at IS NULL
                      FROM public.sendry_inbox WHERE event_id = 'evt_hal'$$,
                  $$VALUES ('received', true, true)$$,
                  'the event is kept as received, the error in reason');
SELECT is(left(public.sendry_inbox_receive('evt_hal_again', 'email.complained',
                   '{"type": "email.complained", "data": {"to": ["hal@example.com"]}}'), 7),
          'error: ', 'sendry_inbox_receive returns the error');
SELECT is((SELECT raw_app_meta_data FROM auth.users WHERE email = 'hal@example.com'),
          '{"provider": "email", "providers": ["email"]}'::jsonb, 'the failed event changed nothing on the user');
:as_admin
ALTER TABLE auth.users DROP CONSTRAINT sendry_test_no_optout;
:as_worker
SELECT is(public.sendry_inbox_apply((SELECT id FROM public.sendry_inbox WHERE event_id = 'evt_hal')), 'applied',
          'once the cause is gone, sendry_inbox_apply(id) applies the received event');
SELECT results_eq(
    $$SELECT i.status, u.raw_app_meta_data -> 'sendry_unsubscribed'
        FROM public.sendry_inbox i JOIN auth.users u ON u.email = i.email WHERE i.event_id = 'evt_hal'$$,
    $$VALUES ('applied', 'true'::jsonb)$$, 'the event is applied and the user opted out');

SELECT is_empty('SELECT 1 FROM public.sendry_outbox', 'and still no outbox row');
-- SSO users may share an address, and GoTrue's unique index on email leaves them out
-- (WHERE is_sso_user = false): the lookup goes by the address last enqueued for them
-- (sendry_contact_state: what Sendry last accepted, written by the worker), the most
-- recent first; an SSO user whose contact Sendry never accepted is not found.
:as_gotrue
INSERT INTO users (instance_id, id, aud, role, email, email_confirmed_at, raw_app_meta_data,
                   raw_user_meta_data, is_sso_user, is_anonymous, created_at, updated_at)
SELECT '00000000-0000-0000-0000-000000000000', ('00000000-0000-4000-8000-0000000008' || lpad(n::text, 2, '0'))::uuid,
       'authenticated', 'authenticated', email, now(), '{"provider": "sso:acme", "providers": ["sso:acme"]}', '{}',
       true, false, now(), now()
FROM (VALUES (1, 'sso@example.com'), (2, 'sso@example.com'), (3, 'sso.unseen@example.com')) AS u (n, email);
:as_admin
-- Sendry accepted their contacts (what the worker's completion writes).
INSERT INTO public.sendry_contact_state (user_id, email, audiences, contact_hash)
SELECT r.user_id, r.email, r.audiences, r.hash
  FROM public.sendry_claim_render(ARRAY(SELECT id FROM auth.users WHERE is_sso_user)) r WHERE r.verdict = 'send';
UPDATE public.sendry_contact_state SET updated_at = now() - interval '1 day'
 WHERE user_id = '00000000-0000-4000-8000-000000000801';
DELETE FROM public.sendry_contact_state WHERE user_id = '00000000-0000-4000-8000-000000000803';
:as_worker
SELECT is(public.sendry_inbox_receive('evt_sso', 'email.complained', '{"data": {"email": "SSO@example.com"}}'),
          'applied', 'an SSO user''s address: applied');
SELECT results_eq(
    $$SELECT id::text, raw_app_meta_data -> 'sendry_unsubscribed' FROM auth.users
       WHERE email = 'sso@example.com' ORDER BY id$$,
    $$VALUES ('00000000-0000-4000-8000-000000000801', NULL::jsonb),
             ('00000000-0000-4000-8000-000000000802', 'true'::jsonb)$$,
    'of two SSO users with the address, the one it was enqueued for last opted out');
SELECT is(public.sendry_inbox_receive('evt_sso_unseen', 'email.complained',
                                      '{"data": {"email": "sso.unseen@example.com"}}'),
          'ignored: no user with this email', 'an SSO user whose contact was never enqueued is not found');

SELECT results_eq($$SELECT status, count(*) FROM public.sendry_inbox GROUP BY status ORDER BY status$$,
                  $$VALUES ('applied', 8::bigint), ('ignored', 8::bigint), ('received', 1::bigint)$$,
                  'every event was stored exactly once (the redelivery and the refused source were not)');

SELECT * FROM finish();
ROLLBACK;
