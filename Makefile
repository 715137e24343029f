# Two commands do all the set-up: `make demo` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: demo test

demo: $(VENV)/installed
	$(PY) reproduce.py

test: $(VENV)/installed
	$(PY) -m pytest -q tests

# Reinstalls whenever requirements.txt changes; pip's cache makes a repeat install quick.
$(VENV)/installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -r requirements.txt
	touch $@
