-- sendry-step: idempotent
-- The users an UPDATE of auth.users changed, noted by the row-level UPDATE trigger and
-- enqueued by the statement-level one at the end of the same statement, which then
-- deletes them (functions/users.sql): so that a bulk UPDATE pays no subtransaction per
-- row. Rows live for one statement of one session (backend_pid): the table is nearly
-- always empty, unlogged (nothing to recover after a crash) and has one index (each row
-- costs one heap and one index entry). Creating it locks nothing of the project's.
CREATE UNLOGGED TABLE IF NOT EXISTS public.sendry_changed_users (
    backend_pid   integer     NOT NULL,
    user_id       uuid        NOT NULL,
    old_email     text,
    old_anonymous boolean     NOT NULL,
    old_confirmed boolean     NOT NULL,
    soft_deleted  boolean     NOT NULL
);
CREATE INDEX IF NOT EXISTS sendry_changed_users_backend_pid_idx
    ON public.sendry_changed_users (backend_pid);
