# The two set-up commands of the README: `make demo` and `make test`.
# Both create .venv on first use (only Python 3.11 is needed on the machine).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin

$(BIN)/tapfinger: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $@

.PHONY: venv demo test bench
venv: $(BIN)/tapfinger

demo: venv
	$(BIN)/tapfinger demo --out results/demo

test: venv
	$(BIN)/python -m pytest -x

bench: venv
	$(BIN)/python scripts/bench_env.py
