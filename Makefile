# psbench: two commands do all the set-up on a fresh machine with Python 3.11.
#   make demo   create .venv, install, generate the synthetic set, pretrain the tiny CLIP, run the benchmark
#   make test   create/update .venv and run the test suite (what CI runs)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PSBENCH := $(VENV)/bin/psbench
DATA ?= data/synthetic
RUNS ?= runs/demo

.PHONY: install test demo lint clean-demo

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed

test: install
	@$(PY) -m pytest -q; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi; exit $$rc

lint: install
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

demo: install
	$(PSBENCH) data synth --out $(DATA)
	$(PSBENCH) data pretrain-clip --root $(DATA)
	$(PSBENCH) run --method meanpool --dataset synthetic --data-root $(DATA) --runs-dir $(RUNS)/zeroshot --set train.epochs=0
	$(PSBENCH) run --method meanpool --dataset synthetic --data-root $(DATA) --runs-dir $(RUNS)/trained
	$(PSBENCH) table $(RUNS)
