# Two commands do everything from a fresh clone (as root on Debian 12):
#   make demo   - build, boot a QEMU guest on a sample image served by dataplane, verify I/O
#   make test   - build and run the whole test suite, real-guest tests included
#                 (make test PYTEST_ARGS='-k metrics -x' passes arguments to pytest)
#   make check  - the fast loop: lint and every test that boots no guest, starts no
#                 remote server and is not marked slow (pytest markers, pyproject.toml)
PYTHON ?= python3
PYTEST_ARGS ?=
CHECK_MARKERS := not guest and not remote and not slow
# make check's tests are independent: pytest-xdist runs them on every CPU (measured in
# README's Tests section); CHECK_JOBS=0 runs them in one process.
CHECK_JOBS ?= auto
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: deps venv demo test check lint clean

deps:
	bash scripts/install-deps.sh

# csrc/build.py builds what its folders hold: a file added or removed changes its folder.
CSRC := $(wildcard csrc/*.py csrc/*/ csrc/*/*.c csrc/*/*.h csrc/*/*.cdef)
$(STAMP): pyproject.toml setup.py $(CSRC)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

venv: deps $(STAMP)

demo: venv
	$(PY) examples/demo.py

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: venv lint
	$(VENV)/bin/pytest -v $(PYTEST_ARGS)

check: venv lint
	$(VENV)/bin/pytest -q -n $(CHECK_JOBS) -m '$(CHECK_MARKERS)' $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info dataplane/device/_c.*.so dataplane/guest/_c.*.so
