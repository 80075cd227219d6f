-- sendry-step: requires auth.users
-- The settings the triggers need, compiled: public.sendry_settings_sync_on(),
-- sendry_settings_on_delete() and sendry_settings_events() each return one column of
-- public.sendry_settings as a literal (`SELECT 'signup'::pg_catalog.text`). They are plain
-- SQL functions, so the planner inlines them: a trigger's statement that calls one is
-- planned with the setting as a constant, and a sign-up reads no table to learn it. A
-- change to the settings replaces them (the trigger sendry_settings_compile below, and
-- this step each time it is applied): the plans that used them are invalidated in every
-- session, so the next statement of any session after the change commits uses the new
-- value, and a change rolled back leaves the functions as they were.
--
-- sendry_settings_compile() writes them from the table, each only when its value changed,
-- one transaction at a time (an advisory lock: a settings change and a migration step at
-- once wait for each other instead of replacing the same function twice). They are made
-- from a format() here, not written out in this file: their text follows the settings,
-- so the step runner leaves them out of this step's fingerprint (it would otherwise take
-- every settings change for a function replaced by hand).
CREATE OR REPLACE FUNCTION public.sendry_settings_compile()
RETURNS integer
LANGUAGE plpgsql
SET search_path = ''
AS $$
DECLARE
    v_sync_on   text;
    v_on_delete text;
    v_events    text[];
    v_fn        record;
    v_new       boolean;
    v_who       text;
    v_replaced  integer := 0;
BEGIN
    PERFORM pg_catalog.pg_advisory_xact_lock(1397050948, 2);
    SELECT s.sync_on, s.on_delete, s.events INTO v_sync_on, v_on_delete, v_events
      FROM public.sendry_settings s LIMIT 1;
    -- The defaults when the row is missing: what the triggers assumed before.
    FOR v_fn IN
        SELECT f.name, f.type, pg_catalog.format('SELECT %L::pg_catalog.%s', f.value, f.type) AS body
          FROM (VALUES ('sendry_settings_sync_on', 'text', COALESCE(v_sync_on, 'signup')),
                       ('sendry_settings_on_delete', 'text', COALESCE(v_on_delete, 'delete_contact')),
                       ('sendry_settings_events', 'text[]', COALESCE(v_events, '{}')::text)) AS f (name, type, value)
    LOOP
        CONTINUE WHEN EXISTS (SELECT 1 FROM pg_catalog.pg_proc p
                               WHERE p.pronamespace = 'public'::pg_catalog.regnamespace
                                 AND p.proname = v_fn.name AND p.pronargs = 0 AND p.prosrc = v_fn.body);
        v_new := pg_catalog.to_regprocedure('public.' || v_fn.name || '()') IS NULL;
        -- Inlinable: LANGUAGE sql, one SELECT of a constant, no SET clause, not SECURITY DEFINER.
        EXECUTE pg_catalog.format('CREATE OR REPLACE FUNCTION public.%I() RETURNS pg_catalog.%s'
                                  ' LANGUAGE sql STABLE PARALLEL SAFE AS %L',
                                  v_fn.name, v_fn.type, v_fn.body);
        IF v_new THEN
            -- Made outside a migration step (one dropped by hand): no privilege for
            -- PUBLIC, anon or authenticated, as sendry_migrate_lockdown leaves it.
            FOREACH v_who IN ARRAY ARRAY['PUBLIC', 'anon', 'authenticated'] LOOP
                CONTINUE WHEN v_who <> 'PUBLIC' AND pg_catalog.to_regrole(v_who) IS NULL;
                EXECUTE pg_catalog.format('REVOKE ALL ON FUNCTION public.%I() FROM %s', v_fn.name,
                                          CASE v_who WHEN 'PUBLIC' THEN 'PUBLIC' ELSE pg_catalog.quote_ident(v_who) END);
            END LOOP;
        END IF;
        v_replaced := v_replaced + 1;
    END LOOP;
    RETURN v_replaced;
END
$$;

-- After any change to public.sendry_settings (INSERT, UPDATE, DELETE, TRUNCATE), in the
-- same transaction. SECURITY DEFINER: a role that may UPDATE the settings need not own
-- the functions it replaces.
CREATE OR REPLACE FUNCTION public.sendry_settings_changed()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = ''
AS $$
BEGIN
    PERFORM public.sendry_settings_compile();
    RETURN NULL;
END
$$;

-- Replaced only when its definition changed (SHARE ROW EXCLUSIVE on the settings table
-- for a moment, under the step's lock_timeout).
SELECT public.sendry_migrate_trigger('public.sendry_settings', 'sendry_settings_compile', $t$
    CREATE OR REPLACE TRIGGER sendry_settings_compile
        AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON public.sendry_settings
        FOR EACH STATEMENT EXECUTE FUNCTION public.sendry_settings_changed()
$t$);

SELECT public.sendry_settings_compile();
