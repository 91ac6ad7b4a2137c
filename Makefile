# Two commands do all set-up: `make demo` (the full culture analysis on the bundled organism)
# and `make test`. Each creates or reuses .venv and installs exactly what is needed.
# A user with CUDA overrides the torch wheel: make demo TORCH_SPEC="torch==2.13.0 --index-url ..."
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
REPORT ?= report
export PYTHONHASHSEED := 0

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(PY) -m circuits.cli analyze --out $(REPORT)

demo-quick: $(VENV)/.installed
	$(PY) -m circuits.cli analyze --quick --out $(REPORT)

test: $(VENV)/.installed
	$(PY) -m pytest -q -n 2 --dist loadfile

# bench_realsize.py builds and runs full-size pipelines (about an hour on 2 CPU cores): its own target.
bench: $(VENV)/.installed
	for f in benchmarks/bench_*.py; do [ $$f = benchmarks/bench_realsize.py ] || $(PY) $$f || exit 1; done

bench-realsize: $(VENV)/.installed
	$(PY) benchmarks/bench_realsize.py

# The SAE-dependent rows of the main job over SAE seeds 0 1 2 (seed 0 read from $(REPORT)/: run make demo first;
# about 10 min per extra seed on 2 idle cores) -> $(REPORT)/spread/spread.md
spread: $(VENV)/.installed
	$(PY) -m circuits.cli spread --main $(REPORT) --out $(REPORT)/spread --seeds 0 1 2

# The test suite under other CPU kernels (ATen's vectorised kernels off, MKL/oneDNN on older ISAs): reading a
# site must stay bit-exact and no test may depend on one CPU's float rounding.
KERNELS_ENV := ATEN_CPU_CAPABILITY=default MKL_ENABLE_INSTRUCTIONS=SSE4_2 ONEDNN_MAX_CPU_ISA=SSE41
# TESTS= names a subset (CI runs the bit-exactness tests this way after the full suite).
TESTS ?=
test-kernels: $(VENV)/.installed
	$(KERNELS_ENV) $(PY) -m pytest -q -n 2 --dist loadfile $(TESTS)

# The quick analysis under those kernels vs the default ones: SAE-free rows identical, SAE rows within the spread.
check-kernels: $(VENV)/.installed
	$(PY) benchmarks/check_kernels.py --out runs/kernels

.PHONY: install demo demo-quick test test-kernels bench bench-realsize spread check-kernels
