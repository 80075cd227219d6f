-- sendry-step: idempotent
-- Capture in the trigger, render at the claim (issue 17): the triggers on auth.users and
-- on watched tables write one narrow row per changed user, and the worker renders the
-- contact through the mapping when it claims the row (public.sendry_claim_render).
--   sendry_outbox.email    nullable: a captured row of a user may come without it (the
--                          short backfill: INSERT INTO sendry_outbox (user_id) SELECT id
--                          FROM auth.users); the claim renders the address
--   sendry_outbox.payload  nullable, DEFAULT NULL: an upsert row without a payload is
--                          CAPTURED (rendered at the claim); one with a payload (today's
--                          backfill form) is sent as given
--   sendry_outbox_address_check
--                          a row names its contact: an email, or an upsert of a user
--   fillfactor 70          room for a row's claim and completion on its own page
-- Short locks only, on the outbox alone: dropping NOT NULL and changing a default rewrite
-- and read nothing; the CHECK is added NOT VALID here (no scan under ACCESS EXCLUSIVE) and
-- validated by functions/outbox.sql in a transaction of its own, under SHARE UPDATE
-- EXCLUSIVE (writes to the outbox go on while it reads the table). Each change is made only
-- when missing: running it again takes no lock and changes nothing. An outbox made again by
-- the baseline (dropped by hand) lacks the CHECK: sendry_migrate_missing names it, and this
-- step runs again.
DO $capture$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_attribute
                WHERE attrelid = 'public.sendry_outbox'::regclass AND attname IN ('email', 'payload')
                  AND attnotnull AND NOT attisdropped) THEN
        ALTER TABLE public.sendry_outbox
            ALTER COLUMN email DROP NOT NULL,
            ALTER COLUMN payload DROP NOT NULL,
            ALTER COLUMN payload DROP DEFAULT;
        COMMENT ON COLUMN public.sendry_outbox.email IS
            'sendry-sync: the contact''s address, lower(btrim(...)); NULL only on an upsert of a user (user_id), whose address the claim renders';
        COMMENT ON COLUMN public.sendry_outbox.payload IS
            'sendry-sync: an upsert: the contact to send as given, or NULL (captured: rendered through the mapping at the claim); a delete: delete_mode; an event: name and payload';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_constraint
                    WHERE conrelid = 'public.sendry_outbox'::regclass
                      AND conname = 'sendry_outbox_address_check') THEN
        ALTER TABLE public.sendry_outbox
            ADD CONSTRAINT sendry_outbox_address_check
                CHECK (email IS NOT NULL OR (op = 'upsert' AND user_id IS NOT NULL)) NOT VALID;
    END IF;
    -- Room on each page for a row's claim and completion (two new versions): each stays on
    -- its row's page, so PostgreSQL logs it compactly and no lock record for a move to
    -- another page (make bench, tests/bench_wal.py: delivery 1,846 -> 1,713 B of WAL a row
    -- at 70, 1,626 at 50, which doubles the pages of the rows kept --retain-sent days).
    -- New pages only; a metadata change under SHARE UPDATE EXCLUSIVE (writes go on).
    IF NOT COALESCE((SELECT c.reloptions @> ARRAY['fillfactor=70'] FROM pg_catalog.pg_class c
                      WHERE c.oid = 'public.sendry_outbox'::regclass), false) THEN
        ALTER TABLE public.sendry_outbox SET (fillfactor = 70);
    END IF;
END
$capture$;
