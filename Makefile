# make distill   - the main job on the embedded default (Fashion-MNIST)
# make test      - the test suite
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
DATASET := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
RECIPE  ?= recipes/fashion_mnist.yaml
SINGLE  ?= recipes/fashion_mnist_single.yaml
STUDY   ?= $(basename $(notdir $(RECIPE)))
DB      ?= results/$(STUDY)/study.db
PORT    ?= 8080

.PHONY: setup dataset test distill single dashboard clean

setup: $(STAMP) dataset

# Re-installs only when pyproject.toml changes.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,examples]'
	touch $(STAMP)

# Debian's dataset-fashion-mnist when apt-get is usable; otherwise the run tries torchvision's download
# and, failing that, says both ways to get the files.
dataset:
	@if [ ! -f $(DATASET) ] && command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  echo "installing Debian package dataset-fashion-mnist"; \
	  (apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 || \
	   (apt-get update -qq >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1)) \
	  || echo "warning: apt-get could not install dataset-fashion-mnist; torchvision's download will be tried"; \
	fi

test: setup
	$(BIN)/python -m pytest -q

# The main job: search, Pareto front, baselines, artifact. Re-running resumes the study.
distill: setup
	$(BIN)/compress search $(RECIPE)

# One hand-chosen recipe, no search.
single: setup
	$(BIN)/compress run $(SINGLE)

# optuna-dashboard on the study, local only. Works while `make distill` runs (the study is in SQLite).
dashboard: setup
	@test -f $(DB) || { echo "no study at $(DB): run 'make distill' first (or pass DB=path/to/study.db)"; exit 2; }
	@echo "optuna-dashboard on $(DB): open http://127.0.0.1:$(PORT)/  (Ctrl-C stops it)"
	$(BIN)/optuna-dashboard sqlite:///$(DB) --host 127.0.0.1 --port $(PORT)

clean:
	rm -rf $(VENV) .cache .data .pytest_cache results/.*.partial
