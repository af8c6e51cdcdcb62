# The README's commands: `make run` and `make test` (and `make bench` for the figures).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CONFIG ?= etc/atollon-mail.ini
STAMP := $(VENV)/.installed

.PHONY: run test bench install lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Editable install in "compat" mode puts the project root on sys.path, which is how
# Twisted finds twisted/plugins/atollon_mail_plugin.py; the last step rebuilds the
# plugin cache (dropin.cache) so `twistd atollon-mail` works at once.
$(STAMP): $(BIN)/python setup.cfg pyproject.toml
	$(BIN)/pip install --quiet -e '.[test]' --config-settings editable_mode=compat
	$(BIN)/python -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/twistd --nodaemon --pidfile= atollon-mail --config $(CONFIG)

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
