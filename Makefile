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
	$(PY) -m pip install -q -e '.[test,bench,plot]'
	touch $(STAMP)

venv: $(STAMP)

# Debian packages used by the real-client tests (fio, nbdkit, nbdinfo/nbdcopy, qemu-img).
sysdeps:
	sh tools/install-sysdeps.sh

# bdevperf on the embedded default (one malloc bdev), every core of this machine driving it (-C).
run: venv
	$(VENV)/bin/ringstack bdevperf -m $$($(PY) -c 'import os; print(hex(sum(1 << c for c in os.sched_getaffinity(0))))') -C -q 32 -o 4096 -w randread -t 5

test: venv sysdeps
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) build *.egg-info
