# Two commands for learners: `make lab` and `make test`. Everything installs into ./.venv;
# nothing is registered outside this folder. `make help` lists the rest.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.course-installed
DOCS_STAMP := $(VENV)/.docs-installed
PORT ?= 8888
# Jupyter refuses to run as root (e.g. in a container) without --allow-root.
ROOT_FLAG := $(if $(filter 0,$(shell id -u)),--allow-root)
# Extra options for `jupyter lab`, e.g. LAB_ARGS="--no-browser" (the browser test passes a token).
LAB_ARGS ?=

.PHONY: help install lab test labs check-labs profile clean-artifacts reference-model reference-lm grade install-instructor test-portable test-isa site install-docs

help:
	@echo "make lab              install if needed, then open JupyterLab on 00_setup_check, the course map (Ctrl-C twice to stop)"
	@echo "make test             install if needed, then run the README's test command: pytest --nbval"
	@echo "make test-portable    the numerically sensitive notebooks, strict nbval, kernel on an emulated CPU (qemu-user;"
	@echo "                      slow, see docs/portability.md); PORTABLE_ARGS=\"--cold notebooks/05_x.ipynb\" for options"
	@echo "make test-isa         the same notebooks natively, PyTorch/oneDNN forced one instruction set down"
	@echo "make install          only create .venv and install the pinned packages (then .venv/bin/jupyter lab, or pick"
	@echo "                      .venv/bin/python as the kernel in your editor)"
	@echo "make labs             regenerate labs/ from solutions/ (refuses to overwrite a lab you edited or ran;"
	@echo "                      FORCE=1 overwrites it after a backup in labs/.backup/)"
	@echo "make check-labs       fail if labs/ is stale or leaks solution code"
	@echo "make profile          wall time and peak memory of every notebook, warm and cold cache -> docs/profile*.md"
	@echo "make clean-artifacts  delete generated models in artifacts/ (do this after updating the course)"
	@echo "make site             the course website in build/site/ (open build/site/index.html): every lecture, lab,"
	@echo "                      solution and doc with its committed outputs, nothing executed; SITE_ARGS=--clean rebuilds all"
	@echo "make install-docs     only add the website tools (requirements-docs.txt: Sphinx, myst-nb) to .venv"
	@echo "make install-instructor  add nbgrader (requirements-instructor.txt) for classes that grade with it"
	@echo "make grade SUBMISSIONS=dir [LAB=lab05]  instructors: run every submitted lab, write grade tables to grades/"
	@echo "make reference-model  maintainers: retrain the shipped digits model (deploykit/assets/) and update its hash"
	@echo "make reference-lm     maintainers: retrain the shipped language model (deploykit/assets/pydoc_lm/, minutes)"

$(STAMP): requirements.txt requirements-lock.txt pyproject.toml
	@# Verified Pythons: the same list as deploykit/setup_check.py VERIFIED_PYTHONS (a test checks they agree).
	@$(PYTHON) -c 'import sys; v = sys.version_info[:2]; print(f"Using Python {v[0]}.{v[1]} at {sys.executable}"); sys.exit("the course needs Python 3.11 or newer" if v < (3, 11) else 0 if v in ((3, 11), (3, 12)) else print("warning: this Python is not verified for the course (verified: 3.11, 3.12); notebook 00 will say [WARN]") or 0)'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	$(BIN)/python -m pip install --quiet -r requirements.txt -c requirements-lock.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

lab: install
	ORT_DISABLE_TELEMETRY=1 $(BIN)/jupyter lab --ServerApp.ip=127.0.0.1 --ServerApp.port=$(PORT) --ServerApp.root_dir=. notebooks/00_setup_check.ipynb $(ROOT_FLAG) $(LAB_ARGS)

test: install
	$(BIN)/python -m pytest --nbval

test-portable: install
	$(BIN)/python tools/portable_check.py $(PORTABLE_ARGS)

test-isa: install
	$(BIN)/python tools/portable_check.py --native-isa $(PORTABLE_ARGS)

labs: install
	$(BIN)/python tools/make_labs.py $(if $(FORCE),--force)

check-labs: install
	$(BIN)/python tools/make_labs.py --check

profile: install
	$(BIN)/python tools/profile_notebooks.py --output docs/profile.md
	$(BIN)/python tools/profile_notebooks.py --cold --output docs/profile-cold.md

clean-artifacts:
	rm -rf artifacts

reference-model: install
	$(BIN)/python tools/make_reference_model.py --force

reference-lm: install
	$(BIN)/python tools/quiet_machine.py -- $(BIN)/python tools/make_language_model.py --force

grade: install
	@test -n "$(SUBMISSIONS)" || (echo "usage: make grade SUBMISSIONS=path/to/submissions [LAB=lab05]"; exit 2)
	$(BIN)/python tools/grade.py "$(SUBMISSIONS)" $(if $(LAB),--lab $(LAB))

# The website needs only its own tools (not PyTorch & co.): `make site` works without `make install`.
$(DOCS_STAMP): requirements-docs.txt requirements-lock.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	$(BIN)/python -m pip install --quiet -r requirements-docs.txt -c requirements-lock.txt
	touch $(DOCS_STAMP)

install-docs: $(DOCS_STAMP)

site: install-docs
	$(BIN)/python tools/build_site.py $(SITE_ARGS)

install-instructor: install
	$(BIN)/python -m pip install --quiet -r requirements-instructor.txt -c requirements-lock.txt
