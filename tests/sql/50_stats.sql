-- sendry_outbox_stats: one row with the right counts for a handful of rows in each status.
-- Logged in as postgres (the owner; the operator's role in Supabase's SQL editor).
-- now() is fixed for the transaction, so ages are exact.
BEGIN;
SELECT plan(7);

DELETE FROM public.sendry_enqueue_errors;
SELECT results_eq('SELECT * FROM public.sendry_outbox_stats',
                  $$VALUES (0::bigint, 0::bigint, 0::bigint, 0::bigint, 0::bigint, NULL::interval, 0::bigint,
                            0::bigint, 0::bigint, 0::bigint)$$,
                  'an empty outbox: one row of zeros and no oldest_due_age');

INSERT INTO public.sendry_outbox (email, status, next_attempt_at, updated_at, locked_by, locked_until)
SELECT e, s, n, u, CASE WHEN s = 'processing' THEN 'worker-1' END, CASE WHEN s = 'processing' THEN now() END
FROM (VALUES -- pending and due: 3 (one due right now, the oldest due 10 minutes ago)
       ('due1@example.com', 'pending', now() - interval '10 minutes', now()),
       ('due2@example.com', 'pending', now() - interval '1 minute', now()),
       ('due3@example.com', 'pending', now(), now()),
       -- pending, retry in the future: 2
       ('later1@example.com', 'pending', now() + interval '5 minutes', now()),
       ('later2@example.com', 'pending', now() + interval '2 hours', now()),
       -- processing: 1 (an old next_attempt_at, which is not "due": it is not pending)
       ('busy@example.com', 'processing', now() - interval '1 day', now()),
       -- sent: 4
       ('sent1@example.com', 'sent', now() - interval '2 days', now()),
       ('sent2@example.com', 'sent', now() - interval '2 days', now()),
       ('sent3@example.com', 'sent', now() - interval '2 days', now()),
       ('sent4@example.com', 'sent', now() - interval '2 days', now() - interval '3 days'),
       -- failed: 3, two of them in the last hour
       ('failed1@example.com', 'failed', now() - interval '3 days', now() - interval '5 minutes'),
       ('failed2@example.com', 'failed', now() - interval '3 days', now() - interval '59 minutes'),
       ('failed3@example.com', 'failed', now() - interval '3 days', now() - interval '2 hours')
     ) AS v(e, s, n, u);

SELECT results_eq('SELECT pending, due, processing, sent, failed, failed_last_hour FROM public.sendry_outbox_stats',
                  $$VALUES (5::bigint, 3::bigint, 1::bigint, 4::bigint, 3::bigint, 2::bigint)$$,
                  'counts: 5 pending (3 due), 1 processing, 4 sent, 3 failed (2 in the last hour)');
UPDATE public.sendry_outbox SET class = 'live' WHERE email IN ('due1@example.com', 'later2@example.com', 'busy@example.com');
SELECT results_eq('SELECT pending, pending_live, pending_bulk FROM public.sendry_outbox_stats',
                  $$VALUES (5::bigint, 2::bigint, 3::bigint)$$,
                  'pending by class: 2 live, 3 bulk (the processing live row is not pending)');
INSERT INTO public.sendry_enqueue_errors (occurred_at, trigger_name, table_name, sqlstate, message)
VALUES (now() - interval '5 minutes', 'sendry_sync_users_insert', 'auth.users', '23514', 'recent'),
       (now() - interval '59 minutes', 'sendry_sync_users_update', 'auth.users', '23514', 'recent'),
       (now() - interval '61 minutes', 'sendry_sync_users_insert', 'auth.users', '23514', 'old');
SELECT is((SELECT enqueue_errors_last_hour FROM public.sendry_outbox_stats), 2::bigint,
          'enqueue_errors_last_hour counts the trigger failures of the last hour');
SELECT is((SELECT oldest_due_age FROM public.sendry_outbox_stats), interval '10 minutes',
          'oldest_due_age is the age of the oldest due pending row');
SELECT is((SELECT count(*) FROM public.sendry_outbox_stats), 1::bigint, 'the view has exactly one row');

-- A requeue moves failed rows back to pending and due.
UPDATE public.sendry_outbox SET status = 'pending', next_attempt_at = now() WHERE status = 'failed';
SELECT results_eq('SELECT pending, due, failed, failed_last_hour FROM public.sendry_outbox_stats',
                  $$VALUES (8::bigint, 6::bigint, 0::bigint, 0::bigint)$$,
                  'after a requeue: 8 pending, 6 due, none failed');

SELECT * FROM finish();
ROLLBACK;
