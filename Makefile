# Two commands a fresh machine needs: `make test` and `make serve`.
# Both create .venv on first use. constraints.txt pins the full dependency closure and keeps pip on the
# CPU build of torch.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: test serve lint typecheck unit clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest

test: lint typecheck unit

serve: $(STAMP)
	$(BIN)/saver serve

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
