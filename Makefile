# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
VENV := .venv
PY := $(VENV)/bin/python
export DAGSTER_HOME := $(CURDIR)/dagster_home

.PHONY: demo test ui env

$(VENV)/.installed: pyproject.toml scripts/install.sh
	bash scripts/install.sh $(VENV)
	touch $@

env: $(VENV)/.installed

demo: env  ## the main job: every technique on the embedded SmolLM2-135M, smoke profile
	TQDM_DISABLE=1 $(PY) -m llmopt_assets.cli demo

test: env  ## the whole test suite
	$(PY) -m pytest -q

ui: env  ## the Dagster UI over this project's runs (pools set to this machine's devices first)
	$(PY) -m llmopt_assets.cli pools
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(VENV)/bin/dg dev
