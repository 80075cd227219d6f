-- The migration machinery (sql/bootstrap.sql): what install.sql recorded, and one step at a
-- time through public.sendry_migrate_step. Logged in as postgres; rolled back.
BEGIN;
SET LOCAL sendry.migrate_quiet = 'on';
SELECT plan(25);

SELECT has_table('public', 'sendry_migrations', 'table public.sendry_migrations exists');
SELECT has_table('public', 'sendry_migrate_triggers', 'table public.sendry_migrate_triggers exists');
SELECT columns_are('public', 'sendry_migrations',
                   ARRAY['name', 'kind', 'version', 'checksum', 'fingerprint', 'how', 'attempts', 'duration', 'applied_at'],
                   'sendry_migrations has the columns DESIGN.md names');
SELECT isnt_definer('public', 'sendry_migrate_step', ARRAY['text', 'text', 'text', 'text[]'],
                    'sendry_migrate_step runs with the caller''s rights');

SELECT ok((SELECT bool_and(how = 'ran' AND kind = 'versioned' AND version IS NOT NULL)
             FROM public.sendry_migrations WHERE name LIKE 'migrations/%'),
          'every versioned step ran (a fresh install), with its version');
SELECT is(public.sendry_schema_version(),
          (SELECT max(version)::text FROM public.sendry_migrations WHERE kind = 'versioned'),
          'sendry_schema_version() is the last versioned step applied');
SELECT is(ARRAY(SELECT name FROM public.sendry_migrations WHERE kind = 'repeatable' ORDER BY 1),
          ARRAY['functions/budget.sql', 'functions/claim_render.sql', 'functions/contacts.sql', 'functions/events.sql',
                'functions/events_users.sql', 'functions/inbox.sql',
                'functions/inbox_apply.sql', 'functions/outbox.sql', 'functions/settings.sql', 'functions/users.sql',
                'functions/version.sql', 'functions/watch.sql'],
          'every file of sql/functions is recorded');
SELECT is(ARRAY(SELECT m.table_name || ' ' || m.trigger_name
                  FROM public.sendry_migrate_triggers m
                  JOIN pg_trigger t ON t.oid = m.trigger_oid AND t.tgname = m.trigger_name
                 ORDER BY 1),
          ARRAY['auth.users sendry_sync_users_delete', 'auth.users sendry_sync_users_insert',
                'auth.users sendry_sync_users_update', 'auth.users sendry_sync_users_updated',
                'public.sendry_outbox sendry_outbox_notify_insert',
                'public.sendry_outbox sendry_outbox_notify_update', 'public.sendry_settings sendry_settings_compile'],
          'the seven triggers are recorded with their oids');

-- One step, twice: applied once.
SELECT is(public.sendry_migrate_step('versioned', 'migrations/9001_test.sql',
                                     'CREATE TABLE public.sendry_test_9001 (x int);'),
          'applied', 'a new versioned step is applied');
SELECT is(public.sendry_migrate_step('versioned', 'migrations/9001_test.sql',
                                     'CREATE TABLE public.sendry_test_9001 (x int);'),
          'unchanged', 'a versioned step already applied is not run again');
SELECT is(public.sendry_schema_version(), '9001', 'the schema version follows the last versioned step');
SELECT is((SELECT relrowsecurity FROM pg_class WHERE oid = 'public.sendry_test_9001'::regclass), true,
          'a table a step creates gets row level security (sendry_migrate_lockdown)');
-- A repeatable step: again only when its text changed.
SELECT is(public.sendry_migrate_step('repeatable', 'functions/test.sql', 'SELECT 1;'), 'applied',
          'a new repeatable step is applied');
SELECT is(public.sendry_migrate_step('repeatable', 'functions/test.sql', 'SELECT 1;'), 'unchanged',
          'the same text again is not');
SELECT is(public.sendry_migrate_step('repeatable', 'functions/test.sql', 'SELECT 2;'), 'applied',
          'a changed text is');
-- A function of a repeatable step dropped by hand: the step is applied again.
DROP FUNCTION public.sendry_rate_pause(text, double precision);
SELECT is(public.sendry_migrate_missing(
              (SELECT 'CREATE OR REPLACE FUNCTION public.sendry_rate_pause(' )),
          'function public.sendry_rate_pause', 'sendry_migrate_missing names a dropped function');
ALTER TABLE public.sendry_outbox DISABLE TRIGGER sendry_outbox_notify_update;
SELECT is(public.sendry_migrate_missing($$SELECT public.sendry_migrate_trigger('public.sendry_outbox', 'sendry_outbox_notify_update', 'x')$$),
          'trigger sendry_outbox_notify_update on public.sendry_outbox (or it is disabled)',
          'and a disabled trigger');
SELECT is(public.sendry_migrate_missing('CREATE INDEX IF NOT EXISTS sendry_outbox_claim_idx ON public.sendry_outbox'),
          NULL, 'nothing when all is there');
-- A column a versioned step adds, missing from the table an earlier step made again (the
-- outbox dropped by hand and installed again): the step is applied again.
SELECT is(public.sendry_migrate_missing(E'ALTER TABLE public.sendry_outbox\n    ADD COLUMN deduped boolean'),
          NULL, 'a column that is there');
ALTER TABLE public.sendry_outbox DROP COLUMN deduped;
SELECT is(public.sendry_migrate_missing(E'ALTER TABLE public.sendry_outbox\n    ADD COLUMN deduped boolean'),
          'column public.sendry_outbox.deduped', 'names a column a step adds that is missing');
SELECT is(public.sendry_migrate_missing('ALTER TABLE public.sendry_outbox ADD COLUMN IF NOT EXISTS deduped boolean'),
          'column public.sendry_outbox.deduped', 'written with IF NOT EXISTS too');
-- A constraint a versioned step adds (0006's address CHECK), missing from an outbox made
-- again by the baseline: the step is applied again.
SELECT is(public.sendry_migrate_missing(E'ALTER TABLE public.sendry_outbox\n    ADD CONSTRAINT sendry_outbox_address_check\n CHECK (true) NOT VALID;'),
          NULL, 'a constraint that is there');
ALTER TABLE public.sendry_outbox DROP CONSTRAINT sendry_outbox_address_check;
SELECT is(public.sendry_migrate_missing(E'ALTER TABLE public.sendry_outbox\n    ADD CONSTRAINT sendry_outbox_address_check\n CHECK (true) NOT VALID;'),
          'constraint sendry_outbox_address_check on public.sendry_outbox', 'names a constraint a step adds that is missing');
SELECT is(public.sendry_migrate_missing(E'ALTER TABLE public.sendry_outbox ALTER COLUMN email DROP NOT NULL;\nSELECT 1; ADD CONSTRAINT sendry_outbox_address_check'),
          NULL, 'not across statements');
SELECT throws_like($$SELECT public.sendry_migrate_step('versioned', 'migrations/x.sql', 'SELECT 1')$$,
                   '%not named migrations/NNNN_name.sql%', 'a versioned step needs a number');

SELECT * FROM finish();
ROLLBACK;
