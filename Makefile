# The README's two first commands. Each bootstraps .venv when it is missing.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
DEMO_DIR ?= runs/demo

.PHONY: demo test bench clean-demo

$(BIN)/hiertrain: pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $@

demo: $(BIN)/hiertrain
	$(BIN)/hiertrain demo --out $(DEMO_DIR)

test: $(BIN)/hiertrain
	$(BIN)/python -m pytest -q

bench: $(BIN)/hiertrain
	$(BIN)/python bench/eval_speed.py --repeats 5
	$(BIN)/python bench/probe_speed.py

clean-demo:
	rm -rf $(DEMO_DIR)
