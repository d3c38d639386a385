# Quickstart targets: `make demo` (meta-train + eval on the Fashion-MNIST 8x8 that ships in
# the package, then a short summary) and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

$(BIN)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

.PHONY: install demo test test-fast bench
install: $(BIN)/.installed

demo: $(BIN)/.installed
	$(BIN)/python -m meta_train --preset quick --out runs/quick --resume-or-start
	$(BIN)/python -m meta_train --preset quick-sp --out runs/quick-sp --resume-or-start
	$(BIN)/python -m eval --suite quick --lo runs/quick --lo runs/quick-sp --out runs/quick-eval
	$(BIN)/python -m eval.summary runs/quick-eval

# two pytest workers (pytest-xdist), one per core of the 2-core target machine; a test file
# stays on one worker, so its module fixtures (a smoke meta-training, a suite run) run once
XDIST := -n 2 --dist loadfile

test: $(BIN)/.installed
	$(BIN)/python -m pytest $(XDIST) --durations=15

# the inner loop's tier: everything but the tests marked slow. Its time is mostly XLA
# compiles of small programs, so it compiles at LLVM optimization level 0 (about a third
# less compile time, measured: 5m37s -> 4m02s-4m42s); `make test` (CI) keeps XLA's defaults.
test-fast: $(BIN)/.installed
	XLA_FLAGS="$$XLA_FLAGS --xla_backend_optimization_level=0" \
		$(BIN)/python -m pytest $(XDIST) -m "not slow"

bench: $(BIN)/.installed
	$(BIN)/python -m eval.bench
