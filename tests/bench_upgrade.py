#!/usr/bin/env python3
"""make bench: the longest sign-up / sign-in wait during an upgrade (ms).

The scenario of tests/test_migrate.py (the issue's): a database the previous release
installed (schema version 2), GoTrue-shaped sign-ups and sign-ins at 20/s each, another
session holding ACCESS SHARE on the outbox for 10 s, and the upgrade applied with
`psql -f` (install.sql built with a test-only step that needs ACCESS EXCLUSIVE on the
outbox). For comparison, the same with the previous release's way of upgrading: its
install.sql run again (one transaction, no lock_timeout). Printed, never pass/fail.

    /usr/bin/python3 tests/bench_upgrade.py
"""

import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pgharness  # noqa: E402
import test_migrate as tm  # noqa: E402


def p99(values):
    v = sorted(values)
    return v[min(len(v) - 1, int(len(v) * 0.99))] if v else 0.0


def report(label, r, took, loads, cluster):
    print(f"  {label}:")
    print(f"    upgrade: exit {r.returncode}, {took:.1f} s"
          + ("" if r.returncode == 0 else
             " (" + next((ln for ln in r.stderr.splitlines() if "ERROR" in ln), "?")[:160] + ")"))
    for ld in loads:
        d = ld.durations
        print(f"    longest {ld.kind} wait during the upgrade: {max(d) * 1000:.0f} ms"
              f" (p99 {p99(d) * 1000:.0f} ms, {len(d)} statements, {len(ld.errors)} failed)")
    print(f"    deadlocks in the server log: {tm.server_log(cluster).count('deadlock detected')}")


def run(label, upgrade_sql=None):
    with pgharness.Cluster(supabase=True) as cluster, tempfile.TemporaryDirectory() as tmp:
        if upgrade_sql is None:
            r, took, loads, _ = tm.upgrade_under_load(cluster, _Path(tmp), hold_seconds=10)
        else:
            r, took, loads, _ = tm.upgrade_under_load(cluster, _Path(tmp), hold_seconds=10,
                                                      install_sql=upgrade_sql)
        report(label, r, took, loads, cluster)


class _Path(str):
    """tmp_path's `/` for a plain directory name."""

    def __truediv__(self, name):
        return os.path.join(self, name)


def main():
    print("sign-up wait during an upgrade (20 sign-ups/s and 20 sign-ins/s, a reader holding"
          " ACCESS SHARE on the outbox for 10 s):")
    t0 = time.monotonic()
    run("this release (versioned steps, lock_timeout 100ms, retries)")
    run("the previous release's way (its install.sql run again)", upgrade_sql=tm.V2_SQL)
    print(f"  ({time.monotonic() - t0:.0f} s)")


if __name__ == "__main__":
    main()
