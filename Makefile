# Two commands do all the set-up: `make demo` and `make test`. Both create the venv when missing;
# `make setup` creates it alone.
# PYTHON picks the interpreter (make test PYTHON=python3.12), VENV the venv's folder.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

# PYTHON's version, and the one the venv was made with (its stamp file holds it).
WANT := $(shell $(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)
HAVE := $(shell cat $(VENV)/installed 2>/dev/null)

.PHONY: setup demo test FORCE

setup: $(VENV)/installed

demo: $(VENV)/installed
	$(PY) reproduce.py

test: $(VENV)/installed
	$(PY) -m pytest -q tests

# (Re)built when missing, when requirements.txt changes, or when PYTHON is another version than
# the venv's: the venv is then replaced. tools/check_python.py first stops a too-old Python, or
# one without the venv module, with one line. pip's cache makes a repeat install quick.
$(VENV)/installed: requirements.txt $(if $(filter $(WANT),$(HAVE)),,FORCE)
	@$(PYTHON) tools/check_python.py $(PYTHON)
	@if [ -n "$(HAVE)" ] && [ "$(HAVE)" != "$(WANT)" ]; then echo "$(VENV) has Python $(HAVE), PYTHON is $(WANT): replacing it"; fi
	$(PYTHON) -m venv --clear $(VENV)
	$(PY) -m pip install -r requirements.txt
	$(PY) -c 'import sys; print("%d.%d" % sys.version_info[:2])' > $@
