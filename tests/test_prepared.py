"""The relay's hot statements (the claim, the completion, the lease renewal) are prepared
once per connection and executed by name (src/db.c, db_query_named): what happens when a
prepared statement no longer fits or no longer exists.

    make && /usr/bin/python3 -m pytest -q -p no:cacheprovider tests/test_prepared.py
"""

import psycopg

from conftest import T, start_daemon, wait_until
from test_doctor import pgbouncer  # noqa: F401  (the fixture)


def test_claim_is_prepared_again_when_an_upgrade_changes_what_it_returns(cluster, db, fake, workers):
    """A migration that changes the type of a column the claim returns makes the prepared
    claim fail with 0A000 ("cached plan must not change result type"); the worker prepares
    it again at once and delivers, instead of failing every claim until it is restarted."""
    w = start_daemon(workers, "--poll-interval", "1")
    db.signup("before@example.com")
    wait_until(lambda: db.counts() == {"sent": 1}, T, "the first user sent by the prepared claim")
    db.query("ALTER TABLE public.sendry_outbox ALTER COLUMN attempts TYPE bigint", user=cluster.SUPERUSER)
    db.signup("after@example.com")
    wait_until(lambda: db.counts() == {"sent": 2}, T, "the second user sent after the upgrade")
    assert "statement sendry_claim prepared again" in w.log(), w.log()
    assert "claim failed" not in w.log().lower(), w.log()


def test_transaction_mode_pooler_stops_preparing_and_still_delivers(cluster, db, fake, workers, pgbouncer):  # noqa: F811
    """Through a transaction-mode PgBouncer (round robin over its server connections) a
    statement prepared on one server connection is missing on the next (26000): the worker
    says so once, plans every statement anew from then on, and delivers every row."""
    url = f"host=127.0.0.1 port={pgbouncer} dbname=postgres user=postgres"
    # Two server connections in the pool for round robin to alternate between.
    clients = [psycopg.connect(url) for _ in range(2)]
    for c in clients:
        c.execute("SELECT 1")   # each holds a server connection until its transaction ends
    for c in clients:
        c.commit()
        c.close()
    for i in range(3):
        db.signup(f"pooled{i}@example.com")
    w = workers("--once", env={"DATABASE_URL": url})
    assert w.wait(T) == 0, w.log()
    assert db.counts() == {"sent": 3}, db.rows()
    assert w.log().count("prepared statements do not last on the relay connection") == 1, w.log()


def test_session_pooler_that_keeps_statements_gets_other_names(cluster, db, fake, workers, pgbouncer):  # noqa: F811
    """A session-mode pooler without a reset query hands a worker a server connection with
    statements an earlier client prepared under the names the worker uses (42P05 "already
    exists"): it prepares its own under other names, and delivers (executing the earlier
    client's statement instead would send nothing)."""
    url = f"host=127.0.0.1 port={pgbouncer} dbname=postgres_session user=postgres"
    # Two clients at once: two server connections, each left with statements of our names.
    clients = [psycopg.connect(url, autocommit=True) for _ in range(2)]
    for c in clients:
        for name in ("sendry_claim_0", "sendry_complete_0", "sendry_renew_0"):
            c.execute(f"PREPARE {name} AS SELECT 1")
    for c in clients:
        c.close()
    db.signup("session@example.com")
    w = workers("--once", env={"DATABASE_URL": url})
    assert w.wait(T) == 0, w.log()
    assert db.counts() == {"sent": 1}, (db.rows(), w.log())
    assert "statement sendry_claim: its name is taken on the relay connection" in w.log(), w.log()
