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
# The study's artifact store (trial models, the report's plots): the dashboard serves them from here.
ARTIFACTS ?= results/$(STUDY)/artifacts
PORT    ?= 8080
# Not HOST: zsh and tcsh set HOST to the machine's name, which would expose the dashboard.
DASHBOARD_HOST ?= 127.0.0.1
# Where Debian's postgresql package puts the server binaries (initdb, pg_ctl); tests/pg.py looks there too.
PG_BINDIRS ?= /usr/lib/postgresql/*/bin

.PHONY: setup dataset postgres-server test distill single dashboard clean

setup: $(STAMP) dataset postgres-server

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

# PostgreSQL server binaries for the tests' throwaway server (tests/pg.py: its own data dir, 127.0.0.1,
# a free port). Debian's postgresql package when they are missing and apt-get is usable as root;
# installing it may also create and start Debian's own cluster on port 5432, which the tests leave alone.
postgres-server:
	@have_pg() { command -v pg_ctl >/dev/null 2>&1 && command -v initdb >/dev/null 2>&1 && return 0; \
	  for d in $(PG_BINDIRS); do [ -x "$$d/pg_ctl" ] && [ -x "$$d/initdb" ] && return 0; done; return 1; }; \
	if ! have_pg; then \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian package postgresql (server binaries for the PostgreSQL tests)"; \
	    log=$$(mktemp); export DEBIAN_FRONTEND=noninteractive; \
	    apt-get install -y -qq postgresql >$$log 2>&1 || \
	      { apt-get update -qq >>$$log 2>&1 && apt-get install -y -qq postgresql >>$$log 2>&1; } || \
	      tail -n 5 $$log; \
	    rm -f $$log; \
	    have_pg || echo "warning: apt-get did not provide pg_ctl and initdb (package postgresql); the PostgreSQL tests will be skipped"; \
	  else \
	    echo "warning: no PostgreSQL server binaries (pg_ctl, initdb) and no apt-get as root to install them; the PostgreSQL tests will be skipped"; \
	  fi; \
	fi

test: setup
	$(BIN)/python -m pytest -q

# The main job: search, Pareto front, baselines, artifact. Re-running resumes the study.
distill: setup
	$(BIN)/compress search $(RECIPE)

# One hand-chosen recipe, no search.
single: setup
	$(BIN)/compress run $(SINGLE)

# optuna-dashboard on the study, local only. Works while `make distill` runs. DB is a SQLite file
# (path/to/study.db), a storage URL (sqlite:///path, postgresql+psycopg2://user:password@host:port/db)
# or an Optuna journal file (journal:path/to/journal.log). A password in the URL is passed to libpq as
# PGPASSWORD, not on optuna-dashboard's command line, and never printed. ARTIFACTS: the study's artifact store.
dashboard: setup
	@db='$(subst ','\'',$(DB))'; \
	case "$$db" in \
	  journal:*) path="$${db#journal:}"; \
	    test -f "$$path" || { echo "no journal file at $$path"; exit 2; }; \
	    set -- --storage-class JournalFileStorage "$$path"; shown="journal $$path";; \
	  sqlite:///*) path="$${db#sqlite:///}"; \
	    test -f "$$path" || { echo "no study at $$path: run 'make distill' first"; exit 2; }; \
	    set -- "$$db"; shown="$$db";; \
	  *://*) pw=$$(printf '%s\n' "$$db" | sed -nE 's#^[^:/]+://[^:/@]*:([^@]*)@.*#\1#p'); \
	    if [ -n "$$pw" ]; then export PGPASSWORD="$$pw"; db=$$(printf '%s\n' "$$db" | sed -E 's#^([^:/]+://[^:/@]*):[^@]*@#\1@#'); fi; \
	    set -- "$$db"; shown="$$db$${pw:+ (password from the URL, passed as PGPASSWORD)}";; \
	  *) test -f "$$db" || { echo "no study at $$db: run 'make distill' first (or pass DB=path/to/study.db or a storage URL)"; exit 2; }; \
	    set -- "sqlite:///$$db"; shown="$$db";; \
	esac; \
	if [ -d "$(ARTIFACTS)" ]; then set -- "$$@" --artifact-dir "$(ARTIFACTS)"; fi; \
	echo "optuna-dashboard on $$shown: open http://$(DASHBOARD_HOST):$(PORT)/  (Ctrl-C stops it)"; \
	exec $(BIN)/optuna-dashboard "$$@" --host $(DASHBOARD_HOST) --port $(PORT)

clean:
	rm -rf $(VENV) .cache .data .pytest_cache results/.*.partial
