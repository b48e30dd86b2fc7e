# flowctl: `make train` trains the default run from a fresh clone, `make test` runs the tests.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# Which torch to install when the venv has none. With an NVIDIA driver we take the default
# (CUDA) wheel; without one the CPU build, so a CPU box does not pull gigabytes of CUDA.
# Override for another build, e.g. make install TORCH="torch==2.5.1".
TORCH  ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo "torch>=2.4" || echo "torch==2.13.0")
ARGS   ?=

.PHONY: install train test test-fast test-install lint bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -c "import torch" 2>/dev/null \
		&& echo "torch already installed: $$($(BIN)/python -c 'import torch; print(torch.__version__)')" \
		|| $(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[dev]"
	@touch $@

train: install
	$(BIN)/flowctl train --overwrite $(ARGS)

test: install
	$(BIN)/python -m pytest -q -n 2 -m "not install" $(ARGS)

# The inner loop: everything but the long real-process tests (marked `slow`).
test-fast: install
	$(BIN)/python -m pytest -q -n 2 -m "not slow and not install" $(ARGS)

# Every install mode (pip -e, pip, make, uv) in fresh venvs: minutes; CI runs it.
test-install: install
	$(BIN)/python -m pytest -q -n 2 -m install $(ARGS)

lint: install
	$(BIN)/ruff check study tests scripts

bench: install
	$(BIN)/python scripts/bench_trainer.py
	$(BIN)/python scripts/bench_cli.py
	$(BIN)/python scripts/bench_ui.py
	$(BIN)/python scripts/bench_sweep.py
	$(BIN)/python scripts/bench_data.py
	$(BIN)/python scripts/bench_ot.py
	$(BIN)/python scripts/bench_ot_solvers.py
	$(BIN)/python scripts/bench_ddp.py
	$(BIN)/python scripts/bench_precision.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
