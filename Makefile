# The README's commands: `make run` and `make test` (and `make bench` for the figures).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CONFIG ?= etc/atollon-mail.ini
STAMP := $(VENV)/.installed

.PHONY: run test bench install system-packages bench-packages clean

# Debian packages the tests use: swaks, a second real SMTP client, chromium for the
# web admin driven by Playwright, systemd (systemd-analyze and systemd-sysusers
# check etc/atollon-mail.service and its sysusers file), and rspamd, the spam filter,
# with redis-server for its Bayes statistics (the tests start their own of both on
# loopback, never the system services), and two real IMAP clients that sync a mailbox to
# a Maildir and back: isync (its command is mbsync) and offlineimap3 (offlineimap);
# prometheus for promtool, which checks the /metrics output; and pebble, Let's Encrypt's
# test ACME CA, that the certificate tests get certificates from; postgresql-client for
# pg_dump and pg_restore, which back up and restore a PostgreSQL store.
# Installed when this runs as root with apt-get; elsewhere those tests are skipped with
# the reason. PACKAGE:COMMAND names the command that shows a package is there when the
# two differ (a path for a program outside PATH).
SYSTEM_PACKAGES := swaks chromium systemd rspamd redis-server isync:mbsync \
	offlineimap3:offlineimap prometheus:promtool pebble \
	postgresql-client:pg_dump

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Editable install in "compat" mode puts the project root on sys.path, which is how
# Twisted finds twisted/plugins/atollon_mail_plugin.py; the last step builds the plugin
# caches (dropin.cache) so `twistd atollon-mail` works at once and never has to write
# them when it starts (a user who may not write there would see "Unable to write to
# plugin cache" at every start). They are rebuilt whenever the plugin module changes.
PLUGIN_CACHE := twisted/plugins/dropin.cache

$(STAMP): $(BIN)/python setup.cfg pyproject.toml
	$(BIN)/pip install --quiet -e '.[test]' --config-settings editable_mode=compat
	$(BIN)/python -m atollon_mail.plugincache
	touch $(STAMP)

$(PLUGIN_CACHE): twisted/plugins/atollon_mail_plugin.py $(STAMP)
	$(BIN)/python -m atollon_mail.plugincache
	touch $(PLUGIN_CACHE)

install: $(STAMP) $(PLUGIN_CACHE)

# ARGS: more options for the appliance, e.g. make run ARGS="--smtp tcp:2526 --web tcp:8081"
run: install
	$(BIN)/twistd --nodaemon --pidfile= atollon-mail --config $(CONFIG) $(ARGS)

# $(call install-missing,PACKAGES,WHO): each package whose command is missing, with apt-get
# as root; otherwise (or when that fails) says so, and that WHO that use it are skipped.
# A package is named alone when its command has its name, else as PACKAGE:COMMAND.
define install-missing
@missing=""; for spec in $(1); do package=$${spec%%:*}; tool=$${spec#*:}; \
	  command -v $$tool >/dev/null || missing="$$missing $$package"; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  export DEBIAN_FRONTEND=noninteractive; \
	  (apt-get update -qq && apt-get install -y -qq $$missing >/dev/null) \
	    || echo "could not install$$missing: $(2) that use it are skipped"; \
	else echo "not installing$$missing (needs root and apt-get): $(2) that use it are skipped"; fi
endef

system-packages:
	$(call install-missing,$(SYSTEM_PACKAGES),the tests)

# The inbound benchmark's spam filter: rspamd with its redis-server (Postfix, the
# reference peer, is installed by peer-postfix itself), and Dovecot's IMAP server, the
# IMAP benchmark's reference (bench/imap.py starts its own, never the system service).
BENCH_PACKAGES := rspamd redis-server dovecot-imapd:/usr/lib/dovecot/imap

bench-packages:
	$(call install-missing,$(BENCH_PACKAGES),the benchmarks)

# The tests run in one process per core (pytest-xdist): most of their time is spent
# waiting on real peers (twistd, chromium, rspamd, PostgreSQL), and on the 2-core CI
# machine two workers took the suite from 34 to 12 minutes. PYTEST_WORKERS=0 runs them
# in this process (one test, a debugger).
PYTEST_WORKERS ?= auto

test: install system-packages
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) $(PYTEST_ARGS)

# Inbound throughput of one and of two nodes on one PostgreSQL (fresh databases there).
BENCH_POSTGRESQL ?= postgresql://postgres@127.0.0.1:5432/postgres

bench: install bench-packages
	cd bench && ../$(BIN)/python inbound.py && ../$(BIN)/python relay.py && ../$(BIN)/python web.py \
	  && ../$(BIN)/python massmail.py && ../$(BIN)/python search.py && ../$(BIN)/python imap.py \
	  && ../$(BIN)/python inbound.py --nodes $(BENCH_POSTGRESQL)

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
