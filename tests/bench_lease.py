"""The lease renewal's cost, printed for `make bench` (figures, never pass/fail).

A worker renews the lease of every row it has held for longer than --lease / 3 with one
statement (claim.c's RENEW_SQL, read from the source so the figure is of the code as it
is), once every --lease / 3 (10 s at the default 30 s lease), only while it holds rows.
This prints that statement's time for 10, 100 and 1000 held rows on a 200,000-row outbox
(median and worst of 30), with PostgreSQL's default durability.

    /usr/bin/python3 tests/bench_lease.py
"""

import json
import os
import re
import sys
import time

import psycopg

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pgharness  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def renew_sql():
    src = open(os.path.join(ROOT, "src", "claim.c")).read()
    body = re.search(r"static const char RENEW_SQL\[\] =\n(.*?);\n", src, re.S).group(1)
    sql = "".join(re.findall(r'"((?:[^"\\]|\\.)*)"', body))
    return re.sub(r"\$(\d)", lambda m: "%(p" + m.group(1) + ")s", sql)


def main():
    sql = renew_sql()
    with pgharness.Cluster(supabase=True, install=True, durable=True) as pg:
        with psycopg.connect(pg.dsn, autocommit=True) as conn:
            conn.execute("INSERT INTO public.sendry_outbox (email, payload)"
                          " SELECT 'u' || g || '@example.com', '{}' FROM generate_series(1, 200000) g")
            conn.execute("ANALYZE public.sendry_outbox")
            print("lease renewal (one statement per worker every --lease / 3 while it holds rows):")
            for n in (10, 100, 1000):
                ids = [r[0] for r in conn.execute(
                    "SELECT id FROM public.sendry_outbox WHERE status = 'pending' ORDER BY id LIMIT %s", (n,))]
                conn.execute("UPDATE public.sendry_outbox SET status = 'processing', locked_by = 'bench',"
                             " claim_id = 1, locked_until = now() + interval '30 s',"
                             " next_attempt_at = now() + interval '30 s' WHERE id = ANY(%s)", (ids,))
                refs = json.dumps([{"id": i, "claim_id": 1} for i in ids])
                times = []
                for _ in range(30):
                    t = time.perf_counter()
                    lost = conn.execute(sql, {"p1": refs, "p2": "30.000", "p3": "bench"}).fetchall()
                    times.append(time.perf_counter() - t)
                    assert not lost, lost
                times.sort()
                print(f"  {n:5d} held rows: median {times[len(times) // 2] * 1000:6.2f} ms,"
                      f" worst {times[-1] * 1000:6.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
