# One entry point for people and CI. Everything installs into ./.venv; system packages come from apt when root.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
APT_PACKAGES := espeak-ng flite libsndfile1 festival festvox-kdlpc16k chromium chromium-driver
STAMP := $(VENV)/.installed

.PHONY: install serve test bench clean-venv system-deps

system-deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	  else echo "missing system packages:$$missing (run as root or install them)"; fi; fi

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,recipe,ray]'
	touch $(STAMP)

install: system-deps $(STAMP)

serve: install
	$(BIN)/speech-transformer serve

test: install
	$(BIN)/python -m pytest -q --durations=15

bench: install
	$(BIN)/pip install -q -e '.[bench]'
	$(BIN)/python -m bench.decode
	$(BIN)/python -m bench.load
	$(BIN)/python -m bench.compare --manifest data/corpus/test_seen.jsonl

clean-venv:
	rm -rf $(VENV)
