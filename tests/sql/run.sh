#!/bin/sh
# pgTAP tests for sql/install.sql, against a throwaway Supabase-shaped cluster:
#
#   /usr/bin/python3 tests/pgharness.py run -- sh tests/sql/run.sh
#
# pgharness exports PGHOST, PGPORT, PGDATABASE and PGUSER=postgres. This script
#  1. creates the pgtap extension as the bootstrap superuser supabase_admin (in schema
#     public: anon and authenticated have USAGE there and EXECUTE on pgTAP's functions,
#     so a "permission denied" can only come from the sendry_* objects themselves);
#  2. applies sql/install.sql as postgres, a non-superuser, as Supabase migrations do;
#  3. runs pg_prove over tests/sql/*.sql, logged in as postgres. A file that needs another
#     login role says so on its first lines with psql's \connect (the GoTrue tests log in
#     as supabase_admin to SET ROLE supabase_auth_admin, the privilege tests log in as
#     authenticator like PostgREST). Each file runs in one transaction it rolls back.
# Exits non-zero if anything fails. Extra arguments go to pg_prove (e.g. -v).
set -eu

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)

if [ -z "${PGHOST:-}" ] || [ -z "${PGPORT:-}" ]; then
    echo "run.sh: PGHOST/PGPORT not set; run: /usr/bin/python3 tests/pgharness.py run -- sh tests/sql/run.sh" >&2
    exit 2
fi

psql -X -q -v ON_ERROR_STOP=1 -U supabase_admin \
    -c 'CREATE EXTENSION IF NOT EXISTS pgtap SCHEMA public'
psql -X -q -v ON_ERROR_STOP=1 -U postgres -f "$root/sql/install.sql"

exec pg_prove --failures -U postgres "$@" "$here"/*.sql
