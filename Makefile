# Dispatch: `make run` starts the whole stack, `make test` passes every test.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat setup.cfg pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: install migrate run test lint typecheck unit bench soak clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

JS_STAMP := tests/js/node_modules/.installed

$(JS_STAMP): tests/js/package.json tests/js/package-lock.json
	cd tests/js && npm ci --no-audit --no-fund --loglevel=error
	touch $(JS_STAMP)

# The reference apps (/try/driver, /try/customer): web/'s packages, then its build into
# web/dist/, which the API serves (api/pages.py).
WEB_DEPS := web/node_modules/.installed
WEB_BUILD := web/dist/.built

$(WEB_DEPS): web/package.json web/package-lock.json
	cd web && npm ci --no-audit --no-fund --loglevel=error
	touch $(WEB_DEPS)

$(WEB_BUILD): $(WEB_DEPS) web/build.mjs $(wildcard web/src/*)
	cd web && npm run --silent build
	touch $(WEB_BUILD)

install: $(STAMP)

migrate: install
	$(BIN)/dispatch migrate

run: install $(WEB_BUILD)
	bin/run-stack  # development settings, a kept secret in var/, migrate, then every process

lint: install
	$(BIN)/ruff check .

typecheck: install
	$(BIN)/mypy

# promtool (Prometheus's checker, for tests/test_ops_config.py) taken out of Debian's package
# without installing it: the package would start a Prometheus server.
PROMTOOL := $(VENV)/bin/promtool

$(PROMTOOL): | $(STAMP)
	@mkdir -p $(VENV)/prometheus-deb
	cd $(VENV)/prometheus-deb && { ls prometheus_*.deb >/dev/null 2>&1 || apt-get download prometheus \
		|| { apt-get update -qq && apt-get download prometheus; }; } \
		&& dpkg-deb -x prometheus_*.deb root && ln -sf "$$PWD/root/usr/bin/promtool" ../bin/promtool \
		|| echo "promtool unavailable: tests/test_ops_config.py skips its promtool checks"

# Test processes (pytest-xdist): the tests mostly wait on real processes, so four share two
# CPUs well; each has its own database, Redis prefix and RabbitMQ vhost (tests/conftest.py),
# and a module's tests stay in one process (--dist loadfile) with the processes its fixtures
# started.
TEST_PROCESSES ?= 4
PYTEST := $(BIN)/pytest -n $(TEST_PROCESSES) --dist loadfile

# Chromium for the browser test (tests/test_browser.py): Debian's package, driven by Playwright
# through executable_path; Playwright never downloads a browser of its own.
CHROMIUM := /usr/bin/chromium

$(CHROMIUM):
	apt-get install -y -qq chromium || { apt-get update -qq && apt-get install -y -qq chromium; } \
		|| { echo "tests/test_browser.py needs Debian's chromium: apt-get install chromium (as root)" >&2; exit 1; }

test: lint typecheck $(JS_STAMP) $(WEB_BUILD) $(PROMTOOL) $(CHROMIUM)
	$(PYTEST)
	TEST_BROKER=rabbitmq $(PYTEST) -q  # the worker tests on RabbitMQ, a vhost per test process (tests/conftest.py RABBITMQ_TESTS)
	TEST_DATABASE=sqlite $(PYTEST) -q  # the domain and API on make run's SQLite (tests/conftest.py)

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache web/node_modules web/dist tests/js/node_modules

bench: install
	@command -v h2load >/dev/null || { apt-get update -qq && apt-get install -y -qq nghttp2-client; } \
		|| echo "h2load (Debian package nghttp2-client) missing: the push floor is not measured"
	DISPATCH_ENV=development $(BIN)/python -m bench.run $(BENCH)

# The soak (bench/soak.py): 10 minutes of the whole system under load, checked for anything lost
# or leaking; SOAK_SECONDS=120 for a shorter try. Not part of `make test`.
soak: install
	DISPATCH_ENV=development $(BIN)/python -m bench.soak
