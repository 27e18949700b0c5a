# Two commands on a fresh machine:
#   make demo   install into .venv, run the bundled simulators and the daemon for a simulated day
#   make test   install what the tests need (Python and Debian packages) and run them
#   make install-service   (as root) cemsd as a systemd service: scripts/install
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: demo test test-long lint bench install install-service clean

$(BIN)/cemsd: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.test-deps: $(BIN)/cemsd
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

install: $(BIN)/cemsd

# The service on an edge box (as root): venv in /opt/cemsd, user, /etc/cemsd, the unit.
install-service:
	scripts/install

demo: $(BIN)/cemsd
	scripts/install-system-deps demo
	$(BIN)/cemsd --log-level WARNING demo

test: $(VENV)/.test-deps
	scripts/install-system-deps test
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/pytest -q -p no:cacheprovider -n auto --dist loadfile -m "not long"

# The long tier (a simulated month to its report and bundle): CI runs it after `make test`.
test-long: $(VENV)/.test-deps
	scripts/install-system-deps test
	$(BIN)/pytest -q -p no:cacheprovider -n auto --dist loadfile -m long

lint: $(VENV)/.test-deps
	$(BIN)/ruff check .
	$(BIN)/lint-imports

# Every bench/bench_*.py in turn (figures and the machine in docs/PERFORMANCE.md).
bench: $(VENV)/.test-deps
	scripts/install-system-deps test
	$(BIN)/pip install --quiet -e '.[bench]'
	for script in bench/bench_*.py; do echo "== $$script"; $(BIN)/python $$script || exit 1; done

clean:
	rm -rf $(VENV) .demo test-output
