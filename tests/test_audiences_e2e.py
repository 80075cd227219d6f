"""End-to-end: audiences from the contact mapping (issue 11), and the progress the
worker shows on long work.

A mapping that puts trial users in one audience and customers in another: imports go
per audience, a contact that changes plan joins the new audience and leaves the old one
(its membership removed, the contact kept), an audience Sendry does not know fails the
rows that name it and not the worker, and the startup check names it.

    make && /usr/bin/python3 -m pytest -q -p no:cacheprovider tests/test_audiences_e2e.py
"""

import re

import pytest

from conftest import AUDIENCE, T, import_requests, start_daemon, wait_until
from fake_sendry import FakeSendry
from test_lifecycle import Hook, free_port

API_KEY = "sn_test_fake"

MAPPING = """
CREATE OR REPLACE VIEW public.sendry_contacts WITH (security_invoker = true) AS
SELECT u.id AS user_id,
       lower(btrim(u.email)) AS email,
       NULL::text AS first_name, NULL::text AS last_name,
       jsonb_build_object('supabase_user_id', u.id::text) AS metadata,
       CASE p.plan WHEN 'trial' THEN ARRAY['aud_trial']
                   WHEN 'customer' THEN ARRAY['default', 'aud_customers']
                   WHEN 'lost' THEN ARRAY['aud_missing']
                   ELSE NULL END AS audiences
FROM auth.users u LEFT JOIN public.profiles p ON p.id = u.id
"""


@pytest.fixture
def fake():
    f = FakeSendry(api_key=API_KEY, audience_id=AUDIENCE, rate_limit=None,
                   audiences={"aud_trial": "Trial", "aud_customers": "Customers"})
    f.start()
    yield f
    f.stop()


@pytest.fixture
def mapped(db, cluster):
    db.query("TRUNCATE public.sendry_contact_state")
    db.query("CREATE TABLE public.profiles (id uuid PRIMARY KEY, plan text)")
    db.query(MAPPING)
    db.query("SELECT sendry_watch('public.profiles', 'id')")
    yield db
    db.query("SELECT sendry_unwatch('public.profiles')")
    db.query("DROP VIEW public.sendry_contacts")
    db.query("DROP TABLE public.profiles")
    cluster.install()


def user(db, email, plan):
    """A sign-up whose profile row (and plan) exists in the same transaction."""
    uid = db.signup(email)
    db.query("INSERT INTO public.profiles (id, plan) VALUES (%s, %s)", (uid, plan))
    return uid


def run_once(workers):
    w = workers("--once")
    assert w.wait(T) == 0, w.log()
    return w


def test_imports_go_per_audience(mapped, fake, workers):
    user(mapped, "t1@example.com", "trial")
    user(mapped, "t2@example.com", "trial")
    user(mapped, "c1@example.com", "customer")
    run_once(workers)
    assert fake.members("aud_trial") == ["t1@example.com", "t2@example.com"]
    assert fake.members("aud_customers") == ["c1@example.com"]
    assert fake.members(AUDIENCE) == ["c1@example.com"], "'default' names SENDRY_AUDIENCE_ID"
    for r in import_requests(fake):
        assert isinstance(r["json"].get("audience_id"), str), "one audience per import"
    assert mapped.counts() == {"sent": 6}


def test_a_contact_that_changes_audience_leaves_the_old_one(mapped, fake, workers):
    uid = user(mapped, "mover@example.com", "trial")
    run_once(workers)
    assert fake.members("aud_trial") == ["mover@example.com"]

    mapped.query("UPDATE public.profiles SET plan = 'customer' WHERE id = %s", (uid,))
    row = mapped.query("SELECT payload FROM public.sendry_outbox ORDER BY id DESC LIMIT 1")[0]
    assert row["payload"] is None, "captured: the audiences it left are found at the claim"
    assert mapped.query("SELECT * FROM sendry_claim_render(ARRAY[%s::uuid])", (uid,))[0]["payload"][
        "leave_audiences"] == ["aud_trial"]
    run_once(workers)
    assert fake.members("aud_trial") == [], "the membership of the audience it left is removed"
    assert fake.members("aud_customers") == ["mover@example.com"]
    assert "mover@example.com" in fake.contacts, "leaving an audience never deletes the contact"
    assert fake.requests_matching("DELETE", "/v1/audiences/aud_trial/contacts/")
    assert not fake.requests_matching("DELETE", "/v1/contacts/")


def test_an_audience_sendry_does_not_know_fails_its_rows_not_the_worker(mapped, fake, workers):
    user(mapped, "lost@example.com", "lost")
    user(mapped, "fine@example.com", "trial")
    w = start_daemon(workers, "--reconcile-interval", "0")
    w.wait_log(r"audience aud_missing, named by the mapping .* does not exist", T)
    wait_until(lambda: mapped.counts() == {"failed": 2, "sent": 2}, T,
               "the unknown audience's rows (both, claimed together) failed, the others sent")
    for row in mapped.query("SELECT last_error FROM public.sendry_outbox WHERE status = 'failed'"):
        assert "audience aud_missing" in row["last_error"], row
    assert fake.members("aud_trial") == ["fine@example.com"]
    assert w.poll() is None, "the worker keeps running"
    assert "aud_trial" not in " ".join(ln for ln in w.lines() if "does not exist" in ln)


def test_long_work_shows_progress_and_an_eta(db, fake, workers):
    """A backlog drained at 1 request a second: every 10 s a progress line with the rows
    left and when they will be done; /metrics has the rate and the ETA."""
    db.signup_many(300, prefix="slow")
    port = free_port()
    w = start_daemon(workers, "--rate", "1", "--batch-size", "5", "--reconcile-interval", "0",
                     "--listen", f"127.0.0.1:{port}", env={"SENDRY_WEBHOOK_SECRET": "w" * 32})
    m = w.wait_log(r"progress: \d+ sent .*; (\d+) due left, done in about (.+)$", T)[0]
    assert 0 < int(m.group(1)) < 300, m.group(0)
    _, text = Hook(w, port).get("/metrics")
    values = {ln.split(" ")[0]: float(ln.split(" ")[1]) for ln in text.splitlines()
              if ln and not ln.startswith("#")}
    assert values["sendry_sync_send_rate_rows_per_second"] > 0, text
    assert values["sendry_sync_backlog_eta_seconds"] > 0, text


def test_the_backlog_figures_follow_the_rows_sent_between_two_counts(db, fake, workers):
    """The due count runs every 10 s at most (less often on a big backlog); the rows settled
    since count down from it, so that when everything was sent /metrics (and the progress
    line) say 0 due at once, not what the last count saw ("3000 due left" after the end)."""
    db.signup_many(400, prefix="drain")
    port = free_port()
    w = start_daemon(workers, "--rate", "4", "--batch-size", "50", "--reconcile-interval", "0",
                     "--listen", f"127.0.0.1:{port}", env={"SENDRY_WEBHOOK_SECRET": "w" * 32})
    hook = Hook(w, port)

    def due():
        _, text = hook.get("/metrics")
        return float(re.search(r"^sendry_sync_backlog_due_rows (\S+)$", text, re.M).group(1))

    wait_until(lambda: due() > 0, T, "the first count saw the backlog")
    wait_until(lambda: db.all_sent(400), T, "the backlog sent")
    assert due() == 0, "every row was sent: none is due"
    _, text = hook.get("/metrics")
    assert re.search(r"^sendry_sync_backlog_eta_seconds 0$", text, re.M), text
