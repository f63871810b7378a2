# Single entry point: every target installs what it needs into .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install data test lint train-sentiment compare-sentiment train-forecast train-translate clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[train,dev]'
	touch $(STAMP)

install: $(STAMP)

data: $(STAMP)
	$(PY) -m training.fetch_data

test: data
	$(PY) -m ruff check .
	$(PY) -m pytest -q

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

train-sentiment: data
	$(PY) -m training sentiment --out runs/sentiment

compare-sentiment: data
	$(PY) -m training.compare_cells --out runs/compare

train-forecast: data
	$(PY) -m training forecast --out runs/forecast

train-translate: data
	$(PY) -m training translate --out runs/translate

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
