#!/usr/bin/python3
"""A throwaway PostgreSQL cluster for tests, the demo and the benchmark.

initdb + pg_ctl in a temporary directory, listening only on a Unix socket in that
directory, with fsync off (durable=True, or --server-defaults: PostgreSQL's own defaults
for fsync, full_page_writes and synchronous_commit, as `make bench` measures). The cluster
is always stopped and removed, even when the code using it fails. As root (CI), the
server runs as the `postgres` system user.

As a library (pytest):
    with Cluster(supabase=True) as pg:
        pg.psql("-c", "select 1")          # runs as role postgres
        pg.dsn                             # libpq conninfo for role postgres

As a command (shell scripts, make):
    pgharness.py run [--plain] [--install] [--server-defaults] -- CMD ARGS...
runs CMD with PGHOST, PGPORT, PGUSER, PGDATABASE and DATABASE_URL set, then stops
the cluster and exits with CMD's status.
"""

import argparse
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
FIXTURE = os.path.join(HERE, "fixtures", "supabase.sql")
INSTALL = os.path.join(ROOT, "sql", "install.sql")
UNINSTALL = os.path.join(ROOT, "sql", "uninstall.sql")


def pg_bindir():
    """The PostgreSQL server binaries: $PG_BINDIR, pg_config --bindir, or Debian's path."""
    if os.environ.get("PG_BINDIR"):
        return os.environ["PG_BINDIR"]
    for cand in sorted(
        (os.path.join("/usr/lib/postgresql", v, "bin") for v in os.listdir("/usr/lib/postgresql"))
        if os.path.isdir("/usr/lib/postgresql") else [],
        reverse=True,
    ):
        if os.path.exists(os.path.join(cand, "initdb")):
            return cand
    initdb = shutil.which("initdb")
    if initdb:
        return os.path.dirname(initdb)
    raise RuntimeError("PostgreSQL server binaries not found (set PG_BINDIR)")


class Cluster:
    SUPERUSER = "supabase_admin"

    def __init__(self, supabase=True, install=False, port=None, durable=False, conf=()):
        """durable: PostgreSQL's own fsync, full_page_writes and synchronous_commit (on)
        instead of the tests' off; conf: more postgresql.conf lines."""
        self.supabase = supabase
        self.durable = durable
        self.conf = list(conf)
        self.install_on_start = install
        self.bindir = pg_bindir()
        self.port = port or (20000 + os.getpid() % 20000)
        self.dir = None
        self.started = False

    # --- process plumbing -------------------------------------------------
    def _as_server_user(self, argv):
        """Root cannot run PostgreSQL: run server commands as the postgres system user."""
        if os.geteuid() == 0:
            return ["runuser", "-u", "postgres", "--"] + argv
        return argv

    def _run_server_cmd(self, argv, **kw):
        return subprocess.run(self._as_server_user(argv), check=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)

    @property
    def datadir(self):
        return os.path.join(self.dir, "data")

    @property
    def host(self):
        return self.dir

    @property
    def logfile(self):
        return os.path.join(self.dir, "postgres.log")

    def dsn_for(self, user="postgres", dbname="postgres"):
        return f"host={self.host} port={self.port} dbname={dbname} user={user}"

    @property
    def dsn(self):
        return self.dsn_for("postgres") if self.supabase else self.dsn_for(self.SUPERUSER)

    def env(self, user=None):
        env = dict(os.environ)
        env.update(PGHOST=self.host, PGPORT=str(self.port), PGDATABASE="postgres",
                   PGUSER=user or ("postgres" if self.supabase else self.SUPERUSER),
                   DATABASE_URL=self.dsn)
        env.pop("PGPASSWORD", None)
        env.pop("PGSERVICE", None)
        return env

    # --- lifecycle -------------------------------------------------------
    def start(self):
        self.dir = tempfile.mkdtemp(prefix="sendry-pg-")
        os.chmod(self.dir, 0o755)
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        try:
            self._run_server_cmd([os.path.join(self.bindir, "initdb"), "-D", self.datadir,
                                  "-U", self.SUPERUSER, "--auth=trust", "--no-sync",
                                  "-E", "UTF8", "--locale=C"])
            conf = os.path.join(self.datadir, "postgresql.conf")
            with open(conf, "a") as f:
                f.write("\n# sendry-sync test cluster\n"
                        "listen_addresses = ''\n"
                        f"unix_socket_directories = '{self.dir}'\n"
                        f"port = {self.port}\n"
                        + ("" if self.durable else
                           "fsync = off\nfull_page_writes = off\nsynchronous_commit = off\n")
                        + "max_connections = 50\n"
                        "log_min_messages = warning\n"
                        + "".join(line + "\n" for line in self.conf))
            self.pg_start()
            if self.supabase:
                self.psql_as(self.SUPERUSER, "-f", FIXTURE)
            if self.install_on_start:
                self.install()
        except BaseException:
            self.stop()
            raise
        return self

    def pg_start(self):
        self._run_server_cmd([os.path.join(self.bindir, "pg_ctl"), "-D", self.datadir,
                              "-l", self.logfile, "-w", "-t", "60", "start"])
        self.started = True

    def pg_stop(self, mode="fast"):
        self._run_server_cmd([os.path.join(self.bindir, "pg_ctl"), "-D", self.datadir,
                              "-m", mode, "-w", "-t", "60", "stop"])
        self.started = False

    def restart(self):
        self.pg_stop()
        self.pg_start()

    def stop(self):
        if self.started:
            try:
                self.pg_stop("immediate")
            except subprocess.CalledProcessError:
                pidfile = os.path.join(self.datadir, "postmaster.pid")
                if os.path.exists(pidfile):
                    with open(pidfile) as f:
                        os.kill(int(f.readline()), signal.SIGQUIT)
            self.started = False
        if self.dir and os.environ.get("SENDRY_KEEP_PG") != "1":
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # --- SQL -------------------------------------------------------------
    def psql_as(self, user, *args, check=True):
        """Run psql as `user` (quiet, ON_ERROR_STOP); returns CompletedProcess (text)."""
        r = subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", self.dsn_for(user)]
                           + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if check and r.returncode != 0:
            raise RuntimeError(f"psql {' '.join(args)} failed ({r.returncode}):\n{r.stderr}")
        return r

    def psql(self, *args, check=True):
        return self.psql_as("postgres" if self.supabase else self.SUPERUSER, *args, check=check)

    def query(self, sql, user=None):
        """Run one query, return rows as lists of strings (unaligned, tuples only)."""
        r = self.psql_as(user or ("postgres" if self.supabase else self.SUPERUSER),
                         "-A", "-t", "-F", "\x1f", "-c", sql)
        return [line.split("\x1f") for line in r.stdout.splitlines() if line]

    def install(self):
        return self.psql("-f", INSTALL)

    def uninstall(self):
        return self.psql("-f", UNINSTALL)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="start a cluster, run a command against it, stop it")
    run.add_argument("--plain", action="store_true",
                     help="a plain PostgreSQL (no Supabase auth schema); default is Supabase-shaped")
    run.add_argument("--install", action="store_true", help="apply sql/install.sql first")
    run.add_argument("--server-defaults", action="store_true",
                     help="keep fsync, full_page_writes and synchronous_commit at the server's defaults")
    run.add_argument("command", nargs=argparse.REMAINDER)
    args = ap.parse_args()
    cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not cmd:
        ap.error("no command given")
    cluster = Cluster(supabase=not args.plain, install=args.install, durable=args.server_defaults)
    # Stop the cluster on SIGTERM too, not only on normal exit.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with cluster:
        print(f"pgharness: PostgreSQL on {cluster.host} port {cluster.port}", file=sys.stderr)
        started = time.monotonic()
        rc = subprocess.call(cmd, env=cluster.env())
        print(f"pgharness: command exited {rc} after {time.monotonic() - started:.1f} s",
              file=sys.stderr)
    return rc


if __name__ == "__main__":
    sys.exit(main())
