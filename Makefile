# Two commands on a fresh machine: `make demo` (the main job) and `make test` (the test suite).
# Both create .venv on first use: torch's CPU wheel is pinned and installed first, because a bare
# `torch` requirement in a fresh environment resolves to the multi-GB CUDA build.
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_PIN ?= torch==2.13.0

.PHONY: demo test bench venv clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PIN)
	$(PY) -m pip install -q -e '.[test]'
	touch $@

demo: venv
	$(PY) -m paramgraph demo

test: venv
	$(PY) -m pytest -n 2 -q

bench: venv
	$(PY) scripts/bench_convert.py
	$(PY) scripts/bench_metanet.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
