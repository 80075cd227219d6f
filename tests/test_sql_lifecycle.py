"""sql/install.sql and sql/uninstall.sql over their lifecycle, on throwaway clusters.

What pgTAP inside one rolled-back transaction cannot show: running the migration twice,
on a plain PostgreSQL, notifications (delivered only at commit), and uninstalling.

    /usr/bin/python3 -m pytest -q tests/test_sql_lifecycle.py
"""

import os
import select
import subprocess
import sys
import threading
import time
import uuid

import psycopg
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pgharness  # noqa: E402

INSTALL = pgharness.INSTALL
UNINSTALL = pgharness.UNINSTALL
CHANNEL = "sendry_outbox"
MARKER = "marker"


# --- helpers ------------------------------------------------------------------

def run_psql(cluster, user, *args):
    """psql as `user` the way an operator runs the migration (no -q): CompletedProcess."""
    return subprocess.run(["psql", "-X", "-v", "ON_ERROR_STOP=1", "-d", cluster.dsn_for(user)] + list(args),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def pg_dump_schema(cluster):
    """pg_dump --schema-only of the whole database, as the superuser, as bytes."""
    pg_dump = os.path.join(pgharness.pg_bindir(), "pg_dump")
    if not os.path.exists(pg_dump):
        pg_dump = "/usr/bin/pg_dump"
    argv = [pg_dump, "--schema-only", "-d", cluster.dsn_for(cluster.SUPERUSER)]
    # pg_dump >= 15.14 writes \restrict with a random key unless given one: fix it, so
    # that two dumps of the same schema are byte-identical.
    help_text = subprocess.run([pg_dump, "--help"], stdout=subprocess.PIPE, text=True).stdout
    if "--restrict-key" in help_text:
        argv.append("--restrict-key=sendrytest")
    r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert r.returncode == 0, r.stderr.decode()
    return r.stdout


def outbox_rows(cluster):
    return cluster.query("SELECT o::text FROM public.sendry_outbox o ORDER BY id", user=cluster.SUPERUSER)


def data_rows(cluster):
    """Every row of every sendry_* table, as text."""
    return cluster.query(
        "SELECT 'outbox ' || o::text FROM public.sendry_outbox o"
        " UNION ALL SELECT 'settings ' || s::text FROM public.sendry_settings s"
        " UNION ALL SELECT 'inbox ' || i::text FROM public.sendry_inbox i"
        " UNION ALL SELECT 'state ' || t::text FROM public.sendry_sync_state t"
        " UNION ALL SELECT 'contact ' || c::text FROM public.sendry_contact_state c"
        " UNION ALL SELECT 'error ' || e::text FROM public.sendry_enqueue_errors e ORDER BY 1",
        user=cluster.SUPERUSER)


MAPPING_KEPT = ("NOTICE:  sendry-sync: kept public.sendry_contacts as it is: the contact mapping is yours,"
                " install.sql never replaces it")


def notices_only(stderr, *expected):
    """stderr holds exactly these messages (each a substring of one line), in order."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == len(expected) and all(e in line for e, line in zip(expected, lines)), stderr


def connect(cluster, user):
    return psycopg.connect(cluster.dsn_for(user), autocommit=True)


def gotrue_signup(conn, email, meta='{}', phone=None, anonymous=False):
    """A sign-up as GoTrue makes it: as supabase_auth_admin (search_path=auth from the role),
    unqualified `users`, role '' then role 'authenticated', in one transaction."""
    uid = str(uuid.uuid4())
    with conn.transaction():
        conn.execute(
            "INSERT INTO users (instance_id, id, aud, role, email, phone, raw_app_meta_data,"
            " raw_user_meta_data, is_sso_user, is_anonymous, created_at, updated_at)"
            " VALUES ('00000000-0000-0000-0000-000000000000', %s, 'authenticated', '', %s, %s,"
            " %s, %s, false, %s, now(), now())",
            (uid, email, phone,
             '{}' if anonymous else '{"provider": "email", "providers": ["email"]}', meta, anonymous))
        conn.execute("UPDATE users SET role = 'authenticated', updated_at = now() WHERE id = %s", (uid,))
    return uid


class Listener:
    """A session LISTENing on sendry_outbox.

    psycopg 3.1 has no Connection.notifies(timeout=..., stop_after=...) (3.2 does), so this
    waits on the socket with select() against a deadline and reads libpq's queue. Absence
    is proven with a marker: the writer sends NOTIFY sendry_outbox, 'marker' from the same
    session after its change has committed; notifications are delivered in commit order,
    so everything the change caused arrives before the marker."""

    def __init__(self, cluster):
        self.conn = connect(cluster, "postgres")
        self.conn.execute(f"LISTEN {CHANNEL}")

    def close(self):
        self.conn.close()

    def until_marker(self, writer, timeout=15.0):
        """Send the marker from `writer`; return the payloads received before it."""
        writer.execute(f"NOTIFY {CHANNEL}, '{MARKER}'")
        pgconn = self.conn.pgconn
        got = []
        deadline = time.monotonic() + timeout
        while True:
            pgconn.consume_input()
            while True:
                n = pgconn.notifies()
                if n is None:
                    break
                assert n.relname.decode() == CHANNEL
                payload = n.extra.decode()
                if payload == MARKER:
                    return got
                got.append(payload)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"marker not received within {timeout} s (got {got!r})")
            select.select([pgconn.socket], [], [], remaining)


# --- fixtures -----------------------------------------------------------------

@pytest.fixture(scope="module")
def pg():
    with pgharness.Cluster(supabase=True) as cluster:
        r = run_psql(cluster, "postgres", "-f", INSTALL)
        assert r.returncode == 0, r.stderr
        yield cluster


@pytest.fixture
def listener(pg):
    lst = Listener(pg)
    yield lst
    lst.close()


@pytest.fixture
def gotrue(pg):
    conn = connect(pg, "supabase_auth_admin")
    assert conn.execute("SHOW search_path").fetchone()[0] == "auth"
    yield conn
    conn.close()


@pytest.fixture
def owner(pg):
    conn = connect(pg, "postgres")
    yield conn
    conn.close()


# --- install ------------------------------------------------------------------

def test_install_twice_is_a_noop(pg, gotrue, owner):
    gotrue_signup(gotrue, "twice@example.com", '{"first_name": "Twice"}')
    owner.execute("INSERT INTO sendry_outbox (email, status, attempts, last_error, last_http_status)"
                  " VALUES ('failed@example.com', 'failed', 3, 'HTTP 422: invalid address', 422),"
                  "        ('sent@example.com', 'sent', 1, NULL, 200)")
    assert owner.execute("SELECT sendry_inbox_receive('evt_twice', 'contact.updated',"
                         " '{\"data\": {\"email\": \"twice@example.com\", \"unsubscribed\": true}}')"
                         ).fetchone()[0] == "applied"
    owner.execute("INSERT INTO sendry_sync_state (key, value) VALUES ('unsubscribes_cursor', 'cur_1')")
    # The operator's settings survive a re-run of the migration.
    owner.execute("UPDATE sendry_settings SET sync_on = 'confirmed', on_delete = 'keep'")
    try:
        rows_before = data_rows(pg)
        assert len(rows_before) >= 6
        dump_before = pg_dump_schema(pg)

        r = run_psql(pg, "postgres", "-f", INSTALL)
        assert r.returncode == 0, r.stderr
        notices_only(r.stderr)   # nothing pending: nothing applied, nothing said

        assert pg_dump_schema(pg) == dump_before, "the second install changed the schema"
        assert data_rows(pg) == rows_before, "the second install touched rows (outbox, settings, inbox, state)"
        assert pg.query("SELECT sync_on, on_delete FROM sendry_settings") == [["confirmed", "keep"]]
    finally:
        owner.execute("UPDATE sendry_settings SET sync_on = 'signup', on_delete = 'delete_contact'")


def test_install_on_plain_postgresql():
    with pgharness.Cluster(supabase=False) as plain:
        assert plain.query("SELECT to_regclass('auth.users') IS NULL")[0] == ["t"]
        r = run_psql(plain, plain.SUPERUSER, "-f", INSTALL)
        assert r.returncode == 0, r.stderr
        assert "NOTICE" in r.stderr
        assert "no table auth.users" in r.stderr and "no trigger" in r.stderr, r.stderr
        assert plain.query("SELECT to_regclass('public.sendry_outbox') IS NOT NULL,"
                           " to_regclass('public.sendry_outbox_stats') IS NOT NULL") == [["t", "t"]]
        assert plain.query("SELECT proname FROM pg_proc WHERE proname LIKE 'sendry%' ORDER BY 1") == \
            [["sendry_claim_render"], ["sendry_enqueue_event"], ["sendry_event_id"], ["sendry_event_problem"],
             ["sendry_inbox_receive"], ["sendry_migrate_fingerprint"], ["sendry_migrate_lock_holders"], ["sendry_migrate_lockdown"],
             ["sendry_migrate_missing"], ["sendry_migrate_step"], ["sendry_migrate_trigger"],
             ["sendry_outbox_notify_insert"], ["sendry_outbox_notify_update"],
             ["sendry_rate_pause"], ["sendry_rate_take"], ["sendry_schema_version"],
             ["sendry_track_email"]], \
            "only the functions that do not need auth.users"
        assert plain.query("SELECT tgname FROM pg_trigger WHERE tgname LIKE 'sendry%' ORDER BY 1") == \
            [["sendry_outbox_notify_insert"], ["sendry_outbox_notify_update"]]
        assert plain.query("SELECT relname, relrowsecurity FROM pg_class WHERE relname LIKE 'sendry%'"
                           " AND relkind = 'r' ORDER BY 1") == \
            [["sendry_changed_users", "t"], ["sendry_contact_state", "t"], ["sendry_enqueue_errors", "t"],
             ["sendry_inbox", "t"], ["sendry_migrate_triggers", "t"], ["sendry_migrations", "t"], ["sendry_outbox", "t"], ["sendry_rate_budget", "t"], ["sendry_settings", "t"],
             ["sendry_sync_state", "t"]]
        assert plain.query("SELECT to_regclass('public.sendry_contacts') IS NULL") == [["t"]], \
            "no mapping without auth.users"
        assert plain.query("SELECT sync_on, on_delete FROM sendry_settings") == [["signup", "delete_contact"]]
        # The outbox works there: rows can be written and counted.
        plain.query("INSERT INTO sendry_outbox (email, payload) VALUES ('x@example.com', '{}')")
        assert plain.query("SELECT pending, due FROM sendry_outbox_stats") == [["1", "1"]]
        # The inbox keeps events there, and applies none.
        assert plain.query("SELECT sendry_inbox_receive('evt_plain', 'contact.updated',"
                           " '{\"data\": {\"email\": \"x@example.com\", \"unsubscribed\": true}}')") == \
            [["ignored: no auth.users here"]]
        assert plain.query("SELECT event_id, status, reason FROM sendry_inbox") == \
            [["evt_plain", "ignored", "no auth.users here"]]
        assert plain.query("SELECT sendry_inbox_receive('evt_plain', 'contact.updated', '{}')") == [["duplicate"]]
        # Again (only the NOTICE on stderr), then uninstall, twice.
        r = run_psql(plain, plain.SUPERUSER, "-f", INSTALL)
        assert r.returncode == 0, r.stderr
        assert [line for line in r.stderr.splitlines() if line.strip()] == \
            [line for line in r.stderr.splitlines() if "NOTICE" in line], r.stderr
        for _ in range(2):
            r = run_psql(plain, plain.SUPERUSER, "-f", UNINSTALL)
            assert r.returncode == 0, r.stderr
        assert plain.query("SELECT to_regclass('public.sendry_outbox') IS NULL") == [["t"]]
        assert plain.query(SENDRY_OBJECTS) == []


# --- sign-ups never fail ------------------------------------------------------------

def test_failed_enqueue_is_a_warning_not_an_error(pg):
    """The sign-up succeeds and the client sees the WARNING; rolled back afterwards."""
    conn = psycopg.connect(pg.dsn_for(pg.SUPERUSER))
    notices = []
    conn.add_notice_handler(lambda d: notices.append((d.severity_nonlocalized, d.message_primary)))
    try:
        conn.execute("ALTER TABLE public.sendry_outbox ADD CONSTRAINT sendry_test_reject CHECK (false) NOT VALID")
        conn.execute("SET ROLE supabase_auth_admin")
        conn.execute("SET search_path = auth")
        uid = str(uuid.uuid4())
        conn.execute("INSERT INTO users (id, aud, role, email, raw_app_meta_data, raw_user_meta_data,"
                     " created_at, updated_at) VALUES (%s, 'authenticated', '', 'warn@example.com',"
                     " '{}', '{}', now(), now())", (uid,))
        assert conn.execute("SELECT count(*) FROM users WHERE email = 'warn@example.com'").fetchone()[0] == 1
        conn.execute("RESET ROLE")
        # ... and it is recorded where an operator sees it.
        assert conn.execute("SELECT trigger_name, table_name, sqlstate, user_ids::text[] FROM public.sendry_enqueue_errors"
                            " WHERE message LIKE '%sendry_test_reject%'").fetchall() == \
            [("sendry_sync_users_insert", "auth.users", "23514", [uid])]
        assert conn.execute("SELECT enqueue_errors_last_hour FROM public.sendry_outbox_stats").fetchone()[0] >= 1
    finally:
        conn.rollback()
        conn.close()
    warnings = [m for sev, m in notices if sev == "WARNING"]
    assert len(warnings) == 1, notices
    assert warnings[0].startswith("sendry-sync: could not enqueue new users for Sendry:"), warnings[0]
    assert "sendry_test_reject" in warnings[0] and "23514" in warnings[0]


def test_failed_enqueue_not_even_recorded_is_still_a_warning(pg):
    """When recording the failure in sendry_enqueue_errors fails too, the WARNING still goes
    out (a second one says that), and the sign-up still succeeds."""
    conn = psycopg.connect(pg.dsn_for(pg.SUPERUSER))
    notices = []
    conn.add_notice_handler(lambda d: notices.append((d.severity_nonlocalized, d.message_primary)))
    try:
        conn.execute("ALTER TABLE public.sendry_outbox ADD CONSTRAINT sendry_test_reject CHECK (false) NOT VALID")
        conn.execute("ALTER TABLE public.sendry_enqueue_errors ADD CONSTRAINT sendry_test_reject_too CHECK (false) NOT VALID")
        conn.execute("SET ROLE supabase_auth_admin")
        conn.execute("SET search_path = auth")
        conn.execute("INSERT INTO users (id, aud, role, email, raw_app_meta_data, raw_user_meta_data,"
                     " created_at, updated_at) VALUES (%s, 'authenticated', '', 'warn.twice@example.com',"
                     " '{}', '{}', now(), now())", (str(uuid.uuid4()),))
        assert conn.execute("SELECT count(*) FROM users WHERE email = 'warn.twice@example.com'").fetchone()[0] == 1
    finally:
        conn.rollback()
        conn.close()
    warnings = [m for sev, m in notices if sev == "WARNING"]
    assert len(warnings) == 2, notices
    assert warnings[0].startswith("sendry-sync: could not enqueue new users for Sendry:"), warnings
    assert warnings[1].startswith("sendry-sync: could not record that in public.sendry_enqueue_errors either:"), warnings
    assert "sendry_test_reject_too" in warnings[1]


def test_failed_enqueue_on_update_and_delete_is_a_warning(pg):
    """An email change, a soft delete and a hard delete succeed, each with one WARNING."""
    conn = psycopg.connect(pg.dsn_for(pg.SUPERUSER))
    notices = []
    conn.add_notice_handler(lambda d: notices.append((d.severity_nonlocalized, d.message_primary)))
    ids = [str(uuid.uuid4()) for _ in range(2)]
    try:
        conn.execute("SET ROLE supabase_auth_admin")
        conn.execute("SET search_path = auth")
        for n, uid in enumerate(ids):
            conn.execute("INSERT INTO users (id, aud, role, email, raw_app_meta_data, raw_user_meta_data,"
                         " created_at, updated_at) VALUES (%s, 'authenticated', 'authenticated', %s,"
                         " '{}', '{}', now(), now())", (uid, f"warn{n}@example.com"))
        conn.execute("RESET ROLE")
        conn.execute("ALTER TABLE public.sendry_outbox ADD CONSTRAINT sendry_test_reject CHECK (false) NOT VALID")
        conn.execute("SET ROLE supabase_auth_admin")
        del notices[:]
        conn.execute("UPDATE users SET email = 'warn.moved@example.com' WHERE id = %s", (ids[0],))
        conn.execute("UPDATE users SET deleted_at = now(), email = md5(email) WHERE id = %s", (ids[0],))
        assert conn.execute("DELETE FROM users WHERE id = %s", (ids[1],)).rowcount == 1
        assert conn.execute("SELECT count(*) FROM users WHERE id = %s AND deleted_at IS NOT NULL",
                            (ids[0],)).fetchone()[0] == 1
    finally:
        conn.rollback()
        conn.close()
    warnings = [m for sev, m in notices if sev == "WARNING"]
    assert [w.split(":")[0] + ":" + w.split(":")[1] for w in warnings] == [
        "sendry-sync: could not enqueue updated users for Sendry",
        "sendry-sync: could not enqueue updated users for Sendry",
        "sendry-sync: could not enqueue deleted users for Sendry",
    ], notices
    assert all("sendry_test_reject" in w and "23514" in w for w in warnings), warnings


def test_users_without_email_raise_no_warning(pg):
    """Anonymous and phone-only sign-ups, soft and hard deletes are skipped, not failed-and-swallowed."""
    conn = connect(pg, "supabase_auth_admin")
    notices = []
    conn.add_notice_handler(lambda d: notices.append((d.severity_nonlocalized, d.message_primary)))
    try:
        anon = gotrue_signup(conn, None, anonymous=True)
        phone = gotrue_signup(conn, None, phone="1555" + str(uuid.uuid4().int)[:7])
        anon_soft, anon_gone = gotrue_signup(conn, None, anonymous=True), gotrue_signup(conn, None, anonymous=True)
        conn.execute("UPDATE users SET deleted_at = now() WHERE id = %s", (anon_soft,))
        conn.execute("DELETE FROM users WHERE id IN (%s, %s)", (anon_gone, phone))
    finally:
        conn.close()
    assert [n for n in notices if n[0] != "NOTICE"] == []
    assert pg.query(f"SELECT count(*) FROM sendry_outbox WHERE user_id IN"
                    f" ('{anon}', '{phone}', '{anon_soft}', '{anon_gone}')") == [["0"]]


# --- NOTIFY --------------------------------------------------------------------------

def test_notify_once_per_signup(pg, listener, gotrue):
    uid = gotrue_signup(gotrue, "notify.me@example.com", '{"full_name": "Notify Me"}')
    assert listener.until_marker(gotrue) == [""]
    assert pg.query(f"SELECT count(*) FROM sendry_outbox WHERE user_id = '{uid}'") == [["1"]]


def test_notify_once_per_delete(pg, listener, gotrue):
    uid = gotrue_signup(gotrue, "delete.notify@example.com")
    assert listener.until_marker(gotrue) == [""]
    gotrue.execute("DELETE FROM users WHERE id = %s", (uid,))
    assert listener.until_marker(gotrue) == [""]
    assert pg.query(f"SELECT op, email, payload FROM sendry_outbox WHERE user_id = '{uid}' ORDER BY id") == \
        [["upsert", "delete.notify@example.com", ""],
         ["delete", "delete.notify@example.com", '{"delete_mode": "delete_contact"}']]


def test_a_users_own_trigger_wakes_the_worker(pg, listener, gotrue, owner):
    """An INSERT into the outbox from inside a trigger notifies like one at the top: the
    application's own trigger calling sendry_track, and one filling the outbox directly
    (README, "Without Supabase"). Guards against a NOTIFY trigger skipped inside triggers
    (pg_trigger_depth), which only our own trigger functions could make up for."""
    uid = gotrue_signup(gotrue, "own.trigger@example.com")
    assert listener.until_marker(gotrue) == [""]
    owner.execute("""
        CREATE TABLE public.test_orders (id serial PRIMARY KEY, user_id uuid NOT NULL, email text);
        CREATE FUNCTION public.test_orders_track() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.email IS NULL THEN
                PERFORM public.sendry_track('order_placed', NEW.user_id, jsonb_build_object('order', NEW.id));
            ELSE
                INSERT INTO public.sendry_outbox (user_id, email, payload)
                VALUES (NEW.user_id, NEW.email, jsonb_build_object('email', NEW.email));
            END IF;
            RETURN NULL;
        END $$;
        CREATE TRIGGER test_orders_track AFTER INSERT ON public.test_orders
            FOR EACH ROW EXECUTE FUNCTION public.test_orders_track()""")
    try:
        owner.execute("INSERT INTO public.test_orders (user_id) VALUES (%s)", (uid,))
        assert listener.until_marker(owner) == [""], "sendry_track from a trigger must wake the worker"
        owner.execute("INSERT INTO public.test_orders (user_id, email) VALUES (%s, 'own.trigger@example.com')",
                      (uid,))
        assert listener.until_marker(owner) == [""], "an INSERT into the outbox from a trigger must wake the worker"
        assert pg.query(f"SELECT op, payload->>'name', status FROM sendry_outbox WHERE user_id = '{uid}'"
                        " ORDER BY id") == [["upsert", "", "pending"], ["event", "order_placed", "pending"],
                                            ["upsert", "", "pending"]]
    finally:
        owner.execute("DROP TABLE public.test_orders; DROP FUNCTION public.test_orders_track()")


# --- the compiled settings, across sessions -------------------------------------------

def outbox_ops(cluster, uid):
    return [r[0] for r in cluster.query(f"SELECT op FROM sendry_outbox WHERE user_id = '{uid}' ORDER BY id")]


def test_a_settings_change_reaches_the_next_signup_of_every_session(pg, gotrue, owner):
    """The triggers read the settings as constants compiled into their plans
    (functions/settings.sql). A change committed in another session is followed by the
    very next sign-up of a session whose plans are warm; a change not committed yet, or
    rolled back, is not."""
    other = connect(pg, "postgres")
    try:
        warm = gotrue_signup(gotrue, "warm.settings@example.com")
        assert outbox_ops(pg, warm) == ["upsert"]
        with other.transaction():
            other.execute("UPDATE sendry_settings SET events = '{user.signed_up}', updated_at = now()")
            during = gotrue_signup(gotrue, "during.settings@example.com")
        after = gotrue_signup(gotrue, "after.settings@example.com")
        assert outbox_ops(pg, during) == ["upsert"], "a change not committed yet was followed"
        assert outbox_ops(pg, after) == ["upsert", "event"], "a committed change was not followed"

        with other.transaction() as tx:
            other.execute("UPDATE sendry_settings SET sync_on = 'confirmed', events = '{}'")
            raise psycopg.Rollback(tx)
        rolled_back = gotrue_signup(gotrue, "rolled.back@example.com")
        assert outbox_ops(pg, rolled_back) == ["upsert", "event"], "a change rolled back was followed"

        other.execute("UPDATE sendry_settings SET sync_on = 'confirmed'")
        unconfirmed = gotrue_signup(gotrue, "unconfirmed.settings@example.com")
        assert outbox_ops(pg, unconfirmed) == [], "sync_on confirmed was not followed"
    finally:
        other.close()
        owner.execute("UPDATE sendry_settings SET sync_on = 'signup', events = '{}'")


# --- the inbox, across transactions ---------------------------------------------------

def test_concurrent_redelivery_is_stored_once(pg, owner):
    """Two deliveries of one event at once: the second waits for the first, then is a duplicate."""
    first = connect(pg, "postgres")
    second = connect(pg, "postgres")
    event = f"evt_race_{uuid.uuid4().hex[:8]}"
    payload = '{"data": {"email": "nobody.race@example.com", "unsubscribed": true}}'
    results = {}
    try:
        with first.transaction():
            results["first"] = first.execute("SELECT sendry_inbox_receive(%s, 'contact.updated', %s)",
                                             (event, payload)).fetchone()[0]
            thread = threading.Thread(target=lambda: results.__setitem__(
                "second", second.execute("SELECT sendry_inbox_receive(%s, 'contact.updated', %s)",
                                         (event, payload)).fetchone()[0]))
            thread.start()
            # The second call is blocked on the first one's uncommitted row.
            deadline = time.monotonic() + 15
            while not owner.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                                    " AND query LIKE 'SELECT sendry_inbox_receive%'").fetchone()[0]:
                assert time.monotonic() < deadline, "the second delivery never waited for the first"
                time.sleep(0.02)
            assert "second" not in results
        thread.join(15)
        assert not thread.is_alive()
    finally:
        first.close()
        second.close()
    assert results == {"first": "ignored: no user with this email", "second": "duplicate"}
    assert pg.query(f"SELECT count(*) FROM sendry_inbox WHERE event_id = '{event}'") == [["1"]]


def test_notify_once_on_requeue(pg, listener, owner):
    # An INSERT notifies once per statement, whatever its rows (no transition table is
    # kept to look at them): here a harmless wake-up that claims nothing.
    owner.execute("INSERT INTO sendry_outbox (email, status, attempts, last_error)"
                  " SELECT 'requeue' || g || '@example.com', 'failed', 5, 'HTTP 500'"
                  " FROM generate_series(1, 3) g")
    assert listener.until_marker(owner) == [""]
    cur = owner.execute("UPDATE public.sendry_outbox SET status='pending', next_attempt_at=now()"
                        " WHERE status='failed'")
    assert cur.rowcount >= 3
    assert listener.until_marker(owner) == [""]


WORKER_TRANSITIONS = {
    "sent": "UPDATE sendry_outbox SET status = 'sent', sent_at = now(), attempts = attempts + 1,"
            " last_http_status = 200 WHERE email LIKE %s",
    "processing": "UPDATE sendry_outbox SET status = 'processing', locked_by = 'worker-1',"
                  " locked_until = now() + interval '5 minutes',"
                  " next_attempt_at = now() + interval '5 minutes' WHERE email LIKE %s",
    "pending_in_future": "UPDATE sendry_outbox SET status = 'pending', attempts = attempts + 1,"
                         " next_attempt_at = now() + interval '30 seconds', last_http_status = 503"
                         " WHERE email LIKE %s",
    "failed": "UPDATE sendry_outbox SET status = 'failed', last_http_status = 422,"
              " last_error = 'invalid' WHERE email LIKE %s",
    "already_due_touched": "UPDATE sendry_outbox SET last_error = 'touched' WHERE email LIKE %s",
}


@pytest.mark.parametrize("transition", sorted(WORKER_TRANSITIONS))
def test_no_notify_on_worker_transitions(pg, listener, owner, transition):
    tag = f"{transition}-{uuid.uuid4().hex[:8]}"
    owner.execute("INSERT INTO sendry_outbox (email) SELECT %s || '-' || g || '@example.com'"
                  " FROM generate_series(1, 5) g", (tag,))
    assert listener.until_marker(owner) == [""], "the setup INSERT of due rows notifies once"
    cur = owner.execute(WORKER_TRANSITIONS[transition], (tag + "-%",))
    assert cur.rowcount == 5
    assert listener.until_marker(owner) == [], f"{transition} must not notify"


def test_backfill_of_100k_rows_notifies_once(pg, listener, owner):
    cur = owner.execute(
        "INSERT INTO sendry_outbox (user_id, email, payload)"
        " SELECT gen_random_uuid(), 'backfill' || g || '@example.com',"
        "        jsonb_build_object('email', 'backfill' || g || '@example.com', 'first_name', 'User' || g)"
        " FROM generate_series(1, 100000) g")
    assert cur.rowcount == 100000
    assert listener.until_marker(owner) == [""]
    owner.execute("DELETE FROM sendry_outbox WHERE email LIKE 'backfill%'")
    assert listener.until_marker(owner) == []


def test_design_backfill_statement_as_postgres(pg, listener, gotrue, owner):
    gotrue_signup(gotrue, "backfill.ada@example.com", '{"first_name": "Ada", "last_name": "Lovelace"}')
    gotrue_signup(gotrue, None, anonymous=True)
    listener.until_marker(gotrue)
    expected = int(pg.query("SELECT count(*) FROM auth.users WHERE email IS NOT NULL",
                            user=pg.SUPERUSER)[0][0])
    before = int(pg.query("SELECT coalesce(max(id), 0) FROM sendry_outbox")[0][0])
    r = run_psql(pg, "postgres", "-c",
                 "INSERT INTO sendry_outbox (user_id, email, payload) SELECT id, email, "
                 "sendry_contact_payload(u) FROM auth.users u WHERE email IS NOT NULL")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"INSERT 0 {expected}"
    assert listener.until_marker(owner) == [""]
    assert pg.query(
        "SELECT count(*) FROM sendry_outbox o JOIN auth.users u ON u.id = o.user_id"
        f" WHERE o.id > {before} AND o.payload = sendry_contact_payload(u)"
        " AND o.status = 'pending' AND o.op = 'upsert'", user=pg.SUPERUSER) == [[str(expected)]]
    assert pg.query(f"SELECT payload->>'first_name', payload->>'last_name' FROM sendry_outbox"
                    f" WHERE id > {before} AND email = 'backfill.ada@example.com'") == [["Ada", "Lovelace"]]


def test_short_backfill_statement_as_postgres(pg, listener, gotrue, owner):
    """INSERT INTO sendry_outbox (user_id) SELECT id FROM auth.users: every user captured,
    class bulk, in one statement that notifies once; the claim renders them."""
    uid = gotrue_signup(gotrue, "short.backfill@example.com", '{"first_name": "Short"}')
    listener.until_marker(gotrue)
    expected = int(pg.query("SELECT count(*) FROM auth.users", user=pg.SUPERUSER)[0][0])
    before = int(pg.query("SELECT coalesce(max(id), 0) FROM sendry_outbox")[0][0])
    r = run_psql(pg, "postgres", "-c", "INSERT INTO sendry_outbox (user_id) SELECT id FROM auth.users")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"INSERT 0 {expected}"
    assert listener.until_marker(owner) == [""]
    assert pg.query(f"SELECT count(*) FROM sendry_outbox WHERE id > {before} AND op = 'upsert' AND class = 'bulk'"
                    " AND status = 'pending' AND email IS NULL AND payload IS NULL") == [[str(expected)]]
    assert pg.query(f"SELECT verdict, payload->>'first_name' FROM sendry_claim_render(ARRAY['{uid}'::uuid])") == \
        [["send", "Short"]]


# --- the contact mapping and watched tables, across transactions ---------------------

PROFILES_MAPPING = """
CREATE TABLE IF NOT EXISTS public.profiles (id uuid PRIMARY KEY, plan text, locale text);
CREATE OR REPLACE VIEW public.sendry_contacts WITH (security_invoker = true) AS
SELECT u.id AS user_id, lower(btrim(u.email)) AS email,
       NULLIF(btrim(u.raw_user_meta_data ->> 'first_name'), '') AS first_name,
       NULLIF(btrim(u.raw_user_meta_data ->> 'last_name'), '') AS last_name,
       jsonb_build_object('supabase_user_id', u.id::text, 'plan', COALESCE(p.plan, 'none'),
                          'locale', p.locale) AS metadata,
       CASE WHEN p.plan = 'trial' THEN ARRAY['aud_trial'] ELSE ARRAY['aud_customers'] END AS audiences
FROM auth.users u LEFT JOIN public.profiles p ON p.id = u.id;
"""


def mapping_definition(cluster):
    return cluster.query("SELECT replace(pg_get_viewdef('public.sendry_contacts'::regclass), E'\\n', ' ')")[0][0]


def test_a_replaced_mapping_survives_reinstall(pg, gotrue, owner):
    default = mapping_definition(pg)
    r = run_psql(pg, "postgres", "-c", PROFILES_MAPPING)
    assert r.returncode == 0, r.stderr
    try:
        mine = mapping_definition(pg)
        assert mine != default and "profiles" in mine
        r = run_psql(pg, "postgres", "-f", INSTALL)
        assert r.returncode == 0, r.stderr
        notices_only(r.stderr)
        assert mapping_definition(pg) == mine, "re-running install.sql replaced the project's mapping"
        # An upgrade that changes the contacts' functions keeps it too, and says so.
        owner.execute("DELETE FROM sendry_migrations WHERE name = 'functions/contacts.sql'")
        r = run_psql(pg, "postgres", "-f", INSTALL)
        assert r.returncode == 0, r.stderr
        notices_only(r.stderr, MAPPING_KEPT, "sendry-sync: functions/contacts.sql applied")
        assert mapping_definition(pg) == mine, "an upgrade replaced the project's mapping"
        # ... and the claim renders through it.
        uid = gotrue_signup(gotrue, "mapped@example.com", '{"first_name": "Map"}')
        assert pg.query(f"SELECT payload->'metadata'->>'plan', payload->'audiences'"
                        f" FROM sendry_claim_render(ARRAY['{uid}'::uuid])") == [["none", '["aud_customers"]']]
        # The replaced view keeps its privileges: nothing for anon or authenticated.
        assert pg.query("SELECT count(*) FROM aclexplode((SELECT relacl FROM pg_class"
                        " WHERE oid = 'public.sendry_contacts'::regclass))"
                        " WHERE grantee IN ('anon'::regrole, 'authenticated'::regrole)") == [["0"]]
    finally:
        owner.execute("DROP VIEW public.sendry_contacts")
        r = run_psql(pg, "postgres", "-f", INSTALL)
        assert r.returncode == 0, r.stderr
        notices_only(r.stderr, "sendry-sync: functions/contacts.sql applied (")
        assert "again: public.sendry_contacts was missing" in r.stderr
        assert mapping_definition(pg) == default, "a dropped mapping is created again, as shipped"


def test_reinstall_warns_about_a_mapping_that_lost_security_invoker(pg, owner):
    """CREATE OR REPLACE VIEW without WITH (security_invoker = true) drops the option."""
    definition = pg.query("SELECT pg_get_viewdef('public.sendry_contacts'::regclass)")
    r = run_psql(pg, "postgres", "-c", "CREATE OR REPLACE VIEW public.sendry_contacts AS "
                 + "\n".join(row[0] for row in definition))
    assert r.returncode == 0, r.stderr
    try:
        # The warning comes with the step that looks at the mapping (an upgrade of it).
        owner.execute("DELETE FROM sendry_migrations WHERE name = 'functions/contacts.sql'")
        r = run_psql(pg, "postgres", "-f", INSTALL)
        assert r.returncode == 0, r.stderr
        notices_only(r.stderr, MAPPING_KEPT, "WARNING:  sendry-sync: public.sendry_contacts is not security_invoker",
                     "sendry-sync: functions/contacts.sql applied")
    finally:
        owner.execute("ALTER VIEW public.sendry_contacts SET (security_invoker = true)")
    r = run_psql(pg, "postgres", "-f", INSTALL)
    notices_only(r.stderr)


def test_notify_once_per_watched_change(pg, listener, gotrue, owner):
    r = run_psql(pg, "postgres", "-c", PROFILES_MAPPING, "-c", "SELECT sendry_watch('public.profiles', 'id')")
    assert r.returncode == 0, r.stderr
    try:
        uid = gotrue_signup(gotrue, "watched.notify@example.com")
        assert listener.until_marker(gotrue) == [""]
        owner.execute("INSERT INTO public.profiles (id, plan) VALUES (%s, 'trial')", (uid,))
        assert listener.until_marker(owner) == [""], "a profile change notifies once"
        owner.execute("UPDATE public.profiles SET locale = locale WHERE id = %s", (uid,))
        assert listener.until_marker(owner) == [""], "each statement on a watched table notifies once (captured)"
        assert pg.query(f"SELECT count(*) FROM sendry_outbox WHERE user_id = '{uid}' AND payload IS NULL") == [["3"]]
        # the claim renders the three as one contact, with the profile
        assert pg.query(f"SELECT verdict, payload->'audiences', payload->'leave_audiences'"
                        f" FROM sendry_claim_render(ARRAY['{uid}'::uuid])") == [["send", '["aud_trial"]', ""]]
    finally:
        owner.execute("SELECT sendry_unwatch('public.profiles')")
        owner.execute("DROP VIEW public.sendry_contacts")
        owner.execute("DROP TABLE public.profiles")
        assert run_psql(pg, "postgres", "-f", INSTALL).returncode == 0


BASELINE = "bf579a9"


def test_upgrade_from_the_previous_release():
    """install.sql of the previous release, a sign-up, then this one: the sign-up's contact is
    kept, and a third run changes nothing."""
    old = subprocess.run(["git", "-C", pgharness.ROOT, "show", f"{BASELINE}:sql/install.sql"],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    if old.returncode:
        pytest.skip(f"no git history with {BASELINE} here")
    with pgharness.Cluster(supabase=True) as cluster:
        r = subprocess.run(["psql", "-X", "-v", "ON_ERROR_STOP=1", "-d", cluster.dsn_for("postgres")],
                           input=old.stdout, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert r.returncode == 0, r.stderr
        conn = connect(cluster, "supabase_auth_admin")
        try:
            uid = gotrue_signup(conn, "before.upgrade@example.com", '{"first_name": "Old"}')
            r = run_psql(cluster, "postgres", "-f", INSTALL)
            assert r.returncode == 0, r.stderr
            assert "kept public.sendry_contacts" not in r.stderr, "the upgrade creates the mapping (there was none)"
            assert "WARNING" not in r.stderr, r.stderr
            dump = pg_dump_schema(cluster)
            r = run_psql(cluster, "postgres", "-f", INSTALL)
            notices_only(r.stderr)
            assert pg_dump_schema(cluster) == dump
            # A user enqueued before the upgrade: a name change is captured, an email change
            # carries the previous address; the claim renders the new name.
            conn.execute("UPDATE users SET raw_user_meta_data = '{\"first_name\": \"New\"}' WHERE id = %s", (uid,))
            conn.execute("UPDATE users SET email = 'after.upgrade@example.com' WHERE id = %s", (uid,))
            conn.execute("UPDATE users SET last_sign_in_at = now() WHERE id = %s", (uid,))
        finally:
            conn.close()
        assert cluster.query(f"SELECT email, old_email, payload->>'first_name' FROM sendry_outbox"
                             f" WHERE user_id = '{uid}' ORDER BY id") == \
            [["before.upgrade@example.com", "", "Old"], ["before.upgrade@example.com", "", ""],
             ["after.upgrade@example.com", "before.upgrade@example.com", ""]]
        assert cluster.query(f"SELECT verdict, email, payload->>'first_name'"
                             f" FROM sendry_claim_render(ARRAY['{uid}'::uuid])") == \
            [["send", "after.upgrade@example.com", "New"]]


# --- uninstall (last; reinstalls so the order of tests does not matter) -------------

SENDRY_OBJECTS = ("SELECT 'rel ' || relname FROM pg_class WHERE relname LIKE 'sendry%'"
                  " UNION ALL SELECT 'fn ' || proname FROM pg_proc WHERE proname LIKE 'sendry%'"
                  " UNION ALL SELECT 'trigger ' || tgname FROM pg_trigger WHERE tgname LIKE 'sendry%'"
                  " UNION ALL SELECT 'type ' || typname FROM pg_type WHERE typname LIKE 'sendry%'"
                  " ORDER BY 1")


def test_uninstall(pg):
    r = run_psql(pg, "postgres", "-c", "CREATE TABLE public.profiles (id uuid PRIMARY KEY, plan text)",
                 "-c", "SELECT sendry_watch('public.profiles', 'id')")
    assert r.returncode == 0, r.stderr
    installed = pg.query(SENDRY_OBJECTS, user=pg.SUPERUSER)
    assert ["trigger sendry_watch_update"] in installed
    for obj in ("trigger sendry_sync_users_insert", "trigger sendry_sync_users_update",
                "trigger sendry_sync_users_delete", "rel sendry_outbox", "rel sendry_settings",
                "rel sendry_inbox", "rel sendry_sync_state", "fn sendry_auth_users_deleted",
                "fn sendry_inbox_receive", "fn sendry_inbox_apply"):
        assert [obj] in installed, obj
    dump_before = pg_dump_schema(pg)
    rows_before = data_rows(pg)

    # As postgres without supautils: refused, clearly, and nothing changes.
    r = run_psql(pg, "postgres", "-f", UNINSTALL)
    assert r.returncode != 0
    assert "sendry-sync: role postgres may not drop triggers on auth.users" in r.stderr, r.stderr
    assert pg_dump_schema(pg) == dump_before
    assert data_rows(pg) == rows_before

    # As supabase_admin (standing in for supautils' permission): everything goes, twice.
    for attempt in (1, 2):
        r = run_psql(pg, pg.SUPERUSER, "-f", UNINSTALL)
        assert r.returncode == 0, f"uninstall #{attempt}: {r.stderr}"
        assert pg.query(SENDRY_OBJECTS, user=pg.SUPERUSER) == []
    assert pg.query("SELECT count(*) FROM pg_trigger WHERE tgrelid = 'auth.users'::regclass"
                    " AND NOT tgisinternal", user=pg.SUPERUSER) == [["0"]]

    # Sign-ups keep working without it, and it installs again as postgres.
    gotrue = connect(pg, "supabase_auth_admin")
    try:
        gotrue_signup(gotrue, "after.uninstall@example.com")
    finally:
        gotrue.close()
    assert pg.query("SELECT count(*) FROM pg_trigger WHERE tgrelid = 'public.profiles'::regclass"
                    " AND NOT tgisinternal", user=pg.SUPERUSER) == [["0"]], "the watch triggers are gone"
    r = run_psql(pg, "postgres", "-f", INSTALL)
    assert r.returncode == 0, r.stderr
    assert pg.query(SENDRY_OBJECTS, user=pg.SUPERUSER) == \
        [o for o in installed if not o[0].startswith("trigger sendry_watch_")]
