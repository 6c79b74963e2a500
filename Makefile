# georaster-quant developer commands.
#   make venv   create .venv and install the package with dev extras (CPU torch)
#   make demo   synthetic scenes -> train -> evaluate, into runs/demo
#   make test   run the test suite
#   make lint   ruff check

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: venv demo test lint clean

venv: $(STAMP)

# requirements-cpu.txt is installed first: it pins the CPU build of torch, so that
# resolving the package's torch range does not pull a multi-GB CUDA build.
$(STAMP): pyproject.toml requirements-cpu.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -r requirements-cpu.txt
	$(BIN)/pip install -e '.[dev]'
	touch $(STAMP)

demo: venv
	$(BIN)/georaster-quant demo --output runs/demo

test: venv
	$(BIN)/python -m pytest -q

lint: venv
	$(BIN)/ruff check .

clean:
	rm -rf build dist *.egg-info .pytest_cache .hypothesis .ruff_cache
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
