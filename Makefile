# sendry-sync: `make` builds ./sendry-sync; `make check` runs every test suite.
#
#   make            build ./sendry-sync
#   make check      the generated files up to date, unit tests, SQL tests, end-to-end tests
#                   (plain build, then ASan/UBSan; the commands, Vault, TLS, systemd, docs,
#                   man page, alert rules, install and package tests among them), a --once
#                   run under valgrind, and a short fuzz run of the webhook parser
#   make demo       the whole flow on a throwaway PostgreSQL and a fake Sendry
#   make bench      performance figures (printed, never pass/fail on a timing);
#                   BASELINE=<checkout> measures that one too, BENCH_QUICK=1 scales it down
#   make chaos      the worker under faults (kill -9, three workers, PostgreSQL restarts, 429 and
#                   5xx storms, the API down): a table of what was lost, stuck, written twice;
#                   fails on anything lost or stuck. CHAOS_QUICK=1: the short version in make check
#   make valgrind   a --once run under valgrind, failing on any leak
#   make install    the binary, the man page, the SQL, the systemd unit (its ExecStart
#                   pointing at BINDIR) and the docs; PREFIX (/usr/local), DESTDIR, BINDIR,
#                   MANDIR, DATADIR, DOCDIR, UNITDIR as usual. make uninstall removes them.
#   make deb        a Debian package in build/deb/ (dpkg-buildpackage, debian/)
#   make docs       the settings reference in docs/configuration.md and the man page, from
#                   the option table (make check-docs, in make check, fails when it is stale)
#   make install-sql  sql/install.sql from its steps (make check-install-sql: likewise)

CC      ?= cc
PYTHON  ?= /usr/bin/python3
PKGS     = libpq libcurl json-c libmicrohttpd libcrypto libsystemd
WARN     = -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes -Wformat=2 -Wno-format-nonliteral
CFLAGS  ?= -O2 -g
CFLAGS  += -std=c11 $(WARN) -D_GNU_SOURCE $(CPPFLAGS) $(shell pkg-config --cflags $(PKGS))
LDLIBS  += $(shell pkg-config --libs $(PKGS)) -lev -lm
SAN      = -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all

SRCS     = src/xalloc.c src/config.c src/config_options.c src/config_keys.c src/config_validate.c \
           src/log.c src/backoff.c src/sendry.c src/http.c src/db.c src/db_named.c src/db_session.c src/dbfault.c \
           src/gate.c src/budget.c src/job.c src/claim.c src/claim_rows.c src/deliver.c src/outcome.c src/complete.c \
           src/reconcile.c src/prune.c src/inbox.c src/audience.c src/events_scope.c src/health.c \
           src/relay.c src/relay_setup.c src/relay_faults.c src/webhook.c src/metrics.c src/httpd.c src/receiver.c \
           src/dbsync.c src/probe.c src/vault.c src/notify.c src/migrate.c \
           src/doctor.c src/doctor_db.c src/doctor_schema.c src/doctor_api.c \
           src/status.c src/status_events.c src/healthcheck.c src/backfill.c src/backfill_events.c src/main.c
HDRS     = $(wildcard src/*.h)
GEN      = build/install_sql.c

all: sendry-sync

# sql/install.sql is generated from its steps by sql/build.sh (make install-sql) and committed;
# the binary embeds the same output, the steps one by one, and the schema version (the
# number of the last versioned step), which `doctor` compares with the database's.
SQL_SRCS = sql/build.sh sql/bootstrap.sql $(wildcard sql/migrations/*.sql sql/functions/*.sql)

build/install_sql.c: $(SQL_SRCS)
	@mkdir -p build
	sh sql/build.sh c > $@.tmp && mv $@.tmp $@

install-sql: $(SQL_SRCS)
	sh sql/build.sh > sql/install.sql.tmp && mv sql/install.sql.tmp sql/install.sql

# Fails when the committed sql/install.sql is not what its steps build.
check-install-sql:
	@sh sql/build.sh | cmp -s - sql/install.sql || \
	    { echo "sql/install.sql is out of date with sql/bootstrap.sql, sql/migrations, sql/functions: run make install-sql and commit it" >&2; exit 1; }
	@echo "sql/install.sql is up to date"

sendry-sync: $(SRCS) $(HDRS) $(GEN)
	$(CC) $(CFLAGS) -Isrc -o $@ $(SRCS) $(GEN) $(LDFLAGS) $(LDLIBS)

# The same binary with AddressSanitizer and UndefinedBehaviorSanitizer.
sendry-sync-asan: $(SRCS) $(HDRS) $(GEN)
	$(CC) $(CFLAGS) $(SAN) -O1 -Isrc -o $@ $(SRCS) $(GEN) $(LDFLAGS) $(LDLIBS)

# Unit tests: pure modules linked into small test binaries, under the sanitizers.
UNIT_SRCS = src/xalloc.c src/budget.c src/db.c src/db_named.c src/db_session.c src/config.c src/config_options.c src/config_keys.c src/config_validate.c \
            src/log.c src/backoff.c src/sendry.c src/gate.c
build/unit_test: tests/unit/unit_test.c tests/unit/check.h $(UNIT_SRCS) $(HDRS)
	@mkdir -p build
	$(CC) $(CFLAGS) $(SAN) -Isrc -Itests/unit -o $@ tests/unit/unit_test.c $(UNIT_SRCS) $(LDFLAGS) $(LDLIBS)

build/webhook_test: tests/unit/webhook_test.c tests/unit/check.h src/webhook.c src/metrics.c src/log.c src/xalloc.c $(HDRS)
	@mkdir -p build
	$(CC) $(CFLAGS) $(SAN) -Isrc -Itests/unit -o $@ tests/unit/webhook_test.c src/webhook.c src/metrics.c src/log.c src/xalloc.c $(LDFLAGS) $(LDLIBS)

DB_TEST_SRCS = src/db.c src/db_named.c src/db_session.c src/dbfault.c src/log.c src/xalloc.c src/backoff.c
build/db_test: tests/unit/db_test.c tests/unit/check.h $(DB_TEST_SRCS) $(HDRS)
	@mkdir -p build
	$(CC) $(CFLAGS) $(SAN) -Isrc -Itests/unit -o $@ tests/unit/db_test.c $(DB_TEST_SRCS) $(LDFLAGS) $(LDLIBS)

check-unit: build/unit_test build/webhook_test build/db_test
	./build/unit_test
	./build/webhook_test
	$(PYTHON) tests/pgharness.py run -- ./build/db_test

# The settings reference in docs/configuration.md and the man page, generated from the
# option table (src/config_options.c) by tools/settings_doc.c: `make docs` writes it,
# `make check-docs` (in make check) fails when a file differs from what it would write.
CONFIG_SRCS = src/xalloc.c src/config.c src/config_options.c src/config_keys.c src/config_validate.c src/log.c
build/settings_doc: tools/settings_doc.c $(CONFIG_SRCS) $(HDRS)
	@mkdir -p build
	$(CC) $(CFLAGS) -Isrc -o $@ tools/settings_doc.c $(CONFIG_SRCS) $(LDFLAGS) $(LDLIBS)

docs: build/settings_doc
	sh tools/splice.sh docs/configuration.md '<!-- settings:begin' '<!-- settings:end' build/settings_doc markdown > build/configuration.md
	mv build/configuration.md docs/configuration.md
	sh tools/splice.sh docs/sendry-sync.1 '.\" settings:begin' '.\" settings:end' build/settings_doc man > build/sendry-sync.1
	mv build/sendry-sync.1 docs/sendry-sync.1

check-docs: build/settings_doc
	sh tools/splice.sh docs/configuration.md '<!-- settings:begin' '<!-- settings:end' build/settings_doc markdown | cmp -s - docs/configuration.md \
	    || { echo "docs/configuration.md: the settings reference is out of date with src/config_options.c: run make docs" >&2; exit 1; }
	sh tools/splice.sh docs/sendry-sync.1 '.\" settings:begin' '.\" settings:end' build/settings_doc man | cmp -s - docs/sendry-sync.1 \
	    || { echo "docs/sendry-sync.1: the options are out of date with src/config_options.c: run make docs" >&2; exit 1; }

# The webhook signature and body parsing under libFuzzer with ASan/UBSan, briefly.
check-fuzz:
	FUZZ_SECONDS=$${FUZZ_SECONDS:-15} sh tests/fuzz/build_and_run.sh

check-sql:
	$(PYTHON) tests/pgharness.py run -- sh tests/sql/run.sh

check-e2e: sendry-sync build/fastapi build/fastload
	$(PYTHON) -m pytest -q -p no:cacheprovider tests/

check-asan: sendry-sync-asan
	SENDRY_SYNC_BIN=$(CURDIR)/sendry-sync-asan $(PYTHON) -m pytest -q -p no:cacheprovider tests/test_worker.py tests/test_lifecycle.py \
	    tests/test_relay.py tests/test_vault.py tests/test_commands.py tests/test_doctor.py tests/test_tls.py tests/test_systemd.py \
	    tests/test_guarantees.py tests/test_budget.py tests/test_audiences_e2e.py tests/test_contacts_e2e.py \
	    tests/test_migrate.py \
	    tests/test_outage.py \
	    tests/test_backlog_after_install.py \
	    tests/test_live_db.py \
	    tests/test_events.py \
	    tests/test_capture.py \
	    tests/test_prepared.py

SUITES = check-install-sql check-docs check-unit check-sql check-e2e check-asan check-valgrind check-fuzz
check: all $(SUITES)
	@echo "suites: $(words $(SUITES)) passed, 0 failed"

# A --once run under valgrind: any definite or indirect leak fails it.
check-valgrind valgrind: sendry-sync
	SENDRY_SYNC_VALGRIND=1 $(PYTHON) -m pytest -q -p no:cacheprovider tests/test_worker.py -k once_valgrind

demo: sendry-sync
	$(PYTHON) tests/pgharness.py run -- sh contrib/demo.sh

# The bench's fake Sendry (epoll, keep-alive) and the load generator that measures it.
build/fastapi: tests/bench/fastapi.c
	@mkdir -p build
	$(CC) $(CFLAGS) -o $@ $< -lm

build/fastload: tests/bench/fastload.c
	@mkdir -p build
	$(CC) $(CFLAGS) -o $@ $<

# make bench [BASELINE=/path/to/another/checkout] [BENCH_QUICK=1]
bench: sendry-sync build/fastapi build/fastload
	$(PYTHON) tests/bench_triggers.py $(if $(BASELINE),--baseline $(BASELINE))
	$(PYTHON) tests/bench_signup_instructions.py $(if $(BASELINE),--baseline $(BASELINE))
	$(PYTHON) tests/bench_signup_instructions.py --signin $(if $(BASELINE),--baseline $(BASELINE))
	$(PYTHON) tests/bench_upgrade.py
	$(PYTHON) tests/bench_lease.py
	$(PYTHON) tests/bench_wal.py $(if $(BASELINE),--baseline $(BASELINE))
	$(PYTHON) tests/bench_lifecycle.py
	$(PYTHON) tests/bench/bench.py $(if $(BASELINE),--baseline $(BASELINE))

# SENDRY_SYNC_BIN=$(CURDIR)/sendry-sync-asan make chaos: the same against the ASan build.
chaos: sendry-sync
	$(PYTHON) tests/chaos.py $(if $(CHAOS_QUICK),--quick)

# Where `make install` puts things (GNU conventions; DESTDIR stages them).
PREFIX  ?= /usr/local
BINDIR  ?= $(PREFIX)/bin
MANDIR  ?= $(PREFIX)/share/man
DATADIR ?= $(PREFIX)/share/sendry-sync
DOCDIR  ?= $(PREFIX)/share/doc/sendry-sync
UNITDIR ?= $(PREFIX)/lib/systemd/system
INSTALL ?= install
DOCS     = README.md $(wildcard docs/*.md)

install: sendry-sync
	$(INSTALL) -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(MANDIR)/man1 $(DESTDIR)$(DATADIR)/sql \
	    $(DESTDIR)$(DATADIR)/prometheus $(DESTDIR)$(DATADIR)/grafana $(DESTDIR)$(DOCDIR) $(DESTDIR)$(UNITDIR)
	$(INSTALL) -m 0755 sendry-sync $(DESTDIR)$(BINDIR)/sendry-sync
	$(INSTALL) -m 0644 docs/sendry-sync.1 $(DESTDIR)$(MANDIR)/man1/sendry-sync.1
	$(INSTALL) -m 0644 sql/install.sql sql/uninstall.sql $(DESTDIR)$(DATADIR)/sql/
	$(INSTALL) -m 0644 contrib/prometheus/*.yml $(DESTDIR)$(DATADIR)/prometheus/
	$(INSTALL) -m 0644 contrib/grafana/*.json $(DESTDIR)$(DATADIR)/grafana/
	$(INSTALL) -m 0644 $(DOCS) $(DESTDIR)$(DOCDIR)/
	sed 's|^ExecStart=.*|ExecStart=$(BINDIR)/sendry-sync|' contrib/sendry-sync.service \
	    > $(DESTDIR)$(UNITDIR)/sendry-sync.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/sendry-sync.service

uninstall:
	rm -f $(DESTDIR)$(BINDIR)/sendry-sync $(DESTDIR)$(MANDIR)/man1/sendry-sync.1 \
	    $(DESTDIR)$(UNITDIR)/sendry-sync.service
	rm -rf $(DESTDIR)$(DATADIR) $(DESTDIR)$(DOCDIR)

# A binary Debian package from debian/, built in a copy of the tracked files (or of the
# tree outside git) so the working tree stays clean; the .deb lands in build/deb/.
deb:
	rm -rf build/deb && mkdir -p build/deb/src
	if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then \
	    git ls-files -co --exclude-standard -z | xargs -0 cp --parents -t build/deb/src; \
	else \
	    tar --exclude=./build --exclude=./.git -cf - . | tar -C build/deb/src -xf -; \
	fi
	cd build/deb/src && dpkg-buildpackage -b -us -uc --no-sign
	ls build/deb/*.deb

clean:
	rm -rf build sendry-sync sendry-sync-asan

.PHONY: all install-sql check-install-sql docs check-docs check install uninstall deb check-unit check-sql check-e2e check-asan check-valgrind check-fuzz valgrind demo bench chaos clean
