# Two commands on a fresh machine with python3 and make:
#   make run    set up, migrate, load examples and serve on http://127.0.0.1:8000
#   make test   set up and run the whole test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev
RUN_STAMP := $(VENV)/.installed-server
PIP := $(BIN)/python -m pip install --quiet --disable-pip-version-check
# Editable installs in compat mode (a .pth file naming the source directory): mypy
# cannot follow the import hook of setuptools' default (PEP 660) editable installs.
EDITABLE := --config-settings editable_mode=compat
HOST ?= 127.0.0.1
PORT ?= 8000
# `make run DEMO=false`: no simulated demo-shop traffic next to the server.
DEMO ?= true

.PHONY: install run test lint format bench screenshots stop-redis clean

# `make run` installs only what serving needs; `make test` adds the dev tools.
$(RUN_STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) $(EDITABLE) -e '.[server]'
	touch $(RUN_STAMP)

$(STAMP): $(RUN_STAMP)
	$(PIP) $(EDITABLE) -e '.[dev,bench]'
	touch $(STAMP)

install: $(STAMP)

# A local run: DEBUG on (a development secret key) unless the environment says otherwise.
# Daphne and the demo traffic run as children of one shell: Ctrl-C, or a signal to
# make or that shell, stops both, and the shell waits for them before exiting.
run: export DEBUG ?= true
run: $(RUN_STAMP)
	$(BIN)/python manage.py migrate --noinput -v0
	$(BIN)/python manage.py ensure_demo_admin
	$(BIN)/python manage.py load_example_policies
	@echo "Serving on http://$(HOST):$(PORT)/ (log in with the demo administrator above)"
	@demo=; daphne=; stopping=; \
	trap 'stopping=1; kill $$daphne $$demo 2>/dev/null' INT TERM HUP; \
	if [ "$(DEMO)" = true ]; then \
		echo "Demo traffic from demo-shop: http://$(HOST):$(PORT)/e/production/live/"; \
		$(BIN)/python manage.py demo_traffic & demo=$$!; \
	fi; \
	$(BIN)/daphne -b $(HOST) -p $(PORT) controlplane.asgi:application & daphne=$$!; \
	wait $$daphne; status=$$?; \
	if kill -0 $$daphne 2>/dev/null; then wait $$daphne; status=$$?; fi; \
	if [ -n "$$demo" ]; then [ -n "$$stopping" ] || kill $$demo 2>/dev/null; wait $$demo; fi; \
	exit $$status

test: $(STAMP)
	$(BIN)/pytest

# The client library again, on the lowest versions it declares (redis-py and
# hiredis pinned by .ci/constraints-min.txt), in a venv of its own: CI's last
# pass. It uses the machine's Redis (REDIS_URL) like `make test`; the Redis
# Cluster runs stay in `make test`.
MIN_VENV := var/venv-min
MIN_CONSTRAINTS := .ci/constraints-min.txt
MIN_STAMP := $(MIN_VENV)/.installed-min

$(MIN_STAMP): pyproject.toml $(MIN_CONSTRAINTS)
	test -x $(MIN_VENV)/bin/python || $(PYTHON) -m venv $(MIN_VENV)
	$(MIN_VENV)/bin/python -m pip install --quiet --disable-pip-version-check \
		$(EDITABLE) -e '.[dev]' -c $(MIN_CONSTRAINTS)
	touch $(MIN_STAMP)

.PHONY: test-min-deps
test-min-deps: $(MIN_STAMP)
	CONTROLPLANE_TEST_CLUSTER=false CONTROLPLANE_TEST_MIN_DEPS=$(MIN_CONSTRAINTS) \
		$(MIN_VENV)/bin/pytest tests/client tests/protocol

# The pictures of docs/tour.md and the README, taken by the browser journeys.
screenshots: $(STAMP)
	SCREENSHOTS=docs/tour $(BIN)/pytest -p no:cacheprovider \
		tests/browser/test_first_minute.py tests/browser/test_live_incident.py \
		tests/browser/test_conflict.py tests/browser/test_change_requests.py \
		tests/browser/test_users.py tests/browser/test_webhooks.py

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	SECRET_KEY=type-checking $(BIN)/mypy controlplane tests bench

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(STAMP)
	$(BIN)/python -m bench

# The embedded Redis server outlives `make run` so the next run starts fast.
stop-redis:
	-test -S var/redis.sock && $(BIN)/redis-cli -s var/redis.sock shutdown nosave

clean: stop-redis
	rm -rf $(VENV) $(MIN_VENV) var/controlplane.sqlite3 var/static
