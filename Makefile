# faceapp: `make run` serves, `make test` tests; both set themselves up first (`make install`).
VENV      ?= .venv
PYTHON    ?= python3
PY        := $(VENV)/bin/python
STAMP     := $(VENV)/.faceapp-installed
PORT      ?= 8000
WORKERS   ?= 2
# torch first and pinned: an unpinned torch pulls a multi-GB CUDA build.
TORCH_PIN ?= torch==2.13.0
PYTEST_ARGS ?=
# make eval DATA=DIR (or a CSV manifest) [EVAL_ARGS="--json out.json --html out.html"]
DATA      ?=
EVAL_ARGS ?=
# make batch IN="photos/ more.csv" OUT=results.jsonl [BATCH_ARGS="--format csv --force"]
IN        ?=
OUT       ?=
BATCH_ARGS ?=

# `make mutants`: the modules to mutation-test (any of mutants/config.toml's names), and
# e.g. MUTANTS_ARGS="--sample 40 --seed 19" to test 40 mutants of each, drawn with that seed.
MODULES   ?= validation access analysis faces store.redis_backend services tester config security
MUTANTS_ARGS ?=

.PHONY: install system-packages run worker dev test lint bench eval batch api-snapshot mutants clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml scripts/fetch-clip-bpe
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_PIN)"
	$(PY) -m pip install --quiet -e '.[test,dev]'
	scripts/fetch-clip-bpe $(PY)
	@touch $(STAMP)

system-packages:
	@scripts/ensure-system-packages

run: install
	PORT=$(PORT) WORKERS=$(WORKERS) $(VENV)/bin/gunicorn --config gunicorn.conf.py wsgi:app

# A Celery worker for /api/jobs (needs FACEAPP_STORE_URL=redis://... or FACEAPP_BROKER_URL);
# CONCURRENCY=N processes, default the CPU cores.
CONCURRENCY ?=
worker: install
	$(VENV)/bin/flask --app wsgi worker $(if $(CONCURRENCY),--concurrency $(CONCURRENCY))

dev: install
	FLASK_DEBUG=1 $(VENV)/bin/flask --app wsgi run --port $(PORT)

test: install system-packages
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) -m pytest $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: install
	HF_HUB_OFFLINE=1 $(PY) -m bench.run

eval: install
	@test -n "$(DATA)" || { echo 'usage: make eval DATA=DIR [EVAL_ARGS="--json r.json --html r.html"]'; exit 2; }
	$(VENV)/bin/flask --app wsgi eval "$(DATA)" $(EVAL_ARGS)

# Validate and analyse many photos into one JSONL or CSV file (docs/BATCH.md); resumes OUT.
batch: install
	@test -n "$(IN)" -a -n "$(OUT)" || { echo 'usage: make batch IN="DIR|LIST|CSV..." OUT=results.jsonl [BATCH_ARGS=...]'; exit 2; }
	$(VENV)/bin/flask --app wsgi batch $(IN) --out "$(OUT)" $(BATCH_ARGS)

# docs/openapi.json from the live document; refuses a removal docs/MIGRATION.md does not explain.
api-snapshot: install
	HF_HUB_OFFLINE=1 $(PY) -m faceapp.contract snapshot

# Mutation testing (not part of CI): caught / timeout / missed / equivalent per module (README, "Mutation
# testing", has the run times). MUTANTS_ARGS=-v prints every verdict. Heavy: it runs niced.
mutants: install
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 nice -n 19 $(PY) scripts/mutants.py $(MUTANTS_ARGS) $(MODULES)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache .mutants
