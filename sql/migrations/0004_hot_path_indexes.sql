-- sendry-step: idempotent
-- Indexes that keep hot statements by key at any table size (tests/test_hot_plans.py).
-- Each is partial and small, but its build reads the whole table under a SHARE lock
-- (writes to that table wait for the build): on a very large outbox, prune sent rows
-- first, or build them yourself beforehand with CREATE INDEX CONCURRENTLY and the same
-- definition (this step then finds them and builds nothing).
--
-- The rows in flight, by worker (a worker's orphan release after a reconnect, and
-- status's count of workers holding rows). A claim adds an entry, nothing else does.
CREATE INDEX IF NOT EXISTS sendry_outbox_processing_idx
    ON public.sendry_outbox (locked_by)
    WHERE status = 'processing';
-- The events still to apply (the worker's retry takes them in id order). Its size is
-- those events, not the inbox, which keeps every event ever received.
CREATE INDEX IF NOT EXISTS sendry_inbox_received_idx
    ON public.sendry_inbox (id)
    WHERE status = 'received';
-- Users by the address last enqueued, for the inbox's lookup of SSO users (GoTrue's only
-- index on auth.users.email is partial, WHERE is_sso_user = false, and no index may be
-- created in schema auth).
CREATE INDEX IF NOT EXISTS sendry_contact_state_email_idx
    ON public.sendry_contact_state (email)
    WHERE email IS NOT NULL;
