PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
LFW ?= ../shared/lfw-dev/images

.PHONY: install demo test lint

$(BIN)/facegrid: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(BIN)/facegrid

install: $(BIN)/facegrid
	./infra/install-browser.sh

# The main job on the embedded default: local Ray, local folder store.
demo: install
	$(BIN)/facegrid demo --images $(LFW)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: install lint
	$(BIN)/pytest -q
