# Two commands do all setup on a fresh machine: `make test` and `make demo`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test demo install bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

# The main job: Jacot et al. 2018 Figs. 1-3 and Lee et al. 2019's linearisation, figures + metrics + reports in out/
demo: $(STAMP)
	$(VENV)/bin/ntkit reproduce all --quick --out out/

bench: $(STAMP)
	$(PY) benchmarks/analytic_kernel.py
	$(PY) benchmarks/quadrature_kernels.py
	$(PY) benchmarks/threads.py
	$(PY) benchmarks/empirical_ntk.py --skip-slow
	$(PY) benchmarks/dynamics.py
	$(PY) benchmarks/tabular.py
	$(PY) benchmarks/spatial_kernels.py
	$(PY) benchmarks/image_kernels.py

clean:
	rm -rf $(VENV) out
