# ticketx: `make quickstart` runs a short ticket search on MNIST, `make test` runs the tests.
# Both create the virtual environment in .venv when it is missing (core + every plugin, editable).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.ticketx-installed
PLUGINS := plugins/vision plugins/nlp plugins/rl

# Datasets: $TICKETX_DATA when set, else ../shared/data beside this checkout when it exists,
# else ticketx's cache folder (torchvision downloads there when the network is reachable).
ifeq ($(TICKETX_DATA),)
ifneq ($(wildcard ../shared/data),)
export TICKETX_DATA := $(abspath ../shared/data)
endif
endif

.PHONY: install quickstart test test-slow test-all faults bench clean-venv

install: $(STAMP)

$(STAMP): pyproject.toml $(addsuffix /pyproject.toml,$(PLUGINS))
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e ".[test]" $(addprefix -e ,$(PLUGINS))
	touch $(STAMP)

quickstart: $(STAMP)
	$(BIN)/ticketx find recipes/quickstart.toml

test: $(STAMP)
	$(BIN)/python -m pytest -m "not slow"

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow

test-all: $(STAMP)
	$(BIN)/python -m pytest

# kill -9 at 25 moments, 1,000 hostile tickets, a dying MLflow server, a full disk, bad recipes (minutes; see
# docs/RELIABILITY.md). tests/faults is collected only with TICKETX_FAULTS=1, so `make test` never runs it.
faults: $(STAMP)
	TICKETX_FAULTS=1 $(BIN)/python -m pytest tests/faults -p no:cacheprovider -q -s

bench: $(STAMP)
	$(BIN)/python benchmarks/throughput.py

clean-venv:
	rm -rf $(VENV)
