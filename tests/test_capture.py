"""End-to-end: capture in the trigger, render at the claim (issue 17, the capture contract).

The triggers on auth.users write one narrow CAPTURED row per changed synced user (op
'upsert', payload NULL, no sendry_contact_state row); the worker renders the contact at
the claim (public.sendry_claim_render), completes an unchanged contact `sent` without a
request, fails a contact the mapping cannot render ("mapping: ..."), sends the others and
writes sendry_contact_state only when Sendry accepted the contact. Real PostgreSQL, the real
binary, the fake Sendry; changes to auth.users as GoTrue makes them (role
supabase_auth_admin, search_path auth, unqualified `users`).

    make && /usr/bin/python3 -m pytest -q -p no:cacheprovider tests/test_capture.py
    SENDRY_SYNC_BIN=$PWD/sendry-sync-asan /usr/bin/python3 -m pytest -q -p no:cacheprovider tests/test_capture.py

Function calls are counted with track_functions = 'all' (this module's cluster): in the
transaction that made them (pg_stat_get_xact_function_calls), or, for the worker's, in
pg_stat_user_functions once its session ended. Waiting is polling against a deadline.
"""

import json
import uuid

import pytest

import pgharness
from conftest import INSTANCE_ID, T, start_daemon, wait_until

SU = pgharness.Cluster.SUPERUSER
WRITES = ("POST", "PUT", "PATCH", "DELETE")

# The default mapping's columns, first_name past Sendry's 200 characters.
LONG_NAME_MAPPING = """
CREATE OR REPLACE VIEW public.sendry_contacts WITH (security_invoker = true) AS
SELECT u.id AS user_id, lower(btrim(u.email)) AS email,
       CASE WHEN u.raw_user_meta_data ->> 'first_name' = 'Long' THEN repeat('x', 300)
            ELSE u.raw_user_meta_data ->> 'first_name' END AS first_name,
       NULL::text AS last_name,
       jsonb_build_object('supabase_user_id', u.id::text, 'signup_source', 'supabase') AS metadata,
       NULL::text[] AS audiences
FROM auth.users u
"""


# --- fixtures and helpers ------------------------------------------------------------

@pytest.fixture(scope="module", autouse=True)
def track_functions(cluster):
    cluster.query("ALTER SYSTEM SET track_functions = 'all'", user=SU)
    cluster.query("SELECT pg_reload_conf()", user=SU)
    yield
    cluster.query("ALTER SYSTEM RESET track_functions", user=SU)
    cluster.query("SELECT pg_reload_conf()", user=SU)


@pytest.fixture
def cdb(db, cluster):
    """The conftest db with the default settings (sync_on 'signup', no events), put back
    afterwards, with the default mapping."""
    db.query("UPDATE public.sendry_settings SET sync_on = 'signup', on_delete = 'delete_contact',"
             " events = '{}', updated_at = now()")
    yield db
    db.query("UPDATE public.sendry_settings SET sync_on = 'signup', events = '{}', updated_at = now()")


def as_gotrue(db, sql, params=None):
    return db.query(sql, params, user="supabase_auth_admin")


def gotrue_signup(db, email, meta=None):
    """GoTrue's sign-up: INSERT with role '', then role 'authenticated', one transaction."""
    uid = str(uuid.uuid4())
    with db.connect("supabase_auth_admin") as conn, conn.transaction():
        conn.execute(
            "INSERT INTO users (instance_id, id, aud, role, email, raw_app_meta_data,"
            " raw_user_meta_data, is_sso_user, is_anonymous, created_at, updated_at)"
            " VALUES (%s, %s, 'authenticated', '', %s, '{\"provider\": \"email\", \"providers\": [\"email\"]}',"
            " %s, false, false, now(), now())",
            (INSTANCE_ID, uid, email, json.dumps(meta or {})))
        conn.execute("UPDATE users SET role = 'authenticated', updated_at = now() WHERE id = %s", (uid,))
    return uid


def set_meta(db, uid, meta):
    """GoTrue's updateUser with data: raw_user_meta_data replaced."""
    as_gotrue(db, "UPDATE users SET raw_user_meta_data = %s, updated_at = now() WHERE id = %s",
              (json.dumps(meta), uid))


def change_email(db, uid, new_email):
    """GoTrue's email change: recording the pending change, then the address replaced."""
    as_gotrue(db, "UPDATE users SET email_change = %s, email_change_token_new = 'token-new',"
                  " email_change_sent_at = now(), updated_at = now() WHERE id = %s", (new_email, uid))
    as_gotrue(db, "UPDATE users SET email = %s, email_change = '', email_change_token_new = '',"
                  " email_change_confirm_status = 0, updated_at = now() WHERE id = %s", (new_email, uid))


SIGN_IN = "UPDATE users SET last_sign_in_at = now(), updated_at = now() WHERE id = %s"


def outbox(db, after=0):
    return db.query("SELECT id, op, class, user_id::text, email, old_email, payload, status, attempts,"
                    " last_http_status, last_error FROM public.sendry_outbox WHERE id > %s ORDER BY id",
                    (after,))


def last_id(db):
    return db.scalar("SELECT COALESCE(max(id), 0) FROM public.sendry_outbox")


def state(db, uid):
    rows = db.query("SELECT email, audiences, contact_hash FROM public.sendry_contact_state"
                    " WHERE user_id = %s", (uid,))
    return rows[0] if rows else None


def rendered_hash(db, uid):
    """What the mapping renders for the user now (the hash the state keeps once accepted)."""
    return db.scalar("SELECT hash FROM public.sendry_render_contacts(ARRAY[%s::uuid])", (uid,))


def writes(fake, since=0):
    """The write requests the fake received, from index `since` on."""
    return [r for r in list(fake.requests)[since:] if r["method"] in WRITES]


def imported(reqs):
    """The contacts of the import requests among reqs, in order."""
    return [c for r in reqs if r["path"].rstrip("/") == "/v1/contacts/import"
            for c in (r["json"] or {}).get("contacts", [])]


def run_once(workers, expect=0):
    w = workers("--once")
    assert w.wait(T) == expect, w.log()
    return w


def captured(row, uid, email, old_email=None, cls="live"):
    """A captured row as the contract has it."""
    return (row["op"], row["class"], row["user_id"], row["email"], row["old_email"], row["payload"],
            row["status"]) == ("upsert", cls, uid, email, old_email, None, "pending")


def function_calls(db, name):
    """Calls of public.<name> counted so far by the statistics (0 before the first)."""
    return db.scalar("SELECT COALESCE(sum(calls), 0)::int FROM pg_stat_user_functions"
                     " WHERE schemaname = 'public' AND funcname = %s", (name,), user=SU)


XACT_CALLS = ("SELECT COALESCE(sum(pg_stat_get_xact_function_calls(p.oid)), 0)::int"
              " FROM pg_catalog.pg_proc p WHERE p.proname LIKE 'sendry%'")


def calls_in_own_transaction(db, sql, params):
    """Run one GoTrue statement; return how many sendry_* functions it called (the same
    transaction's counters: nothing to wait for)."""
    with db.connect("supabase_auth_admin") as conn, conn.transaction():
        conn.execute(sql, params)
        return conn.execute(XACT_CALLS).fetchone()["coalesce"]


# --- 1. a sign-up: one captured row, then the contact, then the state ----------------------

def test_a_signup_is_one_captured_row_then_one_contact_then_the_state(cdb, fake, workers):
    db = cdb
    uid = gotrue_signup(db, "cap@example.com", {"first_name": "Cap", "last_name": "Tured"})
    rows = outbox(db)
    assert len(rows) == 1 and captured(rows[0], uid, "cap@example.com"), rows
    assert state(db, uid) is None, "the trigger wrote sendry_contact_state"

    run_once(workers)
    sent = imported(writes(fake))
    assert [(c["email"], c["first_name"], c["last_name"]) for c in sent] == \
        [("cap@example.com", "Cap", "Tured")], writes(fake)
    assert len(writes(fake)) == 1, writes(fake)
    row = outbox(db)[0]
    assert (row["status"], row["last_http_status"]) == ("sent", 200), row
    st = state(db, uid)
    assert st is not None, "Sendry accepted the contact: the state holds it"
    assert (st["email"], st["contact_hash"]) == ("cap@example.com", rendered_hash(db, uid)), st
    verdict = db.query("SELECT verdict, known, state_email FROM public.sendry_claim_render(ARRAY[%s::uuid])",
                       (uid,), user=SU)
    assert verdict == [{"verdict": "same", "known": True, "state_email": "cap@example.com"}], verdict


# --- 2. the state is written when Sendry accepts, not at enqueue -----------------------------

def test_the_state_waits_for_sendry_to_accept(cdb, fake, workers):
    db = cdb
    uid = gotrue_signup(db, "pat@example.com", {"first_name": "Pat"})
    w = start_daemon(workers, "--reconcile-interval", "0")
    wait_until(lambda: db.all_sent(1), T, "the sign-up delivered")
    before = state(db, uid)
    assert before is not None

    # Sendry fails every write naming these two addresses: a name change of a known
    # contact and a new sign-up are retried, and the state moves for neither.
    fake.fail_emails(r"(pat|newbie)@example\.com", 500)
    mark = len(fake.requests)
    set_meta(db, uid, {"first_name": "Patricia"})
    new_uid = gotrue_signup(db, "newbie@example.com", {"first_name": "New"})
    wait_until(lambda: len([r for r in writes(fake, mark) if r["status"] == 500]) >= 3, T,
               "three refused attempts")
    assert state(db, uid) == before, "the state moved before Sendry accepted the change"
    assert state(db, new_uid) is None, "a state row for a contact Sendry never accepted"
    assert "sent" not in {r["status"] for r in outbox(db)[1:]}, outbox(db)

    fake.fail_emails(None)
    wait_until(lambda: db.all_sent(3), T, "both retried and sent once Sendry accepts")
    assert fake.contacts["pat@example.com"]["first_name"] == "Patricia"
    after = state(db, uid)
    assert after["contact_hash"] == rendered_hash(db, uid) != before["contact_hash"], (before, after)
    assert state(db, new_uid)["contact_hash"] == rendered_hash(db, new_uid)
    w.terminate()
    assert w.wait(T) == 0, w.log()


# --- 3. an UPDATE that leaves the contact as it was: sent without a request --------------------

def test_an_update_the_contact_does_not_show_is_completed_without_a_request(cdb, fake, workers):
    db = cdb
    uid = gotrue_signup(db, "same@example.com", {"first_name": "Sam"})
    run_once(workers)
    assert state(db, uid) is not None
    mark, requests_before = last_id(db), len(fake.requests)

    # A metadata key the default mapping ignores: the trigger cannot know, it captures.
    set_meta(db, uid, {"first_name": "Sam", "theme": "dark"})
    rows = outbox(db, mark)
    assert len(rows) == 1 and captured(rows[0], uid, "same@example.com"), rows
    # A confirmation under sync_on 'signup' changes nothing a contact shows either.
    as_gotrue(db, "UPDATE users SET email_confirmed_at = now(), confirmation_token = '',"
                  " updated_at = now() WHERE id = %s", (uid,))
    st = state(db, uid)

    run_once(workers)
    assert writes(fake, requests_before) == [], "a request for a contact that did not change"
    rows = outbox(db, mark)
    assert rows and all((r["status"], r["last_http_status"], r["last_error"]) == ("sent", None, None)
                        for r in rows), rows
    assert state(db, uid) == st


# --- 4. several pending changes of one user: one render, one request, the newest ------------

def test_three_pending_changes_become_one_render_and_one_request(cdb, fake, workers):
    db = cdb
    uid = gotrue_signup(db, "many@example.com", {"first_name": "Zero"})
    run_once(workers)
    renders = wait_until(lambda: function_calls(db, "sendry_claim_render"), T, "the first run's render counted")
    mark, requests_before = last_id(db), len(fake.requests)

    for name in ("One", "Two", "Three"):          # three transactions, no worker running
        set_meta(db, uid, {"first_name": name})
    rows = outbox(db, mark)
    assert len(rows) == 3 and all(captured(r, uid, "many@example.com") for r in rows), rows

    run_once(workers)
    reqs = writes(fake, requests_before)
    assert [(c["email"], c["first_name"]) for c in imported(reqs)] == [("many@example.com", "Three")], reqs
    assert len(reqs) == 1, reqs
    assert {r["status"] for r in outbox(db, mark)} == {"sent"}
    # The worker's session has ended: its counters reach the statistics all at once.
    now = wait_until(lambda: function_calls(db, "sendry_claim_render") > renders and
                     function_calls(db, "sendry_claim_render"), T, "the second run's render counted")
    assert now - renders == 1, f"sendry_claim_render called {now - renders} times for one claim"
    assert state(db, uid)["contact_hash"] == rendered_hash(db, uid)


# --- 5. a contact the mapping cannot render: failed, unsent, its event too --------------------

@pytest.fixture
def long_names(cdb, cluster):
    cdb.query(LONG_NAME_MAPPING)
    yield cdb
    cdb.query("DROP VIEW public.sendry_contacts")
    cluster.install()          # the default mapping again


def test_a_mapping_problem_fails_the_row_and_its_event_without_a_request(long_names, fake, workers):
    db = long_names
    db.query("UPDATE public.sendry_settings SET events = '{user.signed_up}', updated_at = now()")
    uid = gotrue_signup(db, "long@example.com", {"first_name": "Long"})
    ok = gotrue_signup(db, "short@example.com", {"first_name": "Short"})
    rows = outbox(db)
    # The trigger does not render: the problem is found at the claim.
    assert [(r["op"], r["user_id"], r["status"]) for r in rows] == \
        [("upsert", uid, "pending"), ("event", uid, "pending"), ("upsert", ok, "pending"), ("event", ok, "pending")], rows
    assert rows[0]["payload"] is None

    run_once(workers, expect=1)      # a row failed
    rows = {(r["op"], r["user_id"]): r for r in outbox(db)}
    contact, event = rows[("upsert", uid)], rows[("event", uid)]
    assert contact["status"] == "failed", contact
    assert contact["last_error"].startswith("mapping: first_name is longer than 200 characters (300)"), contact
    assert contact["last_http_status"] is None
    assert event["status"] == "failed", event
    assert event["last_error"].startswith("not sent:") and "mapping: first_name" in event["last_error"], event
    assert state(db, uid) is None
    assert not [r for r in writes(fake) if "long@example.com" in json.dumps(r["json"] or {})
                or "long@example.com" in json.dumps(r["query"])], "a request for the contact that failed"
    # The other user went, contact then event.
    assert (rows[("upsert", ok)]["status"], rows[("event", ok)]["status"]) == ("sent", "sent")
    assert [e["contact_email"] for e in fake.events_json()] == ["short@example.com"]


# --- 6. the short backfill, and today's form ----------------------------------------------------

def test_the_short_backfill_syncs_every_user_once(cdb, fake, workers):
    db = cdb
    emails = db.signup_many(5, prefix="back")
    anon = db.signup(None, anonymous=True)            # not synced: no contact
    # As if they had been there before sendry-sync: nothing queued, nothing known.
    db.query("TRUNCATE public.sendry_outbox RESTART IDENTITY")
    db.query("TRUNCATE public.sendry_contact_state")

    db.query("INSERT INTO sendry_outbox (user_id) SELECT id FROM auth.users")
    rows = outbox(db)
    assert len(rows) == 6 and all(captured(r, r["user_id"], None, cls="bulk") for r in rows), rows

    run_once(workers)
    sent = imported(writes(fake))
    assert sorted(c["email"] for c in sent) == emails, "each user exactly once"
    assert {c["email"]: c["first_name"] for c in sent} == {e: f"First{i}" for i, e in enumerate(emails, 1)}
    rows = {r["user_id"]: r for r in outbox(db)}
    assert {r["status"] for r in rows.values()} == {"sent"}, rows
    assert rows[anon]["last_http_status"] is None, "the anonymous user is gone: no request"
    assert db.scalar("SELECT count(*)::int FROM public.sendry_contact_state") == 5
    assert state(db, anon) is None

    # Today's form: the payload as given is what goes (no render at the claim).
    mark, requests_before = last_id(db), len(fake.requests)
    db.query("INSERT INTO sendry_outbox (user_id, email, payload)"
             " SELECT id, email, sendry_contact_payload(u) || '{\"first_name\": \"Given\"}'"
             " FROM auth.users u WHERE email IS NOT NULL")
    assert [r["payload"]["first_name"] for r in outbox(db, mark)] == ["Given"] * 5
    run_once(workers)
    sent = imported(writes(fake, requests_before))
    assert sorted(c["email"] for c in sent) == emails
    assert {c["first_name"] for c in sent} == {"Given"}
    assert all(fake.contacts[e]["first_name"] == "Given" for e in emails)
    assert {r["status"] for r in outbox(db, mark)} == {"sent"}


# --- 7. an email change moves the contact from the address Sendry has -------------------------

def test_an_email_change_moves_the_contact_from_the_states_address(cdb, fake, workers):
    db = cdb
    uid = gotrue_signup(db, "first@example.com", {"first_name": "Mo"})
    run_once(workers)
    contact_id = fake.contacts["first@example.com"]["id"]

    mark = last_id(db)
    change_email(db, uid, "second@example.com")
    rows = outbox(db, mark)
    assert len(rows) == 1 and captured(rows[0], uid, "second@example.com", "first@example.com"), rows
    requests_before = len(fake.requests)
    run_once(workers)
    patches = [r for r in writes(fake, requests_before) if r["method"] == "PATCH"]
    assert [p["query"].get("email") for p in patches] == ["first@example.com"], writes(fake, requests_before)
    assert sorted(fake.contacts) == ["second@example.com"]
    assert fake.contacts["second@example.com"]["id"] == contact_id, "moved, not made anew"
    assert state(db, uid)["email"] == "second@example.com"

    # Two more moves while no worker runs, and the row of the first taken out by hand:
    # the one left says "from third@"; Sendry has second@ (the state's address): moved from there.
    mark = last_id(db)
    change_email(db, uid, "third@example.com")
    change_email(db, uid, "fourth@example.com")
    rows = outbox(db, mark)
    assert [(r["email"], r["old_email"]) for r in rows] == \
        [("third@example.com", "second@example.com"), ("fourth@example.com", "third@example.com")], rows
    db.query("DELETE FROM public.sendry_outbox WHERE id = %s", (rows[0]["id"],))
    requests_before = len(fake.requests)
    run_once(workers)
    patches = [r for r in writes(fake, requests_before) if r["method"] == "PATCH"]
    assert [p["query"].get("email") for p in patches] == ["second@example.com"], writes(fake, requests_before)
    assert sorted(fake.contacts) == ["fourth@example.com"], sorted(fake.contacts)
    assert fake.contacts["fourth@example.com"]["id"] == contact_id
    assert state(db, uid)["email"] == "fourth@example.com"
    assert outbox(db, mark)[-1]["status"] == "sent"


# --- 8. sign-in and token refresh: nothing ------------------------------------------------------

def test_a_sign_in_enqueues_nothing_and_calls_no_function(cdb, fake, workers):
    db = cdb
    uid = gotrue_signup(db, "quiet@example.com", {"first_name": "Q"})
    run_once(workers)
    mark, requests_before = last_id(db), len(fake.requests)

    assert calls_in_own_transaction(db, SIGN_IN, (uid,)) == 0, "a sign-in ran a function of ours"
    # GoTrue's refresh-token grant: the same UPDATE, again and again.
    for _ in range(3):
        as_gotrue(db, SIGN_IN, (uid,))
    assert outbox(db, mark) == []
    # The counter does count: a name change calls the capture.
    assert calls_in_own_transaction(
        db, "UPDATE users SET raw_user_meta_data = '{\"first_name\": \"R\"}', updated_at = now() WHERE id = %s",
        (uid,)) > 0
    assert len(outbox(db, mark)) == 1
    run_once(workers)
    assert [c["first_name"] for c in imported(writes(fake, requests_before))] == ["R"]
