# `make run` and `make test` both work on a fresh machine: they create .venv,
# install the project (and, for tests, the Debian clients the tests drive).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: run test venv sysdeps bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,bench]'
	touch $(STAMP)

venv: $(STAMP)

# Debian packages used by the real-client tests (fio, nbdkit, nbdinfo/nbdcopy, qemu-img).
sysdeps:
	sh tools/install-sysdeps.sh

run: venv
	$(VENV)/bin/ringstack bench ipc --quick

test: venv sysdeps
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) build *.egg-info
