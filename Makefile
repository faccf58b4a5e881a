# digitd: `make run` starts the daemon on ./inbox -> ./outbox; `make test` runs the suite.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install run test lint bench clean

install: $(STAMP)

# Re-installs whenever pyproject.toml changes; editable, so source edits need no reinstall.
# Everything: the daemon, the training extra (TensorFlow) and the dev tools.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,train]'
	touch $(STAMP)

run: install
	$(BIN)/digitd run --config config.yaml --inbox ./inbox --outbox ./outbox

# Two workers, each taking whole test files (a file's fixtures, e.g. a trained model, are
# built once): the training tests run beside the daemon tests instead of after them.
test: install
	$(BIN)/ruff check daemon tests bench
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

lint: install
	$(BIN)/ruff check daemon tests bench

clean:
	rm -rf $(VENV) build dist daemon/*.egg-info .pytest_cache .ruff_cache
