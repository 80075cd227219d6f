#!/usr/bin/python3
"""make bench: backfill throughput and the worker's memory.

Inserts N users (default 100,000) into a Supabase-shaped throwaway database, enqueues
them with the DESIGN.md backfill statement, runs `sendry-sync --once --rate 0` against
the fake Sendry, and prints rows per second and the worker's peak resident memory.
Figures only: nothing here passes or fails on a timing.
"""
import os
import resource
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from fake_sendry import FakeSendry  # noqa: E402
from pgharness import Cluster  # noqa: E402

N = int(os.environ.get("BENCH_ROWS", "100000"))
LOG = os.environ.get("BENCH_LOG")
BIN = os.environ.get("SENDRY_SYNC_BIN", os.path.join(ROOT, "sendry-sync"))


def vm_kib(pid, field):
    """A VmRSS/VmHWM figure of /proc/<pid>/status in KiB, 0 once the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def main():
    with Cluster(supabase=True, install=True) as pg, FakeSendry(rate_limit=None) as fake:
        pg.psql_as("supabase_admin", "-c", "ALTER TABLE auth.users DISABLE TRIGGER USER")
        pg.psql_as("supabase_auth_admin", "-c",
                   "INSERT INTO auth.users (id, email, role, raw_user_meta_data, raw_app_meta_data, created_at, updated_at) "
                   "SELECT gen_random_uuid(), 'user' || g || '@example.com', 'authenticated', "
                   "jsonb_build_object('full_name', 'User Number ' || g), '{\"provider\":\"email\"}', now(), now() "
                   f"FROM generate_series(1, {N}) g")
        t0 = time.monotonic()
        pg.psql("-c", "INSERT INTO public.sendry_outbox (user_id, email, payload) "
                      "SELECT id, email, public.sendry_contact_payload(u) FROM auth.users u WHERE email IS NOT NULL")
        enqueue = time.monotonic() - t0

        env = dict(os.environ, DATABASE_URL=pg.dsn, SENDRY_API_KEY="sn_test_fake",
                   SENDRY_AUDIENCE_ID="aud_test", SENDRY_API_URL=fake.url)
        t0 = time.monotonic()
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        proc = subprocess.Popen([BIN, "--once", "--rate", "0"], env=env,
                                stderr=open(LOG, "w") if LOG else subprocess.DEVNULL)
        peak_kib, samples = 0, []
        while proc.poll() is None:        # sample the worker's own resident memory
            peak_kib = max(peak_kib, vm_kib(proc.pid, "VmHWM"))
            rss = vm_kib(proc.pid, "VmRSS")
            if rss:
                samples.append(rss)
            time.sleep(0.05)
        rc = proc.returncode
        elapsed = time.monotonic() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        sent = int(pg.query("SELECT count(*) FROM public.sendry_outbox WHERE status = 'sent'")[0][0])
        imports = sum(1 for r in fake.requests if r["path"] == "/v1/contacts/import")
        print(f"backfill: enqueue {N} rows with one INSERT ... SELECT: {enqueue:.2f} s")
        print(f"backfill: sendry-sync --once --rate 0 delivered {sent}/{N} rows in {elapsed:.2f} s "
              f"= {sent / elapsed:,.0f} rows/s over {imports} import requests (exit {rc})")
        median = sorted(samples)[len(samples) // 2] if samples else 0
        print(f"backfill: worker resident memory: peak {peak_kib / 1024:.1f} MiB, median "
              f"{median / 1024:.1f} MiB over {len(samples)} samples; CPU "
              f"{after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime:.2f} s")
        return 0 if rc == 0 and sent == N else 1


if __name__ == "__main__":
    sys.exit(main())
