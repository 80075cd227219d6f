-- The schema version: the number of the last versioned step applied (sql/migrations),
-- which `sendry-sync doctor` compares with the one the binary embeds. Releases before
-- versioned migrations returned a constant ('2'); their binaries still call it.
CREATE OR REPLACE FUNCTION public.sendry_schema_version() RETURNS text
    LANGUAGE sql STABLE PARALLEL SAFE SET search_path = ''
    RETURN (SELECT COALESCE(pg_catalog.max(m.version), 0)::pg_catalog.text
              FROM public.sendry_migrations m WHERE m.kind = 'versioned');
