# Two commands do all the set-up on a fresh machine:
#   make sweep   # the main job (creates .venv on first use)
#   make test    # the test suite (creates .venv on first use)
VENV  ?= .venv
PY    := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# torch first, from the pinned release pair (this machine keeps it on disk; timm needs torchvision)
TORCH ?= torch==2.14.1 torchvision==0.29.1
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: install sweep demo test bench mutants

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

sweep: $(STAMP)
	$(VENV)/bin/q3r-tune sweep search_spaces/digits_vit.yaml
	$(VENV)/bin/q3r-tune export digits-vit --budget 0.2 -o digits-vit-0.2 --no-mlflow
	$(VENV)/bin/q3r-tune report digits-vit -o report.html

demo: $(STAMP)
	$(VENV)/bin/q3r-tune demo

test: $(STAMP)
	-@command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium) \
		|| echo "chromium could not be installed: the browser test of the report will be skipped"
	$(PY) -m pytest -q -n 2 --dist loadgroup --durations=10

bench: $(STAMP)
	$(PY) benchmarks/optimizer_overhead.py

# mutation testing of the math: the q3r library and the harness's layers and scoring (not in CI; over an hour
# on 2 cores, see tests/MUTANTS.md): score and survivors in tests/MUTANTS.md
mutants: $(STAMP)
	$(PY) -m pip install --quiet -e '.[mutants]'
	rm -rf mutants
	$(VENV)/bin/mutmut run --max-children 2
	$(VENV)/bin/mutmut results
