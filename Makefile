# Two commands do all the set-up on a fresh machine (Python 3.11, gcc, pip to PyPI):
#   make study   # the main job: brief training (or the saved checkpoint), then the whole study
#   make test    # the test suite
# `make setup` makes the venv and builds the C++ ops ahead of use (else the first custom-op
# phase builds them).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup study test bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# Exactly this CPU build first: an open range would pull a CUDA build of several GB.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)
	$(PY) -m smallmind_torch.cli build-ops

# STUDY_ARGS="--engine-shapes seed gpt2-small" adds the peer engines at GPT-2 small (~10 min);
# STUDY_ARGS="--only PART" runs one part again into results/results.json (smallmind study --help)
study: $(STAMP)
	$(PY) -m smallmind_torch.cli train --if-missing --out checkpoints/seed
	# 6 x 512, the memory-bound shape of the speculative decoding part (~22 min on 2 cores)
	$(PY) -m smallmind_torch.cli train --if-missing --shape wide --steps 900 --out checkpoints/wide
	$(PY) -m smallmind_torch.cli generate --checkpoint checkpoints/seed --phase max \
		--prompt "The for statement" --max-new-tokens 60 --temperature 0
	$(PY) -m smallmind_torch.cli study --checkpoint checkpoints/seed --out results $(STUDY_ARGS)

test: $(STAMP)
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) build runs
