-- sendry-step: requires auth.users
-- Watching the project's own tables: SELECT sendry_watch('public.profiles', 'id') makes
-- every INSERT, UPDATE and DELETE of public.profiles capture the contacts of the synced
-- users it touched (the uuid column `id` names the user): the worker renders each at the
-- claim and sends those that changed.
-- sendry_unwatch('public.profiles') stops it; public.sendry_watched_tables lists them.

-- The trigger function of every watched table (statement-level, over the transition
-- tables; TG_ARGV[0] is the user column). As safe as the auth.users triggers:
-- SECURITY DEFINER (the app's roles write these tables), empty search_path, errors
-- turned into a WARNING and recorded.
CREATE OR REPLACE FUNCTION public.sendry_watched_changed()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = ''
AS $$
DECLARE
    v_ids     uuid[];
    v_sync_on text;
BEGIN
    BEGIN
        -- Static SQL (PL/pgSQL keeps a plan per watched table): the user column is
        -- read by name from each row as jsonb, cheaper than planning an EXECUTE.
        IF TG_OP = 'INSERT' THEN
            SELECT pg_catalog.array_agg(DISTINCT (pg_catalog.to_jsonb(n) ->> TG_ARGV[0])::uuid)
              INTO v_ids FROM new_rows n;
        ELSIF TG_OP = 'DELETE' THEN
            SELECT pg_catalog.array_agg(DISTINCT (pg_catalog.to_jsonb(o) ->> TG_ARGV[0])::uuid)
              INTO v_ids FROM old_rows o;
        ELSE
            SELECT pg_catalog.array_agg(DISTINCT k.id) INTO v_ids
              FROM (SELECT (pg_catalog.to_jsonb(n) ->> TG_ARGV[0])::uuid AS id FROM new_rows n
                    UNION ALL
                    SELECT (pg_catalog.to_jsonb(o) ->> TG_ARGV[0])::uuid FROM old_rows o) k;
        END IF;
        v_ids := pg_catalog.array_remove(v_ids, NULL);
        IF pg_catalog.cardinality(v_ids) > 0 THEN
            v_sync_on := public.sendry_settings_sync_on();   -- compiled: functions/settings.sql
            -- One captured row per synced user: the claim renders the contact, and
            -- completes it without a request when it did not change.
            INSERT INTO public.sendry_outbox (class, op, user_id, email)
            SELECT 'live', 'upsert', u.id, pg_catalog.lower(pg_catalog.btrim(u.email))
              FROM auth.users u
             WHERE u.id = ANY (v_ids) AND public.sendry_user_is_synced(u, v_sync_on)
             ORDER BY u.id;
        END IF;
    EXCEPTION WHEN OTHERS THEN
        RAISE WARNING 'sendry-sync: could not enqueue the users of changed % rows for Sendry: % (SQLSTATE %)',
            TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME, SQLERRM, SQLSTATE;
        BEGIN
            INSERT INTO public.sendry_enqueue_errors (trigger_name, table_name, sqlstate, message, user_ids)
            VALUES (TG_NAME, TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME, SQLSTATE, SQLERRM, v_ids);
        EXCEPTION WHEN OTHERS THEN
            RAISE WARNING 'sendry-sync: could not record that in public.sendry_enqueue_errors either: % (SQLSTATE %)',
                SQLERRM, SQLSTATE;
        END;
    END;
    RETURN NULL;
END
$$;

-- Watch a table: three statement-level triggers (AFTER INSERT, UPDATE, DELETE)
-- named sendry_watch_insert/_update/_delete. p_user_column is its uuid column that
-- holds the auth.users id. Calling it again replaces them. Needs the TRIGGER
-- privilege on the table (it runs with the caller's rights).
CREATE OR REPLACE FUNCTION public.sendry_watch(p_table regclass, p_user_column name DEFAULT 'id')
RETURNS text
LANGUAGE plpgsql
SET search_path = ''
AS $$
DECLARE
    v_type regtype;
    v_op   text;
BEGIN
    IF p_table = 'auth.users'::regclass THEN
        RAISE EXCEPTION 'sendry-sync: auth.users needs no watching: its own triggers sync it';
    END IF;
    IF (SELECT c.relname LIKE 'sendry\_%' FROM pg_catalog.pg_class c WHERE c.oid = p_table) THEN
        RAISE EXCEPTION 'sendry-sync: % is one of sendry-sync''s own tables', p_table;
    END IF;
    IF (SELECT c.relkind NOT IN ('r', 'p') FROM pg_catalog.pg_class c WHERE c.oid = p_table) THEN
        RAISE EXCEPTION 'sendry-sync: % is not a table', p_table;
    END IF;
    SELECT a.atttypid::regtype INTO v_type
      FROM pg_catalog.pg_attribute a
     WHERE a.attrelid = p_table AND a.attname = p_user_column AND a.attnum > 0 AND NOT a.attisdropped;
    IF v_type IS NULL THEN
        RAISE EXCEPTION 'sendry-sync: % has no column %', p_table, pg_catalog.quote_ident(p_user_column);
    ELSIF v_type <> 'uuid'::regtype THEN
        RAISE EXCEPTION 'sendry-sync: column % of % is %, not uuid (the auth.users id)',
            pg_catalog.quote_ident(p_user_column), p_table, v_type;
    END IF;
    FOREACH v_op IN ARRAY ARRAY['INSERT', 'UPDATE', 'DELETE'] LOOP
        EXECUTE pg_catalog.format(
            'CREATE OR REPLACE TRIGGER %I AFTER %s ON %s REFERENCING %s'
            ' FOR EACH STATEMENT EXECUTE FUNCTION public.sendry_watched_changed(%L)',
            'sendry_watch_' || pg_catalog.lower(v_op), v_op, p_table,
            CASE v_op WHEN 'INSERT' THEN 'NEW TABLE AS new_rows'
                      WHEN 'DELETE' THEN 'OLD TABLE AS old_rows'
                      ELSE 'OLD TABLE AS old_rows NEW TABLE AS new_rows' END,
            p_user_column);
    END LOOP;
    RETURN pg_catalog.format('sendry-sync: watching %s (user column %I)', p_table, p_user_column);
END
$$;

CREATE OR REPLACE FUNCTION public.sendry_unwatch(p_table regclass)
RETURNS text
LANGUAGE plpgsql
SET search_path = ''
AS $$
DECLARE
    v_found boolean := false;
    v_trigger name;
BEGIN
    FOR v_trigger IN
        SELECT t.tgname FROM pg_catalog.pg_trigger t
         WHERE t.tgrelid = p_table AND t.tgfoid = 'public.sendry_watched_changed()'::regprocedure
    LOOP
        EXECUTE pg_catalog.format('DROP TRIGGER %I ON %s', v_trigger, p_table);
        v_found := true;
    END LOOP;
    RETURN pg_catalog.format(CASE WHEN v_found THEN 'sendry-sync: no longer watching %s'
                                  ELSE 'sendry-sync: %s was not watched' END, p_table);
END
$$;

CREATE OR REPLACE VIEW public.sendry_watched_tables WITH (security_invoker = true) AS
SELECT t.tgrelid::regclass AS table_name,
       convert_from(substring(t.tgargs FROM 1 FOR position('\x00'::bytea IN t.tgargs) - 1),
                    'UTF8') COLLATE "default" AS user_column,
       t.tgenabled <> 'D' AS enabled
  FROM pg_catalog.pg_trigger t
 WHERE t.tgname = 'sendry_watch_update'
   AND t.tgfoid = 'public.sendry_watched_changed()'::regprocedure;

-- The repair pass, for contacts that drifted while the triggers could not see it (they
-- were disabled or installed late, a table changed before it was watched, the mapping
-- was replaced, a TRUNCATE): compares what the mapping renders with what was last
-- enqueued for each user and enqueues the differences as class 'bulk' rows (claimed
-- after live ones, like a backfill); for a user deleted meanwhile whose contact was
-- enqueued, the deletion (as sendry_settings.on_delete says). Each call examines the
-- next p_batch users in id order (the position is kept in sendry_sync_state, key
-- contacts_reconcile_after) and returns how many rows it enqueued (of which failed:
-- the mapping renders them wrongly), how many users it examined, and whether more
-- remain: call it until more is false. Calls wait for each other.
CREATE OR REPLACE FUNCTION public.sendry_reconcile_contacts(p_batch integer DEFAULT 1000,
                                                           OUT enqueued integer, OUT failed integer,
                                                           OUT examined integer, OUT more boolean)
LANGUAGE plpgsql
SET search_path = ''
AS $$
DECLARE
    v_after     uuid;
    v_lo        uuid;
    v_hi        uuid;
    v_ids       uuid[];
    v_sync_on   text;
    v_on_delete text;
    v_deletes   integer;
BEGIN
    IF p_batch IS NULL OR p_batch NOT BETWEEN 1 AND 100000 THEN
        RAISE EXCEPTION 'sendry-sync: the batch must be between 1 and 100000 users, not %', p_batch;
    END IF;
    SELECT s.sync_on, s.on_delete INTO v_sync_on, v_on_delete FROM public.sendry_settings s LIMIT 1;
    INSERT INTO public.sendry_sync_state (key) VALUES ('contacts_reconcile_after')
        ON CONFLICT (key) DO NOTHING;
    SELECT st.value::uuid INTO v_after
      FROM public.sendry_sync_state st WHERE st.key = 'contacts_reconcile_after' FOR UPDATE;
    -- A walk that starts now repairs, once it is complete, every trigger error before now
    -- (contacts_repaired_before: the worker's /healthz stops calling them "degraded").
    IF v_after IS NULL THEN
        INSERT INTO public.sendry_sync_state AS st (key, value) VALUES ('contacts_reconcile_started', pg_catalog.now()::text)
            ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, updated_at = pg_catalog.now();
    END IF;
    -- The users in (v_after, v_hi]; the smallest uuid as the lower bound of the first
    -- batch, so that each query is one index range scan.
    v_lo := COALESCE(v_after, '00000000-0000-0000-0000-000000000000');
    v_ids := ARRAY(SELECT u.id FROM auth.users u
                    WHERE u.id >= v_lo AND (u.id > v_after OR v_after IS NULL)
                    ORDER BY u.id LIMIT p_batch);
    examined := pg_catalog.cardinality(v_ids);
    more := examined = p_batch;
    v_hi := CASE WHEN more THEN v_ids[examined] ELSE 'ffffffff-ffff-ffff-ffff-ffffffffffff' END;

    SELECT e.enqueued, e.failed INTO enqueued, failed
      FROM public.sendry_enqueue_contacts(
               ARRAY(SELECT u.id FROM auth.users u
                      WHERE u.id = ANY (v_ids)
                        AND public.sendry_user_is_synced(u, COALESCE(v_sync_on, 'signup'))),
               'bulk') e;

    WITH gone AS (
        DELETE FROM public.sendry_contact_state s
         WHERE s.user_id >= v_lo AND (s.user_id > v_after OR v_after IS NULL) AND s.user_id <= v_hi
           -- OFFSET 0: one probe of users' key per state row, never an anti-join that
           -- reads all of auth.users when statistics are missing (test_hot_plans)
           AND NOT EXISTS (SELECT 1 FROM auth.users u WHERE u.id = s.user_id AND u.deleted_at IS NULL OFFSET 0)
        RETURNING s.user_id, s.email
    )
    INSERT INTO public.sendry_outbox (class, op, user_id, email, payload)
    SELECT 'bulk', 'delete', g.user_id, g.email,
           pg_catalog.jsonb_build_object('delete_mode', COALESCE(v_on_delete, 'delete_contact'))
      FROM gone g
     WHERE g.email IS NOT NULL AND COALESCE(v_on_delete, 'delete_contact') <> 'keep';
    GET DIAGNOSTICS v_deletes = ROW_COUNT;
    enqueued := enqueued + v_deletes;

    UPDATE public.sendry_sync_state
       SET value = CASE WHEN more THEN v_hi::text END, updated_at = pg_catalog.now()
     WHERE key = 'contacts_reconcile_after';
    IF NOT more THEN
        INSERT INTO public.sendry_sync_state AS st (key, value)
        SELECT 'contacts_repaired_before', s.value FROM public.sendry_sync_state s
         WHERE s.key = 'contacts_reconcile_started'
            ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, updated_at = pg_catalog.now();
    END IF;
END
$$;
