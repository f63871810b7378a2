# Single entry point: every target installs what it needs into .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: serve bench soak protos install data test lint train-sentiment compare-sentiment train-forecast train-translation models check-models clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[train,dev]'
	$(PY) -m protos.generate
	touch $(STAMP)

install: $(STAMP)

data: $(STAMP)
	$(PY) -m training.fetch_data

test: data
	$(PY) -m ruff check .
	$(PY) -m pytest -q

lint: $(STAMP)
	$(PY) -m ruff check .

train-sentiment: data
	$(PY) -m training sentiment --out runs/sentiment

compare-sentiment: data
	$(PY) -m training.compare_cells --out runs/compare

train-forecast: data
	$(PY) -m training forecast --out runs/forecast

train-translation: data
	$(PY) -m training translation --out runs/translation

# Train with the full settings and export every model into the shipped repository, models/.
# Each export runs in its own process (see export/__main__.py).
models: train-sentiment train-forecast train-translation
	$(PY) -m export sentiment --checkpoint runs/sentiment/model.pt --out models
	$(PY) -m export forecast --checkpoint runs/forecast/model.pt --out models
	$(PY) -m export translation --checkpoint runs/translation/model.pt --out models

# Score the shipped ONNX models on their test splits (the reference runtime, evaluate/: no torch).
check-models: data
	$(PY) -m evaluate models

# Regenerate the gRPC code (protos/seqserve/v1/, git-ignored) after editing protos/.
protos: $(STAMP)
	$(PY) -m protos.generate

# The server on the shipped models: gRPC on localhost:50051, Prometheus metrics on localhost:9100.
serve: $(STAMP)
	$(PY) -m protos.generate
	$(PY) -m server --models models --port 50051 --metrics-port 9100

# The long soak (tests/test_soak.py; the suite runs 64 streams for 20 s): 256 mixed Translate and StreamSentiment
# streams for 10 minutes against python -m server; every stream equals its solo run, gauges back to 0, RSS bounded.
soak: $(STAMP)
	SEQSERVE_SOAK_STREAMS=256 SEQSERVE_SOAK_SECONDS=600 $(PY) -m pytest -q -s tests/test_soak.py

# Load benchmark: the server against in-process ONNX Runtime, max_batch=1 and PyTorch loops (bench/RESULTS.md).
bench: data
	$(PY) -m protos.generate
	$(PY) -m bench

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
