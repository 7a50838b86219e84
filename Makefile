# The README's two commands are `make run` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup run demo test test-fast compile clean

setup:
	@bash scripts/setup.sh

# Sets up, then runs the whole pipeline on the embedded default (KFP local runner,
# local MLflow server, local DVC remote, local TorchServe, CPU).
run: setup
	$(VENV)/bin/iwarp pipeline run $(ARGS)

# The demo page (Gradio) over make run's TorchServe (reused when up); prints its URL.
demo: setup
	@$(VENV)/bin/iwarp demo $(ARGS)

# Every test, slow end-to-end ones included.
test: setup
	bash scripts/test.sh

test-fast: setup
	$(PY) -m pytest -m "not slow" $(ARGS)

compile: setup
	$(VENV)/bin/iwarp pipeline compile --out iwarp_pipeline.yaml

clean:
	rm -rf .iwarp runs outputs
