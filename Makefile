# Single entry point: every target installs what it needs into .venv first: the runtime alone for
# `make serve`, the dev tools too for `make test-deploy`, training as well for everything else.
# Each install builds the package, which generates the gRPC code (setup.py).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
RUNTIME := $(VENV)/.runtime
DEV := $(VENV)/.dev
STAMP := $(VENV)/.installed
BUILD := pyproject.toml setup.py $(wildcard protos/seqserve/v1/*.proto)

.PHONY: serve bench soak replicas protos install data test lint image test-deploy train-sentiment compare-sentiment train-forecast train-translation train-translation-v2 train-translation-v3 models check-models clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(RUNTIME): $(BUILD) | $(PY)
	$(PY) -m pip install -q -e .
	touch $@

$(DEV): $(RUNTIME)
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

$(STAMP): $(DEV)
	$(PY) -m pip install -q -e '.[train,dev]'
	touch $@

install: $(STAMP)

data: $(STAMP)
	$(PY) -m training.fetch_data

test: data
	$(PY) -m ruff check .
	deploy/haproxy/install.sh
	$(PY) -m pytest -q

lint: $(STAMP)
	$(PY) -m ruff check .

train-sentiment: data
	$(PY) -m training sentiment --out runs/sentiment

compare-sentiment: data
	$(PY) -m training.compare_cells --out runs/compare

train-forecast: data
	$(PY) -m training forecast --workers 3 --out runs/forecast

train-translation: data
	$(PY) -m training translation --sources ding libreoffice_help gettext --out runs/translation

# Version 2: version 1 warm-started on all five sources (docs/translation.md, "Version 2").
train-translation-v2: data
	$(PY) -m training translation --init models/translation/1 --out runs/translation-v2 --lr 1e-3 \
		--batches-per-epoch 80 --valid-size 150 --patience 6 --epochs 8 --threads 1

# Version 3: version 2 continued to convergence (plateau halving down to lr 7.8e-6, stopped by patience after epoch 23;
# docs/translation.md, "Version 3").
train-translation-v3: data
	$(PY) -m training translation --init models/translation/2 --out runs/translation-v3 --lr 1e-3 \
		--batches-per-epoch 80 --valid-size 150 --patience 6 --epochs 60 --threads 1

# Train with the full settings and export every model into the shipped repository, models/.
# Each export runs in its own process (see export/__main__.py).
models: train-forecast train-translation train-translation-v2 train-translation-v3
	$(PY) -m training.sentiment_init models/sentiment/1 --out runs/sentiment-v1
	$(PY) -m export sentiment --checkpoint runs/sentiment-v1/model.pt --out models --version 2
	$(PY) -m export forecast --checkpoint runs/forecast/model.pt --out models --version 2
	$(PY) -m training.forecast_v3
	$(PY) -m training.forecast_v3 --score 1 --export models/forecast
	$(PY) -m export translation --checkpoint runs/translation/model.pt --out models
	$(PY) -m export translation --checkpoint runs/translation-v2/model.pt --out models --version 2
	$(PY) -m export translation --checkpoint runs/translation-v3/model.pt --out models --version 3

# Score the shipped ONNX models on their test splits (the reference runtime, evaluate/: no torch).
check-models: data
	$(PY) -m evaluate models

# Regenerate the gRPC code (protos/seqserve/v1/, git-ignored) after editing protos/.
protos: $(DEV)
	$(PY) -m protos.generate

# The server on the shipped models: gRPC on localhost:50051, Prometheus metrics on localhost:9100 (runtime only: no
# torch).
serve: $(RUNTIME)
	$(PY) -m server --models models --port 50051 --metrics-port 9100

# The long soak (tests/test_soak.py; the suite runs 64 streams for 20 s): 256 mixed Translate and StreamSentiment
# streams for 10 minutes against python -m server; every stream equals its solo run, gauges back to 0, RSS bounded.
soak: $(DEV)
	SEQSERVE_SOAK_STREAMS=256 SEQSERVE_SOAK_SECONDS=600 $(PY) -m pytest -q -s tests/test_soak.py

# Three replicas behind HAProxy (deploy/haproxy/haproxy.cfg, installed with apt-get when missing), 64 streams through
# it: SIGTERM one replica then SIGKILL another mid-stream, a rolling restart of every replica (no stream lost, each equal
# to its solo run), and the added latency of a resume, printed (tests/test_replicas.py; make test runs 16 streams).
replicas: data
	deploy/haproxy/install.sh
	SEQSERVE_REPLICA_STREAMS=64 SEQSERVE_RESUME_SAMPLES=40 $(PY) -m pytest -q -s tests/test_replicas.py

# The container image seqserve:latest with Docker or Podman (deploy/image.sh, deploy/README.md).
image:
	deploy/image.sh

# Build the image and run it for real: container, client checks, Prometheus and promtool, podman kube play,
# podman-compose (deploy/test-deploy.sh; it installs podman, prometheus and the rest with apt-get).
test-deploy: $(DEV)
	PY=$(PY) deploy/test-deploy.sh

# Load benchmark: the server against in-process ONNX Runtime, max_batch=1 and PyTorch loops (bench/RESULTS.md).
bench: data
	$(PY) -m protos.generate
	$(PY) -m bench

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
