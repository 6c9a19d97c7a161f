# Two commands a fresh machine needs: `make test` and `make serve`.
# Both create .venv on first use. constraints.txt pins the full dependency closure and keeps pip on the
# CPU build of torch.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: test serve index lint typecheck unit fuzz bench soak clean image image-test

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest

test: lint typecheck unit

# The default knowledge index (knowledge/default_index.py): built once into .cache/knowledge/default-<hash16>/
# from the `knowledge` extra's packages, found there afterwards (about half a second). `saver index default`
# prints the folder; serve hands it to the service unless SAVER_KNOWLEDGE_INDEX is already set.
index: $(STAMP)
	$(BIN)/saver index default

serve: $(STAMP) index
	SAVER_KNOWLEDGE_INDEX="$${SAVER_KNOWLEDGE_INDEX:-$$($(BIN)/saver index default 2>/dev/null)}" $(BIN)/saver serve

# Longer runs, kept out of `make test`.
fuzz: $(STAMP)
	SAVER_FUZZ_EXAMPLES=2000 SAVER_FUZZ_RANDOM=1 $(BIN)/pytest tests/hardening/test_fuzz.py -p no:cacheprovider

bench: $(STAMP)
	$(BIN)/saver bench --duration 300 --concurrency 4 --modes text,always,saver --out runs/bench

# The real default models (not the fake) for 10 minutes; fails on any 5xx, transport error, RSS growth
# over 5 % after the warm-up, growing file descriptors or an unbounded screen cache.
soak: $(STAMP)
	nice $(BIN)/python -m bench.soak --duration 600 --real-model --warmup 60 --out runs/soak

# The CPU image, tagged saver:cpu, with docker, podman or buildah (deploy/scripts/build_image.py).
image: $(STAMP)
	$(BIN)/python deploy/scripts/build_image.py

# Build it from a clean clone of HEAD and serve it for real (tests/deploy/test_image.py; minutes).
image-test: $(STAMP)
	bash deploy/scripts/ensure_image_tools.sh
	bash deploy/scripts/ensure_prometheus.sh
	$(BIN)/pytest -m image tests/deploy/test_image.py -p no:cacheprovider
	@cat runs/image-test/report.json

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
