# psbench: two commands do all the set-up on a fresh machine with Python 3.11.
#   make demo   create .venv, install, generate the synthetic set, pretrain the tiny CLIP, run the whole
#               benchmark (all methods, ablations, 3 seeds; resumable), the efficiency sweep and the report
#   make test   create/update .venv and run the test suite (what CI runs)
#   make probe  the relation probe: a second synthetic protocol for cross-frame interaction (~65 min)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PSBENCH := $(VENV)/bin/psbench
DATA ?= data/synthetic
RUNS ?= runs/synthetic
REPORT ?= reports/synthetic

.PHONY: install test test-fast test-kernels demo lint probe

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed

test: install
	@$(PY) -m pytest -q; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi; exit $$rc

# The inner loop: everything but the tests marked slow (process-spawning, end-to-end) and gpu, on two
# pytest-xdist workers with one torch thread each (under a minute on 2 cores)
test-fast: install
	@OMP_NUM_THREADS=1 $(PY) -m pytest -q -p no:cacheprovider -n 2 -m "not slow and not gpu"

# The numerics-sensitive tests again under other kernel selections of this same CPU, so that one
# developer's CPU is never the only one tested: torch's elementwise kernels (default, AVX2) and
# BLAS / oneDNN without AVX-512 or AMX.
NUMERICS_TESTS := tests/test_engine.py tests/test_prefilter.py tests/test_metrics.py tests/test_cpu_linear.py \
	tests/test_xpool.py
KERNEL_SELECTIONS := ATEN_CPU_CAPABILITY=default ATEN_CPU_CAPABILITY=avx2 \
	"MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2"

test-kernels: install
	@for sel in $(KERNEL_SELECTIONS); do \
		echo "== numerics tests under $$sel: torch kernels $$(env $$sel $(PY) -c "import torch; print(torch.backends.cpu.get_cpu_capability())")"; \
		env $$sel $(PY) -m pytest -q -p no:cacheprovider $(NUMERICS_TESTS) || exit 1; \
	done

# ruff, then the layers contract of pyproject.toml ([tool.importlinter]): no module imports a layer above its own
lint: install
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check . && $(VENV)/bin/lint-imports

demo: install
	$(PSBENCH) data synth --out $(DATA)
	$(PSBENCH) data pretrain-clip --root $(DATA)
	$(PSBENCH) bench --protocol synthetic --data-root $(DATA) --runs-dir $(RUNS)
	$(MAKE) $(REPORT)/efficiency/efficiency.json
	$(PSBENCH) report $(RUNS) --protocol synthetic --efficiency $(REPORT)/efficiency --efficiency reports/efficiency_gpu_h200 --out $(REPORT)

# The relation probe (protocols/README.md, "relation probe"): its own data and tiny CLIP, 3 seeds of every
# method under the default kernels and, in parallel (one torch thread each), the criterion's methods under
# ATEN_CPU_CAPABILITY=avx2; resumable. About 65 min on 2 cores (62 min for the 37 runs, 2026-12-03).
PROBE_DATA ?= data/relation-probe
PROBE_RUNS ?= runs/relation-probe
PROBE_REPORT ?= reports/relation-probe
PROBE_METHODS := promptswitch,promptswitch-noswitch,meanpool,xpool,tokenshift,videoproxy,random
PROBE_AVX2_METHODS := promptswitch,promptswitch-noswitch,meanpool,xpool,random
PROBE_BENCH := $(PSBENCH) bench --protocol relation-probe --data-root $(PROBE_DATA)

probe: install
	$(PSBENCH) data probe --out $(PROBE_DATA)
	$(PSBENCH) data pretrain-clip --root $(PROBE_DATA)
	mkdir -p $(dir $(PROBE_RUNS))
	OMP_NUM_THREADS=1 ATEN_CPU_CAPABILITY=avx2 $(PROBE_BENCH) --methods $(PROBE_AVX2_METHODS) --no-zero-shot \
		--runs-dir $(PROBE_RUNS)-avx2 > $(PROBE_RUNS)-avx2.log 2>&1 & avx2=$$!; \
	OMP_NUM_THREADS=1 $(PROBE_BENCH) --methods $(PROBE_METHODS) --runs-dir $(PROBE_RUNS); rc=$$?; \
	wait $$avx2 || { echo "the avx2 benchmark failed: see $(PROBE_RUNS)-avx2.log" >&2; exit 1; }; exit $$rc
	$(PSBENCH) report $(PROBE_RUNS) --protocol relation-probe --cross-machine $(PROBE_RUNS)-avx2 --out $(PROBE_REPORT)

# The efficiency sweep (ViT-B/32 shapes, random embeddings, 1k..100k videos) is kept once measured.
$(REPORT)/efficiency/efficiency.json:
	$(PSBENCH) efficiency --sweep --gallery 100000 --budget-s 20 --threads 2 --out $(REPORT)/efficiency
