# The README's two first commands. Each bootstraps .venv when it is missing.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
DEMO_DIR ?= runs/demo

.PHONY: demo test test-fast bench clean-demo

$(BIN)/hiertrain: pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $@

demo: $(BIN)/hiertrain
	$(BIN)/hiertrain demo --out $(DEMO_DIR)

test: $(BIN)/hiertrain
	$(BIN)/python -m pytest -q

# The quick loop: everything but the tests marked slow (tests/test_tiers.py checks both targets).
test-fast: $(BIN)/hiertrain
	$(BIN)/python -m pytest -q -m "not slow"

bench: $(BIN)/hiertrain
	$(BIN)/python bench/eval_speed.py --repeats 5
	$(BIN)/python bench/probe_speed.py

clean-demo:
	rm -rf $(DEMO_DIR)
