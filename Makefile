# Set-up and run, on a fresh Debian machine or an existing one: `make demo`, `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SYSLIBS := libopus0 libportaudio2

.PHONY: demo test lint sys-deps venv clean

demo: $(STAMP)
	$(BIN)/callpeer demo

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

# System libraries: installed with apt-get when we are root on Debian and they are missing;
# otherwise we say what is missing (callpeer still runs; it names what it cannot use).
sys-deps:
	@./scripts/sys-deps.sh $(SYSLIBS)

$(STAMP): pyproject.toml | sys-deps
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache
