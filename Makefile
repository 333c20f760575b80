# The two set-up commands of the README:
#   make run    install into .venv, then run the whole staged workflow on the built-in sample catalog
#   make test   install into .venv (with pytest), then run the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install run test test-fast clean

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first and exact: 2.13.0 is the CPU wheel here; nothing later may pull a CUDA build
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

install: $(STAMP)

run: install
	PATH="$(abspath $(BIN)):$$PATH" bash run_workflow.sh $(ARGS)

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: install
	$(BIN)/python -m pytest -m "not slow and not realdata" $(PYTEST_ARGS)

clean:
	rm -rf data checkpoints .pytest_cache
