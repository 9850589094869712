# Set-up is two commands on a fresh machine with Python 3.11: `make demo` and `make test`.
# Each creates (or reuses) the project virtual environment in .venv and installs the pinned set.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.omnitune-installed

.PHONY: install demo test test-slow test-pg bench clean

# Reinstall when the dependency declarations change. torch/torchvision/torchaudio are pinned as a
# set in constraints.txt; every other version is pinned there too, so installs are reproducible.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c constraints.txt -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

# Fine-tunes the bundled all-MiniLM-L6-v2 on the bundled Rotten Tomatoes reviews (about 6 min).
demo: install
	$(VENV)/bin/omnitune train text/minilm-rotten-tomatoes

# Fast tests: tiny models built from configs, tiny generated data.
test: install
	$(PY) -m pytest -q

# Slow tests: real bundled models and data (fetches the assets on first use), and the slower
# multi-process tests (a `tune` worker killed with -9 on a PostgreSQL study).
test-slow: install
	$(PY) -m pytest -q -m slow

# Every test of several `omnitune tune` processes on one PostgreSQL study, fast and slow; installs
# Debian's server binaries first when they are absent (as root).
test-pg: install
	bash scripts/postgres.sh
	$(PY) -m pytest -q -m "" tests/core/test_tune_postgres.py

# omnitune versus transformers' Trainer on the same model, data and settings.
bench: install
	$(PY) bench/text_vs_hf_trainer.py
	$(PY) bench/vision_pipeline.py
	$(PY) bench/speech_window.py
	$(PY) bench/peft_vs_full.py

clean:
	rm -rf runs .pytest_cache
